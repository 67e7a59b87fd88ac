# Over 600 lines on purpose: one concern (one run's storage): atomic save, lazy open, locks, completion marks and manifests must agree byte for byte.
"""Zarr (format 3) storage of one run: atomic `save`, lazy `open`, completion marks, locks, checksums.

Every chunk is written with a CRC32C checksum (``zarr.codecs.Crc32cCodec``), so a corrupted
chunk fails to decode instead of being read as numbers. A store is *complete* when its root
attribute ``causalgeom_complete`` is present; `save` writes into a hidden temporary folder
and renames it into place only after that mark is written, so a killed `save` never leaves a
store that `open` would accept.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from ..errors import ConfigError, IncompleteStoreError, SchemaError, StoreError, StoreExistsError
from .._util.checks import check_choice
from .._util.io import file_lock
from .schema import (ENCODED_DTYPE_ATTR, STORED_DTYPE_ATTR, _decoded_features, bfloat16_bits_to_float32,
                     features_storage, validate)

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
    "COMPRESSORS",
    "DEFAULT_COMPRESSOR",
    "read_attrs",
    "build_manifest",
    "check_store",
    "required_chunk_keys",
    "has_manifest",
    "MANIFEST_VERSION",
    "decode_features",
    "stored_features_dtype",
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


#: Compressors of `save` / `encoding_for` (every one is followed by a CRC32C checksum of the chunk):
#: ``"zstd"`` = Zstandard level 1 (the codec of stores written before issue 18), ``"blosc-lz4"`` = Blosc with
#: LZ4 level 5 and byte shuffle, ``"none"`` = no compression.
COMPRESSORS = ("none", "blosc-lz4", "zstd")
#: The default, chosen by measurement (docs/benchmarks.md, "Codec of the store"): on float32 features no compressor
#: reads fastest; the others save about 10% of the space at a large cost in read speed.
DEFAULT_COMPRESSOR = "none"


def _codecs(compressor: str) -> tuple[Any, ...]:
    check_choice(compressor, "compressor", COMPRESSORS)
    if compressor == "zstd":
        return (ZstdCodec(level=1), Crc32cCodec())
    if compressor == "blosc-lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
    return (Crc32cCodec(),)  # "none"


def encoding_for(ds: xr.Dataset, sample_chunk: int, compressor: str | None = None) -> dict[str, dict[str, Any]]:
    """Zarr encoding: chunked along ``sample`` only, compressed with ``compressor``, CRC32C-checksummed.

    Parameters
    ----------
    ds : xarray.Dataset
    sample_chunk : int
        Samples per chunk.
    compressor : {"none", "blosc-lz4", "zstd"}, optional
        See `COMPRESSORS`; default `DEFAULT_COMPRESSOR`. Reading needs no option: the codec is in each
        array's metadata, so stores written with any of them (older stores: ``"zstd"``) open as before.

    Raises
    ------
    ConfigError
        Unknown ``compressor`` (the allowed values are listed).
    """
    codecs = _codecs(DEFAULT_COMPRESSOR if compressor is None else compressor)
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        chunks = tuple(min(sample_chunk, s) if d == "sample" else s for d, s in var.sizes.items())
        if var.dtype.kind in "U" or var.dtype == object:
            enc[name] = {"chunks": chunks}
            continue
        enc[name] = {"chunks": chunks, "compressors": codecs}
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
    """The folder that will hold ``path``: created with its missing parents, refused if a file is in the way."""
    parent = path.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise StoreError(f"cannot write {path}: {blocker} is a file, not a folder")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: cannot create folder {parent} ({exc.strerror or exc})") from None
    if not parent.is_dir():
        raise StoreError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write {path}: folder {parent} is not writable")


def save(ds: xr.Dataset, path: str | os.PathLike, *, mode: str = "w-", sample_chunk: int | None = None,
         check_values: bool = True, compressor: str | None = None) -> Path:
    """Validate ``ds`` and write it as a Zarr (format 3) store at ``path``.

    The store is written into a hidden temporary folder beside ``path``, marked complete,
    and renamed into place, so a crash never leaves a half-written store at ``path`` and
    an existing store is replaced only once the new one is whole.

    Parameters
    ----------
    ds : xarray.Dataset
        A schema-v1 run (in memory or dask-backed).
    path : path-like
        Target folder (conventionally ``NAME.zarr``); missing parent folders are created.
    mode : {"w-", "w"}
        ``"w-"`` (default) refuses to overwrite an existing store; ``"w"`` replaces it.
    sample_chunk : int, optional
        Samples per chunk (default: about 32 MiB per chunk of the widest variable).
    check_values : bool
        Run the value checks of `validate` first (default True).
    compressor : {"none", "blosc-lz4", "zstd"}, optional
        Compressor of every numeric array (`COMPRESSORS`; each chunk also gets a CRC32C checksum). Default
        `DEFAULT_COMPRESSOR` (``"none"``: the fastest to read on float32 features, measured in
        docs/benchmarks.md); ``"zstd"`` is the codec of older stores.

    Returns
    -------
    pathlib.Path
        The store's path.

    Raises
    ------
    ConfigError
        Bad ``mode``, ``sample_chunk`` or ``compressor``.
    """
    check_choice(mode, "mode", ("w-", "w"))  # 'w-': refuse to overwrite; 'w': overwrite
    path = Path(path)
    validate(ds, check_values=check_values)
    _check_parent(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"cannot write store {path}: a file (not a store folder) is in the way")
    if path.exists() and mode == "w-":
        raise StoreExistsError(f"store {path} already exists; pass mode='w' to overwrite it")
    _codecs(DEFAULT_COMPRESSOR if compressor is None else compressor)  # unknown name: ConfigError before any write
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
            if "features" in out.data_vars and out["features"].dtype == np.float32:
                kind = out["features"].attrs.get(STORED_DTYPE_ATTR)
                if kind in ("float16", "bfloat16"):
                    # a decoded half-precision run (`open`): written back in the precision it was stored in, so
                    # the copy holds the same values, says the same precision and validates with the same tolerance
                    out["features"] = _encode_half(out["features"], kind)
                else:  # float32 on disk: no note on a half-precision storage applies
                    out["features"].attrs.pop(STORED_DTYPE_ATTR, None)
                    out["features"].attrs.pop(ENCODED_DTYPE_ATTR, None)
            if any(v.chunks for v in out.variables.values()):
                out = out.chunk({"sample": chunk})
            # write_empty_chunks: a chunk equal to the fill value (all-False adv_correct, all-zero labels)
            # must still be written, or `open` reports it missing.
            out.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False,
                        encoding=encoding_for(out, chunk, compressor), write_empty_chunks=True)
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


def _encode_half(var: xr.DataArray, kind: str) -> xr.Variable:
    """Decoded float32 ``features`` of a half-precision run encoded back to ``kind`` (float16, or bfloat16 bit
    patterns as uint16 with ``encoded_dtype``), block by block. Exact: a block whose values are not all exactly
    representable in ``kind`` (changed since they were decoded) raises `SchemaError` instead of being rounded."""

    def encode(block: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if kind == "float16":
            enc = block.astype(np.float16)
            back = enc.astype(np.float32)
        else:
            enc = (block.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
            back = bfloat16_bits_to_float32(enc)
        same = (back.view(np.uint32) == block.view(np.uint32)) | (np.isnan(back) & np.isnan(block))
        if not same.all():
            raise SchemaError(f"variable 'features': attribute {STORED_DTYPE_ATTR}={kind!r}, but "
                              f"{int((~same).sum())} values are not exactly representable in {kind}; drop the "
                              "attribute to write float32 features")
        return enc

    data = var.data
    dtype = np.float16 if kind == "float16" else np.uint16
    data = data.map_blocks(encode, dtype=dtype) if hasattr(data, "map_blocks") else encode(np.asarray(data))
    attrs = {**var.attrs, STORED_DTYPE_ATTR: kind}
    if kind == "bfloat16":
        attrs[ENCODED_DTYPE_ATTR] = "bfloat16"
    return xr.Variable(var.dims, data, attrs=attrs)


def _remove_stale_partials(path: Path) -> None:
    """Delete temporaries that a killed writer of ``path`` left behind (call only while holding the lock)."""
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in path.parent.glob(f".{path.name}.trash-*"):
        shutil.rmtree(stale, ignore_errors=True)


def mark_complete(path: str | os.PathLike, **info: Any) -> None:
    """Write the completion mark (root attribute ``causalgeom_complete``) of the store at ``path``.

    The mark holds ``info``, ``schema_version`` and the store's manifest (`build_manifest`: every array's shape,
    dtype, chunk grid and chunk-key encoding, every file's size and checksum), against which `check_store`
    compares the store later. Call it last, once every chunk is written.
    """
    manifest = build_manifest(path)
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    group.attrs[COMPLETE_ATTR] = {"schema_version": 1, **info, "manifest": manifest}


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of the store at ``path`` without opening its arrays."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no store at {path}")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a Zarr store folder")
    meta = path / "zarr.json"
    if os.path.lexists(meta):
        mode = os.lstat(meta).st_mode
        if stat.S_ISLNK(mode):
            raise StoreError(f"store {path}: zarr.json is a symbolic link; refusing to read it")
        if not stat.S_ISREG(mode):
            raise StoreError(f"store {path}: zarr.json is a {_kind(mode)}, not a regular file; refusing to read it")
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


# -- manifest: what a complete store holds, recorded in its completion mark ----------------------------------------
#: Version of the manifest layout in the completion mark.
MANIFEST_VERSION = 1
#: Top-level entries a store may hold that the manifest does not cover: extraction's progress folder
#: (``extraction.PROGRESS_DIR``), deleted right after the completion mark is written.
_UNTRACKED_TOP = frozenset({".progress"})
#: Largest metadata document (``zarr.json``) read; a bigger one is refused rather than parsed.
_MAX_META_BYTES = 64 * 2**20
_KIND = {stat.S_IFIFO: "FIFO (named pipe)", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
         stat.S_IFSOCK: "socket", stat.S_IFDIR: "folder"}


def _kind(mode: int) -> str:
    return _KIND.get(stat.S_IFMT(mode), "special file")


def _walk(path: Path) -> dict[str, int]:
    """Every file of the store at ``path`` (relative key -> size), found with ``lstat`` (nothing is opened).

    Raises `StoreError` for a FIFO, device or socket, and for a symbolic link that leaves the store or does not
    point to a regular file: reading any of them could block or read data from elsewhere.
    """
    root = os.path.realpath(path)
    files: dict[str, int] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel) if rel else root))
        except OSError as exc:
            raise StoreError(f"store {path}: cannot list {rel or '.'}: {exc.strerror}") from None
        for e in entries:
            key = f"{rel}/{e.name}" if rel else e.name
            if not rel and e.name in _UNTRACKED_TOP:
                continue
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(key)
                continue
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(os.path.join(root, key))
                if os.path.commonpath([root, target]) != root:
                    raise StoreError(f"store {path}: {key} is a symbolic link leaving the store (to {target}); "
                                     "refusing to read it")
                try:
                    st = os.stat(target)
                except OSError as exc:
                    raise StoreError(f"store {path}: {key} is a symbolic link that cannot be followed "
                                     f"({exc.strerror}); refusing to read it") from None
                if not stat.S_ISREG(st.st_mode):
                    raise StoreError(f"store {path}: {key} is a symbolic link to a {_kind(st.st_mode)}, not a "
                                     "regular file; refusing to read it")
            elif not stat.S_ISREG(st.st_mode):
                raise StoreError(f"store {path}: {key} is a {_kind(st.st_mode)}, not a regular file; "
                                 "refusing to read it")
            files[key] = st.st_size
    return files


def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """Bytes of ``path``, opened without blocking and checked to be a regular file (``fstat``) before reading."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is a {_kind(st.st_mode)}, not a regular file; refusing to read it")
        if limit is not None and st.st_size > limit:
            raise StoreError(f"{path} holds {st.st_size} bytes, over the {limit}-byte limit for metadata")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"{path} is not a regular file; refusing to read it")
        with os.fdopen(os.dup(fd), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def _root_digest(meta: dict[str, Any]) -> str:
    """Digest of the root metadata without the completion mark (which holds this digest)."""
    meta = json.loads(json.dumps(meta))
    (meta.get("attributes") or {}).pop(COMPLETE_ATTR, None)
    return _digest(json.dumps(meta, sort_keys=True).encode())


def _load_meta(path: Path, key: str) -> dict[str, Any]:
    try:
        meta = json.loads(_read_regular(path / key, _MAX_META_BYTES))
    except (OSError, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"store {path}: metadata {key} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"store {path}: metadata {key} is not a JSON object")
    return meta


def _array_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The parts of an array's metadata the manifest records: shape, dtype, chunk grid, chunk-key encoding."""
    grid = meta.get("chunk_grid") or {}
    return {"shape": meta.get("shape"), "data_type": meta.get("data_type"),
            "chunk_shape": (grid.get("configuration") or {}).get("chunk_shape"),
            "chunk_key_encoding": meta.get("chunk_key_encoding"), "dimension_names": meta.get("dimension_names")}


def build_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the store at ``path``: every array's metadata summary, every file's size and digest.

    Returns
    -------
    dict
        ``{"version", "hash", "root", "arrays": {name: {shape, data_type, chunk_shape, chunk_key_encoding,
        dimension_names}}, "files": {key: [size, digest]}}``. ``key`` is the file's path inside the store
        (chunks such as ``features/c/0/0`` and each array's ``zarr.json``); the root ``zarr.json``, which
        will hold the manifest, is covered by ``root``, the digest of its content without the completion mark.
        Digests are BLAKE2b-128 of the file's bytes.
    """
    path = Path(path)
    files = _walk(path)
    root_meta = _load_meta(path, "zarr.json")
    arrays = {}
    out_files = {}
    for key, size in sorted(files.items()):
        if key == "zarr.json":
            continue
        out_files[key] = [size, _file_digest(path / key)]
        if key.endswith("/zarr.json"):
            meta = _load_meta(path, key)
            if meta.get("node_type") == "array":
                arrays[key[: -len("/zarr.json")]] = _array_summary(meta)
    return {"version": MANIFEST_VERSION, "hash": "blake2b-128", "root": _root_digest(root_meta),
            "arrays": arrays, "files": out_files}


def _check_manifest_entries(path: Path, manifest: Any) -> None:
    """Raise `StoreError` naming the manifest and the entry if the manifest is not of the layout `build_manifest`
    writes (every file entry a ``[size, digest]`` pair, every array entry an object)."""
    where = f"store {path}: the manifest in its completion mark (zarr.json, attribute {COMPLETE_ATTR!r})"
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION \
            or not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("arrays"), dict):
        raise StoreError(f"{where} is malformed or of an unknown version (expected version {MANIFEST_VERSION} "
                         "with objects 'files' and 'arrays')")
    for key, rec in manifest["files"].items():
        if not (isinstance(rec, list) and len(rec) == 2 and isinstance(rec[0], int) and not isinstance(rec[0], bool)
                and rec[0] >= 0 and isinstance(rec[1], str)):
            raise StoreError(f"{where} is malformed: entry 'files'[{key!r}] is {_short(rec)}; expected a pair "
                             "[size in bytes, digest]")
    for name, rec in manifest["arrays"].items():
        if not isinstance(rec, dict):
            raise StoreError(f"{where} is malformed: entry 'arrays'[{name!r}] is {_short(rec)}; expected an object "
                             "(shape, data_type, chunk_shape, ...)")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


#: Largest number of chunk keys enumerated for one array of a store without a manifest (beyond it the array's
#: chunks are not counted; no store causalgeom writes comes near it).
_MAX_GRID_KEYS = 10_000_000
_ITEMSIZE = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4, "uint32": 4,
             "float32": 4, "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16}


def _grid_keys(name: str, meta: dict[str, Any]) -> list[str] | None:
    """Every chunk key of array ``name`` (``features/c/0/0``...) by its shape, regular chunk grid and chunk-key
    encoding, or None where the metadata does not allow enumerating them."""
    shape = meta.get("shape")
    grid = meta.get("chunk_grid") or {}
    chunk = (grid.get("configuration") or {}).get("chunk_shape") if isinstance(grid, dict) else None
    ints = (lambda xs: isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in xs))
    if not isinstance(grid, dict) or grid.get("name") != "regular" or not ints(shape) or not ints(chunk) \
            or len(shape) != len(chunk) or any(s < 0 for s in shape) or any(c <= 0 for c in chunk):
        return None
    counts = [-(-s // c) for s, c in zip(shape, chunk)]
    if int(np.prod(counts, dtype=np.float64)) > _MAX_GRID_KEYS:
        return None
    enc = meta.get("chunk_key_encoding") or {"name": "default"}
    if not isinstance(enc, dict):
        return None
    kind = enc.get("name")
    sep = (enc.get("configuration") or {}).get("separator", "/" if kind == "default" else ".")
    if kind == "default" and sep in ("/", "."):
        fmt = (lambda idx: "c" + "".join(sep + str(i) for i in idx))
    elif kind == "v2" and sep in ("/", "."):
        fmt = (lambda idx: sep.join(str(i) for i in idx) or "0")
    else:
        return None
    return [f"{name}/{fmt(idx)}" for idx in itertools.product(*(range(n) for n in counts))]


def _chunk_file_bytes(meta: dict[str, Any]) -> int | None:
    """Size of every chunk file of an uncompressed array (codecs ``bytes`` [+ ``crc32c``]), else None."""
    codecs = meta.get("codecs")
    if not isinstance(codecs, list) or not all(isinstance(c, dict) for c in codecs):
        return None
    names = [c.get("name") for c in codecs]
    if names not in (["bytes"], ["bytes", "crc32c"]) or meta.get("storage_transformers"):
        return None
    item = _ITEMSIZE.get(meta.get("data_type"))  # type: ignore[arg-type]
    chunk = ((meta.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
    if item is None or not isinstance(chunk, list):
        return None
    return int(np.prod(chunk, dtype=np.int64)) * item + (4 if "crc32c" in names else 0)


def _array_metas(path: Path, files: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Metadata of every array of the store (top-level folders whose ``zarr.json`` says ``node_type: array``)."""
    out = {}
    for key in sorted(files):
        head, sep, tail = key.partition("/")
        if sep and tail == "zarr.json":
            meta = _load_meta(path, key)
            if meta.get("node_type") == "array":
                out[head] = meta
    return out


def _check_without_manifest(path: Path, files: dict[str, int], n_samples: Any = None) -> None:
    """Check a store written before manifests by counting and sizing its chunk files against each array's shape
    and chunk grid: every chunk of the grid must be there (causalgeom writes every chunk, fill values included),
    an uncompressed chunk must have its exact size, and any other file in the store is reported as stray.

    Raises
    ------
    IncompleteStoreError
        Chunks are missing (and nothing else is wrong), or the arrays' sample count disagrees with the mark.
    StoreError
        Wrong-size chunks or stray files (each named).
    """
    problems: list[str] = []
    missing_only = True
    allowed = {"zarr.json"}
    metas = _array_metas(path, files)
    held = sorted({meta["shape"][dims.index("sample")] for meta in metas.values()
                   if isinstance(dims := meta.get("dimension_names"), list) and "sample" in dims
                   and isinstance(meta.get("shape"), list) and len(meta["shape"]) == len(dims)}, key=str)
    if isinstance(n_samples, int) and any(h != n_samples for h in held):
        # the shapes were edited (or the writer stopped): the grid they give cannot be counted against
        raise IncompleteStoreError(f"store {path} is damaged: the arrays hold {', '.join(map(str, held))} samples "
                                   f"but the completion mark records {n_samples}")
    for name, meta in metas.items():
        allowed.add(f"{name}/zarr.json")
        keys = _grid_keys(name, meta)
        if keys is None:  # not enumerable: its folder's files are accepted as they are
            allowed.update(k for k in files if k.startswith(f"{name}/"))
            continue
        allowed.update(keys)
        size = _chunk_file_bytes(meta)
        for key in keys:
            if key not in files:
                problems.append(f"variable {name!r}: chunk file {key} is missing")
            elif size is not None and files[key] != size:
                problems.append(f"variable {name!r}: chunk file {key} holds {files[key]} bytes; an uncompressed "
                                f"chunk of this array holds {size}")
                missing_only = False
    for key in sorted(set(files) - allowed):
        problems.append(f"{_owner(key)}: stray file {key} (not a chunk of any array's grid)")
        missing_only = False
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        cls = IncompleteStoreError if missing_only else StoreError
        raise cls(f"store {path} is damaged (no manifest: checked by counting and sizing its chunk files): "
                  + "; ".join(shown))


def required_chunk_keys(path: str | os.PathLike) -> frozenset[str] | None:
    """Chunk files that the store at ``path`` must hold, as keys inside the store (``label/c/0``), or None.

    A complete causalgeom store writes every chunk (fill values included), so: the chunk files its manifest lists,
    or, for a store written before manifests, every chunk of each array's grid. None for a folder without a
    completion mark (a plain Zarr store, where a missing chunk holds the fill value). Readers (`open`'s Zarr store,
    `causalgeom.dump.chunks.ChunkReader`) raise `StoreError` for a required chunk missing at read time.
    """
    sizes = _required_chunks(Path(path))
    return None if sizes is None else frozenset(sizes)


def _required_chunks(path: Path) -> dict[str, int | None] | None:
    """`required_chunk_keys` with each file's size where the store records or implies it (manifest; uncompressed
    arrays of a store without one), else None for that key."""
    mark = (_load_meta(path, "zarr.json").get("attributes") or {}).get(COMPLETE_ATTR)
    if not isinstance(mark, dict):
        return None
    manifest = mark.get("manifest")
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        return {k: (rec[0] if isinstance(rec, list) and rec and isinstance(rec[0], int) else None)
                for k, rec in manifest["files"].items() if not k.endswith("zarr.json")}
    sizes: dict[str, int | None] = {}
    for name, meta in _array_metas(path, _walk(path)).items():
        size = _chunk_file_bytes(meta)
        sizes.update(dict.fromkeys(_grid_keys(name, meta) or (), size))
    return sizes


class _CheckedLocalStore(LocalStore):
    """A read-only `zarr.storage.LocalStore` that checks each required chunk (`required_chunk_keys`) as it reads it:
    a missing file raises `StoreError` instead of reading as the fill value, and a whole-file read of another size
    than the store records (truncated or grown since it was checked) raises `StoreError` naming the file."""

    def __init__(self, root: Path | str, *, read_only: bool = True,
                 required: dict[str, int | None] | None = None):
        super().__init__(root, read_only=read_only)
        self.required: dict[str, int | None] = dict(required or {})

    def with_read_only(self, read_only: bool = False) -> "_CheckedLocalStore":
        return type(self)(self.root, read_only=read_only, required=self.required)

    def _missing(self, key: str) -> StoreError:
        return StoreError(f"store {self.root}: chunk file {key} is missing at read time, but the store records it "
                          "(deleted after the run was opened?); it is never read as the fill value")

    def _checked(self, key: str, out: Any, byte_range: Any) -> Any:
        if key not in self.required:
            return out
        if out is None:
            raise self._missing(key)
        size = self.required[key]
        if byte_range is None and size is not None and len(out) != size:
            raise StoreError(f"store {self.root}: chunk file {key} holds {len(out)} bytes at read time, but the store "
                             f"records {size} (truncated or rewritten after the run was opened?)")
        return out

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        return self._checked(key, await super().get(key, prototype, byte_range), byte_range)

    def get_sync(self, key: str, *, prototype: Any = None, byte_range: Any = None) -> Any:
        return self._checked(key, super().get_sync(key, prototype=prototype, byte_range=byte_range), byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            if key in self.required and not (self.root / key).exists():
                raise self._missing(key)
        return await super().get_partial_values(prototype, key_ranges)


def _owner(key: str) -> str:
    """The array a file belongs to, as users name it: ``'features'`` for ``features/c/0/0``."""
    head, sep, _ = key.partition("/")
    return f"variable {head!r}" if sep else "the root"


def check_store(path: str | os.PathLike, *, hashes: bool = True) -> bool:
    """Compare the store at ``path`` with the manifest in its completion mark.

    Parameters
    ----------
    path : path-like
        A complete store.
    hashes : bool
        Also read every file and compare its digest (otherwise only names, sizes, file types and metadata).

    Returns
    -------
    bool
        True if the store has a manifest (and matches it); False for a store written before manifests existed,
        whose chunk files are counted and sized against the arrays' shapes and chunk grids instead (every chunk of
        the grid present, an uncompressed chunk of its exact size, no stray file; see `_check_without_manifest`).

    Raises
    ------
    IncompleteStoreError
        Files that the manifest lists are missing (and nothing else is wrong).
    StoreError
        Extra, renamed, swapped, resized or altered files; metadata (shape, dtype, chunk grid, chunk-key
        encoding, attributes) that disagrees with the mark; a FIFO, device or outside symbolic link; a malformed
        manifest (naming the entry).
    """
    path = Path(path)
    files = _walk(path)
    attrs = read_attrs(path)
    mark = attrs.get(COMPLETE_ATTR)
    if not isinstance(mark, dict):
        raise IncompleteStoreError(f"store {path} was not completely written (no completion mark)")
    manifest = mark.get("manifest")
    if manifest is None:
        _check_without_manifest(path, files, mark.get("n_samples"))
        return False
    _check_manifest_entries(path, manifest)
    problems: list[str] = []
    missing_only = True
    meta_reported: set[str] = set()
    expected: dict[str, list] = manifest["files"]
    root_meta = _load_meta(path, "zarr.json")
    if _root_digest(root_meta) != manifest.get("root"):
        problems.append("the root metadata (zarr.json: attributes) differs from the one recorded in the "
                        "completion mark")
        missing_only = False
    for name, rec in manifest["arrays"].items():
        key = f"{name}/zarr.json"
        if key not in files or not isinstance(rec, dict):
            continue  # reported as missing below
        try:
            now = _array_summary(_load_meta(path, key))
        except StoreError as exc:
            problems.append(str(exc))
            missing_only = False
            continue
        for field, value in now.items():
            if value != rec.get(field):
                problems.append(f"variable {name!r}: metadata {field} is {value!r} but the completion mark records "
                                f"{rec.get(field)!r}")
                missing_only = False
                meta_reported.add(key)
    missing = sorted(set(expected) - set(files))
    extra = sorted(set(files) - set(expected) - {"zarr.json"})
    by_digest: dict[str, str] = {}
    for key, rec in expected.items():
        by_digest.setdefault(rec[1], key)
    extra_digest = {}
    if hashes and missing:
        extra_digest = {k: _file_digest(path / k) for k in extra}
    for key in missing:
        moved = [k for k, d in extra_digest.items() if d == expected[key][1]]
        problems.append(f"{_owner(key)}: chunk file {key} is missing" +
                        (f" (renamed to {moved[0]}?)" if moved else ""))
    for key in extra:
        problems.append(f"{_owner(key)}: extra file {key} that the completion mark does not list")
        missing_only = False
    for key in sorted(set(expected) & set(files)):
        size, digest = expected[key]
        now = _file_digest(path / key) if hashes else None
        if files[key] == size and (now is None or now == digest) or key in meta_reported:
            continue
        if key.endswith("zarr.json"):
            problems.append(f"{_owner(key)}: metadata file {key} was edited (it differs from the completion mark)")
            missing_only = False
            continue
        what = (f"holds {files[key]} bytes, the completion mark records {size}" if files[key] != size
                else "its checksum differs from the completion mark")
        other = by_digest.get(now) if now is not None else None
        problems.append(f"{_owner(key)}: file {key} is corrupted ({what}"
                        f"{f'; it holds the content of {other} (swapped or copied)' if other else ''})")
        missing_only = False
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        cls = IncompleteStoreError if missing_only else StoreError
        raise cls(f"store {path} is damaged: " + "; ".join(shown))
    return True


def open(path: str | os.PathLike, *, verify: bool | str = "auto", check_values: bool = False) -> xr.Dataset:  # noqa: A001
    """Open a run stored by `save` (or by `causalgeom.extract`) lazily, backed by dask.

    Parameters
    ----------
    path : path-like
        The store folder.
    verify : bool or "auto"
        Read every file once and compare it with the checksums of the manifest in the completion mark
        (`check_store`; for a store written before manifests existed, decode every chunk to check its CRC32C
        checksum). ``"auto"``: only for stores under 256 MiB, once per process. Missing, extra and resized
        files, metadata that disagrees with the mark, FIFOs, devices and symbolic links leaving the store are
        detected on every open (this reads no data).
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
    if verify == "auto":
        verify = _verify_key(path) not in _VERIFIED and _store_bytes(path) <= AUTO_VERIFY_BYTES
    # file types, names, sizes and metadata before zarr reads anything (a FIFO would block it)
    manifest = check_store(path, hashes=bool(verify))
    # every chunk the store records must still be there when it is read (a missing one is an error, never the fill
    # value), however long after this open that is
    store = _CheckedLocalStore(path, read_only=True, required=_required_chunks(path))
    try:
        ds = xr.open_zarr(store, consolidated=False, zarr_format=3, chunks={})
    except Exception as exc:  # noqa: BLE001
        raise StoreError(f"cannot open {path} as an xarray Dataset: {exc}") from None
    ds.encoding["source"] = os.path.abspath(path)  # as xarray records a path (the direct chunk reader looks here)
    mark = ds.attrs.pop(COMPLETE_ATTR, None)
    try:
        ds = decode_features(ds)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
    if not manifest:  # chunk files were counted and sized by check_store; the sample count is checked here
        problems = []
        n = mark.get("n_samples") if isinstance(mark, dict) else None
        if n is not None and "sample" in ds.sizes and ds.sizes["sample"] != n:
            problems.append(f"the arrays hold {ds.sizes['sample']} samples but the completion mark records {n}")
        if problems:
            raise IncompleteStoreError(f"store {path} is damaged: " + "; ".join(problems))
    if verify:
        if not manifest:
            _verify_loaded(ds, path)
        _VERIFIED.add(_verify_key(path))
    try:
        validate(ds, check_values=check_values)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
    return ds


def decode_features(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with half-precision ``features`` decoded lazily to float32 (the same Dataset if they are float32).

    float16 is widened per dask block (exact); bfloat16, stored as uint16 bit patterns with the variable attribute
    ``encoded_dtype = "bfloat16"``, is decoded per block by `causalgeom.dump.schema.bfloat16_bits_to_float32`
    (``(bits.astype(uint32) << 16).view(float32)``, exact). The decoded variable drops ``encoded_dtype`` and carries
    ``stored_dtype`` (``"float16"`` / ``"bfloat16"``), so every analysis sees float32 and can tell what was stored.

    Parameters
    ----------
    ds : xarray.Dataset
        A run as read from its store (``features`` of shape (sample, feature)).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    SchemaError
        ``features`` of another dtype, or an ``encoded_dtype`` that disagrees with it.
    """
    if "features" not in ds.data_vars:
        return ds
    var = ds["features"]
    kind = features_storage(var)
    if np.dtype(var.dtype) == np.float32:
        return ds
    data, _ = _decoded_features(ds)
    attrs = {k: v for k, v in var.attrs.items() if k != ENCODED_DTYPE_ATTR}
    attrs[STORED_DTYPE_ATTR] = kind
    encoding = {k: v for k, v in var.encoding.items() if k not in ("dtype", "fill_value", "_FillValue")}
    new = xr.Variable(var.dims, data, attrs=attrs, encoding=encoding)
    out = ds.copy()
    out["features"] = new
    return out


def stored_features_dtype(path: str | os.PathLike) -> str:
    """Precision of the ``features`` stored at ``path`` (``"float32"``, ``"float16"``, ``"bfloat16"``), from its
    metadata alone (reads no chunk).

    Raises
    ------
    StoreError
        No readable ``features`` metadata.
    """
    path = Path(path)
    meta = _load_meta(path, "features/zarr.json")
    dtype = meta.get("data_type")
    attrs = meta.get("attributes") or {}
    if attrs.get(ENCODED_DTYPE_ATTR) == "bfloat16" and dtype == "uint16":
        return "bfloat16"
    if dtype in ("float16", "float32"):
        return str(dtype)
    raise StoreError(f"store {path}: 'features' has data type {dtype!r}; expected float32, float16 or "
                     "bfloat16 bit patterns (uint16 with encoded_dtype='bfloat16')")


#: Stores whose checksums this process has verified, keyed by path and the mtime of their metadata
#: (a rewritten store has new metadata), so that reopening a run does not re-read it.
_VERIFIED: set[tuple[str, int]] = set()


def _verify_key(path: Path) -> tuple[str, int]:
    return str(path.resolve()), (path / "zarr.json").stat().st_mtime_ns


def _store_bytes(path: Path) -> int:
    return sum(_walk(path).values())


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
    """Open ``path`` and read every file once, checking it against the manifest (or, for a store without one,
    every chunk's checksum) and checking all values; return the Dataset. See `has_manifest` to tell the two apart."""
    return open(path, verify=True, check_values=True)


def has_manifest(path: str | os.PathLike) -> bool:
    """True if the completion mark of the store at ``path`` holds a manifest (stores written before it did not)."""
    mark = read_attrs(path).get(COMPLETE_ATTR)
    return isinstance(mark, dict) and "manifest" in mark
