"""Reads verified at the moment of reading (issue 22).

* A chunk file deleted after `cg.open` is an error on every read path (Zarr through dask, the direct chunk reader of
  the fused pass, a copy with `cg.save`), never the fill value: the reference is the saved data, which the reads
  must either return exactly or refuse.
* A chunk truncated while a pass runs is a `StoreError` naming the chunk, never SIGBUS (the reader no longer maps
  files): the truncation is placed deterministically between building the reader and reading, and inside a read.
* Stores written before manifests are checked by counting and sizing their chunk files.
* `cg.save` of an opened half-precision run writes what validates, with identical values.
* Malformed manifest entries and ``import --attr run_id`` are refused with exit status 2.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import causalgeom as cg
from causalgeom.cli import main
from causalgeom.dump import chunks
from causalgeom.dump.chunks import ChunkReader, reader_for
from causalgeom.dump.store import COMPLETE_ATTR, check_store, has_manifest, required_chunk_keys
from causalgeom.errors import IncompleteStoreError, StoreError
from causalgeom.metrics import table
from causalgeom.testing import make_run


def _store(tmp_path, n=300, chunk=100, name="r", **kw) -> Path:
    return cg.save(make_run(n=n, d=8, k=4, seed=0, run_id=name, **kw), tmp_path / f"{name}.zarr", sample_chunk=chunk)


def _strip_manifest(p: Path) -> None:
    """What a writer before manifests left: the completion mark without its manifest."""
    g = zarr.open_group(str(p), mode="r+", zarr_format=3)
    mark = dict(g.attrs[COMPLETE_ATTR])
    mark.pop("manifest")
    g.attrs[COMPLETE_ATTR] = mark


# -- deletion after open ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("manifest", [True, False])
def test_chunk_deleted_after_open_is_an_error_on_every_read_path(tmp_path, manifest):
    """Issue example: label chunk deleted after open; labels read 0 and the accuracy dropped without a word."""
    p = _store(tmp_path)
    if not manifest:
        _strip_manifest(p)
    ds = cg.open(p)
    assert float(cg.calibration.accuracy(ds)) > 0.3  # readable before: the baseline that a fill value would change
    (p / "label" / "c" / "1").unlink()
    with pytest.raises(StoreError, match=r"label/c/1 is missing at read time"):
        ds["label"].values
    with pytest.raises(StoreError, match=r"label/c/1 is missing"):
        cg.calibration.accuracy(ds)
    with pytest.raises(StoreError, match=r"label: chunk file c/1 .* is missing"):
        table.fused_run(ds)  # the direct reader, built after the deletion: the store's record decides
    with pytest.raises(StoreError, match=r"label/c/1 is missing"):
        cg.save(ds, tmp_path / "copy.zarr")
    assert not (tmp_path / "copy.zarr").exists()


def test_direct_reader_built_before_the_deletion(tmp_path):
    p = _store(tmp_path)
    reader = reader_for(cg.open(p), "features")
    assert reader is not None and reader.required == frozenset(range(3))
    (p / "features" / "c" / "2" / "0").unlink()
    with pytest.raises(StoreError, match=r"features: chunk file c/2/0 .* is missing, but the store records it"):
        reader.read(2)


def test_required_chunks_come_from_the_store_not_from_the_folder(tmp_path):
    p = _store(tmp_path)
    want = {f"{v}/c/{i}" + ("/0" if v != "label" else "") for v in ("features", "logits", "label") for i in range(3)}
    assert want <= required_chunk_keys(p)
    (p / "label" / "c" / "0").unlink()  # missing at open time too: still required
    assert "label/c/0" in required_chunk_keys(p)
    _strip_manifest(p)  # no manifest: every chunk of each array's grid
    assert want <= required_chunk_keys(p)
    shutil.rmtree(p)
    zarr.create_array(tmp_path / "plain.zarr", shape=(4,), chunks=(2,), dtype="int64")
    assert required_chunk_keys(tmp_path / "plain.zarr") is None  # no completion mark: a plain Zarr array


# -- truncation during a pass: an error, never SIGBUS ---------------------------------------------------------------
def test_truncation_between_building_the_reader_and_reading(tmp_path, monkeypatch):
    """The issue's SIGBUS: a chunk truncated in place during the fused pass. Truncated here between `direct_array`
    building its reader and the pass reading the chunk; a mapped reader would die here, this one raises."""
    p = _store(tmp_path)
    ds = cg.open(p)
    victim = p / "features" / "c" / "1" / "0"
    real = chunks.direct_array

    def truncating(ds, name):
        arr = real(ds, name)
        if name == "features":
            assert arr is not None  # the direct path is the one under test
            os.truncate(victim, 100)
        return arr
    monkeypatch.setattr(chunks, "direct_array", truncating)
    with pytest.raises(StoreError, match=r"features: chunk file c/1/0 .* has 100 bytes; expected \d+"):
        table.fused_run(ds)


def test_truncation_inside_a_read_is_a_short_read_error(tmp_path, monkeypatch):
    """Truncated after the reader took the file's size, while it reads: the read comes up short."""
    p = _store(tmp_path)
    reader = ChunkReader(p / "logits")
    real = ChunkReader._read_file

    def truncate_then_read(self, fd, size, key):
        os.truncate(self.path / key, size // 3)
        return real(self, fd, size, key)
    monkeypatch.setattr(ChunkReader, "_read_file", truncate_then_read)
    with pytest.raises(StoreError, match=r"logits: chunk file c/0/0 .* changed while being read \(\d+ of \d+ bytes"):
        reader.read(0)


def test_grown_file_is_refused_through_zarr_after_open(tmp_path):
    p = _store(tmp_path)
    ds = cg.open(p)
    f = p / "logits" / "c" / "2" / "0"
    f.write_bytes(f.read_bytes() + b"\0" * 4)
    with pytest.raises(StoreError, match=r"logits/c/2/0 holds \d+ bytes at read time, but the store records"):
        ds["logits"].values


def test_reader_never_maps_files(tmp_path, monkeypatch):
    """The reader reads into memory: with mmap unavailable it still works (no mapping is ever made)."""
    import mmap

    p = _store(tmp_path)

    def refuse(*a, **k):
        raise AssertionError("the chunk reader must not map files")
    monkeypatch.setattr(mmap, "mmap", refuse)
    reader = ChunkReader(p / "features")
    arr = zarr.open_array(p / "features", mode="r")
    for i in range(reader.n_chunks):
        assert np.array_equal(reader.read(i), arr[i * 100:(i + 1) * 100])  # the same bytes: exact


# -- stores without a manifest ---------------------------------------------------------------------------------------
def test_pre_manifest_store_with_deleted_label_chunk_and_stray_file(tmp_path):
    """Issue example: such a store validated "ok" and read zeros; now validation names both problems."""
    p = _store(tmp_path)
    _strip_manifest(p)
    assert not has_manifest(p)
    (p / "label" / "c" / "0").unlink()
    (p / "label" / "c" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(StoreError, match=r"'label': chunk file label/c/0 is missing.*stray file label/c/\.DS_Store"):
        cg.verify(p)
    assert main(["validate", str(p)]) == 2
    with pytest.raises(StoreError, match="label/c/0 is missing"):
        cg.open(p, verify=False)  # the cheap check of every open counts too


def test_pre_manifest_store_wrong_size_chunk(tmp_path):
    p = _store(tmp_path)
    _strip_manifest(p)
    f = p / "features" / "c" / "1" / "0"
    f.write_bytes(f.read_bytes()[:-4])  # the CRC dropped: Zarr would misread it
    with pytest.raises(StoreError, match=r"features/c/1/0 holds \d+ bytes; an uncompressed chunk of this array "
                                         r"holds \d+"):
        check_store(p)


def test_pre_manifest_store_whole_is_accepted_with_identical_data(tmp_path):
    original = make_run(n=300, d=8, k=4, seed=0, run_id="r", attacks=True)
    p = cg.save(original, tmp_path / "r.zarr", sample_chunk=100)
    _strip_manifest(p)
    assert check_store(p) is False
    xr.testing.assert_identical(cg.verify(p).load().drop_attrs(), original.drop_attrs())
    zs = cg.save(original, tmp_path / "z.zarr", sample_chunk=100, compressor="zstd")  # compressed: counted only
    _strip_manifest(zs)
    assert check_store(zs) is False
    (zs / "label" / "c" / "2").unlink()
    with pytest.raises(IncompleteStoreError, match="label/c/2 is missing"):
        check_store(zs)


# -- save of an opened half-precision run ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_save_of_opened_half_precision_run_validates(tmp_path, kind):
    """Issue example: `cg.save(cg.open("bf16.zarr"), "copy.zarr")` succeeded, then `validate copy.zarr` failed."""
    from ..pipeline.test_extract import Net, make_data

    x, y = make_data(96)
    src = cg.extract(Net(), (x, y), tmp_path / f"{kind}.zarr", progress=False, sample_chunk=32, features_dtype=kind)
    opened = cg.open(src)
    copy = cg.save(opened, tmp_path / "copy.zarr")
    assert main(["validate", str(copy)]) == 0
    back = cg.open(copy)
    np.testing.assert_array_equal(back["features"].values, opened["features"].values)  # the same values: exact
    assert back["features"].attrs["stored_dtype"] == kind
    meta_src = json.loads((src / "features" / "zarr.json").read_text())
    meta_copy = json.loads((copy / "features" / "zarr.json").read_text())
    assert meta_copy["data_type"] == meta_src["data_type"]
    assert {k: meta_copy["attributes"].get(k) for k in ("stored_dtype", "encoded_dtype")} == \
        {k: meta_src["attributes"].get(k) for k in ("stored_dtype", "encoded_dtype")}
    for name in ("features", "logits", "label"):  # the stored arrays themselves (half bits included): identical
        a, b = zarr.open_array(src / name, mode="r")[...], zarr.open_array(copy / name, mode="r")[...]
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), name


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_copy_of_half_run_keeps_the_tolerance_its_logits_need(tmp_path, kind):
    """Logits computed from the float32 features fit the half-precision features only within the half-precision
    tolerance: a copy written as float32 without the note (what save did) fails validation; the copy now passes."""
    import torch

    rng = np.random.default_rng(3)
    # features near a large constant, head rows summing to 0: small logits next to a large rounding of the features
    f32 = (100 + rng.normal(size=(400, 16))).astype(np.float32)
    W = rng.normal(size=(5, 16)).astype(np.float32)
    W -= W.mean(axis=1, keepdims=True)
    b = np.zeros(5, np.float32)
    logits = (f32.astype(np.float64) @ W.T.astype(np.float64)).astype(np.float32)  # from the float32 features
    ds = cg.from_arrays(f32, logits, rng.integers(0, 5, 400), head_weight=W, head_bias=b, attrs={"run_id": "h"})
    f = torch.from_numpy(f32).to(getattr(torch, kind))
    if kind == "float16":
        ds["features"] = xr.Variable(("sample", "feature"), f.numpy())
    else:
        ds["features"] = xr.Variable(("sample", "feature"), f.view(torch.int16).numpy().view(np.uint16),
                                     attrs={"encoded_dtype": "bfloat16"})
    opened = cg.open(cg.save(ds, tmp_path / "h.zarr"))
    as_float32 = opened.copy()
    as_float32["features"].attrs = {}
    with pytest.raises(cg.SchemaError, match="logits"):
        cg.validate(as_float32)  # the float32 tolerance refuses these logits: the attribute is needed
    copy = cg.save(opened, tmp_path / "copy.zarr")
    assert main(["validate", str(copy)]) == 0
    np.testing.assert_array_equal(cg.open(copy)["features"].values, opened["features"].values)


def test_save_refuses_values_not_representable_in_the_claimed_precision(tmp_path):
    p = _store(tmp_path)
    ds = cg.open(p).load()
    ds["features"].attrs["stored_dtype"] = "bfloat16"  # claims bfloat16, holds full float32 values
    with pytest.raises(cg.SchemaError, match=r"stored_dtype='bfloat16', but \d+ values are not exactly"):
        cg.save(ds, tmp_path / "copy.zarr", check_values=False)
    assert not (tmp_path / "copy.zarr").exists()


# -- malformed manifest entries and import --attr run_id (the CLI: exit 2) --------------------------------------------
@pytest.mark.parametrize("entry", [None, "1604", [1604], [1604, "0" * 32, 1]], ids=["null", "string", "one", "three"])
def test_malformed_manifest_entry_is_named_with_exit_2(tmp_path, capsys, entry):
    p = _store(tmp_path)
    g = zarr.open_group(str(p), mode="r+", zarr_format=3)
    mark = json.loads(json.dumps(dict(g.attrs[COMPLETE_ATTR])))
    mark["manifest"]["files"]["label/c/1"] = entry
    g.attrs[COMPLETE_ATTR] = mark
    with pytest.raises(StoreError, match=r"manifest in its completion mark .* entry 'files'\['label/c/1'\]"):
        cg.open(p, verify=False)
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "manifest" in err and "label/c/1" in err and "Traceback" not in err


def test_import_attr_run_id_must_match_the_store_name(tmp_path, capsys):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 4)).astype(np.float32)
    np.savez(tmp_path / "a.npz", features=f, logits=f[:, :3], labels=rng.integers(0, 3, 30))
    study = tmp_path / "study"
    study.mkdir()
    assert main(["import", str(tmp_path / "a.npz"), str(study / "x.zarr"), "--attr", "run_id=y"]) == 2
    err = capsys.readouterr().err
    assert "--attr run_id=y" in err and "'x'" in err and "Traceback" not in err
    assert list(study.iterdir()) == []  # nothing written
    assert main(["import", str(tmp_path / "a.npz"), str(study / "x.zarr"), "--attr", "run_id=x"]) == 0
    assert cg.open_study(study).run_ids == ["x"]  # the study stays readable


