"""Zarr store: exact round trip, laziness, overwrite protection, partial and damaged stores, locks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import causalgeom as cg
from causalgeom.dump.store import COMPLETE_ATTR, store_lock

from causalgeom.testing import make_run


def test_round_trip_identical_and_lazy(tmp_path):
    ds = make_run(n=300, attacks=True, run_id="r1", regularizer_params={"eps": 0.1})
    cg.save(ds, tmp_path / "r1.zarr", sample_chunk=64)
    back = cg.open(tmp_path / "r1.zarr")
    assert back.features.chunks[0][0] == 64  # dask-backed, chunked along sample
    assert back.features.chunks[1] == (ds.sizes["feature"],)
    xr.testing.assert_identical(ds, back.load())
    meta = json.loads((tmp_path / "r1.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3


def test_refuses_overwrite_unless_mode_w(tmp_path):
    ds = make_run(n=50)
    p = cg.save(ds, tmp_path / "r.zarr")
    with pytest.raises(cg.StoreExistsError, match="mode='w'"):
        cg.save(ds, p)
    ds2 = make_run(n=60, seed=3)
    cg.save(ds2, p, mode="w")
    assert cg.open(p).sizes["sample"] == 60
    assert not [x for x in tmp_path.iterdir() if ".partial-" in x.name or ".trash-" in x.name]


def test_invalid_dataset_writes_nothing(tmp_path):
    ds = make_run(n=50).copy(deep=True)
    ds.features.values[0, 0] = np.nan
    with pytest.raises(cg.SchemaError):
        cg.save(ds, tmp_path / "bad.zarr")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_store_and_keeps_old(tmp_path, monkeypatch):
    p = cg.save(make_run(n=50), tmp_path / "r.zarr")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_zarr", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cg.save(make_run(n=70), p, mode="w")
    monkeypatch.undo()
    assert cg.open(p).sizes["sample"] == 50  # old store intact
    assert sorted(x.name for x in tmp_path.iterdir() if not x.name.endswith(".lock")) == ["r.zarr"]


def test_store_without_completion_mark_is_detected(tmp_path):
    p = cg.save(make_run(n=50), tmp_path / "r.zarr")
    import zarr

    g = zarr.open_group(str(p), mode="r+")
    del g.attrs[COMPLETE_ATTR]
    with pytest.raises(cg.IncompleteStoreError, match="not completely written"):
        cg.open(p)


def test_deleted_chunk_is_detected(tmp_path):
    p = cg.save(make_run(n=200), tmp_path / "r.zarr", sample_chunk=50)
    chunk = next((p / "features" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    with pytest.raises(cg.IncompleteStoreError, match="'features'.*missing"):
        cg.open(p)


def test_corrupted_chunk_fails_checksum(tmp_path):
    p = cg.save(make_run(n=200), tmp_path / "r.zarr", sample_chunk=50)
    chunk = sorted(f for f in (p / "logits" / "c").rglob("*") if f.is_file())[1]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(cg.StoreError, match="'logits'.*corrupted"):
        cg.open(p)


def test_path_problems(tmp_path):
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(cg.StoreError, match="a file"):
        cg.save(make_run(n=20), tmp_path / "file.zarr")
    with pytest.raises(cg.StoreError, match="is a file"):
        cg.open(tmp_path / "file.zarr")
    with pytest.raises(cg.StoreError, match="no store"):
        cg.open(tmp_path / "nothing.zarr")
    cg.save(make_run(n=20), tmp_path / "no" / "such" / "r.zarr")  # missing parent folders are created
    assert cg.open(tmp_path / "no" / "such" / "r.zarr").sizes["sample"] == 20
    (tmp_path / "blocked").write_text("x")
    with pytest.raises(cg.StoreError, match="blocked"):  # ... but a file in the way of one is refused
        cg.save(make_run(n=20), tmp_path / "blocked" / "r.zarr")
    assert (tmp_path / "blocked").read_text() == "x"
    (tmp_path / "notzarr").mkdir()
    with pytest.raises(cg.StoreError, match="not a readable Zarr"):
        cg.open(tmp_path / "notzarr")


def test_lock_refuses_second_writer(tmp_path):
    p = tmp_path / "r.zarr"
    with store_lock(p):
        with pytest.raises(cg.StoreLockedError, match="another process"):
            cg.save(make_run(n=20), p)
    assert not p.exists()
    cg.save(make_run(n=20), p)


def test_mode_argument_checked(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        cg.save(make_run(n=20), tmp_path / "r.zarr", mode="a")


@pytest.mark.parametrize("compressor", ["zstd", "blosc-lz4", "none"])
def test_compressor_option_round_trips_and_is_recorded(tmp_path, compressor):
    ds = make_run(n=200, run_id="c")
    p = cg.save(ds, tmp_path / "c.zarr", sample_chunk=64, compressor=compressor)
    meta = json.loads((p / "features" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    # bytes -> [compressor] -> crc32c on every chunk
    assert names[-1] == "crc32c"
    expected = {"zstd": "zstd", "blosc-lz4": "blosc", "none": None}[compressor]
    assert (names[-2] == expected) if expected else (names == ["bytes", "crc32c"])
    xr.testing.assert_identical(ds, cg.open(p).load())


def test_store_written_with_the_old_codec_opens_under_the_new_default(tmp_path):
    from causalgeom.dump.store import DEFAULT_COMPRESSOR

    assert DEFAULT_COMPRESSOR != "zstd"  # the old codec is no longer the default ...
    ds = make_run(n=150, run_id="old")
    p = cg.save(ds, tmp_path / "old.zarr", sample_chunk=64, compressor="zstd")  # ... but stores written with it open
    back = cg.open(p, verify=True)
    xr.testing.assert_identical(ds, back.load())
    # a damaged zstd chunk still fails its checksum
    chunk = next(f for f in (p / "features").rglob("*") if f.is_file() and f.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(cg.StoreError):
        cg.open(p, verify=True)


def test_unknown_compressor_lists_the_allowed_ones(tmp_path):
    allowed = r"\['none', 'blosc-lz4', 'zstd'\]"
    with pytest.raises(cg.ConfigError, match=rf"compressor: expected one of {allowed}, got 'gzip'"):
        cg.save(make_run(n=20), tmp_path / "x.zarr", compressor="gzip")
    assert not (tmp_path / "x.zarr").exists()
