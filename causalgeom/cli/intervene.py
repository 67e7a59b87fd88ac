"""``causalgeom intervene``: set the feature magnitude or direction of a study's runs and measure what follows."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """examples:
  causalgeom intervene demo_out/study --rescale 0.25,0.5,1,2 --rotate -0.5,0,0.5
  causalgeom intervene demo_out/study --run ce-s0 --rescale 0.5,1,2 --temperature
  causalgeom intervene demo_out/study --control ce --treated label_smoothing --compare-mediation
  causalgeom intervene demo_out/study/ce-s0.zarr --rotate 0,0.5,1 --toward true --plot

Without --run, every run is intervened on and the outcomes are averaged per (regularizer, strength)
with intervals from a bootstrap over runs; with --run (or a run store), intervals come from a
bootstrap over samples. --control/--treated give each control run the treated runs' magnitude,
cosine or both distributions and report the interventional share of every outcome gap.
Tables are printed and written as CSV next to the study (or into --out):
STUDY.intervene_rescale.csv, .intervene_rotate.csv, .intervene_temperature.csv, .intervene_match.csv,
.intervene_vs_mediation.csv (and .png plots with --plot).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("intervene", help="interventions: rescale or rotate features, match distributions",
                       description="Post hoc interventions on the features of a study's runs: do(magnitude) by "
                                   "rescaling, do(direction) by rotating toward class centers, and quantile "
                                   "matching of a control run to the treated runs (interventional share).",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", metavar="STUDY", help="a study folder (or one run store RUN.zarr)")
    p.add_argument("--rescale", metavar="S1,S2,...", help="scale factors s (h -> s h); 1 is the identity")
    p.add_argument("--rotate", metavar="A1,A2,...",
                   help="rotation fractions alpha <= 1 toward the class center; 0 is the identity")
    p.add_argument("--run", metavar="RUN_ID", help="intervene on this run only (sample bootstrap)")
    p.add_argument("--control", help="control group for matching (a value of --by, e.g. ce)")
    p.add_argument("--treated", help="treated group for matching (e.g. label_smoothing)")
    p.add_argument("--match", default="magnitude,cosine,both", metavar="WHAT",
                   help="what to match, comma-separated among magnitude,cosine,both (default: all three)")
    p.add_argument("--by", default="regularizer,strength", metavar="COLS",
                   help="run-table columns that define groups (default regularizer,strength; matching uses "
                        "the first column only unless --control/--treated include '/')")
    p.add_argument("--toward", choices=("predicted", "true"), default=None,
                   help="center class for rotation (default predicted) and matching (default true)")
    p.add_argument("--center", choices=("minimal_loss", "mean", "weight"), default="minimal_loss",
                   help="class centers (default minimal_loss)")
    p.add_argument("--temperature", action="store_true",
                   help="also compare feature scaling with temperature scaling T = 1/s on the --rescale grid")
    p.add_argument("--compare-mediation", action="store_true",
                   help="with --control/--treated: run the mediation analysis (mediators rms and the cosine) and "
                        "compare its proportion mediated with the interventional share")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000; 0: none)")
    p.add_argument("--n-bins", type=int, default=15, help="equal-width ECE bins (default 15)")
    p.add_argument("--ci", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--plot", action="store_true", help="also write dose-response plots (PNG)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: beside STUDY)")
    # let grids that start with a minus sign ("--rotate -0.5,0,0.5") be values, not options
    p._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")
    p.set_defaults(func=_intervene)


def _floats(text: str | None, option: str) -> list[float] | None:
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{option}: expected at least one number, got {text!r}")
    return values


def _print(title: str, frame: Any) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        print(f"\n{title}")
        print(frame.to_string())


def _grid_table(result: Any, dim: str) -> Any:
    """Long table of a dose-response Dataset: one row per grid point (and group), outcomes as columns."""
    from ..interventions import OUTCOMES

    names = [v for v in result.data_vars if dim in result[v].dims and not v.endswith("_per_run")]
    frame = result[names].to_dataframe()
    keep = [c for c in frame.columns if c in names]
    order = [c for o in OUTCOMES for c in (o, f"{o}_ci_low", f"{o}_ci_high") if c in keep]
    return frame[order + [c for c in keep if c not in order]]


