"""Zarr (format 3) storage of one run: atomic `save`, lazy `open`, completion marks, locks, checksums.

Every chunk is written with a CRC32C checksum (``zarr.codecs.Crc32cCodec``), so a corrupted
chunk fails to decode instead of being read as numbers. A store is *complete* when its root
attribute ``causalgeom_complete`` is present; `save` writes into a hidden temporary folder
and renames it into place only after that mark is written, so a killed `save` never leaves a
store that `open` would accept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from .errors import ConfigError, IncompleteStoreError, SchemaError, StoreError, StoreExistsError
from ._util.io import file_lock
from .schema import validate

__all__ = [
    "COMPLETE_ATTR",
    "save",
    "open",
    "verify",
    "is_complete",
    "mark_complete",
    "store_lock",
    "default_sample_chunk",
    "encoding_for",
    "read_attrs",
]

COMPLETE_ATTR = "causalgeom_complete"
#: Stores smaller than this are checksum-verified on `open` (verify="auto").
AUTO_VERIFY_BYTES = 256 * 2**20
_TARGET_CHUNK_BYTES = 32 * 2**20


def default_sample_chunk(ds: xr.Dataset) -> int:
    """Samples per chunk so that the widest per-sample variable's chunk is about 32 MiB."""
    widest = 1
    for name, var in ds.data_vars.items():
        if "sample" in var.dims:
            per_sample = var.dtype.itemsize * int(np.prod([s for d, s in var.sizes.items() if d != "sample"] or [1]))
            widest = max(widest, per_sample)
    return int(max(1024, min(1 << 20, _TARGET_CHUNK_BYTES // widest)))


def encoding_for(ds: xr.Dataset, sample_chunk: int) -> dict[str, dict[str, Any]]:
    """Zarr encoding: chunked along ``sample`` only, zstd-compressed, CRC32C-checksummed."""
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        chunks = tuple(min(sample_chunk, s) if d == "sample" else s for d, s in var.sizes.items())
        if var.dtype.kind in "U" or var.dtype == object:
            enc[name] = {"chunks": chunks}
            continue
        enc[name] = {"chunks": chunks, "compressors": (ZstdCodec(level=1), Crc32cCodec())}
    return enc


@contextlib.contextmanager
def store_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive, non-blocking write lock of the store at ``path`` (a ``.NAME.lock`` file beside it).

    Raises
    ------
    StoreLockedError
        If another process holds it.
    """
    path = Path(path)
    with file_lock(path.parent / f".{path.name}.lock", what=f"store {path} is being written by another process"):
        yield


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise StoreError(f"cannot write {path}: parent folder {parent} does not exist")
    if not parent.is_dir():
        raise StoreError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write {path}: folder {parent} is not writable")


def save(ds: xr.Dataset, path: str | os.PathLike, *, mode: str = "w-", sample_chunk: int | None = None,
         check_values: bool = True) -> Path:
    """Validate ``ds`` and write it as a Zarr (format 3) store at ``path``.

    The store is written into a hidden temporary folder beside ``path``, marked complete,
    and renamed into place, so a crash never leaves a half-written store at ``path`` and
    an existing store is replaced only once the new one is whole.

    Parameters
    ----------
    ds : xarray.Dataset
        A schema-v1 run (in memory or dask-backed).
    path : path-like
        Target folder (conventionally ``NAME.zarr``).
    mode : {"w-", "w"}
        ``"w-"`` (default) refuses to overwrite an existing store; ``"w"`` replaces it.
    sample_chunk : int, optional
        Samples per chunk (default: about 32 MiB per chunk of the widest variable).
    check_values : bool
        Run the value checks of `validate` first (default True).

    Returns
    -------
    pathlib.Path
        The store's path.
    """
    if mode not in ("w-", "w"):
        raise ConfigError(f"mode: expected 'w-' (refuse to overwrite) or 'w' (overwrite), got {mode!r}")
    path = Path(path)
    validate(ds, check_values=check_values)
    _check_parent(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"cannot write store {path}: a file (not a store folder) is in the way")
    if path.exists() and mode == "w-":
        raise StoreExistsError(f"store {path} already exists; pass mode='w' to overwrite it")
    chunk = int(sample_chunk or default_sample_chunk(ds))
    if chunk <= 0:
        raise ConfigError(f"sample_chunk: expected a positive integer, got {sample_chunk!r}")
    with store_lock(path):
        if path.exists() and mode == "w-":  # re-check under the lock
            raise StoreExistsError(f"store {path} already exists; pass mode='w' to overwrite it")
        _remove_stale_partials(path)
        tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            out = ds.copy()
            out.attrs = dict(ds.attrs)
            out.attrs.pop(COMPLETE_ATTR, None)
            for var in out.variables.values():
                var.encoding = {}
            if any(v.chunks for v in out.variables.values()):
                out = out.chunk({"sample": chunk})
            # write_empty_chunks: a chunk equal to the fill value (all-False adv_correct, all-zero labels)
            # must still be written, or `open` reports it missing.
            out.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False,
                        encoding=encoding_for(out, chunk), write_empty_chunks=True)
            mark_complete(tmp, n_samples=int(ds.sizes["sample"]), sample_chunk=chunk)
            if path.exists():
                trash = path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
                os.rename(path, trash)
                os.rename(tmp, path)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot write store {path}: {exc.strerror or exc} "
                             f"({exc.filename or path.parent})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def _remove_stale_partials(path: Path) -> None:
    """Delete temporaries that a killed writer of ``path`` left behind (call only while holding the lock)."""
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in path.parent.glob(f".{path.name}.trash-*"):
        shutil.rmtree(stale, ignore_errors=True)


def mark_complete(path: str | os.PathLike, **info: Any) -> None:
    """Write the completion mark (root attribute ``causalgeom_complete``) of the store at ``path``."""
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    group.attrs[COMPLETE_ATTR] = {"schema_version": 1, **info}


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of the store at ``path`` without opening its arrays."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no store at {path}")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a Zarr store folder")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a non-store
        raise StoreError(f"{path} is not a readable Zarr (format 3) store: {exc}") from None
    return dict(group.attrs)


def is_complete(path: str | os.PathLike) -> bool:
    """True if the store at ``path`` carries the completion mark."""
    try:
        return COMPLETE_ATTR in read_attrs(path)
    except StoreError:
        return False


def _expected_chunk_files(path: Path, ds: xr.Dataset) -> list[str]:
    problems = []
    for name, var in ds.variables.items():
        enc_chunks = var.encoding.get("chunks") or var.encoding.get("preferred_chunks")
        if not enc_chunks or not var.shape:
            continue
        if isinstance(enc_chunks, dict):
            enc_chunks = tuple(enc_chunks[d] for d in var.dims)
        n_chunks = [int(np.ceil(s / c)) if s else 0 for s, c in zip(var.shape, enc_chunks)]
        expected = int(np.prod(n_chunks))
        cdir = path / name / "c"
        found = sum(len(files) for _, _, files in os.walk(cdir)) if cdir.exists() else 0
        if found < expected:
            problems.append(f"variable {name!r}: {expected - found} of {expected} chunks are missing")
    return problems


def open(path: str | os.PathLike, *, verify: bool | str = "auto", check_values: bool = False) -> xr.Dataset:  # noqa: A001
    """Open a run stored by `save` (or by `causalgeom.extract`) lazily, backed by dask.

    Parameters
    ----------
    path : path-like
        The store folder.
    verify : bool or "auto"
        Read every chunk once to check its CRC32C checksum (``"auto"``: only for stores under
        256 MiB). Missing chunk files are always detected.
    check_values : bool
        Also run the value checks of `validate` (reads the data once).

    Returns
    -------
    xarray.Dataset
        Dask-backed, chunked along ``sample`` as stored; round-trips exactly what was saved.

    Raises
    ------
    StoreError, IncompleteStoreError, SchemaError
    """
    path = Path(path)
    attrs = read_attrs(path)
    if COMPLETE_ATTR not in attrs:
        partial = path.name.startswith(".") and ".partial-" in path.name
        raise IncompleteStoreError(
            f"store {path} was not completely written (no completion mark){' - it is a temporary folder' if partial else ''}; "
            "re-run the command that writes it (extraction resumes where it stopped)")
    try:
        ds = xr.open_zarr(path, consolidated=False, zarr_format=3, chunks={})
    except Exception as exc:  # noqa: BLE001
        raise StoreError(f"cannot open {path} as an xarray Dataset: {exc}") from None
    ds.attrs.pop(COMPLETE_ATTR, None)
    problems = _expected_chunk_files(path, ds)
    if problems:
        raise IncompleteStoreError(f"store {path} is damaged: " + "; ".join(problems))
    if verify == "auto":
        verify = _verify_key(path) not in _VERIFIED and _store_bytes(path) <= AUTO_VERIFY_BYTES
    if verify:
        _verify_loaded(ds, path)
        _VERIFIED.add(_verify_key(path))
    try:
        validate(ds, check_values=check_values)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
    return ds


#: Stores whose checksums this process has verified, keyed by path and the mtime of their metadata
#: (a rewritten store has new metadata), so that reopening a run does not re-read it.
_VERIFIED: set[tuple[str, int]] = set()


def _verify_key(path: Path) -> tuple[str, int]:
    return str(path.resolve()), (path / "zarr.json").stat().st_mtime_ns


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _verify_loaded(ds: xr.Dataset, path: Path) -> None:
    import dask

    for name, var in ds.variables.items():
        try:
            if var.chunks:
                dask.compute(var.data.sum() if var.dtype != bool else var.data.any())
            else:
                np.asarray(var.values)
        except Exception as exc:  # noqa: BLE001 - zarr/numcodecs raise various decode errors
            raise StoreError(f"store {path}: variable {name!r} has a corrupted chunk "
                             f"(checksum or decode failure: {type(exc).__name__}: {exc})") from None


def verify(path: str | os.PathLike) -> xr.Dataset:
    """Open ``path`` and read every chunk once, checking checksums and values; return the Dataset."""
    return open(path, verify=True, check_values=True)
