"""Read the chunks of an uncompressed run store straight from their files (the fast path of the fused pass).

A store written with ``compressor="none"`` (the default, `causalgeom.dump.store.DEFAULT_COMPRESSOR`) holds each
chunk of a sample array as one file: the chunk's little-endian bytes followed by their CRC32C (codecs
``bytes`` + ``crc32c``). Zarr's generic read path allocates a fresh buffer for the file, another for the
decoded chunk and copies between them; on a 2-core machine that costs about 60 ms of CPU per 32 MiB chunk,
more than the whole fused computation on it. `ChunkReader` reads the file once into a buffer (``readinto``;
a buffer of its pool that nothing refers to any more, else a new one), checks that exactly the file's size
arrived and that the size did not change meanwhile, checks the CRC32C over those bytes and returns a view of
them: the same bytes as Zarr's read, verified the same way, with one copy instead of three.

Why not ``mmap`` (the reader of issue 18, no copy at all): a mapped file that another program truncates while it
is mapped ends the process with SIGBUS when a missing page is touched, with no message and nothing to catch. A
read into memory can only come up short, which is a `StoreError` naming the chunk; docs/benchmarks.md
("Issue 22") records what the copy costs and that the fused pass stays faster than Zarr's own read with it.

It takes only what it can read exactly: a local Zarr v3 array with a regular chunk grid split along its first
axis only, the default ``/`` chunk-key encoding, codecs exactly ``bytes`` (little endian) + ``crc32c``, no
storage transformers, and a fixed-size numeric data type. `reader_for` returns None for anything else
(compressed stores, shards, an array that is not the store's own untouched data), and callers fall back to
Zarr through dask. `direct_array` wraps a reader as a dask array (one task per chunk); analyses take it through
`causalgeom.metrics.blocks.run_array` (the fused pass, the class means).

Which chunks must exist is decided by the store, not by what the folder holds when the reader is made: in a
causalgeom store (one with a completion mark) every chunk the manifest lists - or, in a store written before
manifests, every chunk of the grid - is required, and a missing file is a `StoreError` naming it, never the fill
value (a file deleted after `causalgeom.open`, or a Dask worker that does not see the folder). Only in a plain
Zarr array without a completion mark does a missing chunk hold the fill value, as in Zarr.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import google_crc32c  # zarr's own CRC32C implementation (a zarr dependency)
import numpy as np

from ..errors import StoreError
from .schema import ENCODED_DTYPE_ATTR, STORED_DTYPE_ATTR, bfloat16_bits_to_float32
from .store import required_chunk_keys

#: Name prefix of the dask layer `causalgeom.dump.store.decode_features` adds for each half-precision kind, and
#: the dtype of the chunks on disk.
_DECODE_LAYERS = {"float16": "astype-", "bfloat16": "bfloat16_bits_to_float32-"}
_STORED_AS = {"float16": "<f2", "bfloat16": "<u2"}

__all__ = ["ChunkReader", "reader_for", "direct_array"]

_DTYPES = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "int64": "<i8", "int32": "<i4", "int16": "<i2",
           "int8": "i1", "uint8": "u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "bool": "?"}
_PLAIN_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
#: Buffers a reader keeps for reuse (chunks in flight at once: a few per Dask thread).
_POOL = 6


def _fill(value: Any, dtype: np.dtype) -> Any:
    if isinstance(value, str):  # "NaN", "Infinity", "-Infinity" (Zarr v3 JSON for special floats)
        return {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value)
    return dtype.type(value)


class ChunkReader:
    """Reader of the chunks of one uncompressed Zarr v3 array split along its first axis.

    Parameters
    ----------
    path : path
        The array's folder (``<store>/<name>``), holding ``zarr.json``.

    Raises
    ------
    ValueError
        If the array is not of the plain kind this reader handles (`reader_for` turns that into None).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta = json.loads((self.path / "zarr.json").read_text())
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise ValueError("not a Zarr v3 array")
        if meta.get("storage_transformers") or meta.get("codecs") != _PLAIN_CODECS:
            raise ValueError(f"codecs {meta.get('codecs')!r} are not bytes + crc32c")
        enc = meta.get("chunk_key_encoding") or {}
        if enc.get("name") != "default" or (enc.get("configuration") or {}).get("separator", "/") != "/":
            raise ValueError(f"chunk key encoding {enc!r}")
        grid = meta.get("chunk_grid") or {}
        if grid.get("name") != "regular":
            raise ValueError(f"chunk grid {grid!r}")
        dtype_name = meta.get("data_type")
        if dtype_name not in _DTYPES:
            raise ValueError(f"data type {dtype_name!r}")
        self.shape = tuple(int(s) for s in meta["shape"])
        self.chunk_shape = tuple(int(s) for s in grid["configuration"]["chunk_shape"])
        if not self.shape or len(self.chunk_shape) != len(self.shape) or any(
                c < s for c, s in zip(self.chunk_shape[1:], self.shape[1:])):
            raise ValueError("not chunked along the first axis only")
        self.dtype = np.dtype(_DTYPES[dtype_name])
        self.fill_value = _fill(meta.get("fill_value"), self.dtype)
        self.rows = self.chunk_shape[0]
        self.nbytes = int(np.prod(self.chunk_shape)) * self.dtype.itemsize  # edge chunks are stored whole
        self.n_chunks = -(-self.shape[0] // self.rows) if self.shape[0] else 0
        #: Chunks whose files must exist (`causalgeom.dump.store.required_chunk_keys`: those the store's manifest
        #: lists, every chunk of a store written before manifests; in a plain Zarr array without a completion mark,
        #: those present now). A missing one is an error, never the fill value.
        self.required = self._required()
        #: Applied by `read_decoded` (bfloat16 bit patterns -> float32); None: the stored values as they are.
        self.decode: Any = None
        self._pool: list[np.ndarray] = []
        self._pool_max = _POOL
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # picklable for Dask workers: the buffers stay behind
        state = self.__dict__.copy()
        del state["_pool"], state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # On a Dask worker (a reader arrives pickled) no pool: buffers kept beyond their task are memory the worker
        # cannot spill, and under a memory limit they can hold it above the pause threshold, where it runs nothing.
        self._pool, self._pool_max, self._lock = [], 0, threading.Lock()

    def _buffer(self, size: int) -> np.ndarray:
        """A buffer of ``size`` bytes: one of the pool's that nothing refers to any more (no chunk returned from it
        is alive: every view of a numpy array holds a reference to it), else a new one (kept in the pool up to
        `_POOL` buffers). Reusing spares the page faults of a fresh 32 MiB buffer per chunk."""
        with self._lock:
            for buf in self._pool:
                # references: the pool's list, this loop variable, getrefcount's argument - and nothing else
                if buf.size == size and sys.getrefcount(buf) == 3:
                    return buf
            buf = np.empty(size, dtype=np.uint8)
            if len(self._pool) < self._pool_max:
                self._pool.append(buf)
            return buf

    def _required(self) -> frozenset[int]:
        try:
            keys = required_chunk_keys(self.path.parent)
        except StoreError:
            keys = None  # no readable root metadata: not a causalgeom store
        if keys is None:
            return frozenset(i for i in range(self.n_chunks) if (self.path / self._key(i)).exists())
        name = self.path.name
        return frozenset(i for i in range(self.n_chunks) if f"{name}/{self._key(i)}" in keys)

    def _key(self, i: int) -> str:
        return "/".join(["c", str(i)] + ["0"] * (len(self.shape) - 1))

    def chunk_rows(self, i: int) -> int:
        """Rows of chunk ``i`` inside the array (the last chunk may be partial)."""
        return min(self.rows, self.shape[0] - i * self.rows)

    def _read_file(self, fd: int, size: int, key: str) -> np.ndarray:
        """The whole file read into a fresh buffer (never a mapping: see the module docstring on SIGBUS).

        Raises `StoreError` if fewer than ``size`` bytes arrive (truncated while being read) or the file's size
        changed during the read.
        """
        buf = self._buffer(size)
        view = memoryview(buf)
        got = 0
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as fh:
            while got < size:
                k = fh.readinto(view[got:])
                if not k:
                    break
                got += k
        after = os.fstat(fd).st_size
        if got != size or after != size:
            raise StoreError(f"{self.path.name}: chunk file {key} of {self.path.parent} changed while being read "
                             f"({got} of {size} bytes read; the file now holds {after}): another program is "
                             "writing or truncating the store")
        return buf

    def read(self, i: int) -> np.ndarray:
        """Chunk ``i`` (shape ``(chunk_rows(i), *shape[1:])``), checksum verified.

        The result is a read-only view of a buffer read from the file at this call (never mapped, so a file changed
        by another program cannot crash the process); the buffer is reused only once nothing refers to the result
        any more. The CRC32C is checked on exactly the bytes returned.

        Raises
        ------
        StoreError
            If a required chunk file is missing (`required`), has the wrong size, comes up short while being read
            or its CRC32C does not match (named with the array and chunk).
        """
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} of {self.n_chunks}")
        key = self._key(i)
        file = self.path / key
        rows = self.chunk_rows(i)
        try:
            # O_NONBLOCK: a FIFO put in place of the chunk must not block the open (refused below)
            fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            if i in self.required:
                raise StoreError(f"{self.path.name}: chunk file {key} of {self.path.parent} is missing, but the store "
                                 "records it (deleted after the run was opened, or this process - a Dask worker? - "
                                 "does not see that folder); it is never read as the fill value") from None
            return np.full((rows,) + self.shape[1:], self.fill_value, dtype=self.dtype)
        except OSError as e:  # a symlink (O_NOFOLLOW), a folder, no permission
            raise StoreError(f"{self.path.name}: chunk file {key} of {self.path.parent} cannot be read as a "
                             f"regular file ({e.strerror or e})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{self.path.name}: chunk file {key} of {self.path.parent} is not a regular file; "
                                 "refusing to read it")
            size = st.st_size
            if size != self.nbytes + 4:
                raise StoreError(f"{self.path.name}: chunk file {key} of {self.path.parent} has {size} bytes; "
                                 f"expected {self.nbytes + 4} (chunk + CRC32C): the store is damaged "
                                 f"(causalgeom verify {self.path.parent} lists every problem)")
            raw = self._read_file(fd, size, key)
        finally:
            os.close(fd)
        data = raw[:self.nbytes]
        data.flags.writeable = False
        if google_crc32c.value(data) != int(raw[self.nbytes:].view("<u4")[0]):
            raise StoreError(f"{self.path.name}: chunk {key} of {self.path.parent} does not match its CRC32C "
                             "checksum: the store is damaged (causalgeom verify lists every problem)")
        return data.view(self.dtype).reshape(self.chunk_shape)[:rows]

    def read_decoded(self, i: int) -> np.ndarray:
        """`read`, then `decode` where set: the values the opened variable holds (float16 stays float16, which
        widens exactly to float32 and float64 alike)."""
        out = self.read(i)
        return out if self.decode is None else self.decode(out)


