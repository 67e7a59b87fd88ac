"""``causalgeom train CONFIG``: train a regularizer grid from a pipelines/ TOML file (calls `causalgeom.pipeline.train`)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "train", help="train a regularizer grid (regularizers x strengths x seeds) from a TOML config",
        description="Train every run of a grid config into OUT/runs/RUN_ID/ (checkpoint.pt, config.json, "
                    "curves.csv, DONE). Finished runs are skipped and interrupted runs resume, so re-running the "
                    "same command continues where it stopped.",
        epilog="example: causalgeom train pipelines/digits_default.toml --out out")
    p.add_argument("config", help="grid TOML file (e.g. pipelines/digits_default.toml)")
    p.add_argument("--out", default="out", help="output folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--data-root", default=None, help="dataset folder, replacing the config's data_root")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto, replacing the config's device")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse the config, call `causalgeom.pipeline.train.run_grid`, print one line per run."""
    from ..pipeline import train

    grid = train.load_grid(args.config)
    dirs = train.run_grid(grid, args.out, progress=not args.no_progress,
                          overrides={"data_root": args.data_root, "device": args.device})
    done = sum(train.run_status(d) == "done" for d in dirs)
    for d in dirs:
        print(f"{train.run_status(d):8s} {d}")
    print(f"{done}/{len(dirs)} runs done in {args.out}", file=sys.stderr)
    return 0 if done == len(dirs) else 1
