"""A store can be proven whole: the manifest in the completion mark, and what `validate` finds against it (issue 16).

Every example of the issue has a test here, and a seeded random-mutation test checks over 600 mutated stores that
`cg.verify` (what ``causalgeom validate`` runs) either raises a `StoreError` or returns data identical to what was
saved, and never blocks.
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
from causalgeom.dump.store import COMPLETE_ATTR, build_manifest, check_store, has_manifest

from causalgeom.testing import make_run


def _store(tmp_path, n=450, chunk=150, **kw) -> Path:
    return cg.save(make_run(n=n, run_id="r", **kw), tmp_path / "r.zarr", sample_chunk=chunk)


def _strip_manifest(p: Path) -> None:
    """Make ``p`` look like a store written before manifests existed."""
    g = zarr.open_group(str(p), mode="r+", zarr_format=3)
    mark = dict(g.attrs[COMPLETE_ATTR])
    mark.pop("manifest")
    g.attrs[COMPLETE_ATTR] = mark


def test_manifest_lists_every_array_and_chunk(tmp_path):
    p = _store(tmp_path, n=40, chunk=16, attacks=True)
    m = json.loads((p / "zarr.json").read_text())["attributes"][COMPLETE_ATTR]["manifest"]
    ds = xr.open_zarr(p, consolidated=False, zarr_format=3)
    # data variables and coordinates (attack: a string array) alike
    assert set(m["arrays"]) == set(ds.variables)
    assert m["arrays"]["features"]["shape"] == [40, ds.sizes["feature"]]
    assert m["arrays"]["features"]["chunk_shape"] == [16, ds.sizes["feature"]]
    assert m["arrays"]["features"]["data_type"] == "float32"
    assert m["arrays"]["label"]["chunk_key_encoding"]["name"] == "default"
    on_disk = sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and f.name != "zarr.json" or
                     f.is_file() and f.parent != p)
    assert sorted(m["files"]) == on_disk
    assert [k for k in m["files"] if k.startswith("features/c/")] == ["features/c/0/0", "features/c/1/0",
                                                                     "features/c/2/0"]  # ceil(40/16) chunks
    for key, (size, digest) in m["files"].items():
        assert size == (p / key).stat().st_size and len(digest) == 32
    assert build_manifest(p)["files"] == m["files"]  # deterministic
    assert has_manifest(p) and check_store(p) is True


def test_extracted_store_has_a_manifest(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    p = tmp_path / "e.zarr"
    cg.extract(model, (torch.rand(6, 1, 2, 2, generator=g), torch.randint(0, 3, (6,), generator=g)), p,
               attrs={"run_id": "e"}, progress=False)
    assert has_manifest(p)
    cg.verify(p)
    assert ".progress" not in build_manifest(p)["files"]


def test_deleted_chunk_with_stray_file_is_not_ok(tmp_path):
    """Issue example: delete label/c/0 and put a .DS_Store in its folder; validate printed ok and labels read 0."""
    p = _store(tmp_path)
    (p / "label" / "c" / "0").unlink()
    (p / "label" / "c" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(cg.StoreError, match=r"'label'.*label/c/0 is missing.*extra file label/c/\.DS_Store"):
        cg.verify(p)
    with pytest.raises(cg.StoreError, match="missing"):
        cg.open(p)  # the cheap check of a normal open finds it too


def test_renamed_chunk_is_named(tmp_path):
    p = _store(tmp_path)
    os.rename(p / "label" / "c" / "1", p / "label" / "c" / "1.orig")
    (p / "label" / "c" / "0").unlink()
    with pytest.raises(cg.StoreError, match=r"label/c/1 is missing \(renamed to label/c/1\.orig\?\)"):
        cg.verify(p)


def test_swapped_chunks_are_named(tmp_path):
    p = _store(tmp_path)
    a, b = p / "features" / "c" / "0" / "0", p / "features" / "c" / "2" / "0"
    ra, rb = a.read_bytes(), b.read_bytes()
    a.write_bytes(rb), b.write_bytes(ra)
    with pytest.raises(cg.StoreError, match=r"features/c/0/0 is corrupted .*content of features/c/2/0 \(swapped"):
        cg.verify(p)


def _edit_meta(p: Path, fn) -> None:
    for meta in p.glob("*/zarr.json"):
        d = json.loads(meta.read_text())
        fn(d)
        meta.write_text(json.dumps(d))


def test_edited_sample_dimension_is_refused(tmp_path):
    """Issue example: every sample dim in zarr.json changed from 450 to 200; validate said ok, 250 samples vanished."""
    p = _store(tmp_path)

    def shrink(d):
        dims = d.get("dimension_names") or []
        if "sample" in dims:
            d["shape"][dims.index("sample")] = 200
    _edit_meta(p, shrink)
    with pytest.raises(cg.StoreError, match=r"'features': metadata shape is \[200, \d+\] but the completion mark "
                                            r"records \[450, \d+\]"):
        cg.open(p)


def test_edited_sample_dimension_is_refused_without_manifest(tmp_path):
    """A store written before manifests: its completion mark still records n_samples, which must agree."""
    p = _store(tmp_path)
    _strip_manifest(p)

    def shrink(d):
        dims = d.get("dimension_names") or []
        if "sample" in dims:
            d["shape"][dims.index("sample")] = 200
    _edit_meta(p, shrink)
    with pytest.raises(cg.StoreError, match="hold 200 samples but the completion mark records 450"):
        cg.verify(p)


@pytest.mark.parametrize("field,value", [("data_type", "int32"), ("chunk_key_encoding",
                                                                  {"name": "v2", "configuration": {"separator": "."}}),
                                         ("chunk_grid", {"name": "regular", "configuration": {"chunk_shape": [50, 16]}})])
def test_metadata_disagreeing_with_the_mark(tmp_path, field, value):
    p = _store(tmp_path)
    meta = p / "features" / "zarr.json"
    d = json.loads(meta.read_text())
    d[field] = value
    meta.write_text(json.dumps(d))
    name = "chunk_shape" if field == "chunk_grid" else field
    with pytest.raises(cg.StoreError, match=rf"'features': metadata {name} is .* but the completion mark records"):
        cg.open(p, verify=False)


def test_root_attributes_edited(tmp_path):
    p = _store(tmp_path)
    g = zarr.open_group(str(p), mode="r+", zarr_format=3)
    g.attrs["regularizer"] = "mixup"
    with pytest.raises(cg.StoreError, match="root metadata"):
        cg.open(p, verify=False)


def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    """Issue example: a chunk replaced by a FIFO made validate hang forever; an lstat check refuses it at once."""
    p = _store(tmp_path)
    chunk = p / "logits" / "c" / "1" / "0"
    chunk.unlink()
    os.mkfifo(chunk)
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("blocked")))
    signal.alarm(20)
    try:
        with pytest.raises(cg.StoreError, match=r"logits/c/1/0 is a FIFO \(named pipe\), not a regular file"):
            cg.verify(p)
        with pytest.raises(cg.StoreError, match="FIFO"):
            cg.open(p, verify=False)
        os.unlink(p / "zarr.json")
        os.mkfifo(p / "zarr.json")
        with pytest.raises(cg.StoreError, match="zarr.json is a FIFO"):
            cg.open(p)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_symlink_leaving_the_store_is_refused(tmp_path):
    p = _store(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.write_bytes((p / "label" / "c" / "0").read_bytes())
    (p / "label" / "c" / "0").unlink()
    (p / "label" / "c" / "0").symlink_to(outside)
    with pytest.raises(cg.StoreError, match="symbolic link leaving the store"):
        cg.open(p, verify=False)
    (p / "label" / "c" / "0").unlink()
    (p / "label" / "c" / "0").symlink_to("/dev/zero")
    with pytest.raises(cg.StoreError, match="symbolic link leaving the store"):
        cg.open(p, verify=False)


def test_store_without_manifest_stays_readable(tmp_path, capsys):
    from causalgeom.cli import main

    p = _store(tmp_path, n=60, chunk=20)
    _strip_manifest(p)
    assert not has_manifest(p) and check_store(p) is False
    # make_run stamps its creation time: compare without it (the data and every other attribute must match)
    xr.testing.assert_identical(cg.verify(p).load().drop_attrs(), make_run(n=60, run_id="r").drop_attrs())
    assert main(["validate", str(p)]) == 0
    assert "no manifest" in capsys.readouterr().out
    (p / "label" / "c" / "0").unlink()  # the old chunk count still applies
    with pytest.raises(cg.IncompleteStoreError, match="'label'.*missing"):
        cg.open(p)


def test_normal_open_checks_checksums_once_per_process(tmp_path, monkeypatch):
    import causalgeom.dump.store as st

    p = _store(tmp_path, n=60, chunk=20)
    calls = []
    real = st._file_digest
    monkeypatch.setattr(st, "_file_digest", lambda f: calls.append(f) or real(f))
    monkeypatch.setattr(st, "_VERIFIED", set())
    cg.open(p)
    n = len(calls)
    assert n >= len(build_manifest(p)["files"])
    calls.clear()
    cg.open(p)
    assert calls == []  # second open: names, sizes and metadata only
    cg.verify(p)
    assert len(calls) == n  # an explicit verify reads everything again


# -- random mutations ------------------------------------------------------------------------------------------------
def _files(p: Path) -> list[Path]:
    return sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _mutate(p: Path, rng: random.Random) -> str:
    files = _files(p)
    chunks = [f for f in files if f.name != "zarr.json"]
    metas = [f for f in files if f.name == "zarr.json"]
    op = rng.choice(["delete", "add", "rename", "rename_over", "truncate", "swap", "flip", "meta", "root_attr",
                     "fifo", "symlink", "copy_over"])
    f = rng.choice(chunks)
    if op == "delete":
        rng.choice(files).unlink()
    elif op == "add":
        folder = rng.choice(sorted({x.parent for x in files}))
        name = rng.choice([".DS_Store", "9", "0.orig", "junk", "c"])
        if not (folder / name).exists():
            (folder / name).write_bytes(rng.randbytes(rng.randrange(0, 40)))
    elif op == "rename":
        f.rename(f.with_name(f.name + rng.choice([".orig", "~", ".bak"])))
    elif op == "rename_over":
        g = rng.choice(chunks)
        if g != f:
            f.replace(g)
    elif op == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[: rng.randrange(0, max(1, len(data)))])
    elif op in ("swap", "copy_over"):
        g = rng.choice(chunks)
        a, b = f.read_bytes(), g.read_bytes()
        f.write_bytes(b)
        if op == "swap":
            g.write_bytes(a)
    elif op == "flip":
        data = bytearray(f.read_bytes())
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            f.write_bytes(bytes(data))
    elif op == "meta":
        m = rng.choice(metas)
        d = json.loads(m.read_text())
        if d.get("node_type") == "array" and d.get("shape"):
            field = rng.choice(["shape", "data_type", "chunk", "sep", "fill", "dims"])
            if field == "shape":
                d["shape"][0] = max(0, d["shape"][0] + rng.choice([-7, -1, 1, 5]))
            elif field == "data_type":
                d["data_type"] = rng.choice(["int8", "float64", "uint32", "bool"])
            elif field == "chunk":
                d["chunk_grid"]["configuration"]["chunk_shape"][0] = rng.choice([1, 3, 7, 1000])
            elif field == "sep":
                d["chunk_key_encoding"] = {"name": "default", "configuration": {"separator": "."}}
            elif field == "fill":
                d["fill_value"] = 1 if not isinstance(d.get("fill_value"), str) else "x"
            else:
                d["dimension_names"] = list(reversed(d.get("dimension_names") or []))
        else:
            d.setdefault("attributes", {})["seed"] = rng.randrange(100)
        m.write_text(json.dumps(d))
    elif op == "root_attr":
        g = zarr.open_group(str(p), mode="r+", zarr_format=3)
        key = rng.choice(["run_id", "regularizer", "new"])
        g.attrs[key] = "x" + str(rng.randrange(10))
    elif op == "fifo":
        f.unlink()
        os.mkfifo(f)
    elif op == "symlink":
        target = rng.choice(["/dev/zero", str(p.parent / "outside"), str(rng.choice(chunks))])
        f.unlink()
        f.symlink_to(target)
    return op


@pytest.mark.slow
def test_random_mutations_never_pass_with_different_data(tmp_path):
    """Seeded loop over 600 mutated copies of a tiny store (1-3 random mutations each, a dozen kinds).

    Property: `cg.verify` either raises a StoreError or returns a Dataset identical to the saved one; a SIGALRM
    guard turns any blocking read into a failure. The mutation kinds that must be caught are counted, so a
    regression in which every mutation is harmless cannot pass silently.
    """
    import tempfile

    # /dev/shm (tmpfs) where there is one: creating and removing 36 000 small files on a loaded disk takes minutes
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    try:
        _mutation_loop(base)
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def _mutation_loop(tmp_path: Path) -> None:
    original = make_run(n=12, run_id="r", attacks=True)
    src = cg.save(original, tmp_path / "src.zarr", sample_chunk=5)
    (tmp_path / "outside").write_bytes((src / "label" / "c" / "0").read_bytes())
    rng = random.Random(16)
    caught, passed, kinds = 0, 0, {}
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("validate blocked")))
    try:
        for i in range(600):
            p = tmp_path / f"m{i}.zarr"
            shutil.copytree(src, p, symlinks=True)
            ops = [_mutate(p, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
            signal.alarm(10)
            try:
                back = cg.verify(p).load()
            except cg.StoreError:
                caught += 1
                for op in ops:
                    kinds[op] = kinds.get(op, 0) + 1
            else:
                passed += 1
                xr.testing.assert_identical(back, original)
            finally:
                signal.alarm(0)
            shutil.rmtree(p)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert caught + passed == 600
    assert caught > 500, (caught, passed)
    assert len(kinds) == 12, kinds
