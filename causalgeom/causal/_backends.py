"""Outside estimators: statsmodels ``Mediation`` and DoWhy (graph, NDE/NIE estimands, refuters). Imported lazily."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..errors import QueryError
from .design import Design

__all__ = ["statsmodels_mediation", "dowhy_point", "refute", "REFUTERS"]

# refute() re-estimates through .estimators and .mediation (imported inside it)

#: Refuters run by `refute`: run-level placebo and run-subset refuters (this package), DoWhy's random common cause.
REFUTERS = ("placebo_treatment_refuter", "random_common_cause", "data_subset_refuter")


def _exog(design: Design, with_mediator: bool) -> np.ndarray:
    """Design matrices with the treatment rescaled so that 0 = control and 1 = treated."""
    ts = (design.T - design.t0) / (design.t1 - design.t0)
    cols = [np.ones(design.n), ts]
    if with_mediator:
        cols.append(design.M[:, 0])
    cols += [design.X[:, j] for j in range(design.X.shape[1])]
    return np.column_stack(cols)


def statsmodels_mediation(design: Design, names: list[str], outcome_model: str, interaction: bool, n_rep: int,
                          rng: np.random.Generator, ci_level: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Run :class:`statsmodels.stats.mediation.Mediation` for every outcome (one mediator).

    The treatment is rescaled to ``(T - t0) / (t1 - t0)`` so statsmodels' exposure values 0 and 1 are the control
    and treated values. Mapping: ``direct`` = ADE (control), ``indirect`` = ACME (treated), ``total`` = total
    effect, ``prop_mediated`` = proportion mediated (treated) — the same estimands as the ``"regression"``
    method (pure NDE, total NIE).

    Returns
    -------
    point, low, high, p : ndarray, shape (E, L)
    note : str
    """
    import statsmodels.api as sm
    from statsmodels.stats.mediation import Mediation

    E, L = len(names), len(design.outcomes)
    point, lo, hi, pv = (np.full((E, L), np.nan) for _ in range(4))
    rows = {"total": "Total effect", "direct": "ADE (control)", "indirect": "ACME (treated)",
            "prop_mediated": "Prop. mediated (treated)"}
    family = (sm.families.Binomial() if outcome_model == "logistic" else
              sm.families.Binomial(link=sm.families.links.Probit()) if outcome_model == "probit" else None)
    for l in range(L):
        y = design.Y[:, l]
        if interaction:
            df = pd.DataFrame(_exog(design, True)[:, 1:], columns=["t", "m"] + [f"x{j}" for j in
                                                                               range(design.X.shape[1])])
            df["y"] = y
            rhs = " + ".join(["t * m"] + [f"x{j}" for j in range(design.X.shape[1])])
            mrhs = " + ".join(["t"] + [f"x{j}" for j in range(design.X.shape[1])])
            om = (sm.GLM.from_formula(f"y ~ {rhs}", df, family=family) if family is not None
                  else sm.OLS.from_formula(f"y ~ {rhs}", df))
            mm = sm.OLS.from_formula(f"m ~ {mrhs}", df)
            med = Mediation(om, mm, "t", "m")
        else:
            ox = _exog(design, True)
            om = sm.GLM(y, ox, family=family) if family is not None else sm.OLS(y, ox)
            mm = sm.OLS(design.M[:, 0], _exog(design, False))
            med = Mediation(om, mm, (1, 1), 2)
        res = med.fit(method="parametric", n_rep=n_rep, rng=rng)
        tab = res.summary(alpha=1.0 - ci_level)
        for e, name in enumerate(names):
            if name in rows:
                r = tab.loc[rows[name]]
                point[e, l], lo[e, l], hi[e, l], pv[e, l] = (float(r["Estimate"]), float(r["Lower CI bound"]),
                                                             float(r["Upper CI bound"]), float(r["P-value"]))
    note = ("statsmodels Mediation: point estimates are Monte Carlo means over the simulated coefficients, so they "
            "differ from the exact product of coefficients by simulation noise")
    return point, lo, hi, pv, note


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # import first: statsmodels adds "always" warning filters when imported, which would override ours
    import dowhy  # noqa: F401
    import statsmodels.api  # noqa: F401

    loggers = [logging.getLogger(n) for n in ("dowhy", "dowhy.causal_model", "dowhy.causal_estimator",
                                              "dowhy.causal_identifier", "dowhy.causal_refuters")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)  # DoWhy logs a missing pygraphviz as an ERROR before falling back
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)


