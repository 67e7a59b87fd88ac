"""``causalgeom metrics``: per-run metrics and the paper table of a study (or one run), printed and saved."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics", help="per-run metrics and the paper table (mean ± CI over seeds) of a study or a run",
        description="Compute every run's calibration, geometry and robustness numbers and, for a study, the "
                    "paper table: one row per (regularizer, strength), mean and Student-t interval over seeds. "
                    "Prints them and writes CSV and Parquet files next to the study (or into --out).",
        epilog="examples:\n  causalgeom metrics demo_out/study              -> demo_out/study.run_metrics.csv, "
               "demo_out/study.paper_table.csv (+ .parquet)\n"
               "  causalgeom metrics demo_out/study/ce-s0.zarr    -> demo_out/study/ce-s0.metrics.csv\n"
               "  causalgeom metrics demo_out/study --out tables --ci 0.9",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="STUDY_OR_RUN", help="a study folder or a run store (RUN.zarr)")
    p.add_argument("--out", metavar="DIR", help="folder for the tables (default: beside STUDY_OR_RUN)")
    p.add_argument("--n-bins", type=int, default=15, help="equal-width ECE bins (default 15)")
    p.add_argument("--ci", type=float, default=0.95, help="coverage of the interval over seeds (default 0.95)")
    p.add_argument("--center-kind", default="minimal_loss", choices=("minimal_loss", "mean", "weight"),
                   help="class centers of the cosines (default minimal_loss)")
    p.add_argument("--no-parquet", action="store_true", help="write CSV only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_metrics)


def _is_study(path: Path) -> bool:
    return path.is_dir() and not (path / "zarr.json").exists()


def _write(frame, out_dir: Path, stem: str, parquet: bool) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{stem}.csv"]
    frame.to_csv(written[0], index=False)
    if parquet:
        target = out_dir / f"{stem}.parquet"
        try:
            frame.to_parquet(target, index=False)
            written.append(target)
        except ImportError as exc:  # pragma: no cover - pyarrow missing
            print(f"causalgeom metrics: note: Parquet not written ({exc})", file=sys.stderr)
    return written


def _metrics(args: argparse.Namespace) -> int:
    import pandas as pd

    from .. import open as open_run
    from ..errors import ConfigError, StoreError
    from ..dump.study import open_study
    from ..metrics.summary import format_table, paper_table, run_frame, run_metrics

    path = Path(args.path)
    if not path.exists():
        raise StoreError(f"no study folder or run store at {path}")
    if args.n_bins < 1:
        raise ConfigError(f"--n-bins: expected a positive integer, got {args.n_bins}")
    if not 0 < args.ci < 1:
        raise ConfigError(f"--ci: expected a number in (0, 1), got {args.ci}")
    name = path.name[:-5] if path.name.endswith(".zarr") else path.name
    out_dir = Path(args.out) if args.out else path.resolve().parent
    parquet = not args.no_parquet
    pd.set_option("display.width", 200)
    if _is_study(path):
        study = open_study(path)
        if not study.run_ids:
            raise StoreError(f"study {path} has no complete runs")
        frame = run_frame(study, progress=not args.no_progress, n_bins=args.n_bins, center_kind=args.center_kind)
        table = paper_table(frame, ci=args.ci)
        print(f"paper table of {path} ({len(frame)} runs; mean ± half-width of the {args.ci:.0%} t-interval "
              "over seeds):")
        print(format_table(table).to_string(index=False))
        written = _write(frame, out_dir, f"{name}.run_metrics", parquet)
        written += _write(table, out_dir, f"{name}.paper_table", parquet)
    else:
        row = run_metrics(open_run(path), args.n_bins, center_kind=args.center_kind)
        print(json.dumps(row, indent=2, default=str))
        written = _write(pd.DataFrame([row]), out_dir, f"{name}.metrics", parquet)
    print("wrote " + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0
