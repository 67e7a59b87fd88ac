"""``causalgeom decompose``: split a treated − control gap into head, feature magnitude and direction shares."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """examples:
  causalgeom decompose demo_out/study --control ce --treated mixup --outcome signed_ece
  causalgeom decompose demo_out/study --treated label_smoothing --outcome signed_ece,nll,ece \\
      --factors head,magnitude,cosine --out decomposition.csv
  causalgeom decompose study --treated mixup --outcome robust_accuracy --eps 0.0314   (needs extract --save-adv)

head,magnitude,... swap heads between same-seed runs: the demo's runs are trained by causalgeom train, which
records init_digest, so their shared initialisation is verified; for other runs add --pairs seed to state it,
or keep the default scale,shape (any two models).

With >= 2 runs per arm the estimand is the average effect over training runs (t-intervals over runs,
randomization p-values, never below the design's floor); with 1 run per arm it is model-conditional
(these models, bootstrap over test images). Definitions: docs/methods_causal.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..causal.decompose import DECOMPOSE_OUTCOMES, ESTIMANDS, PAIRINGS

    p = sub.add_parser("decompose", help="scale / shape (or head / magnitude / direction) decomposition of a gap",
                       description="Split the treated − control gap of an outcome into the shares of the logit "
                                   "scale and shape (default), or of the head (W, b), feature magnitude and "
                                   "direction, by swapping them between paired runs and Shapley averaging.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study folder")
    p.add_argument("--treatment", default="regularizer", help="run attribute defining the arms (default regularizer)")
    p.add_argument("--control", default="ce", help="control level (default ce)")
    p.add_argument("--treated", required=True, help="treated level (e.g. mixup)")
    p.add_argument("--outcome", "--outcomes", dest="outcomes", default="signed_ece",
                   help=f"comma-separated outcomes from {', '.join(DECOMPOSE_OUTCOMES)} (default signed_ece)")
    p.add_argument("--factors", default="scale,shape",
                   help="scale,shape (default: function-level, any two models), or the representation-level "
                        "head,magnitude,direction / head,magnitude,cosine (runs shown to share an initialisation) "
                        "or magnitude,head_norm,orientation")
    p.add_argument("--estimand", choices=ESTIMANDS, default="auto",
                   help="runs (>= 2 runs per arm), model (these models), auto (default)")
    p.add_argument("--pairs", choices=PAIRINGS, default="auto",
                   help="seed (runs matched by seed: states a shared initialisation, verified by init_digest), all "
                        "(every control x treated pair), auto (default: seed when seeds and init_digest match)")
    p.add_argument("--n-boot", type=int, default=1000, help="image-bootstrap replicates (model estimand)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--ci-level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--attack", help="attack of the robust outcomes (default: the first)")
    p.add_argument("--eps", type=float, help="eps of the robust outcomes (default: the middle of the sweep)")
    p.add_argument("--out", help="write the summary to this CSV file")
    p.set_defaults(func=_decompose)


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _level(text: str, study: Any, treatment: str) -> Any:
    """Command-line levels arrive as strings; use the numeric value when the run attribute is numeric."""
    import pandas as pd

    runs = study.runs
    if treatment in runs.columns and pd.api.types.is_numeric_dtype(runs[treatment]):
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _decompose(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..causal import decompose
    from ..dump.study import open_study

    study = open_study(args.study)
    res = decompose(study, treatment=args.treatment, control=_level(args.control, study, args.treatment),
                    treated=_level(args.treated, study, args.treatment), outcome=_split(args.outcomes),
                    factors=tuple(_split(args.factors)), n_boot=args.n_boot, rng=args.seed, ci_level=args.ci_level,
                    estimand=args.estimand, pairs=args.pairs, attack=args.attack, eps=args.eps)
    print(f"== {args.treatment} = {res.treated!r} vs {res.control!r}: {res.level}-level decomposition ==")
    print(res.describe())
    with pd.option_context("display.width", 140, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(res.summary().to_string(index=False))
    for o in res.outcomes:
        print(res.text(o))
    for note in res.notes:
        print(f"note: {note}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        res.summary().to_csv(out, index=False)
        print(f"wrote {out}")
    return 0
