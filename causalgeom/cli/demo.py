"""``causalgeom demo``: the whole analysis on the embedded digits dataset."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, extract, analyse and report on the embedded digits dataset",
                       description="Train the demo grid (ce, label smoothing 0.1, mixup 1.0, cutmix 1.0 × 5 "
                                   "seeds, 40 epochs) on digits, extract dumps with PGD outcomes, run metrics, mediation "
                                   "and interventions, and write the report. Re-running resumes.",
                       epilog="example: causalgeom demo --out demo_out")
    p.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    p.add_argument("--preset", help="training grid TOML (default: the packaged digits preset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, preset=args.preset, progress=not args.no_progress)
    return 0
