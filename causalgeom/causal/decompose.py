"""Head-based decomposition: split a treated − control gap into head, feature magnitude and feature direction.

The mechanism from features to outputs is known: ``logits = W h + b``. For a control run c and a
treated run t that scored the same test images, each image's feature splits into its magnitude
``m = ||h||`` and its direction ``u = h / ||h||``. Taking the head ``(W, b)``, the magnitude and the
direction each from c or from t gives 2³ = 8 "worlds" whose logits ``W (m u) + b`` are computed
exactly; the treated − control gap of an outcome is split among the factors by the Shapley value
(the average, over the 3! orders of switching the factors from c to t, of each factor's marginal
change). The shares add up to the total gap exactly, per image for per-image outcomes and for the
run-level outcome. Definitions and inference: ``docs/methods_causal.md`` ("Head-based decomposition").

::

    res = cg.causal.decompose(study, treatment="regularizer", control="ce", treated="mixup",
                              outcome="signed_ece", factors=("head", "magnitude", "direction"))
    res.summary(); res.plot(); res.per_pair; res.estimand; res.design; res.inference
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .._util.eps import eps_label
from .._util.rng import check_random_state
from ..metrics.calibration import EXTRA_OUTCOMES as _EXTRA, run_outcome as _extra_outcome, ts_split as _ts_split
from ..metrics.kernels import bin_index as _bin_index, calibration_error as _calibration_error, \
    sample_stats_block as _sample_stats_block, width_bin_stats as _width_bin_stats
from ..errors import QueryError

__all__ = ["decompose", "DecompositionResult", "shapley_values", "FACTORS", "DECOMPOSE_OUTCOMES",
           "PER_IMAGE_OUTCOMES", "ESTIMANDS", "PAIRINGS", "MAX_EXACT_RELABELINGS"]

#: Factors a decomposition can swap between runs ("cosine": the cosine to the class center only; "head_norm" and
#: "orientation": the basis-free split, see `decompose`).
FACTORS = ("head", "magnitude", "direction", "cosine", "head_norm", "orientation")
#: Outcomes of `decompose` (``robust_*`` need ``adv_features``, stored by ``causalgeom extract --save-adv``).
DECOMPOSE_OUTCOMES = ("signed_ece", "ece", "nll", "accuracy", "brier", "robust_accuracy", "robust_margin") + _EXTRA
#: Outcomes that are means of a per-image quantity, so that their shares also add up image by image.
PER_IMAGE_OUTCOMES = ("signed_ece", "nll", "accuracy", "brier", "robust_accuracy", "robust_margin")
#: ``estimand=`` values: over training runs, conditional on these models, or chosen from the design.
ESTIMANDS = ("auto", "runs", "model")
#: ``pairs=`` values: control and treated runs matched by their ``seed`` attribute, all control × treated pairs,
#: or seed-matched when every seed trained both arms.
PAIRINGS = ("auto", "seed", "all")
#: Up to this many run relabelings the randomization test enumerates them all (exact p-value); beyond, Monte Carlo.
MAX_EXACT_RELABELINGS = 20_000

_ROBUST = ("robust_accuracy", "robust_margin")
_TOL = 1e-12


# ----------------------------------------------------------------------------------------------
# Shapley values
# ----------------------------------------------------------------------------------------------
def shapley_values(values: np.ndarray) -> np.ndarray:
    """Shapley value of each factor from the outcomes of all 2^k worlds.

    Parameters
    ----------
    values : ndarray, shape (2**k, ...)
        ``values[s]`` is the outcome of the world in which factor ``j`` comes from the treated run iff
        bit ``j`` of ``s`` is set (``values[0]``: all from control; ``values[2**k - 1]``: all from treated).
        Trailing axes (images, ...) are carried along.

    Returns
    -------
    ndarray, shape (k, ...)
        ``phi_j = sum_{S ⊆ N \\ {j}} |S|! (k − |S| − 1)! / k! · (v(S ∪ {j}) − v(S))`` (Shapley 1953),
        the average over the k! orders of switching factors from control to treated of factor j's
        marginal change. ``phi.sum(0) == values[-1] − values[0]`` (efficiency) up to rounding.
    """
    v = np.asarray(values, dtype=np.float64)
    n_worlds = v.shape[0]
    k = int(round(math.log2(n_worlds))) if n_worlds > 0 else -1
    if k < 1 or 2 ** k != n_worlds:
        raise QueryError(f"values: expected 2**k worlds along the first axis (k >= 1), got {n_worlds}")
    phi = np.zeros((k,) + v.shape[1:])
    for j in range(k):
        bit = 1 << j
        for s in range(n_worlds):
            if s & bit:
                continue
            size = bin(s).count("1")
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            phi[j] += weight * (v[s | bit] - v[s])
    return phi


# ----------------------------------------------------------------------------------------------
# loading runs
# ----------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One run's arrays, rows in the common sample order (float64)."""

    run_id: str
    labels: np.ndarray          # (n,)
    norm: np.ndarray            # (n,) ||h||
    unit: np.ndarray            # (n, d) h / ||h||
    W: np.ndarray               # (K, d)
    b: np.ndarray               # (K,)
    centers: np.ndarray | None  # (K, d) minimal-loss centers (cosine factor)
    cos: np.ndarray | None      # (n,) cosine of h to its own head's true-class center
    adv_norm: np.ndarray | None = None
    adv_unit: np.ndarray | None = None
    adv_cos: np.ndarray | None = None


