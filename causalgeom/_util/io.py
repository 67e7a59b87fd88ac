"""Atomic file writes and inter-process file locks (the one copy of each rule).

`atomic_write` writes into a hidden temporary file beside the target, fsyncs it and `os.replace`-s it into
place, so a reader sees the old content or the new, never a torn file. `file_lock` is an advisory
``flock(2)`` lock on a ``.NAME.lock`` file. `load_weights_file` reads a state dict from a ``.pt``/``.pth``/``.bin``
or ``.safetensors`` file as tensors only (never unpickling code), checking declared sizes before allocating.
`read_toml` reads a configuration file (zoo, grid, query) with a size cap, UTF-8 decoding and a nesting limit,
every failure raised as the caller's causalgeom error naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError, StoreError, StoreLockedError

__all__ = ["atomic_write", "file_lock", "LOCK_HELD_ERRNOS", "read_safetensors_header", "load_weights_file",
           "check_state_dict", "MAX_SAFETENSORS_HEADER", "SAFETENSORS_DTYPES", "STATE_DICT_KEYS", "read_toml",
           "read_toml_text", "parse_toml", "MAX_TOML_BYTES", "MAX_TOML_DEPTH", "format_bytes"]

#: errno values that mean "another process holds the lock" for a non-blocking lock. ``flock(2)`` reports
#: EWOULDBLOCK (== EAGAIN on Linux); Python emulates ``fcntl.flock`` with ``fcntl(F_SETLK)`` where ``flock``
#: is missing, and ``F_SETLK`` reports a conflicting lock as EACCES or EAGAIN (POSIX, fcntl(2)); NFS, where the
#: kernel maps ``flock`` to byte-range locks, behaves the same. Every other errno (ENOLCK, EBADF, EINVAL, ...)
#: is a real failure, not contention, and is raised as `StoreError`.
LOCK_HELD_ERRNOS = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


def _tmp_path(path: Path) -> Path:
    # pid + thread id: two processes or threads writing the same target never share a temporary file.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def atomic_write(path: str | os.PathLike, payload: bytes | str | Callable[[BinaryIO], None], *,
                 fsync: bool = True) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file beside it, fsync, ``os.replace``).

    Parameters
    ----------
    path : path-like
        Target file; its folder must exist.
    payload : bytes, str or callable
        The content (``str`` is encoded as UTF-8), or a function that writes to the open binary file
        (e.g. ``lambda fh: torch.save(obj, fh)``).
    fsync : bool
        Flush the temporary file to disk before the rename (durability across a power loss).

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    ``os.replace`` is atomic on POSIX when source and target are on the same file system, which holds
    because the temporary file is created in the target's folder. On any error the temporary file is removed.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            if callable(payload):
                payload(fh)
            else:
                fh.write(payload.encode() if isinstance(payload, str) else payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike, *, blocking: bool = False, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the ``with`` block.

    Parameters
    ----------
    lock_path : path-like
        The lock file. It is opened with ``O_NOFOLLOW``: a symbolic link planted at that name is refused
        (`StoreError`) instead of creating or locking the file it points to.
    blocking : bool
        Wait for the lock (True) or fail at once if another process holds it (False).
    what : str, optional
        Start of the `StoreLockedError` message, e.g. ``"store x.zarr is being written by another process"``.

    Raises
    ------
    StoreLockedError
        ``blocking=False`` and another process holds the lock (errno in `LOCK_HELD_ERRNOS`).
    StoreError
        The lock file cannot be opened (missing folder, permissions, a symbolic link) or locked for another
        reason.
    """
    lock_path = Path(lock_path)
    flags = os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"lock file {lock_path} is a symbolic link; refusing to follow it") from None
        raise StoreError(f"cannot create lock file {lock_path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if not blocking and exc.errno in LOCK_HELD_ERRNOS:
                head = what or f"{lock_path} is held by another process"
                raise StoreLockedError(f"{head} (lock {lock_path} is held)") from None
            raise StoreError(f"cannot lock {lock_path}: {exc.strerror}") from None
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# configuration files (TOML): size, encoding, syntax and nesting checked, one error type per caller
# --------------------------------------------------------------------------------------------
#: Largest configuration file read (zoo, grid and query files are a few KiB).
MAX_TOML_BYTES = 4 * 2**20

#: Deepest nesting of tables and arrays accepted (the top-level table is level 1; the files need at most 4).
MAX_TOML_DEPTH = 32


def read_toml_text(path: str | os.PathLike, *, error: type[Exception] = ConfigError, what: str = "TOML file",
                   max_bytes: int = MAX_TOML_BYTES) -> str:
    """The text of a configuration file: a regular file (a FIFO is refused without blocking) of at most
    ``max_bytes`` bytes, decoded as UTF-8.

    Parameters
    ----------
    path : path-like
        The file.
    error : exception class
        Raised for every problem, with a message ``"cannot read {what} {path}: ..."``.
    what : str
        What the file is, for the message (``"zoo file"``, ``"grid config"``, ``"query file"``).
    max_bytes : int
        Size cap.

    Returns
    -------
    str
    """
    import stat

    path = Path(path)
    head = f"cannot read {what} {path}"
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{head}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise error(f"{head}: not a regular file")
            if st.st_size > max_bytes:
                raise error(f"{head}: {st.st_size} bytes, over the {format_bytes(max_bytes)} limit for a {what}")
            raw = fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{head}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:  # grew since fstat
        raise error(f"{head}: over the {format_bytes(max_bytes)} limit for a {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{head}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 4]!r})") from None


def _nesting_depth(obj: Any, stop: int) -> int:
    """Depth of nested dicts/lists (a scalar is 0, ``{}`` is 1), found without recursion; stops past ``stop``."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_toml(text: str, *, where: str, error: type[Exception] = ConfigError, what: str = "TOML file"
               ) -> dict[str, Any]:
    """Parse TOML text with :mod:`tomllib`; syntax errors and nesting beyond `MAX_TOML_DEPTH` (arrays, inline
    tables, dotted keys or table headers; also what would exhaust tomllib's recursion) raise ``error`` naming
    ``what`` and ``where``.
    """
    import tomllib

    label = f"{what} {where}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{label}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays / inline tables recursively
        raise error(f"{label}: arrays or inline tables nested too deeply to parse (at most {MAX_TOML_DEPTH} "
                    "levels are read)") from None
    depth = _nesting_depth(data, MAX_TOML_DEPTH)
    if depth > MAX_TOML_DEPTH:
        raise error(f"{label}: arrays or inline tables nested too deeply (more than {MAX_TOML_DEPTH} levels of "
                    "tables and arrays)")
    return data


def read_toml(path: str | os.PathLike, *, error: type[Exception] = ConfigError, what: str = "TOML file",
              max_bytes: int = MAX_TOML_BYTES) -> dict[str, Any]:
    """Read a TOML configuration file: :func:`read_toml_text` then :func:`parse_toml`.

    Parameters
    ----------
    path : path-like
        The file.
    error : exception class
        The causalgeom error raised (file named) for an unreadable, oversized, non-UTF-8, invalid or too deeply
        nested file, e.g. `ConfigError` for zoo and grid files, `QueryError` for query files.
    what : str
        What the file is, for the message.
    max_bytes : int
        Size cap (`MAX_TOML_BYTES`).

    Returns
    -------
    dict
        The parsed table.
    """
    text = read_toml_text(path, error=error, what=what, max_bytes=max_bytes)
    return parse_toml(text, where=str(path), error=error, what=what)


# --------------------------------------------------------------------------------------------
# weights files: tensors only, sizes checked before anything is allocated
# --------------------------------------------------------------------------------------------
#: Largest safetensors JSON header read (the format itself caps it at 100 MB).
MAX_SAFETENSORS_HEADER = 100 * 2**20

#: safetensors dtype names and their item sizes; any other name is refused.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
                      "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}

#: Item sizes of the storage classes of the legacy (pre-1.6, non-zip) torch format; unknown names count 16.
_LEGACY_ITEMSIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
                    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}

#: Keys under which training checkpoints nest their state dict (the first one holding a mapping is used).
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema")


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit below it (``"512 B"``, ``"1.50 GiB"``), for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def read_safetensors_header(path: str | os.PathLike, *, limit: int, error: type[Exception] = StoreError,
                            what: str = "weights file", dtypes: Mapping[str, int] = SAFETENSORS_DTYPES,
                            dtype_note: str = "", check: Callable[[str, tuple[int, ...], str, int], int] | None = None,
                            limit_hint: str = "") -> dict[str, dict]:
    """The tensor entries of a safetensors file's JSON header, checked against the file before any data is read.

    Checks: the 8-byte header length fits the file and `MAX_SAFETENSORS_HEADER`; the header is a JSON object of
    ``{dtype: str, shape: [int >= 0...], data_offsets: [start, end]}`` entries; each dtype is one of ``dtypes``;
    each declared size (``prod(shape) * itemsize``, Python integers) equals ``end - start`` and lies inside the
    file; the declared sizes together stay within ``limit``. The one reader of safetensors headers: weights files
    (:func:`load_weights_file`) and imported dumps (`causalgeom.dump.adapters`) both use it.

    Parameters
    ----------
    path : path-like
        The file.
    limit : int
        Most bytes the tensors may take once read.
    error : exception class
        Raised (with the file named) for every problem.
    what : str
        Start of every message, before the path (``""``: the path alone).
    dtypes : mapping of str to int
        Accepted dtype names and their item sizes (default `SAFETENSORS_DTYPES`).
    dtype_note : str
        Appended after the dtype of a refused dtype (e.g. why it is refused).
    check : callable, optional
        ``check(key, shape, dtype, itemsize) -> nbytes``, called for each well-typed entry before the sign of the
        shape and the offsets are checked; it may raise its own message (``error``) and returns the size in bytes.
    limit_hint : str
        Appended to the message of a total over ``limit`` (e.g. the option that raises it).

    Returns
    -------
    dict
        Tensor name -> header entry (``__metadata__`` left out).
    """
    import json
    import struct

    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise error(f"{label}: not a safetensors file ({size} bytes, shorter than the 8-byte header "
                            "length)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise error(f"{label}: safetensors header length {n} is larger than the file ({size} bytes) or the "
                            "100 MiB cap allows")
            raw = fh.read(n)
    except OSError as exc:
        raise error(f"{label}: cannot read it ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise error(f"{label}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise error(f"{label}: safetensors header is a JSON {type(header).__name__}; expected an object "
                    "mapping tensor names to {dtype, shape, data_offsets}")
    data_size = size - 8 - n
    total = 0
    out: dict[str, dict] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        ok = isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list) \
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in [*info["shape"], *info["data_offsets"]]) \
            and all(v >= 0 for v in info["data_offsets"])
        entry_error = (f"{label}: tensor {key!r}: header entry must be {{dtype: str, shape: [int >= 0...], "
                       f"data_offsets: [start, end]}}, got {str(info)[:120]}")
        if not ok:
            raise error(entry_error)
        if info["dtype"] not in dtypes:
            raise error(f"{label}: tensor {key!r} has dtype {info['dtype'][:40]}{dtype_note}; expected one of "
                        f"{sorted(dtypes)}")
        shape = tuple(info["shape"])
        if check is not None:
            check(key, shape, info["dtype"], dtypes[info["dtype"]])
        if any(side < 0 for side in shape):
            raise error(entry_error)
        nbytes = dtypes[info["dtype"]]
        for side in shape:
            nbytes *= side
        start, end = info["data_offsets"]
        if start > end or end > data_size:
            raise error(f"{label}: tensor {key!r} declares bytes {start}..{end}, past the end of the file's "
                        f"{data_size} data bytes")
        if end - start != nbytes:
            shown = f"{nbytes} bytes" if nbytes < 2**20 else f"{nbytes} bytes, {format_bytes(nbytes)}"
            raise error(f"{label}: tensor {key!r} declares shape {shape} of {info['dtype']} ({shown}) but its "
                        f"offsets hold {end - start} bytes")
        total += nbytes
        out[key] = info
    if total > limit:
        raise error(f"{label}: its tensors together take {format_bytes(total)}, over the limit of "
                    f"{format_bytes(limit)}{limit_hint}")
    return out


class _Opaque:
    """Stand-in for every object of a legacy torch pickle during the size scan: accepts anything, runs nothing."""

    def __init__(self, *args: object, name: str = "", **kwargs: object) -> None:
        self.name = name

    def __call__(self, *args: object, **kwargs: object) -> "_Opaque":
        return _Opaque()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:  # noqa: D102
        pass

    def extend(self, values: object) -> None:  # noqa: D102
        pass


def _legacy_declared_bytes(path: Path, error: type[Exception]) -> int:
    """Bytes the storages of a legacy (non-zip) torch file declare, read without building any object: every global
    is replaced by `_Opaque`, so nothing named in the file is imported or called. ``torch.load`` allocates these
    sizes before it reads the data, hence the check."""
    import pickle

    class Scan(pickle.Unpickler):
        declared: dict[str, int] = {}

        def find_class(self, module: str, name: str) -> Any:  # noqa: D102
            return _Opaque(name=name)

        def persistent_load(self, pid: Any) -> Any:  # noqa: D102
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                numel = pid[4]
                if not isinstance(numel, int) or numel < 0:
                    raise pickle.UnpicklingError(f"storage size {numel!r}")
                itemsize = _LEGACY_ITEMSIZE.get(getattr(pid[1], "name", ""), 16)
                self.declared[str(pid[2])] = numel * itemsize
            return _Opaque()

    try:
        with open(path, "rb") as fh:
            scan = Scan(fh)
            scan.declared = {}
            for _ in range(4):  # magic number, protocol version, system info, the object
                scan.load()
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways; nothing in it ran
        raise error(f"weights file {path}: a pickle that is not a torch.save file ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); nothing in it was run. Save a plain state dict with torch.save or use "
                    "safetensors") from None
    return sum(scan.declared.values())


def load_weights_file(path: str | os.PathLike, *, limit: int, error: type[Exception] = StoreError,
                      unsafe_error: type[Exception] | None = None) -> dict[str, Any]:
    """Read a state dict (name -> ``torch.Tensor``) from a weights file without unpickling anything but tensors.

    The format is told by the file's first bytes, not its name (``.safetensors`` files are always read as
    safetensors): a torch zip file (``torch.save``) is read into memory with ``torch.load(weights_only=True,
    mmap=False)`` after the sizes of its data records are checked against ``limit`` (each record is allocated at its size in the zip
    directory, which miniz checks against the file, and torch checks it against the tensor's declared size; no
    mapping, so a file truncated while it is read is a read error, never SIGBUS); a legacy (pre-1.6) torch file
    with ``torch.load(weights_only=True)`` after its declared storage sizes are checked against the file size; a
    safetensors file after :func:`read_safetensors_header`. Checkpoints nesting the state dict under one of
    `STATE_DICT_KEYS` are unwrapped and a ``module.`` prefix (DataParallel) is dropped.

    Every tensor is then checked before anything is copied: strided layout, not quantized or meta; the bytes its
    shape takes (``numel * itemsize``) at most its storage's bytes (an expanded, stride-0 or overlapping view that
    would materialise more than the file holds is refused); all tensors together within ``limit``.

    Parameters
    ----------
    path : path-like
        ``.pt``, ``.pth``, ``.bin`` or ``.safetensors`` file.
    limit : int
        Most bytes the tensors may take once materialised.
    error : exception class
        Raised for a malformed file; the message names the file (and the first offending keys).
    unsafe_error : exception class, optional
        Raised for a pickle that would need more than tensors (code, arbitrary objects); default ``error``.

    Returns
    -------
    dict of str to torch.Tensor
        CPU tensors in memory (none maps the file, so none changes or faults when the file does).
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    unsafe_error = unsafe_error or error
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            magic = fh.read(9)
    except OSError as exc:
        raise error(f"weights file {path}: cannot read it ({exc.strerror or exc})") from None
    if size == 0:
        raise error(f"weights file {path}: the file is empty (0 bytes)")
    is_zip = magic[:4] == b"PK\x03\x04"
    is_legacy = magic[:1] == b"\x80" and not is_zip
    if path.suffix == ".safetensors" or not (is_zip or is_legacy):
        if path.suffix != ".safetensors" and magic[8:9] not in (b"{", b"["):
            raise error(f"weights file {path}: neither a torch file (torch.save: zip or legacy pickle) nor a "
                        f"safetensors file (first bytes {magic[:8]!r})")
        read_safetensors_header(path, limit=limit, error=error)
        from safetensors.torch import load as load_bytes

        # read into memory, not safetensors.torch.load_file: its tensors stay mapped views of the file, which
        # end the process with SIGBUS when the file is truncated before the model has copied them
        try:
            with open(path, "rb") as fh:
                raw = fh.read(size + 1)
        except OSError as exc:
            raise error(f"weights file {path}: cannot read it ({exc.strerror or exc})") from None
        if len(raw) != size:
            raise error(f"weights file {path}: its size changed while it was read ({size} bytes, then {len(raw)})")
        try:
            state: Any = load_bytes(raw)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise error(f"weights file {path}: cannot read safetensors ({str(exc)[:200]})") from None
        del raw
    else:
        if is_legacy:
            declared = _legacy_declared_bytes(path, error)
            if declared > size:
                raise error(f"weights file {path}: its storages declare {format_bytes(declared)}, more than the file's "
                            f"{format_bytes(size)}")
        else:  # each data record is read into memory at its size in the zip directory (miniz bounds it by the file)
            try:
                with zipfile.ZipFile(path) as zf:
                    stored = sum(info.file_size for info in zf.infolist() if "/data/" in info.filename)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise error(f"weights file {path}: cannot be read as a torch file ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None
            if stored > limit:
                raise error(f"weights file {path}: its tensor data take {format_bytes(stored)}, over the limit of "
                            f"{format_bytes(limit)}")
        try:
            # never mmap=True: a mapped file truncated by another program while the model copies it ends the
            # process with SIGBUS; read into memory, a short file is a read error (RuntimeError) caught below
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except pickle.UnpicklingError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            # torch's message opens with advice to retry with weights_only=False; keep only the refused global
            first = next((ln for ln in lines if "unsupported" in ln.lower() or "WeightsUnpickler" in ln),
                         lines[1] if len(lines) > 1 else "")
            raise unsafe_error(f"weights file {path}: refused, reading it would unpickle objects other than tensors "
                               f"(torch.load(weights_only=True) said: {first[:300]}); nothing in it was run. Save "
                               "a plain state dict (torch.save(model.state_dict(), ...)) or use safetensors") from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, TypeError, KeyError, IndexError,
                AttributeError, MemoryError, OverflowError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise error(f"weights file {path}: cannot be read as a torch file ({type(exc).__name__}: "
                        f"{first[:200]})") from None
    return check_state_dict(state, path, limit=limit, error=error)


def check_state_dict(state: Any, path: str | os.PathLike, *, limit: int, error: type[Exception] = StoreError
                     ) -> dict[str, Any]:
    """``state`` as a flat ``{str: torch.Tensor}`` dict after the checks of :func:`load_weights_file`."""
    import torch

    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise error(f"weights file {path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    if not state:
        raise error(f"weights file {path}: the state dict is empty")
    bad_keys = [k for k in state if not isinstance(k, str)]
    if bad_keys:
        raise error(f"weights file {path}: state-dict keys must be strings, found {len(bad_keys)} others, e.g. "
                    f"{[repr(k)[:40] for k in bad_keys[:5]]}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        kinds = [f"{k!r}: {type(state[k]).__name__}" for k in not_tensors[:5]]
        raise error(f"weights file {path}: state-dict entries must be tensors, {len(not_tensors)} are not: "
                    f"{', '.join(kinds)}")
    total = 0
    for key, t in state.items():
        if t.layout != torch.strided or t.is_quantized or t.is_meta or t.is_nested:
            raise error(f"weights file {path}: tensor {key!r} is not a dense tensor of numbers ({t.layout}"
                        f"{', quantized' if t.is_quantized else ''}{', meta' if t.is_meta else ''})")
        itemsize = t.element_size()
        need = itemsize
        for side in t.shape:
            need *= int(side)
        held = t.untyped_storage().nbytes()
        if need:
            extent = int(t.storage_offset()) + 1 + sum((int(s) - 1) * int(st) for s, st in zip(t.shape, t.stride()))
            if extent * itemsize > held or need > held:
                raise error(f"weights file {path}: tensor {key!r} declares shape {tuple(t.shape)} (stride "
                            f"{tuple(t.stride())}), {format_bytes(need)} once materialised, but its storage holds "
                            f"{format_bytes(held)}; expanded (stride-0) or overlapping views are refused")
        total += need
    if total > limit:
        raise error(f"weights file {path}: its tensors together take {format_bytes(total)}, over the limit of "
                    f"{format_bytes(limit)}")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
