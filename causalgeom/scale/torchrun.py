"""torchrun: one shard of every store per rank (`extract`, `extract_study`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence


from ..errors import ConfigError, IncompleteStoreError

if TYPE_CHECKING:  # annotations only: this module imports torch inside the functions that need it
    import torch

log = logging.getLogger(__name__)


# ============================================================================================
# torch.distributed: one shard of every store per rank
# ============================================================================================
class RankInfo(NamedTuple):
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 outside one)."""

    rank: int
    world: int
    local_rank: int
    launched: bool  #: True when a launcher set MASTER_ADDR (a process group can be formed for a barrier)


def torchrun_env(environ: Mapping[str, str] | None = None) -> RankInfo:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``) as set by ``torchrun``.

    Without them this is rank 0 of 1. Setting ``RANK`` and ``WORLD_SIZE`` by hand (no ``MASTER_ADDR``)
    runs one rank alone — how a failed rank's shard is redone.

    Raises
    ------
    ConfigError
        Non-integer values, or not ``0 <= RANK < WORLD_SIZE``.
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK: expected integers, got RANK={env.get('RANK')!r}, "
                          f"WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK/WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got RANK={rank}, "
                          f"WORLD_SIZE={world}, LOCAL_RANK={local}")
    return RankInfo(rank, world, local, bool(env.get("MASTER_ADDR")) and world > 1)


def rank_device(device: str | torch.device = "auto", info: RankInfo | None = None) -> str:
    """The device of this rank: ``"cuda"`` / ``"auto"`` (with CUDA) -> ``cuda:LOCAL_RANK``; others unchanged."""
    import torch

    from .._util.torch import device as _device

    info = info or torchrun_env()
    text = str(device)
    if text == "auto":
        text = _device("auto").type
    if text == "cuda":
        if torch.cuda.is_available() and info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"device: LOCAL_RANK={info.local_rank} but this host has "
                              f"{torch.cuda.device_count()} CUDA device(s); start at most that many processes per "
                              "node (torchrun --nproc-per-node)")
        return f"cuda:{info.local_rank}"
    return text


def barrier(info: RankInfo | None = None) -> None:
    """Wait for every rank of a ``torchrun`` job (a gloo barrier; a no-op when not launched by one).

    The process group is created for the barrier (and destroyed after) unless one already exists.
    """
    info = info or torchrun_env()
    if not info.launched:
        return
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world)
        created = True
    try:
        dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def _shard_kwargs(kwargs: dict[str, Any], info: RankInfo) -> dict[str, Any]:
    if kwargs.get("shard") is not None:
        raise ConfigError("shard: set by the rank (RANK/WORLD_SIZE); do not pass shard= to the distributed "
                          "extraction")
    if kwargs.get("mode", "w-") != "w-" and info.world > 1:
        raise ConfigError("mode: a sharded extraction must use mode='w-' (one rank would delete the others' work); "
                          "delete the stores first to start over")
    out = dict(kwargs)
    if info.world > 1:
        out["shard"] = (info.rank, info.world)
    return out


def _check_complete(paths: Sequence[Path], info: RankInfo) -> None:
    from ..dump.store import is_complete

    missing = [str(p) for p in paths if not is_complete(p)]
    if missing:
        raise IncompleteStoreError(
            f"after every rank finished, store(s) {missing} are not complete; re-run the same command (each rank "
            "resumes its unfinished chunks), or redo one rank alone with RANK=r WORLD_SIZE="
            f"{info.world} (or `causalgeom extract ... --shard r/{info.world}`)")


def extract(model: torch.nn.Module, data: Any, out: str | os.PathLike, *, device: str | torch.device = "auto",
            wait: bool | None = None, **kwargs: Any) -> Path:
    """This rank's share of ``causalgeom.extract(model, data, out, ...)`` in a ``torchrun`` job.

    Every rank calls this with the same arguments; rank ``r`` of ``w`` fills the ``r``-th contiguous
    range of sample chunks (``shard=(r, w)``), and the last rank to finish marks the store complete.
    Outside ``torchrun`` this is a plain single-process extraction.

    Parameters
    ----------
    model, data, out
        As in :func:`causalgeom.pipeline.extract.extract`.
    device : str
        ``"auto"`` (``cuda:LOCAL_RANK`` with CUDA, else CPU), ``"cuda"`` (-> ``cuda:LOCAL_RANK``), or explicit.
    wait : bool, optional
        Wait for every rank (gloo barrier) and check that the store is complete. Default: when launched
        by ``torchrun``.
    **kwargs
        Passed to :func:`causalgeom.pipeline.extract.extract` (attacks, eps, batch_size, amp, attrs, generator, ...);
        not ``shard`` (set from the rank).

    Returns
    -------
    pathlib.Path
        The store (complete once every rank has finished).

    Raises
    ------
    IncompleteStoreError
        With ``wait``: every rank finished but the store is not complete.
    """
    from ..pipeline.extract import extract as _extract

    info = torchrun_env()
    path = _extract(model, data, out, device=rank_device(device, info), **_shard_kwargs(kwargs, info))
    if wait if wait is not None else info.launched:
        barrier(info)
        _check_complete([path], info)
    return path


def extract_study(runs_dir: str | os.PathLike, study_dir: str | os.PathLike | None = None, *,
                  device: str | torch.device = "auto", wait: bool | None = None, **kwargs: Any) -> list[Path]:
    """This rank's share of ``causalgeom.pipeline.extract.extract_runs`` (every finished training run) in a ``torchrun`` job.

    Every rank walks the same runs in the same order and fills its shard of each run's store;
    ``torchrun --nproc-per-node N`` (or ``--nnodes M`` over several hosts sharing the study folder)
    thus writes one study. Parameters as in :func:`extract` and
    :func:`causalgeom.pipeline.extract.extract_runs`.

    Returns
    -------
    list of pathlib.Path
        The run stores (complete once every rank has finished).
    """
    from ..pipeline.extract import extract_runs

    info = torchrun_env()
    paths = extract_runs(runs_dir, study_dir, device=rank_device(device, info), **_shard_kwargs(kwargs, info))
    if wait if wait is not None else info.launched:
        barrier(info)
        _check_complete(paths, info)
    return paths