def _intervene(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import interventions as iv
    from .. import open as open_run
    from ..errors import ConfigError, StoreError
    from ..dump.study import open_study

    path = Path(args.study)
    if not path.exists():
        raise StoreError(f"no study folder or run store at {path}")
    scales, alphas = _floats(args.rescale, "--rescale"), _floats(args.rotate, "--rotate")
    matching = args.control is not None or args.treated is not None
    if matching and (args.control is None or args.treated is None):
        raise ConfigError("--control and --treated: give both (group labels, e.g. --control ce --treated "
                          "label_smoothing)")
    if scales is None and alphas is None and not matching:
        raise ConfigError("nothing to do: give --rescale, --rotate and/or --control/--treated")
    if args.temperature and scales is None:
        raise ConfigError("--temperature compares on the --rescale grid; give --rescale too")
    if args.compare_mediation and not matching:
        raise ConfigError("--compare-mediation needs --control and --treated")
    whats = [w.strip() for w in args.match.split(",") if w.strip()]
    unknown = [w for w in whats if w not in iv.MATCH_WHAT]
    if unknown or not whats:
        raise ConfigError(f"--match: expected values among {list(iv.MATCH_WHAT)}, got {args.match!r}")
    by = [c.strip() for c in args.by.split(",") if c.strip()]
    common = dict(n_bins=args.n_bins, n_boot=args.n_boot, ci=args.ci)
    rng = np.random.default_rng(args.seed)

    is_run = path.is_dir() and (path / "zarr.json").exists() and path.name.endswith(".zarr")
    name = path.name[:-5] if path.name.endswith(".zarr") else path.name
    out_dir = Path(args.out) if args.out else path.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    study = None if is_run else open_study(path)
    if is_run and (args.run or matching):
        raise ConfigError("--run and --control/--treated need a study folder, got the run store "
                          f"{path}; pass its study folder")
    single = open_run(path) if is_run else (study[args.run] if args.run else None)
    if single is not None and args.run:
        name = f"{name}.{args.run}"
    written: list[Path] = []

    def save(frame: Any, stem: str, title: str) -> None:
        _print(title, frame)
        target = out_dir / f"{name}.intervene_{stem}.csv"
        frame.to_csv(target)
        written.append(target)

    def plot(result: Any, stem: str) -> None:
        if args.plot:
            target = out_dir / f"{name}.intervene_{stem}.png"
            iv.plot_dose_response(result).savefig(target, dpi=120)
            written.append(target)

    where = f"run {single.attrs.get('run_id')}" if single is not None else f"study {path} (mean over runs per group)"
    unit = "samples" if single is not None else "runs"
    if scales is not None:
        res = (iv.rescale(single, scales, rng=rng, **common) if single is not None else
               iv.rescale_study(study, scales, by=by, rng=rng, **common))
        save(_grid_table(res, "scale"), "rescale",
             f"rescale h -> s h, {where}; {args.ci:.0%} percentile bootstrap over {unit}:")
        plot(res, "rescale")
        if args.temperature:
            runs = [single] if single is not None else [study[r] for r in study.run_ids]
            import pandas as pd

            frame = pd.concat({ds.attrs.get("run_id"): iv.temperature_vs_scaling(ds, scales, n_bins=args.n_bins)
                              .to_dataframe() for ds in runs}, names=["run_id"])
            save(frame, "temperature", "feature scaling s (h W^T) + b vs temperature scaling (h W^T + b) / T, T = 1/s:")
    if alphas is not None:
        toward = args.toward or "predicted"
        res = (iv.rotate(single, alphas, toward=toward, center=args.center, rng=rng, **common)
               if single is not None else
               iv.rotate_study(study, alphas, toward=toward, center=args.center, by=by, rng=rng, **common))
        save(_grid_table(res, "alpha"), "rotate",
             f"rotate toward the {toward}-class {args.center} center by a fraction alpha of the angle, {where}; "
             f"{args.ci:.0%} percentile bootstrap over {unit}:")
        plot(res, "rotate")
    if matching:
        import pandas as pd

        toward = args.toward or "true"
        match_by = by if ("/" in args.control or "/" in args.treated) else by[:1]
        results = {w: iv.match_study(study, args.control, args.treated, w, by=match_by, toward=toward,
                                     center=args.center, rng=rng, **common) for w in whats}
        frame = pd.concat(results, names=["what"])
        save(frame, "match", f"interventional share: {args.control} runs matched to the pooled {args.treated} runs "
                             f"({toward}-class {args.center} centers); share = (matched - control) / "
                             f"(treated - control), {args.ci:.0%} bootstrap over runs:")
        if args.compare_mediation:
            from .. import causal

            table = study.to_frame(level="sample", center=args.center, progress=False)
            mediation = causal.mediate(table, treatment=match_by[0], control=args.control, treated=args.treated,
                                       mediators=["rms", f"cos_{toward[:4]}"],
                                       outcome=["overconfidence", "nll", "brier", "correct"], cluster="run_id",
                                       rng=rng, ci_level=args.ci)  # CR2: no replicates
            save(iv.share_vs_mediation(results, mediation).set_index(["what", "outcome"]), "vs_mediation",
                 "interventional share vs proportion mediated (same study):")
    print("wrote " + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0