# -- the mutation test, extended: deletions after open, stores without manifests ------------------------------------
def _chunks_of(p: Path) -> list[Path]:
    return sorted(f for f in p.rglob("*") if f.is_file() and f.name != "zarr.json" and f.parent != p)


def _mutate_old(p: Path, rng: random.Random) -> str:
    """Mutations a store without manifest must catch (no swap, copy or link to a sibling chunk: without recorded
    digests two same-size chunks of one array cannot be told apart, the limit docs/reliability.md states)."""
    files = _chunks_of(p)
    f = rng.choice(files)
    op = rng.choice(["delete", "add", "rename", "truncate", "grow", "flip", "fifo", "symlink"])
    if op == "delete":
        f.unlink()
    elif op == "add":
        folder = rng.choice(sorted({x.parent for x in files} | {p}))
        name = rng.choice([".DS_Store", "9", "0.orig", "junk"])
        if not (folder / name).exists():
            (folder / name).write_bytes(rng.randbytes(rng.randrange(0, 40)))
    elif op == "rename":
        f.rename(f.with_name(f.name + rng.choice([".orig", "~", ".bak"])))
    elif op == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[: rng.randrange(0, max(1, len(data)))])
    elif op == "grow":
        f.write_bytes(f.read_bytes() + rng.randbytes(rng.randrange(1, 9)))
    elif op == "flip":
        data = bytearray(f.read_bytes())
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            f.write_bytes(bytes(data))
    elif op == "fifo":
        f.unlink()
        os.mkfifo(f)
    else:
        target = rng.choice(["/dev/zero", str(p.parent / "outside")])  # a link to a sibling chunk is a copy
        f.unlink()
        f.symlink_to(target)
    return op


