"""Studies: a folder of runs, its run table, duplicates, incomplete runs."""

from __future__ import annotations

import pytest
import xarray as xr

import causalgeom as cg

from causalgeom.testing import make_run


def test_study_round_trip_of_several_runs(tmp_path):
    study = cg.open_study(tmp_path / "s", create=True)
    runs = {}
    for reg, strength in (("ce", 0.0), ("label_smoothing", 0.1)):
        for seed in (0, 1):
            rid = f"{reg}-s{seed}"
            runs[rid] = make_run(n=80, seed=seed, run_id=rid, regularizer=reg, strength=strength,
                                 regularizer_params={"label_smoothing": strength})
            study.add(runs[rid])
    again = cg.open_study(tmp_path / "s")
    assert again.run_ids == sorted(runs)
    table = again.runs
    assert list(table.run_id) == sorted(runs)
    assert set(table.regularizer) == {"ce", "label_smoothing"}
    assert table.set_index("run_id").loc["label_smoothing-s1", "strength"] == 0.1
    assert table.set_index("run_id").loc["ce-s0", "n_samples"] == 80
    for rid, ds in runs.items():
        xr.testing.assert_identical(ds, again[rid].load())
    assert len(again) == 4 and "ce-s0" in again


def test_duplicate_run_id_rejected(tmp_path):
    study = cg.open_study(tmp_path, create=True)
    study.add(make_run(n=20, run_id="a"))
    with pytest.raises(cg.StoreExistsError, match="run_id 'a'"):
        study.add(make_run(n=30, seed=2, run_id="a"))


def test_incomplete_runs_are_hidden_and_listed(tmp_path):
    import zarr

    study = cg.open_study(tmp_path, create=True)
    study.add(make_run(n=20, run_id="good"))
    p = study.add(make_run(n=20, run_id="half"))
    del zarr.open_group(str(p), mode="r+").attrs[cg.store.COMPLETE_ATTR]
    assert study.run_ids == ["good"]
    assert study.incomplete == ["half.zarr"]
    with pytest.raises(cg.IncompleteStoreError):
        study["half"]
    with pytest.raises(KeyError, match="no run 'zzz'"):
        study["zzz"]


def test_folder_name_must_match_run_id(tmp_path):
    cg.save(make_run(n=20, run_id="x"), tmp_path / "y.zarr")
    with pytest.raises(cg.StoreError, match="holds run_id 'x'"):
        cg.open_study(tmp_path).runs


def test_study_path_errors(tmp_path):
    with pytest.raises(cg.StoreError, match="no study folder"):
        cg.open_study(tmp_path / "missing")
    (tmp_path / "f").write_text("")
    with pytest.raises(cg.StoreError, match="is a file"):
        cg.open_study(tmp_path / "f")
    with pytest.raises(cg.SchemaError, match="run_id"):
        cg.open_study(tmp_path).run_path("../../etc")
