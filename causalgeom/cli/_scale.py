"""Scale-out options shared by several commands: ``--scheduler ADDRESS`` (Dask) and ``extract --distributed``.

``--scheduler`` runs the command inside :func:`causalgeom.scale.client`: every dask graph the command
builds (metrics, the study table, interventions, checksum verification) runs on that cluster, and ``train``
dispatches its runs to it (one run per task). ``extract --distributed`` takes the shard from the environment
``torchrun`` sets (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), puts each rank on ``cuda:LOCAL_RANK`` when the
device is ``cuda``, and waits for all ranks at the end. Both only wrap the command; they compute nothing.

Without ``--scheduler`` (and without ``$CAUSALGEOM_SCHEDULER``), the commands that analyse a whole study
(:data:`AUTO_COMMANDS`) choose by themselves with `causalgeom.scale.choose_engine` (the rule `causalgeom.causal.mediate` on a study uses): in this process below the
study size measured by ``benchmarks/bench_scaling.py``, on a LocalCluster (one single-threaded worker per core)
at or above it; one line says which and why (on stderr when it starts a cluster, else in the ``causalgeom.cli``
log at INFO level, so that error output stays one line). ``--scheduler in-process`` forces this process,
``--scheduler local`` / an address forces Dask.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["SCHEDULER_COMMANDS", "AUTO_COMMANDS", "IN_PROCESS", "add_options", "call", "auto_choice"]

#: Commands that take ``--scheduler``.
SCHEDULER_COMMANDS = ("metrics", "mediate", "intervene", "report", "validate", "train")

#: Commands that analyse a whole study and choose their path by its size when ``--scheduler`` is not given,
#: with the name of their study argument.
AUTO_COMMANDS = {"metrics": "path", "mediate": "study", "report": "study"}

#: ``--scheduler`` values that force this process.
IN_PROCESS = ("in-process", "none")

_SCHEDULER_HELP = ("run on a Dask cluster: a scheduler address (tcp://host:8786), or 'local' / 'local:N' for a "
                   "LocalCluster with N workers, or 'in-process' (default: $CAUSALGEOM_SCHEDULER, else metrics, "
                   "mediate and report on a study choose by its size, see docs/scaling.md; others in this process)")


def add_options(sub: argparse._SubParsersAction) -> None:
    """Add ``--scheduler`` to the analysis commands and ``--distributed`` to ``extract`` (those registered)."""
    for name in SCHEDULER_COMMANDS:
        p = sub.choices.get(name)
        if p is not None:
            p.add_argument("--scheduler", metavar="ADDRESS", default=None, help=_SCHEDULER_HELP)
    p = sub.choices.get("extract")
    if p is not None:
        p.add_argument("--distributed", action="store_true",
                       help="one rank of a torchrun job: fill the shard RANK/WORLD_SIZE of every store "
                            "(--device cuda -> cuda:LOCAL_RANK), e.g. torchrun --nproc-per-node 4 -m causalgeom "
                            "extract OUT --distributed --device cuda")


def call(args: argparse.Namespace) -> Any:
    """Run ``args.func(args)``, on a Dask cluster (``--scheduler``) or as one torchrun rank (``--distributed``)."""
    from .. import scale as distributed

    if getattr(args, "distributed", False):
        from ..errors import ConfigError

        info = distributed.torchrun_env()
        if args.shard:
            raise ConfigError("--distributed takes the shard from RANK/WORLD_SIZE (set by torchrun); do not also "
                              "pass --shard (use --shard alone to redo one rank's share)")
        if info.world > 1:
            if args.overwrite:
                raise ConfigError("--overwrite cannot be combined with --distributed: one rank would delete the "
                                  "others' work; delete the stores first")
            args.shard = f"{info.rank}/{info.world}"
        args.device = distributed.rank_device(args.device, info)
        status = args.func(args)
        distributed.barrier(info)
        return status
    address = getattr(args, "scheduler", None) or (os.environ.get(distributed.SCHEDULER_ENV)
                                                   if hasattr(args, "scheduler") else None)
    if address and address.strip().lower() in IN_PROCESS:
        args.path_choice = "in-process"
        return args.func(args)
    if not address:
        choice = auto_choice(args)
        if choice is None or choice.path == "in-process":
            return args.func(args)
        address = f"local:{max(1, os.cpu_count() or 1)}"
    else:
        args.path_choice = "dask"
    with distributed.client(address), \
            distributed.worker_loss_translated(f"causalgeom {args.command}"):
        return args.func(args)


def auto_choice(args: argparse.Namespace) -> Any:
    """`causalgeom.scale.choose_engine` for a command of :data:`AUTO_COMMANDS` whose argument is a study folder
    (printed on stderr, stored as ``args.path_choice``); None for other commands and for single runs / tables."""
    import logging
    import sys
    from pathlib import Path

    from .. import scale

    attr = AUTO_COMMANDS.get(getattr(args, "command", ""))
    target = getattr(args, attr, None) if attr else None
    if target is None or not Path(target).is_dir() or (Path(target) / "zarr.json").exists():  # a run store
        return None
    from ..dump.study import open_study

    choice = scale.choose_engine(open_study(target))
    args.path_choice = choice.path
    logging.getLogger("causalgeom.cli").info("%s: %s", args.command, choice.reason)
    if choice.path == "dask":  # starting a cluster is announced; staying in this process is the quiet default
        print(f"causalgeom {args.command}: {choice.reason}", file=sys.stderr)
    return choice