@pytest.mark.slow
def test_random_mutations_after_open_and_without_manifest(tmp_path):
    """Seeded loops. (1) 150 stores opened, then 1-3 chunk files deleted (uncompressed and zstd stores alike): every
    read - the values through Zarr, the fused pass, a copy - raises StoreError. (2) 250 stores without manifest,
    1-3 random mutations each: `cg.verify` raises StoreError or returns data identical to what was saved, and never
    blocks; every mutation kind is caught at least once."""
    import tempfile

    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("read blocked")))
    try:
        original = make_run(n=12, run_id="r", attacks=True)
        srcs = [cg.save(original, base / f"src-{c}.zarr", sample_chunk=5, compressor=c) for c in ("none", "zstd")]
        (base / "outside").write_bytes((srcs[0] / "label" / "c" / "0").read_bytes())
        rng = random.Random(22)
        refused = 0
        for i in range(150):
            p = base / f"d{i}.zarr"
            shutil.copytree(rng.choice(srcs), p)
            ds = cg.open(p)
            # data variables (coordinates are read into memory by open itself)
            gone = rng.sample([f for f in _chunks_of(p) if f.relative_to(p).parts[0] in ds.data_vars],
                              rng.choice([1, 1, 2, 3]))
            for f in gone:
                f.unlink()
            signal.alarm(10)
            try:
                read = rng.choice(["values", "fused", "copy"])
                with pytest.raises(StoreError, match="missing"):
                    if read == "values":
                        ds.load()
                    elif read == "fused":  # reads features, logits, label, head: the deleted file may be elsewhere
                        table.fused_run(ds)
                        for name in ds.variables:
                            np.asarray(ds[name].values)
                    else:
                        cg.save(ds, base / f"copy{i}.zarr")
                refused += 1
            finally:
                signal.alarm(0)
            assert not (base / f"copy{i}.zarr").exists()
            shutil.rmtree(p)
        assert refused == 150

        src = srcs[0]
        _strip_manifest(src)
        caught, passed, kinds = 0, 0, {}
        for i in range(250):
            p = base / f"m{i}.zarr"
            shutil.copytree(src, p, symlinks=True)
            ops = [_mutate_old(p, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
            signal.alarm(10)
            try:
                back = cg.verify(p).load()
            except StoreError:
                caught += 1
                for op in ops:
                    kinds[op] = kinds.get(op, 0) + 1
            else:
                passed += 1
                xr.testing.assert_identical(back.drop_attrs(), original.drop_attrs())
            finally:
                signal.alarm(0)
            shutil.rmtree(p)
        assert caught + passed == 250 and caught > 200, (caught, passed)
        assert len(kinds) == 8, kinds
    finally:
        signal.signal(signal.SIGALRM, old)
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def test_reused_buffers_never_alias_a_chunk_still_held(tmp_path):
    """Chunks held at once come from distinct buffers (each equal to Zarr's read); a released one is reused."""
    p = _store(tmp_path, n=900, chunk=100)
    reader = ChunkReader(p / "features")
    arr = zarr.open_array(p / "features", mode="r")
    held = [reader.read(i) for i in range(reader.n_chunks)]  # more than the pool keeps: the rest are fresh
    for i, got in enumerate(held):
        assert np.array_equal(got, arr[i * 100:(i + 1) * 100]), i
    addr = (lambda a: a.__array_interface__["data"][0])
    first = addr(held[0])
    del held, got
    again = reader.read(5)
    assert addr(again) == first  # nothing refers to the first buffer any more: reused
    assert np.array_equal(again, arr[500:600])
    sub = again[10:20]
    del again
    other = reader.read(6)
    assert addr(other) != first and not np.shares_memory(sub, other)  # a slice still holds its buffer
    assert np.array_equal(sub, arr[510:520]) and np.array_equal(other, arr[600:700])
