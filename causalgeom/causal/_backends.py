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
from ._design import Design

__all__ = ["statsmodels_mediation", "dowhy_point", "refute", "REFUTERS"]

#: DoWhy refuters run by `refute` (names of ``CausalModel.refute_estimate``'s ``method_name``).
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
    family = sm.families.Binomial() if outcome_model == "logistic" else None
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
    """Run DoWhy's refuters on the direct and indirect effects of a `MediationResult`.

    Parameters
    ----------
    result : MediationResult
        From `causalgeom.causal.mediate` (any method) with a linear outcome model without interaction. DoWhy's
        mediation estimator takes one mediator: with several, each mediator is refuted in its own
        single-mediator model (the ``mediator`` column says which; its indirect effect is then the effect
        through that mediator alone, not ``indirect[m]`` of the joint model).
    methods : tuple of str
        Any of ``"placebo_treatment_refuter"`` (treatment permuted across rows: effects should vanish),
        ``"random_common_cause"`` (an independent random covariate added: effects should not move),
        ``"data_subset_refuter"`` (re-estimated on random subsets: effects should not move).
    num_simulations : int
        Simulations per refuter (DoWhy's default is 100; kept small because the sample table is large).
    rng : numpy.random.Generator or int or None
        Seeds DoWhy's ``random_state``.
    subset_fraction : float
        Fraction of rows kept by the data-subset refuter.
    alpha : float
        Level of DoWhy's significance test behind ``passed``.

    Returns
    -------
    pandas.DataFrame
        ``outcome, mediator, effect, refuter, estimate, new_effect, p_value, passed`` — ``passed`` is True when
        DoWhy's test does not reject (placebo: the placebo effects are compatible with 0; others: the new effects
        are compatible with the estimate). The table is also stored as ``result.refutations``.

    Notes
    -----
    DoWhy's refuters resample and permute rows (samples), not runs: they probe the model, not the cluster
    design; read them with that in mind.
    """
    design = getattr(result, "_design", None)
    if design is None:
        raise QueryError("refute: expected a MediationResult from causalgeom.causal.mediate")
    if result._options.get("outcome_model", "linear") != "linear" or result._options.get("interaction"):
        raise QueryError("refute: needs a result with outcome_model='linear' and interaction=False")
    unknown = [m for m in methods if m not in REFUTERS]
    if unknown:
        raise QueryError(f"refute: unknown refuter(s) {unknown}; allowed: {list(REFUTERS)}")
    if isinstance(rng, np.random.Generator):
        seed = int(rng.integers(2**31 - 1))
    elif rng is None or isinstance(rng, (int, np.integer)):
        seed = int(np.random.default_rng(rng).integers(2**31 - 1))
    else:
        raise QueryError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}")
    rows = []
    with _quiet():
        for l, y in enumerate(design.outcomes):
            for j, med in enumerate(design.mediators):
                for kind, name in (("nde", "direct"), ("nie", "indirect")):
                    model, estimand, estimate = _fit_dowhy(design, l, kind, j)
                    for i, method in enumerate(methods):
                        kw: dict[str, Any] = dict(num_simulations=num_simulations,
                                                  random_state=np.random.RandomState((seed + 7919 * i) % 2**31))
                        if method == "placebo_treatment_refuter":
                            kw["placebo_type"] = "permute"
                        if method == "data_subset_refuter":
                            kw["subset_fraction"] = subset_fraction
                        ref = model.refute_estimate(estimand, estimate, method_name=method, **kw)
                        p = (ref.refutation_result or {}).get("p_value", np.nan)
                        p = float(np.asarray(p).ravel()[0]) if p is not None else np.nan
                        rows.append(dict(outcome=y, mediator=med, effect=name, refuter=method,
                                         estimate=float(estimate.value), new_effect=float(ref.new_effect),
                                         p_value=p, passed=bool(np.isnan(p) or p >= alpha)))
    out = pd.DataFrame(rows)
    result.refutations = out
    return out
