"""Scale-out options shared by several commands: ``--scheduler ADDRESS`` (Dask) and ``extract --distributed``.

``--scheduler`` runs the command inside :func:`causalgeom.distributed.client`: every dask graph the command
builds (metrics, the study table, interventions, checksum verification) runs on that cluster, and ``train``
dispatches its runs to it (one run per task). ``extract --distributed`` takes the shard from the environment
``torchrun`` sets (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), puts each rank on ``cuda:LOCAL_RANK`` when the
device is ``cuda``, and waits for all ranks at the end. Both only wrap the command; they compute nothing.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["SCHEDULER_COMMANDS", "add_options", "call"]

#: Commands that take ``--scheduler``.
SCHEDULER_COMMANDS = ("metrics", "mediate", "intervene", "report", "validate", "train")

_SCHEDULER_HELP = ("run on a Dask cluster: a scheduler address (tcp://host:8786), or 'local' / 'local:N' for a "
                   "LocalCluster with N workers (default: $CAUSALGEOM_SCHEDULER, else in this process)")


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
    if not address:
        return args.func(args)
    with distributed.client(address), distributed.worker_loss_translated(f"causalgeom {args.command}"):
        return args.func(args)
