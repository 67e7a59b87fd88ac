"""``causalgeom plan``: seeds per arm at which a study design can decide at a stated level."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]

_EPILOG = """examples:
  causalgeom plan demo_out/study --outcome ece --treated label_smoothing     from a pilot study
  causalgeom plan --effect 0.02 --sd 0.01                                   from a given effect and SD
  causalgeom plan demo_out/study --outcome ece --treated mixup --paired     seed pairs (sign-flip test)

The advice is the larger of: the seeds per arm at which the exact randomization test's floor falls to alpha,
and those at which the t test (df 2n - 2) reaches the power. Definitions: docs/methods_causal.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="seeds per arm a question needs (design advisor)",
                       description="From a pilot study (or a given effect and between-run SD), the number of "
                                   "seeds per arm at which the exact test's floor and the expected interval allow "
                                   "a decision at a stated level.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", help="pilot study folder (optional with --effect and --sd)")
    p.add_argument("--outcome", help="run-level outcome column of the pilot (e.g. ece)")
    p.add_argument("--treatment", default="regularizer", help="run attribute defining the arms (default regularizer)")
    p.add_argument("--control", default=None, help="control level (default ce)")
    p.add_argument("--treated", default=None, help="treated level (default: the only other level)")
    p.add_argument("--effect", type=float, help="effect (treated - control) to plan for; overrides the pilot's")
    p.add_argument("--sd", type=float, help="between-run standard deviation; overrides the pilot's")
    p.add_argument("--alpha", type=float, default=0.05, help="two-sided level (default 0.05)")
    p.add_argument("--power", type=float, default=0.8, help="wanted power (default 0.8)")
    p.add_argument("--paired", action="store_true", help="runs matched by seed across arms (sign-flip test)")
    p.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from ..causal.plan import plan
    from ..dump.study import open_study

    study: Any = open_study(args.study) if args.study else None
    res = plan(study, outcome=args.outcome, treatment=args.treatment, control=args.control, treated=args.treated,
               effect=args.effect, sd=args.sd, alpha=args.alpha, power=args.power, paired=args.paired)
    print(res.to_markdown(), end="")
    return 0
