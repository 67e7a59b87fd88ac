"""The worlds of a decomposition: reading paired runs block by block, swapping factors, the outcome of
a world, and the Shapley split of a gap (`shapley_values`)."""

from __future__ import annotations
import math
import warnings
from dataclasses import dataclass
from typing import Any
import numpy as np
from ...metrics.calibration import EXTRA_OUTCOMES as _EXTRA, run_outcome as _extra_outcome
from ...metrics.kernels import calibration_error as _calibration_error, \
    sample_stats_block as _sample_stats_block, width_bin_stats as _width_bin_stats
from ...errors import QueryError

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
    from ...metrics.blocks import run_array
    from ...metrics.geometry import class_centers
    from ...dump.schema import require_head

    run_id = str(ds.attrs.get("run_id"))
    labels = np.asarray(ds["label"].values).astype(np.int64)
    if order is not None:
        labels = labels[order]
    if mode == "function":
        src = _Source(run_id, ds, order, labels, run_array(ds, "logits"))
        if need_adv:
            from ...dump.schema import has_head

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
    from ...metrics.blocks import raw

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
