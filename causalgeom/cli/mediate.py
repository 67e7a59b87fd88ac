"""``causalgeom mediate``: mediation analysis of a study from a query file or from options."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """examples:
  causalgeom mediate demo_out/study --query q.toml
  causalgeom mediate demo_out/study --treatment regularizer --control ce --treated label_smoothing \\
      --mediators rms,cos_true --outcome overconfidence --inference permutation
  causalgeom mediate table.parquet --treatment strength --mediators rms --outcome nll --level run

Options given on the command line override the query file's. Results go to --out (default: a folder
STUDY_mediation next to the study): mediation_summary.csv/.parquet, mediation_sensitivity.csv/.parquet,
mediation.md, forest.png and the query actually run (query.toml).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mediate", help="mediation analysis (direct / indirect effects, runs paired by image)",
                       description="Estimate total, natural direct and natural indirect effects of a treatment "
                                   "(regularizer or its strength) through mediators (magnitude, cosine) on "
                                   "outcomes (calibration, robustness); runs paired by test image, intervals and "
                                   "p-values with runs as the unit of inference.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study folder, or an analysis table (.csv / .parquet)")
    p.add_argument("--query", help="TOML query file ([query] or several [[query]] tables)")
    p.add_argument("--treatment", help="treatment column (e.g. regularizer, strength)")
    p.add_argument("--control", help="control level / value (default: 'ce' when present)")
    p.add_argument("--treated", help="treated level / value")
    p.add_argument("--mediators", help="comma-separated mediator columns (e.g. rms,cos_true)")
    p.add_argument("--outcome", "--outcomes", dest="outcomes", help="comma-separated outcome columns")
    p.add_argument("--covariates", help="comma-separated covariate columns")
    p.add_argument("--cluster", help="cluster column (default run_id; 'none': rows are independent)")
    p.add_argument("--level", choices=("sample", "run"), help="analysis table level (default sample)")
    p.add_argument("--method", choices=("regression", "statsmodels", "dowhy"))
    p.add_argument("--inference", choices=("cr2", "permutation", "wild", "bootstrap"),
                   help="cr2 (default): CR2 standard errors, t(G-2) intervals; permutation: exact run-level "
                        "randomization p-values (CR2 intervals); wild: wild cluster bootstrap (Webb weights); "
                        "bootstrap: percentile intervals of --bootstrap")
    p.add_argument("--bootstrap", choices=("cluster", "cluster+samples", "naive", "two-way"),
                   help="bootstrap scheme (selects --inference bootstrap when that is not given)")
    p.add_argument("--paired-by", dest="paired_by", choices=("auto", "sample", "none"),
                   help="pair runs by test image (image fixed effects): auto (default: when every run scored the "
                        "same images), sample (required), none")
    p.add_argument("--estimand", choices=("auto", "runs", "model"),
                   help="runs: effect over training runs; model: these models, inference over test images "
                        "(auto: model when an arm has one run)")
    p.add_argument("--n-boot", type=int, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--ci-level", type=float, help="confidence level (default 0.95)")
    p.add_argument("--outcome-model", choices=("auto", "linear", "logistic", "probit"),
                   help="auto (default): logistic for 0/1 outcomes, else linear")
    p.add_argument("--interaction", action="store_true", default=None, help="treatment x mediator terms")
    p.add_argument("--ordered", action="store_true", default=None, help="two mediators, first causes second")
    p.add_argument("--treatment-type", choices=("auto", "categorical", "continuous"))
    p.add_argument("--attack", help="comma-separated attacks whose robustness columns to build")
    p.add_argument("--eps", help="comma-separated eps values whose robustness columns to build")
    p.add_argument("--center", choices=("minimal_loss", "mean", "weight"), help="class centers of the cosines")
    p.add_argument("--refute", action="store_true",
                   help="also run the refuters (placebo over runs, run subsets, DoWhy's random common cause)")
    p.add_argument("--out", help="output folder (default: STUDY_mediation next to the study)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_mediate)


def _value(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return float(text) if any(ch in text for ch in ".eE") else int(text)
    except ValueError:
        return text


def _queries(args: argparse.Namespace) -> list[Any]:
    from ..causal import Query, read_queries
    from ..errors import QueryError

    base: list[dict[str, Any]] = [q.to_dict() for q in read_queries(args.query)] if args.query else [{}]
    over: dict[str, Any] = {}
    for key in ("treatment", "level", "method", "bootstrap", "seed", "ci_level", "outcome_model", "interaction",
                "ordered", "treatment_type", "center", "inference", "estimand"):
        v = getattr(args, key)
        if v is not None:
            over[key] = v
    if args.n_boot is not None:
        over["n_boot"] = args.n_boot
    if args.control is not None:
        over["control"] = args.control
    if args.treated is not None:
        over["treated"] = args.treated
    for key, attr in (("mediators", "mediators"), ("outcomes", "outcomes"), ("covariates", "covariates"),
                      ("attack", "attack")):
        v = getattr(args, attr)
        if v is not None:
            over[key] = [s.strip() for s in v.split(",") if s.strip()]
    if args.eps is not None:
        try:
            over["eps"] = [float(s) for s in args.eps.split(",") if s.strip()]
        except ValueError:
            raise QueryError(f"--eps: expected comma-separated numbers, got {args.eps!r}") from None
    if args.cluster is not None:
        over["cluster"] = None if args.cluster.lower() == "none" else args.cluster
    if args.paired_by is not None:
        over["paired_by"] = None if args.paired_by == "none" else args.paired_by
    out = []
    for b in base:
        d = {**b, **over}
        for key in ("treatment", "mediators", "outcomes"):
            if key not in d:
                raise QueryError(f"no {key} given: pass --query FILE or --{key if key != 'outcomes' else 'outcome'}")
        out.append(Query.from_dict(d))
    return out


def _resolve_levels(q: Any, table: Any) -> Any:
    """Command-line values arrive as strings; match numeric treatment values when the column is numeric."""
    import dataclasses

    import pandas as pd

    if q.treatment in table.columns and pd.api.types.is_numeric_dtype(table[q.treatment]):
        return dataclasses.replace(q, control=_value(q.control) if isinstance(q.control, str) else q.control,
                                   treated=_value(q.treated) if isinstance(q.treated, str) else q.treated)
    return q


def _out_of_core_problem(q: Any, study: Any, refute: bool) -> str | None:
    """Why query ``q`` cannot be answered out of core by the Dask engine (`causalgeom.scale.DASK_ENGINE.problem`,
    the one rule; None: it can, with the same estimator, design and random draws as `mediate` on the table)."""
    from ..scale import DASK_ENGINE

    if refute and DASK_ENGINE.problem(q.spec(), study) is None:
        return "--refute needs the per-sample rows"
    return DASK_ENGINE.problem(_numeric_levels(q).spec(), study)


def _numeric_levels(q: Any) -> Any:
    """Command-line levels arrive as strings: numbers for the run-level numeric treatments."""
    import dataclasses

    if q.treatment in ("strength", "seed"):
        return dataclasses.replace(q, control=_value(q.control) if isinstance(q.control, str) else q.control,
                                   treated=_value(q.treated) if isinstance(q.treated, str) else q.treated)
    return q


def _mediate(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..causal import FewClustersWarning, mediate, refute, write_queries
    from ..errors import QueryError
    from ..dump.study import open_study

    src = Path(args.study)
    queries = _queries(args)
    tables: dict[tuple, pd.DataFrame] = {}
    if src.is_file():
        if src.suffix == ".parquet":
            frame = pd.read_parquet(src)
        elif src.suffix == ".csv":
            frame = pd.read_csv(src)
        else:
            raise QueryError(f"{src}: expected a study folder or a .csv / .parquet table")
        default_out = src.with_name(f"{src.stem}_mediation")
        get_table = lambda q: frame  # noqa: E731
    else:
        study = open_study(src)
        default_out = src.resolve().with_name(f"{src.resolve().name}_mediation")

        def get_table(q: Any) -> pd.DataFrame:
            kw = q.table_kwargs()
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(kw.items()))
            if key not in tables:
                tables[key] = study.to_frame(progress=not args.no_progress, **kw)
            return tables[key]

    # on the Dask path (chosen by size, or --scheduler), queries that per-run moments answer run out of core
    out_of_core = [False] * len(queries)
    if getattr(args, "path_choice", None) == "dask" and not src.is_file():
        for i, q in enumerate(queries):
            why = _out_of_core_problem(q, study, bool(args.refute))
            out_of_core[i] = why is None
            how = ("out of core (cg.distributed.mediate_study: per-run moments on the Dask workers)" if why is None
                   else f"from the per-sample table built on the Dask workers ({why})")
            print(f"causalgeom mediate: {q.name or f'query {i + 1}'}: {how}", file=sys.stderr)
    for i, q in enumerate(queries):  # every query is checked against its table before anything is written
        if out_of_core[i]:  # mediate_study checks the question itself, before its first pass over the chunks
            continue
        table = get_table(q)
        queries[i] = _resolve_levels(q, table)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewClustersWarning)
            queries[i].check(table)
    out = Path(args.out) if args.out else default_out
    out.mkdir(parents=True, exist_ok=True)
    summaries, sens, md = [], [], []
    for i, q in enumerate(queries):
        with warnings.catch_warnings():  # the same message is printed below as a note
            warnings.simplefilter("ignore", FewClustersWarning)
            if out_of_core[i]:
                import numpy as np

                from ..scale import mediate_moments

                res = mediate_moments(study, _numeric_levels(q).spec(), rng=np.random.default_rng(q.seed),
                                      center=q.center or "minimal_loss")
            else:
                table = get_table(q)
                q = _resolve_levels(q, table)
                queries[i] = q
                res = mediate(table, **q.mediate_kwargs())
        label = q.name or f"query {i + 1}"
        s = res.summary()
        s.insert(0, "query", label)
        summaries.append(s)
        if len(res.sensitivity):
            t = res.sensitivity.copy()
            t.insert(0, "query", label)
            sens.append(t)
        if args.refute:
            try:
                refute(res)
            except QueryError as exc:
                res.notes.append(f"refuters not run: {exc}")
        md.append(res.to_markdown())
        fig = res.plot()
        fig.savefig(out / (f"forest-{i + 1}.png" if len(queries) > 1 else "forest.png"), dpi=120)
        plt.close(fig)
        print(f"\n== {label}: {q.treatment} = {res.treated!r} vs {res.control!r} ==")
        print(res.describe())
        with pd.option_context("display.width", 140, "display.max_columns", 20,
                               "display.float_format", "{:.4g}".format):
            print(res.summary().to_string(index=False))
            if res.refutations is not None:
                print(res.refutations.to_string(index=False))
        for note in res.notes:
            print(f"note: {note}")
    summary = pd.concat(summaries, ignore_index=True)
    written = [_write(summary, out / "mediation_summary")]
    if sens:
        written.append(_write(pd.concat(sens, ignore_index=True), out / "mediation_sensitivity"))
    (out / "mediation.md").write_text("\n".join(md), encoding="utf-8")
    write_queries(queries, out / "query.toml")
    print(f"\nwrote {', '.join(written)}, mediation.md, forest plot(s) and query.toml to {out}", file=sys.stderr)
    return 0


def _write(df: Any, stem: Path) -> str:
    df.to_csv(stem.with_suffix(".csv"), index=False)
    try:
        df.to_parquet(stem.with_suffix(".parquet"), index=False)
        return f"{stem.name}.csv/.parquet"
    except (ImportError, ValueError):  # no parquet engine
        return f"{stem.name}.csv"
