"""Per-run metric summaries and the "paper table": mean and t-interval over seeds per regularizer and strength.

`run_metrics` reduces one run to a flat dict (one pass over its chunks: features, logits and
attack outcomes are read once; then ``ece_ts`` streams the logits of its fit half once per Newton step of the
temperature fit, in bounded memory); `run_frame` does so for every run of a study; `paper_table`
groups those rows by (regularizer, strength) and reports each metric's mean and a Student-t
confidence interval over the runs (seeds) of the group. Definitions: ``docs/methods_metrics.md``.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .blocks import check_run, compute
from .calibration import _check_bins, _finish_run_stats, _lazy_run_stats, confidence_outcomes, ece_ts, per_sample
from .._util.checks import check_choice
from ..errors import ConfigError
from .geometry import CENTER_KINDS, cosine_to_center, magnitude
from ..dump.study import Study, StudyLike, as_study
from .table import _without_head, headless_center, robust_key

__all__ = ["DESCRIPTOR_COLUMNS", "run_metrics", "run_frame", "paper_table", "format_table", "robust_key"]

#: Columns of `run_frame` that describe a run rather than measure it (not averaged by `paper_table`). Not the
#: same as `causalgeom.metrics.table.ID_COLUMNS` (the 4 columns that identify the run of an analysis-table row).
DESCRIPTOR_COLUMNS = ("run_id", "regularizer", "strength", "seed", "model", "dataset", "split", "center_kind", "n_samples")


def run_metrics(ds: xr.Dataset, n_bins: int = 15, *, center_kind: str = "minimal_loss") -> dict[str, Any]:
    """The per-run numbers of the paper table: one pass over the run's chunks, then the temperature fit of ``ece_ts``.

    Parameters
    ----------
    ds : xarray.Dataset
        One schema-v1 run (in memory or dask-backed).
    n_bins : int
        Equal-width bins of the ECE.
    center_kind : {"minimal_loss", "mean", "weight"}
        Centers of the cosines (the run's own label-smoothing eps for ``"minimal_loss"``). On a dump
        without a head, head-based kinds are replaced by ``"mean"`` with a one-line warning
        (`causalgeom.metrics.table.headless_center`); ``center_kind`` in the result says which was used.

    Returns
    -------
    dict
        ``run_id``, ``regularizer``, ``strength``, ``seed``, ``model``, ``dataset``, ``split``,
        ``n_samples``, ``center_kind``; outcomes ``accuracy``, ``ece`` (l1, equal width),
        ``signed_ece``, ``nll``, ``brier``, ``mean_confidence``, ``ece_ts`` (ECE after temperature scaling
        fitted on a held-out half, `causalgeom.metrics.calibration.ece_ts`) with its fitted ``ts_temperature``,
        ``ece_debiased``, ``ece_floor`` (the ECE's noise floor) and ``aurc``
        (`causalgeom.metrics.calibration.confidence_outcomes`); geometry (means over samples)
        ``norm``, ``rms``, ``cos_true``, ``cos_pred``; and, when the dump has attack outcomes,
        ``robust_acc[ATTACK@EPS]`` per attack and ε (see `robust_key`) and ``robust_auc[ATTACK]``
        (`causalgeom.metrics.robustness.robust_auc`, clean point included).
    """
    from .robustness import _normalized_auc, clean_correct

    check_run(ds, "run_metrics")
    n_bins = _check_bins(n_bins)
    check_choice(center_kind, "center_kind", CENTER_KINDS)
    if "head_weight" not in ds.variables:
        center_kind = headless_center(center_kind, [str(ds.attrs.get("run_id"))])
    a = ds.attrs
    row: dict[str, Any] = {
        "run_id": a.get("run_id"), "regularizer": a.get("regularizer"),
        "strength": float(a["strength"]) if a.get("strength") is not None else
        (0.0 if a.get("regularizer") == "ce" else math.nan),
        "seed": a.get("seed"), "model": a.get("model"), "dataset": a.get("dataset"), "split": a.get("split"),
        "n_samples": int(ds.sizes.get("sample", 0)), "center_kind": center_kind,
    }
    lazy: dict[str, Any] = {"calib": _lazy_run_stats(ds, n_bins, 1.0, "run_metrics")}
    ps = per_sample(ds)
    lazy["confidence"], lazy["correct"] = ps["confidence"], ps["correct"]
    mag = magnitude(ds)
    lazy["norm"], lazy["rms"] = mag["norm"].mean(), mag["rms"].mean()
    cos = cosine_to_center(ds, kind=center_kind)
    lazy["cos_true"], lazy["cos_pred"] = cos["cos_true"].mean(), cos["cos_pred"].mean()
    has_attacks = "adv_correct" in ds.variables
    if has_attacks:
        lazy["robust"] = ds["adv_correct"].astype(np.float64).mean("sample").transpose("attack", "eps")
        lazy["clean"] = clean_correct(ds).astype(np.float64).mean()
    (vals,) = compute(lazy)
    row.update(_finish_run_stats(np.asarray(vals["calib"]), n_bins))
    ts = ece_ts(ds, n_bins)
    row["ece_ts"], row["ts_temperature"] = float(ts), float(ts.attrs["temperature"])
    row.update(confidence_outcomes(np.asarray(vals["confidence"].values), np.asarray(vals["correct"].values), n_bins))
    for key in ("norm", "rms", "cos_true", "cos_pred"):
        row[key] = float(vals[key]) if key in vals else math.nan
    if has_attacks:
        eps = np.asarray(ds["eps"].values, dtype=np.float64)
        attacks = [str(x) for x in ds["attack"].values]
        acc = np.asarray(vals["robust"].values)
        for i, att in enumerate(attacks):
            for j, e in enumerate(eps):
                row[robust_key(att, e)] = float(acc[i, j])
        auc, _ = _normalized_auc(eps, acc, float(vals["clean"]))
        for i, att in enumerate(attacks):
            row[f"robust_auc[{att}]"] = float(auc[i])
    return row


def run_frame(study: StudyLike, progress: bool = True, n_bins: int = 15, *, center_kind: str = "minimal_loss",
              run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One row of `run_metrics` per complete run of ``study`` (sorted by run id).

    Parameters
    ----------
    study : causalgeom.dump.study.Study or path-like
        A study, or the path of a study folder.
    progress : bool
        Show a progress bar on stderr.
    run_ids : iterable of str, optional
        Only these runs.

    Returns
    -------
    pandas.DataFrame
        When a run has no head, every run's cosines use ``center_kind="mean"`` (one kind per table; a one-line
        warning says so, and the ``center_kind`` column records it).
    """
    study = as_study(study)
    ids = list(study.run_ids if run_ids is None else run_ids)
    it: Iterable[str] = ids
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ids, desc="run metrics", unit="run", file=sys.stderr)
    center_kind = headless_center(center_kind, _without_head(study, ids))
    rows = [run_metrics(study[r], n_bins, center_kind=center_kind) for r in it]
    return pd.DataFrame(rows)


def _metric_columns(frame: pd.DataFrame, by: Sequence[str]) -> list[str]:
    return [c for c in frame.columns
            if c not in by and c not in DESCRIPTOR_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])]


