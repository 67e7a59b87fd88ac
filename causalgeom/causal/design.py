"""Check a mediation question against a table and turn it into arrays (`Design`).

Everything a user can get wrong about the table is caught here, with a `QueryError` naming the argument, what
was expected and what was given: missing or non-numeric columns, NaN/Inf, a treatment with one level, control
or treated values that are not present, too few clusters to resample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .._util.checks import check_params
from ..errors import QueryError
from .spec import PARAMETER_CONSTRAINTS

__all__ = ["Design", "build_design", "MIN_CLUSTERS_PER_ARM", "MIN_CLUSTERS_CONTINUOUS"]

#: Fewer clusters (runs) than this in a treatment arm triggers `FewClustersWarning`: a percentile interval from a
#: cluster bootstrap with so few clusters is too narrow (Cameron, Gelbach & Miller 2008; MacKinnon & Webb 2017).
MIN_CLUSTERS_PER_ARM = 5
#: The same threshold for a continuous treatment, on the total number of clusters.
MIN_CLUSTERS_CONTINUOUS = 10


@dataclass
class Design:
    """Arrays of one mediation question (rows kept after selecting the control/treated levels).

    Attributes
    ----------
    T : ndarray, shape (n,)
        Treatment: 0/1 indicator (categorical) or the numeric value (continuous).
    M : ndarray, shape (n, K)
        Mediators.
    X : ndarray, shape (n, q)
        Covariates (categorical ones as indicator columns, first level dropped).
    Y : ndarray, shape (n, L)
        Outcomes.
    codes : ndarray of int, shape (n,)
        Cluster index of each row in ``[0, R)``.
    t0, t1 : float
        Treatment values compared (control, treated).
    strata : ndarray of int, shape (R,) or None
        Bootstrap stratum of each cluster (its treatment arm), or None when the bootstrap is not stratified.
    """

    T: np.ndarray
    M: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    codes: np.ndarray
    cluster_names: np.ndarray
    t0: float
    t1: float
    treatment: str
    mediators: list[str]
    outcomes: list[str]
    covariates: list[str]
    x_names: list[str]
    cluster: str | None
    treatment_kind: str  # "categorical" | "continuous"
    control_label: Any
    treated_label: Any
    strata: np.ndarray | None
    strata_note: str
    clusters_per_arm: dict[str, int]
    n_runs: int
    n_dropped: int
    level: str
    notes: list[str] = field(default_factory=list)
    #: Image (test sample) index of each row in ``[0, n_images)`` when the runs are paired by image, else None.
    images: np.ndarray | None = None
    n_images: int = 0
    #: One sentence: "paired by image: ..." or "unpaired: <reason>".
    design_text: str = ""
    #: ``"runs"`` (effect over training runs) or ``"model"`` (these models, inference over test images).
    estimand: str = "runs"
    #: Run index of each row (equal to ``codes`` unless the estimand is model-conditional).
    run_codes: np.ndarray | None = None
    run_names: np.ndarray | None = None
    #: Treatment of each run (``run_codes`` order), shape (n_runs,).
    run_T: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.T.shape[0])

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_names.shape[0])


def _listify(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        out = list(value)
    except TypeError:
        raise QueryError(f"{name}: expected a column name or a list of column names, got {value!r}") from None
    for v in out:
        if not isinstance(v, str):
            raise QueryError(f"{name}: expected column names (strings), got {v!r}")
    return out


def _available(table: pd.DataFrame) -> str:
    cols = [str(c) for c in table.columns]
    return str(cols if len(cols) <= 30 else cols[:30] + ["..."])


def _numeric(table: pd.DataFrame, col: str, role: str) -> np.ndarray:
    s = table[col]
    if isinstance(s, pd.DataFrame):
        raise QueryError(f"{role} {col!r}: the table has several columns with this name")
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)) or pd.api.types.is_complex_dtype(s):
        raise QueryError(f"{role} {col!r}: expected a numeric column, got dtype {s.dtype}")
    arr = s.to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise QueryError(f"{role} {col!r}: {int(bad.sum())} of {arr.size} values are not finite ({n_nan} NaN, "
                         f"{int(bad.sum()) - n_nan} Inf); drop or fill those rows first (e.g. "
                         f"table.dropna(subset=[{col!r}]))")
    return arr


def _match_level(value: Any, levels: Sequence[Any], role: str, treatment: str) -> Any:
    for lv in levels:
        if _same(lv, value):
            return lv
    raise QueryError(f"{role}: value {value!r} is not a level of treatment {treatment!r}; levels present: "
                     f"{[_plain(v) for v in levels]}")


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _same(level: Any, value: Any) -> bool:
    if level == value:
        return True
    # "0.1" given on the command line for a numeric level, or 1 for True
    try:
        if isinstance(value, str) and not isinstance(level, str):
            return float(value) == float(level)
        if isinstance(level, str) and not isinstance(value, str):
            return float(level) == float(value)
    except (TypeError, ValueError):
        return False
    return False


def build_design(table: Any, *, treatment: str, mediators: Any, outcome: Any, control: Any = None,
                 treated: Any = None, covariates: Any = (), cluster: str | None = "run_id",
                 treatment_type: str = "auto", level: str | None = None, bootstrap: str = "cluster",
                 outcome_model: str = "linear", paired_by: str | None = None, estimand: str = "runs",
                 sample: str = "sample") -> Design:
    """Validate the question against ``table`` and extract the arrays (see `causalgeom.causal.mediate`).

    ``paired_by`` (``"auto"``, ``"sample"`` or None) pairs the runs by the ``sample`` column when every run
    (cluster) of the compared arms holds each sample id exactly once (`pairing`); ``estimand`` (``"auto"``,
    ``"runs"``, ``"model"``) chooses the unit of inference (runs, or test images for the model-conditional
    estimand; ``"auto"`` picks images when an arm has a single run).

    Raises
    ------
    QueryError
        Naming the argument, what was expected and what was given.
    """
    if not isinstance(table, pd.DataFrame):
        raise QueryError(f"table: expected a pandas DataFrame (e.g. study.to_frame()), got {type(table).__name__}")
    if len(table) == 0:
        raise QueryError("table: the table has no rows")
    if not isinstance(treatment, str):
        raise QueryError(f"treatment: expected a column name, got {treatment!r}")
    mediators = _listify(mediators, "mediators")
    outcomes = _listify(outcome, "outcome")
    covariates = _listify(covariates, "covariates")
    if not mediators:
        raise QueryError("mediators: expected at least one mediator column, got none")
    if not outcomes:
        raise QueryError("outcome: expected at least one outcome column, got none")
    roles = {"treatment": [treatment], "mediators": mediators, "outcome": outcomes, "covariates": covariates}
    if cluster is not None:
        roles["cluster"] = [cluster]
    missing = [(role, c) for role, cols in roles.items() for c in cols if c not in table.columns]
    if missing:
        what = ", ".join(f"{role} {c!r}" for role, c in missing)
        raise QueryError(f"column(s) not in the table: {what}; available columns: {_available(table)}")
    seen: dict[str, str] = {}
    for role, cols in roles.items():
        if role == "cluster":
            continue
        for c in cols:
            if c in seen:
                raise QueryError(f"column {c!r} is used twice (as {seen[c]} and as {role}); each column may play "
                                 "one role")
            seen[c] = role
    check_params({"treatment_type": treatment_type}, PARAMETER_CONSTRAINTS, error=QueryError)

    tcol = table[treatment]
    if tcol.isna().any():
        raise QueryError(f"treatment {treatment!r}: {int(tcol.isna().sum())} values are missing (NaN); drop those "
                         "rows first")
    numeric_t = pd.api.types.is_numeric_dtype(tcol) and not pd.api.types.is_bool_dtype(tcol)
    kind = treatment_type if treatment_type != "auto" else ("continuous" if numeric_t else "categorical")
    notes: list[str] = []
    if kind == "continuous" and not numeric_t:
        raise QueryError(f"treatment {treatment!r}: treatment_type='continuous' needs a numeric column, got dtype "
                         f"{tcol.dtype}")

    if kind == "categorical":
        levels = list(pd.unique(tcol))
        if len(levels) < 2:
            raise QueryError(f"treatment {treatment!r} has a single level {[_plain(v) for v in levels]}; a mediation "
                             "analysis needs a control and a treated level")
        if control is None:
            if any(_same(lv, "ce") for lv in levels):
                control = "ce"
            else:
                raise QueryError(f"control: not given and treatment {treatment!r} has no 'ce' level; choose the "
                                 f"control among {[_plain(v) for v in levels]}")
        control_lv = _match_level(control, levels, "control", treatment)
        if treated is None:
            others = [lv for lv in levels if not _same(lv, control_lv)]
            if len(others) != 1:
                raise QueryError(f"treated: not given and treatment {treatment!r} has {len(others)} levels besides "
                                 f"the control {_plain(control_lv)!r}: {[_plain(v) for v in others]}; choose one")
            treated = others[0]
        treated_lv = _match_level(treated, levels, "treated", treatment)
        if _same(treated_lv, control_lv):
            raise QueryError(f"treated: the treated level {_plain(treated_lv)!r} equals the control level")
        keep = ((tcol == control_lv) | (tcol == treated_lv)).to_numpy()
        sub = table.loc[keep]
        T = (sub[treatment] == treated_lv).to_numpy(dtype=float)
        t0, t1 = 0.0, 1.0
        control_label, treated_label = _plain(control_lv), _plain(treated_lv)
    else:
        keep = np.ones(len(table), dtype=bool)
        sub = table
        T = _numeric(table, treatment, "treatment")
        uniq = np.unique(T)
        if uniq.size < 2:
            raise QueryError(f"treatment {treatment!r} has a single value {uniq.tolist()}; a mediation analysis "
                             "needs at least two treatment values")
        lo, hi = float(uniq[0]), float(uniq[-1])
        vals = []
        for role, v in (("control", control), ("treated", treated)):
            if v is None:
                vals.append(None)
                continue
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise QueryError(f"{role}: a continuous treatment needs a number, got {v!r}") from None
            if not np.isfinite(fv) or fv < lo - 1e-12 * max(1.0, abs(lo)) or fv > hi + 1e-12 * max(1.0, abs(hi)):
                raise QueryError(f"{role}: value {v!r} is outside the observed range of treatment {treatment!r} "
                                 f"[{lo:g}, {hi:g}] (not present in the data); effects are not extrapolated")
            vals.append(fv)
        t0 = vals[0] if vals[0] is not None else lo
        t1 = vals[1] if vals[1] is not None else t0 + 1.0
        if t0 == t1:
            raise QueryError(f"treated: equals control ({t0:g}); the compared treatment values must differ")
        if vals[1] is None:
            notes.append(f"continuous treatment: effects per unit of {treatment} (from {t0:g} to {t1:g})")
        control_label, treated_label = t0, t1

    n_dropped = int((~keep).sum())
    M = np.column_stack([_numeric(sub, c, "mediator") for c in mediators])
    Y = np.column_stack([_numeric(sub, c, "outcome") for c in outcomes])
    if outcome_model in ("logistic", "probit"):
        for j, c in enumerate(outcomes):
            if not np.isin(Y[:, j], (0.0, 1.0)).all():
                raise QueryError(f"outcome {c!r}: outcome_model={outcome_model!r} needs a 0/1 outcome, got values such as "
                                 f"{np.unique(Y[:, j])[:5].tolist()}")
    X_parts, x_names = [], []
    if sample in covariates and cluster is not None:
        raise QueryError(f"covariates: {sample!r} is an image id, not a quantity — a covariate would fit a straight "
                         f"line in the id. To compare runs image by image (image fixed effects), use "
                         f"paired_by={sample!r} (the default 'auto' does it when every run scored the same images)")
    for c in covariates:
        s = sub[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            X_parts.append(_numeric(sub, c, "covariate")[:, None])
            x_names.append(c)
        else:
            if s.isna().any():
                raise QueryError(f"covariate {c!r}: {int(s.isna().sum())} values are missing (NaN); drop or fill "
                                 "those rows first")
            dummies = pd.get_dummies(s.astype("category"), prefix=c, prefix_sep="=", drop_first=True, dtype=float)
            if dummies.shape[1] == 0:
                notes.append(f"covariate {c!r} has a single level and was left out")
                continue
            X_parts.append(dummies.to_numpy())
            x_names.extend(map(str, dummies.columns))
    X = np.column_stack(X_parts) if X_parts else np.zeros((len(sub), 0))

    if cluster is not None:
        cc = sub[cluster]
        if cc.isna().any():
            raise QueryError(f"cluster {cluster!r}: {int(cc.isna().sum())} values are missing (NaN)")
        codes, names = pd.factorize(cc, sort=True)
        names = np.asarray(names)
    else:
        codes = np.arange(len(sub))
        names = np.arange(len(sub))
    codes = np.asarray(codes, dtype=np.int64)
    R = int(names.shape[0])
    n_runs = int(sub["run_id"].nunique()) if "run_id" in sub.columns else R
    if level is None:
        level = "sample" if (cluster is not None and R < len(sub)) else "run"

    # treatment arm of every cluster; stratify the bootstrap by it when the treatment is constant within clusters
    t_min = np.full(R, np.inf)
    t_max = np.full(R, -np.inf)
    np.minimum.at(t_min, codes, T)
    np.maximum.at(t_max, codes, T)
    constant = bool(np.all(t_min == t_max))
    clusters_per_arm: dict[str, int] = {}
    strata: np.ndarray | None = None
    unit = "clusters" if cluster is None else f"clusters ({cluster})"
    if kind == "categorical":
        arm_label = {0.0: str(control_label), 1.0: str(treated_label)}
        if constant:
            for v in (0.0, 1.0):
                clusters_per_arm[arm_label[v]] = int((t_min == v).sum())
            strata = (t_min == 1.0).astype(np.int64)
            strata_note = "stratified by treatment arm"
        else:
            for v in (0.0, 1.0):
                clusters_per_arm[arm_label[v]] = int(np.unique(codes[T == v]).size)
            strata_note = "not stratified (the treatment varies within clusters)"
        one_run = constant and min(clusters_per_arm.values()) < 2
        if estimand == "runs" and one_run and cluster is not None:
            raise QueryError(
                f"estimand='runs': the effect over training runs (runs as the population) is undefined with one "
                f"run in a treatment arm ({clusters_per_arm}); the variation between runs of one arm cannot be "
                "estimated. Ask for estimand='model' (these models, inference over test images, paired by image) "
                "or add runs (seeds)")
        if estimand == "auto":
            estimand = "model" if (one_run and cluster is not None) else "runs"
            if estimand == "model":
                notes.append(f"one run in a treatment arm ({clusters_per_arm}): the effect over training runs is "
                             "undefined, so the estimand is model-conditional (these models, inference over test "
                             "images)")
        if bootstrap != "naive" and estimand == "runs":
            small = {k: v for k, v in clusters_per_arm.items() if v < 2}
            if small:
                raise QueryError(
                    f"too few {unit} to resample: {small} (need at least 2 per treatment arm for a cluster "
                    f"bootstrap); add runs (seeds), or ask for bootstrap='naive' (per-sample resampling that ignores "
                    "clustering, labelled as such)")
        else:
            for v in (0.0, 1.0):
                if int((T == v).sum()) < 2:
                    raise QueryError(f"too few rows to resample in treatment arm {arm_label[v]!r} (need >= 2)")
    else:
        uniq_c, counts_c = np.unique(t_min, return_counts=True)
        clusters_per_arm = {f"{v:g}": int(c) for v, c in zip(uniq_c, counts_c)} if constant else {}
        if constant and counts_c.min() >= 2:
            strata = np.searchsorted(uniq_c, t_min).astype(np.int64)
            strata_note = "stratified by treatment value"
        else:
            strata_note = "not stratified (some treatment values have a single cluster)" if constant else \
                "not stratified (the treatment varies within clusters)"
        if bootstrap != "naive":
            if R < 3:
                raise QueryError(f"too few {unit} to resample: {R} (need at least 3 for a cluster bootstrap with a "
                                 "continuous treatment); add runs, or ask for bootstrap='naive'")
            if constant and uniq_c.size < 2:
                raise QueryError(f"treatment {treatment!r} takes one value across clusters")

    if estimand == "auto":
        estimand = "runs"
    images, n_images, design_text = pairing(sub, codes, R, paired_by=paired_by, sample=sample, level=level,
                                            cluster=cluster)
    run_T = np.where(np.isfinite(t_min), t_min, np.nan) if constant else None
    d = Design(T=T, M=M, X=X, Y=Y, codes=codes, cluster_names=names, t0=float(t0), t1=float(t1),
               treatment=treatment, mediators=mediators, outcomes=outcomes, covariates=covariates,
               x_names=x_names, cluster=cluster, treatment_kind=kind, control_label=control_label,
               treated_label=treated_label, strata=strata, strata_note=strata_note,
               clusters_per_arm=clusters_per_arm, n_runs=n_runs, n_dropped=n_dropped, level=level, notes=notes,
               images=images, n_images=n_images, design_text=design_text, estimand=estimand, run_codes=codes,
               run_names=names, run_T=run_T)
    if estimand == "model":
        d = model_conditional(d, sample)
    return d


def pairing(sub: pd.DataFrame, codes: np.ndarray, R: int, *, paired_by: str | None, sample: str, level: str,
            cluster: str | None) -> tuple[np.ndarray | None, int, str]:
    """Decide whether the runs are paired by image and index the images.

    Runs are paired when every cluster (run) holds each id of the ``sample`` column exactly once — the crossed
    design of a study in which every run scored the same test images.

    Returns
    -------
    images : ndarray of int, shape (n,), or None
        Image index of each row (None: unpaired).
    n_images : int
    text : str
        ``"paired by image: ..."`` or ``"unpaired: <reason>"``.

    Raises
    ------
    QueryError
        ``paired_by="sample"`` and the runs cannot be paired (the message names the problem).
    """
    check_params({"paired_by": paired_by}, PARAMETER_CONSTRAINTS, error=QueryError)
    forced = paired_by == "sample"
    reason = None
    if paired_by is None:
        reason = "paired_by=None"
    elif level == "run":
        reason = "run-level table (one row per run: image effects are already averaged out)"
    elif cluster is None:
        reason = "no cluster column (cluster=None), so there are no runs to pair"
    elif sample not in sub.columns:
        reason = f"the table has no {sample!r} column of image ids"
    if reason is None:
        ids = sub[sample]
        if ids.isna().any():
            reason = f"{int(ids.isna().sum())} missing (NaN) values in {sample!r}"
        else:
            img, uniq = pd.factorize(ids, sort=True)
            n_img = int(len(uniq))
            pair = codes.astype(np.int64) * n_img + img
            counts = np.bincount(pair, minlength=R * n_img) if R * n_img <= 50_000_000 else None
            if counts is None:
                _, c = np.unique(pair, return_counts=True)
                ok = c.size == R * n_img and bool((c == 1).all())
                dup = int((c > 1).sum())
            else:
                ok = bool((counts == 1).all())
                dup = int((counts > 1).sum())
            if ok and R >= 2:
                return (img.astype(np.int64), n_img,
                        f"paired by image: image fixed effects absorbed by within-image demeaning "
                        f"({n_img} images × {R} runs)")
            if R < 2:
                reason = "a single run"
            elif dup:
                reason = f"{dup} (run, {sample}) pairs occur more than once (ids repeat within a run)"
            else:
                per_run = np.bincount(codes, minlength=R)
                reason = (f"the runs did not score the same {sample} ids ({n_img} distinct ids; runs hold "
                          f"{int(per_run.min())} to {int(per_run.max())})")
    if forced:
        raise QueryError(f"paired_by={sample!r}: the runs cannot be paired by image: {reason}; use paired_by=None "
                         "for an unpaired analysis")
    return None, 0, f"unpaired: {reason}"


def model_conditional(d: Design, sample: str) -> Design:
    """Switch a design to the model-conditional estimand: clusters are test images (paired) or rows."""
    if d.images is not None:
        d.codes = d.images
        d.cluster_names = np.arange(d.n_images)
        d.cluster = sample
    else:
        d.codes = np.arange(d.n)
        d.cluster_names = np.arange(d.n)
        d.notes.append("model-conditional estimand without pairing by image: rows are treated as independent")
    d.strata = None
    d.strata_note = "not stratified (images carry every run)"
    return d