def _dowhy_frame(design: Design, l: int, j: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """DoWhy's data: the treatment rescaled to (T - t0) / (t1 - t0), so control = 0 and treated = 1.

    DoWhy 0.14's two-stage estimator evaluates the second stage (mediator → outcome) between the same control and
    treatment values as the first, so its NIE is ``a Δ · b Δ`` unless ``Δ = 1``; with the rescaled treatment
    ``Δ = 1`` and the effects are those of the original contrast.
    """
    xs = [f"W{j + 1}" for j in range(design.X.shape[1])]
    ts = (design.T - design.t0) / (design.t1 - design.t0)
    df = pd.DataFrame({"T": ts.astype(float), "M": design.M[:, j].astype(float),
                       "Y": design.Y[:, l].astype(float)})
    for j, x in enumerate(xs):
        df[x] = design.X[:, j]
    return df, xs


def _graph(xs: list[str]) -> str:
    edges = ["T -> M;", "M -> Y;", "T -> Y;"] + [f"{x} -> T; {x} -> M; {x} -> Y;" for x in xs]
    return "digraph { " + " ".join(edges) + " }"


def _refitting_estimator_class() -> type:
    """TwoStageRegressionEstimator whose refuter copies are refitted from scratch.

    DoWhy 0.14's ``get_new_estimator_object`` deep-copies the estimator together with its fitted first- and
    second-stage models, whose estimands still name the original treatment and adjustment set — so the placebo
    and random-common-cause refuters would re-estimate the original effect. This subclass builds fresh
    sub-models from the refuter's estimand, carrying the refuter's extra adjustment variables (``w_random``)
    into both stages.
    """
    from dowhy.causal_estimators.linear_regression_estimator import LinearRegressionEstimator
    from dowhy.causal_estimators.two_stage_regression_estimator import TwoStageRegressionEstimator

    class _RefittingTwoStage(TwoStageRegressionEstimator):
        def get_new_estimator_object(self, identified_estimand: Any, test_significance: bool = False,
                                     evaluate_effect_strength: bool = False, confidence_intervals: Any = None) -> Any:
            # IdentifiedEstimand.__deepcopy__ (DoWhy 0.14) drops the mediation adjustment sets: take them from
            # the estimand this estimator was built with, plus what the refuter added (w_random)
            est = copy.deepcopy(identified_estimand)
            orig = self._target_estimand
            est.mediation_first_stage_confounders = copy.deepcopy(orig.mediation_first_stage_confounders)
            est.mediation_second_stage_confounders = copy.deepcopy(orig.mediation_second_stage_confounders)
            base = set((orig.backdoor_variables or {}).get("backdoor", []) or [])
            extra = [v for v in ((est.backdoor_variables or {}).get("mediation") or []) if v not in base]
            if extra:
                for attr in ("mediation_first_stage_confounders", "mediation_second_stage_confounders",
                             "backdoor_variables"):
                    d = dict(getattr(est, attr) or {})
                    d["backdoor"] = list(d.get("backdoor", []) or []) + extra
                    setattr(est, attr, d)
            return _RefittingTwoStage(est, first_stage_model=LinearRegressionEstimator,
                                      second_stage_model=LinearRegressionEstimator)

    return _RefittingTwoStage


def _fit_dowhy(design: Design, l: int, kind: str, j: int = 0) -> tuple[Any, Any, Any]:
    """Model, identified estimand and estimate of ``kind`` ("nde" or "nie") for outcome ``l``, mediator ``j``."""
    from dowhy import CausalModel
    from dowhy.causal_estimators.linear_regression_estimator import LinearRegressionEstimator

    df, xs = _dowhy_frame(design, l, j)
    model = CausalModel(data=df, treatment="T", outcome="Y", graph=_graph(xs))
    estimand = model.identify_effect(estimand_type=f"nonparametric-{kind}")
    if not estimand.mediator_variables or estimand.mediator_variables != ["M"]:
        raise QueryError(f"DoWhy did not identify the mediator in the graph (got {estimand.mediator_variables})")
    estimand.set_identifier_method("mediation")
    # the refuters read the adjustment set through default_backdoor_id, which DoWhy leaves unset for mediation
    if estimand.default_backdoor_id is None:
        estimand.default_backdoor_id = "backdoor"
    cls = _refitting_estimator_class()
    estimator = cls(estimand, first_stage_model=LinearRegressionEstimator,
                    second_stage_model=LinearRegressionEstimator)
    estimator.fit(df)
    estimate = estimator.estimate_effect(df, control_value=0.0, treatment_value=1.0)
    return model, estimand, estimate


def dowhy_point(design: Design) -> dict[str, list[float]]:
    """DoWhy point estimates of the natural direct (NDE) and indirect (NIE) effects for every outcome."""
    out: dict[str, list[float]] = {"direct": [], "indirect": []}
    with _quiet():
        for l in range(len(design.outcomes)):
            for kind, key in (("nde", "direct"), ("nie", "indirect")):
                _, _, est = _fit_dowhy(design, l, kind)
                out[key].append(float(est.value))
    return out


def refute(result: Any, *, methods: tuple[str, ...] = REFUTERS, num_simulations: int = 20,
           rng: np.random.Generator | int | None = 0, subset_fraction: float = 0.8, alpha: float = 0.05
           ) -> pd.DataFrame:
    """Refuters of the direct and indirect effects of a `MediationResult` that respect the run design.

    Parameters
    ----------
    result : MediationResult
        From `causalgeom.causal.mediate` (method ``"regression"`` models are refitted, whatever ``method`` was).
    methods : tuple of str
        ``"placebo_treatment_refuter"``: the treatment labels are permuted **across runs** (never images), all
        relabelings when there are at most ``num_simulations`` of them, else ``num_simulations`` random ones; the
        effects are re-estimated with the same models and pairing. ``new_effect`` is the mean placebo effect,
        ``p_value`` the randomization p-value of the original estimate among the placebo ones (share with
        ``|placebo| >= |estimate|``, the observed labelling included); passed when ``p_value <= alpha``.
        When the design cannot reach ``alpha`` (3 + 3 runs: the smallest p-value is 0.1) the status is
        "inconclusive", not "failed".
        ``"data_subset_refuter"``: **runs** are dropped — ``num_simulations`` random subsets keeping
        ``subset_fraction`` of the runs of each arm (at least 2) — and the effects re-estimated; ``p_value`` is
        the normal-approximation p-value of the estimate among the subset estimates (DoWhy's test); passed when
        ``p_value >= alpha``. Not run when an arm has fewer than 3 runs.
        ``"random_common_cause"``: DoWhy's refuter (an independent random covariate added; linear outcome without
        interaction, one mediator at a time as DoWhy's mediation estimator takes one mediator).
    num_simulations : int
        Relabelings, subsets or DoWhy simulations per refuter.
    rng : numpy.random.Generator or int or None
    subset_fraction : float
        Share of the runs of each arm kept by the subset refuter.
    alpha : float
        Level of the tests behind ``passed``.

    Returns
    -------
    pandas.DataFrame
        ``outcome, mediator, effect, refuter, estimate, new_effect, p_value, passed, status``. ``status`` is
        "passed", "failed", "inconclusive" or "not run" (with the reason after a colon); ``passed`` is True,
        False or None (not run / inconclusive) — a missing p-value never reads as passed. Also stored as
        ``result.refutations``.
    """
    design = getattr(result, "_design", None)
    if design is None:
        raise QueryError("refute: expected a MediationResult from causalgeom.causal.mediate (with its design; "
                         "results of mediate_study have no per-sample rows)")
    unknown = [m for m in methods if m not in REFUTERS]
    if unknown:
        raise QueryError(f"refute: unknown refuter(s) {unknown}; allowed: {list(REFUTERS)}")
    if "random_common_cause" in methods and (result._options.get("outcome_model", "linear") != "linear"
                                             or result._options.get("interaction")):
        raise QueryError("refute: random_common_cause (DoWhy) needs a result with outcome_model='linear' and "
                         "interaction=False; choose methods=('placebo_treatment_refuter', 'data_subset_refuter')")
    if isinstance(rng, np.random.Generator):
        gen = rng
    elif rng is None or isinstance(rng, (int, np.integer)):
        gen = np.random.default_rng(rng)
    else:
        raise QueryError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}")
    from .estimators import LinearMediation

    opts = result._options
    est = LinearMediation(design, outcome_model=opts.get("outcome_model", "linear"),
                          interaction=opts.get("interaction", False), ordered=opts.get("ordered", False),
                          paired=opts.get("paired"), slope=opts.get("slope", "pooled"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = est.point()[0]
    names = est.names
    keep = [e for e, n in enumerate(names) if n == "direct" or n.startswith("indirect")]
    rows: list[dict[str, Any]] = []

    def add(refuter: str, new: np.ndarray | None, p: np.ndarray | None, status_of: Any) -> None:
        for l, y in enumerate(design.outcomes):
            for e in keep:
                pe = np.nan if p is None else float(p[e, l])
                st = status_of(pe)
                rows.append(dict(outcome=y, mediator=", ".join(design.mediators), effect=names[e], refuter=refuter,
                                 estimate=float(point[e, l]), new_effect=np.nan if new is None else float(new[e, l]),
                                 p_value=pe, passed=True if st == "passed" else (False if st == "failed" else None),
                                 status=st))

    for method in methods:
        if method == "placebo_treatment_refuter":
            why = None
            if design.estimand != "runs" or design.run_T is None:
                why = "not run: the treatment cannot be permuted across runs (one run per arm, or it varies within runs)"
            if why:
                add(method, None, None, lambda p, w=why: w)
                continue
            from .inference import randomization_floor, randomization_pvalue, relabelings

            floor, C = randomization_floor(design.run_T)
            labels, exact = relabelings(design.run_T, num_simulations, gen)
            if exact and labels.shape[0] > num_simulations + 1:
                labels, exact = np.stack([gen.permutation(design.run_T) for _ in range(num_simulations)]), False
            null = est.relabeled(labels)
            if null is None:
                null = np.stack([est.refit_relabeled(lab) for lab in labels])
            p = randomization_pvalue(point, null, exact)
            p_min = floor if exact else 1.0 / (labels.shape[0] + 1)
            add(method, np.nanmean(null, axis=0), p,
                lambda pe, m=p_min: ("not run: no p-value" if np.isnan(pe) else "passed" if pe <= alpha else
                                     (f"inconclusive: the smallest p-value this design gives is {m:.3g} > "
                                      f"alpha = {alpha:g}" if m > alpha else "failed")))
        elif method == "data_subset_refuter":
            if design.estimand != "runs" or design.run_T is None:
                add(method, None, None, lambda p: "not run: runs cannot be dropped (one run per arm)")
                continue
            arms = [np.flatnonzero(design.run_T == v) for v in np.unique(design.run_T)]
            sizes = [max(2, int(round(subset_fraction * a.size))) for a in arms]
            if any(a.size < 3 or k >= a.size for a, k in zip(arms, sizes)):
                add(method, None, None, lambda p: "not run: fewer than 3 runs in an arm, none can be dropped")
                continue
            reps = []
            for _ in range(num_simulations):
                kept = np.concatenate([gen.choice(a, size=k, replace=False) for a, k in zip(arms, sizes)])
                reps.append(_subset_point(est, design, kept))
            reps = np.stack(reps)
            mean, sd = np.nanmean(reps, 0), np.nanstd(reps, 0, ddof=1)
            from scipy import stats

            with np.errstate(divide="ignore", invalid="ignore"):
                p = 2 * stats.norm.sf(np.abs(point - mean) / sd)
            add(method, mean, p, lambda pe: "not run: no p-value" if np.isnan(pe) else
                ("passed" if pe >= alpha else "failed"))
        else:
            rows += _dowhy_random_common_cause(design, num_simulations, int(gen.integers(2**31 - 1)), alpha)
    out = pd.DataFrame(rows, columns=["outcome", "mediator", "effect", "refuter", "estimate", "new_effect", "p_value",
                                      "passed", "status"])
    result.refutations = out
    return out


def _subset_point(est: Any, design: Design, kept_runs: np.ndarray) -> np.ndarray:
    """Point estimate on the rows of the runs ``kept_runs`` (same models and pairing)."""
    import dataclasses

    from .estimators import LinearMediation

    rows = np.isin(design.run_codes, kept_runs)
    remap = np.full(int(design.run_codes.max()) + 1, -1)
    remap[np.sort(kept_runs)] = np.arange(kept_runs.size)
    codes = remap[design.run_codes[rows]]
    d2 = dataclasses.replace(design, T=design.T[rows], M=design.M[rows], X=design.X[rows], Y=design.Y[rows],
                             codes=codes, run_codes=codes, cluster_names=design.cluster_names[np.sort(kept_runs)],
                             run_T=design.run_T[np.sort(kept_runs)],
                             images=None if design.images is None else design.images[rows])
    e2 = LinearMediation(d2, outcome_model=est.outcome_model, interaction=est.interaction, ordered=est.ordered,
                         paired=est.paired, slope=est.slope)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return e2.point()[0]


def _dowhy_random_common_cause(design: Design, num_simulations: int, seed: int, alpha: float) -> list[dict]:
    """DoWhy's random-common-cause refuter, one single-mediator model per mediator (unpaired rows)."""
    rows = []
    with _quiet():
        for l, y in enumerate(design.outcomes):
            for j, med in enumerate(design.mediators):
                for kind, name in (("nde", "direct"), ("nie", "indirect")):
                    model, estimand, estimate = _fit_dowhy(design, l, kind, j)
                    ref = model.refute_estimate(estimand, estimate, method_name="random_common_cause",
                                                num_simulations=num_simulations,
                                                random_state=np.random.RandomState(seed % 2**31))
                    p = (ref.refutation_result or {}).get("p_value", np.nan)
                    p = float(np.asarray(p).ravel()[0]) if p is not None else np.nan
                    status = "not run: DoWhy gave no p-value" if np.isnan(p) else ("passed" if p >= alpha else
                                                                                    "failed")
                    rows.append(dict(outcome=y, mediator=med, effect=name, refuter="random_common_cause",
                                     estimate=float(estimate.value), new_effect=float(ref.new_effect), p_value=p,
                                     passed=True if status == "passed" else (False if status == "failed" else None),
                                     status=status))
    return rows
