"""The store of an extraction: its skeleton and layout, feature encoding, progress markers, preparation (create,
resume, refuse), completion, and the background writer thread."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..._util.io import atomic_write, file_lock
from ...errors import ConfigError, SchemaError, StoreError, StoreExistsError
from ...dump.schema import ENCODED_DTYPE_ATTR, STORED_DTYPE_ATTR, validate
from ...dump.store import COMPLETE_ATTR, encoding_for, is_complete, mark_complete, read_attrs
from .options import PROGRESS_DIR

if TYPE_CHECKING:  # xarray is imported where a store is built
    import xarray as xr


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
