# Over 600 lines on purpose: one concern (representation geometry of a run): magnitudes, centers, cosines and cones share the lazy per-chunk kernels.
"""Representation geometry of a run: feature magnitude, class centers, cosines, cones, gradients, neural collapse.

The quantities behind the cone argument of Park, Kim & Lee (arXiv 2410.03999): in the
penultimate-layer space, the head ``z = W h + b`` splits space into (nearly) conical decision
regions, so a feature's *magnitude* and its *angle* to a class center act separately on the
output. Per-sample results are lazy xarray objects (dask-backed when the dump is); reductions
(centers, correlations, neural-collapse statistics) are computed and returned in memory.
Every chunk-wise computation is one numpy function of a block of samples shared by the numpy and
dask paths (see ``causalgeom.metrics.blocks``). Definitions and references: ``docs/methods_metrics.md``.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .blocks import check_run, compute, is_dask, raw, require_vars, run_array, sample_reduce
from .._util.checks import check_choice
from ..errors import ConfigError, SchemaError
from .kernels import head64

__all__ = [
    "CENTER_KINDS",
    "DEFAULT_SCALES",
    "DEFAULT_ANGLES",
    "SMOOTHING_KEYS",
    "magnitude",
    "run_smoothing",
    "smoothed_targets",
    "minimal_loss_centers",
    "class_centers",
    "cosine_to_center",
    "angular_margin",
    "compare_centers",
    "cone_test",
    "confidence_grid",
    "gradient_split",
    "neural_collapse",
    "head_stats",
]

CENTER_KINDS = ("minimal_loss", "mean", "weight")
#: Default scale grid of `cone_test` / `confidence_grid`: 2^k for k = -4, -3.5, ..., 4 (includes 1 exactly).
DEFAULT_SCALES = tuple(float(2.0 ** k) for k in np.linspace(-4.0, 4.0, 17))
#: Default angle grid of `confidence_grid` (radians): 0, 15, ..., 90 degrees.
DEFAULT_ANGLES = tuple(float(a) for a in np.deg2rad(np.arange(0, 91, 15)))
#: Keys of ``attrs["regularizer_params"]`` read as the label-smoothing eps (first match wins).
SMOOTHING_KEYS = ("label_smoothing", "smoothing", "ls_eps", "eps", "epsilon")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _run_head(ds: xr.Dataset, what: str, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Check that ``ds`` is a run with a head and the variables ``names``; its head as float64 ``(W, b)``."""
    check_run(ds, what)
    W, b = head64(ds, what)
    require_vars(ds, names, what)
    return W, b


def _chunked(da_: xr.DataArray, *core: str) -> xr.DataArray:
    """Make the core dims single-chunked for ``apply_ufunc(dask="parallelized")``."""
    if is_dask(da_) and core:
        return da_.chunk({d: -1 for d in core})
    return da_


def _rows(n: int) -> np.ndarray:
    return np.arange(n)


