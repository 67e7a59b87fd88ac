"""Scale-out: extraction with ``torchrun`` (one shard per rank), analysis and training on a Dask cluster.

Three engines, one module:

* **Dask (analysis).** Every causalgeom metric builds a dask graph over the Zarr chunks of a dump
  (one task per chunk); inside a :func:`client` block those graphs run on the cluster's workers
  (a ``LocalCluster`` by default, or a scheduler address), so features are never collected on
  one machine. Tasks of a worker that dies are re-run elsewhere by the scheduler (up to Dask's
  ``distributed.scheduler.allowed-failures``); if a task keeps killing workers, :func:`compute`
  raises :class:`WorkerLostError` naming the task instead of a raw Dask traceback. Analyses only
  read stores, so a failed computation never damages one. :func:`mediate_study` runs the cluster
  bootstrap of a whole study from per-run sufficient statistics computed as Dask tasks from the
  Zarr chunks (only ``O(columns²)`` numbers per run leave the workers).
* **torch.distributed (extraction).** :func:`extract` / :func:`extract_study` read ``RANK``,
  ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``) and fill this rank's chunk-aligned shard
  of every store (``causalgeom.extract(..., shard=(rank, world))``); the last shard to finish marks
  a store complete, and a failed rank's shard is redone by re-running that rank alone.
* **Dask (training).** :func:`run_grid` submits one :func:`causalgeom.pipeline.train.train_run` per task.

Which of the two a whole-study analysis uses when the user does not say is decided in one place,
`causalgeom.scale.choice`: :func:`choose_engine` (a given or active client, else :func:`choose_path`: the study's size
against :data:`DASK_THRESHOLD_ROWS`, measured by ``benchmarks/bench_scaling.py``). The command line,
``cg.causal.mediate(study)`` (the facade hands `choose_engine` in to the causal layer) and the report use it;
:data:`DASK_ENGINE` answers a `causalgeom.causal.MediationSpec` out of core.

See ``docs/scaling_out.md`` for what runs where, ``docs/scaling.md`` for the measurements.
"""

from __future__ import annotations

from ..metrics.blocks import compute
from .._util.dask import (CONNECT_TIMEOUT, SCHEDULER_ENV, WORKER_MALLOC_ENV, active_client, client, current_client,
                          local_cluster_options, worker_loss_translated)
from ..errors import WorkerLostError
from .choice import (DASK_ENGINE, DASK_THRESHOLD_ROWS, IN_PROCESS_BYTES_PER_ROW, PATHS, THRESHOLD_ENV, DaskEngine,
                     PathChoice, choose_engine, choose_path, dask_threshold, local_address, memory_rows)
from .dask import SAMPLE_MOMENT_COLUMNS, RunMoments, mediate_moments, mediate_study, run_moments
from .grid import run_grid
from .torchrun import RankInfo, barrier, extract, extract_study, rank_device, torchrun_env

__all__ = [
    "client", "compute", "current_client", "active_client", "worker_loss_translated", "WorkerLostError",
    "SCHEDULER_ENV", "CONNECT_TIMEOUT", "RankInfo", "torchrun_env", "rank_device", "barrier", "extract", "extract_study",
    "run_grid",
    "SAMPLE_MOMENT_COLUMNS", "RunMoments", "run_moments", "mediate_study", "mediate_moments",
    "choose_engine", "DaskEngine", "DASK_ENGINE", "PATHS", "local_address",
    "choose_path", "PathChoice", "dask_threshold", "DASK_THRESHOLD_ROWS", "IN_PROCESS_BYTES_PER_ROW", "memory_rows",
    "THRESHOLD_ENV", "WORKER_MALLOC_ENV",
    "local_cluster_options",
]
