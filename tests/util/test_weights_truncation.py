"""Weights files truncated by another program (issue 22 leftover): `load_weights_file` reads every format into
memory, so tensors it returned never depend on the file (no SIGBUS when the file shrinks before the model has
copied them), and a file that is short when read is a causalgeom error naming it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from causalgeom._util.io import load_weights_file
from causalgeom.errors import ConfigError

FORMATS = ["zip", "legacy", "safetensors"]


def _write(path, fmt: str, state: dict) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(256, 1024, generator=g), "fc.bias": torch.randn(256, generator=g)}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_tensors_outlive_a_truncated_file(fmt, tmp_path):
    """Load, truncate the file to 0 bytes, then touch every value: in a child process, so that a SIGBUS (the
    behaviour of memory-mapped tensors, e.g. torch.load(mmap=True) or safetensors.torch.load_file) fails the
    test instead of killing the test run."""
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    state = _state()
    _write(path, fmt, state)
    torch.save(state, tmp_path / "ref.pt")
    code = textwrap.dedent(f"""
        import os, torch
        from causalgeom._util.io import load_weights_file
        sd = load_weights_file({str(path)!r}, limit=2**30)
        os.truncate({str(path)!r}, 0)
        ref = torch.load({str(tmp_path / "ref.pt")!r}, weights_only=True)
        assert set(sd) == set(ref), sorted(sd)
        assert all(torch.equal(sd[k], ref[k]) for k in ref)  # every page of every tensor is read here
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != -signal.SIGBUS, "SIGBUS: the loaded tensors still map the file"
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_short_when_read_is_an_error(fmt, tmp_path):
    """A file cut in its data (what a reader racing a truncation sees) is a ConfigError naming it."""
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    _write(path, fmt, _state())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ConfigError, match=rf"weights file {path}"):
        load_weights_file(path, limit=2**30, error=ConfigError)


def test_zip_file_over_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "w.pt"
    _write(path, "zip", _state())
    with pytest.raises(ConfigError, match=r"w\.pt: its tensor data take 1\.00 MiB, over the limit of 100\.00 KiB"):
        load_weights_file(path, limit=100 * 1024, error=ConfigError)