def paper_table(study_or_frame: Study | pd.DataFrame, ci: float = 0.95, *,
                by: Sequence[str] = ("regularizer", "strength"), metrics: Sequence[str] | None = None,
                progress: bool = False) -> pd.DataFrame:
    """The paper table: per (regularizer, strength), each metric's mean and CI over runs (seeds).

    The interval is the Student-t interval over the group's runs, treating each run (seed) as
    one observation: ``mean ± t_{(1+ci)/2, n−1} · s / sqrt(n)`` with s the sample standard deviation
    (ddof 1). A group with a single run gets NaN bounds. Runs with a NaN metric are left out of
    that metric's mean and interval.

    Parameters
    ----------
    study_or_frame : causalgeom.dump.study.Study or pandas.DataFrame
        A study (then `run_frame` is computed) or a frame of `run_metrics` rows.
    ci : float
        Interval coverage in (0, 1).
    by : sequence of str
        Grouping columns.
    metrics : sequence of str, optional
        Metric columns (default: every numeric column that is not an id, see :data:`DESCRIPTOR_COLUMNS`).

    Returns
    -------
    pandas.DataFrame
        One row per group: the ``by`` columns, ``n_runs``, then per metric ``METRIC`` (mean),
        ``METRIC_low``, ``METRIC_high``.
    """
    from scipy import stats

    if not (0 < float(ci) < 1):
        raise ConfigError(f"ci: expected a number in (0, 1), got {ci!r}")
    if isinstance(study_or_frame, Study):
        frame = run_frame(study_or_frame, progress=progress)
    elif isinstance(study_or_frame, pd.DataFrame):
        frame = study_or_frame
    else:
        raise TypeError(f"study_or_frame: expected a causalgeom Study or a DataFrame from run_frame, got "
                        f"{type(study_or_frame).__name__}")
    by = list(by)
    missing = [c for c in by if c not in frame.columns]
    if missing:
        raise ConfigError(f"by: columns {missing} are not in the frame (columns: {list(frame.columns)})")
    if metrics is None:
        metrics = _metric_columns(frame, by)
    else:
        bad = [m for m in metrics if m not in frame.columns]
        if bad:
            raise ConfigError(f"metrics: columns {bad} are not in the frame")
    rows = []
    if frame.empty:
        return pd.DataFrame(columns=[*by, "n_runs", *[f"{m}{s}" for m in metrics for s in ("", "_low", "_high")]])
    for key, g in frame.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        row["n_runs"] = len(g)
        for m in metrics:
            x = pd.to_numeric(g[m], errors="coerce").to_numpy(dtype=np.float64)
            x = x[np.isfinite(x)]
            mean = float(x.mean()) if x.size else math.nan
            if x.size >= 2:
                half = float(stats.t.ppf(0.5 + ci / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
            else:
                half = math.nan
            row[m], row[f"{m}_low"], row[f"{m}_high"] = mean, mean - half, mean + half
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(ci=float(ci), interval="Student t over runs (seeds)")
    return out


def format_table(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Render a `paper_table` as strings ``"mean ± half-width"`` (half-width = (high − low) / 2) for printing."""
    metrics = [c for c in table.columns if f"{c}_low" in table.columns and f"{c}_high" in table.columns]
    keep = [c for c in table.columns if c not in metrics and not any(c == f"{m}_{s}" for m in metrics
                                                                     for s in ("low", "high"))]
    out = table[keep].copy()
    for m in metrics:
        vals = []
        for mean, lo, hi in zip(table[m], table[f"{m}_low"], table[f"{m}_high"]):
            if not np.isfinite(mean):
                vals.append("nan")
            elif np.isfinite(lo) and np.isfinite(hi):
                vals.append(f"{mean:.{digits}g} ± {(hi - lo) / 2:.2g}")
            else:
                vals.append(f"{mean:.{digits}g}")
        out[m] = vals
    return out
