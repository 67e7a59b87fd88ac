"""Every malformed input of the corpus gets a causalgeom error naming the problem, and leaves nothing written."""

from __future__ import annotations

import re
import traceback

import pytest

import causalgeom as cg

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
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


def test_read_only_folder(tmp_path):
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported on this filesystem")
    try:
        from .conftest import make_run

        with pytest.raises(cg.StoreError, match="ro"):
            cg.save(make_run(n=20), ro / "r.zarr")
        TRIED.append("read-only folder")
    finally:
        subprocess.run(["chattr", "-i", str(ro)])
    assert list(ro.iterdir()) == []
