"""The corpus of malformed inputs (issue 10): each case builds a bad input and feeds it to causalgeom.

A case is ``Case(name, run, error, match)``: ``run(inp, out)`` builds its input under the folder
``inp`` and hands it to a public entry point that would write under ``out``; the test expects
``error`` (a causalgeom error) whose message matches ``match``, and that ``out`` holds nothing
afterwards (lock files aside). Other test modules may append cases with `register`.

Kinds covered: arrays, datasets, dump files, stores and study folders, run tables, training configs (TrainConfig
and grid TOML files; ``out`` is the training output folder), CIFAR batch files, checkpoints and query files (given
to ``causalgeom mediate`` with ``--out`` under ``out``). Payloads that would run code create ``out/pwned`` if they
ever ran, so "nothing under out" also proves that no code ran.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import causalgeom as cg
from causalgeom.errors import (ConfigError, DumpImportError, HeadMissingError, IncompleteStoreError, QueryError,
                               SchemaError, StoreError, StoreExistsError, UnsafeFileError)


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
    from causalgeom.dump.schema import require_head

    a = _good()
    require_head(cg.from_arrays(a["features"], a["logits"], a["labels"]), "minimal-loss centers")


register("missing head for a head analysis", HeadMissingError, "minimal-loss centers")(_missing_head)


def _study_truncated_run(i, o):
    study = cg.open_study(i)
    for rid in ("a", "b"):
        a = _good(n=200)
        study.add(cg.from_arrays(a.pop("features"), a.pop("logits"), a.pop("labels"), **a, attrs={"run_id": rid}))
    c = _first_chunk(i / "b.zarr", "logits")
    c.write_bytes(c.read_bytes()[:-7])
    study = cg.open_study(i)
    assert study.run_ids == ["a", "b"]  # the damage is in a chunk: found when the run is read
    study["b"]


def _study_incomplete_run(i, o):
    import zarr

    study = cg.open_study(i)
    _saved(i)
    del zarr.open_group(str(i / "r.zarr"), mode="r+").attrs[cg.store.COMPLETE_ATTR]
    study = cg.open_study(i)
    assert study.run_ids == [] and study.incomplete == ["r.zarr"]
    study["r"]


register("study with a truncated run", StoreError, "'logits'.*corrupted")(_study_truncated_run)
register("study with an incomplete run", IncompleteStoreError, "'r'.*not completely written")(_study_incomplete_run)


def _run_table(i, o, run_id):
    a = _good()
    np.savez(i / "a.npz", features=a["features"], logits=a["logits"], labels=a["labels"])
    (i / "runs.csv").write_text(f"file,run_id\na.npz,{run_id}\n")
    cg.adapters.import_study([i / "a.npz"], o / "study", run_table=i / "runs.csv")


register("run table with run_id escaping the study", SchemaError, r"'run_id'.*'\.\./x'")(
    lambda i, o: _run_table(i, o, "../x"))
register("run table with an absolute run_id", SchemaError, r"'run_id'.*'/tmp/x'")(
    lambda i, o: _run_table(i, o, "/tmp/x"))


def _npy_header(shape, dtype="<f4", data=b"\0" * 16) -> bytes:
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def _npz_huge_header(i, o):
    import zipfile

    with zipfile.ZipFile(i / "d.npz", "w") as z:
        z.writestr("features.npy", _npy_header((1_000_000, 1_000_000)))
        z.writestr("logits.npy", _npy_header((1_000_000, 10)))
        z.writestr("labels.npy", _npy_header((1_000_000,), "<i8"))
    return cg.import_dump(i / "d.npz", out=o / "bad.zarr")


register("npz whose .npy header declares a huge shape", DumpImportError, r"'features.npy' declares shape")(
    _npz_huge_header)


def _extract_escaping_run_id(i, o):
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(10, 1, 2, 2), torch.randint(0, 3, (10,))
    cg.extract(model, (x, y), o / "r.zarr", attrs={"run_id": "../../x"}, progress=False)


register("extraction with run_id escaping the study", SchemaError, r"'run_id'.*'\.\./\.\./x'")(
    _extract_escaping_run_id)


# -- training configs: `out` is the training output folder; no run folder (or anything else) may appear -------
def _train(**kw):
    def run(i, o):
        from causalgeom import train

        kw2 = {k: (str(i / v[5:]) if isinstance(v, str) and v.startswith("<in>/") else v) for k, v in kw.items()}
        train.train_run(train.TrainConfig(**{"epochs": 1, "max_train_samples": 16, "num_threads": 1, **kw2}), o,
                        progress=False)
    return run


def _train_dict(d):
    def run(i, o):
        from causalgeom import train

        train.train_run(d, o, progress=False)
    return run


def _grid(text: str):
    def run(i, o):
        from causalgeom import train

        (i / "grid.toml").write_text(text.replace("<in>", str(i)))
        train.run_grid(i / "grid.toml", o, progress=False)
    return run


_GRID_TRAIN = '[train]\nepochs = 1\nmax_train_samples = 16\nnum_threads = 1\n'

register("train: unknown regularizer", ConfigError, r"regularizer: unknown component\(s\) 'dropblock'")(
    _train(regularizer="dropblock"))
register("train: negative label-smoothing eps", ConfigError,
         r"label_smoothing: expected a number in \[0, 1\), got -0.1")(
    _train(regularizer="label_smoothing", label_smoothing=-0.1))
register("train: label-smoothing eps of 1", ConfigError, r"label_smoothing: .*\[0, 1\), got 1.0")(
    _train(regularizer="label_smoothing", label_smoothing=1.0))
register("train: negative mixup alpha", ConfigError, r"mixup_alpha: expected a number >= 0, got -1.0")(
    _train(regularizer="mixup", mixup_alpha=-1.0))
register("train: NaN cutmix alpha", ConfigError, r"cutmix_alpha: .*nan")(
    _train(regularizer="cutmix", cutmix_alpha=float("nan")))
register("train: regularizer without its strength", ConfigError, r"mixup_alpha: .*must be > 0")(
    _train(regularizer="mixup"))
register("train: strength without its regularizer", ConfigError, r"label_smoothing=0.1 is set but")(
    _train(label_smoothing=0.1))
register("train: cifar10 folder missing", ConfigError, r"dataset 'cifar10'.*missing: data_batch_1")(
    _train(dataset="cifar10", data_root="<in>/no_data"))
register("train: unknown model", ConfigError, r"model: unknown name 'resnet9000'")(_train(model="resnet9000"))
register("train: unknown dataset", ConfigError, r"dataset: expected one of .*'mnist'")(_train(dataset="mnist"))
register("train: run_id escaping the output folder", ConfigError, r"run_id: .*'\.\./\.\./x'")(_train(run_id="../../x"))
register("train: epochs as a string", ConfigError, r"epochs: expected an integer >= 1, got 'ten'")(
    _train_dict({"epochs": "ten"}))
register("train: fractional batch size", ConfigError, r"batch_size: expected an integer")(_train(batch_size=1.5))
register("train: zero learning rate", ConfigError, r"lr: expected a number > 0, got 0")(_train(lr=0))
register("train: amp not a boolean", ConfigError, r"amp: expected true or false, got 'yes'")(_train(amp="yes"))
register("train: unknown device", ConfigError, r"device: .*'tpu'")(_train(device="tpu"))
register("train: unknown optimizer", ConfigError, r"optimizer: expected one of .*'adam'")(_train(optimizer="adam"))
register("train: unknown config key", ConfigError, r"unknown key\(s\) 'epoch'")(_train_dict({"epoch": 3}))
register("train: config that is not a table", ConfigError, r"expected a table/dict, got list")(_train_dict(["ce"]))
register("grid: bad TOML syntax", ConfigError, r"grid config .*not valid TOML")(_grid("[train\nepochs = 1\n"))
register("grid: config path is a folder", ConfigError, r"is a folder")(
    lambda i, o: __import__("causalgeom.pipeline.train").pipeline.train.run_grid(i, o, progress=False))
register("grid: config file missing", ConfigError, r"not found")(
    lambda i, o: __import__("causalgeom.pipeline.train").pipeline.train.run_grid(i / "nope.toml", o, progress=False))
register("grid: unknown top-level key", ConfigError, r"unknown key\(s\) 'regularisers'")(
    _grid(_GRID_TRAIN + '[[regularisers]]\nname = "ce"\n'))
register("grid: unknown [train] key", ConfigError, r"'epoch'.*not allowed")(
    _grid('[train]\nepoch = 1\n[[regularizers]]\nname = "ce"\n'))
register("grid: seed of the wrong type", ConfigError, r"seed: expected an integer")(
    _grid('seeds = ["zero"]\n' + _GRID_TRAIN + '[[regularizers]]\nname = "ce"\n'))
register("grid: empty regularizer list", ConfigError, r"'regularizers' must be a non-empty list")(
    _grid("regularizers = []\n" + _GRID_TRAIN))
register("grid: negative eps after a valid one", ConfigError, r"strength=-0.2.*label_smoothing: expected")(
    _grid(_GRID_TRAIN + '[[regularizers]]\nname = "ce"\n[[regularizers]]\nname = "label_smoothing"\n'
                        'strengths = [0.1, -0.2]\n'))
register("grid: duplicate run ids", ConfigError, r"duplicate run ids \['ce-s0'\]")(
    _grid(_GRID_TRAIN + '[[regularizers]]\nname = "ce"\n[[regularizers]]\nname = "ce"\n'))
register("grid: cifar10 folder missing", ConfigError, r"dataset 'cifar10'.*cifar-10-batches-py")(
    _grid('dataset = "cifar10"\n' + _GRID_TRAIN + 'data_root = "<in>/none"\n[[regularizers]]\nname = "ce"\n'))
register("grid: [train] that is not a table", ConfigError, r"'train' must be a table")(
    _grid('train = 3\n[[regularizers]]\nname = "ce"\n'))


# -- CIFAR batch files (a restricted unpickler; sizes checked before allocation) ----------------------------------
def _cifar(batch: bytes):
    def run(i, o):
        import pickle

        from causalgeom import data

        spec = data._CIFAR["cifar10"]
        folder = i / spec["folder"]
        folder.mkdir()
        for name in (*spec["train"], *spec["test"]):
            (folder / name).write_bytes(batch)
        (folder / spec["meta"]).write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}))
        data.load_dataset("cifar10", "test", root=i)
    return run


class _MkdirPayload:
    """Unpickling this runs ``os.mkdir(OUT/pwned)``: if it ever ran, the corpus test finds ``pwned`` under out."""

    target = ""

    def __reduce__(self):
        import os

        return (os.mkdir, (self.target,))


def _payload_bytes(make, o: Path) -> None:
    _MkdirPayload.target = str(o / "pwned")
    return make(_MkdirPayload())


def _cifar_payload(i, o):
    import pickle

    batch = _payload_bytes(lambda p: pickle.dumps({b"data": p, b"labels": [0]}), o)
    return _cifar(batch)(i, o)


def _cifar_good_batch(n=10, labels=None) -> bytes:
    import pickle

    return pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": labels if labels is not None else [0] * n})


class _HugeArray:
    """Pickles as an ndarray whose header declares a (10^6, 10^6) uint8 shape over 4 bytes of data."""

    def __reduce__(self):
        return (np.ndarray.__reduce__(np.zeros(4, np.uint8))[0], (np.ndarray, (0,), b"b"),
                (1, (10**6, 10**6), np.dtype("uint8"), False, b"\0" * 4))


register("CIFAR batch with a code-running pickle", ConfigError, r"posix.mkdir.*refusing to unpickle")(_cifar_payload)
register("truncated CIFAR batch", ConfigError, r"cannot read CIFAR batch file .*test_batch")(
    lambda i, o: _cifar(_cifar_good_batch()[:-40])(i, o))
register("CIFAR batch declaring a huge byte string", ConfigError, r"expected 35184372088832 bytes")(
    lambda i, o: _cifar(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 45) + b"abc")(i, o))
register("CIFAR batch declaring a huge array shape", ConfigError, r"buffer size does not match array size")(
    lambda i, o: _cifar(__import__("pickle").dumps({b"data": _HugeArray(), b"labels": [0]}, protocol=2))(i, o))
register("CIFAR labels out of range", ConfigError, r"out-of-range values \[99\]")(
    lambda i, o: _cifar(_cifar_good_batch(labels=[99] * 10))(i, o))
register("CIFAR batch with wrong image size", ConfigError, r"expected keys 'data' \(N, 3072\)")(
    lambda i, o: _cifar(__import__("pickle").dumps({b"data": np.zeros((10, 3000), np.uint8),
                                                    b"labels": [0] * 10}))(i, o))


# -- checkpoints (untrusted too: torch.load(weights_only=True), shapes checked against the spec) -------------------
_SPEC = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "mean": [0.5], "std": [0.25], "cifar_stem": False,
         "dropout": 0.0, "image_size": [8, 8]}


def _checkpoint(i: Path, *, spec=None, config=None, model=None) -> Path:
    import json

    import torch

    if model is None:
        model = cg.models.build_model("small_cnn", 10, 1, mean=[0.5], std=[0.25]).state_dict()
    if config is None:
        config = json.dumps({"run_id": "ck", "dataset": "digits", "model_spec": spec or _SPEC})
    torch.save({"model": model, "config": config, "epoch": 1}, i / "checkpoint.pt")
    return i / "checkpoint.pt"


def _load_ckpt(path):
    from causalgeom import train

    return train.load_checkpoint(path)


def _cli(argv):
    """Run a CLI command and let its causalgeom error propagate (``main`` turns it into exit status 2)."""
    from causalgeom.cli import build_parser

    args = build_parser().parse_args([str(a) for a in argv])
    return args.func(args)


def _pickle_ckpt(i, o):
    import torch

    _payload_bytes(lambda p: torch.save({"model": {"w": p}, "config": "{}"}, i / "checkpoint.pt"), o)
    return i / "checkpoint.pt"


def _truncated_ckpt(i, o):
    p = _checkpoint(i)
    p.write_bytes(p.read_bytes()[:3000])
    _load_ckpt(p)


register("checkpoint with a code-running pickle", ConfigError, r"refused, loading it would unpickle")(
    lambda i, o: _load_ckpt(_pickle_ckpt(i, o)))
register("checkpoint with a code-running pickle given to the CLI", ConfigError, r"refused, loading it would unpickle")(
    lambda i, o: _cli(["extract", _pickle_ckpt(i, o), "--out", o / "r.zarr", "--no-attack", "--no-progress"]))
register("truncated checkpoint", ConfigError, r"cannot read checkpoint")(_truncated_ckpt)
register("checkpoint that is a bare tensor", ConfigError, r"expected a causalgeom checkpoint")(
    lambda i, o: (__import__("torch").save(__import__("torch").zeros(3), i / "c.pt"), _load_ckpt(i / "c.pt")))
register("checkpoint without a model spec", ConfigError, r"KeyError: 'model_spec'")(
    lambda i, o: _load_ckpt(_checkpoint(i, config='{"run_id": "ck"}')))
register("checkpoint config that is not JSON", ConfigError, r"JSONDecodeError")(
    lambda i, o: _load_ckpt(_checkpoint(i, config="{run_id: ck")))
register("checkpoint weights not fitting its spec", ConfigError,
         r"do not fit.*net.head.weight: \(10, 128\) vs \(7, 128\)")(
    lambda i, o: _load_ckpt(_checkpoint(i, spec={**_SPEC, "num_classes": 7})))
register("checkpoint spec declaring a huge head", ConfigError, r"do not fit.*\(1000000000000, 128\)")(
    lambda i, o: _load_ckpt(_checkpoint(i, spec={**_SPEC, "num_classes": 10**12})))
register("checkpoint naming an unknown model", ConfigError, r"model spec is invalid: model: unknown name 'nope'")(
    lambda i, o: _load_ckpt(_checkpoint(i, spec={**_SPEC, "name": "nope"})))
register("run folder without a checkpoint", ConfigError, r"run folder holding checkpoint.pt")(
    lambda i, o: _load_ckpt(i))
register("checkpoint whose run_id escapes the study", SchemaError, r"'run_id'.*'\.\./\.\./x'")(
    lambda i, o: _cli(["extract", _checkpoint(i, config='{"run_id": "../../x", "dataset": "digits", "model_spec": '
                       + __import__("json").dumps(_SPEC) + "}"), "--out", o, "--no-attack", "--no-progress"]))


# -- query files (given to `causalgeom mediate` with --out under `out`: nothing may be written) ---------------------
_TABLE = "run_id,regularizer,rms,overconfidence\n" + "".join(
    f"r{r},{'ce' if r % 2 else 'label_smoothing'},{0.1 * s + r},{0.01 * s * r}\n" for r in range(4) for s in range(5))
_QUERY = ('[query]\ntreatment = "regularizer"\nmediators = ["rms"]\noutcomes = ["overconfidence"]\n'
          'n_boot = 5\n')


def _mediate(text: str | bytes, *, folder: bool = False):
    def run(i, o):
        (i / "table.csv").write_text(_TABLE)
        q = i / "q.toml"
        if folder:
            q.mkdir()
        elif isinstance(text, bytes):
            q.write_bytes(text)
        else:
            q.write_text(text)
        _cli(["mediate", i / "table.csv", "--query", q, "--out", o / "mediation", "--no-progress"])
    return run


register("query: unknown column", QueryError, r"not in the table: mediators 'nope'")(
    _mediate(_QUERY.replace('["rms"]', '["nope"]')))
register("query: unknown regularizer level", QueryError, r"treated: value 'dropblock' is not a level")(
    _mediate(_QUERY + 'treated = "dropblock"\n'))
register("query: unknown control level", QueryError, r"control: value 'CE' is not a level")(
    _mediate(_QUERY + 'control = "CE"\n'))
register("query: unknown method", QueryError, r"method: expected one of \[.*\], got 'bayes'")(_mediate(_QUERY + 'method = "bayes"\n'))
register("query: unknown bootstrap scheme", QueryError, r"bootstrap: expected one of \[.*\], got 'block'")(
    _mediate(_QUERY + 'bootstrap = "block"\n'))
register("query: unknown level", QueryError, r"level: expected one of \[.*\], got 'epoch'")(_mediate(_QUERY + 'level = "epoch"\n'))
register("query: bad TOML", QueryError, r"not valid TOML")(_mediate(_QUERY + "treated = \n"))
register("query: negative n_boot", QueryError, r"n_boot: expected an integer >= 0 or None, got -1")(
    _mediate(_QUERY.replace("n_boot = 5", "n_boot = -1")))
register("query: fractional n_boot", QueryError, r"n_boot: expected an integer >= 0 or None, got 2.5")(
    _mediate(_QUERY.replace("n_boot = 5", "n_boot = 2.5")))
register("query: unknown key", QueryError, r"unknown query key\(s\) \['mediator'\]")(
    _mediate(_QUERY + 'mediator = "rms"\n'))
register("query: missing treatment", QueryError, r"missing the required key 'treatment'")(
    _mediate(_QUERY.replace('treatment = "regularizer"\n', "")))
register("query: confidence level above 1", QueryError, r"ci_level: expected a number in \(0, 1\), got 1.5")(
    _mediate(_QUERY + "ci_level = 1.5\n"))
register("query: mediators that are not names", QueryError, r"mediators: expected column names \(non-empty strings\), got 1")(
    _mediate(_QUERY.replace('["rms"]', "[1, 2]")))
register("query: negative seed", QueryError, r"seed: expected an integer >= 0 or None, got -1")(_mediate(_QUERY + "seed = -1\n"))
register("query: extra top-level key", QueryError, r"unexpected top-level key\(s\) \['note'\]")(
    _mediate('note = "x"\n' + _QUERY))
register("query: file that is a folder", QueryError, r"is a folder")(_mediate("", folder=True))
register("query: file that is not UTF-8", QueryError, r"cannot read query file")(_mediate(b"\xff\xfe[query]\n"))


# == issue 16: stores that cannot lie, imports with bounded cost, destinations, run tables ==========================
# -- stores: every file is compared with the manifest in the completion mark; only regular files are read ----------
def _small_store(i: Path) -> Path:
    from causalgeom.testing import make_run

    return cg.save(make_run(n=40, d=4, k=3, run_id="r", attacks=True), i / "r.zarr", sample_chunk=10)


def _store_case(mutate, *, verify=True):
    def run(i, o):
        p = _small_store(i)
        mutate(p)
        return cg.verify(p) if verify else cg.open(p, verify=False)
    return run


def _edit_json(p: Path, key: str, fn) -> None:
    import json

    d = json.loads((p / key).read_text())
    fn(d)
    (p / key).write_text(json.dumps(d))


def _swap(a: Path, b: Path) -> None:
    ra, rb = a.read_bytes(), b.read_bytes()
    a.write_bytes(rb), b.write_bytes(ra)


def _flip(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    f.write_bytes(bytes(raw))


def _shrink_samples(p: Path) -> None:
    for meta in p.glob("*/zarr.json"):
        _edit_json(p, str(meta.relative_to(p)), lambda d: d["shape"].__setitem__(d["dimension_names"].index("sample"),
                                                                                  20)
                   if "sample" in (d.get("dimension_names") or []) else None)


def _strip_manifest(p: Path) -> None:
    import zarr

    g = zarr.open_group(str(p), mode="r+", zarr_format=3)
    mark = dict(g.attrs[cg.store.COMPLETE_ATTR])
    mark.pop("manifest")
    g.attrs[cg.store.COMPLETE_ATTR] = mark


def _set_mark(p: Path, **kw) -> None:
    import zarr

    g = zarr.open_group(str(p), mode="r+", zarr_format=3)
    g.attrs[cg.store.COMPLETE_ATTR] = {**dict(g.attrs[cg.store.COMPLETE_ATTR]), **kw}


def _replace(f: Path, how) -> None:
    f.unlink()
    how(f)


register("store: deleted chunk with a stray .DS_Store", StoreError, r"label/c/0 is missing.*extra file label/c/\.DS_Store")(
    _store_case(lambda p: (_replace(p / "label/c/0", lambda f: None), (p / "label/c/.DS_Store").write_bytes(b"x"))))
register("store: renamed chunk beside a deleted one", StoreError, r"label/c/1 is missing \(renamed to label/c/1\.orig")(
    _store_case(lambda p: ((p / "label/c/1").rename(p / "label/c/1.orig"), (p / "label/c/0").unlink())))
register("store: swapped chunks", StoreError, r"'logits'.*content of logits/c/\d/0 \(swapped")(
    _store_case(lambda p: _swap(p / "logits/c/0/0", p / "logits/c/3/0")))
register("store: chunk copied over another", StoreError, r"'features'.*content of features/c/0/0")(
    _store_case(lambda p: (p / "features/c/2/0").write_bytes((p / "features/c/0/0").read_bytes())))
register("store: chunk with a flipped bit", StoreError, r"'features'.*checksum differs")(
    _store_case(lambda p: _flip(p / "features/c/1/0")))
register("store: chunk truncated to zero bytes", StoreError, r"'label'.*holds 0 bytes")(
    _store_case(lambda p: (p / "label/c/2").write_bytes(b"")))
register("store: extra chunk outside the grid", StoreError, r"extra file label/c/9")(
    _store_case(lambda p: (p / "label/c/9").write_bytes((p / "label/c/0").read_bytes())))
register("store: sample dimension edited in metadata", StoreError, r"'features': metadata shape is \[20, 4\].*\[40, 4\]")(
    _store_case(_shrink_samples, verify=False))
register("store: sample dimension edited, no manifest", IncompleteStoreError, "hold 20 samples but the completion mark records 40")(
    _store_case(lambda p: (_strip_manifest(p), _shrink_samples(p))))
register("store: dtype edited in metadata", StoreError, r"'label': metadata data_type is 'int32'")(
    _store_case(lambda p: _edit_json(p, "label/zarr.json", lambda d: d.update(data_type="int32")), verify=False))
register("store: chunk-key encoding edited", StoreError, r"'logits': metadata chunk_key_encoding")(
    _store_case(lambda p: _edit_json(p, "logits/zarr.json", lambda d: d.update(
        chunk_key_encoding={"name": "v2", "configuration": {"separator": "."}})), verify=False))
register("store: chunk grid edited", StoreError, r"'features': metadata chunk_shape is \[20, 4\]")(
    _store_case(lambda p: _edit_json(p, "features/zarr.json", lambda d: d["chunk_grid"]["configuration"].update(
        chunk_shape=[20, 4])), verify=False))
register("store: fill value edited", StoreError, r"metadata file label/zarr.json was edited")(
    _store_case(lambda p: _edit_json(p, "label/zarr.json", lambda d: d.update(fill_value=7))))
register("store: dimension names swapped", StoreError, r"'adv_margin': metadata dimension_names")(
    _store_case(lambda p: _edit_json(p, "adv_margin/zarr.json", lambda d: d.update(
        dimension_names=list(reversed(d["dimension_names"])))), verify=False))
register("store: root attribute edited", StoreError, "root metadata")(
    _store_case(lambda p: _edit_json(p, "zarr.json", lambda d: d["attributes"].update(regularizer="mixup")),
                verify=False))
register("store: attack names altered", StoreError, r"'attack'.*attack/c/0 is corrupted")(
    _store_case(lambda p: _flip(p / "attack/c/0")))
register("store: eps coordinate deleted", IncompleteStoreError, r"'eps'.*eps/c/0 is missing")(
    _store_case(lambda p: (p / "eps/c/0").unlink(), verify=False))
register("store: array metadata deleted", IncompleteStoreError, r"features/zarr.json is missing")(
    _store_case(lambda p: (p / "features/zarr.json").unlink(), verify=False))
register("store: whole variable folder deleted", IncompleteStoreError, r"'head_bias'.*missing")(
    _store_case(lambda p: __import__("shutil").rmtree(p / "head_bias"), verify=False))
register("store: manifest of an unknown version", StoreError, "manifest .* malformed or of an unknown version")(
    _store_case(lambda p: _set_mark(p, manifest={"version": 99}), verify=False))
register("store: chunk replaced by a FIFO", StoreError, r"logits/c/1/0 is a FIFO \(named pipe\)")(
    _store_case(lambda p: _replace(p / "logits/c/1/0", __import__("os").mkfifo)))
register("store: zarr.json replaced by a FIFO", StoreError, r"zarr.json is a FIFO")(
    _store_case(lambda p: _replace(p / "zarr.json", __import__("os").mkfifo)))
register("store: chunk linked to a file outside", StoreError, "symbolic link leaving the store")(
    _store_case(lambda p: _replace(p / "label/c/0", lambda f: f.symlink_to(p.parent / "outside"))))
register("store: chunk linked to /dev/zero", StoreError, "symbolic link leaving the store")(
    _store_case(lambda p: _replace(p / "label/c/0", lambda f: f.symlink_to("/dev/zero"))))
register("store: chunk that is a symlink loop", StoreError, "symbolic link that cannot be followed")(
    _store_case(lambda p: _replace(p / "label/c/0", lambda f: f.symlink_to(f))))
register("store: chunk linked to a folder inside", StoreError, "symbolic link to a folder")(
    _store_case(lambda p: _replace(p / "label/c/0", lambda f: f.symlink_to(p / "features"))))


# -- imports: sizes from each file's own metadata before allocation; dtypes the schema cannot mean are refused -------
def _npy(shape, dtype="<f4", data=b"", version=(1, 0), raw_header=None) -> bytes:
    header = raw_header or "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
    pre = 10 if version[0] == 1 else 12
    header += " " * (63 - (len(header) + pre) % 64) + "\n"
    size = struct.pack("<H" if version[0] == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes(version) + size + header.encode("utf8" if version[0] == 3 else "latin1") + data


def _zip_npz(members: dict, **kw):
    def run(i, o):
        import zipfile

        with zipfile.ZipFile(i / "d.npz", "w") as z:
            for name, payload in members.items():
                z.writestr(name, payload)
        return cg.import_dump(i / "d.npz", out=o / "bad.zarr", **kw)
    return run


def _good_members(**over):
    import io

    a = _good()
    out = {}
    for k in ("features", "logits", "labels"):
        buf = io.BytesIO()
        np.save(buf, a[k])
        out[f"{k}.npy"] = buf.getvalue()
    out.update(over)
    return out


register("npz member without .npy suffix declaring a huge shape", DumpImportError,
         r"'features' declares shape \(1000000, 1000000\).*TiB")(
    _zip_npz({k: v for k, v in _good_members().items() if k != "features.npy"} | {"features": _npy((10**6, 10**6))}))
register("npz member with a version-3.0 header declaring a huge shape", DumpImportError,
         r"'features.npy' declares shape \(1000000, 1000000\)")(
    _zip_npz(_good_members(**{"features.npy": _npy((10**6, 10**6), version=(3, 0))})))
register("npz member with a version-2.0 header declaring a huge shape", DumpImportError,
         r"'logits.npy' declares shape \(1000000000000, 4\)")(
    _zip_npz(_good_members(**{"logits.npy": _npy((10**12, 4), version=(2, 0))})))
register("npz member with an unknown .npy version", DumpImportError, r"unknown .npy format version 9")(
    _zip_npz(_good_members(**{"labels.npy": _npy((30,), "<i8", version=(9, 0))})))
register("npz member with a negative shape", DumpImportError, r"invalid shape \(-30,\)")(
    _zip_npz(_good_members(**{"labels.npy": _npy((-30,), "<i8")})))
register("npz member with a garbage header", DumpImportError, r"'features.npy' is not a valid .npy array")(
    _zip_npz(_good_members(**{"features.npy": _npy((), raw_header="__import__('os')")})))
register("npz member that is not an array", DumpImportError, r"'notes.txt' is not a valid .npy array")(
    _zip_npz(_good_members(**{"notes.txt": b"hello"})))
register("npz with two members naming one array", DumpImportError, r"both name array 'features'")(
    _zip_npz(_good_members(features=_npy((30, 5), data=b"\0" * 600))))
register("npz with complex features", DumpImportError, r"'features.npy' has dtype complex64 \(complex\)")(
    lambda i, o: _npz(i, o, features=np.zeros((30, 5), np.complex64), logits=_good()["logits"], labels=_good()["labels"]))
register("npz with string labels", DumpImportError, r"'labels.npy' has dtype <U1 \(text strings\)")(
    lambda i, o: _npz(i, o, features=_good()["features"], logits=_good()["logits"], labels=np.full(30, "a")))
register("npz with byte-string logits", DumpImportError, r"'logits.npy' has dtype \|S3 \(byte strings\)")(
    lambda i, o: _npz(i, o, features=_good()["features"], logits=np.full((30, 4), b"abc"), labels=_good()["labels"]))
register("npz with structured features", DumpImportError, r"'features.npy' has dtype .*raw/structured")(
    lambda i, o: _npz(i, o, features=np.zeros(30, dtype=[("a", "f4"), ("b", "f4")]), logits=_good()["logits"],
                      labels=_good()["labels"]))
register("npz with datetime labels", DumpImportError, r"'labels.npy' has dtype datetime64\[D\] \(datetimes\)")(
    lambda i, o: _npz(i, o, features=_good()["features"], logits=_good()["logits"],
                      labels=np.zeros(30, "datetime64[D]")))
register("npz over max_bytes", DumpImportError, r"'features.npy' declares shape \(30, 5\).*over the limit of 100 B")(
    _zip_npz(_good_members(), max_bytes=100))


def _pt_tensors(make, **kw):
    def run(i, o):
        import torch

        a = {k: torch.as_tensor(v) for k, v in _good().items()}
        a.update(make(torch))
        torch.save(a, i / "d.pt")
        return cg.import_dump(i / "d.pt", out=o / "bad.zarr", **kw)
    return run


register("pt expanded (stride-0) tensor of 10^12 rows", DumpImportError,
         r"'features' declares shape \(1000000000000, 5\) of float32, 18.19 TiB")(
    _pt_tensors(lambda torch: {"features": torch.zeros(1, 5).expand(10**12, 5)}))
register("pt expanded tensor over max_bytes", DumpImportError, r"'features' declares shape \(2000000, 64\).*488.28 MiB")(
    _pt_tensors(lambda torch: {"features": torch.zeros(1, 64).expand(2 * 10**6, 64)}, max_bytes=100 * 2**20))
register("pt sparse tensor", DumpImportError, r"'features' has layout torch.sparse_coo")(
    _pt_tensors(lambda torch: {"features": torch.zeros(30, 5).to_sparse()}))
register("pt complex tensor", DumpImportError, r"'logits' has dtype complex64")(
    _pt_tensors(lambda torch: {"logits": torch.zeros(30, 4, dtype=torch.complex64)}))
register("pt float8 tensor", DumpImportError, r"'features' has dtype float8_e4m3fn")(
    _pt_tensors(lambda torch: {"features": torch.zeros(30, 5).to(torch.float8_e4m3fn)}))
register("pt tensor over max_bytes", DumpImportError, r"'features' declares shape \(30, 5\) of float32, 600 B.*100 B")(
    _pt_tensors(lambda torch: {}, max_bytes=100))


def _st(header, body=b"", **kw):
    def run(i, o):
        import json

        h = header if isinstance(header, bytes) else json.dumps(header).encode()
        (i / "d.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + body)
        return cg.import_dump(i / "d.safetensors", out=o / "bad.zarr", **kw)
    return run


register("safetensors header that is a JSON list", DumpImportError, r"header is a JSON list; expected an object")(
    _st([1, 2, 3]))
register("safetensors entry that is not an object", DumpImportError, r"'features': header entry must be")(
    _st({"features": [0, 1]}))
register("safetensors offsets that are not integers", DumpImportError, r"'features': header entry must be")(
    _st({"features": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}}, b"\0" * 4))
register("safetensors complex dtype", DumpImportError, r"'features' has dtype C64")(
    _st({"features": {"dtype": "C64", "shape": [1, 1], "data_offsets": [0, 8]}}, b"\0" * 8))
register("safetensors float8 dtype", DumpImportError, r"'features' has dtype F8_E4M3")(
    _st({"features": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]}}, b"\0" * 4))
register("safetensors shape disagreeing with its offsets", DumpImportError, r"\(2, 2\) of F32 \(16 bytes\) but its offsets hold 4")(
    _st({"features": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 4]}}, b"\0" * 4))
register("safetensors huge declared shape", DumpImportError, r"'features' declares shape \(1000000, 1000000\)")(
    _st({"features": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4]}}, b"\0" * 4))
register("safetensors negative shape", DumpImportError, r"'features' declares an invalid shape")(
    _st({"features": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 4]}}, b"\0" * 4))
register("safetensors header not UTF-8", DumpImportError, r"not valid JSON")(_st(b"\xff\xfe{}  "))


def _nc(build, **kw):
    def run(i, o):
        import xarray as xr

        a = _good()
        ds = xr.Dataset({"features": (("sample", "feature"), a["features"]),
                         "logits": (("sample", "class"), a["logits"]), "label": (("sample",), a["labels"])})
        ds = build(ds, a, xr)
        ds.to_netcdf(i / "d.nc")
        return cg.import_dump(i / "d.nc", out=o / "bad.zarr", **kw)
    return run


def _with_adv(correct, coords=True):
    def build(ds, a, xr):
        ds = ds.assign(adv_correct=(("attack", "eps", "sample"), correct(np.ones((1, 2, 30), bool))),
                       adv_margin=(("attack", "eps", "sample"), np.zeros((1, 2, 30), np.float32)))
        return ds.assign_coords(attack=["pgd"], eps=[0.0, 0.1]) if coords else ds
    return build


register("netCDF attack outcomes without attack/eps coordinates", DumpImportError,
         r"need the coordinate\(s\) \['attack', 'eps'\].*not guessed from positions")(_nc(_with_adv(lambda c: c, False)))
register("netCDF NaN in a boolean outcome", DumpImportError, r"'adv_correct' holds 1 NaN")(
    _nc(_with_adv(lambda c: np.where(np.arange(60).reshape(1, 2, 30) == 5, np.nan, c.astype(np.float32)))))
register("netCDF boolean outcome holding 2", DumpImportError, r"'adv_correct' must be boolean \(or 0/1\)")(
    _nc(_with_adv(lambda c: c.astype(np.int8) * 2)))
register("netCDF eps given as text", DumpImportError, r"'eps' has dtype object \(Python objects\)")(
    _nc(lambda ds, a, xr: _with_adv(lambda c: c, False)(ds, a, xr).assign_coords(attack=["pgd"], eps=["a", "b"])))
register("netCDF features with wrong dimension names", DumpImportError,
         r"'features' has dims \('n', 'd'\); expected \('sample', 'feature'\)")(
    _nc(lambda ds, a, xr: ds.assign(features=(("n", "d"), a["features"]))))
register("netCDF labels with a wrong dimension name", DumpImportError, r"'label' has dims \('row',\)")(
    _nc(lambda ds, a, xr: ds.assign(label=(("row",), a["labels"]))))
register("netCDF non-numeric seed attribute", DumpImportError, r"attribute 'seed' must be a whole number, got 'abc'")(
    _nc(lambda ds, a, xr: ds.assign_attrs(seed="abc")))
register("netCDF over max_bytes", DumpImportError, r"'features' declares shape \(30, 5\) of float32.*over the limit")(
    _nc(lambda ds, a, xr: ds, max_bytes=300))
register("netCDF garbage file", DumpImportError, r"cannot read as netCDF")(
    lambda i, o: ((i / "d.nc").write_bytes(b"CDF\x01" + b"\xff" * 40), cg.import_dump(i / "d.nc", out=o / "b.zarr")))
register("netCDF file that is a folder", DumpImportError, r"is not a regular file")(
    lambda i, o: ((i / "d.nc").mkdir(), cg.import_dump(i / "d.nc", out=o / "b.zarr")))
register("dump that is a FIFO", DumpImportError, r"not a regular file \(a FIFO")(
    lambda i, o: (__import__("os").mkfifo(i / "d.npz"), cg.import_dump(i / "d.npz", out=o / "b.zarr")))
register("import attrs with a text strength", DumpImportError, r"attribute 'strength' must be a number, got 'high'")(
    lambda i, o: (np.savez(i / "d.npz", features=_good()["features"], logits=_good()["logits"], labels=_good()["labels"]),
                  cg.import_dump(i / "d.npz", out=o / "b.zarr", attrs={"strength": "high"})))
register("max_bytes that is not a positive integer", ConfigError, r"max_bytes: expected a positive integer")(
    lambda i, o: (np.savez(i / "d.npz", **{k: v for k, v in _good().items() if k in ("features", "logits", "labels")}),
                  cg.import_dump(i / "d.npz", out=o / "b.zarr", max_bytes=-5)))


# -- destinations and run tables ------------------------------------------------------------------------------------
def _two_dumps(i: Path) -> list[Path]:
    out = []
    for k in ("a", "b"):
        a = _good(seed=len(out))
        np.savez(i / f"{k}.npz", features=a["features"], logits=a["logits"], labels=a["labels"])
        out.append(i / f"{k}.npz")
    return out


def _table(text: str, dest=lambda i, o: o / "study"):
    def run(i, o):
        srcs = _two_dumps(i)
        (i / "runs.csv").write_bytes(text.encode() if isinstance(text, str) else text)
        return cg.adapters.import_study(srcs, dest(i, o), run_table=i / "runs.csv")
    return run


register("multi-run import into a run store", DumpImportError, r"is a run store \(RUN.zarr\), not a study folder")(
    lambda i, o: cg.adapters.import_study(_two_dumps(i), _small_store(i)))
register("multi-run import into a file", DumpImportError, r"destination .* is a file, not a study folder")(
    lambda i, o: ((i / "x").write_text(""), cg.adapters.import_study(_two_dumps(i), i / "x")))
register("multi-run import into a folder holding other things", DumpImportError, r"holding \[.*'notes.txt'\] but no runs")(
    lambda i, o: ((i / "notes.txt").write_text("x"), cg.adapters.import_study(_two_dumps(i), i)))
register("multi-run import clashing with an existing run", StoreExistsError, r"already has run\(s\) \['a'\]; nothing")(
    lambda i, o: (cg.adapters.import_study(_two_dumps(i)[:1], i / "s"), cg.adapters.import_study(_two_dumps(i), i / "s")))
register("same dump file twice", DumpImportError, r"\['a.npz'\] appear more than once")(
    lambda i, o: cg.adapters.import_study([_two_dumps(i)[0]] * 2, o / "study"))
register("run table with two rows for one file", DumpImportError, r"file 'a.npz' has two rows \(lines 2 and 4\)")(
    _table("file,run_id\na.npz,x\nb.npz,y\na.npz,z\n"))
register("run table with a text seed", DumpImportError, r"column 'seed' must hold numbers, got \['one'\]")(
    _table("file,seed\na.npz,one\nb.npz,2\n"))
register("run table with a fractional seed", DumpImportError, r"column 'seed' must hold whole numbers")(
    _table("file,seed\na.npz,1.5\nb.npz,2\n"))
register("run table with a text strength", DumpImportError, r"column 'strength' must hold numbers, got \['high'\]")(
    _table("file,strength\na.npz,high\nb.npz,0.1\n"))
register("run table with a ragged line", DumpImportError, r"line 3 has 3 fields, the header has 2")(
    _table("file,run_id\na.npz,x\nb.npz,y,z\n"))
register("run table that is empty", DumpImportError, r"is empty; expected a header row")(_table(""))
register("run table that is not UTF-8", DumpImportError, r"cannot read as a UTF-8 CSV")(_table(b"\xff\xfe,\x00\n"))
register("run table with a repeated column", DumpImportError, r"column names must be unique")(
    _table("file,seed,seed\na.npz,1,2\nb.npz,1,2\n"))
register("run table with an empty file cell", DumpImportError, r"line 3 has an empty 'file' cell")(
    _table("file,run_id\na.npz,x\n,y\n"))
register("run table that is a folder", DumpImportError, r"cannot read as a UTF-8 CSV")(
    lambda i, o: ((i / "t.csv").mkdir(), cg.adapters.import_study(_two_dumps(i), o / "s", run_table=i / "t.csv")))
register("lock file that is a symbolic link", StoreError, r"lock file .* is a symbolic link; refusing to follow it")(
    lambda i, o: ((o / ".r.zarr.lock").symlink_to(i / "elsewhere"), cg.save(cg.from_arrays(
        _good()["features"], _good()["logits"], _good()["labels"], attrs={"run_id": "r"}), o / "r.zarr")))


# -- a checkpoint's declared input against the data (issue 16: 3 channels on 1-channel digits was broadcast) ---------
def _ckpt_spec(**over):
    def run(i, o):
        spec = {**_SPEC, **over}
        model = cg.models.build_model("small_cnn", 10, spec["in_channels"], mean=spec["mean"], std=spec["std"])
        return _cli(["extract", _checkpoint(i, spec=spec, model=model.state_dict()), "--out", o / "r.zarr",
                     "--no-attack", "--no-progress"])
    return run


register("checkpoint declaring 3 input channels extracted on 1-channel data", ConfigError,
         r"declares 3 input channel\(s\), but the data give images of shape \(1, 8, 8\)")(
    _ckpt_spec(in_channels=3, mean=[0.5] * 3, std=[0.25] * 3))
register("checkpoint declaring another image size than the data", ConfigError,
         r"declares images of size \(16, 16\) \(H, W\), but the data give \(8, 8\)")(_ckpt_spec(image_size=[16, 16]))
