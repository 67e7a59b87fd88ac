"""Extraction: model + data → one Zarr store of features, logits, labels, head and attack outcomes.

``cg.extract(model, data, out)`` streams batches into a Zarr (format 3) store laid out exactly as
:func:`causalgeom.save` writes it (so :func:`causalgeom.open` reads it): the store is created up
front with its final shapes, each chunk-aligned block of samples is written by a background
writer thread as soon as it is computed (bounded queue, bounded memory), and each finished
chunk leaves a marker in ``OUT/.progress/`` so an interrupted extraction resumes where it
stopped. The completion mark is written only when every chunk is done; with
``shard=(rank, world)`` several processes fill disjoint chunk ranges of one store and the last
one to finish marks it complete.

The public entry point is the function :func:`extract`, also reached as ``cg.extract`` through the package
facade (docs/CONTRACTS.md); its options can be grouped in an :class:`ExtractConfig`. The other names of this
module are imported from here (``from causalgeom.pipeline.extract import extract_runs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import queue
import shutil
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import attacks as _attacks
from .._util import torch as _torch_util
from .._util.checks import check_choice
from .._util.io import atomic_write, file_lock
from ..errors import ConfigError, SchemaError, StoreError, StoreExistsError
from .models import _Capture, _LayerCapture, _OutputCheck, find_head
from .models import eval_mode as _eval_mode
from ..dump.schema import (ENCODED_DTYPE_ATTR, FEATURES_DTYPES, SCHEMA_VERSION, STORED_DTYPE_ATTR, RUN_ID_PATTERN,
                           check_run_id, normalize_attrs, package_versions, validate)
from ..dump.store import (COMPLETE_ATTR, COMPRESSORS, DEFAULT_COMPRESSOR, encoding_for, is_complete, mark_complete,
                          read_attrs, stored_features_dtype, store_lock)

if TYPE_CHECKING:  # xarray is imported where a store is built
    import xarray as xr

__all__ = ["extract", "ExtractConfig", "find_head", "extract_checkpoint", "extract_runs", "PROGRESS_DIR",
           "DEFAULT_BATCH_SIZE"]

#: Folder inside a store being extracted: ``plan.json`` and one marker file per finished sample chunk.
PROGRESS_DIR = ".progress"
DEFAULT_BATCH_SIZE = 256
_MAX_CHUNK = 4096
_TARGET_CHUNK_BYTES = 32 * 2**20


# --------------------------------------------------------------------------------------------
# data sources
# --------------------------------------------------------------------------------------------
def _as_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise ConfigError(f"data: each batch/sample must be a (x, y) pair, got {type(batch).__name__}")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if not torch.is_floating_point(x):
        raise ConfigError(f"data: inputs must be float tensors in [0, 1], got dtype {x.dtype}")
    return x, y.long()


_Batch = tuple[int, int, torch.Tensor, torch.Tensor]  # (chunk, offset in chunk, x, y)


class _TensorSource:
    """(x, y) tensors held in memory; batches are slices."""

    def __init__(self, x: Any, y: Any, batch_size: int):
        self.x, self.y = _as_xy((x, y))
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(f"data: x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")
        if self.y.dim() != 1:
            raise ConfigError(f"data: labels must have shape (n,), got {tuple(self.y.shape)}")
        self.n = int(self.x.shape[0])
        self.batch_size = batch_size

    def batches(self, spans: Sequence[tuple[int, int, int]], pin: bool) -> Iterator[_Batch]:
        for chunk, offset, s, e in _spans_to_batches(spans, self.batch_size):
            xb, yb = self.x[s:e], self.y[s:e]
            if pin and xb.device.type == "cpu":
                xb = xb.pin_memory()
            yield chunk, offset, xb, yb


class _DatasetSource:
    """A map-style Dataset (or a DataLoader's dataset and settings); batches never cross chunks."""

    def __init__(self, dataset: Any, batch_size: int, *, indices: Sequence[int] | None = None,
                 loader_kwargs: Mapping[str, Any] | None = None):
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise ConfigError("data: an IterableDataset has no length or random access, which resuming and sharding "
                              "need; pass a map-style Dataset, a DataLoader over one, or (x, y) tensors")
        try:
            n = len(dataset) if indices is None else len(indices)
        except TypeError:
            raise ConfigError(f"data: {type(dataset).__name__} has no len(); pass a map-style Dataset") from None
        self.dataset = dataset
        self.indices = indices
        self.n = int(n)
        self.batch_size = batch_size
        self.kwargs = dict(loader_kwargs or {})

    def batches(self, spans: Sequence[tuple[int, int, int]], pin: bool) -> Iterator[_Batch]:
        kw = dict(self.kwargs)
        kw.setdefault("num_workers", 0)
        kw["pin_memory"] = pin or kw.get("pin_memory", False)
        sampler = _BatchSampler(spans, self.batch_size, self.indices)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, **kw)
        shape: tuple[int, ...] | None = None
        for (chunk, offset, _, _), (idx, batch) in zip(_spans_to_batches(spans, self.batch_size),
                                                       _sized(loader, self)):
            xb, yb = _as_xy(batch)
            if shape is None:
                shape = tuple(xb.shape[1:])
            elif tuple(xb.shape[1:]) != shape:
                self.size_error(idx, shape)
            yield chunk, offset, xb, yb

    def sample_name(self, i: int) -> str:
        """The file (sample id) of dataset item ``i`` when the dataset has ids, else ``sample i``."""
        ids = getattr(self.dataset, "sample_ids", None)
        return f"{ids[i]!r} (sample {i})" if ids is not None and i < len(ids) else f"sample {i}"

    def size_error(self, indices: Sequence[int], shape: tuple[int, ...] | None = None) -> None:
        """Raise `ConfigError` naming the first item of ``indices`` whose size differs from ``shape`` (default: the
        first item's): images of different sizes cannot be batched."""
        for i in indices:
            s = tuple(self.dataset[i][0].shape)
            if shape is None:
                shape = s
            elif s != shape:
                raise ConfigError(
                    f"data: image {self.sample_name(i)} is {'x'.join(map(str, s))} after preprocessing, the images "
                    f"before it {'x'.join(map(str, shape))}; images of different sizes cannot be batched. Resize them "
                    "with the preprocessing (CLI --preprocess resize=N,crop=N or a preset such as imagenet), or "
                    "make them one size")
        raise ConfigError("data: the images of a batch differ in size; resize them with the preprocessing (CLI "
                          "--preprocess resize=N,crop=N)")


def _sized(loader: Any, source: "_DatasetSource") -> Iterator[tuple[list[int], Any]]:
    """``(indices, batch)`` of ``loader``; a batch whose images differ in size becomes a `ConfigError` naming the
    first such file (instead of torch's "stack expects each tensor to be equal size")."""
    it = iter(loader)
    for indices in iter(loader.batch_sampler):
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "stack expects each tensor to be equal size" in str(exc):
                source.size_error(indices)
            raise
        yield indices, batch


