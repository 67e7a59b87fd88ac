"""`mediate`: natural direct and indirect effects of a treatment through mediators, with cluster-bootstrap CIs."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import QueryError
from ._design import MIN_CLUSTERS_CONTINUOUS, MIN_CLUSTERS_PER_ARM, Design, build_design
from .bootstrap import replicate_batches, row_strata
from .estimators import LinearMediation
from .query import BOOTSTRAP_SCHEMES, METHODS, OUTCOME_MODELS
from .results import MediationResult

__all__ = ["mediate", "FewClustersWarning", "percentile_ci", "bootstrap_pvalue", "P_VALUE_METHOD"]

P_VALUE_METHOD = ("two-sided bootstrap p-value by percentile inversion, p = min(1, 2 min((1 + #{θ* <= 0}), "
                  "(1 + #{θ* >= 0})) / (B + 1)) — the smallest α whose percentile interval excludes 0")


class FewClustersWarning(UserWarning):
    """Too few clusters (runs) per treatment arm for a trustworthy cluster-bootstrap interval."""


def percentile_ci(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 (NaN replicates ignored).

    Parameters
    ----------
    reps : ndarray, shape (B, ...)
    level : float
        Confidence level, e.g. 0.95.

    Returns
    -------
    low, high : ndarray, shape reps.shape[1:]
    """
    if reps.shape[0] == 0:
        nan = np.full(reps.shape[1:], np.nan)
        return nan, nan.copy()
    alpha = 1.0 - level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(reps, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def bootstrap_pvalue(reps: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of ``θ = 0`` by percentile inversion (see `P_VALUE_METHOD`), over axis 0."""
    valid = np.isfinite(reps)
    B = valid.sum(0)
    le = ((reps <= 0) & valid).sum(0)
    ge = ((reps >= 0) & valid).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.minimum(1.0, 2.0 * np.minimum(1 + le, 1 + ge) / (B + 1.0))
    return np.where(B > 0, p, np.nan)


def _check_options(method: str, bootstrap: str, outcome_model: str, n_boot: Any, ci_level: Any) -> None:
    for name, value, allowed in (("method", method, METHODS), ("bootstrap", bootstrap, BOOTSTRAP_SCHEMES),
                                 ("outcome_model", outcome_model, OUTCOME_MODELS)):
        if value not in allowed:
            raise QueryError(f"{name}: unknown value {value!r}; allowed: {list(allowed)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise QueryError(f"n_boot: expected an integer >= 0, got {n_boot!r}")
    if isinstance(ci_level, bool) or not isinstance(ci_level, (int, float)) or not 0 < ci_level < 1:
        raise QueryError(f"ci_level: expected a number in (0, 1), got {ci_level!r}")


def _as_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise QueryError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}")


def mediate(table: pd.DataFrame, *, treatment: str, mediators: str | Sequence[str], outcome: str | Sequence[str],
            control: Any = None, treated: Any = None, covariates: Sequence[str] = (), cluster: str | None = "run_id",
            method: str = "regression", n_boot: int = 1000, rng: np.random.Generator | int | None = None,
            bootstrap: str = "cluster", ci_level: float = 0.95, outcome_model: str = "linear",
            interaction: bool = False, ordered: bool = False, treatment_type: str = "auto",
            level: str | None = None) -> MediationResult:
    """Estimate total, natural direct and natural indirect effects of ``treatment`` on ``outcome``.

    Parameters
    ----------
    table : pandas.DataFrame, shape (n_rows, n_columns)
        The analysis table, e.g. ``study.to_frame(level="sample")`` (one row per sample, clustered by run) or
        ``level="run"`` (one row per run).
    treatment : str
        Treatment column: categorical (``"regularizer"``, compared as ``treated`` vs ``control``; rows with
        other levels are dropped) or numeric/continuous (``"strength"``; effects between ``control`` and
        ``treated`` values, default per unit from the smallest observed value).
    mediators : str or list of str
        Mediator columns (numeric). Several mediators are parallel (not causally ordered) unless
        ``ordered=True`` (exactly two, first → second).
    outcome : str or list of str
        Outcome column(s) (numeric); several outcomes share the bootstrap replicates.
    control, treated : optional
        Levels (categorical) or values (continuous) compared. Categorical defaults: control ``"ce"`` if present,
        treated the only other level.
    covariates : list of str
        Pre-treatment common causes (numeric, or categorical → indicator columns), in every model.
    cluster : str or None
        Column of the unit that received the treatment (``"run_id"``). ``None``: rows are independent.
    method : {"regression", "statsmodels", "dowhy"}
        ``"regression"``: this package's estimator (`causalgeom.causal.estimators`), cluster-bootstrap
        intervals. ``"statsmodels"``: :class:`statsmodels.stats.mediation.Mediation` (one mediator; its own
        parametric-simulation intervals, per sample — they ignore clustering). ``"dowhy"``: DoWhy's
        ``mediation.two_stage_regression`` on the explicit graph (one mediator, linear outcome, no interaction;
        point estimates from DoWhy, intervals from this package's cluster bootstrap of the same linear models).
    n_boot : int
        Bootstrap replicates (statsmodels: simulation replicates). 0 skips intervals.
    rng : numpy.random.Generator or int or None
        Source of randomness (an int seeds a new Generator).
    bootstrap : {"cluster", "cluster+samples", "naive"}
        ``"cluster"``: resample clusters with replacement, stratified by treatment arm (default).
        ``"cluster+samples"``: two-stage — clusters, then samples within each drawn cluster.
        ``"naive"``: resample rows within arms, ignoring clusters (labelled as such; too narrow when runs differ).
    ci_level : float
        Confidence level of the percentile intervals.
    outcome_model : {"linear", "logistic"}
        ``"logistic"`` (0/1 outcomes) uses the g-formula; effects are then on the probability scale.
    interaction : bool
        Add treatment × mediator terms to the outcome model.
    ordered : bool
        Two mediators causally ordered as listed: reports ``indirect[m1]``, ``indirect[m1->m2]``,
        ``indirect[m2]`` (linear path-specific effects).
    treatment_type : {"auto", "categorical", "continuous"}
    level : {"sample", "run"}, optional
        Level of the table (default: ``table.attrs["level"]`` or inferred from the clusters).

    Returns
    -------
    MediationResult
        ``.summary()`` has one row per outcome and effect: ``total``, ``direct`` (pure natural direct effect),
        ``indirect`` (total natural indirect effect through all mediators), ``indirect[m]`` (per mediator when
        there are several), ``prop_mediated`` (= indirect / total).

    Raises
    ------
    QueryError
        Bad columns or levels, NaN, a treatment with one level, too few clusters to resample, unsupported
        combinations of options.

    Warns
    -----
    FewClustersWarning
        Fewer than `MIN_CLUSTERS_PER_ARM` clusters in a treatment arm (categorical) or fewer than
        `MIN_CLUSTERS_CONTINUOUS` clusters (continuous) with a cluster bootstrap.

    References
    ----------
    Pearl (2001), Direct and indirect effects. Imai, Keele & Tingley (2010), A general approach to causal
    mediation analysis, Psychological Methods 15(4). Imai, Keele & Yamamoto (2010), Statistical Science 25(1).
    VanderWeele (2015), Explanation in Causal Inference. Field & Welsh (2007), Bootstrapping clustered data,
    JRSS-B 69(3).
    """
    _check_options(method, bootstrap, outcome_model, n_boot, ci_level)
    rng = _as_rng(rng)
    if level is None and isinstance(table, pd.DataFrame):
        level = table.attrs.get("level")
    design = build_design(table, treatment=treatment, mediators=mediators, outcome=outcome, control=control,
                          treated=treated, covariates=covariates, cluster=cluster, treatment_type=treatment_type,
                          level=level, bootstrap=bootstrap, outcome_model=outcome_model)
    K = design.M.shape[1]
    if method in ("statsmodels", "dowhy") and K != 1:
        raise QueryError(f"method={method!r} supports a single mediator, got {K} ({design.mediators}); use "
                         "method='regression' for several mediators")
    if method == "dowhy" and (outcome_model != "linear" or interaction):
        raise QueryError("method='dowhy' (two-stage regression) needs outcome_model='linear' and "
                         "interaction=False")
    if method == "statsmodels" and ordered:
        raise QueryError("method='statsmodels' does not take ordered mediators")
    notes = list(design.notes)
    if design.n_dropped:
        notes.append(f"{design.n_dropped} rows with other levels of {treatment!r} were left out")
    if n_boot > 0:
        _few_clusters_warning(design, bootstrap, method, notes)

    est = LinearMediation(design, outcome_model=outcome_model, interaction=interaction, ordered=ordered)
    point, po = est.point()
    reps, po_reps, n_failed = _replicates(est, design, bootstrap, n_boot, rng) if (
        method != "statsmodels" and n_boot > 0) else (np.empty((0,) + point.shape), None, 0)
    if n_failed:
        notes.append(f"{n_failed} of {n_boot} bootstrap replicates were singular and were dropped")
        warnings.warn(f"{n_failed} of {n_boot} bootstrap replicates had a singular design and were dropped",
                      RuntimeWarning, stacklevel=2)
    lo, hi = percentile_ci(reps, ci_level)
    pv = bootstrap_pvalue(reps) if reps.shape[0] else np.full(point.shape, np.nan)
    resampling_unit, resampling = _resampling_text(design, bootstrap, reps.shape[0], ci_level)
    estimator = _estimator_text(design, outcome_model, interaction, ordered)
    p_method = P_VALUE_METHOD

    if method == "statsmodels":
        from ._backends import statsmodels_mediation

        point, lo, hi, pv, sm_note = statsmodels_mediation(design, est.names, outcome_model, interaction,
                                                          max(n_boot, 2), rng, ci_level)
        estimator = ("statsmodels.stats.mediation.Mediation (Imai, Keele & Tingley 2010, algorithm 1: "
                     f"{'OLS' if outcome_model == 'linear' else 'binomial GLM'} outcome, OLS mediator; estimates "
                     "are means over simulations)")
        resampling_unit = "per-sample parametric simulation"
        resampling = (f"statsmodels parametric simulation ({max(n_boot, 2)} draws of the model coefficients from "
                      "their per-sample (iid) sampling distribution) — the intervals ignore clustering by "
                      f"{design.cluster or 'cluster'}; compare with method='regression'")
        p_method = "statsmodels: 2 × the smaller share of simulated effects on either side of 0"
        notes.append(sm_note)
    elif method == "dowhy":
        from ._backends import dowhy_point

        dw = dowhy_point(design)
        names = est.names
        regression_point = point.copy()
        for l in range(len(design.outcomes)):
            point[names.index("direct"), l] = dw["direct"][l]
            point[names.index("indirect"), l] = dw["indirect"][l]
            point[names.index("total"), l] = dw["direct"][l] + dw["indirect"][l]
            point[names.index("prop_mediated"), l] = dw["indirect"][l] / point[names.index("total"), l]
        gap = float(np.nanmax(np.abs(point - regression_point)))
        estimator = ("DoWhy CausalModel (graph: treatment → mediator → outcome, treatment → outcome, "
                     "covariates → all), estimands nonparametric-nde / nonparametric-nie, method "
                     "mediation.two_stage_regression (linear first and second stage); agrees with "
                     f"method='regression' to {gap:.1e}")
        resampling = resampling + " of the equivalent linear models (method='regression'); DoWhy gives the points"

    table_rows = summary_rows(design, est.names, point, lo, hi, pv, n_samples=design.n)
    summary = pd.DataFrame(table_rows)

    if outcome_model == "linear":
        sens, curve, sens_method = rho_sensitivity_table(est, design, point, interaction=interaction,
                                                         ordered=ordered)
    else:
        sens, curve = _evalues(design, po, po_reps, ci_level), pd.DataFrame()
        sens_method = ("mediational E-values (Smith & VanderWeele 2019) on the risk-ratio scale: how strongly an "
                       "unmeasured mediator–outcome confounder would have to be associated with both to explain "
                       "the effect away")

    coefs = {k: float(v) for k, v in est.coefficients().items()}
    return MediationResult(
        table=summary, method=method, estimator=estimator, resampling_unit=resampling_unit, resampling=resampling,
        n_clusters=design.n_clusters, clusters_per_arm=dict(design.clusters_per_arm), n_runs=design.n_runs,
        n_samples=design.n, n_boot=int(reps.shape[0]) if method != "statsmodels" else max(n_boot, 2),
        ci_level=float(ci_level), p_value_method=p_method, level=design.level, treatment=design.treatment,
        control=design.control_label, treated=design.treated_label, mediators=list(design.mediators),
        outcomes=list(design.outcomes), covariates=list(design.covariates), effect_names=list(est.names),
        sensitivity=sens.reset_index(drop=True), sensitivity_curve=curve, sensitivity_method=sens_method,
        replicates=reps, coefficients=coefs, notes=notes, _design=design,
        _options=dict(outcome_model=outcome_model, interaction=interaction, ordered=ordered, bootstrap=bootstrap))


def summary_rows(design: Design, names: list[str], point: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 pv: np.ndarray, *, n_samples: int) -> list[dict[str, Any]]:
    """Rows of `MediationResult.summary()`: one per (outcome, effect); arrays are (effect, outcome)."""
    return [dict(outcome=y, effect=name, estimate=float(point[e, l]), ci_low=float(lo[e, l]),
                 ci_high=float(hi[e, l]), p_value=float(pv[e, l]), n_runs=design.n_runs, n_samples=n_samples)
            for l, y in enumerate(design.outcomes) for e, name in enumerate(names)]


def rho_sensitivity_table(est: LinearMediation, design: Design, point: np.ndarray, *, interaction: bool,
                          ordered: bool) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Imai's ρ sensitivity of a linear fit: (table per outcome × mediator, ρ curve, description)."""
    K = design.M.shape[1]  # (rows, mediators); zero rows for a design built from sufficient statistics
    sens, curve = est.rho_sensitivity()
    for row in range(len(sens)):
        o, m = sens.loc[row, "outcome"], sens.loc[row, "mediator"]
        key = None if ordered else ("indirect" if K == 1 else f"indirect[{m}]")
        sens.loc[row, "indirect"] = point[est.names.index("indirect"), design.outcomes.index(o)]
        sens.loc[row, "indirect_path"] = (point[est.names.index(key), design.outcomes.index(o)] if key else np.nan)
    sens = sens[["outcome", "mediator", "indirect", "indirect_path", "rho_tilde", "rho_at_zero_path",
                 "rho_at_zero_indirect"]]
    method = ("Imai, Keele & Yamamoto (2010) ρ: correlation of mediator- and outcome-model errors from an "
              "unmeasured mediator–outcome confounder; linear models"
              + (" without the interaction terms" if interaction else "")
              + ("; parallel decomposition (per-mediator paths assume no ordering)" if ordered else "")
              + ". rho_at_zero_*: the ρ at which the effect would be 0")
    return sens, curve, method


def _few_clusters_warning(design: Design, bootstrap: str, method: str, notes: list[str]) -> None:
    if bootstrap == "naive" or method == "statsmodels":
        return
    if design.treatment_kind == "categorical":
        few = {k: v for k, v in design.clusters_per_arm.items() if v < MIN_CLUSTERS_PER_ARM}
        if few:
            msg = (f"only {few} clusters ({design.cluster}) in a treatment arm (recommended: >= "
                   f"{MIN_CLUSTERS_PER_ARM} per arm); cluster-bootstrap intervals with so few clusters are too "
                   "narrow — read them as rough, and add runs (seeds) if you can")
    else:
        few = design.n_clusters < MIN_CLUSTERS_CONTINUOUS
        msg = (f"only {design.n_clusters} clusters ({design.cluster}) (recommended: >= {MIN_CLUSTERS_CONTINUOUS} for a "
               "continuous treatment); cluster-bootstrap intervals with so few clusters are too narrow")
    if few:
        notes.append(msg)
        warnings.warn(msg, FewClustersWarning, stacklevel=3)


def _replicates(est: LinearMediation, design: Design, scheme: str, B: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray | None, int]:
    reps, pos = [], []
    rs = row_strata(design.T, design.treatment_kind == "categorical") if scheme == "naive" else None
    for batch in replicate_batches(scheme, codes=design.codes, n_clusters=design.n_clusters, strata=design.strata,
                                   row_strata=rs, B=B, rng=rng, batch_size=est.batch_size()):
        eff, po = est.replicate(batch)
        reps.append(eff)
        if po is not None:
            pos.append(po)
    out = np.concatenate(reps, axis=0)
    bad = ~np.isfinite(out[:, :3]).all(axis=(1, 2))
    po_out = np.concatenate(pos, axis=0)[~bad] if pos else None
    return out[~bad], po_out, int(bad.sum())


def _resampling_text(design: Design, scheme: str, B: int, level: float) -> tuple[str, str]:
    pct = f"{100 * level:g}%"
    cl = design.cluster or "row"
    if scheme == "cluster":
        unit = f"cluster ({cl})"
        text = (f"{pct} percentile intervals from a cluster bootstrap over {cl} ({B} replicates, "
                f"{design.n_clusters} clusters, {design.strata_note})")
    elif scheme == "cluster+samples":
        unit = f"two-stage ({cl}, then samples)"
        text = (f"{pct} percentile intervals from a two-stage bootstrap: {cl} clusters with replacement "
                f"({design.strata_note}), then samples with replacement within each drawn cluster ({B} replicates, "
                f"{design.n_clusters} clusters)")
    else:
        unit = "naive per-sample"
        text = (f"{pct} percentile intervals from a NAIVE per-sample bootstrap ({B} replicates, rows resampled "
                "within treatment arms) that ignores clustering"
                + (f" by {design.cluster}: the treatment is assigned per {design.cluster}, so these intervals are "
                   "too narrow when clusters differ" if design.cluster else ""))
    return unit, text


def _estimator_text(design: Design, outcome_model: str, interaction: bool, ordered: bool) -> str:
    K = design.M.shape[1]
    med = "OLS mediator model" + ("s" if K > 1 else "") + (" (causally ordered: second on first)" if ordered else
                                                           (" (parallel)" if K > 1 else ""))
    if outcome_model == "linear":
        out = "OLS outcome model" + (" with treatment × mediator terms" if interaction else "")
        how = ("closed form (product of coefficients)" if not interaction
               else "closed form from the g-formula of the linear models")
    else:
        out = "logistic outcome model" + (" with treatment × mediator terms" if interaction else "")
        how = "g-formula averaging predicted probabilities over the rows with counterfactual mediators"
    cmp = (f"{design.treatment} = {design.treated_label!r} vs {design.control_label!r}"
           if design.treatment_kind == "categorical"
           else f"{design.treatment} from {design.t0:g} to {design.t1:g}")
    cov = f"; covariates: {', '.join(design.covariates)}" if design.covariates else ""
    return (f"regression: {med}, {out}; {how}; {cmp}; direct = pure natural direct effect, indirect = total "
            f"natural indirect effect{cov}")


def _evalue(rr: np.ndarray) -> np.ndarray:
    rr = np.asarray(rr, dtype=float)
    r = np.where(rr >= 1, rr, 1.0 / rr)
    return r + np.sqrt(r * (r - 1.0))


def _evalues(design: Design, po: np.ndarray | None, po_reps: np.ndarray | None, level: float) -> pd.DataFrame:
    """Mediational E-values (Smith & VanderWeele 2019) for the direct and indirect effects (risk-ratio scale)."""
    rows = []
    if po is None:
        return pd.DataFrame()
    for l, y in enumerate(design.outcomes):
        for name, num, den in (("direct", 1, 0), ("indirect", 2, 1)):
            with np.errstate(divide="ignore", invalid="ignore"):
                rr = po[num, l] / po[den, l]
                if po_reps is not None and len(po_reps):
                    rr_reps = po_reps[:, num, l] / po_reps[:, den, l]
                    lo, hi = percentile_ci(rr_reps[:, None], level)
                    lo, hi = float(lo[0]), float(hi[0])
                else:
                    lo = hi = np.nan
            ev = float(_evalue(rr))
            if np.isnan(lo):
                ev_ci = np.nan
            elif lo <= 1 <= hi:
                ev_ci = 1.0
            else:
                ev_ci = float(_evalue(lo if rr >= 1 else hi))
            rows.append(dict(outcome=y, effect=name, risk_ratio=float(rr), rr_ci_low=lo, rr_ci_high=hi,
                             e_value=ev, e_value_ci=ev_ci))
    return pd.DataFrame(rows)
