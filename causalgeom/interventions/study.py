"""Study-level post hoc interventions: `rescale_study`, `rotate_study`, `match_study` (runs as the resampling unit).

Each run's dose-response (or matched gap) is computed by `causalgeom.interventions.posthoc`; the study result
averages runs within each group and resamples runs (cluster bootstrap, percentile interval), because the
regularizer is assigned per run. Numpy only.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
import pandas as pd
import xarray as xr

from ..causal import percentile_ci
from ..errors import ConfigError
from ..metrics.geometry import magnitude
from ..metrics.kernels import head64
from ..dump.study import StudyLike, as_study
from .._util.checks import check_choice
from .._util.rng import RngLike, check_random_state
from .posthoc import (MATCH_WHAT, OUTCOMES, TOWARD, _Matcher, _center_label, _check_options, _outcome_matrix,
                      _pooled_targets, _run_rms, _run_sums, _seed, _share_frame, rescale, rotate)

__all__ = ["rescale_study", "rotate_study", "match_study"]


# ---------------------------------------------------------------------------------------------
# study level: runs as the resampling unit
# ---------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _study_groups(study: StudyLike, runs: Sequence[str] | None, by: str | Sequence[str]
                  ) -> tuple[Any, list[str], list[str]]:
    study = as_study(study)
    table = study.runs
    if table.empty:
        raise ConfigError(f"study {study.path} has no complete runs")
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise ConfigError(f"by: unknown run-table columns {missing}; available: {sorted(map(str, table.columns))}")
    if runs is not None:
        unknown = [r for r in runs if r not in set(table["run_id"])]
        if unknown:
            raise ConfigError(f"runs: unknown run ids {unknown}; study runs: {table['run_id'].tolist()}")
        table = table.set_index("run_id").loc[list(runs)].reset_index()
    labels = ["/".join(_fmt(row[c]) for c in by if not _missing(row[c])) or "nan" for _, row in table.iterrows()]
    return study, table["run_id"].tolist(), labels


def _cluster_bootstrap(per_run: xr.Dataset, groups: Sequence[str], dim: str, n_boot: int, ci: float,
                       gen: np.random.Generator) -> xr.Dataset:
    """Mean over runs per group with a percentile bootstrap that resamples runs within each group."""
    names = list(dict.fromkeys(groups))
    groups_arr = np.asarray(groups, dtype=object)
    data_vars: dict[str, Any] = {}
    for var in [v for v in per_run.data_vars if dim in per_run[v].dims]:
        arr = np.asarray(per_run[var].transpose("run", dim).values, dtype=np.float64)
        mean = np.full((len(names), arr.shape[1]), np.nan)
        lo, hi = mean.copy(), mean.copy()
        for i, g in enumerate(names):
            rows = arr[groups_arr == g]
            mean[i] = rows.mean(axis=0)
            if rows.shape[0] >= 2 and n_boot > 0:
                idx = gen.integers(0, rows.shape[0], size=(n_boot, rows.shape[0]))
                lo[i], hi[i] = percentile_ci(rows[idx].mean(axis=1), ci)
        data_vars[var] = (("group", dim), mean)
        if var in OUTCOMES:
            data_vars[f"{var}_ci_low"] = (("group", dim), lo)
            data_vars[f"{var}_ci_high"] = (("group", dim), hi)
        data_vars[f"{var}_per_run"] = (("run", dim), arr)
    counts = [int(np.sum(groups_arr == g)) for g in names]
    return xr.Dataset(data_vars, coords={"group": names, dim: per_run[dim].values, "run": per_run["run"].values,
                                         "run_group": ("run", list(groups)), "n_runs": ("group", counts)})


def _study_grid(fn: Callable[..., xr.Dataset], dim: str, study: StudyLike, runs: Sequence[str] | None,
                by: str | Sequence[str], n_boot: int, ci: float, rng: RngLike, kwargs: dict[str, Any]) -> xr.Dataset:
    _check_options(kwargs.get("n_bins", 15), n_boot, ci)
    study, run_ids, groups = _study_groups(study, runs, by)
    per_run = []
    for rid in run_ids:
        res = fn(study[rid], n_boot=0, **kwargs)
        res = res[[v for v in res.data_vars if not v.endswith(("_ci_low", "_ci_high"))]]
        if "target_rms" in res.coords:  # the factor differs per run: align runs on the target instead
            res = res.assign(scale_factor=res["scale"]).swap_dims(scale="target_rms").drop_vars("scale")
        per_run.append(res)
    if "target_rms" in per_run[0].dims:
        dim = "target_rms"
    stacked = xr.concat(per_run, dim=pd.Index(run_ids, name="run"), coords="minimal", compat="override",
                        join="exact", combine_attrs="drop")
    seed = _seed(check_random_state(rng))
    out = _cluster_bootstrap(stacked, groups, dim, n_boot, ci, np.random.default_rng(seed))
    out.attrs.update(intervention=per_run[0].attrs["intervention"], study=str(study.path),
                     by=[by] if isinstance(by, str) else list(by), n_boot=int(n_boot), ci=float(ci),
                     bootstrap="percentile over runs within each group (runs are the resampling unit)",
                     bootstrap_seed=seed, n_bins=int(kwargs.get("n_bins", 15)))
    for key in ("toward", "center", "mode"):
        if key in per_run[0].attrs:
            out.attrs[key] = per_run[0].attrs[key]
    return out


def rescale_study(study: StudyLike, scales: ArrayLike = None, *, target_rms: ArrayLike = None, per_sample: bool = False,
                  runs: Sequence[str] | None = None, by: str | Sequence[str] = ("regularizer", "strength"),
                  n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: RngLike = None) -> xr.Dataset:
    """:func:`rescale` on every run of a study, aggregated per group of runs with runs as the resampling unit.

    Parameters
    ----------
    study : causalgeom.Study or path
    scales, target_rms, per_sample, n_bins
        As in :func:`rescale` (``target_rms`` may also name a group, e.g. ``"label_smoothing/0.1"``:
        the pooled RMS of that group's runs).
    runs : sequence of str, optional
        Run ids (default: all complete runs).
    by : str or sequence of str
        Run-table columns whose values define the groups (labels joined by ``/``).
    n_boot, ci, rng
        Cluster bootstrap: runs are resampled with replacement within each group (groups of one
        run get NaN intervals).

    Returns
    -------
    xarray.Dataset
        Dims ``(group, scale)``: each outcome (mean over the group's runs) with ``_ci_low`` /
        ``_ci_high``; ``<outcome>_per_run`` (run, scale); coordinates ``run_group`` and ``n_runs``.
        With ``target_rms`` the grid dim is ``target_rms`` (each run's factor differs) and
        ``scale_factor`` holds the factors.
    """
    if isinstance(target_rms, str):
        st, run_ids, groups = _study_groups(study, None, by)
        chosen = [r for r, g in zip(run_ids, groups) if g == target_rms]
        if not chosen:
            raise ConfigError(f"target_rms: no runs in group {target_rms!r}; groups: {sorted(set(groups))}")
        mss = [(_run_rms(ds) ** 2, ds.sizes["sample"]) for ds in (st[r] for r in chosen)]
        target_rms = math.sqrt(sum(m * n for m, n in mss) / sum(n for _, n in mss))
        study = st
    return _study_grid(rescale, "scale", study, runs, by, n_boot, ci, rng,
                       dict(scales=scales, target_rms=target_rms, per_sample=per_sample, n_bins=n_bins))


def rotate_study(study: StudyLike, alphas: ArrayLike, *, toward: str = "predicted",
                 center: str | ArrayLike = "minimal_loss",
                 runs: Sequence[str] | None = None, by: str | Sequence[str] = ("regularizer", "strength"),
                 n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: RngLike = None) -> xr.Dataset:
    """:func:`rotate` on every run of a study (centers per run), aggregated as in :func:`rescale_study`.

    Returns
    -------
    xarray.Dataset
        Dims ``(group, alpha)``; see :func:`rescale_study`.
    """
    return _study_grid(rotate, "alpha", study, runs, by, n_boot, ci, rng,
                       dict(alphas=alphas, toward=toward, center=center, n_bins=n_bins))


def match_study(study: StudyLike, control: str = "ce", treated: str = "label_smoothing", what: str = "magnitude", *,
                by: str | Sequence[str] = "regularizer", toward: str = "true", center: str | ArrayLike = "minimal_loss",
                n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: RngLike = None) -> pd.DataFrame:
    """:func:`match` at the study level: every control run is matched to the pooled treated runs.

    The target distribution pools the per-sample values of all runs in the treated group. Outcomes
    are averaged over runs (control and matched over control runs, treated over treated runs) and
    the share is ``(mean matched - mean control) / (mean treated - mean control)``. Intervals: cluster
    bootstrap resampling control runs (with their matched counterparts) and treated runs
    independently, percentile (NaN when a group has fewer than 2 runs).

    Parameters
    ----------
    study : causalgeom.Study or path
    control, treated : str
        Group labels (values of ``by``), e.g. ``"ce"`` and ``"label_smoothing"``.
    what, toward, center, n_bins
        As in :func:`match`.
    by : str or sequence of str
        Run-table columns defining the groups.
    n_boot, ci, rng
        Cluster bootstrap settings.

    Returns
    -------
    pandas.DataFrame
        As :func:`match`, plus ``df.attrs["per_run"]`` (a DataFrame of per-run outcomes).
    """
    _check_options(n_bins, n_boot, ci)
    st, run_ids, groups = _study_groups(study, None, by)
    c_ids = [r for r, g in zip(run_ids, groups) if g == control]
    t_ids = [r for r, g in zip(run_ids, groups) if g == treated]
    for name, value, ids in (("control", control, c_ids), ("treated", treated, t_ids)):
        if not ids:
            raise ConfigError(f"{name}: no runs in group {value!r} (by={by!r}); groups: {sorted(set(groups))}")
    what = check_choice(what, "what", MATCH_WHAT)
    toward = check_choice(toward, "toward", TOWARD)
    label = "interventions.match_study"
    t_runs = [st[r] for r in t_ids]
    pooled = _pooled_targets(t_runs, what, toward, center, label)
    rows = []
    c_out, m_out, t_out = [], [], []
    for rid in c_ids:
        m = _Matcher(st[rid], pooled, what, toward, center, label)
        sums = _run_sums(st[rid], m.W, m.b, n_bins, 0, 0, m)
        c_out.append(_outcome_matrix(sums[0], n_bins)[0])
        m_out.append(_outcome_matrix(sums[1], n_bins)[0])
        rows += [{"run_id": rid, "arm": "control", **dict(zip(OUTCOMES, c_out[-1]))},
                 {"run_id": rid, "arm": "matched", **dict(zip(OUTCOMES, m_out[-1]))}]
    for rid, ds in zip(t_ids, t_runs):
        W, b = head64(ds, f"{label} (treated run)")
        t_out.append(_outcome_matrix(_run_sums(ds, W, b, n_bins, 0, 0)[0], n_bins)[0])
        rows.append({"run_id": rid, "arm": "treated", **dict(zip(OUTCOMES, t_out[-1]))})
    C, M, T = (np.asarray(x) for x in (c_out, m_out, t_out))
    gen = check_random_state(rng)
    seed = _seed(gen)
    boot = np.random.default_rng(seed)
    reps_c, reps_m, reps_t = [C.mean(0)], [M.mean(0)], [T.mean(0)]
    if n_boot > 0 and len(c_ids) >= 2 and len(t_ids) >= 2:
        ic = boot.integers(0, len(c_ids), size=(n_boot, len(c_ids)))
        it = boot.integers(0, len(t_ids), size=(n_boot, len(t_ids)))
        reps_c += list(C[ic].mean(1))
        reps_m += list(M[ic].mean(1))
        reps_t += list(T[it].mean(1))
    df = _share_frame(np.asarray(reps_c), np.asarray(reps_t), np.asarray(reps_m), ci)
    df.attrs.update(what=what, toward=toward, center=_center_label(center), control=control, treated=treated,
                    control_runs=c_ids, treated_runs=t_ids, n_bins=int(n_bins), n_boot=int(n_boot), ci=float(ci),
                    bootstrap="percentile over runs (cluster bootstrap; control and treated runs resampled "
                              "independently)", bootstrap_seed=seed, per_run=pd.DataFrame(rows))
    return df
