"""Third-party import: every format, head discovery, no unpickling, study import with a run table."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import xarray as xr

import causalgeom as cg
from causalgeom.schema import require_head

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
