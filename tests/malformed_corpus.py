"""The corpus of malformed inputs (issue 10): each case builds a bad input and feeds it to causalgeom.

A case is ``Case(name, run, error, match)``: ``run(inp, out)`` builds its input under the folder
``inp`` and hands it to a public entry point that would write under ``out``; the test expects
``error`` (a causalgeom error) whose message matches ``match``, and that ``out`` holds nothing
afterwards (lock files aside). Other test modules may append cases with `register`.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import causalgeom as cg
from causalgeom.errors import (DumpImportError, HeadMissingError, IncompleteStoreError, SchemaError, StoreError,
                               StoreExistsError, UnsafeFileError)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Path, Path], object]
    error: type[Exception]
    match: str


CASES: list[Case] = []


def register(name: str, error: type[Exception], match: str):
    def deco(fn: Callable[[Path, Path], object]):
        CASES.append(Case(name, fn, error, match))
        return fn
    return deco


def _good(n: int = 30, d: int = 5, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d)).astype(np.float32)
    W = rng.normal(size=(k, d)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    return dict(features=f, logits=f @ W.T + b, labels=rng.integers(0, k, n), head_weight=W, head_bias=b)


def _arrays(out: Path, **override):
    a = _good()
    a.update(override)
    ds = cg.from_arrays(a.pop("features"), a.pop("logits"), a.pop("labels"), **a, attrs={"run_id": "bad"})
    cg.save(ds, out / "bad.zarr")


def _npz(inp: Path, out: Path, **arrays):
    p = inp / "dump.npz"
    np.savez(p, **arrays)
    return cg.import_dump(p, out=out / "bad.zarr")


# -- arrays: shapes, dims, dtypes ----------------------------------------------------------
register("features 1-D", SchemaError, "'features'.*2 dimensions")(lambda i, o: _arrays(o, features=np.zeros(30, np.float32)))
register("features 3-D", SchemaError, "'features'.*2 dimensions")(lambda i, o: _arrays(o, features=np.zeros((30, 5, 2))))
register("logits with fewer samples", SchemaError, "'logits'.*29 samples")(lambda i, o: _arrays(o, logits=_good()["logits"][:29]))
register("labels 2-D", SchemaError, "'label'.*1 dimension")(lambda i, o: _arrays(o, labels=np.zeros((30, 2), int)))
register("labels fewer samples", SchemaError, "'label'.*10 samples")(lambda i, o: _arrays(o, labels=np.zeros(10, int)))
register("string features", SchemaError, "'features'.*floating")(lambda i, o: _arrays(o, features=np.full((30, 5), "a")))
register("ragged features", SchemaError, "'features'")(lambda i, o: _arrays(o, features=[[1.0, 2.0], [3.0]]))
register("float64 overflowing float32", SchemaError, "overflow float32")(
    lambda i, o: _arrays(o, features=np.full((30, 5), 1e300)))
register("bool labels", SchemaError, "'label'.*integer")(lambda i, o: _arrays(o, labels=np.ones(30, bool)))
register("non-integer labels", SchemaError, "'label'.*integer")(lambda i, o: _arrays(o, labels=np.full(30, 0.5)))


# -- values ----------------------------------------------------------------------------------
def _with(name, fn):
    def run(i, o):
        a = _good()
        a[name] = fn(a[name].copy())
        ds = cg.from_arrays(a.pop("features"), a.pop("logits"), a.pop("labels"), **a, attrs={"run_id": "x"},
                            validate_values=False)
        cg.save(ds, o / "bad.zarr")
    return run


def _set(idx, value):
    def f(x):
        x[idx] = value
        return x
    return f


register("NaN in features", SchemaError, "'features'.*NaN/Inf")(_with("features", _set((0, 0), np.nan)))
register("Inf in logits", SchemaError, "'logits'.*NaN/Inf")(_with("logits", _set((3, 1), np.inf)))
register("NaN in head weight", SchemaError, "'head_weight'.*NaN/Inf")(_with("head_weight", _set((0, 0), np.nan)))
register("label above K", SchemaError, r"'label'.*\[0, 4\)")(_with("labels", _set(0, 4)))
register("negative label", SchemaError, r"'label'.*\[-1")(_with("labels", _set(0, -1)))
register("inconsistent logits", SchemaError, "'logits'.*max deviation")(_with("logits", _set((2, 2), 99.0)))
register("empty arrays", SchemaError, "empty")(lambda i, o: _arrays(
    o, features=np.zeros((0, 5), np.float32), logits=np.zeros((0, 4), np.float32), labels=np.zeros(0, int)))
register("one class", SchemaError, "at least 2 classes")(lambda i, o: _arrays(
    o, logits=np.zeros((30, 1), np.float32), labels=np.zeros(30, int), head_weight=None, head_bias=None))
register("K differs logits vs head", SchemaError, "'head_weight'.*K")(
    lambda i, o: _arrays(o, head_weight=np.zeros((6, 5), np.float32), head_bias=None))
register("feature dim differs head", SchemaError, "feature dim 7 disagrees")(
    lambda i, o: _arrays(o, head_weight=np.zeros((4, 7), np.float32), head_bias=None))
register("bias length wrong", SchemaError, "'head_bias'.*3 classes")(lambda i, o: _arrays(o, head_bias=np.zeros(3)))
register("bias without weight", SchemaError, "'head_bias'.*without")(lambda i, o: _arrays(o, head_weight=None))


# -- datasets --------------------------------------------------------------------------------
def _ds_case(mutate):
    def run(i, o):
        a = _good()
        ds = cg.from_arrays(a.pop("features"), a.pop("logits"), a.pop("labels"), **a, attrs={"run_id": "x"})
        cg.save(mutate(ds.copy()), o / "bad.zarr")
    return run


def _attr(key, value):
    def m(ds):
        if value is None:
            del ds.attrs[key]
        else:
            ds.attrs[key] = value
        return ds
    return m


register("unknown schema version", SchemaError, "unknown version 7")(_ds_case(_attr("schema_version", 7)))
register("missing schema version", SchemaError, "'schema_version' is missing")(_ds_case(_attr("schema_version", None)))
register("run id escapes folder", SchemaError, "'run_id'")(_ds_case(_attr("run_id", "../../x")))
register("wrong dims on label", SchemaError, "'label'.*missing dims")(
    _ds_case(lambda ds: ds.assign(label=("obs", ds.label.values))))
register("wrong dtype of features", SchemaError, "'features'.*float32")(
    _ds_case(lambda ds: ds.assign(features=ds.features.astype("float64"))))
register("decreasing eps", SchemaError, "'eps'.*increasing")(lambda i, o: cg.save(cg.from_arrays(
    **{k: v for k, v in _good().items() if k != "labels"}, labels=np.zeros(30, int),
    adv_correct=np.ones((1, 2, 30), bool), adv_margin=np.ones((1, 2, 30)), attacks=["a"], eps=[0.2, 0.1]),
    o / "bad.zarr"))
register("non-bool adv_correct", SchemaError, "'adv_correct'.*bool")(lambda i, o: cg.from_arrays(
    **{k: v for k, v in _good().items() if k != "labels"}, labels=np.zeros(30, int),
    adv_correct=np.ones((1, 1, 30)), adv_margin=np.ones((1, 1, 30)), attacks=["a"], eps=[0.1]))
register("non-JSON attribute", SchemaError, "attribute 'f'")(lambda i, o: cg.from_arrays(
    *list(_good().values())[:3], attrs={"f": lambda: 0}))


# -- dump files ----------------------------------------------------------------------------
register("npz with pickled objects", UnsafeFileError, "pickle")(
    lambda i, o: _npz(i, o, features=np.zeros((3, 2)), labels=np.array([None, 1, 2], dtype=object)))
register("npz that is not a zip", DumpImportError, "not a valid .npz")(
    lambda i, o: ((i / "d.npz").write_bytes(b"garbage"), cg.import_dump(i / "d.npz", out=o / "bad.zarr")))
register("npz without features", DumpImportError, "features array")(
    lambda i, o: _npz(i, o, logits=np.zeros((3, 2)), labels=np.zeros(3, int)))
register("npz without logits or head", DumpImportError, "neither logits")(
    lambda i, o: _npz(i, o, features=np.zeros((3, 2)), labels=np.zeros(3, int)))
register("npz with NaN features", SchemaError, "dump.npz.*NaN")(
    lambda i, o: _npz(i, o, features=np.full((3, 2), np.nan), logits=np.zeros((3, 2)), labels=np.zeros(3, int)))
register("unknown extension", DumpImportError, "unknown dump format")(
    lambda i, o: ((i / "d.pkl").write_bytes(b"x"), cg.import_dump(i / "d.pkl", out=o / "bad.zarr")))
register("dump path is a folder", DumpImportError, "is a folder")(lambda i, o: cg.import_dump(i, out=o / "bad.zarr"))


def _pt(i: Path, o: Path, obj):
    import torch

    torch.save(obj, i / "d.pt")
    return cg.import_dump(i / "d.pt", out=o / "bad.zarr")


class _Payload:
    def __reduce__(self):
        return (subprocess.call, (["true"],))


register("pt pickle with code", UnsafeFileError, "refused")(lambda i, o: _pt(i, o, {"features": _Payload()}))
register("pt holding a bare tensor", DumpImportError, "dict of tensors")(
    lambda i, o: _pt(i, o, __import__("torch").zeros(3)))


def _truncated_pt(i, o):
    import torch

    torch.save({"features": torch.zeros(100, 10)}, i / "d.pt")
    raw = (i / "d.pt").read_bytes()
    (i / "d.pt").write_bytes(raw[: len(raw) // 2])
    return cg.import_dump(i / "d.pt", out=o / "bad.zarr")


register("truncated pt", DumpImportError, "cannot read as a torch file")(_truncated_pt)
register("safetensors header longer than file", DumpImportError, "header length")(
    lambda i, o: ((i / "d.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}"),
                  cg.import_dump(i / "d.safetensors", out=o / "bad.zarr")))


def _st_offsets(i, o):
    import json

    header = json.dumps({"features": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    (i / "d.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return cg.import_dump(i / "d.safetensors", out=o / "bad.zarr")


register("safetensors sizes past end of file", DumpImportError, "past the end")(_st_offsets)


# -- stores and studies --------------------------------------------------------------------
def _saved(i: Path, n=200, chunk=50) -> Path:
    a = _good(n=n)
    ds = cg.from_arrays(a.pop("features"), a.pop("logits"), a.pop("labels"), **a, attrs={"run_id": "r"})
    return cg.save(ds, i / "r.zarr", sample_chunk=chunk)


def _first_chunk(p: Path, var: str) -> Path:
    return sorted(f for f in (p / var / "c").rglob("*") if f.is_file())[0]


def _truncate_chunk(i, o):
    p = _saved(i)
    c = _first_chunk(p, "features")
    c.write_bytes(c.read_bytes()[:10])
    cg.open(p)


def _delete_chunk(i, o):
    p = _saved(i)
    _first_chunk(p, "label").unlink()
    cg.open(p)


def _no_mark(i, o):
    import zarr

    p = _saved(i)
    del zarr.open_group(str(p), mode="r+").attrs[cg.store.COMPLETE_ATTR]
    cg.open(p)


register("truncated Zarr chunk", StoreError, "'features'.*corrupted")(_truncate_chunk)
register("deleted Zarr chunk", IncompleteStoreError, "'label'.*missing")(_delete_chunk)
register("store missing completion mark", IncompleteStoreError, "not completely written")(_no_mark)
register("store path is a file", StoreError, "is a file")(
    lambda i, o: ((i / "x.zarr").write_text(""), cg.open(i / "x.zarr")))
register("save over a file", StoreError, "a file")(lambda i, o: _save_over_file(i))
register("folder that is not a store", StoreError, "not a readable Zarr")(
    lambda i, o: ((i / "empty.zarr").mkdir(), cg.open(i / "empty.zarr")))
register("study path is a file", StoreError, "is a file")(
    lambda i, o: ((i / "s").write_text(""), cg.open_study(i / "s")))
register("study run folder with another run id", StoreError, "holds run_id")(
    lambda i, o: (_saved(i).rename(i / "other.zarr"), cg.open_study(i).runs))


def _save_over_file(i):
    (i / "f.zarr").write_text("")
    cg.save(cg.from_arrays(*list(_good().values())[:3]), i / "f.zarr")


def _dup_study(i, o):
    a = _good()
    np.savez(i / "a.npz", features=a["features"], logits=a["logits"], labels=a["labels"])
    (i / "runs.csv").write_text("file,run_id\na.npz,same\nb.npz,same\n")
    np.savez(i / "b.npz", features=a["features"], logits=a["logits"], labels=a["labels"])
    cg.adapters.import_study([i / "a.npz", i / "b.npz"], o / "study", run_table=i / "runs.csv")


register("duplicate run ids in an import", DumpImportError, "duplicate run_id")(_dup_study)


def _dup_add(i, o):
    study = cg.open_study(i)
    _saved(i)
    a = _good(seed=1)
    study.add(cg.from_arrays(a.pop("features"), a.pop("logits"), a.pop("labels"), attrs={"run_id": "r"}))


register("duplicate run id in a study", StoreExistsError, "run_id 'r'")(_dup_add)
register("run table without file column", DumpImportError, "'file' column")(
    lambda i, o: ((i / "t.csv").write_text("run_id\nx\n"), cg.adapters.import_study([], o / "s", run_table=i / "t.csv")))


def _missing_head(i, o):
    from causalgeom.schema import require_head

    a = _good()
    require_head(cg.from_arrays(a["features"], a["logits"], a["labels"]), "minimal-loss centers")


register("missing head for a head analysis", HeadMissingError, "minimal-loss centers")(_missing_head)