def reader_for(ds: Any, name: str) -> ChunkReader | None:
    """A `ChunkReader` for variable ``name`` of a run opened with `causalgeom.open`, or None.

    None unless ``ds[name]`` is still exactly the lazy array of the store on disk (``ds.encoding["source"]``):
    dask-backed, its graph only xarray's open of that variable (plus, for half-precision ``features``, the one
    decode layer of `causalgeom.dump.store.decode_features`; the reader then decodes bfloat16 in
    `ChunkReader.read_decoded`), of the stored shape, with one dask chunk per stored chunk along ``sample`` and the
    other axes whole, and no other decoding (no ``encoded_dtype``, scale or offset attributes). A variable that
    was selected, reordered, replaced or computed on reads through dask and Zarr as before.
    """
    source = getattr(ds, "encoding", {}).get("source")
    if not source or name not in ds.variables:
        return None
    var = ds[name]
    data = var.data
    graph = getattr(data, "dask", None)
    layers = getattr(graph, "layers", None)
    if layers is None:
        return None
    stored = var.attrs.get(STORED_DTYPE_ATTR)
    top = getattr(data, "name", "")
    if stored is None:  # the store's own array: xarray's open layer and its source
        base = top
        if set(layers) != {base, f"original-{base}"}:
            return None
    else:  # half-precision features: exactly one decode layer of `decode_features` on top of the open
        prefix = _DECODE_LAYERS.get(stored)
        deps = getattr(graph, "dependencies", {}).get(top, set())
        base = next(iter(deps), "") if len(deps) == 1 else ""
        if prefix is None or not top.startswith(prefix) or set(layers) != {top, base, f"original-{base}"}:
            return None
    if not base.startswith(f"open_dataset-{name}-"):
        return None
    if any(k in var.attrs or k in var.encoding for k in (ENCODED_DTYPE_ATTR, "scale_factor", "add_offset")):
        return None
    try:
        reader = ChunkReader(Path(source) / name)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    want_dtype = data.dtype if stored is None else np.dtype(_STORED_AS[stored])
    if reader.shape != tuple(data.shape) or reader.dtype != want_dtype:
        return None
    want = tuple(reader.chunk_rows(i) for i in range(reader.n_chunks))
    if data.chunks[0] != want or any(len(c) != 1 for c in data.chunks[1:]):
        return None
    if stored == "bfloat16":
        reader.decode = bfloat16_bits_to_float32
    return reader


def direct_array(ds: Any, name: str) -> Any:
    """``ds[name]``'s data as a dask array with one task per stored chunk that reads the chunk file directly
    (`ChunkReader.read_decoded`), or None where `reader_for` gives no reader (then read through Zarr).

    The same values as ``ds[name].data`` chunk for chunk (the same bytes; float16 ``features`` stay float16 here,
    which every block function widens exactly). Chunks are read-only buffers read from the files at compute time.
    """
    reader = reader_for(ds, name)
    if reader is None or reader.n_chunks == 0:
        return None
    import dask
    import dask.array as da

    read = dask.delayed(reader.read_decoded, pure=False)
    dtype = np.dtype(np.float32) if reader.decode is not None else reader.dtype
    parts = [da.from_delayed(read(i), shape=(reader.chunk_rows(i),) + reader.shape[1:], dtype=dtype)
             for i in range(reader.n_chunks)]
    return da.concatenate(parts, axis=0)
