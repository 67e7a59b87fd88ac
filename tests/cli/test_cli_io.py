"""CLI: info, validate, import, --help."""

from __future__ import annotations

import json

import numpy as np
import pytest

import causalgeom as cg
from causalgeom.cli import main

from causalgeom.testing import make_run


def test_help_lists_commands_with_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "validate", "import"):
        assert cmd in out
    assert "examples:" in out


def test_info_run_and_study(tmp_path, capsys):
    study = cg.open_study(tmp_path, create=True)
    study.add(make_run(n=30, run_id="a", attacks=True))
    assert main(["info", str(tmp_path / "a.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dims"]["sample"] == 30 and "adv_correct" in info["optional_present"]
    assert info["attrs"]["run_id"] == "a"
    assert main(["info", str(tmp_path)]) == 0
    assert "1 complete runs" in capsys.readouterr().out


def test_validate_reports_and_fails_cleanly(tmp_path, capsys):
    p = cg.save(make_run(n=30, run_id="a"), tmp_path / "a.zarr")
    assert main(["validate", str(p)]) == 0
    assert main(["validate", str(tmp_path / "missing.zarr")]) == 2
    err = capsys.readouterr().err
    assert "error: no store" in err and "Traceback" not in err


def test_import_single_and_study(tmp_path, capsys):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(20, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", features=f, logits=rng.normal(size=(20, 4)), labels=rng.integers(0, 4, 20))
    assert main(["import", str(tmp_path / "d.npz"), str(tmp_path / "one.zarr"), "--attr", "seed=3",
                 "--attr", "regularizer=ce"]) == 0
    ds = cg.open(tmp_path / "one.zarr")
    assert ds.attrs["seed"] == 3 and ds.attrs["run_id"] == "one"
    assert main(["import", str(tmp_path / "d.npz"), str(tmp_path / "one.zarr")]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "runs.csv").write_text("file,run_id,regularizer,seed\nd.npz,r0,mixup,0\n")
    assert main(["import", str(tmp_path / "d.npz"), str(tmp_path / "st"), "--run-table",
                 str(tmp_path / "runs.csv")]) == 0
    assert cg.open_study(tmp_path / "st").runs.regularizer.tolist() == ["mixup"]


def test_import_refuses_a_run_store_as_study_and_honours_max_bytes(tmp_path, capsys):
    """Issue 16: `import a.npz b.npz study/ce-s0.zarr` wrote a.zarr and b.zarr inside the run store."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        f = rng.normal(size=(20, 3)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", features=f, logits=rng.normal(size=(20, 4)), labels=rng.integers(0, 4, 20))
    store = cg.save(make_run(n=30, run_id="ce-s0"), tmp_path / "ce-s0.zarr")
    before = sorted(p.name for p in store.rglob("*"))
    assert main(["import", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a run store" in err
    assert sorted(p.name for p in store.rglob("*")) == before
    assert main(["import", str(tmp_path / "a.npz"), str(tmp_path / "x.zarr"), "--max-bytes", "200B"]) == 2
    err = capsys.readouterr().err
    assert "'features.npy' declares shape (20, 3) of float32, 240 B in memory, over the limit of 200 B" in err
    assert main(["import", str(tmp_path / "a.npz"), str(tmp_path / "x.zarr"), "--max-bytes", "1MiB"]) == 0
    assert "x.zarr" in capsys.readouterr().out


def test_validate_says_ok_with_manifest(tmp_path, capsys):
    p = cg.save(make_run(n=30, run_id="a"), tmp_path / "a.zarr")
    assert main(["validate", str(p)]) == 0
    assert "every file matches the manifest" in capsys.readouterr().out


def test_validate_study_checks_every_run_and_names_the_damaged_one(tmp_path, capsys):
    study = cg.open_study(tmp_path / "s", create=True)
    for rid in ("a", "b", "c"):
        study.add(make_run(n=30, run_id=rid))
    (tmp_path / "s" / "b.zarr" / "label" / "c" / "0").unlink()
    (tmp_path / "s" / "b.zarr" / "label" / "c" / ".DS_Store").write_bytes(b"x")
    assert main(["validate", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok  a") and out[2].startswith("ok  c")
    assert out[1].startswith("DAMAGED  b:") and "label/c/0 is missing" in out[1] and ".DS_Store" in out[1]