def _spans_to_batches(spans: Sequence[tuple[int, int, int]], batch_size: int) -> Iterator[tuple[int, int, int, int]]:
    """(chunk, offset in chunk, start, stop) of every batch; batches never cross a chunk boundary."""
    for chunk, start, stop in spans:
        for s in range(start, stop, batch_size):
            yield chunk, s - start, s, min(stop, s + batch_size)


class _BatchSampler:
    """Index lists of the batches of ``spans``, generated lazily (O(1) memory for any dataset size)."""

    def __init__(self, spans: Sequence[tuple[int, int, int]], batch_size: int, indices: Sequence[int] | None):
        self.spans, self.batch_size, self.indices = spans, batch_size, indices

    def __iter__(self) -> Iterator[list[int]]:
        for _, _, s, e in _spans_to_batches(self.spans, self.batch_size):
            yield list(range(s, e)) if self.indices is None else [int(self.indices[i]) for i in range(s, e)]

    def __len__(self) -> int:
        return sum(math.ceil((stop - start) / self.batch_size) for _, start, stop in self.spans)


def _make_source(data: Any, batch_size: int | None, num_workers: int | None):
    from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data, Dataset):
        return _TensorSource(data[0], data[1], int(batch_size or DEFAULT_BATCH_SIZE))
    if isinstance(data, DataLoader):
        sampler = data.sampler
        if isinstance(sampler, RandomSampler):
            raise ConfigError("data: the DataLoader shuffles (shuffle=True); extraction needs a fixed sample order to "
                              "resume and to shard. Pass shuffle=False (or the dataset itself)")
        indices = None if isinstance(sampler, SequentialSampler) else list(iter(sampler))
        kw: dict[str, Any] = {"collate_fn": data.collate_fn, "num_workers": data.num_workers,
                              "pin_memory": data.pin_memory, "worker_init_fn": data.worker_init_fn,
                              "timeout": data.timeout}
        if data.num_workers > 0:
            kw["prefetch_factor"] = data.prefetch_factor
            kw["multiprocessing_context"] = data.multiprocessing_context
        if num_workers is not None:
            kw["num_workers"] = int(num_workers)
        bs = int(batch_size or data.batch_size or DEFAULT_BATCH_SIZE)
        return _DatasetSource(data.dataset, bs, indices=indices, loader_kwargs=kw)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        kw = {"num_workers": int(num_workers or 0)}
        return _DatasetSource(data, int(batch_size or DEFAULT_BATCH_SIZE), loader_kwargs=kw)
    raise ConfigError(f"data: expected a torch Dataset, a DataLoader, or a tuple (x, y) of tensors, got "
                      f"{type(data).__name__}")


# --------------------------------------------------------------------------------------------
# store creation, progress, finalization
# --------------------------------------------------------------------------------------------
def _meta_lock(path: Path) -> contextlib.AbstractContextManager:
    """Blocking lock serializing store creation and finalization between processes (shards)."""
    return file_lock(path.parent / f".{path.name}.meta.lock", blocking=True)


def _write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, sort_keys=True), fsync=False)


def _marker(path: Path, chunk: int) -> Path:
    return path / PROGRESS_DIR / f"chunk-{chunk:08d}.done"


def _done_chunks(path: Path) -> set[int]:
    d = path / PROGRESS_DIR
    if not d.exists():
        return set()
    out = set()
    for name in os.listdir(d):
        if name.startswith("chunk-") and name.endswith(".done"):
            out.add(int(name[6:-5]))
    return out


def _read_plan(path: Path) -> dict[str, Any] | None:
    p = path / PROGRESS_DIR / "plan.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _looks_like_store(path: Path) -> bool:
    return (path / "zarr.json").exists() or (path.is_dir() and not any(path.iterdir()))


def _remove_store(path: Path) -> None:
    if not _looks_like_store(path):
        raise StoreError(f"refusing to delete {path}: it exists and is not a Zarr store (no zarr.json)")
    shutil.rmtree(path)