def _check_scales(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ConfigError(f"{name}: expected a non-empty list of positive finite numbers, got {values!r}")
    if arr.size > 1 and np.any(np.diff(arr) <= 0):
        raise ConfigError(f"{name}: expected strictly increasing values, got {arr.tolist()}")
    return arr


# ----------------------------------------------------------------------------------------------
# magnitude
# ----------------------------------------------------------------------------------------------
def _sq_norms(f: np.ndarray) -> np.ndarray:
    """Row-wise squared L2 norms accumulated in float64 (without a float64 copy of the block)."""
    return np.einsum("ij,ij->i", f, f, dtype=np.float64)


def _norm_block(f: np.ndarray) -> np.ndarray:
    return np.sqrt(_sq_norms(np.asarray(f)))


def magnitude(ds: xr.Dataset) -> xr.Dataset:
    """Feature magnitude per sample.

    Parameters
    ----------
    ds : xarray.Dataset
        A run with ``features`` (sample, feature).

    Returns
    -------
    xarray.Dataset
        Dims (sample,), float64, lazy on dask-backed dumps: ``norm`` = ||h||₂ and
        ``rms`` = ||h||₂ / sqrt(d) (root mean square over the d features; comparable across widths).

    References
    ----------
    Park, Kim & Lee, arXiv 2410.03999 (feature magnitude as the calibration mediator).
    """
    check_run(ds, "magnitude")
    require_vars(ds, ("features",), "magnitude")
    feats = _chunked(ds["features"], "feature")
    norm = xr.apply_ufunc(_norm_block, feats, input_core_dims=[["feature"]], dask="parallelized",
                          output_dtypes=[np.float64])
    d = int(ds.sizes["feature"])
    return xr.Dataset({"norm": norm, "rms": norm / math.sqrt(d)},
                      attrs={"run_id": ds.attrs.get("run_id"), "n_features": d})


# ----------------------------------------------------------------------------------------------
# class centers
# ----------------------------------------------------------------------------------------------
def run_smoothing(ds: xr.Dataset) -> float:
    """The label-smoothing eps a run was trained with (0 when it did not use label smoothing).

    Read from ``attrs["regularizer_params"]`` (keys :data:`SMOOTHING_KEYS`, also inside a nested
    ``{"label_smoothing": {...}}`` entry), else ``attrs["strength"]`` when the regularizer is exactly
    ``"label_smoothing"``. Runs whose ``regularizer`` has no ``label_smoothing`` part (CE, Mixup,
    CutMix: their per-class target is one-hot) give 0.

    Raises
    ------
    SchemaError
        If the run used label smoothing but its eps cannot be found or is not in [0, 1).
    """
    attrs = check_run(ds, "run_smoothing").attrs
    parts = [p.strip() for p in str(attrs.get("regularizer") or "").split("+")]
    if "label_smoothing" not in parts:
        return 0.0
    params = attrs.get("regularizer_params") or {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            params = {}
    value = None
    if isinstance(params, dict):
        for scope in (params.get("label_smoothing") if isinstance(params.get("label_smoothing"), dict) else {},
                      params):
            for key in SMOOTHING_KEYS:
                v = scope.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    value = float(v)
                    break
            if value is not None:
                break
    if value is None and parts == ["label_smoothing"] and attrs.get("strength") is not None:
        value = float(attrs["strength"])
    if value is None:
        raise SchemaError(f"run {attrs.get('run_id')!r} used label smoothing but its eps is in neither "
                          f"attrs['regularizer_params'] (keys {list(SMOOTHING_KEYS)}) nor attrs['strength']; "
                          "pass smoothing= explicitly")
    if not (0.0 <= value < 1.0):
        raise SchemaError(f"run {attrs.get('run_id')!r}: label-smoothing eps must lie in [0, 1), got {value}")
    return value


def _resolve_smoothing(ds: xr.Dataset, smoothing: float | None) -> float:
    if smoothing is None:
        return run_smoothing(ds)
    try:
        eps = float(smoothing)
    except (TypeError, ValueError):
        raise ConfigError(f"smoothing: expected a number in [0, 1) or None, got {smoothing!r}") from None
    if not (0.0 <= eps < 1.0):
        raise ConfigError(f"smoothing: expected a number in [0, 1) or None, got {smoothing!r}")
    return eps


def smoothed_targets(n_classes: int, smoothing: float) -> np.ndarray:
    """Rows q_k = (1 − eps) e_k + eps / K, shape (K, K) (Szegedy et al. 2016, label smoothing)."""
    K = int(n_classes)
    return (1.0 - smoothing) * np.eye(K) + smoothing / K


def minimal_loss_centers(W: Any, b: Any | None = None, smoothing: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Closed-form minimal-loss point of every class for the head ``z = W c + b``.

    With target q_k = (1 − eps) e_k + eps/K (eps > 0), CE(q_k, softmax(W c + b)) >= H(q_k) with
    equality iff softmax(W c + b) = q_k, i.e. iff W c + b = log q_k + t·1 for some shift t.
    With P = I − 11ᵀ/K (removes the shift), that is P W c = P (log q_k − b). The minimum-norm
    solution is

        c_k = (P W)⁺ P (log q_k − b),

    which equals W⁺(a + t*·1) with a = log q_k − b and t* = −⟨W⁺a, W⁺1⟩ / ||W⁺1||² (the
    shift minimizing ||W⁺(a + t·1)||) whenever W has full row rank. The system is solvable for
    every target iff rank(P W) = K − 1 (generically when d >= K − 1). Otherwise c_k is the
    minimum-norm least-squares point of ||P(W c + b − log q_k)||, which is *not* the loss
    minimizer; ``info["exact"]`` is False and a warning is issued.

    For hard targets (eps = 0) the infimum (loss 0) is approached only as ||c|| → ∞. Since
    P log q_k = L(eps) P e_k with L(eps) = log(1 + (1 − eps) K / eps) → ∞, the centers are
    c_k(eps) = L(eps) (P W)⁺ P e_k − (P W)⁺ P b, whose direction tends to (P W)⁺ (e_k − 1/K).
    That unit direction is returned (``info["direction_only"]`` True); along it the margin of
    class k grows linearly, so the loss decreases monotonically to 0.

    Parameters
    ----------
    W : array, shape (K, d)
    b : array, shape (K,), optional
    smoothing : float
        eps in [0, 1).

    Returns
    -------
    centers : ndarray, shape (K, d), float64
    info : dict
        ``exact`` (bool), ``rank`` (of P W), ``max_residual`` (max_k ||P(W c_k + b − log q_k)||;
        0 for directions), ``direction_only`` (bool), ``smoothing``.
    """
    W = np.asarray(W, dtype=np.float64)
    K, d = W.shape
    b = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    P = np.eye(K) - 1.0 / K
    A = P @ W
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    tol = (s.max() if s.size else 0.0) * max(K, d) * np.finfo(np.float64).eps
    rank = int((s > tol).sum())
    A_pinv = (Vt[:rank].T / s[:rank]) @ U[:, :rank].T  # (d, K)
    exact = rank == K - 1
    info: dict[str, Any] = {"rank": rank, "exact": bool(exact), "smoothing": float(smoothing)}
    if smoothing == 0.0:
        D = (A_pinv @ P).T  # row k: (PW)^+ (e_k - 1/K)
        norms = np.linalg.norm(D, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            C = np.where(norms > 0, D / norms, np.nan)
        info.update(direction_only=True, max_residual=0.0)
    else:
        logQ = np.log(smoothed_targets(K, smoothing))  # row k = log q_k
        C = (A_pinv @ P @ (logQ - b[None, :]).T).T
        R = P @ (W @ C.T + b[:, None] - logQ.T)  # column k: centered residual of class k
        info.update(direction_only=False, max_residual=float(np.abs(R).max()))
        exact = exact and info["max_residual"] <= 1e-6 * max(1.0, float(np.abs(logQ).max()))
        info["exact"] = bool(exact)
    if not exact:
        warnings.warn(f"minimal-loss centers: softmax(W c + b) = q_k has no exact solution (rank(P W) = {rank} "
                      f"< K - 1 = {K - 1}; d = {d}); returning the minimum-norm least-squares points",
                      RuntimeWarning, stacklevel=3)
    return C, info


def class_centers(ds: xr.Dataset, kind: str = "minimal_loss", smoothing: float | None = None) -> xr.DataArray:
    """Class centers in feature space.

    Parameters
    ----------
    ds : xarray.Dataset
        A run.
    kind : {"minimal_loss", "mean", "weight"}
        ``"minimal_loss"``: the point where the head's loss for class k is smallest (see
        `minimal_loss_centers`; needs the head); ``"mean"``: class mean of the features (a class
        without samples gets NaN); ``"weight"``: row k of W (needs the head).
    smoothing : float, optional
        Label-smoothing eps of the targets of ``"minimal_loss"``. ``None``: the run's own eps
        (`run_smoothing`): its label-smoothing eps, or 0 — hard targets, for which the centers are
        unit *directions* — for runs without label smoothing.

    Returns
    -------
    xarray.DataArray
        (class, feature), float64, in memory. attrs: ``kind``, and for ``"minimal_loss"``
        ``smoothing``, ``exact``, ``rank``, ``max_residual``, ``direction_only``.

    Raises
    ------
    HeadMissingError
        For ``"minimal_loss"`` / ``"weight"`` on a dump without ``head_weight``.
    """
    check_run(ds, "class_centers")
    check_choice(kind, "kind", CENTER_KINDS)
    attrs: dict[str, Any] = {"kind": kind, "run_id": ds.attrs.get("run_id")}
    if kind == "weight":
        W, _ = head64(ds, "class_centers(kind='weight')")
        C = W
    elif kind == "minimal_loss":
        W, b = head64(ds, "class_centers(kind='minimal_loss')")
        eps = _resolve_smoothing(ds, smoothing)
        C, info = minimal_loss_centers(W, b, eps)
        attrs.update(info)
    else:
        require_vars(ds, ("features", "label"), "class_centers(kind='mean')")
        C = _class_means(ds)[0]
    return xr.DataArray(C, dims=("class", "feature"), name=f"centers_{kind}", attrs=attrs)


def _class_sums_block(f: np.ndarray, y: np.ndarray, K: int) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    onehot = np.zeros((f.shape[0], K))
    onehot[_rows(f.shape[0]), np.asarray(y)] = 1.0
    return np.concatenate([onehot.T @ f, onehot.sum(0)[:, None]], axis=1)


def _class_means(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, d) (NaN rows for empty classes) and counts (K,), one pass."""
    K, d = int(ds.sizes["class"]), int(ds.sizes["feature"])
    sums = np.asarray(compute(sample_reduce(lambda f, y: _class_sums_block(f, y, K), run_array(ds, "features"),
                                            run_array(ds, "label"), shape=(K, d + 1)))[0])
    counts = sums[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts[:, None] > 0, sums[:, :-1] / counts[:, None], np.nan)
    return means, counts


def _centers_array(ds: xr.Dataset, kind: str, smoothing: float | None, centers: Any | None) -> tuple[np.ndarray, str]:
    if centers is None:
        C = class_centers(ds, kind=kind, smoothing=smoothing)
        return np.asarray(C.values, dtype=np.float64), kind
    C = np.asarray(getattr(centers, "values", centers), dtype=np.float64)
    K, d = int(ds.sizes["class"]), int(ds.sizes["feature"])
    if C.shape != (K, d):
        raise ConfigError(f"centers: expected shape (class, feature) = ({K}, {d}), got {C.shape}")
    return C, str(getattr(centers, "attrs", {}).get("kind", "given"))


# ----------------------------------------------------------------------------------------------
# cosine, angular margin
# ----------------------------------------------------------------------------------------------
def _cosines_block(f: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(n, K) cosine of each feature to each center; NaN where a norm is 0."""
    f = np.asarray(f)
    fn = np.sqrt(_sq_norms(f))
    cn = np.linalg.norm(C, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (C @ f.astype(np.float64).T).T / (fn[:, None] * cn[None, :])
    cos[~np.isfinite(cos)] = np.nan
    return np.clip(cos, -1.0, 1.0)


def cosine_to_center(ds: xr.Dataset, kind: str = "minimal_loss", smoothing: float | None = None, *,
                     centers: Any | None = None) -> xr.Dataset:
    """Cosine similarity of every feature to its true-class and its predicted-class center.

    ``cos_true_i = ⟨h_i, c_{y_i}⟩ / (||h_i|| ||c_{y_i}||)`` and ``cos_pred_i`` the same with the
    predicted class ŷ_i = argmax_k logits_ik.

    Parameters
    ----------
    ds : xarray.Dataset
        A run with ``features``, ``logits``, ``label``.
    kind, smoothing
        Which centers (see `class_centers`).
    centers : DataArray or array (class, feature), optional
        Precomputed centers (then ``kind``/``smoothing`` are ignored).

    Returns
    -------
    xarray.Dataset
        ``cos_true``, ``cos_pred`` (sample,), float64, lazy on dask-backed dumps; NaN for a zero
        feature vector or a zero center.
    """
    check_run(ds, "cosine_to_center")
    require_vars(ds, ("features", "logits", "label"), "cosine_to_center")
    C, kind = _centers_array(ds, kind, smoothing, centers)

    def block(f: np.ndarray, z: np.ndarray, y: np.ndarray):
        cos = _cosines_block(f, C)
        rows = _rows(cos.shape[0])
        return cos[rows, np.asarray(y)], cos[rows, np.asarray(z).argmax(axis=1)]

    ct, cp = xr.apply_ufunc(block, _chunked(ds["features"], "feature"), _chunked(ds["logits"], "class"), ds["label"],
                            input_core_dims=[["feature"], ["class"], []], output_core_dims=[[], []],
                            dask="parallelized", output_dtypes=[np.float64, np.float64])
    return xr.Dataset({"cos_true": ct, "cos_pred": cp}, attrs={"kind": kind, "run_id": ds.attrs.get("run_id")})


def angular_margin(ds: xr.Dataset, kind: str = "minimal_loss", smoothing: float | None = None, *,
                   centers: Any | None = None) -> xr.DataArray:
    """Angular margin ``min_{j≠y} θ_j − θ_y`` per sample, θ_j = arccos cos(h, c_j), in radians.

    Positive when the feature is angularly closer to its true-class center than to any other
    center (for ``kind="weight"`` and b = 0 this is the angular form of a correct prediction,
    cf. Liu et al., "Large-Margin Softmax Loss", ICML 2016).

    Returns
    -------
    xarray.DataArray
        (sample,), float64, lazy on dask-backed dumps.
    """
    check_run(ds, "angular_margin")
    require_vars(ds, ("features", "label"), "angular_margin")
    C, kind = _centers_array(ds, kind, smoothing, centers)

    def block(f: np.ndarray, y: np.ndarray) -> np.ndarray:
        theta = np.arccos(_cosines_block(f, C))
        rows = _rows(theta.shape[0])
        y = np.asarray(y)
        own = theta[rows, y].copy()
        theta[rows, y] = np.inf
        return theta.min(axis=1) - own

    out = xr.apply_ufunc(block, _chunked(ds["features"], "feature"), ds["label"],
                         input_core_dims=[["feature"], []], dask="parallelized", output_dtypes=[np.float64])
    out.name = "angular_margin"
    out.attrs = {"kind": kind, "units": "rad"}
    return out


# ----------------------------------------------------------------------------------------------
# comparison of center kinds
# ----------------------------------------------------------------------------------------------
def _fisher_ci(r: float, n: int, level: float, var_factor: float = 1.0) -> tuple[float, float]:
    from scipy import stats

    if n <= 3 or not np.isfinite(r):
        return float("nan"), float("nan")
    if abs(r) >= 1.0:
        return float(r), float(r)
    z = math.atanh(r)
    se = math.sqrt(var_factor / (n - 3))
    q = stats.norm.ppf(0.5 + level / 2.0)
    return float(math.tanh(z - q * se)), float(math.tanh(z + q * se))


def compare_centers(ds: xr.Dataset, kinds: Sequence[str] = CENTER_KINDS, *, level: float = 0.95,
                    smoothing: float | None = None) -> xr.Dataset:
    """How strongly each kind of center's cosine tracks confidence (Pearson and Spearman, with CIs).

    For each center kind and each of ``cos_true`` / ``cos_pred`` (`cosine_to_center`), the
    correlation with the per-sample confidence max_k softmax(z)_k across samples (NaN pairs
    dropped). This is the evidence for the minimal-loss definition: its cosine should track
    confidence at least as well as the class-mean and weight-row cosines.

    CIs: Pearson — Fisher z-transform, z = atanh r ± z_{(1+level)/2} / sqrt(n − 3); Spearman —
    Fisher z with the Fieller, Hartley & Pearson (1957) variance 1.06 / (n − 3) (ranks with ties
    averaged). Computing ranks needs the per-sample cosines and confidences in memory (8 bytes per
    sample and series).

    Parameters
    ----------
    kinds : sequence of str
        Center kinds to compare (default all three; those needing the head raise
        HeadMissingError on a dump without it).
    level : float
        CI coverage.

    Returns
    -------
    xarray.Dataset
        Dims (kind, cosine) with cosine in ["true", "pred"]; variables ``pearson``,
        ``pearson_low``, ``pearson_high``, ``spearman``, ``spearman_low``, ``spearman_high``,
        ``n`` (pairs used).
    """
    from scipy import stats

    from .calibration import per_sample

    check_run(ds, "compare_centers")
    if not (0 < float(level) < 1):
        raise ConfigError(f"level: expected a number in (0, 1), got {level!r}")
    kinds = list(kinds)
    for k in kinds:
        check_choice(k, "kinds", CENTER_KINDS)
    conf_lazy = per_sample(ds)["confidence"]
    cos_lazy = [cosine_to_center(ds, kind=k, smoothing=smoothing) for k in kinds]
    conf, *coss = compute(conf_lazy, *cos_lazy)
    conf = np.asarray(conf.values)
    names = ("pearson", "pearson_low", "pearson_high", "spearman", "spearman_low", "spearman_high", "n")
    out = {n: np.full((len(kinds), 2), np.nan) for n in names}
    for i, cs in enumerate(coss):
        for j, var in enumerate(("cos_true", "cos_pred")):
            x = np.asarray(cs[var].values)
            ok = np.isfinite(x) & np.isfinite(conf)
            n = int(ok.sum())
            out["n"][i, j] = n
            if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(conf[ok]) == 0:
                continue
            r = float(np.corrcoef(x[ok], conf[ok])[0, 1])
            rho = float(np.corrcoef(stats.rankdata(x[ok]), stats.rankdata(conf[ok]))[0, 1])
            out["pearson"][i, j] = r
            out["pearson_low"][i, j], out["pearson_high"][i, j] = _fisher_ci(r, n, level)
            out["spearman"][i, j] = rho
            out["spearman_low"][i, j], out["spearman_high"][i, j] = _fisher_ci(rho, n, level, 1.06)
    return xr.Dataset({k: (("kind", "cosine"), v) for k, v in out.items()},
                      coords={"kind": kinds, "cosine": ["true", "pred"]},
                      attrs={"level": float(level), "run_id": ds.attrs.get("run_id"),
                             "pearson_ci": "Fisher z, se = 1/sqrt(n-3)",
                             "spearman_ci": "Fisher z, se = sqrt(1.06/(n-3)) (Fieller, Hartley & Pearson 1957)"})


# ----------------------------------------------------------------------------------------------
# cone test, confidence grid
# ----------------------------------------------------------------------------------------------
def cone_test(ds: xr.Dataset, scales: Sequence[float] | None = None, with_bias: bool = True) -> xr.Dataset:
    """Does scaling a feature change its prediction? (Are the decision regions cones?)

    Each feature h is replaced by s·h for every s in ``scales`` and classified by the head:
    argmax_k (s W h + b)_k (``with_bias=True``) or argmax_k (s W h)_k (``with_bias=False``), and
    compared with the prediction at s = 1 (same bias setting). Without the bias the regions are
    exact cones, so nothing flips (up to ties); with it, shrinking toward the origin hands the
    decision to argmax b.

    Parameters
    ----------
    ds : xarray.Dataset
        A run with ``features`` and the head.
    scales : sequence of float, optional
        Positive, increasing (default :data:`DEFAULT_SCALES`, 1/16 … 16).
    with_bias : bool
        Include the head bias b.

    Returns
    -------
    xarray.Dataset
        Lazy on dask-backed dumps. ``changed`` (scale, sample) bool — prediction at s differs from
        s = 1; ``never_flips`` (sample); ``flip_scale_down`` (sample) — the largest grid scale < 1
        where the prediction differs (NaN if none); ``flip_scale_up`` — the smallest scale > 1
        where it differs (NaN if none); ``frac_never_flips`` (0-d); ``frac_changed`` (scale).

    Raises
    ------
    HeadMissingError
    """
    W, b = _run_head(ds, "cone_test", ("features",))
    s = _check_scales(DEFAULT_SCALES if scales is None else scales, "scales")
    bias = b if with_bias else np.zeros_like(b)

    def block(f: np.ndarray) -> np.ndarray:
        z = np.asarray(f, dtype=np.float64) @ W.T
        base = (z + bias).argmax(axis=1)
        return np.stack([(si * z + bias).argmax(axis=1) != base for si in s], axis=1)

    changed = xr.apply_ufunc(block, _chunked(ds["features"], "feature"), input_core_dims=[["feature"]],
                             output_core_dims=[["scale"]], dask="parallelized", output_dtypes=[bool],
                             dask_gufunc_kwargs={"output_sizes": {"scale": s.size}})
    changed = changed.assign_coords(scale=s).transpose("scale", "sample")
    scale = changed["scale"]
    down = xr.where(changed & (scale < 1), scale, -np.inf).max("scale")
    up = xr.where(changed & (scale > 1), scale, np.inf).min("scale")
    never = ~changed.any("scale")
    return xr.Dataset({
        "changed": changed, "never_flips": never,
        "flip_scale_down": down.where(np.isfinite(down)), "flip_scale_up": up.where(np.isfinite(up)),
        "frac_never_flips": never.mean("sample"), "frac_changed": changed.mean("sample"),
    }, attrs={"with_bias": bool(with_bias), "run_id": ds.attrs.get("run_id")})


def confidence_grid(ds: xr.Dataset, scales: Sequence[float] | None = None, angles: Sequence[float] | None = None,
                    kind: str = "minimal_loss", smoothing: float | None = None, with_bias: bool = True) -> xr.Dataset:
    """Confidence as a function of (scale, angle to the predicted-class center), averaged over samples.

    For each sample with prediction k, let u = c_k/||c_k|| and v the unit direction of the
    feature's component orthogonal to u. The probe point at (s, θ) is
    ``x = s·||h||·(cos θ·u + sin θ·v)`` — the feature rescaled by s and rotated, in the plane of
    (u, h), to angle θ from the center (s = 1, θ = angle(h, u) gives h back). The head is
    evaluated there (``W x + b``; ``with_bias=False`` drops b). Samples whose feature is zero or
    parallel to u are skipped.

    Returns
    -------
    xarray.Dataset
        Dims (scale, angle) (angle in radians), computed: ``confidence`` (mean max_j softmax_j),
        ``prob_center`` (mean softmax_k, the center's class), ``agree`` (fraction with
        argmax = k), and ``n`` (samples used, 0-d).

    Raises
    ------
    HeadMissingError
    """
    W, b = _run_head(ds, "confidence_grid", ("features", "logits"))
    s = _check_scales(DEFAULT_SCALES if scales is None else scales, "scales")
    a = np.asarray(DEFAULT_ANGLES if angles is None else angles, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ConfigError(f"angles: expected a non-empty list of finite angles (radians), got {angles!r}")
    C, kind = _centers_array(ds, kind, smoothing, None)
    cn = np.linalg.norm(C, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        U = C / cn
    WU = W @ U.T  # column k = W u_k
    bias = b if with_bias else np.zeros_like(b)
    S, A = s.size, a.size

    def block(f: np.ndarray, logits: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        k = np.asarray(logits).argmax(axis=1)
        u = U[k]
        fu = np.einsum("ij,ij->i", f, u)
        perp = f - fu[:, None] * u
        r = np.sqrt(np.einsum("ij,ij->i", f, f))
        pn = np.sqrt(np.einsum("ij,ij->i", perp, perp))
        ok = (r > 0) & (pn > 1e-12 * np.maximum(r, 1e-300)) & np.all(np.isfinite(u), axis=1)
        k, r, pn, perp = k[ok], r[ok], pn[ok], perp[ok]
        rows = _rows(k.shape[0])
        wu = WU[:, k].T  # (n, K)
        wv = (perp @ W.T) / pn[:, None]
        out = np.zeros((S, A, 3))
        for i, si in enumerate(s):
            for j, th in enumerate(a):
                z = (si * r)[:, None] * (math.cos(th) * wu + math.sin(th) * wv) + bias
                z = z - z.max(axis=1, keepdims=True)
                e = np.exp(z)
                p = e / e.sum(axis=1, keepdims=True)
                out[i, j] = p.max(axis=1).sum(), p[rows, k].sum(), (p.argmax(axis=1) == k).sum()
        return np.concatenate([out.ravel(), [float(ok.sum())]])

    vec = np.asarray(compute(sample_reduce(block, raw(ds["features"]), raw(ds["logits"]), shape=(S * A * 3 + 1,)))[0])
    n = vec[-1]
    sums = vec[:-1].reshape(S, A, 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / n
    return xr.Dataset({"confidence": (("scale", "angle"), means[..., 0]),
                       "prob_center": (("scale", "angle"), means[..., 1]),
                       "agree": (("scale", "angle"), means[..., 2]), "n": int(n)},
                      coords={"scale": s, "angle": a},
                      attrs={"kind": kind, "with_bias": bool(with_bias), "angle_units": "rad",
                             "run_id": ds.attrs.get("run_id")})


# ----------------------------------------------------------------------------------------------
# gradient split
# ----------------------------------------------------------------------------------------------
def gradient_split(ds: xr.Dataset, smoothing: float | None = None) -> xr.Dataset:
    """Split the feature-space gradient of the loss into radial and tangential parts.

    For ``ℓ(h) = CE(q_y, softmax(W h + b))`` the gradient is ``g = Wᵀ(p − q_y)``, with
    p = softmax(W h + b) and q_y the (smoothed) target. With ĥ = h/||h||:
    ``radial = ⟨g, ĥ⟩`` (signed: < 0 means the loss falls as ||h|| grows),
    ``tangential = ||g − radial·ĥ||``, ``radial_fraction = radial² / ||g||²`` and
    ``angle_to_neg_h`` = the angle between g and −h (0: descent −g points straight along +h,
    i.e. growing the feature; π: shrinking it).

    Parameters
    ----------
    smoothing : float, optional
        eps of q_y (default: the run's, see `run_smoothing`).

    Returns
    -------
    xarray.Dataset
        (sample,) variables ``grad_norm``, ``radial``, ``tangential``, ``radial_fraction``,
        ``angle_to_neg_h`` (rad); lazy on dask-backed dumps.

    Raises
    ------
    HeadMissingError
    """
    W, b = _run_head(ds, "gradient_split", ("features", "label"))
    eps = _resolve_smoothing(ds, smoothing)
    K = W.shape[0]
    Q = smoothed_targets(K, eps)

    def block(f: np.ndarray, y: np.ndarray):
        f = np.asarray(f, dtype=np.float64)
        z = f @ W.T + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - Q[np.asarray(y)]) @ W
        gn = np.sqrt(np.einsum("ij,ij->i", g, g))
        fn = np.sqrt(np.einsum("ij,ij->i", f, f))
        with np.errstate(invalid="ignore", divide="ignore"):
            radial = np.einsum("ij,ij->i", g, f) / fn
            tang = np.sqrt(np.maximum(gn ** 2 - radial ** 2, 0.0))
            frac = radial ** 2 / gn ** 2
            ang = np.arccos(np.clip(-radial / gn, -1.0, 1.0))
        return gn, radial, tang, frac, ang

    outs = xr.apply_ufunc(block, _chunked(ds["features"], "feature"), ds["label"], input_core_dims=[["feature"], []],
                          output_core_dims=[[]] * 5, dask="parallelized", output_dtypes=[np.float64] * 5)
    names = ("grad_norm", "radial", "tangential", "radial_fraction", "angle_to_neg_h")
    return xr.Dataset(dict(zip(names, outs)), attrs={"smoothing": eps, "run_id": ds.attrs.get("run_id")})


# ----------------------------------------------------------------------------------------------
# neural collapse, head statistics
# ----------------------------------------------------------------------------------------------
def _equi_stats(V: np.ndarray) -> tuple[float, float, float]:
    """(CV of norms, std of pairwise cosines, mean |cos + 1/(K−1)|) of the rows of V (K >= 2)."""
    K = V.shape[0]
    norms = np.linalg.norm(V, axis=1)
    cv = float(norms.std() / norms.mean())
    U = V / norms[:, None]
    G = U @ U.T
    off = G[~np.eye(K, dtype=bool)]
    return cv, float(off.std()), float(np.abs(off + 1.0 / (K - 1)).mean())


def neural_collapse(ds: xr.Dataset, *, include_head: bool = True) -> xr.Dataset:
    """Neural-collapse statistics NC1–NC4 (Papyan, Han & Donoho, PNAS 2020, figs. 2–7).

    With class means μ_c, global mean μ_G (over all samples), M = [μ_c − μ_G]_c (K × d),
    Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and Σ_B = (1/K) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ:

    - ``nc1`` = tr(Σ_W Σ_B⁺) / K (within-class variability collapse);
    - ``nc2_equinorm_means`` / ``nc2_equinorm_weights`` = std_c ||m_c|| / mean_c ||m_c|| for the
      rows of M / of W; ``nc2_equiangle_means`` / ``_weights`` = std over c ≠ c' of the cosines;
      ``nc2_maxangle_means`` / ``_weights`` = mean over c ≠ c' of |cos + 1/(K − 1)|;
    - ``nc3`` = || W/||W||_F − M/||M||_F ||²_F (self-duality);
    - ``nc4`` = share of samples whose prediction argmax(logits) differs from the nearest class
      mean argmin_c ||h − μ_c|| (the NCC mismatch).

    Standard deviations are population (ddof = 0). Classes without samples are left out.
    Two passes over the features (means, then Σ_W and NC4).

    Parameters
    ----------
    include_head : bool
        Compute the head-based NC2 (weights) and NC3; ``False`` skips them for dumps without a head.

    Returns
    -------
    xarray.Dataset
        0-d variables as above, computed.

    Raises
    ------
    HeadMissingError
        If ``include_head`` and the dump has no ``head_weight``.
    """
    check_run(ds, "neural_collapse")
    require_vars(ds, ("features", "logits", "label"), "neural_collapse")
    W = head64(ds, "neural_collapse (NC2 weights, NC3; pass include_head=False to skip)")[0] if include_head else None
    means, counts = _class_means(ds)
    present = counts > 0
    N = counts.sum()
    mu_g = (means[present] * counts[present, None]).sum(0) / N
    Mc = means - mu_g  # rows; NaN for absent classes
    Kp = int(present.sum())
    d = means.shape[1]
    mu_p = np.where(present[:, None], means, 0.0)
    mu_sq = np.where(present, np.einsum("ij,ij->i", mu_p, mu_p), np.inf)

    def block(f: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        c = f - mu_p[np.asarray(y)]
        ncc = (mu_sq[None, :] - 2.0 * f @ mu_p.T).argmin(axis=1)
        mismatch = float((ncc != np.asarray(z).argmax(axis=1)).sum())
        return np.concatenate([(c.T @ c).ravel(), [mismatch]])

    vec = np.asarray(compute(sample_reduce(block, raw(ds["features"]), raw(ds["logits"]), raw(ds["label"]),
                                           shape=(d * d + 1,)))[0])
    sigma_w = vec[:-1].reshape(d, d) / N
    M = Mc[present]
    sigma_b = M.T @ M / Kp
    nc1 = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / Kp)
    out: dict[str, Any] = {"nc1": nc1}
    if Kp >= 2:
        out["nc2_equinorm_means"], out["nc2_equiangle_means"], out["nc2_maxangle_means"] = _equi_stats(M)
    out["nc4"] = float(vec[-1] / N)
    if W is not None:
        out["nc2_equinorm_weights"], out["nc2_equiangle_weights"], out["nc2_maxangle_weights"] = _equi_stats(W[present])
        Wp = W[present]
        out["nc3"] = float(np.sum((Wp / np.linalg.norm(Wp) - M / np.linalg.norm(M)) ** 2))
    order = ["nc1", "nc2_equinorm_means", "nc2_equinorm_weights", "nc2_equiangle_means", "nc2_equiangle_weights",
             "nc2_maxangle_means", "nc2_maxangle_weights", "nc3", "nc4"]
    return xr.Dataset({k: float(out[k]) for k in order if k in out},
                      attrs={"n_classes_present": Kp, "run_id": ds.attrs.get("run_id"),
                             "reference": "Papyan, Han & Donoho, PNAS 117(40), 2020"})


def head_stats(ds: xr.Dataset) -> xr.Dataset:
    """Statistics of the head behind the cone argument: spread of ||w_k|| and size of b.

    Returns
    -------
    xarray.Dataset
        ``w_norm`` (class) = ||w_k||; ``w_norm_mean``, ``w_norm_cv`` (std/mean, ddof 0);
        ``bias`` (class); ``bias_std`` (std of b — only differences of b matter to softmax);
        ``bias_range`` (max b − min b); ``bias_norm`` (||b − mean b||); ``bias_to_weight``
        (bias_std / w_norm_mean, the scale at which the bias competes with a unit feature).

    Raises
    ------
    HeadMissingError
    """
    check_run(ds, "head_stats")
    W, b = head64(ds, "head_stats")
    wn = np.linalg.norm(W, axis=1)
    return xr.Dataset({
        "w_norm": ("class", wn), "w_norm_mean": float(wn.mean()), "w_norm_cv": float(wn.std() / wn.mean()),
        "bias": ("class", b), "bias_std": float(b.std()), "bias_range": float(b.max() - b.min()),
        "bias_norm": float(np.linalg.norm(b - b.mean())), "bias_to_weight": float(b.std() / wn.mean()),
    }, attrs={"run_id": ds.attrs.get("run_id")})


_head64 = head64  # old private name (use causalgeom.metrics.kernels.head64)
