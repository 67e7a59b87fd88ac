"""Third-party import: every format, head discovery, no unpickling, study import with a run table."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import xarray as xr

import causalgeom as cg
from causalgeom.dump.schema import require_head

torch = pytest.importorskip("torch")


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 6)).astype(np.float32)
    W = rng.normal(size=(3, 6)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    return {"features": f, "logits": f @ W.T + b, "labels": rng.integers(0, 3, 40), "W": W, "b": b}


def _check(ds, a, head=True):
    np.testing.assert_array_equal(ds.features.values, a["features"])
    np.testing.assert_array_equal(ds.label.values, a["labels"])
    if head:
        np.testing.assert_array_equal(ds.head_weight.values, a["W"])
        np.testing.assert_array_equal(ds.head_bias.values, a["b"])
    else:
        assert "head_weight" not in ds


def test_npz(tmp_path, arrays):
    p = tmp_path / "d.npz"
    np.savez(p, features=arrays["features"], logits=arrays["logits"], labels=arrays["labels"],
             **{"fc.weight": arrays["W"], "fc.bias": arrays["b"]})
    ds = cg.import_dump(p, attrs={"run_id": "npz1", "regularizer": "ce"})
    _check(ds, arrays)
    assert ds.attrs["source"] == "d.npz" and ds.attrs["regularizer"] == "ce"


def test_npz_with_object_array_is_refused(tmp_path, arrays):
    p = tmp_path / "evil.npz"
    np.savez(p, features=arrays["features"], labels=np.array([{"x": 1}] * 40, dtype=object))
    with pytest.raises(cg.UnsafeFileError, match="pickle"):
        cg.import_dump(p)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
@pytest.mark.parametrize("prefix", ["fc", "classifier", "head"])
def test_torch_dict_with_state_dict_head(tmp_path, arrays, suffix, prefix):
    p = tmp_path / f"d{suffix}"
    torch.save({"feats": torch.tensor(arrays["features"]), "targets": torch.tensor(arrays["labels"]),
                "state_dict": {f"{prefix}.weight": torch.tensor(arrays["W"]),
                               f"{prefix}.bias": torch.tensor(arrays["b"])}}, p)
    ds = cg.import_dump(p)  # logits computed from the head
    _check(ds, arrays)
    np.testing.assert_allclose(ds.logits.values, arrays["logits"], rtol=1e-5, atol=1e-5)


def test_user_named_head(tmp_path, arrays):
    p = tmp_path / "d.pt"
    torch.save({"features": torch.tensor(arrays["features"]), "logits": torch.tensor(arrays["logits"]),
                "labels": torch.tensor(arrays["labels"]), "my.last.weight": torch.tensor(arrays["W"]),
                "my.last.bias": torch.tensor(arrays["b"])}, p)
    _check(cg.import_dump(p, head="my.last"), arrays)
    with pytest.raises(cg.DumpImportError, match="'nope.weight'"):
        cg.import_dump(p, head="nope")



def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, arrays):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"features": torch.tensor(arrays["features"]), "payload": Evil()}, p)
    with pytest.raises(cg.UnsafeFileError, match="refused"):
        cg.import_dump(p)
    assert not marker.exists()
    # the same payload does run under a plain pickle load: the test would catch a regression
    with open(tmp_path / "plain.pkl", "wb") as fh:
        pickle.dump(Evil(), fh)
    with open(tmp_path / "plain.pkl", "rb") as fh:
        pickle.load(fh)  # noqa: S301 - deliberately proving the payload is live
    assert marker.exists()


def test_safetensors(tmp_path, arrays):
    from safetensors.numpy import save_file

    p = tmp_path / "d.safetensors"
    save_file({"features": arrays["features"], "logits": arrays["logits"], "labels": arrays["labels"],
               "head_weight": arrays["W"], "head_bias": arrays["b"]}, str(p))
    _check(cg.import_dump(p), arrays)


def test_safetensors_header_lying_about_size(tmp_path):
    import struct

    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(cg.DumpImportError, match="header length"):
        cg.import_dump(p)


def test_netcdf_and_in_memory_xarray(tmp_path, arrays):
    ds = cg.from_arrays(arrays["features"], arrays["logits"], arrays["labels"], head_weight=arrays["W"],
                        head_bias=arrays["b"], attrs={"run_id": "x"})
    nc = ds.copy()
    nc.attrs = {k: v for k, v in ds.attrs.items() if not isinstance(v, dict)}
    nc.to_netcdf(tmp_path / "d.nc")
    _check(cg.import_dump(tmp_path / "d.nc"), arrays)
    _check(cg.import_dump(ds), arrays)


def test_without_head_imports_and_head_analyses_fail_clearly(tmp_path, arrays):
    p = tmp_path / "nohead.npz"
    np.savez(p, features=arrays["features"], logits=arrays["logits"], labels=arrays["labels"])
    ds = cg.import_dump(p, out=tmp_path / "nohead.zarr", attrs={"run_id": "nohead"})
    _check(ds, arrays, head=False)
    with pytest.raises(cg.HeadMissingError, match="minimal-loss centers.*no 'head_weight'"):
        require_head(cg.open(tmp_path / "nohead.zarr"), "minimal-loss centers")


def test_bad_inputs(tmp_path, arrays):
    with pytest.raises(cg.DumpImportError, match="no such file"):
        cg.import_dump(tmp_path / "missing.npz")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(cg.DumpImportError, match="unknown dump format"):
        cg.import_dump(tmp_path / "x.csv")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(cg.DumpImportError, match="not a valid .npz"):
        cg.import_dump(tmp_path / "junk.npz")
    p = tmp_path / "nologits.npz"
    np.savez(p, features=arrays["features"], labels=arrays["labels"])
    with pytest.raises(cg.DumpImportError, match="neither logits"):
        cg.import_dump(p)
    p = tmp_path / "nofeat.npz"
    np.savez(p, logits=arrays["logits"], labels=arrays["labels"])
    with pytest.raises(cg.DumpImportError, match="features array"):
        cg.import_dump(p)
    p = tmp_path / "short.npz"
    np.savez(p, features=arrays["features"], logits=arrays["logits"], labels=arrays["labels"][:10])
    with pytest.raises(cg.SchemaError, match="short.npz.*'label'.*10 samples"):
        cg.import_dump(p)


def test_import_study_with_run_table(tmp_path, arrays):
    files = []
    for i in range(3):
        p = tmp_path / f"m{i}.npz"
        np.savez(p, features=arrays["features"] * (i + 1), logits=arrays["logits"] * (i + 1),
                 labels=arrays["labels"])
        files.append(p)
    table = tmp_path / "runs.csv"
    table.write_text("file,run_id,regularizer,strength,seed\n"
                     "m0.npz,ce-s0,ce,0,0\nm1.npz,ls-s0,label_smoothing,0.1,0\nm2.npz,ls-s1,label_smoothing,0.1,1\n")
    ids = cg.adapters.import_study(files, tmp_path / "study", run_table=table)
    assert ids == ["ce-s0", "ls-s0", "ls-s1"]
    runs = cg.open_study(tmp_path / "study").runs.set_index("run_id")
    assert runs.loc["ls-s1", "regularizer"] == "label_smoothing" and runs.loc["ls-s1", "seed"] == 1
    # a bad dump leaves the study untouched
    np.savez(tmp_path / "bad.npz", features=arrays["features"], labels=arrays["labels"])
    table.write_text("file,run_id\nbad.npz,bad\nm0.npz,new0\n")
    with pytest.raises(cg.DumpImportError):
        cg.adapters.import_study([tmp_path / "m0.npz", tmp_path / "bad.npz"], tmp_path / "study", run_table=table)
    assert cg.open_study(tmp_path / "study").run_ids == ids
    with pytest.raises(cg.DumpImportError, match=r"dump file names \['m0.npz'\] appear more than once"):
        cg.adapters.import_study([files[0], files[0]], tmp_path / "s2")


# -- issue 16: bounded imports read correct files exactly; destinations; run tables as text --------------------------
def _npy_bytes(arr, version):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    return buf.getvalue()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npz_members_without_suffix_and_any_npy_version_are_read_exactly(tmp_path, arrays, version):
    import zipfile

    p = tmp_path / "d.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("features", _npy_bytes(arrays["features"], version))  # no .npy suffix
        z.writestr("logits.npy", _npy_bytes(arrays["logits"], version))
        z.writestr("labels.npy", _npy_bytes(arrays["labels"], version))
    ds = cg.import_dump(p)
    np.testing.assert_array_equal(ds.features.values, arrays["features"])
    np.testing.assert_array_equal(ds.label.values, arrays["labels"])


def test_declared_size_limit_is_exact(tmp_path, arrays):
    """max_bytes compares the declared in-memory size: features of 40 x 6 float32 are 960 bytes."""
    p = tmp_path / "d.npz"
    np.savez(p, features=arrays["features"], logits=arrays["logits"], labels=arrays["labels"])
    total = sum(a.nbytes for a in (arrays["features"], arrays["logits"], arrays["labels"]))
    cg.import_dump(p, max_bytes=total)  # exactly the total: accepted
    with pytest.raises(cg.DumpImportError, match="together take"):
        cg.import_dump(p, max_bytes=total - 1)
    with pytest.raises(cg.DumpImportError, match=r"'features.npy' declares shape \(40, 6\) of float32, 960 B"):
        cg.import_dump(p, max_bytes=959)
    assert cg.adapters.default_max_bytes() > 0


def test_expanded_and_view_tensors_import_by_value(tmp_path, arrays):
    """A stride-0 tensor within the limit and a view of a larger storage import as the values they show."""
    f = torch.as_tensor(arrays["features"])
    big = torch.zeros(100, 6)
    big[10:50] = f
    view = big[10:50]  # a view: storage of 100 rows, 40 shown
    row = torch.as_tensor(arrays["features"][:1]).expand(40, 6)  # stride 0
    torch.save({"features": view, "logits": torch.as_tensor(arrays["logits"]),
                "labels": torch.as_tensor(arrays["labels"])}, tmp_path / "v.pt")
    ds = cg.import_dump(tmp_path / "v.pt")
    np.testing.assert_array_equal(ds.features.values, arrays["features"])
    W, b = torch.as_tensor(arrays["W"]), torch.as_tensor(arrays["b"])
    torch.save({"features": row, "labels": torch.as_tensor(arrays["labels"]), "fc.weight": W, "fc.bias": b},
               tmp_path / "e.pt")
    ds = cg.import_dump(tmp_path / "e.pt")
    np.testing.assert_array_equal(ds.features.values, np.repeat(arrays["features"][:1], 40, axis=0))


def test_bfloat16_tensor_is_widened(tmp_path, arrays):
    f = torch.as_tensor(arrays["features"]).to(torch.bfloat16)
    torch.save({"features": f, "labels": torch.as_tensor(arrays["labels"]), "fc.weight": torch.as_tensor(arrays["W"])},
               tmp_path / "b.pt")
    ds = cg.import_dump(tmp_path / "b.pt")
    np.testing.assert_array_equal(ds.features.values, f.float().numpy())  # bfloat16 -> float32 is exact


def test_netcdf_dims_matched_by_name_and_outcomes_as_0_1(tmp_path, arrays):
    ds = xr.Dataset({"features": (("feature", "sample"), arrays["features"].T),  # transposed: matched by name
                     "logits": (("sample", "class"), arrays["logits"]), "label": (("sample",), arrays["labels"]),
                     "adv_correct": (("sample", "eps", "attack"), np.ones((40, 2, 1), np.int8)),
                     "adv_margin": (("attack", "eps", "sample"), np.zeros((1, 2, 40), np.float32))},
                    coords={"attack": ["pgd"], "eps": [0.0, 0.03]})
    ds.to_netcdf(tmp_path / "d.nc")
    back = cg.import_dump(tmp_path / "d.nc")
    np.testing.assert_array_equal(back.features.values, arrays["features"])
    assert back.adv_correct.dtype == bool and back.adv_correct.values.all()
    assert list(back.attack.values) == ["pgd"] and list(back.eps.values) == [0.0, 0.03]


def _two_npz(tmp_path, arrays):
    """Two third-party dumps a.npz and b.npz of the same arrays."""
    files = []
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", features=arrays["features"], logits=arrays["logits"],
                 labels=arrays["labels"])
        files.append(tmp_path / f"{name}.npz")
    return files


def test_run_table_is_read_as_text(tmp_path, arrays):
    files = _two_npz(tmp_path, arrays)
    (tmp_path / "runs.csv").write_text("file,run_id,regularizer,seed,strength,note,lr\n"
                                       "a.npz,007,NA,0,0,None,0.1\nb.npz,008,ce,1,1e-1,,0.01\n")
    rows = cg.adapters.read_run_table(tmp_path / "runs.csv")
    assert rows["a.npz"] == {"run_id": "007", "regularizer": "NA", "seed": 0, "strength": 0, "note": "None", "lr": 0.1}
    assert rows["b.npz"] == {"run_id": "008", "regularizer": "ce", "seed": 1, "strength": 0.1, "lr": 0.01}
    assert cg.adapters.import_study(files, tmp_path / "s", run_table=tmp_path / "runs.csv") == ["007", "008"]
    runs = cg.open_study(tmp_path / "s").runs.set_index("run_id")
    assert runs.loc["007", "regularizer"] == "NA" and runs.loc["007", "note"] == "None"


def test_multi_run_import_is_all_or_nothing_under_a_held_lock(tmp_path, arrays):
    """Another process writing one of the runs: the import is refused before any run is published."""
    from causalgeom.dump.store import store_lock

    files = _two_npz(tmp_path, arrays)
    study = tmp_path / "s"
    study.mkdir()
    with store_lock(study / "b.zarr"):
        with pytest.raises(cg.StoreLockedError, match="b.zarr"):
            cg.adapters.import_study(files, study)
    assert sorted(p.name for p in study.iterdir() if not p.name.endswith(".lock")) == []
    assert cg.adapters.import_study(files, study) == ["a", "b"]


def test_failed_publish_leaves_the_study_as_it_was(tmp_path, arrays, monkeypatch):
    import causalgeom.dump.store as st

    files = _two_npz(tmp_path, arrays)
    study = tmp_path / "s"
    real, calls = st.save, []

    def fail_second(ds, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise cg.StoreError("disk full")
        return real(ds, path, **kw)

    monkeypatch.setattr(st, "save", fail_second)
    with pytest.raises(cg.StoreError, match="disk full"):
        cg.adapters.import_study(files, study)
    assert sorted(p.name for p in study.iterdir() if not p.name.endswith(".lock")) == []


@pytest.mark.slow
def test_racing_study_imports_are_all_or_nothing(tmp_path, arrays):
    """Issue 16: when two study imports raced, the loser exited 2 but left its other runs in the study.

    Two processes import {a, b} and {b, c} into one study at the same moment, twice. Afterwards the study
    holds exactly one importer's runs ({a, b} or {b, c}, never a mix), one process succeeded, and the other got a
    StoreLockedError or StoreExistsError.
    """
    import subprocess
    import sys

    for who, names in (("p1", "ab"), ("p2", "bc")):
        (tmp_path / who).mkdir()
        for k, name in enumerate(names):
            np.savez(tmp_path / who / f"{name}.npz", features=arrays["features"] * (k + 1),
                     logits=arrays["logits"] * (k + 1), labels=arrays["labels"])
    code = ("import sys, causalgeom as cg\n"
            "try:\n"
            "    cg.adapters.import_study(sys.argv[2:], sys.argv[1])\n"
            "except (cg.StoreLockedError, cg.StoreExistsError) as e:\n"
            "    print(type(e).__name__); sys.exit(3)\n")
    for round_ in range(2):
        study = tmp_path / f"study{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(study),
                                   *[str(tmp_path / who / f"{n}.npz") for n in names]],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
                 for who, names in (("p1", "ab"), ("p2", "bc"))]
        results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
        codes = sorted(r[0] for r in results)
        assert codes == [0, 3], results
        ids = cg.open_study(study).run_ids
        assert ids in (["a", "b"], ["b", "c"]), ids
        assert [p.name for p in study.iterdir() if ".staged-" in p.name or ".partial-" in p.name] == []
