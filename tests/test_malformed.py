"""Every malformed input of the corpus gets a causalgeom error naming the problem, and leaves nothing written."""

from __future__ import annotations

import re
import traceback

import numpy as np
import pytest

import causalgeom as cg

from . import malformed_inputs_22c, malformed_stores, malformed_toml, malformed_weights  # noqa: F401
from .malformed_corpus import CASES

TRIED: list[str] = []


def _written(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(".lock"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(), out.mkdir()
    with pytest.raises(cg.CausalGeomError) as info:
        case.run(inp, out)
    TRIED.append(case.name)
    assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {info.value}"
    assert re.search(case.match, str(info.value)), str(info.value)
    # raised at the public boundary: the message is ours, not a library's traceback
    assert "Traceback" not in str(info.value)
    assert _written(out) == [], f"left behind: {_written(out)}"


def test_corpus_is_large_enough():
    assert len(CASES) >= 185  # 125 cases of issue 10, at least 60 more from issue 16
    assert len({c.name for c in CASES}) == len(CASES)


def test_read_only_folder(tmp_path):
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported on this filesystem")
    try:
        from causalgeom.testing import make_run

        with pytest.raises(cg.StoreError, match="ro"):
            cg.save(make_run(n=20), ro / "r.zarr")
        TRIED.append("read-only folder")
    finally:
        subprocess.run(["chattr", "-i", str(ro)])
    assert list(ro.iterdir()) == []


def test_corpus_payloads_are_live(tmp_path):
    """The code-running payloads of the corpus do run under plain pickle (so their refusal means something)."""
    import pickle

    from .malformed_corpus import _MkdirPayload

    _MkdirPayload.target = str(tmp_path / "pwned")
    pickle.loads(pickle.dumps(_MkdirPayload()))
    assert (tmp_path / "pwned").is_dir()


def test_cli_refuses_code_running_checkpoint_with_one_line(tmp_path, capsys):
    """`causalgeom extract` on a code-running checkpoint: exit status 2, one error line, nothing ran."""
    from causalgeom.cli import main

    from .malformed_corpus import _pickle_ckpt

    (tmp_path / "in").mkdir(), (tmp_path / "out").mkdir()
    ckpt = _pickle_ckpt(tmp_path / "in", tmp_path / "out")
    code = main(["extract", str(ckpt), "--out", str(tmp_path / "out" / "r.zarr"), "--no-attack", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("causalgeom extract: error: checkpoint"), err
    assert "refused" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []  # no store, and the payload's folder was never made


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".lock"))


def test_paths_from_files_cannot_escape_the_study(tmp_path):
    """run ids read from a run table, an extraction's attrs or a checkpoint never become paths outside the study."""
    import json

    import torch

    from causalgeom.cli import main

    from .malformed_corpus import _SPEC, _checkpoint, _good

    deep = tmp_path / "a" / "b"
    study, inp = deep / "study", tmp_path / "in"
    inp.mkdir(), deep.mkdir(parents=True)
    before = [p for p in _tree(tmp_path) if not p.startswith("in")]
    a = _good()
    np.savez(inp / "d.npz", features=a["features"], logits=a["logits"], labels=a["labels"])
    for rid in ("../x", "../../x", "/tmp/x", "..", ".hidden", "a/../../x"):
        (inp / "runs.csv").write_text(f"file,run_id\nd.npz,{rid}\n")
        with pytest.raises(cg.SchemaError, match="run_id"):
            cg.adapters.import_study([inp / "d.npz"], study, run_table=inp / "runs.csv")
        with pytest.raises(cg.SchemaError, match="run_id"):
            cg.extract(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)),
                       (torch.rand(6, 1, 2, 2), torch.randint(0, 3, (6,))), study / "r.zarr",
                       attrs={"run_id": rid}, progress=False)
        with pytest.raises(cg.SchemaError, match="run_id"):
            cg.open_study(deep, create=True).run_path(rid)
        ckpt = _checkpoint(inp, config=json.dumps({"run_id": rid, "dataset": "digits", "model_spec": _SPEC}))
        assert main(["extract", str(ckpt), "--out", str(study), "--no-attack", "--no-progress"]) == 2
    after = [p for p in _tree(tmp_path) if not p.startswith("in")]
    assert after == before, sorted(set(after) - set(before))