def _polar(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(h, axis=1)
    unit = np.divide(h, norm[:, None], out=np.zeros_like(h), where=norm[:, None] > 0)
    return norm, unit


def _unit_rows(c: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(c, axis=1, keepdims=True)
    return np.divide(c, n, out=np.zeros_like(c), where=n > 0)


def _cosine(unit: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.clip(np.einsum("nf,nf->n", unit, _unit_rows(centers)[labels]), -1.0, 1.0)


def _rotate_to_cosine(unit: np.ndarray, target: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """Rotate unit rows within the plane of (u, t) to cosine ``cos`` with t (norm 1 kept).

    ``u' = cos φ · v + sin φ · w`` with ``v = t/||t||``, ``w`` the unit vector of the plane orthogonal to
    v on u's side, ``φ = arccos(cos)``. This is `causalgeom.interventions.set_cosine` for unit rows
    (tests check the two agree); it is restated here because the causal layer sits below interventions.
    Where u is (anti)parallel to t the plane is undefined and the first axis not parallel to t is used.
    """
    v = _unit_rows(target)
    c0 = np.clip(np.einsum("nf,nf->n", unit, v), -1.0, 1.0)
    w = unit - c0[:, None] * v
    s = np.linalg.norm(w, axis=1)
    bad = s < 1e-12
    w = np.divide(w, s[:, None], out=np.zeros_like(w), where=~bad[:, None])
    if np.any(bad):
        rows = np.flatnonzero(bad)
        j = np.argmin(np.abs(v[rows]), axis=1)
        e = np.zeros((rows.size, v.shape[1]))
        e[np.arange(rows.size), j] = 1.0
        e -= np.einsum("nf,nf->n", e, v[rows])[:, None] * v[rows]
        w[rows] = e / np.linalg.norm(e, axis=1, keepdims=True)
    sin = np.sqrt(np.clip(1.0 - cos ** 2, 0.0, None))
    return cos[:, None] * v + sin[:, None] * w


def _sample_ids(ds: Any) -> np.ndarray:
    n = int(ds.sizes["sample"])
    return np.asarray(ds["sample"].values) if "sample" in ds.coords else np.arange(n)


def _select_adv(ds: Any, attack: str | None, eps: float | None) -> tuple[Any, str, float]:
    if "adv_features" not in ds.variables:
        raise QueryError(f"outcomes {list(_ROBUST)} need the features of the attacked images ('adv_features'), "
                         f"which run {ds.attrs.get('run_id')!r} does not store; extract with "
                         "`causalgeom extract --save-adv` (or cg.extract(..., save_adv=True))")
    attacks = [str(a) for a in ds["attack"].values]
    if attack is None:
        attack = attacks[0]
    elif attack not in attacks:
        raise QueryError(f"attack: expected one of {attacks}, got {attack!r}")
    grid = np.asarray(ds["eps"].values, dtype=np.float64)
    if eps is None:
        eps = float(grid[len(grid) // 2])
    hit = np.flatnonzero(np.isclose(grid, float(eps), rtol=1e-6, atol=1e-9))
    if not hit.size:
        raise QueryError(f"eps: expected one of {[float(e) for e in grid]}, got {eps!r}")
    adv = ds["adv_features"].isel(attack=attacks.index(attack), eps=int(hit[0]))
    return adv, attack, float(grid[hit[0]])


def _load_run(ds: Any, order: np.ndarray | None, need_cos: bool, need_adv: bool, attack: str | None,
              eps: float | None) -> tuple[_Run, np.ndarray, str | None, float | None]:
    from ..metrics.geometry import class_centers
    from ..dump.schema import require_head

    run_id = str(ds.attrs.get("run_id"))
    W, b = require_head(ds, f"decompose (run {run_id!r})")
    ids = _sample_ids(ds)
    idx = slice(None) if order is None else order
    h = np.asarray(ds["features"].values, dtype=np.float64)[idx]
    labels = np.asarray(ds["label"].values).astype(np.int64)[idx]
    norm, unit = _polar(h)
    W64, b64 = np.asarray(W.values, dtype=np.float64), np.asarray(b.values, dtype=np.float64)
    centers = cos = None
    if need_cos:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-exact centers are still the reference direction
            centers = np.asarray(class_centers(ds, kind="minimal_loss").values, dtype=np.float64)
        cos = _cosine(unit, centers, labels)
    run = _Run(run_id, labels, norm, unit, W64, b64, centers, cos)
    if need_adv:
        adv, attack, eps = _select_adv(ds, attack, eps)
        run.adv_norm, run.adv_unit = _polar(np.asarray(adv.values, dtype=np.float64)[idx])
        if need_cos:
            run.adv_cos = _cosine(run.adv_unit, centers, labels)
    logits = np.asarray(ds["logits"].values, dtype=np.float64)[idx]
    recomputed = h @ W64.T + b64
    scale = max(1.0, float(np.abs(logits).max()))
    if np.abs(recomputed - logits).max() > 1e-3 * scale:  # float32 model outputs agree to ~1e-6 relative
        warnings.warn(f"decompose: run {run_id!r}: the stored logits differ from W·h + b by up to "
                      f"{np.abs(recomputed - logits).max():.3g}; the decomposition uses W·h + b (are 'features' "
                      "the exact input of the final linear layer?)", RuntimeWarning, stacklevel=4)
    return run, ids, attack, eps


# ----------------------------------------------------------------------------------------------
# worlds and their outcomes
# ----------------------------------------------------------------------------------------------
def _world_logits(runs: tuple[_Run, _Run], pick: dict[str, int], mode: str, adv: bool) -> np.ndarray:
    """Logits (n, K) of one world; ``pick[factor]`` is 0 (control) or 1 (treated)."""
    if mode == "basisfree":  # z = ||h_M|| ||W_S||_F (u_R · W_R / ||W_R||_F) + b_R: no product across two bases
        mag, scale, rest = runs[pick["magnitude"]], runs[pick["head_norm"]], runs[pick["orientation"]]
        norm = mag.adv_norm if adv else mag.norm
        unit = rest.adv_unit if adv else rest.unit
        s_rest, s_new = np.linalg.norm(rest.W), np.linalg.norm(scale.W)
        return (norm * (s_new / s_rest))[:, None] * (unit @ rest.W.T) + rest.b
    head = runs[pick["head"]]
    mag = runs[pick["magnitude"]]
    dirr = runs[pick["direction"]]
    norm = mag.adv_norm if adv else mag.norm
    unit = dirr.adv_unit if adv else dirr.unit
    if mode == "cosine":
        src = runs[pick["cosine"]]
        cos = src.adv_cos if adv else src.cos
        if not (pick["cosine"] == pick["direction"] == pick["head"]):  # else the rotation is the identity
            unit = _rotate_to_cosine(unit, head.centers[dirr.labels], cos)
    return (norm[:, None] * unit) @ head.W.T + head.b


def _per_image(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    conf, _, correct, nll, brier = _sample_stats_block(logits, labels)
    rows = np.arange(labels.shape[0])
    zy = logits[rows, labels]
    other = logits.copy()
    other[rows, labels] = -np.inf
    return {"confidence": conf, "correct": correct.astype(np.float64), "nll": nll, "brier": brier,
            "margin": zy - other.max(axis=1), "logits": logits, "labels": labels}


def _run_outcome(name: str, stats: dict[str, np.ndarray], n_bins: int, idx: np.ndarray | None = None) -> float:
    """Run-level outcome from per-image statistics (the package's calibration kernels)."""
    def get(key: str) -> np.ndarray:
        return stats[key] if idx is None else stats[key][idx]
    if name in _EXTRA:  # ece_ts, ece_debiased, ece_floor, aurc: the metrics layer's one implementation
        return _extra_outcome(name, stats, n_bins, idx)
    if name in ("signed_ece", "ece"):
        bins = _width_bin_stats(get("confidence"), get("correct"), n_bins)
        return _calibration_error(bins, "signed" if name == "signed_ece" else "l1")
    if name in ("accuracy", "robust_accuracy"):
        return float(get("correct").mean())
    if name == "robust_margin":
        return float(get("margin").mean())
    return float(get(name).mean())


def _components(v: np.ndarray) -> np.ndarray:
    """(1 + 3k, ...) from world outcomes (2^k, ...): total, Shapley shares, switched-first and switched-last effects."""
    v = np.asarray(v, dtype=np.float64)
    k = int(round(math.log2(v.shape[0])))
    full = v.shape[0] - 1
    first = np.stack([v[1 << j] - v[0] for j in range(k)])
    last = np.stack([v[full] - v[full ^ (1 << j)] for j in range(k)])
    return np.concatenate([(v[full] - v[0])[None], shapley_values(v), first, last])


def _boot_world_values(name: str, worlds: list[dict[str, np.ndarray]], counts: np.ndarray,
                       n_bins: int) -> np.ndarray:
    """(B, 2^k) outcomes of every world on B bootstrap resamples of the images (``counts``: (B, n) multiplicities)."""
    n = counts.shape[1]
    out = np.empty((counts.shape[0], len(worlds)))
    for w, stats in enumerate(worlds):
        if name in _EXTRA:  # not sums over images: recomputed on each resample (a repeated image keeps its half)
            out[:, w] = [_run_outcome(name, stats, n_bins, np.repeat(np.arange(n), c.astype(np.int64)))
                         for c in counts]
        elif name in ("signed_ece", "ece"):
            onehot = np.eye(n_bins)[_bin_index(stats["confidence"], n_bins)]  # (n, M)
            bins = np.stack([counts @ onehot, counts @ (onehot * stats["confidence"][:, None]),
                             counts @ (onehot * stats["correct"][:, None])], axis=1)  # (B, 3, M), as _width_bin_stats
            norm = "signed" if name == "signed_ece" else "l1"
            out[:, w] = [_calibration_error(b, norm) for b in bins]
        else:
            out[:, w] = counts @ _image_values(name, stats) / n
    return out


def _image_values(name: str, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Per-image quantity whose mean is the outcome (overconfidence = confidence − correct for signed ECE)."""
    if name == "signed_ece":
        return stats["confidence"] - stats["correct"]
    if name in ("accuracy", "robust_accuracy"):
        return stats["correct"]
    if name == "robust_margin":
        return stats["margin"]
    return stats[name]


def _world_stats(runs: tuple[_Run, _Run], factors: tuple[str, ...], mode: str,
                 adv: bool) -> list[dict[str, np.ndarray]]:
    """Per-image statistics of the 2^k worlds (bit j of the world index: factor j from the treated run)."""
    out = []
    for s in range(2 ** len(factors)):
        pick = {f: (s >> j) & 1 for j, f in enumerate(factors)}
        if mode == "direction":
            pick.setdefault("cosine", pick["direction"])
        out.append(_per_image(_world_logits(runs, pick, mode, adv), runs[0].labels))
    return out


# ----------------------------------------------------------------------------------------------
# inference helpers
# ----------------------------------------------------------------------------------------------
def _relabelings(n: int, n_treated: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Boolean (R, n) treated masks: all C(n, n_treated) when few (exact, the observed one included), else
    `MAX_EXACT_RELABELINGS` uniform random draws (the observed labeling enters through the +1 correction)."""
    total = math.comb(n, n_treated)
    if total <= MAX_EXACT_RELABELINGS:
        masks = np.zeros((total, n), dtype=bool)
        for r, combo in enumerate(itertools.combinations(range(n), n_treated)):
            masks[r, list(combo)] = True
        return masks, True
    masks = np.zeros((MAX_EXACT_RELABELINGS, n), dtype=bool)
    for r in range(MAX_EXACT_RELABELINGS):
        masks[r, rng.choice(n, n_treated, replace=False)] = True
    return masks, False


def _seed_matches(table: pd.DataFrame, c_ids: list[str], t_ids: list[str]) -> tuple[list[tuple[str, str]] | None, str]:
    """Control/treated run ids matched one to one by their ``seed`` attribute, or None and the reason."""
    runs = table.set_index("run_id")
    if "seed" not in runs.columns:
        return None, "the runs have no 'seed' attribute"
    cs, ts = runs.loc[c_ids, "seed"], runs.loc[t_ids, "seed"]
    if cs.isna().any() or ts.isna().any():
        return None, "some runs have no seed"
    if cs.duplicated().any() or ts.duplicated().any() or set(cs) != set(ts):
        return None, (f"the control seeds {sorted(map(str, cs))} and treated seeds {sorted(map(str, ts))} do not "
                      "match one to one")
    by_seed = {seed: rid for rid, seed in ts.items()}
    return [(rid, by_seed[seed]) for rid, seed in cs.items()], ""


def _sign_flips(n: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Boolean (R, n) swap patterns: all 2^n when few (exact), else random ones (+1 correction applies)."""
    if 2 ** n <= MAX_EXACT_RELABELINGS:
        return np.array(list(itertools.product([False, True], repeat=n)), dtype=bool).reshape(-1, n), True
    return rng.random((MAX_EXACT_RELABELINGS, n)) < 0.5, False


def _paired_t(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """Mean and t-interval (df n − 1) of paired observations."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    est = float(v.mean())
    se = float(v.std(ddof=1)) / math.sqrt(v.size)
    if se <= _TOL * max(1.0, abs(est)):
        return est, est, est
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1)) * se
    return est, est - half, est + half


def _hoeffding_t(F: np.ndarray, level: float) -> tuple[float, float, float]:
    """Estimate, CI of the mean of F (n_c, n_t) over control × treated pairs (two-sample U-statistic)."""
    from scipy import stats

    n_c, n_t = F.shape
    est = float(F.mean())
    row, col = F.mean(axis=1), F.mean(axis=0)
    v_c, v_t = row.var(ddof=1) / n_c, col.var(ddof=1) / n_t
    resid = F - row[:, None] - col[None, :] + est
    df_r = (n_c - 1) * (n_t - 1)
    v_r = float((resid ** 2).sum() / df_r) / (n_c * n_t)
    var = v_c + v_t + v_r
    if var <= _TOL * max(1.0, est * est):
        return est, est, est
    parts = [(v_c, n_c - 1), (v_t, n_t - 1), (v_r, df_r)]
    df = var ** 2 / sum(v * v / d for v, d in parts if v > 0)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(var)
    return est, est - half, est + half


# ----------------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------------
@dataclass
class DecompositionResult:
    """What `decompose` returns.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per outcome and component (``total``, then one per factor): ``estimate``, ``ci_low``,
        ``ci_high``, ``share`` (estimate / total; NaN when the total's interval includes 0), ``p_value``,
        ``p_floor``, ``note``.
    per_pair : pandas.DataFrame
        One row per control × treated run pair, outcome and component: ``value``.
    per_image : pandas.DataFrame or None
        Per-image shares averaged over the run pairs (per-image outcomes only): ``sample``, ``outcome``,
        ``total`` and one column per factor; each row's factors add up to its total.
    switch_effects : pandas.DataFrame
        The two extreme orders behind each Shapley share, with the same inference: ``switched="first"`` is
        ``v({j}) − v(∅)``, the effect of switching factor j alone with everything else from the control run
        (the analogue of a *pure* natural indirect effect, under the control network), ``"last"`` is
        ``v(N) − v(N ∖ {j})``, switching it last with everything else from the treated run (a *total*
        indirect effect, under the treated network). Columns outcome, factor, switched, estimate, ci_low,
        ci_high, p_value, p_floor, note.
    alignment : pandas.DataFrame
        Per run pair: ``own_accuracy`` (mean of the two runs' accuracies), ``head_swap_accuracy`` (mean accuracy
        of the two worlds where only the head is swapped), ``aligned`` (the swap keeps at least half of the
        above-chance accuracy). Unaligned pairs combine coordinates of different networks.
    pairing : str
        ``"seed"`` or ``"all"`` (see `decompose`'s ``pairs``).
    estimand, design, inference : str
        What is estimated, how runs and images are paired, how intervals and p-values are computed.
    """

    table: pd.DataFrame
    per_pair: pd.DataFrame
    per_image: pd.DataFrame | None
    switch_effects: pd.DataFrame
    alignment: pd.DataFrame
    pairing: str
    estimand: str
    design: str
    inference: str
    factors: tuple[str, ...]
    outcomes: tuple[str, ...]
    treatment: str
    control: Any
    treated: Any
    control_runs: list[str]
    treated_runs: list[str]
    ci_level: float
    attack: str | None = None
    eps: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self, outcome: str | None = None) -> pd.DataFrame:
        """Rows total then one per factor (per outcome); columns outcome, component, estimate, ci_low,
        ci_high, share, p_value, p_floor, note."""
        t = self.table
        if outcome is not None:
            if outcome not in self.outcomes:
                raise QueryError(f"outcome: expected one of {list(self.outcomes)}, got {outcome!r}")
            t = t[t["outcome"] == outcome]
        return t.reset_index(drop=True).copy()

    def describe(self) -> str:
        """Estimand, design and inference in three sentences."""
        return f"Estimand: {self.estimand}. Design: {self.design}. Inference: {self.inference}."

    def plot(self, outcome: str | None = None, ax: Any = None) -> Any:
        """Bar chart of the total and each factor's share with its interval (one panel per outcome).

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        outcomes = [outcome] if outcome is not None else list(self.outcomes)
        for o in outcomes:
            if o not in self.outcomes:
                raise QueryError(f"outcome: expected one of {list(self.outcomes)}, got {o!r}")
        if ax is None:
            fig, axes = plt.subplots(1, len(outcomes), figsize=(3.6 * len(outcomes), 3.2), squeeze=False)
            axes = list(axes[0])
        else:
            axes, fig = [ax], ax.figure
        for a, o in zip(axes, outcomes):
            g = self.table[self.table["outcome"] == o]
            y = np.arange(len(g))[::-1]
            est = g["estimate"].to_numpy()
            colors = ["0.35"] + ["C0", "C1", "C2", "C3"][: len(g) - 1]
            a.barh(y, est, color=colors, alpha=0.8)
            err = np.vstack([est - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - est])
            a.errorbar(est, y, xerr=np.where(np.isfinite(err), err, 0.0), fmt="none", ecolor="k", capsize=3)
            a.axvline(0, color="k", lw=0.8)
            a.set_yticks(y, list(g["component"]))
            a.set_xlabel(f"{o}: {self.treated} − {self.control}")
        fig.suptitle(f"Head-based decomposition ({int(round(100 * self.ci_level))}% intervals)", fontsize=10)
        fig.tight_layout()
        return fig


# ----------------------------------------------------------------------------------------------
# the public function
# ----------------------------------------------------------------------------------------------
def _check_factors(factors: Any) -> tuple[tuple[str, ...], str]:
    if isinstance(factors, str) or not isinstance(factors, (list, tuple)):
        raise QueryError(f"factors: expected a tuple of factor names from {list(FACTORS)}, got {factors!r}")
    fs = tuple(factors)
    for f in fs:
        if f not in FACTORS:
            raise QueryError(f"factors: expected names from {list(FACTORS)}, got {f!r}")
    if len(set(fs)) != len(fs):
        raise QueryError(f"factors: each factor at most once, got {list(fs)}")
    if fs and set(fs) <= {"head", "magnitude", "direction"} and len(fs) == 3:
        return fs, "direction"
    if set(fs) == {"head", "magnitude", "cosine"}:
        return fs + ("direction",), "cosine"
    if set(fs) == {"head", "magnitude", "cosine", "direction"}:
        return fs, "cosine"
    if len(fs) == 3 and set(fs) == {"magnitude", "head_norm", "orientation"}:
        return fs, "basisfree"
    raise QueryError(f"factors: expected ('head', 'magnitude', 'direction'), ('head', 'magnitude', 'cosine') (or with "
                     f"'direction' too), or ('magnitude', 'head_norm', 'orientation'), got {list(fs)}")


def _runs_of(runs: pd.DataFrame, treatment: str, level: Any, name: str) -> list[str]:
    if treatment not in runs.columns:
        raise QueryError(f"treatment: expected a run attribute from {sorted(map(str, runs.columns))}, "
                         f"got {treatment!r}")
    col = runs[treatment]
    hit = runs[(col == level) | (col.astype(str) == str(level))]
    if hit.empty:
        raise QueryError(f"{name}: no run has {treatment} = {level!r}; levels: {sorted(set(map(str, col.dropna())))}")
    return sorted(map(str, hit["run_id"]))


def _randomization_row(outcome: str, component: str, est: float, lo: float, hi: float, stat: np.ndarray,
                       exact: bool, n_relab: int, floor: float) -> dict[str, Any]:
    """One summary row with its two-sided randomization p-value.

    ``stat`` holds the statistic under each relabeling (the observed one included when ``exact``); the p-value is
    the share at least as extreme as ``|est|`` (exact) or ``(1 + #) / (n + 1)`` (Monte Carlo, Phipson & Smyth
    2010), never below the design's ``floor``.
    """
    tol = 1e-9 * max(1.0, abs(est))
    hits = np.abs(stat) >= abs(est) - tol
    p = float(hits.mean()) if exact else float((hits.sum() + 1) / (n_relab + 1))
    p = max(p, floor)
    note = "p at the design's floor" if p <= floor * (1 + 1e-9) else ""
    return dict(outcome=outcome, component=component, estimate=est, ci_low=lo, ci_high=hi, p_value=p,
                p_floor=floor, note=note)


def decompose(study: Any, treatment: str = "regularizer", control: Any = "ce", treated: Any = "mixup",
              outcome: str | Sequence[str] = "signed_ece", factors: Sequence[str] = ("head", "magnitude", "direction"),
              *, n_boot: int = 1000, rng: np.random.Generator | int | None = None, ci_level: float = 0.95,
              estimand: str = "auto", pairs: str = "auto", n_bins: int = 15, attack: str | None = None,
              eps: float | None = None) -> DecompositionResult:
    """Split the treated − control gap of an outcome into head, feature magnitude and feature direction shares.

    For each control run c and treated run t (pairs matched by seed, or all pairs: ``pairs``), images are
    paired by their ``sample`` id and
    each image's feature ``h`` is written as ``m · u`` (``m = ||h||``, ``u = h / m``). Every world takes
    each factor from c or t, its logits are ``W (m u) + b`` and its outcome is computed from them with
    the package's calibration kernels (`causalgeom.metrics.kernels`, shared with `causalgeom.metrics.calibration`). The
    total ``v(all t) − v(all c)`` is split by the Shapley value over the k! orders of switching factors (`shapley_values`); the shares add
    up to the total exactly (rounding only). Run pair values are averaged over the pairs.

    Additivity: for outcomes that are means of a per-image quantity (``signed_ece`` = mean confidence −
    accuracy = mean of confidence − correct, ``nll``, ``accuracy``, ``brier``, ``robust_*``) the shares
    also add up image by image (``result.per_image``). The ECE is not a mean over images (bins of the
    confidence), so its shares are shares of the run-level ECE only.

    Parameters
    ----------
    study : Study or path
        Runs with ``features``, ``logits``, ``label``, ``head_weight`` (``head_bias``: 0 if missing).
    treatment : str
        Run attribute that defines the arms (``study.runs`` column), e.g. ``"regularizer"``.
    control, treated : level
        The two arms' values of ``treatment``.
    outcome : str or list of str
        From :data:`DECOMPOSE_OUTCOMES`: ``"signed_ece"`` (= overconfidence, mean confidence − accuracy),
        ``"ece"`` (top-label, ``n_bins`` equal-width bins, l1), ``"nll"``, ``"accuracy"``, ``"brier"``;
        ``"robust_accuracy"`` / ``"robust_margin"`` (true-class logit minus the best other) from the
        world logits of the attacked images' features (needs ``adv_features``: ``extract --save-adv``);
        ``"ece_ts"``, ``"ece_debiased"``, ``"ece_floor"``, ``"aurc"`` (`causalgeom.metrics.calibration.EXTRA_OUTCOMES`;
        ``ece_ts`` refits the temperature in every world on the same held-out half, `causalgeom.metrics.calibration.ts_split`).
    factors : tuple of str
        ``("head", "magnitude", "direction")`` (2³ worlds), or ``("head", "magnitude", "cosine")``: the
        direction's cosine to the class center is its own factor, and ``direction`` then means the rest of
        the direction (2⁴ worlds, a fourth row ``direction``). In a world with head from run H, direction
        from run D and cosine from run C, the direction is ``u_D`` rotated within the plane of ``u_D`` and
        the minimal-loss center of the true class **of run H's head** (`causalgeom.metrics.geometry.class_centers`,
        ``kind="minimal_loss"``, H's own label-smoothing eps) until its cosine to that center equals
        **run C's cosine to its own head's center**; the rest of the direction (where u points within
        the plane orthogonal to the center) is D's. Where H = D = C the feature is used as stored.
        ``("magnitude", "head_norm", "orientation")`` is the basis-free split for runs whose feature bases
        are not aligned (independently initialised networks, two public models): the logits
        ``z = ||h|| · ||W||_F · (u · W / ||W||_F) + b`` take the feature magnitude from one run, the head's
        Frobenius norm from one run, and the orientation (``u``, ``W / ||W||_F`` and ``b`` together) from
        one run, so no head is ever applied to another network's features.
    n_boot : int
        Bootstrap replicates of the model-conditional estimand (image bootstrap).
    rng : numpy.random.Generator, int or None
        Randomness of the image bootstrap and of a Monte Carlo randomization test.
    ci_level : float
        Confidence level of the intervals, in (0, 1).
    estimand : {"auto", "runs", "model"}
        ``"runs"``: the average effect over training runs (needs >= 2 runs per arm); ``"model"``: these
        models, inference over test images; ``"auto"``: runs when both arms have >= 2 runs, else model.
    pairs : {"auto", "seed", "all"}
        Which control and treated runs are paired. Head and direction can only be swapped between runs whose
        feature coordinates correspond: two independently initialised networks have unrelated feature bases
        (``W_t · u_c`` is then close to chance), while runs trained from the same seed (same initialisation)
        stay largely aligned. ``"seed"``: pair each control run with the treated run of the same ``seed``
        attribute (error if the seeds do not match one to one); ``"all"``: all n_c × n_t pairs; ``"auto"``:
        ``"seed"`` when the seeds match one to one, else ``"all"``. ``result.alignment`` reports, per pair,
        the accuracy kept when only the head is swapped, and a note flags unaligned pairs.
    n_bins : int
        Bins of the ECE.
    attack, eps
        The attack and budget of the robust outcomes (default: the first attack, the middle of the eps grid).

    Returns
    -------
    DecompositionResult

    Notes
    -----
    Inference over runs (``estimand="runs"``): the estimate is the mean of the pair values F(c, t) over
    the n_c × n_t pairs, a two-sample U-statistic. The interval is a t-interval with the Hoeffding
    variance s_c²/n_c + s_t²/n_t + s_r²/(n_c n_t) (row means, column means, interaction residuals) and
    Welch–Satterthwaite degrees of freedom; for the total, whose F(c, t) = Y_t − Y_c, this is exactly
    Welch's t-interval on the run outcomes. The p-value is a run-level randomization test: the arm labels
    of the n_c + n_t runs are permuted (all C(n, n_t) relabelings when at most `MAX_EXACT_RELABELINGS`,
    else that many random ones with the +1 correction) and the statistic recomputed from the pair values
    of every run pair (within-arm pairs included); two-sided, |statistic| >= |observed|. Its floor, the
    smallest p-value the design can give, is 2 / C(n, n_t) with equal arms (the mirrored labeling gives
    −observed) and 1 / C(n, n_t) otherwise; it is reported in ``p_floor``.

    With seed-matched pairs (``pairs="seed"``) the pair values are paired observations: the interval is the
    t-interval over the n pairs (df n − 1) and the p-value the exact sign-flip randomization test (within each
    pair the arm labels are swapped, all 2^n patterns; more than `MAX_EXACT_RELABELINGS`: Monte Carlo with
    the +1 correction), whose floor is 2 / 2^n (0.0625 for 5 pairs).

    Model-conditional (``estimand="model"``): the same point estimate; the interval is the percentile
    bootstrap over test images, resampled together for all runs (paired), ``n_boot`` replicates; no
    p-value is given (NaN).

    References
    ----------
    Shapley, "A value for n-person games", 1953. Hoeffding, "A class of statistics with asymptotically
    normal distribution", 1948. Fisher, "The Design of Experiments", 1935 (randomization tests).
    Welch, "The generalization of Student's problem", 1947.
    """
    from ..dump.study import as_study

    study = as_study(study)
    outcomes = (outcome,) if isinstance(outcome, str) else tuple(outcome)
    if not outcomes:
        raise QueryError(f"outcome: expected a name from {list(DECOMPOSE_OUTCOMES)} or a list of them, got {outcome!r}")
    for o in outcomes:
        if o not in DECOMPOSE_OUTCOMES:
            raise QueryError(f"outcome: expected one of {list(DECOMPOSE_OUTCOMES)}, got {o!r}")
    user_factors = tuple(factors) if isinstance(factors, (list, tuple)) else factors
    facs, mode = _check_factors(user_factors)
    if estimand not in ESTIMANDS:
        raise QueryError(f"estimand: expected one of {list(ESTIMANDS)}, got {estimand!r}")
    if pairs not in PAIRINGS:
        raise QueryError(f"pairs: expected one of {list(PAIRINGS)}, got {pairs!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise QueryError(f"n_boot: expected an integer >= 2, got {n_boot!r}")
    try:
        level = float(ci_level)
    except (TypeError, ValueError):
        raise QueryError(f"ci_level: expected a number in (0, 1), got {ci_level!r}") from None
    if not 0 < level < 1:
        raise QueryError(f"ci_level: expected a number in (0, 1), got {ci_level!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise QueryError(f"n_bins: expected a positive integer, got {n_bins!r}")
    gen = check_random_state(rng, error=QueryError)
    if str(control) == str(treated):
        raise QueryError(f"treated: expected a level different from control {control!r}, got {treated!r}")

    run_table = study.runs  # one scan of the study folder
    c_ids = _runs_of(run_table, treatment, control, "control")
    t_ids = _runs_of(run_table, treatment, treated, "treated")
    n_c, n_t = len(c_ids), len(t_ids)
    matched, why = _seed_matches(run_table, c_ids, t_ids)
    if pairs == "seed" and matched is None:
        raise QueryError(f"pairs='seed': {why}; use pairs='all'")
    pairing = "seed" if (pairs == "seed" or (pairs == "auto" and matched is not None)) else "all"
    n_units = len(matched) if pairing == "seed" else min(n_c, n_t)
    if estimand == "auto":
        estimand = "runs" if n_units >= 2 else "model"
    elif estimand == "runs" and n_units < 2:
        raise QueryError(f"estimand='runs': the effect over training runs needs >= 2 runs per arm to estimate its "
                         f"variance, got {n_c} {control!r} and {n_t} {treated!r} runs; use estimand='model' (these "
                         "models, inference over test images)")

    need_adv = any(o in _ROBUST for o in outcomes)
    need_cos = mode == "cosine"
    all_ids = c_ids + t_ids
    loaded: dict[str, _Run] = {}
    ref_ids: np.ndarray | None = None
    order_ref: np.ndarray | None = None
    sel_attack, sel_eps = attack, eps
    for rid in all_ids:
        ds = study[rid]
        ids = _sample_ids(ds)
        if ref_ids is None:
            if len(np.unique(ids)) != len(ids):
                raise QueryError(f"run {rid!r}: sample ids are not unique; images cannot be paired across runs")
            ref_ids, order = ids, None
            order_ref = np.argsort(ids, kind="stable")
        else:
            order = _align(ref_ids, order_ref, ids, rid, all_ids[0])
        run, _, a, e = _load_run(ds, order, need_cos, need_adv, sel_attack, sel_eps)
        if need_adv and sel_attack is None:
            sel_attack, sel_eps = a, e
        loaded[rid] = run
    labels = loaded[all_ids[0]].labels
    ts_fit = _ts_split(ref_ids)
    for rid in all_ids[1:]:
        if not np.array_equal(loaded[rid].labels, labels):
            raise QueryError(f"run {rid!r}: the labels of the paired images differ from run {all_ids[0]!r}; the runs "
                             "did not score the same images")

    k = len(facs)
    names = ("total",) + facs + tuple(f"{f}|first" for f in facs) + tuple(f"{f}|last" for f in facs)
    n_main = 1 + k
    # reversing a pair's roles negates the total and every Shapley share, and swaps "first" with "last"
    reverse = np.array([0] + list(range(1, n_main)) + list(range(n_main + k, n_main + 2 * k))
                       + list(range(n_main, n_main + k)))

    # pair values F[i, j] (outcome, component) for the pairs the inference needs
    if pairing == "seed":
        cross_pairs = [(c_ids.index(c), n_c + t_ids.index(t)) for c, t in matched]
        pair_list = list(cross_pairs)
    else:
        cross_pairs = [(i, n_c + j) for i in range(n_c) for j in range(n_t)]
        pair_list = (list(itertools.combinations(range(len(all_ids)), 2)) if estimand == "runs" else list(cross_pairs))
    align_rows = []
    n_all = len(all_ids)
    F = {o: np.zeros((len(names), n_all, n_all)) for o in outcomes}
    per_image_sum = {o: np.zeros((n_main, labels.shape[0])) for o in outcomes if o in PER_IMAGE_OUTCOMES}
    boot_stats: list[tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]] | None]] = []
    for i, j in pair_list:
        pair = (loaded[all_ids[i]], loaded[all_ids[j]])
        worlds = _world_stats(pair, facs, mode, adv=False)
        adv_worlds = _world_stats(pair, facs, mode, adv=True) if need_adv else None
        for w in worlds + (adv_worlds or []):
            w["ts_fit"] = ts_fit  # ece_ts: the held-out split of the images (the same in every run)
        is_cross = i < n_c <= j
        if is_cross and mode != "basisfree":
            acc = [float(w["correct"].mean()) for w in worlds]
            full = len(worlds) - 1
            align_rows.append({"control_run": all_ids[i], "treated_run": all_ids[j],
                               "own_accuracy": (acc[0] + acc[-1]) / 2,
                               "head_swap_accuracy": (acc[1] + acc[full ^ 1]) / 2})
        for o in outcomes:
            ws = adv_worlds if o in _ROBUST else worlds
            v = np.array([_run_outcome(o, w, n_bins) for w in ws])
            vals = _components(v)
            F[o][:, i, j] = vals
            F[o][:, j, i] = -vals[reverse]
            if is_cross and o in per_image_sum:
                img = np.stack([_image_values(o, w) for w in ws])
                per_image_sum[o] += np.concatenate([(img[-1] - img[0])[None], shapley_values(img)])
        if is_cross and estimand == "model":
            boot_stats.append((worlds, adv_worlds))

    cross = np.ix_(range(n_c), range(n_c, n_all))
    ci_idx = np.array([i for i, _ in cross_pairs])
    cj_idx = np.array([j for _, j in cross_pairs])
    per_pair = pd.DataFrame([
        {"control_run": all_ids[i], "treated_run": all_ids[j], "outcome": o, "component": name,
         "value": float(F[o][m, i, j])}
        for o in outcomes for i, j in cross_pairs for m, name in enumerate(names[:n_main])])
    chance = 1.0 / loaded[all_ids[0]].W.shape[0]
    alignment = pd.DataFrame(align_rows, columns=["control_run", "treated_run", "own_accuracy", "head_swap_accuracy"])
    kept = (alignment["head_swap_accuracy"] - chance) / np.maximum(alignment["own_accuracy"] - chance, 1e-12)
    alignment["aligned"] = (kept >= 0.5).astype(bool)

    table_rows = []
    notes: list[str] = []
    if estimand == "runs" and pairing == "seed":
        n_p = len(cross_pairs)
        signs, exact = _sign_flips(n_p, gen)
        n_relab = signs.shape[0]
        floor = 2.0 / 2 ** n_p
        if not exact:
            floor = max(floor, 1.0 / (n_relab + 1))
        for o in outcomes:
            for m, name in enumerate(names):
                val = F[o][m][ci_idx, cj_idx]
                rev = F[o][m][cj_idx, ci_idx]  # the pair value with the two runs' roles swapped
                est, lo, hi = _paired_t(val, level)
                stat = np.where(signs, rev[None, :], val[None, :]).mean(axis=1)
                table_rows.append(_randomization_row(o, name, est, lo, hi, stat, exact, n_relab, floor))
        est_text = (f"average effect over training runs (runs as the population): the mean over the {n_p} "
                    f"control × treated run pairs matched by seed")
        inf_text = (f"{int(round(100 * level))}% t-intervals over the {n_p} seed-matched run pairs (df {n_p - 1}); "
                    f"two-sided p-values from a sign-flip randomization test (arm labels swapped within pairs; "
                    f"{'all' if exact else 'Monte Carlo,'} {n_relab} patterns; smallest possible p = {floor:.3g})")
    elif estimand == "runs":
        masks, exact = _relabelings(n_all, n_t, gen)
        n_relab = masks.shape[0]
        R = math.comb(n_all, n_t)
        floor = (2.0 if n_c == n_t else 1.0) / R
        if not exact:
            floor = max(floor, 1.0 / (n_relab + 1))
        M = masks.astype(np.float64)
        for o in outcomes:
            for m, name in enumerate(names):
                Fm = F[o][m]
                est, lo, hi = _hoeffding_t(Fm[cross], level)
                stat = np.einsum("ri,ij,rj->r", 1.0 - M, Fm, M) / (n_c * n_t)
                table_rows.append(_randomization_row(o, name, est, lo, hi, stat, exact, n_relab, floor))
        est_text = (f"average effect over training runs (runs as the population): the mean over the {n_c} × {n_t} "
                    f"control × treated run pairs")
        inf_text = (f"{int(round(100 * level))}% t-intervals over runs (two-sample U-statistic variance, "
                    f"Welch–Satterthwaite df; the total's is Welch's t-interval); two-sided p-values from a "
                    f"run-level randomization test ({'all' if exact else 'Monte Carlo,'} {n_relab} relabelings of "
                    f"{n_all} runs; smallest possible p = {floor:.3g})")
    else:
        n_img = labels.shape[0]
        counts = np.stack([np.bincount(gen.integers(0, n_img, n_img), minlength=n_img)
                           for _ in range(int(n_boot))]).astype(np.float64)  # (B, n) resampling counts
        for o in outcomes:
            v_boot = np.zeros((int(n_boot), 2 ** k))
            for worlds, adv_worlds in boot_stats:
                v_boot += _boot_world_values(o, adv_worlds if o in _ROBUST else worlds, counts, n_bins)
            v_boot /= len(boot_stats)  # Shapley values are linear in v: shares of the pair-averaged worlds
            reps = _components(v_boot.T).T
            alpha = (1 - level) / 2
            for m, name in enumerate(names):
                est = float(F[o][m][ci_idx, cj_idx].mean())
                lo, hi = np.quantile(reps[:, m], [alpha, 1 - alpha])
                table_rows.append(dict(outcome=o, component=name, estimate=est, ci_low=float(lo), ci_high=float(hi),
                                       p_value=np.nan, p_floor=np.nan, note=""))
        est_text = ("model-conditional: these models, inference over test images" + (
            f" (the {len(cross_pairs)} run pairs averaged)" if len(cross_pairs) > 1 else ""))
        inf_text = (f"{int(round(100 * level))}% percentile bootstrap over test images, paired (the same resampled "
                    f"images for every run), {int(n_boot)} replicates; no p-value")
        if min(n_c, n_t) < 2:
            notes.append(f"{min(n_c, n_t)} run in an arm: the effect over training runs is undefined (no between-run "
                         "variance); the estimand is conditional on these models")
    full = pd.DataFrame(table_rows)
    is_switch = full["component"].str.contains("|", regex=False)
    table = full[~is_switch].reset_index(drop=True)
    switch = full[is_switch].reset_index(drop=True)
    parts = switch.pop("component").str.split("|", expand=True)
    switch.insert(1, "factor", parts[0])
    switch.insert(2, "switched", parts[1])
    share = []
    for rec in table.to_dict("records"):
        tot = table[(table["outcome"] == rec["outcome"]) & (table["component"] == "total")].iloc[0]
        ok = tot["ci_low"] > 0 or tot["ci_high"] < 0
        share.append(rec["estimate"] / tot["estimate"] if ok else np.nan)
    table.insert(5, "share", share)
    if table["share"].isna().any():
        notes.append("share: NaN where the total's interval includes 0 (a share of a total that may be 0 means "
                     "nothing)")

    per_image = None
    if per_image_sum:
        n_cross = len(cross_pairs)
        frames = []
        for o, arr in per_image_sum.items():
            d = {"sample": ref_ids, "outcome": o}
            d.update({name: arr[m] / n_cross for m, name in enumerate(names[:n_main])})
            frames.append(pd.DataFrame(d))
        per_image = pd.concat(frames, ignore_index=True)

    mode_text = {"direction": "head (W, b), feature magnitude ||h|| and feature direction h/||h||",
                 "cosine": "head (W, b), feature magnitude, cosine to the true-class minimal-loss center of the head "
                           "in use, and the rest of the direction",
                 "basisfree": "feature magnitude ||h||, head norm ||W||_F and orientation (W/||W||_F, h/||h|| and b "
                              "of one run: no head is applied to another network's features)"}[mode]
    design = (f"paired by image: {labels.shape[0]} test images scored by all {n_c} {control!r} and {n_t} {treated!r} "
              f"runs; " + ("runs paired by seed (same initialisation); " if pairing == "seed" else
                           "all control × treated run pairs; ")
              + f"each pair's gap split among {mode_text} by Shapley averaging over the {math.factorial(k)} "
              f"orders of {2 ** k} worlds (logits = W·h + b)")
    if need_adv:
        design += (f"; robust outcomes from the attacked images' features ({sel_attack}, ε = "
                   f"{eps_label(sel_eps)})")
    n_bad = int((~alignment["aligned"]).sum())
    if n_bad:
        msg = (f"{n_bad} of {len(alignment)} run pairs have unaligned feature bases (swapping only the head keeps less "
               f"than half of the above-chance accuracy; see .alignment): their worlds combine the coordinates of "
               f"different networks, so their head and direction shares (and the magnitude share, averaged over those "
               f"worlds) are not interpretable; only the total is. "
               + ("Pair runs that share an initialisation (pairs='seed'), or " if pairing == "all" else "Use ")
               + "the basis-free split factors=('magnitude', 'head_norm', 'orientation').")
        notes.append(msg)
        warnings.warn(f"decompose: {msg}", RuntimeWarning, stacklevel=2)
    return DecompositionResult(table=table, per_pair=per_pair, per_image=per_image, switch_effects=switch,
                               alignment=alignment, pairing=pairing, estimand=est_text, design=design,
                               inference=inf_text, factors=facs, outcomes=outcomes, treatment=treatment,
                               control=control, treated=treated, control_runs=c_ids, treated_runs=t_ids,
                               ci_level=level, attack=sel_attack if need_adv else None,
                               eps=sel_eps if need_adv else None, notes=notes)


def _align(ref_ids: np.ndarray, ref_order: np.ndarray, ids: np.ndarray, rid: str, ref_rid: str) -> np.ndarray:
    """Row order that puts run ``rid``'s images in the reference run's order; error if the id sets differ."""
    if len(ids) != len(ref_ids) or len(np.unique(ids)) != len(ids):
        raise QueryError(f"run {rid!r}: {len(ids)} images (unique ids: {len(np.unique(ids))}) vs {len(ref_ids)} in "
                         f"run {ref_rid!r}; decompose pairs images by their sample id, so every run must score the "
                         "same images")
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], ref_ids[ref_order]):
        missing = np.setdiff1d(ref_ids, ids)[:5]
        raise QueryError(f"run {rid!r}: its sample ids differ from run {ref_rid!r}'s (e.g. missing "
                         f"{missing.tolist()}); "
                         "decompose pairs images by their sample id, so every run must score the same images")
    out = np.empty_like(order)
    out[ref_order] = order  # position p of the reference holds id ref_ids[p] = ids[out[p]]
    return out
