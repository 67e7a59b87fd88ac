# Over 600 lines on purpose: one concern (`mediate` and its result object): the question's checks, the design, the engines' dispatch and the result's faces.
"""`mediate`: natural direct and indirect effects of a treatment through mediators, with cluster-bootstrap CIs."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import QueryError
from .design import MIN_CLUSTERS_CONTINUOUS, MIN_CLUSTERS_PER_ARM, Design, build_design
from .bootstrap import replicate_batches, row_strata
from .estimators import LinearMediation
from .inference import (fieller, floor_words, log_assignments, randomization_floor, randomization_pvalue, relabelings, t_interval,
                        wild_replicates)
from .results import MediationResult, floor_interval_sentence
from .engine import choose_engine, is_study
from .options import DEFAULT_INFERENCE
from .spec import MediationSpec, resolve_inference

__all__ = ["mediate", "FewClustersWarning", "RunConfoundingWarning", "DEFAULT_SLOPE", "RUN_TEST_ALPHA",
           "run_confounding", "percentile_ci", "bootstrap_pvalue", "P_VALUE_METHOD",
           "DEFAULT_INFERENCE", "OVERLAP_THRESHOLD", "build_result", "run_inference", "overlap_table",
           "mediate_table", "estimator_text", "resolve_inference", "InProcessEngine", "IN_PROCESS"]

#: Mediator → outcome slope used when ``slope=`` is not given (see docs/methods_causal.md, "Run-level confounding").
DEFAULT_SLOPE = "pooled"
#: Level of the run-level Mundlak test below which `mediate` warns that the pooled slope mixes run-level
#: confounding into the indirect effect.
RUN_TEST_ALPHA = 0.05
#: A mediator is "supported" when at least this share of each arm's values lies inside the other arm's
#: [1st, 99th] percentile range; otherwise natural effects through it are marked "extrapolated".
OVERLAP_THRESHOLD = 0.5

P_VALUE_METHOD = ("two-sided bootstrap p-value by percentile inversion, p = min(1, 2 min((1 + #{θ* <= 0}), "
                  "(1 + #{θ* >= 0})) / (B + 1)) — the smallest α whose percentile interval excludes 0")


class FewClustersWarning(UserWarning):
    """Too few clusters (runs) per treatment arm for a trustworthy cluster-bootstrap interval."""


class RunConfoundingWarning(UserWarning):
    """The pooled mediator → outcome slope differs from the within-run slope: run-level confounding."""


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


def _as_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise QueryError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}")


def resolve_outcome_model(outcome_model: str, Y: np.ndarray, outcomes: list[str], notes: list[str]) -> str:
    """``"auto"``: logistic when every outcome is 0/1, else linear (with a note when some are 0/1)."""
    if outcome_model != "auto":
        return outcome_model
    binary = [bool(np.isin(Y[:, j], (0.0, 1.0)).all()) for j in range(Y.shape[1])]
    if all(binary):
        notes.append("0/1 outcome: logistic outcome model (outcome_model='auto'); effects are differences of "
                     "probabilities from the g-formula, and total = direct + indirect holds exactly, but the "
                     "per-mediator paths of a logistic model need not add up to the joint indirect effect")
        return "logistic"
    if any(binary):
        notes.append(f"outcomes {[o for o, b in zip(outcomes, binary) if b]} are 0/1 but share a linear "
                     "probability model with the others (outcome_model='auto' needs every outcome 0/1 for a "
                     "logistic model); ask for them separately for a logistic model")
    return "linear"


def mediate(table: Any, *, treatment: str, mediators: str | Sequence[str], outcome: str | Sequence[str],
            control: Any = None, treated: Any = None, covariates: Sequence[str] = (), cluster: str | None = "run_id",
            method: str = "regression", n_boot: int | None = None, rng: np.random.Generator | int | None = None,
            bootstrap: str | None = None, ci_level: float = 0.95, outcome_model: str = "auto",
            interaction: bool = False, ordered: bool = False, treatment_type: str = "auto",
            level: str | None = None, inference: str | None = None, paired_by: str | None = "auto",
            estimand: str = "auto", slope: str | None = None) -> MediationResult:
    """Estimate total, natural direct and natural indirect effects of ``treatment`` on ``outcome``.

    Parameters
    ----------
    table : pandas.DataFrame, shape (n_rows, n_columns), or a causalgeom.Study or study folder
        The analysis table, e.g. ``study.to_frame(level="sample")`` (one row per sample, clustered by run) or
        ``level="run"`` (one row per run). A study: the engine is chosen by its size
        (`causalgeom.causal.engine.choose_engine`, the rule of the command line): in this process on
        ``study.to_frame(level=level)``, or out of core on Dask (`causalgeom.scale.mediate_study`) when
        `causalgeom.scale` is handed in (the package facade does) and the study is at least
        ``causalgeom.scale.DASK_THRESHOLD_ROWS`` rows or a Dask client is active; ``result.engine`` says which.
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
        Pre-treatment common causes (numeric, or categorical → indicator columns), in every model. Not the image
        id ``sample`` (use ``paired_by``).
    cluster : str or None
        Column of the unit that received the treatment (``"run_id"``). ``None``: rows are independent.
    method : {"regression", "statsmodels", "dowhy"}
        ``"regression"``: this package's estimator (`causalgeom.causal.estimators`). ``"statsmodels"``:
        :class:`statsmodels.stats.mediation.Mediation` (one mediator; its own parametric-simulation intervals, per
        sample — they ignore clustering; unpaired). ``"dowhy"``: DoWhy's ``mediation.two_stage_regression`` (one
        mediator, linear outcome, no interaction, unpaired; intervals from this package's inference).
    n_boot : int, optional
        Bootstrap replicates, or random relabelings of a randomization test too large to enumerate
        (statsmodels: simulation replicates); default 1000. With ``inference="bootstrap"``, 0 skips intervals.
        Giving it with ``inference="cr2"`` (and a method other than statsmodels), which resamples nothing, warns
        (`UserWarning`) that it has no effect.
    rng : numpy.random.Generator or int or None
        Source of randomness (an int seeds a new Generator).
    bootstrap : {"cluster", "cluster+samples", "naive", "two-way"}, optional
        Scheme of ``inference="bootstrap"`` (giving it alone selects the bootstrap). ``"cluster"``: clusters with
        replacement within arms. ``"cluster+samples"``: clusters, then samples within drawn clusters.
        ``"naive"``: rows within arms (ignores clusters; labelled as such). ``"two-way"``: runs and images crossed
        (pigeonhole bootstrap; needs pairing by image).
    ci_level : float
        Confidence level of the intervals.
    outcome_model : {"auto", "linear", "logistic", "probit"}
        ``"auto"``: logistic when every outcome is 0/1 (g-formula, effects on the probability scale), else
        linear. ``"probit"``: the probit link (as R's ``mediation`` examples), same g-formula.
    interaction : bool
        Add treatment × mediator terms to the outcome model.
    ordered : bool
        Two mediators causally ordered as listed: reports ``indirect[m1]``, ``indirect[m1->m2]``,
        ``indirect[m2]`` (linear path-specific effects).
    treatment_type : {"auto", "categorical", "continuous"}
    level : {"sample", "run"}, optional
        Level of the table (default: ``table.attrs["level"]`` or inferred from the clusters).
    inference : {"cr2", "permutation", "wild", "bootstrap"}, optional
        ``"cr2"`` (default, see `DEFAULT_INFERENCE`): CR2 cluster-robust standard errors of the model
        coefficients, delta method, Student t intervals with G − 2 degrees of freedom. ``"permutation"``:
        p-values from a run-level randomization test (exact when the relabelings can be enumerated), intervals
        from CR2. ``"wild"``: unrestricted wild cluster bootstrap with Webb weights (``n_boot`` replicates).
        ``"bootstrap"``: percentile intervals of ``bootstrap=`` (the former default). Every p-value is
        at least the design's floor (`causalgeom.causal.inference.randomization_floor`).
    paired_by : {"auto", "sample"} or None
        ``"auto"``: absorb image fixed effects when every run of the compared arms scored the same ``sample``
        ids, else unpaired with the reason stated in ``result.design``; ``"sample"``: require it; ``None``: off.
    estimand : {"auto", "runs", "model"}
        ``"runs"``: the effect over training runs (runs are the population; needs 2+ runs per arm).
        ``"model"``: these models, inference over test images (clusters = images, paired). ``"auto"``: runs,
        or model with a note when an arm has one run.
    slope : {"pooled", "within"}, optional
        Mediator → outcome slope (default `DEFAULT_SLOPE`). ``"pooled"``: from within- and between-run variation
        (after image effects). ``"within"``: from within-run variation only (image + run fixed effects; the run
        means of the mediators enter the outcome model, Mundlak 1978), which removes run-level confounding (a
        run's luck moving both mediator and outcome); linear outcome, no interaction, not ordered, method
        ``"regression"``. Either way ``.run_confounding`` holds the test of between-run = within-run slope
        (the run means' coefficients, CR2 over runs), and when it rejects at `RUN_TEST_ALPHA` with the pooled
        slope, a `RunConfoundingWarning` and a note give the within-run estimate beside the pooled one.

    Returns
    -------
    MediationResult
        ``.summary()`` has one row per outcome and effect: ``total``, ``direct`` (pure natural direct effect),
        ``indirect`` (total natural indirect effect through all mediators), ``indirect[m]`` (per mediator when
        there are several), ``prop_mediated`` (= indirect / total), with ``p_floor`` and ``note``;
        ``.design``, ``.estimand``, ``.inference``, ``.overlap``, ``.mundlak`` say how.

    Raises
    ------
    QueryError
        Bad columns or levels, NaN, a treatment with one level, too few clusters to resample, unsupported
        combinations of options.

    Warns
    -----
    RunConfoundingWarning
        The pooled slope is used and the between-run slope differs from the within-run one (p < `RUN_TEST_ALPHA`).
    FewClustersWarning
        Fewer than `MIN_CLUSTERS_PER_ARM` clusters in a treatment arm (categorical) or fewer than
        `MIN_CLUSTERS_CONTINUOUS` clusters (continuous) with a cluster bootstrap.

    References
    ----------
    Pearl (2001), Direct and indirect effects. Imai, Keele & Tingley (2010), A general approach to causal
    mediation analysis, Psychological Methods 15(4). Imai, Keele & Yamamoto (2010), Statistical Science 25(1).
    VanderWeele (2015), Explanation in Causal Inference. Mundlak (1978), Econometrica 46(1). Bell & McCaffrey
    (2002), Survey Methodology 28(2). Field & Welsh (2007), Bootstrapping clustered data, JRSS-B 69(3).
    """
    spec = MediationSpec(treatment=treatment, mediators=mediators, outcomes=outcome, control=control,
                         treated=treated, covariates=covariates, cluster=cluster, method=method, n_boot=n_boot,
                         bootstrap=bootstrap, ci_level=ci_level, outcome_model=outcome_model,
                         interaction=interaction, ordered=ordered, treatment_type=treatment_type, level=level,
                         inference=inference, paired_by=paired_by, estimand=estimand, slope=slope)
    if n_boot is not None and spec.resolved_inference[0] == "cr2" and method != "statsmodels":
        warnings.warn(f"n_boot= ({n_boot!r}) has no effect under inference='cr2' (the default), which resamples "
                      "nothing; pass inference='wild', inference='bootstrap' or inference='permutation' for "
                      "replicates, or leave n_boot= out",
                      UserWarning, stacklevel=2)
    rng = _as_rng(rng)
    if not isinstance(table, pd.DataFrame):
        if is_study(table):
            return (choose_engine(table, spec).engine or IN_PROCESS).run(spec, table, rng=rng)
    return mediate_table(table, spec, rng=rng)


class InProcessEngine:
    """The estimator on the per-sample table, in this process (``study.to_frame(level=spec.level)`` first)."""

    name = "in-process"

    def problem(self, spec: MediationSpec, data: Any) -> str | None:
        return None

    def run(self, spec: MediationSpec, data: Any, *, rng: np.random.Generator) -> Any:
        if is_study(data):
            from ..dump.study import as_study

            data = as_study(data).to_frame(level=spec.level or "sample", progress=False)
        return mediate_table(data, spec, rng=rng)


#: The in-process engine.
IN_PROCESS = InProcessEngine()


#: The in-process engine.
IN_PROCESS = InProcessEngine()


def mediate_table(table: Any, spec: MediationSpec, *, rng: np.random.Generator) -> MediationResult:
    """The in-process engine: answer ``spec`` on an analysis table (the estimation of `mediate`).

    Parameters
    ----------
    table : pandas.DataFrame
        The analysis table.
    spec : MediationSpec
        The question (validated).
    rng : numpy.random.Generator

    Returns
    -------
    MediationResult
        With ``engine="in-process"``.
    """
    (treatment, control, treated, covariates, cluster, method, ci_level, outcome_model, interaction, ordered,
     treatment_type, level, paired_by, estimand) = (
        spec.treatment, spec.control, spec.treated, list(spec.covariates), spec.cluster, spec.method, spec.ci_level,
        spec.outcome_model, spec.interaction, spec.ordered, spec.treatment_type, spec.level, spec.paired_by,
        spec.estimand)
    mediators, outcome = list(spec.mediators), list(spec.outcomes)
    inference, bootstrap = spec.resolved_inference
    n_boot = 1000 if spec.n_boot is None else spec.n_boot
    slope = DEFAULT_SLOPE if spec.slope is None else spec.slope
    if slope == "within" and method != "regression":
        raise QueryError(f"slope='within' needs method='regression' (got method={method!r})")
    if level is None and isinstance(table, pd.DataFrame):
        level = table.attrs.get("level")
    if method in ("statsmodels", "dowhy") and paired_by == "sample":
        raise QueryError(f"paired_by='sample': method={method!r} fits unpaired models; use method='regression'")
    design = build_design(table, treatment=treatment, mediators=mediators, outcome=outcome, control=control,
                          treated=treated, covariates=covariates, cluster=cluster, treatment_type=treatment_type,
                          level=level, bootstrap=bootstrap if inference == "bootstrap" else "cluster",
                          outcome_model=outcome_model,
                          paired_by=paired_by if method == "regression" else None, estimand=estimand)
    if method != "regression" and paired_by is not None:
        design.design_text = f"unpaired: method={method!r} fits unpaired models"
    notes = list(design.notes)
    outcome_model = resolve_outcome_model(outcome_model, design.Y, design.outcomes, notes)
    if outcome_model in ("logistic", "probit"):
        for j, c in enumerate(design.outcomes):
            if not np.isin(design.Y[:, j], (0.0, 1.0)).all():
                raise QueryError(f"outcome {c!r}: outcome_model={outcome_model!r} needs a 0/1 outcome, got values such as "
                                 f"{np.unique(design.Y[:, j])[:5].tolist()}")
    K = design.M.shape[1]
    if method in ("statsmodels", "dowhy") and K != 1:
        raise QueryError(f"method={method!r} supports a single mediator, got {K} ({design.mediators}); use "
                         "method='regression' for several mediators")
    if method == "dowhy" and (outcome_model != "linear" or interaction):
        raise QueryError("method='dowhy' (two-stage regression) needs outcome_model='linear' and "
                         "interaction=False")
    if method == "statsmodels" and ordered:
        raise QueryError("method='statsmodels' does not take ordered mediators")
    if bootstrap == "two-way" and inference == "bootstrap" and design.images is None:
        raise QueryError(f"bootstrap='two-way' resamples runs crossed with images and needs a design paired by "
                         f"image; {design.design_text}")
    if design.n_dropped:
        notes.append(f"{design.n_dropped} rows with other levels of {treatment!r} were left out")

    est = LinearMediation(design, outcome_model=outcome_model, interaction=interaction, ordered=ordered,
                          slope=slope)
    point, po = est.point()
    inf = run_inference(est, design, point, inference=inference, bootstrap=bootstrap, n_boot=n_boot, rng=rng,
                        ci_level=ci_level, notes=notes, method=method)
    estimator = estimator_text(design, outcome_model, interaction, ordered, est.paired)
    if slope == "within":
        estimator += ("; mediator → outcome slope within runs (image + run fixed effects: the run means of the "
                      "mediators and within-run-varying covariates as regressors, Mundlak 1978)")

    if method == "statsmodels":
        from ._backends import statsmodels_mediation

        point, lo, hi, pv, sm_note = statsmodels_mediation(design, est.names, outcome_model, interaction,
                                                          max(n_boot, 2), rng, ci_level)
        estimator = ("statsmodels.stats.mediation.Mediation (Imai, Keele & Tingley 2010, algorithm 1: "
                     f"{'OLS' if outcome_model == 'linear' else 'binomial GLM (' + outcome_model + ')'} outcome, OLS "
                     "mediator; estimates "
                     "are means over simulations)")
        inf.update(lo=lo, hi=hi, pv=pv, reps=np.empty((0,) + point.shape), n_used=max(n_boot, 2),
                   unit="per-sample parametric simulation",
                   text=(f"statsmodels parametric simulation ({max(n_boot, 2)} draws of the model coefficients from "
                         "their per-sample (iid) sampling distribution) — the intervals ignore clustering by "
                         f"{design.cluster or 'cluster'}; compare with method='regression'"),
                   p_method="statsmodels: 2 × the smaller share of simulated effects on either side of 0", cr2=None)
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
        inf["text"] = inf["text"] + " of the equivalent linear models (method='regression'); DoWhy gives the points"

    run_test = run_confounding(est, design, ci_level=ci_level) if method == "regression" else None
    result = build_result(est, design, point, po, inf, method=method, estimator=estimator, notes=notes,
                          ci_level=ci_level, outcome_model=outcome_model, interaction=interaction, ordered=ordered,
                          bootstrap=bootstrap, inference=inference, overlap=overlap_table(design), run_test=run_test)
    result.engine = "in-process"
    return result


def run_inference(est: LinearMediation, design: Design, point: np.ndarray, *, inference: str, bootstrap: str,
                  n_boot: int, rng: np.random.Generator, ci_level: float, notes: list[str],
                  method: str = "regression") -> dict[str, Any]:
    """Intervals and p-values of the effects by ``inference`` (shared by `mediate` and ``mediate_study``).

    Returns
    -------
    dict
        ``lo, hi, pv`` (E, L) arrays, ``reps`` (bootstrap replicates), ``po_reps``, ``n_used``, ``unit``,
        ``text`` (how), ``p_method``, ``cr2`` (the `CR2` object or None), ``floor`` (p-value floor).
    """
    E, L = point.shape
    nan = np.full(point.shape, np.nan)
    run_T = design.run_T if design.estimand == "runs" else None
    floor, n_assign = randomization_floor(run_T)
    out: dict[str, Any] = dict(lo=nan, hi=nan.copy(), pv=nan.copy(), reps=np.empty((0, E, L)), po_reps=None,
                               n_used=0, cr2=None, floor=floor, n_assign=n_assign,
                               log_assign=log_assignments(run_T))
    pct = f"{100 * ci_level:g}%"
    G = design.n_clusters
    unit_name = design.cluster or "row"
    if inference in ("cr2", "permutation") and method != "statsmodels":
        if design.cluster is None:
            notes.append("cluster=None: every row is its own cluster")
        cr2 = est.cr2()
        df = max(G - 2, 1)
        se = cr2.se()
        lo, hi, pv = t_interval(point, se, df, ci_level)
        out.update(lo=lo, hi=hi, pv=pv, cr2=cr2, unit=f"cluster ({unit_name})",
                   text=(f"{pct} intervals: CR2 (Bell–McCaffrey) cluster-robust standard errors over {G} clusters "
                         f"({unit_name}) of the stacked mediator and outcome models, delta method, Student t with "
                         f"{df} (= G − 2) degrees of freedom"),
                   p_method=f"two-sided t test (t with {df} df) of θ = 0 from the CR2 standard error")
        if not np.isfinite(se[:3]).all():
            notes.append("CR2 is undefined here (a cluster alone determines a coefficient: leverage 1); "
                         "intervals are missing — use inference='bootstrap' or add runs")
        if inference == "permutation":
            if design.estimand != "runs" or design.run_T is None:
                raise QueryError("inference='permutation' relabels the treatment across runs and needs the "
                                 "estimand over runs with the treatment constant within runs; got estimand="
                                 f"{design.estimand!r}" + ("" if design.run_T is not None else
                                                          " and a treatment that varies within runs")
                                 + "; use inference='cr2' or 'bootstrap'")
            labels, exact = relabelings(design.run_T, max(n_boot, 1), rng)
            null = est.relabeled(labels)
            if null is None:  # refit per relabeling: enumerate only up to n_boot of them, else Monte Carlo
                if labels.shape[0] > max(n_boot, 1):
                    labels, exact = np.stack([rng.permutation(design.run_T) for _ in range(max(n_boot, 1))]), False
                null = np.stack([_refit(est, design, lab) for lab in labels])
            pv = randomization_pvalue(point, null, exact)
            out.update(pv=pv, null=null, n_used=int(labels.shape[0]),
                       p_method=(f"run-level randomization test, two-sided on |estimate|: "
                                 + (f"all {labels.shape[0]} relabelings of the runs enumerated (exact)" if exact
                                    else f"{labels.shape[0]} random relabelings of the runs, p = (1 + #{{|θ*| ≥ "
                                         "|θ|}}) / (n + 1)")
                                 + "; the sharp null of no treatment effect at all"))
            out["text"] = out["text"] + "; p-values from the run-level randomization test"
    elif inference == "wild" and method != "statsmodels":
        cr2 = est.cr2()
        B = max(n_boot, 1)
        reps = wild_replicates(cr2, B, rng)
        lo, hi = percentile_ci(reps, ci_level)
        pv = bootstrap_pvalue(reps)
        out.update(lo=lo, hi=hi, pv=pv, reps=reps, n_used=B, cr2=None, unit=f"wild cluster ({unit_name})",
                   text=(f"{pct} percentile intervals from an unrestricted wild cluster bootstrap (WCU) over {G} "
                         f"clusters ({unit_name}): Webb six-point weights, one per cluster shared by the mediator "
                         f"and outcome models, CR2-transformed residuals, {B} replicates"),
                   p_method=P_VALUE_METHOD)
    elif inference == "bootstrap" and method != "statsmodels":
        if n_boot > 0:
            _few_clusters_warning(design, bootstrap, method, notes)
            reps, po_reps, n_failed = _replicates(est, design, bootstrap, n_boot, rng)
        else:
            reps, po_reps, n_failed = np.empty((0, E, L)), None, 0
        if n_failed:
            notes.append(f"{n_failed} of {n_boot} bootstrap replicates were singular and were dropped")
            warnings.warn(f"{n_failed} of {n_boot} bootstrap replicates had a singular design and were dropped",
                          RuntimeWarning, stacklevel=3)
        lo, hi = percentile_ci(reps, ci_level)
        pv = bootstrap_pvalue(reps) if reps.shape[0] else nan.copy()
        unit, text = _resampling_text(design, bootstrap, reps.shape[0], ci_level)
        out.update(lo=lo, hi=hi, pv=pv, reps=reps, po_reps=po_reps, n_used=int(reps.shape[0]), unit=unit, text=text,
                   p_method=P_VALUE_METHOD)
    else:
        out.update(unit="", text="", p_method="")
    return out


RUN_TEST_COLUMNS = ["outcome", "mediator", "pooled", "within", "between", "difference", "se", "df", "p_value"]


def run_confounding(est: LinearMediation, design: Design, *, ci_level: float = 0.95,
                    alpha: float = RUN_TEST_ALPHA) -> dict[str, Any]:
    """Between-run vs within-run mediator → outcome slopes: the run-level Mundlak test, and the within-run effects.

    The outcome model ``Y ~ T + M + X + run means of M (and of the within-run-varying X)`` with image effects
    (`LinearMediation` with ``slope="within"``) has the within-run (image + run fixed effects) slope on ``M`` and
    ``between − within`` on the run mean of ``M`` (Mundlak 1978; exact in the balanced crossed design). The test
    of ``between = within`` is the t test of that coefficient with its CR2 standard error over the runs and
    ``G − 2 − (number of run means)`` degrees of freedom (the run-level regressors). ``pooled`` is the slope of
    the same linear model without the run means (no interaction terms: a description of the slopes even when the
    fitted outcome model has them).

    Returns
    -------
    dict
        ``table`` (DataFrame with `RUN_TEST_COLUMNS`), ``within`` (DataFrame ``outcome, effect, estimate, ci_low,
        ci_high`` of the effects with the within-run slope; empty when the fitted model has interaction terms,
        ordered mediators or a non-linear outcome), ``reject`` (bool: some ``p_value < alpha``), ``alpha``,
        ``reason`` (why the test is not available, else "").
    """
    from scipy import stats

    empty = dict(table=pd.DataFrame(columns=RUN_TEST_COLUMNS), within=pd.DataFrame(), reject=False, alpha=alpha)
    if design.M.shape[0] == 0:
        return dict(empty, reason="not computed: the design holds per-run sufficient statistics only")
    try:
        ew = est if est.slope == "within" else LinearMediation(design, outcome_model="linear", paired=est.paired,
                                                               slope="within")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ep = LinearMediation(design, outcome_model="linear", paired=est.paired)
            pooled = ep.coefficients()
            wpoint = ew.point()[0]
            cr2 = ew.cr2()
    except (QueryError, np.linalg.LinAlgError) as err:
        return dict(empty, reason=f"not computed: {err}")
    lay, K = ew.lay, ew.lay.K
    nm, nr = len(lay.med_reg), len(lay.out_reg)
    G = design.n_clusters
    df = max(G - 2 - len(lay.i_rm), 1)
    beta = ew._outcome_coefs_linear(ew.gram()[None])[0]
    rows = []
    for l, y in enumerate(design.outcomes):
        for j, m in enumerate(design.mediators):
            i_lam = K * nm + len(lay.i_rm) * nm + l * nr + lay.pos_rm_m[j]
            lam, bw = float(beta[lay.pos_rm_m[j], l]), float(beta[2 + j, l])
            se = float(np.sqrt(max(cr2.vcov_theta[i_lam, i_lam], 0.0)))
            p = float(2 * stats.t.sf(abs(lam / se), df)) if se > 0 else np.nan
            rows.append(dict(outcome=y, mediator=m, pooled=float(pooled[f"b[{m}->{y}]"]), within=bw,
                             between=bw + lam, difference=lam, se=se, df=float(df), p_value=p))
    table = pd.DataFrame(rows, columns=RUN_TEST_COLUMNS)
    within = pd.DataFrame()
    if est.outcome_model == "linear" and not est.interaction and not est.ordered:
        lo, hi, _ = t_interval(wpoint, cr2.se(), max(G - 2, 1), ci_level)
        within = pd.DataFrame([dict(outcome=y, effect=name, estimate=float(wpoint[e, l]), ci_low=float(lo[e, l]),
                                    ci_high=float(hi[e, l]))
                               for l, y in enumerate(design.outcomes) for e, name in enumerate(ew.names)
                               if not name.startswith("prop_mediated")])
    reject = bool((table["p_value"] < alpha).any())
    return dict(table=table, within=within, reject=reject, alpha=alpha, reason="")


def run_confounding_text(run_test: dict[str, Any], slope: str) -> str:
    """The warning (pooled slope) or note (within slope) when the between- and within-run slopes differ."""
    if not run_test or not run_test.get("reject"):
        return ""
    t = run_test["table"]
    worst = t.loc[t["p_value"].idxmin()]
    test = (f"between-run slope {worst['between']:.3g} vs within-run slope {worst['within']:.3g} of {worst['mediator']} "
            f"on {worst['outcome']} (Mundlak test over runs, t with {worst['df']:g} df, p = {worst['p_value']:.2g})")
    if slope == "within":
        return (f"run-level confounding: {test}; the within-run slope (slope='within') is used, so the indirect "
                f"effect excludes it (the pooled slope would give {worst['pooled']:.3g})")
    w = run_test.get("within")
    beside = ""
    if w is not None and len(w):
        ind = w[w["effect"] == "indirect"]
        beside = "; with the within-run slope (slope='within'): " + ", ".join(
            f"indirect = {r.estimate:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]" + (f" on {r.outcome}" if len(ind) > 1 else "")
            for r in ind.itertuples())
    return (f"run-level confounding: {test}. The pooled slope mixes run-level confounding (a run's luck moving both "
            f"mediator and outcome) into the indirect effect{beside}")


def _refit(est: LinearMediation, design: Design, run_T: np.ndarray) -> np.ndarray:
    """Point estimate with the runs' treatments replaced by ``run_T`` (see `LinearMediation.refit_relabeled`)."""
    return est.refit_relabeled(run_T)


def overlap_table(design: Design) -> pd.DataFrame:
    """Support of each mediator across the compared arms (see `OVERLAP_THRESHOLD`).

    For a categorical treatment the arms are the control and treated rows; for a continuous one, the rows at the
    smallest and the largest treatment value. ``share_treated_in_control_range`` is the share of treated values
    inside the control arm's [1st, 99th] percentile range, and vice versa; ``supported`` when both shares are at
    least `OVERLAP_THRESHOLD`.

    Returns
    -------
    pandas.DataFrame
        ``mediator, share_treated_in_control_range, share_control_in_treated_range, supported``.
    """
    cols = ["mediator", "share_treated_in_control_range", "share_control_in_treated_range", "supported"]
    if design.M.shape[0] == 0:
        return pd.DataFrame(columns=cols)
    T = design.T
    lo_arm, hi_arm = (T == design.t0, T == design.t1) if design.treatment_kind == "categorical" else (
        T == T.min(), T == T.max())
    rows = []
    for j, m in enumerate(design.mediators):
        a, b = design.M[lo_arm, j], design.M[hi_arm, j]
        if a.size == 0 or b.size == 0:
            rows.append(dict(mediator=m, share_treated_in_control_range=np.nan,
                             share_control_in_treated_range=np.nan, supported=False))
            continue
        qa, qb = np.quantile(a, [0.01, 0.99]), np.quantile(b, [0.01, 0.99])
        s_t = float(np.mean((b >= qa[0]) & (b <= qa[1])))
        s_c = float(np.mean((a >= qb[0]) & (a <= qb[1])))
        rows.append(dict(mediator=m, share_treated_in_control_range=s_t, share_control_in_treated_range=s_c,
                         supported=bool(min(s_t, s_c) >= OVERLAP_THRESHOLD)))
    return pd.DataFrame(rows, columns=cols)


def _design_sentence(design: Design) -> str:
    return design.design_text or "unpaired"


def _estimand_sentence(design: Design) -> str:
    if design.estimand == "model":
        return ("model-conditional: these models, inference over test images"
                + (" (paired by image)" if design.images is not None else " (rows as independent images)"))
    return f"effect over training runs (runs as the population; {design.n_runs} runs)"


def build_result(est: LinearMediation, design: Design, point: np.ndarray, po: np.ndarray | None,
                 inf: dict[str, Any], *, method: str, estimator: str, notes: list[str], ci_level: float,
                 outcome_model: str, interaction: bool, ordered: bool, bootstrap: str, inference: str,
                 overlap: pd.DataFrame, keep_design: bool = True,
                 run_test: dict[str, Any] | None = None) -> MediationResult:
    """Summary rows, notes, sensitivity and the `MediationResult` (one function for `mediate` and
    ``causalgeom.scale.mediate_study``)."""
    names = est.names
    lo, hi, pv = inf["lo"].copy(), inf["hi"].copy(), inf["pv"].copy()
    floor = float(inf.get("floor", 0.0))
    E, L = point.shape
    note = np.full((E, L), "", dtype=object)
    # proportions mediated: estimable only when the total is away from 0 and the components agree in sign
    cr2, reps = inf.get("cr2"), inf.get("reps")
    i_tot, i_dir, i_ind = names.index("total"), names.index("direct"), names.index("indirect")
    for e, name in enumerate(names):
        if not name.startswith("prop_mediated"):
            continue
        path = "indirect" + name[len("prop_mediated"):]
        i_path = names.index(path)
        for l in range(L):
            pv[e, l] = np.nan
            why = None
            has_ci = bool(np.isfinite(lo[i_tot, l]) and np.isfinite(hi[i_tot, l]))
            if has_ci and lo[i_tot, l] <= 0 <= hi[i_tot, l]:
                why = "not estimable: the total's interval includes 0"
            elif np.sign(point[i_dir, l]) * np.sign(point[i_ind, l]) < 0 or (
                    i_path != i_ind and np.sign(point[i_path, l]) * np.sign(point[i_tot, l]) < 0):
                why = "not estimable: the components have opposite signs"
            if why:
                point[e, l] = lo[e, l] = hi[e, l] = np.nan
                note[e, l] = why
                continue
            if not has_ci:
                lo[e, l] = hi[e, l] = np.nan
                note[e, l] = "no interval for the total: whether the total is away from 0 is not checked"
                continue
            num, den = point[i_path, l], point[i_tot, l]
            if cr2 is not None:
                v_n, v_d = cr2.cov((i_path, l), (i_path, l)), cr2.cov((i_tot, l), (i_tot, l))
                c_nd = cr2.cov((i_path, l), (i_tot, l))
            elif reps is not None and reps.shape[0] > 2:
                C = np.cov(np.stack([reps[:, i_path, l], reps[:, i_tot, l]]))
                v_n, v_d, c_nd = C[0, 0], C[1, 1], C[0, 1]
            else:
                continue
            from scipy import stats

            q = stats.t.ppf(0.5 + ci_level / 2, max(design.n_clusters - 2, 1)) if cr2 is not None else \
                stats.norm.ppf(0.5 + ci_level / 2)
            lo[e, l], hi[e, l] = fieller(num, den, v_n, v_d, c_nd, q)
            note[e, l] = "Fieller interval; no p-value"
    # extrapolation: natural effects rest on the models where the mediator supports do not overlap
    unsupported = [] if overlap is None or not len(overlap) else list(overlap.loc[~overlap["supported"].astype(bool),
                                                                                  "mediator"])
    if unsupported:
        for e, name in enumerate(names):
            if name == "total":
                continue
            inside = name[name.find("[") + 1:-1] if "[" in name else None
            meds = [m for m in design.mediators if inside is None or m in inside.split("->")]
            if any(m in unsupported for m in meds):
                for l in range(L):
                    note[e, l] = "; ".join(x for x in ("extrapolated", note[e, l]) if x)
        notes.append(f"mediator(s) {unsupported}: the treated and control values barely overlap (share inside the "
                     f"other arm's range < {OVERLAP_THRESHOLD:g}); natural direct and indirect effects there are "
                     "model extrapolation (marked 'extrapolated')")
    # p-value floor
    if floor > 0:
        at = np.isfinite(pv) & (pv <= floor)
        pv = np.where(np.isfinite(pv), np.maximum(pv, floor), pv)
        for e in range(E):
            for l in range(L):
                if at[e, l]:
                    note[e, l] = "; ".join(x for x in (note[e, l], f"p ≥ {floor:.3g} (design floor)") if x)
        notes.append(f"p-values are at least {floor:.3g}: the smallest a randomization of the treatment over these "
                     f"{_units(design)} can give ({_count_text(inf)} assignments)")
    elif float(inf.get("log_assign", 0.0)) > 0:
        notes.append(f"the design's p-value floor (a randomization of the treatment over these {_units(design)}: "
                     f"{_count_text(inf)} assignments) is "
                     f"{floor_words(0.0, log_count=float(inf['log_assign']))}: it limits no p-value here")
    if floor > 1.0 - ci_level and design.run_T is not None:
        _, arm_counts = np.unique(design.run_T, return_counts=True)
        for l, y in enumerate(design.outcomes):
            excl = [name for e, name in enumerate(names) if not name.startswith("prop_mediated")
                    and np.isfinite(lo[e, l]) and np.isfinite(hi[e, l]) and (lo[e, l] > 0 or hi[e, l] < 0)]
            sentence = floor_interval_sentence(excl, floor, [int(c) for c in arm_counts], alpha=1.0 - ci_level,
                                               ci_level=ci_level)
            if sentence:
                notes.append(sentence if len(design.outcomes) == 1 else f"{y}: {sentence}")
    slope = getattr(est, "slope", "pooled")
    confounding = run_confounding_text(run_test or {}, slope)
    if confounding:
        notes.append(confounding)
        if slope == "pooled":
            warnings.warn(confounding, RunConfoundingWarning, stacklevel=3)
            w = run_test.get("within") if run_test else None
            for e, name in enumerate(names):
                if not name.startswith("indirect"):
                    continue
                for l, y in enumerate(design.outcomes):
                    sel = w[(w["effect"] == name) & (w["outcome"] == y)] if w is not None and len(w) else w
                    extra = "pooled slope mixes run-level confounding"
                    if sel is not None and len(sel):
                        r = sel.iloc[0]
                        extra += f"; within-run slope: {r.estimate:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]"
                    note[e, l] = "; ".join(x for x in (note[e, l], extra) if x)
    rows = summary_rows(design, names, point, lo, hi, pv, n_samples=design.n, p_floor=floor, note=note)
    summary = pd.DataFrame(rows)
    if outcome_model == "linear":
        sens, curve, sens_method = rho_sensitivity_table(est, design, point, interaction=interaction,
                                                         ordered=ordered)
    else:
        sens, curve = _evalues(design, po, inf.get("po_reps"), ci_level), pd.DataFrame()
        sens_method = ("mediational E-values (Smith & VanderWeele 2019) on the risk-ratio scale: how strongly an "
                       "unmeasured mediator–outcome confounder would have to be associated with both to explain "
                       "the effect away")
    coefs = {k: float(v) for k, v in est.coefficients().items()}
    inference_text = inf.get("text", "")
    if inf.get("p_method"):
        inference_text = f"{inference_text}; p-values: {inf['p_method']}"
    return MediationResult(
        table=summary, method=method, estimator=estimator, resampling_unit=inf.get("unit", ""),
        resampling=inf.get("text", ""), n_clusters=design.n_clusters, clusters_per_arm=dict(design.clusters_per_arm),
        n_runs=design.n_runs, n_samples=design.n, n_boot=int(inf.get("n_used", 0)), ci_level=float(ci_level),
        p_value_method=inf.get("p_method", ""), level=design.level, treatment=design.treatment,
        control=design.control_label, treated=design.treated_label, mediators=list(design.mediators),
        outcomes=list(design.outcomes), covariates=list(design.covariates), effect_names=list(names),
        sensitivity=sens.reset_index(drop=True), sensitivity_curve=curve, sensitivity_method=sens_method,
        replicates=inf.get("reps") if inf.get("reps") is not None else np.empty((0,) + point.shape),
        coefficients=coefs, notes=notes, _design=design if keep_design else None,
        _options=dict(outcome_model=outcome_model, interaction=interaction, ordered=ordered, bootstrap=bootstrap,
                      inference=inference, paired=est.paired, slope=slope),
        design=_design_sentence(design), estimand=_estimand_sentence(design), inference=inference_text,
        overlap=overlap if overlap is not None else pd.DataFrame(), mundlak=est.mundlak(), p_floor=floor,
        slope=slope, run_confounding=(run_test or {}).get("table", pd.DataFrame()),
        within_effects=(run_test or {}).get("within", pd.DataFrame()),
        confounding_warning=confounding if slope == "pooled" else "")


def _units(design: Design) -> str:
    if design.cluster is None:
        return f"{design.n_clusters} rows (cluster=None: each row a unit)"
    return f"{design.n_runs} runs"


def _count_text(inf: dict[str, Any]) -> str:
    """The number of assignments: exactly when known, else ``about 10^k`` from its logarithm."""
    if inf.get("n_assign") is not None:
        return f"{inf['n_assign']}"
    import math

    return f"about 10^{float(inf.get('log_assign', 0.0)) / math.log(10):.0f}"


def summary_rows(design: Design, names: list[str], point: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 pv: np.ndarray, *, n_samples: int, p_floor: float = 0.0,
                 note: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Rows of `MediationResult.summary()`: one per (outcome, effect); arrays are (effect, outcome)."""
    return [dict(outcome=y, effect=name, estimate=float(point[e, l]), ci_low=float(lo[e, l]),
                 ci_high=float(hi[e, l]), p_value=float(pv[e, l]),
                 p_floor=float(p_floor) if np.isfinite(pv[e, l]) else np.nan,
                 note="" if note is None else str(note[e, l]), n_runs=design.n_runs, n_samples=n_samples)
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
    bs = est.batch_size() if scheme == "cluster" else max(1, min(est.batch_size(), 2**23 // max(design.n, 1)))
    run_strata = None
    if scheme == "two-way" and design.run_T is not None:
        run_strata = np.unique(design.run_T, return_inverse=True)[1].astype(np.int64)
    for batch in replicate_batches(scheme, codes=design.codes, n_clusters=design.n_clusters, strata=design.strata,
                                   row_strata=rs, B=B, rng=rng, batch_size=bs, run_codes=design.run_codes,
                                   run_strata=run_strata, images=design.images, n_images=design.n_images):
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
    elif scheme == "two-way":
        unit = "two-way (runs × images)"
        text = (f"{pct} percentile intervals from a two-way (pigeonhole) bootstrap: runs within arms and test images "
                f"drawn independently ({B} replicates, {design.n_runs} runs × {design.n_images} images)")
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


def estimator_text(design: Design, outcome_model: str, interaction: bool, ordered: bool,
                   paired: bool = False) -> str:
    """One sentence naming the regression estimator of ``design`` (models, how effects are formed, comparison,
    covariates, image fixed effects when ``paired``): the ``estimator`` of a `MediationResult`."""
    K = design.M.shape[1]
    med = "OLS mediator model" + ("s" if K > 1 else "") + (" (causally ordered: second on first)" if ordered else
                                                           (" (parallel)" if K > 1 else ""))
    if outcome_model == "linear":
        out = "OLS outcome model" + (" with treatment × mediator terms" if interaction else "")
        how = ("closed form (product of coefficients)" if not interaction
               else "closed form from the g-formula of the linear models")
    else:
        out = f"{outcome_model} outcome model" + (" with treatment × mediator terms" if interaction else "")
        how = "g-formula averaging predicted probabilities over the rows with counterfactual mediators"
    cmp = (f"{design.treatment} = {design.treated_label!r} vs {design.control_label!r}"
           if design.treatment_kind == "categorical"
           else f"{design.treatment} from {design.t0:g} to {design.t1:g}")
    cov = f"; covariates: {', '.join(design.covariates)}" if design.covariates else ""
    fe = ("; image fixed effects (image means of the mediators, covariates and interaction terms as regressors: "
          "the within-image slopes)" if paired else "")
    return (f"regression: {med}, {out}; {how}; {cmp}; direct = pure natural direct effect, indirect = total "
            f"natural indirect effect{cov}{fe}")


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
