"""Atomic file writes and inter-process file locks (the one copy of each rule).

`atomic_write` writes into a hidden temporary file beside the target, fsyncs it and `os.replace`-s it into
place, so a reader sees the old content or the new, never a torn file. `file_lock` is an advisory
``flock(2)`` lock on a ``.NAME.lock`` file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import StoreError, StoreLockedError

__all__ = ["atomic_write", "file_lock", "LOCK_HELD_ERRNOS"]

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
