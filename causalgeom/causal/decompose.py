"""Decomposition of a treated − control gap by swapping parts of paired runs between them (Shapley split).

Two levels. The **function-level** split (the default, ``factors=("scale", "shape")``) uses only the logits:
softmax sees the centred logits ``z~ = z − mean(z)``; each image's ``z~`` splits into its scale ``s = ||z~||``
and shape ``v = z~ / s``; a world takes each from the control or the treated run (images paired by sample id),
its logits are ``s · v``. It is a property of the two networks' outputs, so it needs no head, no seed pairing
and no shared feature basis, and it is invariant to every reparametrisation that keeps the logits. The scale
is what a temperature can undo; the result also reports the ECE the control runs reach with a temperature
fitted on held-out images.

The **representation-level** split (``("head", "magnitude", "direction")``, the cosine variant, and the
basis-free ``("magnitude", "head_norm", "orientation")``) uses ``logits = W h + b``: it describes the trained
parametrisation (rescaling h and W inversely changes it without changing the network), and swapping heads is
refused unless the paired runs are shown to share an initialisation (matching ``init_digest``) or the user
states it (``pairs="seed"``, recorded as "stated, not verified").

The treated − control gap of an outcome is split among the factors by the Shapley value (the average over the
k! orders of switching the factors from c to t of each factor's marginal change); the shares add up to the
total exactly, per image for per-image outcomes and for the run-level outcome. Runs are read once, block by
block, so memory does not grow with the number of images (apart from the per-image output). Definitions and
inference: ``docs/methods_causal.md`` ("Decomposition").

::

    res = cg.causal.decompose(study, treatment="regularizer", control="ce", treated="mixup",
                              outcome="signed_ece")                      # factors=("scale", "shape")
    res.summary(); res.text(); res.temperature; res.plot(); res.per_pair; res.estimand; res.design
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
from ..metrics.calibration import EXTRA_OUTCOMES as _EXTRA, ece_ts_from_logits as _ece_ts_from_logits, \
    run_outcome as _extra_outcome, TS_SPLIT_RULE as _TS_SPLIT_RULE, ts_split as _ts_split
from ..metrics.kernels import bin_index as _bin_index, calibration_error as _calibration_error, \
    sample_stats_block as _sample_stats_block, width_bin_stats as _width_bin_stats
from ..errors import QueryError

__all__ = ["decompose", "DecompositionResult", "shapley_values", "split_text", "floor_text", "FACTORS",
           "FUNCTION_FACTORS", "DECOMPOSE_OUTCOMES", "PER_IMAGE_OUTCOMES", "ESTIMANDS", "PAIRINGS",
           "MAX_EXACT_RELABELINGS", "MAX_BASIS_ANGLE", "TEMPERATURE_MAX_IMAGES"]

#: Factors a decomposition can swap between runs: the function-level "scale" and "shape" of the centred logits;
#: the representation-level "head", "magnitude", "direction" ("cosine": the cosine to the class center only;
#: "head_norm" and "orientation": the basis-free split, see `decompose`).
FACTORS = ("scale", "shape", "head", "magnitude", "direction", "cosine", "head_norm", "orientation")
#: The default, function-level split (no head, any two models).
FUNCTION_FACTORS = ("scale", "shape")
#: Largest Procrustes angle (degrees) between paired runs' features at which their bases count as aligned.
MAX_BASIS_ANGLE = 10.0
#: Images per half of the temperature-scaling split (fit on one half, ECE on the other); larger halves are cut.
TEMPERATURE_MAX_IMAGES = 5000
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
# loading runs (block by block)
# ----------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One run's arrays for a block of images, rows in the common sample order (float64)."""

    run_id: str
    labels: np.ndarray                 # (n,)
    norm: np.ndarray | None = None     # (n,) ||h||
    unit: np.ndarray | None = None     # (n, d) h / ||h||
    W: np.ndarray | None = None        # (K, d)
    b: np.ndarray | None = None        # (K,)
    centers: np.ndarray | None = None  # (K, d) minimal-loss centers (cosine factor)
    cos: np.ndarray | None = None      # (n,) cosine of h to its own head's true-class center
    adv_norm: np.ndarray | None = None
    adv_unit: np.ndarray | None = None
    adv_cos: np.ndarray | None = None
    scale: np.ndarray | None = None    # (n,) ||z - mean(z)|| (function-level split)
    shape: np.ndarray | None = None    # (n, K) (z - mean(z)) / scale
    adv_scale: np.ndarray | None = None
    adv_shape: np.ndarray | None = None
    logits: np.ndarray | None = None   # (n, K) the run's own logits (stored, or W·h + b)


