"""The direct chunk reader of uncompressed stores (causalgeom.dump.chunks): Zarr's bytes, Zarr's checks.

The reference is Zarr itself: every chunk the reader returns must equal Zarr's read of the same region exactly
(the same bytes, no arithmetic), a damaged chunk must fail as Zarr's CRC32C check fails, and the fused pass on
the direct path must equal the fused pass through Zarr exactly (the same kernel on the same bytes).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import causalgeom as cg
from causalgeom.dump import chunks
from causalgeom.dump.chunks import ChunkReader, reader_for
from causalgeom.errors import StoreError
from causalgeom.metrics import table

from causalgeom.testing import make_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("chunks") / "r.zarr"
    ds = make_run(n=300, d=8, k=4, seed=0, run_id="r", regularizer="ce", strength=0.0)
    cg.save(ds, path, sample_chunk=64)  # 5 chunks, the last one of 44 rows
    return path


@pytest.mark.parametrize("name", ["features", "logits", "label"])
def test_every_chunk_equals_zarrs_read(store, name):
    reader = ChunkReader(store / name)
    arr = zarr.open_array(store / name, mode="r")
    assert reader.n_chunks == 5 and reader.chunk_rows(4) == 300 - 4 * 64
    for i in range(reader.n_chunks):
        got = reader.read(i)
        want = arr[i * 64:(i + 1) * 64]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)  # the same bytes: exact
        assert not got.flags.writeable
    with pytest.raises(IndexError):
        reader.read(5)


def test_missing_chunk_file_is_the_fill_value_only_in_a_plain_zarr_array(tmp_path):
    ds = make_run(n=100, d=4, k=3, seed=1, run_id="m", regularizer="ce", strength=0.0)
    cg.save(ds, tmp_path / "m.zarr", sample_chunk=50)
    # a causalgeom store records its chunks: one missing is an error whenever the reader is made (issue 22)
    (tmp_path / "m.zarr" / "features" / "c" / "1" / "0").unlink()
    reader = ChunkReader(tmp_path / "m.zarr" / "features")
    with pytest.raises(StoreError, match="c/1/0 .* is missing, but the store records it"):
        reader.read(1)
    # a plain Zarr array (no completion mark): a chunk never written holds the fill value, as Zarr reads it
    arr = zarr.create_array(tmp_path / "plain.zarr", shape=(100, 4), chunks=(50, 4), dtype="float32",
                            fill_value=float("nan"), compressors=[zarr.codecs.Crc32cCodec()])
    arr[:50] = 1.0
    reader = ChunkReader(tmp_path / "plain.zarr")
    got = reader.read(1)
    want = zarr.open_array(tmp_path / "plain.zarr", mode="r")[50:]
    assert np.isnan(want).all() and np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(reader.read(0), np.ones((50, 4), np.float32))


def _copy(store, tmp_path):
    import shutil

    dst = tmp_path / "copy.zarr"
    shutil.copytree(store, dst)
    return dst


def test_damaged_chunks_are_refused_naming_the_chunk(store, tmp_path):
    path = _copy(store, tmp_path)
    chunk = path / "features" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0x01  # one flipped bit
    chunk.write_bytes(bytes(data))
    reader = ChunkReader(path / "features")
    with pytest.raises(StoreError, match=r"features: chunk c/2/0 .* CRC32C"):
        reader.read(2)
    with pytest.raises(ValueError, match="checksum"):  # Zarr refuses the same chunk
        zarr.open_array(path / "features", mode="r")[128:192]
    chunk.write_bytes(bytes(data[:-8]))
    with pytest.raises(StoreError, match=r"c/2/0 .* has \d+ bytes; expected"):
        reader.read(2)
    chunk.unlink()
    os.symlink(path / "features" / "c" / "1" / "0", chunk)
    with pytest.raises(StoreError, match="cannot be read as a regular file"):
        reader.read(2)
    assert np.array_equal(reader.read(1), zarr.open_array(path / "features", mode="r")[64:128])


def test_reader_only_for_the_untouched_uncompressed_store(store, tmp_path):
    ds = cg.open(store)
    assert all(reader_for(ds, v) is not None for v in ("features", "logits", "label"))
    assert reader_for(ds, "no_such_variable") is None
    assert reader_for(ds.isel(sample=slice(1, None)), "features") is None  # selected
    assert reader_for(ds.isel(sample=np.arange(300)[::-1]), "features") is None  # reordered
    assert reader_for(ds.assign(features=ds["features"] * 2), "features") is None  # computed on
    assert reader_for(ds.load(), "features") is None  # in memory
    assert reader_for(ds.chunk({"sample": 100}), "features") is None  # rechunked
    cg.save(make_run(n=300, d=8, k=4, seed=0, run_id="z", regularizer="ce", strength=0.0), tmp_path / "z.zarr",
            sample_chunk=64, compressor="zstd")
    assert reader_for(cg.open(tmp_path / "z.zarr"), "features") is None  # compressed: Zarr decodes
    with pytest.raises(ValueError, match="bytes \\+ crc32c"):
        ChunkReader(tmp_path / "z.zarr" / "features")


def test_reader_pickles_without_its_buffers(store):
    import pickle

    reader = ChunkReader(store / "features")
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(clone.read(3), reader.read(3))


def test_fused_pass_direct_equals_fused_pass_through_zarr(store, monkeypatch):
    ds = cg.open(store)
    direct = table.fused_run(ds)
    monkeypatch.setattr(chunks, "direct_array", lambda ds, name: None)
    through_zarr = table.fused_run(ds)
    for k in direct:  # the same kernel on the same bytes, chunk by chunk: exact
        assert np.array_equal(direct[k], through_zarr[k], equal_nan=True), k


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_half_precision_features_take_the_direct_path_with_the_same_values(tmp_path, monkeypatch, kind):
    import torch

    ds = make_run(n=300, d=8, k=4, seed=2, run_id="h", regularizer="ce", strength=0.0)
    f = torch.from_numpy(ds["features"].values).to(getattr(torch, kind))
    if kind == "float16":
        ds["features"] = (("sample", "feature"), f.numpy())
        ds["features"].attrs["stored_dtype"] = "float16"
    else:
        ds["features"] = (("sample", "feature"), f.view(torch.int16).numpy().view(np.uint16))
        ds["features"].attrs["encoded_dtype"] = "bfloat16"
    cg.save(ds, tmp_path / "h.zarr", sample_chunk=64, check_values=False)
    run = cg.open(tmp_path / "h.zarr")
    reader = reader_for(run, "features")
    assert reader is not None and run["features"].attrs["stored_dtype"] == kind
    assert np.array_equal(np.concatenate([reader.read_decoded(i) for i in range(reader.n_chunks)]).astype(np.float32),
                          run["features"].values)  # the values `open` decodes: exact
    assert reader_for(run.assign(features=run["features"] + 0), "features") is None
    direct = table.fused_run(run)
    monkeypatch.setattr(chunks, "direct_array", lambda ds, name: None)
    through_zarr = table.fused_run(run)
    for k in direct:  # float16 -> float64 directly or through the float32 decode: both exact, same kernel
        assert np.array_equal(direct[k], through_zarr[k], equal_nan=True), k


def test_direct_array_holds_the_variables_values_chunk_for_chunk(store):
    ds = cg.open(store)
    for name in ("features", "logits", "label"):
        arr = chunks.direct_array(ds, name)
        assert arr.chunks == ds[name].data.chunks and arr.dtype == ds[name].dtype
        assert np.array_equal(arr.compute(), ds[name].values)  # the same bytes: exact
    assert chunks.direct_array(ds.isel(sample=slice(0, 10)), "features") is None
