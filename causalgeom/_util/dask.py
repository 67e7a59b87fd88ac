"""The Dask cluster of a computation: `client` blocks, the active client, worker-loss translation.

The one place that knows how a causalgeom computation finds its cluster. It sits in `_util` (below every
layer) because two layers need it: the metrics (`causalgeom.metrics.blocks.compute` runs every graph on the active
client) and training grids (`causalgeom.pipeline.train.run_grid` dispatches runs to it). Public names are re-exported by
`causalgeom.scale`. Imports dask only inside functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
from typing import Any, Iterator

from ..errors import CausalGeomError, ConfigError, WorkerLostError

__all__ = ["SCHEDULER_ENV", "CONNECT_TIMEOUT", "CONNECT_DEADLINE", "WorkerLostError", "client", "current_client",
           "active_client", "worker_loss_translated", "compute_arrays", "is_dask_client", "WORKER_MALLOC_ENV",
           "local_cluster_options"]

#: Environment variable read when no ``scheduler`` is given: a scheduler address (``tcp://host:8786``) or
#: ``local`` / ``local:N`` (a LocalCluster with N workers).
SCHEDULER_ENV = "CAUSALGEOM_SCHEDULER"

#: How long :func:`client` tries to open a TCP connection to a scheduler address (retrying) before giving up.
CONNECT_TIMEOUT = "20s"

#: Overall deadline of :func:`client`'s connection to a scheduler address: TCP connection, Dask handshake and
#: registration together. A server that accepts and never answers fails after this long (Dask's own handshake
#: read has no timeout).
CONNECT_DEADLINE = "30s"

#: The client of the innermost :func:`client` block (training grids dispatch to it).
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("causalgeom_dask_client", default=None)

#: Dask exception class names that mean "a worker died (and the task could not be finished elsewhere)".
_WORKER_LOSS = ("KilledWorker", "CommClosedError", "FutureCancelledError", "WorkerLost")


# ============================================================================================
# the cluster
# ============================================================================================
def _local_workers(address: str) -> int | None:
    """``"local"`` -> default worker count, ``"local:N"`` -> N; None for a real address."""
    if address == "local":
        return 0
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = -1
        if n < 1:
            raise ConfigError(f"scheduler: expected 'local', 'local:N' with N >= 1, or an address such as "
                              f"tcp://host:8786, got {address!r}")
        return n
    return None


#: glibc malloc settings of the LocalCluster workers the automatic choice starts. Dask's nanny sets
#: ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker, which (as any explicit malloc tuning does) turns off glibc's
#: dynamic mmap threshold: every block above 128 KiB is then a fresh mmap, page-faulted on first touch and
#: unmapped on free. The fused pass allocates tens of MiB per chunk, and measured 33 ms per 16,384 x 512 chunk that
#: way vs 23 ms in a plain process (2-core machine, docs/scaling.md). Blocks up to 256 MiB from the heap and
#: 128 MiB of top pad give back the plain process's speed; Dask's trim threshold is kept (a worker still returns
#: memory above that pad).
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 256 * 2**20, "MALLOC_TOP_PAD_": 128 * 2**20}


def local_cluster_options() -> Any:
    """Context that sets :data:`WORKER_MALLOC_ENV` in Dask's ``distributed.nanny.pre-spawn-environ`` for the
    LocalCluster workers started inside it (one BLAS thread each stays Dask's default ``OMP_NUM_THREADS=1``).
    `client` enters it for every LocalCluster it starts; a value the user configured for one of these keys wins."""
    import dask

    return dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC_ENV.items()
                            if dask.config.get(f"distributed.nanny.pre-spawn-environ.{k}", None) is None})


@contextlib.contextmanager
def client(scheduler: Any = None, *, n_workers: int = 2, threads_per_worker: int = 1,
           memory_limit: str | int | None = "auto", processes: bool = True) -> Iterator[Any]:
    """Use a Dask cluster for every causalgeom computation inside the ``with`` block.

    Parameters
    ----------
    scheduler : str or dask.distributed.Client, optional
        Address of a running scheduler (``tcp://host:8786``), ``"local"`` / ``"local:N"`` (start a
        ``LocalCluster``, with N workers), or an existing Client (used as is, not closed). Default:
        the ``CAUSALGEOM_SCHEDULER`` environment variable, else a new ``LocalCluster``.
    n_workers, threads_per_worker, memory_limit, processes
        Passed to ``dask.distributed.LocalCluster`` when one is started (``memory_limit`` per worker;
        None or ``"auto"``: the machine's memory divided among the workers). A worker that imports torch
        (interventions, training) holds about 0.8 GiB before it computes anything; Dask pauses a worker at
        80% of its limit, so do not go below about 2 GiB for those.

    Notes
    -----
    Worker processes are started with ``spawn``: a script that opens a LocalCluster at import time must
    guard it with ``if __name__ == "__main__":``.

    Yields
    ------
    dask.distributed.Client
        The default client inside the block: ``dask.compute`` (and so every causalgeom metric, the
        study table, interventions, :func:`causalgeom.scale.mediate_study`) runs on it, and
        :func:`causalgeom.pipeline.train.run_grid` dispatches its runs to it. Dask's worker-loss errors
        (``KilledWorker``, ...) leaving the block become :class:`WorkerLostError`.

    Raises
    ------
    CausalGeomError
        The scheduler cannot be reached.
    """
    from dask.distributed import Client, LocalCluster

    if scheduler is not None and not isinstance(scheduler, str):
        if not hasattr(scheduler, "submit") or not hasattr(scheduler, "scheduler_info"):
            raise ConfigError(f"scheduler: expected an address, 'local[:N]' or a dask.distributed.Client, got "
                              f"{type(scheduler).__name__}")
        with scheduler.as_current(), _activated(scheduler):
            yield scheduler
        return
    address = scheduler or os.environ.get(SCHEDULER_ENV) or "local"
    local = _local_workers(address)
    if local is None:
        c = _connect(address)
        try:
            with _activated(c):
                yield c
        finally:
            c.close()
        return
    kw: dict[str, Any] = dict(n_workers=local or n_workers, threads_per_worker=threads_per_worker,
                              processes=processes, dashboard_address=None)
    if memory_limit not in (None, "auto"):
        kw["memory_limit"] = memory_limit
    with local_cluster_options(), LocalCluster(**kw) as cluster, Client(cluster) as c, _activated(c):
        yield c


def _seconds(value: str | float) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="s"))


def _connect(address: str) -> Any:
    """A ``Client`` of the scheduler at ``address``, connected within :data:`CONNECT_DEADLINE` or an error.

    Raises
    ------
    CausalGeomError
        Nothing accepts connections there (after :data:`CONNECT_TIMEOUT`), or the server accepted but did not
        finish the Dask handshake within :data:`CONNECT_DEADLINE`.
    ConfigError
        The server answered something that is not the Dask protocol (an HTTP server such as the dashboard).
    """
    from dask.distributed import Client

    deadline = _seconds(CONNECT_DEADLINE)
    connect = min(_seconds(CONNECT_TIMEOUT), deadline)
    where = (f"scheduler {address!r} (the scheduler= argument, --scheduler or ${SCHEDULER_ENV})")

    class _Bounded(Client):  # Client.start runs the connection through distributed.utils.sync: bound it there
        def start(self, **kwargs: Any) -> None:
            try:
                super().start(callback_timeout=deadline, **kwargs)
            except BaseException:
                with contextlib.suppress(BaseException):
                    self.close(timeout=2)
                raise

    try:
        return _Bounded(address, timeout=connect, set_as_default=True)
    except MemoryError:  # a length prefix read from a non-Dask answer ("HTTP/1.0" as 3.07 EiB)
        raise ConfigError(f"{where}: the server answered, but not in the Dask protocol (its answer read as an "
                          "impossible message length); is this an HTTP address such as the dashboard? a scheduler "
                          "listens on tcp://HOST:8786 by default") from None
    except (TimeoutError, asyncio.TimeoutError) as exc:
        if "Timed out trying to connect" in str(exc):
            raise CausalGeomError(f"cannot reach the Dask {where}: {exc}") from None
        raise CausalGeomError(f"cannot reach the Dask {where}: the server accepted the connection but did not "
                              f"complete the Dask handshake within {deadline:g} s (CONNECT_DEADLINE); is it a "
                              "Dask scheduler?") from None
    except OSError as exc:
        raise CausalGeomError(f"cannot reach the Dask {where}: {exc}") from None
    except (ValueError, TypeError, KeyError, AssertionError) as exc:  # a handshake that is not Dask's
        raise ConfigError(f"{where}: the server answered, but not as a Dask scheduler ({type(exc).__name__}: "
                          f"{exc}); a scheduler listens on tcp://HOST:8786 by default") from None


@contextlib.contextmanager
def _activated(c: Any) -> Iterator[None]:
    """Make ``c`` the client of `active_client` inside the block; lost workers leave it as WorkerLostError."""
    token = _ACTIVE.set(c)
    try:
        with worker_loss_translated():
            yield
    finally:
        _ACTIVE.reset(token)


def current_client() -> Any | None:
    """The default ``dask.distributed.Client``, or None (then dask's local threaded scheduler is used)."""
    try:
        from dask.distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def active_client() -> Any | None:
    """The client of the innermost :func:`client` block, or None outside one."""
    c = _ACTIVE.get()
    if c is not None and getattr(c, "status", "running") in ("closed", "closing"):
        return None
    return c


def _is_worker_loss(exc: BaseException) -> bool:
    return type(exc).__name__ in _WORKER_LOSS


@contextlib.contextmanager
def worker_loss_translated(what: str = "the computation") -> Iterator[None]:
    """Turn Dask's worker-loss exceptions raised inside the block into :class:`WorkerLostError`."""
    try:
        yield
    except WorkerLostError:
        raise
    except Exception as exc:  # noqa: BLE001 - only Dask's worker-loss errors are translated
        if _is_worker_loss(exc):
            raise WorkerLostError(f"a Dask worker died during {what} and the task could not be finished elsewhere "
                                  f"({type(exc).__name__}: {exc}); nothing was written — re-run the command "
                                  "(raise distributed.scheduler.allowed-failures, or give workers more memory "
                                  "if they were killed for using too much)") from None
        raise


def compute_arrays(*objs: Any) -> tuple[Any, ...]:
    """``dask.compute(*objs)``, on the active cluster if any, turning a lost worker into :class:`WorkerLostError`.

    The raw step under `causalgeom.metrics.blocks.compute` (which also rebuilds xarray objects around the results);
    call that one.
    """
    import dask

    with worker_loss_translated():
        return tuple(dask.compute(*objs))


def is_dask_client(obj: Any) -> bool:
    """True for a ``dask.distributed.Client`` (duck-typed: ``submit`` and ``scheduler_info``)."""
    return hasattr(obj, "submit") and hasattr(obj, "scheduler_info")