def _polar(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(h, axis=1)
    unit = np.divide(h, norm[:, None], out=np.zeros_like(h), where=norm[:, None] > 0)
    return norm, unit


def _scale_shape(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred logits ``z~ = z − mean(z)`` split into the scale ``||z~||`` and the shape ``z~ / ||z~||``."""
    zc = z - z.mean(axis=1, keepdims=True)
    return _polar(zc)


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


@dataclass
class _Source:
    """Where one run's blocks come from: its lazy arrays, head, and the row order that pairs its images."""

    run_id: str
    ds: Any
    order: np.ndarray | None           # positions in ds of the reference order's images (None: same order)
    labels: np.ndarray                 # (n,) in the reference order
    main: Any                          # logits (function-level) or features (representation-level), lazy
    adv: Any = None                    # adv_logits / adv_features at the chosen (attack, eps), lazy
    logits: Any = None                 # stored logits (representation-level: checked against W·h + b)
    W: np.ndarray | None = None
    b: np.ndarray | None = None
    centers: np.ndarray | None = None
    max_dev: float = 0.0               # largest |stored logits − (W·h + b)| seen
    max_abs: float = 1.0


def _read(arr: Any, order: np.ndarray | None, a: int, b: int) -> np.ndarray:
    """Rows a:b (reference order) of a numpy or dask array, as float64."""
    if order is None:
        block = arr[a:b]
    else:
        idx = order[a:b]
        srt = np.argsort(idx, kind="stable")
        block = arr[idx[srt]]
    if hasattr(block, "compute"):
        block = block.compute(scheduler="synchronous")
    block = np.asarray(block, dtype=np.float64)
    if order is not None:
        out = np.empty_like(block)
        out[srt] = block
        block = out
    return block


def _source(ds: Any, order: np.ndarray | None, mode: str, need_cos: bool, need_adv: bool, attack: str | None,
            eps: float | None) -> tuple[_Source, str | None, float | None]:
    """Open one run for the block pass (reads the labels and the head; features and logits stay lazy)."""
    from ..metrics.blocks import run_array
    from ..metrics.geometry import class_centers
    from ..dump.schema import require_head

    run_id = str(ds.attrs.get("run_id"))
    labels = np.asarray(ds["label"].values).astype(np.int64)
    if order is not None:
        labels = labels[order]
    if mode == "function":
        src = _Source(run_id, ds, order, labels, run_array(ds, "logits"))
        if need_adv:
            from ..dump.schema import has_head

            if "adv_logits" not in ds.variables and "adv_features" in ds.variables and has_head(ds):
                # the attacked images' logits of this run's own network: W·h_adv + b (no head is swapped)
                W, b = require_head(ds, f"decompose (run {run_id!r})")
                src.W, src.b = np.asarray(W.values, dtype=np.float64), np.asarray(b.values, dtype=np.float64)
                adv, attack, eps = _select_adv(ds, attack, eps, "adv_features")
            else:
                adv, attack, eps = _select_adv(ds, attack, eps, "adv_logits")
            src.adv = adv
        return src, attack, eps
    W, b = require_head(ds, f"decompose (run {run_id!r})")
    src = _Source(run_id, ds, order, labels, run_array(ds, "features"), logits=run_array(ds, "logits"),
                  W=np.asarray(W.values, dtype=np.float64), b=np.asarray(b.values, dtype=np.float64))
    if need_cos:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-exact centers are still the reference direction
            src.centers = np.asarray(class_centers(ds, kind="minimal_loss").values, dtype=np.float64)
    if need_adv:
        adv, attack, eps = _select_adv(ds, attack, eps, "adv_features")
        src.adv = adv
    return src, attack, eps


def _block(src: _Source, a: int, b: int, mode: str, need_adv: bool) -> _Run:
    """Run ``src``'s images a:b (reference order) read once and split into the factors' parts."""
    labels = src.labels[a:b]
    main = _read(src.main, src.order, a, b)
    if mode == "function":
        run = _Run(src.run_id, labels, logits=main)
        run.scale, run.shape = _scale_shape(main)
        if need_adv:
            za = _read(src.adv, src.order, a, b)
            if src.W is not None:  # attacked features: this run's own head gives their logits
                za = za @ src.W.T + src.b
            run.adv_scale, run.adv_shape = _scale_shape(za)
        return run
    norm, unit = _polar(main)
    recomputed = main @ src.W.T + src.b
    stored = _read(src.logits, src.order, a, b)
    if stored.size:
        src.max_dev = max(src.max_dev, float(np.abs(recomputed - stored).max()))
        src.max_abs = max(src.max_abs, float(np.abs(stored).max()))
    run = _Run(src.run_id, labels, norm, unit, src.W, src.b, src.centers, logits=recomputed)
    if src.centers is not None:
        run.cos = _cosine(unit, src.centers, labels)
    if need_adv:
        run.adv_norm, run.adv_unit = _polar(_read(src.adv, src.order, a, b))
        if src.centers is not None:
            run.adv_cos = _cosine(run.adv_unit, src.centers, labels)
    return run


def _warn_logits(src: _Source) -> None:
    if src.max_dev > 1e-3 * src.max_abs:  # float32 model outputs agree to ~1e-6 relative
        warnings.warn(f"decompose: run {src.run_id!r}: the stored logits differ from W·h + b by up to "
                      f"{src.max_dev:.3g}; the decomposition uses W·h + b (are 'features' the exact input of the "
                      "final linear layer?)", RuntimeWarning, stacklevel=4)


def _sample_ids(ds: Any) -> np.ndarray:
    n = int(ds.sizes["sample"])
    return np.asarray(ds["sample"].values) if "sample" in ds.coords else np.arange(n)


def _select_adv(ds: Any, attack: str | None, eps: float | None, var: str = "adv_features") -> tuple[Any, str, float]:
    if var not in ds.variables:
        how = ("`causalgeom extract --save-adv` (or cg.extract(..., save_adv=True))" if var == "adv_features" else
               "the attacked images' logits stored (extract --save-adv), or use the representation-level factors")
        raise QueryError(f"outcomes {list(_ROBUST)} need '{var}' (the attacked images' "
                         f"{'features' if var == 'adv_features' else 'logits'}), which run "
                         f"{ds.attrs.get('run_id')!r} does not store; extract with {how}")
    from ..metrics.blocks import raw

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
    adv = raw(ds[var].isel(attack=attacks.index(attack), eps=int(hit[0])))
    return adv, attack, float(grid[hit[0]])


def _load_run(ds: Any, order: np.ndarray | None, need_cos: bool, need_adv: bool, attack: str | None,
              eps: float | None, mode: str = "direction") -> tuple[_Run, np.ndarray, str | None, float | None]:
    """The whole run as one block (in memory; `decompose` itself reads runs block by block)."""
    src, attack, eps = _source(ds, order, mode, need_cos, need_adv, attack, eps)
    run = _block(src, 0, src.labels.shape[0], mode, need_adv)
    if mode != "function":
        _warn_logits(src)
    return run, _sample_ids(ds), attack, eps


# ----------------------------------------------------------------------------------------------
# worlds and their outcomes
# ----------------------------------------------------------------------------------------------
def _world_logits(runs: tuple[_Run, _Run], pick: dict[str, int], mode: str, adv: bool) -> np.ndarray:
    """Logits (n, K) of one world; ``pick[factor]`` is 0 (control) or 1 (treated)."""
    if mode == "function":  # z = s_S · v_V: the centred logits' scale from one run, their shape from one run
        sc, sh = runs[pick["scale"]], runs[pick["shape"]]
        scale = sc.adv_scale if adv else sc.scale
        shape = sh.adv_shape if adv else sh.shape
        return scale[:, None] * shape
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
            "margin": zy - other.max(axis=1), "logits": logits}


def _run_outcome(name: str, stats: dict[str, np.ndarray], n_bins: int, idx: np.ndarray | None = None) -> float:
    """Run-level outcome from one world's per-image statistics (the package's calibration kernels)."""
    if name in _EXTRA:  # ece_ts, ece_debiased, ece_floor, aurc: the metrics layer's one implementation
        return _extra_outcome(name, stats, n_bins, idx)

    def get(key: str) -> np.ndarray:
        return stats[key] if idx is None else stats[key][idx]
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
    """Estimate, CI of the mean of F (n_c, n_t) over control × treated pairs (two-sample U-statistic).

    Hoeffding decomposition ``F(i, j) = μ + a_i + b_j + e_ij``: ``Var(Ū) = σ_a²/n_c + σ_b²/n_t + σ_e²/(n_c n_t)``.
    With the mean squares ``MS_row = n_t s_row²`` (expectation ``n_t σ_a² + σ_e²``), ``MS_col = n_c s_col²``
    (``n_c σ_b² + σ_e²``) and the interaction ``MS_e`` (``σ_e²``), the unbiased estimate is
    ``(MS_row + MS_col − MS_e) / (n_c n_t)``: the row- and column-mean variances each already contain the
    interaction term, so it is subtracted once, not added. It is bounded below by ``MS_e / (n_c n_t)`` (the
    variance with no run effects; then df = (n_c − 1)(n_t − 1)); otherwise Satterthwaite df over the three
    mean squares. For the total (``F = Y_t − Y_c``, no interaction) this is exactly Welch's t-interval.
    """
    from scipy import stats

    n_c, n_t = F.shape
    est = float(F.mean())
    row, col = F.mean(axis=1), F.mean(axis=0)
    ms_row, ms_col = n_t * float(row.var(ddof=1)), n_c * float(col.var(ddof=1))
    resid = F - row[:, None] - col[None, :] + est
    df_r = (n_c - 1) * (n_t - 1)
    ms_e = float((resid ** 2).sum() / df_r)
    nn = n_c * n_t
    unbiased = ms_row + ms_col - ms_e
    if unbiased > ms_e:
        var = unbiased / nn
        df = unbiased ** 2 / (ms_row ** 2 / (n_c - 1) + ms_col ** 2 / (n_t - 1) + ms_e ** 2 / df_r)
    else:
        var, df = ms_e / nn, float(df_r)
    if var <= _TOL * max(1.0, est * est):
        return est, est, est
    half = float(stats.t.ppf(0.5 + level / 2, max(df, 1.0))) * math.sqrt(var)
    return est, est - half, est + half


# ----------------------------------------------------------------------------------------------
# prose that follows the numbers
# ----------------------------------------------------------------------------------------------
def _fmt_num(x: float) -> str:
    return f"{abs(x):.2g}"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def split_text(total: float, estimates: dict[str, float], words: dict[str, str] | None = None,
               fmt: Any = None) -> str:
    """One or two sentences that describe how the factors split a total, following the signs.

    A factor is "the main part" only when its share (estimate / total) lies in [0.5, 1] (the total's sign, at
    least half of it, not more than all of it). Factors of opposite signs are described as offsetting ("scale
    lowered it by 0.17 while shape raised it by 0.06"). A share outside [0, 1] is never called "mostly" or
    "the main part": a factor that moves the outcome by more than the total is offset by another.

    Parameters
    ----------
    total : float
        The total change.
    estimates : dict
        Factor name -> its share of the change (same units as ``total``; they add up to it).
    words : dict, optional
        Factor name -> the words to print for it.
    fmt : callable, optional
        Formats an absolute value (default two significant digits).

    Returns
    -------
    str
    """
    words = words or {}
    fmt = fmt or _fmt_num
    name = lambda f: words.get(f, f)  # noqa: E731
    ups = [f for f, v in estimates.items() if v > 0]
    downs = [f for f, v in estimates.items() if v < 0]
    out = []
    if ups and downs:
        lowered = _join([f"{name(f)} lowered it by {fmt(estimates[f])}" for f in downs])
        raised = _join([f"{name(f)} raised it by {fmt(estimates[f])}" for f in ups])
        first, second = (lowered, raised) if abs(sum(estimates[f] for f in downs)) >= \
            abs(sum(estimates[f] for f in ups)) else (raised, lowered)
        out.append(f"The factors offset each other: {first} while {second}.")
    main = [f for f, v in estimates.items() if total != 0 and 0.5 <= v / total <= 1.0]
    if main:
        f = main[0]
        out.append(f"The main part is the {name(f)} ({100 * estimates[f] / total:.0f}% of the change).")
    elif not (ups and downs) and len(estimates) > 1 and total != 0:
        out.append("No factor carries half of the change: it is spread over "
                   + _join([f"{name(f)} ({100 * v / total:.0f}%)" for f, v in estimates.items()]) + ".")
    elif ups and downs:
        out.append("No factor is the main part (each moves the outcome by more than the total or against it).")
    return " ".join(out)


def floor_text(p_floor: float, ci_excludes_zero: bool, pairing: str, n_c: int, n_t: int, n_pairs: int,
               alpha: float = 0.05) -> str:
    """The sentence for an interval that excludes 0 while the exact test cannot reach ``alpha``; else "".

    The smallest two-sided p-value is ``2 / 2^n`` for n seed-matched pairs (sign flips) and ``2 / C(2m, m)``
    for m + m runs (relabelings); the sentence says how many pairs (or runs per arm) would let it reach ``alpha``.
    """
    if not ci_excludes_zero or not np.isfinite(p_floor) or p_floor <= alpha:
        return ""
    if pairing == "seed":
        need = next(n for n in range(1, 64) if 2.0 / 2 ** n <= alpha)
        return (f"The interval excludes 0, but with {n_pairs} seed-matched pairs the exact test cannot give p below "
                f"{p_floor:.2g}; {need} pairs would let it reach {alpha:g}.")
    need = next(m for m in range(1, 64) if 2.0 / math.comb(2 * m, m) <= alpha)
    return (f"The interval excludes 0, but with {n_c} + {n_t} runs the exact test cannot give p below {p_floor:.2g}; "
            f"{need} runs per arm would let it reach {alpha:g}.")


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
        of the two worlds where only the head is swapped), ``basis_angle`` (degrees: the angle of the orthogonal
        Procrustes fit of the treated run's features to the control run's on the same images, ``arccos(tr(M) /
        ||M||_*)`` with ``M = H_cᵀ H_t``: 0 for identical bases, θ when every coordinate plane is rotated by θ),
        ``aligned`` (the swap keeps at least half of the above-chance accuracy and the angle is at most
        `MAX_BASIS_ANGLE`). Unaligned pairs combine coordinates of different networks. Empty for the
        function-level and basis-free splits (they never apply one run's head to another run's features).
    pairing : str
        ``"seed"`` or ``"all"`` (see `decompose`'s ``pairs``).
    estimand, design, inference : str
        What is estimated, how runs and images are paired, how intervals and p-values are computed.
    level : str
        ``"function"`` (scale/shape: a property of the outputs) or ``"representation"`` (head, magnitude,
        direction...: a description of the trained parametrisation, not a causal share).
    status : str
        That status in words.
    initialisation : str
        Whether the paired runs share an initialisation: ``"verified (matching init_digest)"``, ``"stated, not
        verified (pairs='seed' ...)"``, or ``"not needed ..."`` for splits that never swap a head.
    temperature : pandas.DataFrame or None
        Per run: ``arm``, ``ece`` on the evaluation half of the images, and for control runs the
        ``temperature`` fitted (NLL) on the other half and ``ece_temperature_scaled``, the ECE it reaches on the
        evaluation half: what a temperature alone does for the control, next to the treated runs' ECE.
    temperature_split : dict or None
        The paired split: sample ids of the ``"fit"`` and ``"eval"`` halves, the permutation ``"seed"`` and
        ``"max_images"`` per half.
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
    level: str = "representation"
    status: str = ""
    initialisation: str = ""
    temperature: pd.DataFrame | None = None
    temperature_split: dict[str, Any] | None = None

    def text(self, outcome: str | None = None) -> str:
        """How the factors split the total, in words that follow the signs (`split_text`), with the status."""
        o = outcome if outcome is not None else self.outcomes[0]
        if o not in self.outcomes:
            raise QueryError(f"outcome: expected one of {list(self.outcomes)}, got {o!r}")
        g = self.table[self.table["outcome"] == o].set_index("component")["estimate"]
        body = split_text(float(g["total"]), {f: float(g[f]) for f in self.factors if f in g.index})
        return (f"{o}: {self.treated} − {self.control} = {g['total']:.3g}. {body} ({self.level}-level split: "
                f"{self.status}.)").replace("  ", " ")

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
        what = "Function-level (scale, shape)" if self.level == "function" else "Representation-level"
        fig.suptitle(f"{what} decomposition ({int(round(100 * self.ci_level))}% intervals)", fontsize=10)
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
    if len(fs) == 2 and set(fs) == set(FUNCTION_FACTORS):
        return fs, "function"
    if fs and set(fs) <= {"head", "magnitude", "direction"} and len(fs) == 3:
        return fs, "direction"
    if set(fs) == {"head", "magnitude", "cosine"}:
        return fs + ("direction",), "cosine"
    if set(fs) == {"head", "magnitude", "cosine", "direction"}:
        return fs, "cosine"
    if len(fs) == 3 and set(fs) == {"magnitude", "head_norm", "orientation"}:
        return fs, "basisfree"
    raise QueryError(f"factors: expected ('scale', 'shape'), ('head', 'magnitude', 'direction'), ('head', 'magnitude', "
                     f"'cosine') (or with "
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
              outcome: str | Sequence[str] = "signed_ece", factors: Sequence[str] = FUNCTION_FACTORS,
              *, n_boot: int = 1000, rng: np.random.Generator | int | None = None, ci_level: float = 0.95,
              estimand: str = "auto", pairs: str = "auto", n_bins: int = 15, attack: str | None = None,
              eps: float | None = None, block_rows: int | None = None) -> DecompositionResult:
    """Split the treated − control gap of an outcome into the shares of factors swapped between paired runs.

    Default (``factors=("scale", "shape")``, function-level): for each control run c and treated run t, images
    paired by their ``sample`` id, each image's centred logits ``z~ = z − mean(z)`` are written as ``s · v``
    (scale ``s = ||z~||``, shape ``v = z~ / s``); a world takes the scale and the shape each from c or t and
    its logits are ``s · v`` (softmax is unchanged by the centring). Only the stored ``logits`` are read, so it
    works for any two models (zoo, imports, dumps without a head), and two parametrisations with the same logits
    get the same split. ``result.temperature`` gives, next to it, the ECE each control run reaches with a
    temperature fitted on one half of the images (evaluated on the other half, the paired split recorded in
    ``result.temperature_split``) and the treated runs' ECE on the same half.

    Representation-level (``factors=("head", "magnitude", "direction")`` and variants): each image's feature
    ``h`` is written as ``m · u`` (``m = ||h||``, ``u = h / m``). Every world takes
    each factor from c or t, its logits are ``W (m u) + b`` and its outcome is computed from them with
    the package's calibration kernels (`causalgeom.metrics.kernels`, shared with `causalgeom.metrics.calibration`). The
    total ``v(all t) − v(all c)`` is split by the Shapley value over the k! orders of switching factors (`shapley_values`); the shares add
    up to the total exactly (rounding only). Run pair values are averaged over the pairs.

    Additivity: for outcomes that are means of a per-image quantity (``signed_ece`` = mean confidence −
    accuracy = mean of confidence − correct, ``nll``, ``accuracy``, ``brier``, ``robust_*``) the shares
    also add up image by image (``result.per_image``). The ECE is not a mean over images (bins of the
    confidence), so its shares are shares of the run-level ECE only.

    This split describes the trained parametrisation, not a causal share (rescaling h and W inversely
    changes it without changing the network; the magnitude and the head norm together are the representation's
    part of the logit scale). The splits that apply one run's head to another run's features (``head``,
    ``direction``, ``cosine``) are refused unless the paired runs are shown to share an initialisation
    (matching ``init_digest`` attributes, recorded by ``causalgeom train``) or ``pairs="seed"`` states it
    (recorded in ``result.initialisation`` as "stated, not verified").

    Runs are read once, block by block (the stored chunks, about ``block_rows`` rows each): memory is bounded
    independently of the number of images, apart from the per-image output.

    Parameters
    ----------
    study : Study or path
        Runs with ``logits`` and ``label`` (function-level); the representation-level factors need
        ``features`` and ``head_weight`` too (``head_bias``: 0 if missing).
    treatment : str
        Run attribute that defines the arms (``study.runs`` column), e.g. ``"regularizer"``.
    control, treated : level
        The two arms' values of ``treatment``.
    outcome : str or list of str
        From :data:`DECOMPOSE_OUTCOMES`: ``"signed_ece"`` (= overconfidence, mean confidence − accuracy),
        ``"ece"`` (top-label, ``n_bins`` equal-width bins, l1), ``"nll"``, ``"accuracy"``, ``"brier"``;
        ``"robust_accuracy"`` / ``"robust_margin"`` (true-class logit minus the best other) from the
        world logits of the attacked images' features (needs ``adv_features``: ``extract --save-adv``).
    factors : tuple of str
        ``("scale", "shape")`` (default, function-level, 2² worlds), ``("head", "magnitude", "direction")`` (2³ worlds), or ``("head", "magnitude", "cosine")``: the
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
        (``W_t · u_c`` is then close to chance). ``"seed"``: pair each control run with the treated run of the
        same ``seed`` attribute (error if the seeds do not match one to one, or if their ``init_digest``
        attributes differ): the user's statement that same-seed runs share an initialisation, verified only
        when their digests match; ``"all"``: all n_c × n_t pairs; ``"auto"``: ``"seed"`` when the seeds match
        one to one *and* their ``init_digest`` attributes match, else ``"all"``. ``result.alignment`` reports,
        per pair, the accuracy kept when only the head is swapped and the Procrustes angle between the two
        runs' features; a note flags unaligned pairs.
    n_bins : int
        Bins of the ECE.
    attack, eps
        The attack and budget of the robust outcomes (default: the first attack, the middle of the eps grid).
        Function-level robust outcomes read ``adv_logits`` (else ``W · adv_features + b`` of the run's own head);
        representation-level ones ``adv_features``.
    block_rows : int, optional
        Rows per block of the single pass over each run (default: the stored chunks, about 4 M values).

    Returns
    -------
    DecompositionResult

    Notes
    -----
    Inference over runs (``estimand="runs"``): the estimate is the mean of the pair values F(c, t) over
    the n_c × n_t pairs, a two-sample U-statistic. The interval is a t-interval with its unbiased variance
    from the Hoeffding decomposition, (MS_row + MS_col − MS_e)/(n_c n_t) (the row- and column-mean
    variances each already contain the interaction term once), never below MS_e/(n_c n_t), and
    Satterthwaite degrees of freedom (coverage by simulation: ``benchmarks/bench_coverage.py --decompose``);
    for the total, whose F(c, t) = Y_t − Y_c, this is exactly
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
    head_dependent = mode in ("direction", "cosine")
    pairing, matched, init_status = _pairing(run_table, c_ids, t_ids, pairs, head_dependent, user_factors)
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
    n_all = len(all_ids)
    sources: list[_Source] = []
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
            if np.array_equal(order, np.arange(order.size)):
                order = None
        src, a, e = _source(ds, order, mode, need_cos, need_adv, sel_attack, sel_eps)
        if need_adv and sel_attack is None:
            sel_attack, sel_eps = a, e
        sources.append(src)
    labels = sources[0].labels
    for src in sources[1:]:
        if not np.array_equal(src.labels, labels):
            raise QueryError(f"run {src.run_id!r}: the labels of the paired images differ from run {all_ids[0]!r}; "
                             "the runs did not score the same images")
    n_img = labels.shape[0]
    n_classes = int(sources[0].main.shape[1]) if mode == "function" else int(sources[0].W.shape[0])

    k = len(facs)
    n_worlds = 2 ** k
    names = ("total",) + facs + tuple(f"{f}|first" for f in facs) + tuple(f"{f}|last" for f in facs)
    n_main = 1 + k
    # reversing a pair's roles negates the total and every Shapley share, and swaps "first" with "last"
    reverse = np.array([0] + list(range(1, n_main)) + list(range(n_main + k, n_main + 2 * k))
                       + list(range(n_main, n_main + k)))

    if pairing == "seed":
        cross_pairs = [(c_ids.index(c), n_c + t_ids.index(t)) for c, t in matched]
        pair_list = list(cross_pairs)
    else:
        cross_pairs = [(i, n_c + j) for i in range(n_c) for j in range(n_t)]
        pair_list = (list(itertools.combinations(range(n_all), 2)) if estimand == "runs" else list(cross_pairs))
    cross_set = set(cross_pairs)
    ece_like = [o for o in outcomes if o in ("signed_ece", "ece")]
    # ece_ts, ece_debiased, ece_floor, aurc are not sums over images: each world's per-image confidence and
    # correctness (and logits for ece_ts) are kept for the whole set of images, and the outcome is computed once at
    # the end by the metrics layer's one implementation (memory: n_images × (2 + K for ece_ts) per world and pair)
    extras = [o for o in outcomes if o in _EXTRA]
    keep = ("confidence", "correct") + (("logits",) if "ece_ts" in extras else ())
    ext_parts = {p: [{key: [] for key in keep} for _ in range(n_worlds)] for p in range(len(pair_list))} if extras else {}

    # accumulators over the blocks of images (memory independent of the number of images, per_image aside)
    sums = {o: np.zeros((len(pair_list), n_worlds)) for o in outcomes}                 # sums of image values
    bins = {o: np.zeros((len(pair_list), n_worlds, 3, n_bins)) for o in ece_like}       # ECE bin statistics
    correct_sum = np.zeros((len(pair_list), n_worlds))
    gram = {p: None for p in cross_pairs} if head_dependent else {}                     # Σ h_c h_tᵀ (basis drift)
    per_image_sum = {o: np.zeros((n_main, n_img)) for o in outcomes if o in PER_IMAGE_OUTCOMES}
    boot = estimand == "model"
    n_b = int(n_boot)
    if boot:
        boot_sums = {o: np.zeros((len(cross_pairs), n_b, n_worlds)) for o in outcomes}
        boot_bins = {o: np.zeros((len(cross_pairs), n_b, n_worlds, 3, n_bins)) for o in ece_like}
        boot_counts: list[np.ndarray] = []  # the resampling multiplicities, kept for the non-additive outcomes
        remaining = np.full(n_b, n_img, dtype=np.int64)
    # temperature scaling on a paired split of the images: fit on one half, evaluate on the other
    # (the split of `ece_ts`, `causalgeom.metrics.calibration.ts_split`: even ranks of the sample ids fit)
    ts_mask = _ts_split(ref_ids)
    fit_pos = np.flatnonzero(ts_mask)[:TEMPERATURE_MAX_IMAGES]
    eval_pos = np.flatnonzero(~ts_mask)[:TEMPERATURE_MAX_IMAGES]
    fit_z = {i: [] for i in range(n_c)}
    eval_z = {i: [] for i in range(n_all)}

    bounds = _chunk_bounds(sources[0], n_img, n_classes if mode == "function" else int(sources[0].W.shape[1]),
                           block_rows)
    for a, b in bounds:
        blocks = [_block(src, a, b, mode, need_adv) for src in sources]
        lab = labels[a:b]
        f_sel = fit_pos[(fit_pos >= a) & (fit_pos < b)] - a
        e_sel = eval_pos[(eval_pos >= a) & (eval_pos < b)] - a
        for i, blk in enumerate(blocks):
            if i < n_c and f_sel.size:
                fit_z[i].append(blk.logits[f_sel].astype(np.float32))
            if e_sel.size:
                eval_z[i].append(blk.logits[e_sel].astype(np.float32))
        if boot:
            counts = _multinomial_block(gen, remaining, n_img - a, b - a)  # (B, rows)
            if extras:
                boot_counts.append(counts.astype(np.int32))
        cp = 0
        for p, (i, j) in enumerate(pair_list):
            pair = (blocks[i], blocks[j])
            worlds = _world_stats(pair, facs, mode, adv=False)
            adv_worlds = _world_stats(pair, facs, mode, adv=True) if need_adv else None
            is_cross = (i, j) in cross_set
            correct_sum[p] += [w["correct"].sum() for w in worlds]
            for w, st in zip(ext_parts.get(p, ()), worlds):
                for key in keep:
                    w[key].append(st[key].astype(np.float32) if key == "logits" else st[key])
            for o in outcomes:
                ws = adv_worlds if o in _ROBUST else worlds
                img = None if o == "ece" or o in _EXTRA else np.stack([_image_values(o, w) for w in ws])  # (2^k, rows)
                if img is not None:
                    sums[o][p] += img.sum(axis=1)
                if o in bins:
                    bins[o][p] += np.stack([_width_bin_stats(w["confidence"], w["correct"], n_bins) for w in ws])
                if is_cross and o in per_image_sum:
                    per_image_sum[o][:, a:b] += np.concatenate([(img[-1] - img[0])[None], shapley_values(img)])
                if is_cross and boot:
                    if img is not None:
                        boot_sums[o][cp] += counts @ img.T
                    if o in bins:
                        for w, st in enumerate(ws):
                            onehot = np.eye(n_bins)[_bin_index(st["confidence"], n_bins)]  # (rows, M)
                            boot_bins[o][cp, :, w] += np.stack(
                                [counts @ onehot, counts @ (onehot * st["confidence"][:, None]),
                                 counts @ (onehot * st["correct"][:, None])], axis=1)
            if is_cross and head_dependent:
                h_c = blocks[i].unit * blocks[i].norm[:, None]
                h_t = blocks[j].unit * blocks[j].norm[:, None]
                g = h_c.T @ h_t
                gram[(i, j)] = g if gram[(i, j)] is None else gram[(i, j)] + g
            if is_cross:
                cp += 1
        del blocks
    if mode != "function":
        for src in sources:
            _warn_logits(src)

    ts_fit = _ts_split(ref_ids)  # ece_ts: the held-out split of the images, the same in every run (paired)
    ext_stats = {p: [dict({key: np.concatenate(w[key]) for key in keep}, labels=labels, ts_fit=ts_fit) for w in ws]
                 for p, ws in ext_parts.items()}
    del ext_parts

    def world_values(o: str, p: int) -> np.ndarray:
        if o in _EXTRA:
            return np.array([_run_outcome(o, st, n_bins) for st in ext_stats[p]])
        if o in bins:
            norm = "signed" if o == "signed_ece" else "l1"
            return np.array([_calibration_error(bins[o][p, w], norm) for w in range(n_worlds)])
        return sums[o][p] / n_img

    F = {o: np.zeros((len(names), n_all, n_all)) for o in outcomes}
    for p, (i, j) in enumerate(pair_list):
        for o in outcomes:
            vals = _components(world_values(o, p))
            F[o][:, i, j] = vals
            F[o][:, j, i] = -vals[reverse]

    ci_idx = np.array([i for i, _ in cross_pairs])
    cj_idx = np.array([j for _, j in cross_pairs])
    per_pair = pd.DataFrame([
        {"control_run": all_ids[i], "treated_run": all_ids[j], "outcome": o, "component": name,
         "value": float(F[o][m, i, j])}
        for o in outcomes for i, j in cross_pairs for m, name in enumerate(names[:n_main])])

    # alignment of the feature bases (representation-level splits that apply a head to another run's features)
    align_rows = []
    if head_dependent:
        chance = 1.0 / n_classes
        for p, (i, j) in enumerate(pair_list):
            if (i, j) not in cross_set:
                continue
            acc = correct_sum[p] / n_img
            full = n_worlds - 1
            own, swap = (acc[0] + acc[-1]) / 2, (acc[1] + acc[full ^ 1]) / 2
            g = gram[(i, j)]
            nuc = float(np.linalg.svd(g, compute_uv=False).sum())
            cosang = float(np.trace(g)) / nuc if nuc > 0 else 0.0
            angle = math.degrees(math.acos(min(1.0, max(-1.0, cosang))))
            kept = (swap - chance) / max(own - chance, 1e-12)
            align_rows.append({"control_run": all_ids[i], "treated_run": all_ids[j], "own_accuracy": own,
                               "head_swap_accuracy": swap, "basis_angle": angle,
                               "aligned": bool(kept >= 0.5 and angle <= MAX_BASIS_ANGLE)})
    alignment = pd.DataFrame(align_rows, columns=["control_run", "treated_run", "own_accuracy", "head_swap_accuracy",
                                                  "basis_angle", "aligned"])
    if len(alignment):
        alignment["aligned"] = alignment["aligned"].astype(bool)

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
        cross = np.ix_(range(n_c), range(n_c, n_all))
        for o in outcomes:
            for m, name in enumerate(names):
                Fm = F[o][m]
                est, lo, hi = _hoeffding_t(Fm[cross], level)
                stat = np.einsum("ri,ij,rj->r", 1.0 - M, Fm, M) / (n_c * n_t)
                table_rows.append(_randomization_row(o, name, est, lo, hi, stat, exact, n_relab, floor))
        est_text = (f"average effect over training runs (runs as the population): the mean over the {n_c} × {n_t} "
                    f"control × treated run pairs")
        inf_text = (f"{int(round(100 * level))}% t-intervals over runs (unbiased two-sample U-statistic variance, "
                    f"Hoeffding decomposition, Satterthwaite df; the total's is Welch's t-interval); two-sided "
                    f"p-values from a run-level randomization test ({'all' if exact else 'Monte Carlo,'} {n_relab} "
                    f"relabelings of {n_all} runs; smallest possible p = {floor:.3g})")
    else:
        for o in outcomes:
            v_boot = np.zeros((n_b, n_worlds))
            if o in _EXTRA:  # recomputed on each resample (a repeated image keeps its half of the ece_ts split)
                cnt = np.concatenate(boot_counts, axis=1)  # (B, n)
                idx = [np.repeat(np.arange(n_img), c) for c in cnt]
                pairs_idx = [pair_list.index(pr) for pr in cross_pairs]
                for p in pairs_idx:
                    v_boot += np.array([[_run_outcome(o, st, n_bins, ix) for st in ext_stats[p]] for ix in idx])
            for cp in range(len(cross_pairs) if o not in _EXTRA else 0):
                if o in bins:
                    norm = "signed" if o == "signed_ece" else "l1"
                    v_boot += np.array([[_calibration_error(boot_bins[o][cp, r, w], norm) for w in range(n_worlds)]
                                        for r in range(n_b)])
                else:
                    v_boot += boot_sums[o][cp] / n_img
            v_boot /= len(cross_pairs)  # Shapley values are linear in v: shares of the pair-averaged worlds
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
                    f"images for every run), {n_b} replicates; no p-value")
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

    # temperature scaling of the control runs (fit on one half of the images, ECE on the other)
    temp_rows = []
    y_fit, y_eval = labels[fit_pos], labels[eval_pos]
    for i, rid in enumerate(all_ids):
        ze = np.concatenate(eval_z[i]).astype(np.float64) if eval_z[i] else np.zeros((0, n_classes))
        row = {"run_id": rid, "arm": "control" if i < n_c else "treated", "temperature": np.nan,
               "ece": _ece_of(ze, y_eval, n_bins) if ze.size else np.nan, "ece_temperature_scaled": np.nan}
        if i < n_c and fit_z[i] and ze.size:
            zf = np.concatenate(fit_z[i]).astype(np.float64)
            fit_mask = np.r_[np.ones(len(zf), bool), np.zeros(len(ze), bool)]
            row["ece_temperature_scaled"], row["temperature"] = _ece_ts_from_logits(
                np.concatenate([zf, ze]), np.concatenate([y_fit, y_eval]), fit_mask, n_bins)
        temp_rows.append(row)
    temperature = pd.DataFrame(temp_rows)
    temperature_split = {"fit": np.asarray(ref_ids)[fit_pos],
                         "eval": np.asarray(ref_ids)[eval_pos], "rule": _TS_SPLIT_RULE,
                         "max_images": TEMPERATURE_MAX_IMAGES}

    mode_text = {"function": "the scale ‖z̃‖ and the shape z̃/‖z̃‖ of the centred logits z̃ = z − mean(z) (what "
                             "softmax sees; the scale is what a temperature can undo)",
                 "direction": "head (W, b), feature magnitude ||h|| and feature direction h/||h||",
                 "cosine": "head (W, b), feature magnitude, cosine to the true-class minimal-loss center of the head "
                           "in use, and the rest of the direction",
                 "basisfree": "feature magnitude ||h||, head norm ||W||_F and orientation (W/||W||_F, h/||h|| and b "
                              "of one run: no head is applied to another network's features)"}[mode]
    if pairing == "seed":
        pair_text = ("runs paired by seed (same initialisation verified by matching init_digest); "
                     if init_status.startswith("verified") else
                     "runs paired by seed (a shared initialisation is stated by pairs='seed', not verified); ")
    else:
        pair_text = "all control × treated run pairs; "
    design = (f"paired by image: {n_img} test images scored by all {n_c} {control!r} and {n_t} {treated!r} "
              f"runs; " + pair_text
              + f"each pair's gap split among {mode_text} by Shapley averaging over the {math.factorial(k)} "
              f"orders of {2 ** k} worlds" + (" (logits = W·h + b)" if mode != "function" else ""))
    if need_adv:
        design += (f"; robust outcomes from the attacked images' {'logits' if mode == 'function' else 'features'} "
                   f"({sel_attack}, ε = {eps_label(sel_eps)})")
    if mode == "function":
        status = ("function-level: a property of the two networks' outputs, invariant to every reparametrisation "
                  "that keeps the logits; needs no head and no shared initialisation")
    else:
        status = ("representation-level: describes the trained parametrisation (rescaling h and W inversely "
                  "changes it without changing the network), not a causal share; the feature magnitude and the head "
                  "norm together are the representation's part of the logit scale")
    n_bad = int((~alignment["aligned"]).sum()) if len(alignment) else 0
    if n_bad:
        msg = (f"{n_bad} of {len(alignment)} run pairs have unaligned feature bases (swapping only the head keeps less "
               f"than half of the above-chance accuracy, or the Procrustes angle between their features exceeds "
               f"{MAX_BASIS_ANGLE:g}°; see .alignment): their worlds combine the coordinates of different networks, so "
               f"their head and direction shares (and the magnitude share, averaged over those worlds) are not "
               f"interpretable; only the total is. Use factors=('scale', 'shape') (function-level) or the basis-free "
               "split factors=('magnitude', 'head_norm', 'orientation').")
        notes.append(msg)
        warnings.warn(f"decompose: {msg}", RuntimeWarning, stacklevel=2)
    return DecompositionResult(table=table, per_pair=per_pair, per_image=per_image, switch_effects=switch,
                               alignment=alignment, pairing=pairing, estimand=est_text, design=design,
                               inference=inf_text, factors=facs, outcomes=outcomes, treatment=treatment,
                               control=control, treated=treated, control_runs=c_ids, treated_runs=t_ids,
                               ci_level=level, attack=sel_attack if need_adv else None,
                               eps=sel_eps if need_adv else None, notes=notes,
                               level="function" if mode == "function" else "representation", status=status,
                               initialisation=init_status, temperature=temperature,
                               temperature_split=temperature_split)


def _pairing(run_table: pd.DataFrame, c_ids: list[str], t_ids: list[str], pairs: str, head_dependent: bool,
             facs: tuple[str, ...]) -> tuple[str, list[tuple[str, str]] | None, str]:
    """(pairing, seed-matched pairs, initialisation status); refuses head-dependent factors without evidence."""
    matched, why = _seed_matches(run_table, c_ids, t_ids)
    runs = run_table.set_index("run_id")
    dig = runs["init_digest"] if "init_digest" in runs.columns else pd.Series(index=runs.index, dtype=object)

    def same(c: str, t: str) -> bool:
        a, b = dig.get(c), dig.get(t)
        return isinstance(a, str) and isinstance(b, str) and a != "" and a == b

    verified = matched is not None and all(same(c, t) for c, t in matched)
    all_same = all(same(c, t) for c in c_ids for t in t_ids)
    if pairs == "seed":
        if matched is None:
            raise QueryError(f"pairs='seed': {why}; use pairs='all'")
        bad = [(c, t) for c, t in matched if isinstance(dig.get(c), str) and isinstance(dig.get(t), str)
               and not same(c, t)]
        if bad:
            raise QueryError(f"pairs='seed': runs {bad[0][0]!r} and {bad[0][1]!r} have the same seed but different "
                             "'init_digest' attributes (their initial weights differ); they do not share an "
                             "initialisation. Use pairs='all'" + ("" if not head_dependent else
                                                                   " with factors=('scale', 'shape')"))
        return "seed", matched, ("verified (matching init_digest)" if verified else
                                 "stated, not verified (pairs='seed': the user states that same-seed runs share an "
                                 "initialisation; no matching init_digest)")
    if pairs == "auto" and verified:
        return "seed", matched, "verified (matching init_digest)"
    if head_dependent and not all_same:
        reason = (why if matched is None else "their seeds match but no matching 'init_digest' attributes show that "
                  "they share an initialisation (runs not trained by causalgeom, or trained before it recorded one)")
        if pairs == "all":
            reason = "pairs='all' pairs runs that do not all share one 'init_digest'"
        raise QueryError(f"factors={facs}: swapping heads between runs is meaningful only for runs shown to share an "
                         f"initialisation, and {reason}. Use factors=('scale', 'shape') (the function-level split: "
                         "any two models, no head needed), or pairs='seed' to state that same-seed runs share an "
                         "initialisation")
    if head_dependent:
        return "all", None, "verified (one init_digest for all runs)"
    return "all", None, ("verified (one init_digest for all runs)" if all_same else
                         "not needed (no head is applied to another run's features)")


def _chunk_bounds(src: _Source, n: int, width: int, block_rows: int | None) -> list[tuple[int, int]]:
    """Row blocks: the stored chunks of the first run (merged or cut to about ``block_rows``)."""
    target = int(block_rows) if block_rows else int(min(max(2 ** 22 // max(width, 1), 256), 65_536))
    chunks = getattr(src.main, "chunks", None)
    edges = [0]
    if chunks is not None and src.order is None:
        for c in chunks[0]:
            edges.append(edges[-1] + int(c))
    else:
        edges = list(range(0, n, target)) + [n]
    out: list[tuple[int, int]] = []
    a = 0
    for e in edges[1:]:
        while e - a > target:
            out.append((a, a + target))
            a += target
        if e - a >= target // 2 or e == n:
            if e > a:
                out.append((a, e))
            a = e
    return out or [(0, n)]


def _multinomial_block(gen: np.random.Generator, remaining_draws: np.ndarray, remaining_rows: int,
                       rows: int) -> np.ndarray:
    """(B, rows) counts of the next ``rows`` rows of B multinomial(n, uniform) bootstrap resamples, drawn block by
    block: the draws falling into the block are Binomial(remaining, rows / remaining_rows), spread uniformly."""
    if rows == remaining_rows:
        m = remaining_draws.copy()
    else:
        m = gen.binomial(remaining_draws, rows / remaining_rows)
    counts = gen.multinomial(m, np.full(rows, 1.0 / rows))
    remaining_draws -= m
    return counts.astype(np.float64)


def _ece_of(z: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    conf, _, correct, _, _ = _sample_stats_block(z, y)
    return _calibration_error(_width_bin_stats(conf, correct, n_bins), "l1")


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