def _plan_digest(plan: Mapping[str, Any]) -> str:
    """SHA-256 of the plan (canonical JSON); kept in the completion mark, so a complete store tells its plan."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _complete_plan(path: Path) -> str | None:
    """The plan digest recorded in the completion mark of the complete store ``path`` (None if it has none)."""
    try:
        mark = read_attrs(path).get(COMPLETE_ATTR)
    except StoreError:
        return None
    return mark.get("plan") if isinstance(mark, dict) else None


class _AlreadyComplete(Exception):
    """Raised in the writer thread when another shard completed the store with the same plan (this shard is done)."""


def _complete_same_plan(path: Path, plan: Mapping[str, Any], shard: tuple[int, int] | None) -> bool:
    """For a shard: True when the complete store ``path`` was written with ``plan`` (the shard has nothing to do).

    Otherwise (no shard, or another plan) raises `StoreExistsError`: only shards of one extraction share a store.
    """
    if shard is not None:
        recorded = _complete_plan(path)
        if recorded == _plan_digest(plan):
            return True
        if recorded is not None:
            raise StoreExistsError(f"store {path} already exists and is complete with different settings (another "
                                   f"extraction); shard {shard[0]}/{shard[1]} of this one cannot be added to it; "
                                   "pass mode='w' to overwrite it (with every shard stopped)")
    raise StoreExistsError(f"store {path} already exists and is complete; pass mode='w' to overwrite it")


def _prepare_store(path: Path, plan: dict[str, Any], build_template, mode: str,
                   shard: tuple[int, int] | None = None) -> set[int] | None:
    """Create the store (or check that an unfinished one has the same plan), under the meta lock.

    Returns the chunks already done (read under the same lock), or None when ``shard`` is given and another
    shard has completed the store with the same plan in the meantime (nothing is left to do).
    """
    with _meta_lock(path):
        if path.exists() and not path.is_dir():
            raise StoreError(f"cannot write store {path}: a file (not a store folder) is in the way")
        if path.exists():
            if mode == "w":
                _remove_store(path)
            elif is_complete(path):
                if _complete_same_plan(path, plan, shard):
                    return None
            else:
                old = _read_plan(path)
                if old is None:
                    # creation was interrupted before the plan was written: nothing was computed yet
                    _remove_store(path)
                elif old != plan:
                    diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
                    raise StoreExistsError(
                        f"store {path} holds an unfinished extraction with different settings (differing: {diff}); "
                        "resume it with the same model, data and settings, or pass mode='w' to start over")
                else:
                    return _done_chunks(path)
        ds = build_template()
        ds.to_zarr(path, mode="w-", compute=False, zarr_format=3, consolidated=False,
                   encoding=encoding_for(ds, plan["sample_chunk"], plan["compressor"]),
                   write_empty_chunks=True)
        (path / PROGRESS_DIR).mkdir(exist_ok=True)
        _write_json_atomic(path / PROGRESS_DIR / "plan.json", plan)
        return set()


def _finalize(path: Path, n_chunks: int, info: dict[str, Any]) -> bool:
    """Mark the store complete if every chunk is done; True if it is complete."""
    with _meta_lock(path):
        if is_complete(path):
            return True
        done = _done_chunks(path)
        if any(c not in done for c in range(n_chunks)):
            return False
        mark_complete(path, **info)
        shutil.rmtree(path / PROGRESS_DIR, ignore_errors=True)
        return True


# --------------------------------------------------------------------------------------------
# background writer
# --------------------------------------------------------------------------------------------
class _Writer:
    """Assembles batches into chunk buffers and writes whole chunks, in a background thread.

    Memory is bounded by the queue size (in batches) plus the chunks being assembled. The store
    is opened when the first batch arrives; ``prepare`` (store creation for a new store) runs
    then, in this thread, so it overlaps the computation of the next batches and nothing is
    created when the first batch fails (e.g. a model whose output is not its head's). ``prepare``
    returns False when another shard completed the store meanwhile: the writer then stops with
    `_AlreadyComplete`, and this shard is done.
    """

    def __init__(self, path: Path, layout: dict[str, tuple[int, tuple[int, ...], np.dtype]],
                 bounds: dict[int, tuple[int, int]], max_items: int, finite: Sequence[str],
                 prepare: Callable[[], bool] | None = None):
        self.prepare = prepare
        self.arrays: dict[str, Any] | None = None
        self.path = path
        self.layout = layout
        self.bounds = bounds
        self.finite = tuple(finite)
        self.buffers: dict[int, tuple[dict[str, np.ndarray], list[int]]] = {}
        self.q: queue.Queue = queue.Queue(maxsize=max(1, max_items))
        self.error: BaseException | None = None
        self.chunks_written = 0
        self.thread = threading.Thread(target=self._loop, name="causalgeom-extract-writer", daemon=True)
        self.thread.start()

    def put(self, item: tuple) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write everything queued, stop the thread, re-raise its error if any."""
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                self._handle(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc

    def _open(self) -> None:
        import zarr

        if self.prepare is not None and not self.prepare():
            raise _AlreadyComplete(str(self.path))
        group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        self.arrays = {name: group[name].with_config({"write_empty_chunks": True}) for name in self.layout}

    def _handle(self, chunk: int, offset: int, tensors: dict[str, torch.Tensor], event: Any) -> None:
        if self.arrays is None:
            self._open()
        if event is not None:
            event.synchronize()
        start, stop = self.bounds[chunk]
        size = stop - start
        if chunk not in self.buffers:
            bufs = {}
            for name, (axis, other, dtype) in self.layout.items():
                shape = list(other)
                shape.insert(axis, size)
                bufs[name] = np.empty(shape, dtype=dtype)
            self.buffers[chunk] = (bufs, [0])
        bufs, filled = self.buffers[chunk]
        n = 0
        for name, t in tensors.items():
            axis = self.layout[name][0]
            arr = t.numpy()
            if arr.dtype == np.int16 and bufs[name].dtype == np.uint16:  # bfloat16 bit patterns (torch has no uint16)
                arr = arr.view(np.uint16)
            n = arr.shape[axis]
            idx = [slice(None)] * arr.ndim
            idx[axis] = slice(offset, offset + n)
            bufs[name][tuple(idx)] = arr
        filled[0] += n
        if filled[0] < size:
            return
        for name in self.finite:
            buf = bufs[name]
            # bfloat16 bit patterns: inf/NaN have every exponent bit set
            bad = (buf & 0x7F80) == 0x7F80 if buf.dtype == np.uint16 else ~np.isfinite(buf)
            if bad.any():
                axis = self.layout[name][0]
                first = int(np.nonzero(bad.any(axis=tuple(i for i in range(bad.ndim) if i != axis)))[0][0]) + start
                raise SchemaError(f"variable {name!r}: the model produced NaN/Inf for sample {first} (chunk of samples "
                                  f"{start}..{stop - 1}); features and logits must be finite")
        for name, buf in bufs.items():
            axis = self.layout[name][0]
            idx = [slice(None)] * buf.ndim
            idx[axis] = slice(start, stop)
            self.arrays[name][tuple(idx)] = buf
        del self.buffers[chunk]
        _marker(self.path, chunk).touch()
        self.chunks_written += 1


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------
def _amp_modes(amp: Any) -> tuple[bool, bool]:
    if amp in (False, None, "none"):
        return False, False
    if amp in (True, "clean"):
        return True, False
    if amp == "all":
        return True, True
    raise ConfigError(f"amp: expected False, True/'clean' (bf16 for the clean pass) or 'all' (also attack passes), "
                      f"got {amp!r}")


def _shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard: expected (rank, world) integers, got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard: expected 0 <= rank < world, got rank={rank}, world={world}")
    return rank, world


def _base_seed(generator: torch.Generator | int | None) -> int:
    if generator is None:
        return 0
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return int(generator)
    raise ConfigError(f"generator: expected None, an int seed or a torch.Generator, got {type(generator).__name__}")


def _chunk_generator(seed: int, chunk: int, device: torch.device) -> torch.Generator:
    h = hashlib.sha256(f"{seed}:{chunk}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(h[:8], "little") & (2**63 - 1))


def _default_chunk(batch_size: int, per_sample_bytes: int) -> int:
    cap = max(1, min(_MAX_CHUNK, _TARGET_CHUNK_BYTES // max(1, per_sample_bytes)))
    if cap >= batch_size:
        return (cap // batch_size) * batch_size
    return cap


def _digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _cached_versions() -> str:
    return json.dumps(package_versions())


def _package_versions() -> dict[str, str]:
    """``schema.package_versions()``, looked up once per process (importlib.metadata is slow)."""
    return json.loads(_cached_versions())


def _default_run_id(out: Path) -> str:
    stem = out.name[:-5] if out.name.endswith(".zarr") else out.name
    return stem if RUN_ID_PATTERN.match(stem) and ".." not in stem else "run"


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """The options of :func:`extract` (everything but the model, the data and the output path).

    ``extract(model, data, out, head="fc", amp=True)`` and
    ``extract(model, data, out, ExtractConfig(head="fc", amp=True))`` are the same call; keywords given
    next to a config replace its fields. The fields are documented in :func:`extract`.
    """

    head: str | None = None
    attacks: Any = None
    eps: Any = None
    batch_size: int | None = None
    device: str | torch.device = "cpu"
    attrs: Mapping[str, Any] | None = None
    shard: tuple[int, int] | None = None
    amp: bool | str = False
    progress: bool = True
    mode: str = "w-"
    save_adv: bool = False
    sample_chunk: int | None = None
    generator: torch.Generator | int | None = None
    num_workers: int | None = None
    queue_size: int = 8
    compressor: str | None = None
    features_dtype: str | None = "float32"
    feature_layer: str | None = None

    @classmethod
    def from_options(cls, config: ExtractConfig | None = None, **options: Any) -> ExtractConfig:
        """``config`` (default: all defaults) with ``options`` replacing fields; unknown names raise ConfigError."""
        if config is not None and not isinstance(config, ExtractConfig):
            raise ConfigError(f"config: expected an ExtractConfig or None, got {type(config).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ConfigError(f"extract: unknown option(s) {unknown}; expected some of {names}")
        return dataclasses.replace(config or cls(), **options)

    def check(self) -> None:
        """Check the options that need no model or data (the rest are checked by `extract`).

        Raises
        ------
        ConfigError
            Naming the option, what was expected and what was given.
        """
        check_choice(self.mode, "mode", ("w-", "w"))  # 'w-': create or resume; 'w': start over
        if _shard(self.shard) is not None and self.mode == "w":
            raise ConfigError("mode='w' cannot be combined with shard=: one shard would delete the others' work; "
                              "delete the store first and run every shard with mode='w-'")
        _amp_modes(self.amp)
        if self.compressor is not None:  # None: DEFAULT_COMPRESSOR
            check_choice(self.compressor, "compressor", COMPRESSORS)
        if self.features_dtype is not None:  # None: the stored dtype, float32 for a new store
            check_choice(self.features_dtype, "features_dtype", FEATURES_DTYPES)
        for name in ("batch_size", "sample_chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, (int, np.integer)) \
                or self.queue_size < 1:
            raise ConfigError(f"queue_size: expected a positive integer, got {self.queue_size!r}")


@dataclasses.dataclass
class _Job:
    """What `_run` computes: the resolved options of one `extract` call and the chunks left to do."""

    out: Path
    todo: list[int]
    chunk: int
    n: int
    layout: dict[str, tuple[int, tuple[int, ...], np.dtype]]
    attacks: list
    grid: list[float]
    head_name: str
    head: nn.Linear
    device: torch.device
    amp_clean: bool
    amp_attack: bool
    save_adv: bool
    base_seed: int
    progress: bool
    queue_size: int
    run_id: str
    prepare: Callable[[], bool] | None
    features_dtype: str = "float32"
    layer: tuple[str, nn.Module] | None = None  # feature_layer (name, module); None: the head's input


def _template(n: int, chunk: int, W: np.ndarray | None, b: np.ndarray | None, atks: list, grid: list[float],
              save_adv: bool, attrs: dict[str, Any], features_dtype: str = "float32",
              shape: tuple[int, int] | None = None) -> xr.Dataset:
    """The store's skeleton: a validated schema-v1 Dataset of lazy zeros with the final shapes and chunks
    (``W=None``: no head stored; ``shape`` = (K, F) then)."""
    import dask.array as da
    import xarray as xr

    K, F_ = W.shape if W is not None else shape
    A, E = len(atks), len(grid)

    def lazy(shape: tuple[int, ...], dtype: Any, axis: int) -> Any:
        chunks = tuple(chunk if i == axis else s for i, s in enumerate(shape))
        return da.zeros(shape, dtype=dtype, chunks=chunks)

    dv: dict[str, Any] = {
        "features": (("sample", "feature"), lazy((n, F_), _FEATURE_STORE_DTYPE[features_dtype], 0),
                     _features_attrs(features_dtype)),
        "logits": (("sample", "class"), lazy((n, K), np.float32, 0)),
        "label": (("sample",), lazy((n,), np.int64, 0)),
    }
    if W is not None:
        dv["head_weight"] = (("class", "feature"), W)
    if W is not None and b is not None:
        dv["head_bias"] = (("class",), b)
    coords: dict[str, Any] = {}
    if atks:
        dv["adv_correct"] = (("attack", "eps", "sample"), lazy((A, E, n), bool, 2))
        dv["adv_margin"] = (("attack", "eps", "sample"), lazy((A, E, n), np.float32, 2))
        dv["min_flip_eps"] = (("attack", "sample"), lazy((A, n), np.float32, 1))
        if save_adv:
            dv["adv_features"] = (("attack", "eps", "sample", "feature"), lazy((A, E, n, F_), np.float32, 2))
            dv["adv_logits"] = (("attack", "eps", "sample", "class"), lazy((A, E, n, K), np.float32, 2))
        coords["attack"] = ("attack", np.asarray([a.name for a in atks], dtype=object))
        coords["eps"] = ("eps", np.asarray(grid, dtype=np.float64))
    ds = xr.Dataset(dv, coords=coords, attrs=attrs)
    validate(ds, check_values=False)
    return ds


#: The Zarr dtype of ``features`` for each ``features_dtype`` (bfloat16: its bit patterns, see `_encode_features`).
_FEATURE_STORE_DTYPE = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                        "bfloat16": np.dtype(np.uint16)}
_TORCH_HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _features_attrs(features_dtype: str) -> dict[str, str]:
    """Variable attributes of ``features`` stored at ``features_dtype`` (none for float32; schema.FEATURES_DTYPES)."""
    if features_dtype == "float32":
        return {}
    attrs = {STORED_DTYPE_ATTR: features_dtype}
    if features_dtype == "bfloat16":
        attrs[ENCODED_DTYPE_ATTR] = "bfloat16"
    return attrs


def _encode_features(feats: torch.Tensor, features_dtype: str, run_id: str, first_sample: int) -> torch.Tensor:
    """Round a batch of float32 features (n, F) to ``features_dtype`` as torch does (round to nearest even).

    float16 comes back as float16; bfloat16 as its bit patterns (``.view(torch.int16)``, stored as uint16).

    Raises
    ------
    ConfigError
        A finite feature that overflows the half type (float16: |h| >= 65520 rounds to inf), naming the run, the
        sample and the option; the batch is refused before anything of its chunk is written.
    """
    if features_dtype == "float32":
        return feats
    half = feats.to(_TORCH_HALF[features_dtype])
    over = torch.isinf(half) & torch.isfinite(feats)
    if bool(over.any()):
        rows = torch.nonzero(over.any(dim=1)).flatten()
        big = float(feats[over].abs().max())
        raise ConfigError(
            f"features_dtype={features_dtype!r}: run {run_id!r} has features up to |h| = {big:.6g} (first at sample "
            f"{first_sample + int(rows[0])}), beyond {features_dtype}'s largest value "
            f"{float(torch.finfo(_TORCH_HALF[features_dtype]).max):g}: they would be stored as inf. Nothing of "
            "this chunk was written; extract this run with features_dtype='bfloat16' (float32's range) or "
            "'float32', and mode='w' (--overwrite) to restart the unfinished store")
    return half if features_dtype == "float16" else half.view(torch.int16)


def _layout(n_features: int, n_classes: int, atks: list, n_eps: int, save_adv: bool, features_dtype: str = "float32"
            ) -> dict[str, tuple[int, tuple[int, ...], np.dtype]]:
    """Per variable: the axis of ``sample``, the shape of one sample's block, the dtype (what the writer fills)."""
    A, E = len(atks), n_eps
    layout: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {
        "features": (0, (n_features,), _FEATURE_STORE_DTYPE[features_dtype]),
        "logits": (0, (n_classes,), np.dtype(np.float32)),
        "label": (0, (), np.dtype(np.int64)),
    }
    if atks:
        layout["adv_correct"] = (2, (A, E), np.dtype(bool))
        layout["adv_margin"] = (2, (A, E), np.dtype(np.float32))
        layout["min_flip_eps"] = (1, (A,), np.dtype(np.float32))
        if save_adv:
            layout["adv_features"] = (2, (A, E, n_features), np.dtype(np.float32))
            layout["adv_logits"] = (2, (A, E, n_classes), np.dtype(np.float32))
    return layout


def extract(model: nn.Module, data: Any, out: str | os.PathLike, config: ExtractConfig | None = None,
            **options: Any) -> Path:
    """Run ``model`` over ``data`` and stream a schema-v1 run into the Zarr store ``out``.

    Recorded per sample: ``features`` (exact input of the final linear layer, captured by a
    forward pre-hook in eval mode), ``logits`` (model output), ``label``; once: ``head_weight`` /
    ``head_bias``; with attacks: ``adv_correct``, ``adv_margin``, ``min_flip_eps`` (and with
    ``save_adv``: ``adv_features``, ``adv_logits``) from :func:`causalgeom.pipeline.attacks.sweep` semantics
    (monotone-ε rule, see ``docs/attacks.md``).

    Parameters
    ----------
    model : nn.Module
        Takes pixel-space input in [0, 1] (normalization inside the model), returns logits (n, K)
        equal to the output of its final ``nn.Linear``. Moved to ``device``; run in eval mode
        (its train/eval flags are restored afterwards).
    data : Dataset, DataLoader, or (x, y) tensors
        Map-style, fixed order (a shuffling DataLoader is refused). Batches are (x, y) pairs.
    out : path-like
        Store folder (conventionally ``RUN_ID.zarr``); parent folders are created.
    config : ExtractConfig, optional
        The options below as one object; keywords given as well replace its fields.
    head : str, optional
        Qualified name of the final linear layer (default: :func:`find_head`).
    feature_layer : str, optional
        Qualified name of any module whose output is stored as ``features`` (averaged over its spatial dims when
        it has them, `causalgeom.pipeline.models.pool_features`; ``adv_features`` likewise), recorded in the attribute
        ``feature_layer``. When that output is exactly the head's input (checked on the first batch), the head is
        stored as usual; otherwise ``head_weight`` / ``head_bias`` are not stored and the run is analysed as a
        run without a head (geometry with mean class centers, calibration, robustness, mediation). Default: the
        head's input.
    attacks : attack(s), optional
        Anything :func:`causalgeom.pipeline.attacks.resolve` takes (attacks, torchattacks objects, spec
        strings, :data:`causalgeom.pipeline.attacks.REFERENCE`). None: no attack outcomes, unless ``eps``
        is given (then PGD L-inf with default settings).
    eps : float or list of float, optional
        ε grid (default: the presets' grids, else :data:`causalgeom.pipeline.attacks.STANDARD_EPS`).
    batch_size : int, optional
        Default: the DataLoader's batch size, else 256.
    device : str or torch.device
    attrs : mapping, optional
        Provenance (``run_id``, ``regularizer``, ``strength``, ``seed``, ``dataset``, ``split``...).
        ``run_id`` defaults to the store's name without ``.zarr``.
    shard : (rank, world), optional
        Fill only this process's contiguous share of the sample chunks; the last shard to finish
        marks the store complete. Every shard must be called with the same arguments. A shard that
        finds the store complete with the same plan (its digest is kept in the completion mark) returns
        it: shards with no chunk, late shards and shards that finish first all end cleanly.
    amp : bool or {"clean", "all"}
        True/"clean": bf16 autocast for the clean pass; the logits are then recomputed in fp32 from
        the captured features with the head's weights. "all": also for attack passes. Default
        False: everything in fp32.
    progress : bool
        Show a progress bar (tqdm).
    mode : {"w-", "w"}
        "w-" (default): create the store, or resume an unfinished extraction with the same
        settings; a complete store raises :class:`StoreExistsError`. "w": start over (not with
        ``shard``).
    save_adv : bool
        Also store ``adv_features`` (A, E, N, F) and ``adv_logits`` (A, E, N, K).
    sample_chunk : int, optional
        Samples per Zarr chunk (the unit of writing, resuming and sharding). Default: a multiple
        of ``batch_size`` of about 32 MiB for the widest variable, at most 4096 samples.
    generator : torch.Generator or int, optional
        Seeds the attacks' randomness; each chunk gets its own generator derived from this seed
        and the chunk index, so resumed and sharded extractions equal an uninterrupted one.
    num_workers : int, optional
        DataLoader workers (default: the DataLoader's, else 0).
    queue_size : int
        Batches waiting for the writer thread at most (bounds memory).
    compressor : {"none", "blosc-lz4", "zstd"}, optional
        Chunk compressor of the store (`causalgeom.dump.store.COMPRESSORS`; default ``"none"``, the fastest to read,
        docs/benchmarks.md); every chunk keeps its CRC32C checksum. Part of the plan: a resume must use the same.
    features_dtype : {"float32", "float16", "bfloat16"}
        Precision ``features`` are stored at (default ``"float32"``; ``None`` is the same); half precision halves
        their bytes. Each batch is rounded to nearest even by torch (``.to(torch.float16 / torch.bfloat16)``);
        float16 is a float16 Zarr array, bfloat16 (which Zarr lacks) its uint16 bit patterns with the attribute
        ``encoded_dtype="bfloat16"``; both carry ``stored_dtype``, and `causalgeom.open` decodes them to float32
        exactly. A finite feature beyond float16's range (|h| >= 65520) raises ConfigError before its chunk is
        written. logits, the head and ``adv_features`` stay float32. Error bound on rms and cosine:
        docs/methods_metrics.md, "Half-precision features". Part of the plan: a resume must use the same.

    Returns
    -------
    pathlib.Path
        The store; complete unless ``shard`` is given and other shards are still running.

    Raises
    ------
    ConfigError, SchemaError, StoreExistsError, StoreLockedError
    """
    cfg = ExtractConfig.from_options(config, **options)
    cfg.check()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    head, attacks, eps, batch_size, attrs = cfg.head, cfg.attacks, cfg.eps, cfg.batch_size, cfg.attrs
    mode, save_adv, sample_chunk, generator = cfg.mode, cfg.save_adv, cfg.sample_chunk, cfg.generator
    shard_ = _shard(cfg.shard)
    dev = _torch_util.device(cfg.device)
    amp_clean, amp_attack = _amp_modes(cfg.amp)
    if attacks is None and eps is not None:
        attacks = [_attacks.PGD("linf")]
    atks, grid = _attacks.resolve(attacks, eps)
    if save_adv and not atks:
        raise ConfigError("save_adv=True needs attacks (there is nothing adversarial to save)")
    head_name, head_mod = find_head(model, head)
    source = _make_source(data, batch_size, cfg.num_workers)
    n = source.n
    if n == 0:
        raise ConfigError("data: the dataset is empty (0 samples)")
    out = Path(out)
    base_seed = _base_seed(generator)

    W = head_mod.weight.detach().float().cpu().numpy()
    b = None if head_mod.bias is None else head_mod.bias.detach().float().cpu().numpy()
    K, F_ = W.shape
    layer = None
    feature_layer = head_name
    if cfg.feature_layer is not None:
        layer = (cfg.feature_layer, _named_module(model, cfg.feature_layer))
        F_, feeds_head = _probe_layer(model, source, n, layer, head_mod, dev)
        feature_layer = cfg.feature_layer
        if not feeds_head:
            if amp_clean or amp_attack:
                raise ConfigError(f"amp: feature_layer={cfg.feature_layer!r} does not feed the head directly, so the "
                                  "logits cannot be recomputed in fp32 from the features; run without amp")
            W = b = None
    A, E = len(atks), len(grid)
    features_dtype = cfg.features_dtype or "float32"
    per_sample = _FEATURE_STORE_DTYPE[features_dtype].itemsize * F_ + 4 * K + 8 + A * E * 5 + A * 4 + (4 * A * E * (F_ + K) if save_adv else 0)
    chunk = _default_chunk(source.batch_size, per_sample) if sample_chunk is None else int(sample_chunk)
    chunk = min(chunk, n)
    n_chunks = math.ceil(n / chunk)

    user = normalize_attrs(attrs)
    run_id = check_run_id(user.get("run_id", _default_run_id(out)))
    full_attrs: dict[str, Any] = {
        "run_id": run_id, "model": type(model).__name__, "input_range": "[0, 1]", **user,
        "feature_layer": feature_layer, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _package_versions(), "source": "causalgeom.extract",
    }
    if amp_clean:
        full_attrs["logits_source"] = "fp32 head applied to bf16 features (amp)"
    if atks:
        full_attrs["attack_params"] = {a.name: a.params() for a in atks}
        full_attrs["attack_seed"] = base_seed
        full_attrs["attack_amp"] = amp_attack
    full_attrs = normalize_attrs(full_attrs)
    plan = normalize_attrs({
        "n_samples": n, "sample_chunk": chunk, "n_features": F_, "n_classes": K, "feature_layer": feature_layer,
        "attacks": [a.name for a in atks], "attack_params": full_attrs.get("attack_params"), "eps": grid,
        "save_adv": bool(save_adv), "head": _digest(W, b) if W is not None else None, "attack_seed": base_seed, "amp": [amp_clean, amp_attack],
        "compressor": cfg.compressor or DEFAULT_COMPRESSOR, "features_dtype": features_dtype,
        "attrs": {k: v for k, v in full_attrs.items() if k not in ("created", "versions")},
    })

    def build_template() -> xr.Dataset:
        return _template(n, chunk, W, b, atks, grid, save_adv, full_attrs, features_dtype, shape=(K, F_))

    layout = _layout(F_, K, atks, len(grid), save_adv, features_dtype)

    if not out.parent.exists():
        try:
            out.parent.mkdir(parents=True)
        except OSError as exc:
            raise StoreError(f"cannot create folder {out.parent} for store {out}: {exc.strerror}") from None
    if mode == "w-" and is_complete(out) and _complete_same_plan(out, plan, shard_):
        return out  # a late shard: the others completed the store with this plan
    lock_target = out if shard_ is None else out.parent / f"{out.name}.shard-{shard_[0]}-of-{shard_[1]}"
    complete_info = {"n_samples": n, "sample_chunk": chunk, "writer": "causalgeom.extract", "plan": _plan_digest(plan)}
    with store_lock(lock_target):
        prepare = None
        if out.exists() and mode == "w-":  # resume (or refuse) now: the finished chunks must be known
            done = _prepare_store(out, plan, build_template, mode, shard_)
            if done is None:
                return out  # another shard completed the store with this plan meanwhile
        else:  # new store (or start over): created by the writer thread once the first batch is computed
            def prepare() -> bool:
                return _prepare_store(out, plan, build_template, mode, shard_) is not None

            done = set()
        mine = list(range(n_chunks))
        if shard_ is not None:
            mine = [int(c) for c in np.array_split(np.arange(n_chunks), shard_[1])[shard_[0]]]
        todo = [c for c in mine if c not in done]
        if todo:
            try:
                _run(model, source, _Job(out, todo, chunk, n, layout, atks, grid, head_name, head_mod, dev, amp_clean,
                                         amp_attack, save_adv, base_seed, cfg.progress, cfg.queue_size, run_id,
                                         prepare, features_dtype, layer))
            except _AlreadyComplete:
                return out  # another shard completed the store with this plan before this one wrote anything
        elif prepare is not None and not prepare():
            return out  # a shard with no chunk: the others completed the store meanwhile
        _finalize(out, n_chunks, complete_info)
    return out


def _named_module(model: nn.Module, name: str) -> nn.Module:
    """Submodule ``name`` of ``model`` (or of the network inside a `causalgeom.pipeline.models.NormalizedClassifier`)."""
    modules = dict(model.named_modules())
    inner = getattr(model, "net", None)
    if isinstance(name, str) and name not in modules and isinstance(inner, nn.Module):
        modules.update({k: m for k, m in inner.named_modules() if k and k not in modules})
    if not isinstance(name, str) or name not in modules or not name:
        names = [n for n in modules if n]
        raise ConfigError(f"feature_layer={name!r}: {type(model).__name__} has no submodule of that name; its "
                          f"modules include {names[:8]} ... {names[-8:]}")
    return modules[name]


def _probe_layer(model: nn.Module, source: Any, n: int, layer: tuple[str, nn.Module], head: nn.Linear,
                 dev: torch.device) -> tuple[int, bool]:
    """(feature width, whether the layer's pooled output is exactly the head's input) from one forward pass
    of the first two samples."""
    name, mod = layer
    _, _, xb, _ = next(iter(source.batches([(0, 0, min(n, 2))], pin=False)))
    out_cap, head_cap = _LayerCapture(mod, name, head), _Capture(head)
    try:
        model.to(dev)
        with torch.no_grad(), _eval_mode(model), out_cap.on(), head_cap.on():
            model(xb.to(dev).float())
    finally:
        out_cap.remove()
        head_cap.remove()
    if out_cap.calls != 1:
        raise ConfigError(f"feature_layer={name!r}: the module was called {out_cap.calls} times in one forward "
                          "pass, expected exactly once")
    h, z = out_cap.value, head_cap.value
    feeds = isinstance(z, torch.Tensor) and z.shape == h.shape and torch.equal(z, h)
    return int(h.shape[1]), bool(feeds)


def _run(model: nn.Module, source: Any, job: _Job) -> None:
    """Compute the chunks ``job.todo`` and hand them to the writer thread."""
    out, todo, chunk, n, layout = job.out, job.todo, job.chunk, job.n, job.layout
    atks, grid, head_name, head_mod, dev = job.attacks, job.grid, job.head_name, job.head, job.device
    amp_clean, amp_attack, save_adv, base_seed = job.amp_clean, job.amp_attack, job.save_adv, job.base_seed
    progress, queue_size, run_id, prepare = job.progress, job.queue_size, job.run_id, job.prepare
    bounds = {c: (c * chunk, min(n, (c + 1) * chunk)) for c in todo}
    spans = [(c, *bounds[c]) for c in todo]
    cuda = dev.type == "cuda"
    model.to(dev)
    for a in atks:
        a.to(dev)
    capture = _Capture(head_mod) if job.layer is None else _LayerCapture(job.layer[1], job.layer[0], head_mod)
    check: _OutputCheck | None = _OutputCheck(head_mod)
    writer = _Writer(out, layout, bounds, queue_size, finite=("features", "logits"), prepare=prepare)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(e - s for _, s, e in spans), desc=f"extract {run_id}", unit="sample",
                       dynamic_ncols=True, leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    gens: dict[int, torch.Generator] = {}
    failed = False
    try:
        with _eval_mode(model):
            for c, offset, xb, yb in source.batches(spans, pin=cuda):
                x = xb.to(dev, non_blocking=True).float()
                y = yb.to(dev, non_blocking=True)
                if check is not None:
                    if atks and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
                        raise ConfigError(f"data: inputs must be pixel values in [0, 1] for attacks (normalization "
                                          f"belongs inside the model), got range [{float(x.min()):.4g}, "
                                          f"{float(x.max()):.4g}]")
                    if int(yb.min()) < 0 or int(yb.max()) >= head_mod.out_features:
                        raise SchemaError(f"variable 'label': values must lie in [0, {head_mod.out_features}), got "
                                          f"range [{int(yb.min())}, {int(yb.max())}]")
                    with torch.no_grad(), capture.on(), _torch_util.autocast(dev, amp_clean):
                        model_out = model(x)
                    check.check(model_out, head_name, type(model).__name__)
                    check.remove()
                    check = None
                    feats = capture.value.float()
                    if amp_clean:
                        logits = torch.nn.functional.linear(feats, head_mod.weight.float(),
                                                            None if head_mod.bias is None else head_mod.bias.float())
                    else:
                        logits = model_out.float()
                else:
                    logits, feats = _attacks._evaluate(model, x, capture, amp_clean)
                res: dict[str, torch.Tensor] = {
                    "features": _encode_features(feats, job.features_dtype, run_id, c * chunk + offset),
                    "logits": logits}
                if atks:
                    g = gens.get(c)
                    if g is None:
                        gens.clear()
                        g = gens[c] = _chunk_generator(base_seed, c, dev)
                    adv = _attacks._sweep_batch(model, x, y, atks, grid, logits, feats if save_adv else None,
                                                capture=capture if save_adv else None, generator=g, amp=amp_attack,
                                                keep_adv=save_adv)
                    res.update(adv)
                if cuda:
                    tensors = {k: v.detach().to("cpu", non_blocking=True) for k, v in res.items()}
                    event = torch.cuda.Event()
                    event.record()
                else:
                    tensors = {k: v.detach() for k, v in res.items()}
                    event = None
                tensors["label"] = yb.long().cpu()
                writer.put((c, offset, tensors, event))
                if bar is not None:
                    bar.update(int(yb.shape[0]))
    except BaseException:
        failed = True
        raise
    finally:
        capture.remove()
        if check is not None:
            check.remove()
        if bar is not None:
            bar.close()
        try:
            writer.close()  # writes every chunk already complete in the queue, even after an error
        except BaseException:
            if not failed:
                raise
            # the compute loop's error is already propagating; the writer's (often the same) is secondary


# --------------------------------------------------------------------------------------------
# checkpoints and training grids
# --------------------------------------------------------------------------------------------
_RUN_ATTR_KEYS = ("run_id", "regularizer", "strength", "regularizer_params", "seed", "model", "dataset",
                  "init_digest")


def _run_attrs(config: Mapping[str, Any], split: str, checkpoint: Path) -> dict[str, Any]:
    attrs = {k: config[k] for k in _RUN_ATTR_KEYS if k in config and config[k] is not None}
    attrs["split"] = split
    attrs["checkpoint"] = str(checkpoint)
    return json.loads(json.dumps(attrs, default=str))


def _load(checkpoint: Path):
    import importlib

    train = importlib.import_module("causalgeom.pipeline.train")
    return train.load_checkpoint(checkpoint)


def _dataset(name: str, split: str, root: Any):
    import importlib

    data = importlib.import_module("causalgeom.pipeline.data")
    return data.load_dataset(name, split, root=root)


def _check_input_shape(config: Mapping[str, Any], dataset: Any, checkpoint: Path) -> None:
    """Refuse data whose images disagree with the input the checkpoint's model spec declares (``in_channels``,
    ``image_size``): a 1-channel image given to a 3-channel model is broadcast by the normalization, silently."""
    spec = config.get("model_spec") if isinstance(config.get("model_spec"), Mapping) else {}
    want_c, want_hw = spec.get("in_channels"), spec.get("image_size")
    if want_c is None and not want_hw:
        return
    try:
        shape = tuple(int(s) for s in dataset[0][0].shape)
    except Exception:  # noqa: BLE001 - an empty or unusual dataset: extract reports what it cannot use
        return
    if len(shape) != 3:
        return
    if want_c is not None and shape[0] != int(want_c):
        raise ConfigError(f"checkpoint {checkpoint}: its model spec declares {int(want_c)} input channel(s), but the "
                          f"data give images of shape {shape} (C, H, W) with {shape[0]}; extract on the data the model "
                          "was trained on (dataset= / --data-root)")
    if want_hw and tuple(int(s) for s in want_hw) != shape[1:]:
        raise ConfigError(f"checkpoint {checkpoint}: its model spec declares images of size {tuple(want_hw)} (H, W), "
                          f"but the data give {shape[1:]}; extract on the data the model was trained on")


def extract_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *, split: str = "test",
                       data_root: str | os.PathLike | None = None, dataset: Any = None, **kwargs: Any) -> Path:
    """Extract one trained run (``checkpoint.pt`` or its run folder) with its own dataset split.

    Parameters
    ----------
    checkpoint : path-like
        Loaded with ``causalgeom.pipeline.train.load_checkpoint`` → ``(model, config)``.
    out : path-like
        ``*.zarr``: the store; otherwise a study folder receiving ``RUN_ID.zarr``.
    split : str
        Dataset split (``causalgeom.pipeline.data.load_dataset(config["dataset"], split, root=...)``).
    data_root : path-like, optional
        Overrides ``config["data_root"]``.
    dataset : Dataset, optional
        Use this data instead of loading the split.
    **kwargs
        Passed to :func:`extract` (attacks, eps, batch_size, device, amp, progress, mode, ...).

    Returns
    -------
    pathlib.Path
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ConfigError(f"checkpoint: no file or run folder at {checkpoint}")
    model, config = _load(checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    run_id = str(config.get("run_id") or run_dir.name)
    out = Path(out)
    if out.suffix != ".zarr":
        out = out / f"{run_id}.zarr"
    if dataset is None:
        if "dataset" not in config:
            raise ConfigError(f"checkpoint {checkpoint}: its config has no 'dataset'; pass dataset=")
        dataset = _dataset(config["dataset"], split, data_root if data_root is not None else config.get("data_root"))
    _check_input_shape(config, dataset, checkpoint)
    attrs = {**_run_attrs(config, split, checkpoint), **dict(kwargs.pop("attrs", None) or {})}
    attrs["run_id"] = run_id
    return extract(model, dataset, out, attrs=attrs, **kwargs)


def _find_runs(runs_dir: Path) -> list[Path]:
    base = runs_dir / "runs" if (runs_dir / "runs").is_dir() else runs_dir
    if not base.is_dir():
        raise ConfigError(f"runs_dir: no folder at {runs_dir}")
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "DONE").exists())


def already_extracted(target: Path, *, overwrite: bool, progress: bool, tag: str,
                      features_dtype: str | None = None) -> bool:
    """Whether a study's run store ``target`` is complete and must be kept (not ``overwrite``); says so on stderr.

    A complete store is kept whatever settings it was extracted with, except an explicitly asked
    ``features_dtype`` (not None) that differs from the precision its features are stored at: that raises
    `StoreExistsError` (re-extract with ``mode="w"`` / ``--overwrite``, or ask for the stored precision), so a
    study never silently mixes precisions it was not asked for.
    """
    if overwrite or not is_complete(target):
        return False
    if features_dtype is not None:
        stored = stored_features_dtype(target)
        if stored != features_dtype:
            raise StoreExistsError(
                f"store {target} is complete with features stored as {stored}, but features_dtype="
                f"{features_dtype!r} was asked; pass mode='w' (--overwrite) to re-extract it, or "
                f"features_dtype={stored!r} to keep it")
    if progress:
        print(f"[{tag}] {target.name[:-5] if target.name.endswith('.zarr') else target.name}: already extracted, "
              "skipping", file=sys.stderr)
    return True


def extract_runs(runs_dir: str | os.PathLike, study_dir: str | os.PathLike | None = None, *, split: str = "test",
                 attacks: Any = _attacks.REFERENCE, eps: Any = None, data_root: str | os.PathLike | None = None,
                 run_ids: Sequence[str] | None = None, progress: bool = True, **kwargs: Any) -> list[Path]:
    """Extract every finished run of a training output folder into one study folder.

    Runs are the folders ``RUNS_DIR/runs/RUN_ID`` (or ``RUNS_DIR/RUN_ID``) holding a ``DONE`` file.
    A run whose store is already complete is skipped whatever settings it was extracted with (pass
    ``mode="w"`` to redo it), except an explicit ``features_dtype`` other than its stored precision, which
    raises `StoreExistsError` (`already_extracted`); an unfinished one is resumed (same settings required).
    Datasets are loaded once per (dataset, split, root).

    Parameters
    ----------
    runs_dir : path-like
        Training output folder (``OUT`` with ``runs/``) or its ``runs`` folder.
    study_dir : path-like, optional
        Default ``OUT/study``.
    split : str
    attacks, eps
        As in :func:`extract` (default: :data:`causalgeom.pipeline.attacks.REFERENCE`; ``None`` for none).
    data_root : path-like, optional
    run_ids : list of str, optional
        Only these runs.
    progress : bool
    **kwargs
        Passed to :func:`extract` (batch_size, device, amp, save_adv, shard, ...).

    Returns
    -------
    list of pathlib.Path
        Store of every selected run (extracted now or before).
    """
    runs_dir = Path(runs_dir)
    runs = _find_runs(runs_dir)
    if run_ids is not None:
        wanted = set(run_ids)
        missing = wanted - {p.name for p in runs}
        if missing:
            raise ConfigError(f"run_ids: no finished runs {sorted(missing)} in {runs_dir}; finished: "
                              f"{[p.name for p in runs]}")
        runs = [p for p in runs if p.name in wanted]
    if not runs:
        raise ConfigError(f"runs_dir: no finished runs (folders with a DONE file) in {runs_dir}")
    root = runs_dir.parent if runs_dir.name == "runs" else runs_dir
    study = Path(study_dir) if study_dir is not None else root / "study"
    study.mkdir(parents=True, exist_ok=True)
    cache: dict[tuple, Any] = {}
    paths = []
    overwrite = kwargs.get("mode") == "w"
    for i, run_dir in enumerate(runs):
        target = study / f"{run_dir.name}.zarr"
        if already_extracted(target, overwrite=overwrite, progress=progress, tag="extract",
                             features_dtype=kwargs.get("features_dtype")):
            paths.append(target)
            continue
        model, config = _load(run_dir)
        run_id = str(config.get("run_id") or run_dir.name)
        target = study / f"{run_id}.zarr"
        if already_extracted(target, overwrite=overwrite, progress=False, tag="extract",
                             features_dtype=kwargs.get("features_dtype")):
            paths.append(target)
            continue
        root_ = data_root if data_root is not None else config.get("data_root")
        key = (config.get("dataset"), split, str(root_))
        if key not in cache:
            if "dataset" not in config:
                raise ConfigError(f"run {run_dir}: its config has no 'dataset'")
            cache.clear()
            cache[key] = _dataset(config["dataset"], split, root_)
        attrs = {**_run_attrs(config, split, run_dir), "run_id": run_id}
        if progress:
            print(f"[extract] {run_id} ({i + 1}/{len(runs)})", file=sys.stderr)
        paths.append(extract(model, cache[key], target, attacks=attacks, eps=eps, attrs=attrs, progress=progress,
                             **kwargs))
    return paths
