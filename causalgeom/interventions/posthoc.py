# Over 600 lines on purpose: one concern (post hoc do() on stored features): rescale, rotate and their study-level sweeps share the world construction.
"""Post hoc interventions on a dump (features + head, no model; numpy only): set the magnitude or the direction.

`rescale` (``h -> s h``), `rotate` (move ``h`` toward / away from a class center by a fraction of the angle,
keeping ``||h||``), `match` (give a control run the treated run's magnitude or cosine distribution and report the
*interventional share* of each outcome gap), `temperature_vs_scaling`, and the feature-level transforms they use
(`rescale_features`, `rotate_features`, `set_cosine`, `quantile_match`, `match_features`). Also the argument
checks and the streaming machinery (aligned sample blocks, Poisson bootstrap weights, weighted outcome sums) that
the study-level and in-model interventions share. Formulas: ``docs/methods_interventions.md``.

References
----------
Guo, Pleiss, Sun, Weinberger (2017), "On Calibration of Modern Neural Networks", ICML (ECE, temperature scaling).
Hanley, MacGibbon (2006), "Creating non-parametric bootstrap samples using Poisson frequencies",
Comput. Methods Programs Biomed. 83(1) (Poisson bootstrap).
Shoemake (1985), "Animating rotation with quaternion curves", SIGGRAPH (slerp).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
import pandas as pd
import xarray as xr

from ..metrics.blocks import NUMPY_BLOCK_ROWS, check_run, compute, is_dask, raw, require_vars, sample_reduce
from ..causal import percentile_ci
from ..errors import ConfigError, SchemaError
from ..metrics.geometry import CENTER_KINDS, class_centers, cosine_to_center, magnitude
from ..metrics.kernels import bin_index, head64, sample_stats_block, softmax_block
from ..dump.schema import require_head
from .._util.checks import check_choice
from .._util.rng import RngLike, check_random_state

__all__ = [
    "OUTCOMES", "MEDIATION_OUTCOME_ALIASES", "MEDIATOR_KINDS", "rescale", "rotate", "match",
    "temperature_vs_scaling", "rescale_features", "rotate_features", "set_cosine", "quantile_match",
    "match_features", "TOWARD", "MATCH_WHAT"
]

#: Outcomes reported for every grid point (each with ``_ci_low`` / ``_ci_high``).
OUTCOMES = ("accuracy", "ece", "signed_ece", "nll", "brier", "mean_confidence")
#: Where mediation outcome names differ from ours: mediation outcome -> intervention outcome.
MEDIATION_OUTCOME_ALIASES = {"overconfidence": "signed_ece", "correct": "accuracy", "confidence": "mean_confidence"}
#: Mediator columns of the analysis table (``causalgeom.metrics.table``) -> the intervention that sets them.
MEDIATOR_KINDS = {"rms": "magnitude", "norm": "magnitude", "magnitude": "magnitude",
                  "cos_true": "cosine", "cos_pred": "cosine", "cosine": "cosine"}
TOWARD = ("predicted", "true")
MATCH_WHAT = ("magnitude", "cosine", "both")

# Samples per processing block. Bootstrap weights are drawn per global block of this size from a
# seed derived from (bootstrap seed, block index), so results do not depend on the store's chunking.
_BLOCK = 4096
_ORTHO_EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
def _grid(values: ArrayLike, name: str, *, minimum: float | None = None, maximum: float | None = None) -> np.ndarray:
    """A non-empty, finite, 1-d float grid; bounds are inclusive."""
    if isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, bool):
        values = [values]
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a sequence of numbers, got {values!r}") from None
    if arr.size == 0:
        raise ConfigError(f"{name}: expected at least one value, got an empty sequence")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name}: expected finite numbers, got {arr.tolist()}")
    if minimum is not None and np.any(arr < minimum):
        raise ConfigError(f"{name}: expected values >= {minimum:g}, got {arr.tolist()}")
    if maximum is not None and np.any(arr > maximum):
        raise ConfigError(f"{name}: expected values <= {maximum:g}, got {arr.tolist()}")
    if np.unique(arr).size != arr.size:
        raise ConfigError(f"{name}: expected distinct values, got {arr.tolist()}")
    return arr


def _check_options(n_bins: int, n_boot: int, ci: float) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins: expected a positive integer, got {n_bins!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ConfigError(f"n_boot: expected an integer >= 0 (0: no intervals), got {n_boot!r}")
    if not isinstance(ci, (int, float, np.floating)) or not 0 < float(ci) < 1:
        raise ConfigError(f"ci: expected a confidence level in (0, 1), e.g. 0.95, got {ci!r}")


def _seed(gen: np.random.Generator) -> int:
    return int(gen.integers(0, 2**63 - 1))


# ---------------------------------------------------------------------------------------------
# streaming machinery: aligned sub-blocks, Poisson bootstrap weights, weighted outcome sums
# ---------------------------------------------------------------------------------------------
def _poisson_weights(seed: int, n_boot: int, start: int, stop: int) -> np.ndarray:
    """Bootstrap weights of samples ``start:stop``, shape ``(1 + n_boot, stop - start)``.

    Row 0 is all ones (the point estimate); rows 1.. are i.i.d. Poisson(1) frequencies drawn per
    global block of ``_BLOCK`` samples from ``SeedSequence(seed, spawn_key=(block,))``, so a sample's
    weights depend only on ``(seed, its index)`` and not on how the run is chunked.
    """
    out = np.ones((1 + n_boot, stop - start))
    pos = start
    while n_boot and pos < stop:
        k = pos // _BLOCK
        end = min(stop, (k + 1) * _BLOCK)
        gen = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
        block = gen.poisson(1.0, size=(n_boot, _BLOCK))
        out[1:, pos - start:end - start] = block[:, pos - k * _BLOCK:end - k * _BLOCK]
        pos = end
    return out


def _aligned(idx: np.ndarray) -> Iterator[slice]:
    """Local slices of a contiguous index block, cut at multiples of ``_BLOCK`` (bounds the weights)."""
    if idx.size == 0:
        return
    first = int(idx[0])
    pos, stop = first, first + idx.size
    while pos < stop:
        end = min(stop, (pos // _BLOCK + 1) * _BLOCK)
        yield slice(pos - first, end - first)
        pos = end


def _weighted_blocks(f: np.ndarray, y: np.ndarray, idx: np.ndarray, seed: int, n_boot: int
                     ) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """``(sl, features float64, labels, bootstrap weights (1 + n_boot, n))`` of each aligned sub-block of ``idx``."""
    for sl in _aligned(idx):
        yield sl, f[sl].astype(np.float64), y[sl], _poisson_weights(seed, n_boot, int(idx[sl][0]),
                                                                    int(idx[sl][-1]) + 1)


def _grid_sums(ds: xr.Dataset, n_grid: int, n_boot: int, n_sum: int, seed: int,
               add: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]) -> np.ndarray:
    """Weighted sums ``(n_grid, 1 + n_boot, n_sum)`` over the run: ``add(x, y, w, out)`` adds one sub-block's."""
    def block(f: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((n_grid, 1 + n_boot, n_sum))
        for _, x, yy, w in _weighted_blocks(f, y, idx, seed, n_boot):
            add(x, yy, w, out)
        return out

    return _reduce(block, [raw(ds["features"]), raw(ds["label"])], (n_grid, 1 + n_boot, n_sum))


def _n_sums(n_bins: int, n_extra: int) -> int:
    return 5 + n_bins + n_extra


def _weighted_sums(logits: np.ndarray, labels: np.ndarray, w: np.ndarray, n_bins: int,
                   extra: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Weighted sufficient statistics of one block, shape ``(n_rep, 5 + n_bins + len(extra))``.

    Columns: total weight, correct, confidence, NLL, Brier (per-sample values from
    :mod:`causalgeom.metrics.calibration`), then per equal-width confidence bin the sum of
    ``conf - correct``, then the extra per-sample values.
    """
    conf, _, correct, nll, brier = sample_stats_block(logits, labels)
    correct = correct.astype(np.float64)
    n = conf.shape[0]
    cols = np.zeros((n, _n_sums(n_bins, len(extra))))
    cols[:, 0] = 1.0
    cols[:, 1], cols[:, 2], cols[:, 3], cols[:, 4] = correct, conf, nll, brier
    cols[np.arange(n), 5 + bin_index(conf, n_bins)] = conf - correct
    for j, value in enumerate(extra):
        cols[:, 5 + n_bins + j] = value
    return w @ cols


def _finish(sums: np.ndarray, n_bins: int, extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Outcomes from summed statistics ``(..., 5 + n_bins + n_extra)``.

    The binned ECE (Guo et al. 2017; l1, equal width) is ``sum_b |sum_{i in b} w_i (conf_i -
    correct_i)| / sum_i w_i`` (= ``sum_b n_b/n |conf_b - acc_b|``); the signed ECE drops the absolute
    value; extras are weighted means.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        w = sums[..., 0]
        bins = sums[..., 5:5 + n_bins]
        out = {
            "accuracy": sums[..., 1] / w,
            "ece": np.abs(bins).sum(axis=-1) / w,
            "signed_ece": bins.sum(axis=-1) / w,
            "nll": sums[..., 3] / w,
            "brier": sums[..., 4] / w,
            "mean_confidence": sums[..., 2] / w,
        }
        for j, name in enumerate(extra):
            out[name] = sums[..., 5 + n_bins + j] / w
    return out


def _reduce_lazy(func: Callable[..., np.ndarray], arrays: Sequence[Any], shape: Sequence[int]) -> Any:
    """Sum of ``func(*blocks, idx)`` over sample blocks (``idx``: the blocks' global sample indices);
    lazy for dask-backed arrays (:func:`causalgeom.metrics.blocks.sample_reduce`)."""
    return sample_reduce(func, *arrays, np.arange(arrays[0].shape[0]), shape=shape)


def _reduce(func: Callable[..., np.ndarray], arrays: Sequence[Any], shape: Sequence[int]) -> np.ndarray:
    """:func:`_reduce_lazy`, computed."""
    return np.asarray(compute(_reduce_lazy(func, arrays, shape))[0])


def _grid_dataset(vals: Mapping[str, np.ndarray], dim: str, coord: np.ndarray, ci: float, attrs: Mapping[str, Any],
                  extra: Sequence[str] = (), extra_coords: Mapping[str, np.ndarray] | None = None) -> xr.Dataset:
    """Dataset of outcomes along ``dim`` from replicate arrays ``(n_rep, n_grid)`` (row 0: point estimate)."""
    data_vars: dict[str, Any] = {}
    for name in OUTCOMES:
        lo, hi = percentile_ci(vals[name][1:], ci)
        data_vars[name] = ((dim,), vals[name][0])
        data_vars[f"{name}_ci_low"] = ((dim,), lo, {"description": f"{ci:.0%} percentile bootstrap interval, low"})
        data_vars[f"{name}_ci_high"] = ((dim,), hi, {"description": f"{ci:.0%} percentile bootstrap interval, high"})
    for name in extra:
        data_vars[name] = ((dim,), vals[name][0])
    if "feature_ms" in data_vars:
        data_vars["feature_rms"] = ((dim,), np.sqrt(data_vars.pop("feature_ms")[1]),
                                    {"description": "sqrt(mean_i ||h_i||^2 / F) after the intervention"})
    coords = {dim: coord, **{k: ((dim,), v) for k, v in (extra_coords or {}).items()}}
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))


def _base_attrs(ds: xr.Dataset, intervention: str, n_bins: int, n_boot: int, ci: float, seed: int) -> dict[str, Any]:
    return {
        "intervention": intervention, "run_id": ds.attrs.get("run_id"), "regularizer": ds.attrs.get("regularizer"),
        "n_samples": int(ds.sizes["sample"]), "n_bins": int(n_bins), "n_boot": int(n_boot), "ci": float(ci),
        "bootstrap": "percentile, Poisson(1) resampling weights over samples (Hanley & MacGibbon 2006)",
        "bootstrap_seed": seed,
    }


# ---------------------------------------------------------------------------------------------
# feature-level transforms (numpy, float64)
# ---------------------------------------------------------------------------------------------
def rescale_features(features: ArrayLike, scale: float | np.ndarray) -> np.ndarray:
    """``h -> s h``.

    Parameters
    ----------
    features : array, shape (n, F)
    scale : float or array of shape (n,)
        One factor for all samples, or one per sample.

    Returns
    -------
    numpy.ndarray, shape (n, F), float64
    """
    f = np.asarray(features, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    return f * (s[:, None] if s.ndim == 1 else s)


def _orthonormal_fallback(v: np.ndarray) -> np.ndarray:
    """A unit vector orthogonal to each row of ``v`` (unit rows): ``e_j - v_j v`` with ``j = argmin |v|``."""
    j = np.argmin(np.abs(v), axis=1)
    rows = np.arange(v.shape[0])
    w = -v[rows, j][:, None] * v
    w[rows, j] += 1.0
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def _basis(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Polar coordinates of each ``h`` in the plane of ``(h, c)``.

    Returns ``norm (n,)``, ``v (n, F)`` = c/||c||, ``w (n, F)`` = unit vector of that plane orthogonal to
    ``v`` on the side of ``h``, ``theta (n,)`` = angle between ``h`` and ``c`` in [0, pi], so that
    ``h = norm (cos(theta) v + sin(theta) w)``. Where ``h`` is (anti)parallel to ``c`` the plane is
    not defined by ``h`` and ``w`` is a fixed unit vector orthogonal to ``v``.
    """
    norm = np.linalg.norm(features, axis=1)
    u = np.divide(features, norm[:, None], out=np.zeros_like(features), where=norm[:, None] > 0)
    v = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    cos = np.clip(np.einsum("nf,nf->n", u, v), -1.0, 1.0)
    w = u - cos[:, None] * v
    sin = np.linalg.norm(w, axis=1)
    bad = sin < _ORTHO_EPS
    w = np.divide(w, sin[:, None], out=np.zeros_like(w), where=~bad[:, None])
    if np.any(bad):
        w[bad] = _orthonormal_fallback(v[bad])
    theta = np.arctan2(sin, cos)
    return norm, v, w, theta


def _angle_after(theta: np.ndarray, alpha: float) -> np.ndarray:
    """``phi = clip((1 - alpha) theta, 0, pi)``: fraction ``alpha`` of the angle removed (added if < 0)."""
    return np.clip((1.0 - alpha) * theta, 0.0, np.pi)


def _check_centers(centers: ArrayLike, n_classes: int, n_features: int, name: str = "centers") -> np.ndarray:
    if isinstance(centers, xr.DataArray):
        if set(centers.dims) != {"class", "feature"}:
            raise ConfigError(f"{name}: expected a DataArray with dims ('class', 'feature'), got {centers.dims}")
        centers = centers.transpose("class", "feature").values
    if callable(getattr(centers, "detach", None)):  # a torch tensor (duck-typed: this module needs no torch)
        centers = centers.detach().cpu().numpy()
    c = np.asarray(centers, dtype=np.float64)
    if c.shape != (n_classes, n_features):
        raise ConfigError(f"{name}: expected shape (n_classes, n_features) = ({n_classes}, {n_features}), "
                          f"got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ConfigError(f"{name}: expected finite values, got NaN/Inf")
    zero = np.flatnonzero(np.linalg.norm(c, axis=1) == 0)
    if zero.size:
        raise ConfigError(f"{name}: classes {zero.tolist()} have a zero-norm center; rotating toward it is undefined")
    return c


def rotate_features(features: ArrayLike, centers: ArrayLike, classes: ArrayLike, alpha: float) -> np.ndarray:
    """Move each ``h`` toward its class center by a fraction ``alpha`` of the angle, keeping ``||h||``.

    With ``theta`` the angle between ``h`` and ``c = centers[classes]`` and ``v``, ``w`` the orthonormal
    basis of their plane (``v = c / ||c||``)::

        h' = ||h|| (cos(phi) v + sin(phi) w),   phi = clip((1 - alpha) theta, 0, pi)

    (a slerp between the directions of ``h`` and ``c``, Shoemake 1985). ``alpha = 0`` returns ``h``
    unchanged, ``alpha = 1`` puts ``h`` on the center's ray, ``alpha < 0`` turns it away (at most to
    the antipode).

    Parameters
    ----------
    features : array, shape (n, F)
    centers : array, shape (K, F)
        Class centers (e.g. ``cg.geometry.class_centers(ds)``); no zero rows.
    classes : array of int, shape (n,)
        Which center each sample moves toward (true or predicted class).
    alpha : float
        Fraction of the angle, ``<= 1``.

    Returns
    -------
    numpy.ndarray, shape (n, F), float64
    """
    f = np.asarray(features, dtype=np.float64)
    alpha = float(_grid(alpha, "alpha", maximum=1.0)[0])
    if f.ndim != 2:
        raise ConfigError(f"features: expected shape (n, F), got {f.shape}")
    c = np.asarray(centers, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != f.shape[1]:
        raise ConfigError(f"centers: expected shape (K, {f.shape[1]}), got {c.shape}")
    if alpha == 0.0:
        return f.copy()
    norm, v, w, theta = _basis(f, c[np.asarray(classes)])
    phi = _angle_after(theta, alpha)
    return norm[:, None] * (np.cos(phi)[:, None] * v + np.sin(phi)[:, None] * w)


def set_cosine(features: ArrayLike, targets: ArrayLike, cosine: ArrayLike) -> np.ndarray:
    """Rotate each ``h`` in the plane of ``(h, t)`` to cosine ``cosine`` with ``t``, keeping ``||h||``.

    ``h' = ||h|| (cos(phi) v + sin(phi) w)`` with ``phi = arccos(cosine)`` and ``v``, ``w`` as in
    :func:`rotate_features`.

    Parameters
    ----------
    features : array, shape (n, F)
    targets : array, shape (n, F)
        The direction of reference for each sample (its class center).
    cosine : float or array, shape (n,)
        Target cosines in [-1, 1].

    Returns
    -------
    numpy.ndarray, shape (n, F), float64
    """
    f = np.asarray(features, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if f.ndim != 2 or t.shape != f.shape:
        raise ConfigError(f"targets: expected the shape of features {f.shape}, got {t.shape}")
    cos = np.broadcast_to(np.asarray(cosine, dtype=np.float64), (f.shape[0],))
    if np.any(~np.isfinite(cos)) or np.any(np.abs(cos) > 1):
        raise ConfigError(f"cosine: expected values in [-1, 1], got range [{np.nanmin(cos):g}, {np.nanmax(cos):g}]")
    norm, v, w, _ = _basis(f, t)
    phi = np.arccos(cos)
    return norm[:, None] * (np.cos(phi)[:, None] * v + np.sin(phi)[:, None] * w)


def quantile_match(values: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Map ``values`` onto the distribution of ``target`` by quantile matching.

    ``x_i -> Q_target(u_i)``, with ``u_i = (r_i + 1/2) / n`` the mid-rank of ``x_i`` among ``values``
    (ties broken by position) and ``Q_target`` the empirical quantile function of ``target``
    (generalized inverse of its CDF, ``numpy.quantile(..., method="inverted_cdf")``). The map is
    monotone; with ``len(values) == len(target)`` the result is a permutation of ``target``.

    Parameters
    ----------
    values : array, shape (n,)
    target : array, shape (m,)

    Returns
    -------
    numpy.ndarray, shape (n,), float64

    References
    ----------
    Chernozhukov, Fernandez-Val, Melly (2013), "Inference on counterfactual distributions",
    Econometrica 81(6).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if x.size == 0 or t.size == 0:
        raise ConfigError(f"quantile_match: expected non-empty arrays, got sizes {x.size} and {t.size}")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[np.argsort(x, kind="stable")] = np.arange(x.size)
    return np.quantile(t, (ranks + 0.5) / x.size, method="inverted_cdf")


# ---------------------------------------------------------------------------------------------
# post hoc interventions on a run
# ---------------------------------------------------------------------------------------------
def _run(ds: Any, what: str) -> xr.Dataset:
    check_run(ds, what)
    require_vars(ds, ("features", "label"), what)
    return ds


def _run_rms(ds: xr.Dataset) -> float:
    """``sqrt(mean_i ||h_i||^2 / F)``: root mean square of all feature entries of the run."""
    rms = magnitude(ds)["rms"]
    return math.sqrt(float(compute((rms * rms).mean().data)[0]))


def _target_rms_values(target_rms: ArrayLike) -> np.ndarray:
    if isinstance(target_rms, xr.Dataset):
        return np.array([_run_rms(_run(target_rms, "target_rms"))])
    return _grid(target_rms, "target_rms", minimum=0.0)


def rescale(ds: xr.Dataset, scales: ArrayLike = None, *, target_rms: ArrayLike = None, per_sample: bool = False,
            n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: RngLike = None) -> xr.Dataset:
    """Set the feature magnitude, ``h -> s h``, and measure calibration (post hoc, from features + head).

    Logits are recomputed as ``s (h W^T) + b``; the direction of every ``h`` is unchanged.

    Parameters
    ----------
    ds : xarray.Dataset
        One run (schema v1) with ``head_weight`` (``head_bias`` missing means ``b = 0``); in memory or
        dask-backed (read chunk by chunk).
    scales : sequence of float >= 0, optional
        Grid of factors ``s``; ``s = 1`` is the identity.
    target_rms : float, sequence of float, or xarray.Dataset, optional
        Instead of ``scales``: bring the features to this RMS (``||h|| / sqrt(F)``); a Dataset means
        that run's RMS ``sqrt(mean_i ||h_i||^2 / F)`` (e.g. the treated run's).
    per_sample : bool
        With ``target_rms``: rescale every sample to exactly that RMS (``h_i -> t h_i / rms_i``);
        default: one global factor ``s = t / RMS(run)``.
    n_bins : int
        Equal-width confidence bins of the ECE (Guo et al. 2017).
    n_boot : int
        Bootstrap replicates for the intervals (0: none, the ``*_ci_*`` variables are NaN).
    ci : float
        Interval level.
    rng : numpy.random.Generator, int or None
        Source of the bootstrap seed (recorded in ``attrs["bootstrap_seed"]``; None: fresh OS entropy).

    Returns
    -------
    xarray.Dataset
        Dim ``scale`` (the global factor; in ``per_sample`` mode ``t / RMS(run)``). Variables
        :data:`OUTCOMES` and ``<outcome>_ci_low`` / ``_ci_high`` (percentile bootstrap over samples
        with Poisson(1) weights, the same weights at every grid point), ``feature_rms`` (RMS after the
        intervention); coordinate ``target_rms`` when given.

    Raises
    ------
    HeadMissingError
        If the dump has no head.
    ConfigError
        On invalid arguments.
    """
    _run(ds, "interventions.rescale")
    W, b = head64(ds, "interventions.rescale")
    _check_options(n_bins, n_boot, ci)
    if (scales is None) == (target_rms is None):
        given = "<Dataset>" if isinstance(target_rms, xr.Dataset) else repr(target_rms)
        raise ConfigError("rescale: give exactly one of scales= (a grid of factors) or target_rms=, "
                          f"got scales={scales!r}, target_rms={given}")
    if per_sample and target_rms is None:
        raise ConfigError("per_sample: True needs target_rms= (each sample is brought to that RMS)")
    extra_coords = {}
    targets = run_rms = None
    if scales is not None:
        grid = _grid(scales, "scales", minimum=0.0)
        mode = "grid"
    else:
        targets = _target_rms_values(target_rms)
        run_rms = _run_rms(ds)
        if run_rms == 0:
            raise SchemaError("variable 'features': all zero, cannot rescale to a target RMS")
        grid = targets / run_rms
        mode = "per_sample" if per_sample else "global"
        extra_coords["target_rms"] = targets
    n_features = ds.sizes["feature"]
    seed = _seed(check_random_state(rng))
    n_sum = _n_sums(n_bins, 1)

    def add(x: np.ndarray, yy: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
        z0 = x @ W.T
        ms = np.einsum("ij,ij->i", x, x) / n_features
        rms = np.sqrt(ms)
        for g, s in enumerate(grid):
            if mode == "per_sample":
                factor = np.divide(targets[g], rms, out=np.ones_like(rms), where=rms > 0)
                out[g] += _weighted_sums(factor[:, None] * z0 + b, yy, w, n_bins, [factor**2 * ms])
            else:
                out[g] += _weighted_sums(s * z0 + b, yy, w, n_bins, [s * s * ms])

    sums = _grid_sums(ds, grid.size, n_boot, n_sum, seed, add)
    vals = {k: v.T for k, v in _finish(sums, n_bins, ["feature_ms"]).items()}  # (n_rep, n_grid)
    attrs = _base_attrs(ds, "rescale", n_bins, n_boot, ci, seed)
    attrs["mode"] = mode
    if run_rms is not None:
        attrs["run_rms"] = run_rms
    return _grid_dataset(vals, "scale", grid, ci, attrs, ["feature_ms"], extra_coords)


def _resolve_centers(ds: xr.Dataset, center: str | ArrayLike) -> np.ndarray:
    """``(K, F)`` float64 centers: a kind for ``cg.geometry.class_centers`` or an explicit array."""
    K, F = ds.sizes["class"], ds.sizes["feature"]
    if isinstance(center, str):
        check_choice(center, "center", CENTER_KINDS)
        return _check_centers(class_centers(ds, kind=center), K, F, name=f"class_centers(kind={center!r})")
    return _check_centers(center, K, F, name="center")


def _center_label(center: str | ArrayLike) -> str:
    return center if isinstance(center, str) else "given"


def rotate(ds: xr.Dataset, alphas: ArrayLike, *, toward: str = "predicted", center: str | ArrayLike = "minimal_loss",
           n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: RngLike = None) -> xr.Dataset:
    """Set the feature direction: move each ``h`` toward its class center by a fraction ``alpha`` of the angle.

    ``h' = ||h|| (cos(phi) v + sin(phi) w)``, ``phi = clip((1 - alpha) theta, 0, pi)`` (see
    :func:`rotate_features`); norms are kept, so only the cosine to the center changes.

    Parameters
    ----------
    ds : xarray.Dataset
        One run (schema v1) with a head.
    alphas : sequence of float <= 1
        Fractions of the angle; 0 is the identity, 1 puts every feature on its center's ray,
        negative values turn features away from the center.
    toward : {"predicted", "true"}
        Center of the class predicted from the unmodified features (default; uses no labels), or of
        the true class (an oracle intervention: it changes which class wins by using the label).
    center : str or array of shape (K, F)
        A ``kind`` of :func:`causalgeom.metrics.geometry.class_centers` (``"minimal_loss"``, ``"mean"``,
        ``"weight"``), or the centers themselves.
    n_bins, n_boot, ci, rng
        As in :func:`rescale`.

    Returns
    -------
    xarray.Dataset
        Dim ``alpha``; variables :data:`OUTCOMES` with ``_ci_low`` / ``_ci_high``, ``cos_to_center``
        (mean cosine to the target center after rotation, ``cos(phi)``) and ``feature_rms``
        (unchanged by design).

    Raises
    ------
    HeadMissingError, ConfigError
    """
    _run(ds, "interventions.rotate")
    W, b = head64(ds, "interventions.rotate")
    _check_options(n_bins, n_boot, ci)
    toward = check_choice(toward, "toward", TOWARD)
    grid = _grid(alphas, "alphas", maximum=1.0)
    centers = _resolve_centers(ds, center)
    n_features = ds.sizes["feature"]
    seed = _seed(check_random_state(rng))
    n_sum = _n_sums(n_bins, 2)

    def add(x: np.ndarray, yy: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
        logits0 = x @ W.T + b
        cls = logits0.argmax(axis=1) if toward == "predicted" else yy
        norm, v, ortho, theta = _basis(x, centers[cls])
        vW, oW = v @ W.T, ortho @ W.T
        ms = norm**2 / n_features
        for g, alpha in enumerate(grid):
            if alpha == 0.0:
                out[g] += _weighted_sums(logits0, yy, w, n_bins, [ms, np.cos(theta)])
                continue
            phi = _angle_after(theta, alpha)
            logits = norm[:, None] * (np.cos(phi)[:, None] * vW + np.sin(phi)[:, None] * oW) + b
            out[g] += _weighted_sums(logits, yy, w, n_bins, [ms, np.cos(phi)])

    sums = _grid_sums(ds, grid.size, n_boot, n_sum, seed, add)
    extra = ["feature_ms", "cos_to_center"]
    vals = {k: v.T for k, v in _finish(sums, n_bins, extra).items()}
    attrs = _base_attrs(ds, "rotate", n_bins, n_boot, ci, seed)
    attrs.update(toward=toward, center=_center_label(center))
    return _grid_dataset(vals, "alpha", grid, ci, attrs, extra)


def temperature_vs_scaling(ds: xr.Dataset, scales: ArrayLike, *, n_bins: int = 15) -> xr.Dataset:
    """Feature scaling ``s (h W^T) + b`` against temperature scaling ``(h W^T + b) / T`` with ``T = 1/s``.

    The two differ by ``(1 - s) b`` in the logits, so they coincide exactly when ``b = 0`` (and, since
    softmax ignores constant shifts, when all ``b_k`` are equal).

    Parameters
    ----------
    ds : xarray.Dataset
        One run with a head.
    scales : sequence of float > 0
    n_bins : int
        ECE bins.

    Returns
    -------
    xarray.Dataset
        Dim ``scale`` (coordinate ``temperature = 1/s``); for each outcome ``<o>_scaling``,
        ``<o>_temperature`` and ``<o>_diff`` (scaling - temperature); ``max_abs_dprob`` (max over
        samples and classes of ``|p_scaling - p_temperature|``) and ``max_abs_dlogit`` (max
        ``|(1 - s)(b_k - mean(b))|``, the shift-invariant logit difference). Attribute ``bias_spread``
        = ``max(b) - min(b)``.

    References
    ----------
    Guo et al. (2017), temperature scaling.
    """
    _run(ds, "interventions.temperature_vs_scaling")
    W, b = head64(ds, "interventions.temperature_vs_scaling")
    _check_options(n_bins, 0, 0.95)
    grid = _grid(scales, "scales", minimum=np.nextafter(0, 1))
    n_sum = _n_sums(n_bins, 0)

    def block(f: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((grid.size, 2, n_sum))
        for sl in _aligned(idx):
            z0 = f[sl].astype(np.float64) @ W.T
            w = np.ones((1, z0.shape[0]))
            for g, s in enumerate(grid):
                out[g, 0] += _weighted_sums(s * z0 + b, y[sl], w, n_bins)[0]
                out[g, 1] += _weighted_sums(s * (z0 + b), y[sl], w, n_bins)[0]
        return out

    def dprob(f: np.ndarray) -> np.ndarray:  # (..., F) -> (..., n_grid): max_k |p_scaling - p_temperature|
        z0 = f.astype(np.float64).reshape(-1, f.shape[-1]) @ W.T
        out = np.stack([np.abs(softmax_block(s * z0 + b) - softmax_block(s * (z0 + b))).max(axis=1)
                        for s in grid], axis=-1)
        return out.reshape(f.shape[:-1] + (grid.size,))

    # per-sample maxima, reduced lazily (a maximum is not a sum, so not through `_reduce`)
    features = ds["features"].chunk({"feature": -1} if is_dask(ds["features"]) else {"sample": NUMPY_BLOCK_ROWS})
    max_dp = xr.apply_ufunc(dprob, features, input_core_dims=[["feature"]], output_core_dims=[["scale"]],
                            dask="parallelized", output_dtypes=[np.float64],
                            dask_gufunc_kwargs={"output_sizes": {"scale": grid.size}}).max("sample")
    sums, max_dp = compute(_reduce_lazy(block, [raw(ds["features"]), raw(ds["label"])], (grid.size, 2, n_sum)),
                           max_dp.data)
    va, vb = _finish(np.asarray(sums)[:, 0], n_bins), _finish(np.asarray(sums)[:, 1], n_bins)
    data_vars: dict[str, Any] = {}
    for name in OUTCOMES:
        data_vars[f"{name}_scaling"] = (("scale",), va[name])
        data_vars[f"{name}_temperature"] = (("scale",), vb[name])
        data_vars[f"{name}_diff"] = (("scale",), va[name] - vb[name])
    data_vars["max_abs_dprob"] = (("scale",), np.asarray(max_dp))
    data_vars["max_abs_dlogit"] = (("scale",), np.abs(1 - grid) * float(np.abs(b - b.mean()).max()))
    attrs = {"intervention": "temperature_vs_scaling", "run_id": ds.attrs.get("run_id"), "n_bins": int(n_bins),
             "bias_spread": float(b.max() - b.min()), "bias_norm": float(np.linalg.norm(b))}
    return xr.Dataset(data_vars, coords={"scale": grid, "temperature": (("scale",), 1.0 / grid)}, attrs=attrs)


# ---------------------------------------------------------------------------------------------
# matching and the interventional share
# ---------------------------------------------------------------------------------------------
def _per_sample_values(ds: xr.Dataset, centers: np.ndarray | None,
                       toward: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-sample RMS ``(N,)`` (:func:`causalgeom.metrics.geometry.magnitude`) and, with centers, the cosine to
    the true/predicted class center ``(N,)`` (:func:`causalgeom.metrics.geometry.cosine_to_center`; NaN for a
    zero feature) and that class ``(N,)`` (the label, or the argmax of the dump's logits)."""
    lazy: list[Any] = [magnitude(ds)["rms"].data]
    if centers is not None:
        lazy.append(cosine_to_center(ds, centers=centers)[f"cos_{toward[:4]}"].data)
        lazy.append(ds["label"].data if toward == "true" else ds["logits"].argmax("class").data)
    out = [np.asarray(v) for v in compute(*lazy)]
    return (out[0], out[1], out[2].astype(np.int64)) if centers is not None else (out[0], None, None)


def _pooled_targets(treated: Sequence[xr.Dataset], what: str, toward: str, center: str | ArrayLike,
                    label: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-sample RMS and cosine values of the treated run(s), pooled (``None`` where ``what`` skips one;
    NaN cosines of zero features are left out)."""
    use_cos = what in ("cosine", "both")
    rms, cos = [], []
    for t in treated:
        _run(t, f"{label} (treated run)")
        head64(t, f"{label} (treated run)")
        r, c, _ = _per_sample_values(t, _resolve_centers(t, center) if use_cos else None, toward)
        rms.append(r)
        if use_cos:
            cos.append(c[np.isfinite(c)])
    return (np.concatenate(rms) if what != "cosine" else None), (np.concatenate(cos) if use_cos else None)


class _Matcher:
    """The matched features of a control run: quantile maps of RMS and/or cosine onto the treated values."""

    def __init__(self, control: xr.Dataset, pooled: tuple[np.ndarray | None, np.ndarray | None], what: str,
                 toward: str, center: str | ArrayLike, label: str):
        self.what, self.toward = what, toward
        _run(control, f"{label} (control run)")
        self.W, self.b = head64(control, f"{label} (control run)")
        pooled_rms, pooled_cos = pooled
        self.centers = _resolve_centers(control, center) if pooled_cos is not None else None
        self.rms, cos, self.classes = _per_sample_values(control, self.centers, toward)
        n = self.rms.shape[0]
        self.target_rms = quantile_match(self.rms, pooled_rms) if pooled_rms is not None else np.full(n, np.nan)
        if pooled_cos is not None:
            self.target_cos = quantile_match(np.nan_to_num(cos, nan=0.0), pooled_cos)
        else:
            self.target_cos, self.classes = np.full(n, np.nan), np.zeros(n, dtype=np.int64)

    @classmethod
    def build(cls, control: xr.Dataset, treated: Sequence[xr.Dataset], what: str, toward: str, center: str | ArrayLike,
              label: str) -> "_Matcher":
        what = check_choice(what, "what", MATCH_WHAT)
        toward = check_choice(toward, "toward", TOWARD)
        return cls(control, _pooled_targets(treated, what, toward, center, label), what, toward, center, label)

    def arrays(self) -> list[np.ndarray]:
        """Per-sample arrays :meth:`features` takes, aligned with the control run's samples."""
        return [self.rms, self.target_rms, self.target_cos, self.classes]

    def features(self, f: np.ndarray, rms: np.ndarray, target_rms: np.ndarray, target_cos: np.ndarray,
                 classes: np.ndarray) -> np.ndarray:
        """Matched features of one block (float64); the other arguments are the block of :meth:`arrays`."""
        if self.what in ("cosine", "both"):
            f = set_cosine(f, self.centers[classes], np.clip(target_cos, -1.0, 1.0))
        if self.what in ("magnitude", "both"):
            f = f * np.divide(target_rms, rms, out=np.ones_like(rms), where=rms > 0)[:, None]
        return f


def _runs_list(treated: Any, name: str) -> list[xr.Dataset]:
    runs = [treated] if isinstance(treated, xr.Dataset) else list(treated)
    if not runs:
        raise ConfigError(f"{name}: expected a run (xarray.Dataset) or a non-empty list of runs, got none")
    return runs


def match_features(control: xr.Dataset, treated: xr.Dataset | Sequence[xr.Dataset], what: str = "magnitude", *,
                   toward: str = "true", center: str | ArrayLike = "minimal_loss") -> xr.Dataset:
    """The control run with matched features, as a new in-memory schema-v1 run.

    See :func:`match` for the definition (several treated runs are pooled, as in :func:`match_study`). Logits are recomputed from the control head; attack
    outcomes are dropped. Materializes the features (for inspection and further analyses, e.g.
    ``cg.geometry`` on the matched run).

    Returns
    -------
    xarray.Dataset
        ``run_id`` = ``<control run_id>-matched-<what>``; attrs ``matched_to``, ``matched_what``.
    """
    from ..dump.schema import from_arrays

    runs = _runs_list(treated, "treated")
    m = _Matcher.build(control, runs, what, toward, center, "interventions.match_features")
    f = np.asarray(compute(raw(control["features"]))[0], dtype=np.float64)
    y = np.asarray(compute(raw(control["label"]))[0])
    matched = m.features(f, *m.arrays())
    W, b = require_head(control, "interventions.match_features")
    run_id = f"{control.attrs.get('run_id', 'run')}-matched-{m.what}"[:128]
    attrs = {k: v for k, v in control.attrs.items() if k not in ("schema_version", "created", "versions")}
    attrs.update(run_id=run_id, matched_to=",".join(str(t.attrs.get("run_id")) for t in runs), matched_what=m.what,
                 matched_toward=m.toward, matched_center=_center_label(center))
    return from_arrays(matched, None, y, head_weight=W.values, head_bias=b.values, attrs=attrs)


_MATCH_COLUMNS = ("control", "treated", "matched", "gap", "share")


def _share_frame(c: np.ndarray, t: np.ndarray, m: np.ndarray, ci: float) -> pd.DataFrame:
    """Rows = :data:`OUTCOMES`. ``c``, ``t``, ``m``: ``(n_rep, n_outcomes)`` with row 0 the point estimate."""
    gap = t - c
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(gap != 0, (m - c) / np.where(gap != 0, gap, 1.0), np.nan)
    cols: dict[str, np.ndarray] = {}
    for key, arr in zip(_MATCH_COLUMNS, (c, t, m, gap, share)):
        lo, hi = percentile_ci(arr[1:], ci)
        cols[key], cols[f"{key}_ci_low"], cols[f"{key}_ci_high"] = arr[0], lo, hi
    return pd.DataFrame(cols, index=pd.Index(list(OUTCOMES), name="outcome"))


def _outcome_matrix(sums: np.ndarray, n_bins: int) -> np.ndarray:
    """``(n_rep, n_outcomes)`` from summed statistics ``(n_rep, S)``."""
    vals = _finish(sums, n_bins)
    return np.stack([vals[o] for o in OUTCOMES], axis=-1)


def _run_sums(ds: xr.Dataset, W: np.ndarray, b: np.ndarray, n_bins: int, n_boot: int, seed: int,
              matcher: _Matcher | None = None) -> np.ndarray:
    """Summed statistics ``(2 if matcher else 1, 1 + n_boot, S)`` of the run (and of its matched features)."""
    n_sum = _n_sums(n_bins, 0)
    n_arms = 2 if matcher is not None else 1

    def block(f: np.ndarray, y: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        idx = rest[-1]
        out = np.zeros((n_arms, 1 + n_boot, n_sum))
        for sl, x, yy, w in _weighted_blocks(f, y, idx, seed, n_boot):
            out[0] += _weighted_sums(x @ W.T + b, yy, w, n_bins)
            if matcher is not None:
                xm = matcher.features(x, *(r[sl] for r in rest[:-1]))
                out[1] += _weighted_sums(xm @ W.T + b, yy, w, n_bins)
        return out

    arrays = [raw(ds["features"]), raw(ds["label"])] + (matcher.arrays() if matcher is not None else [])
    return _reduce(block, arrays, (n_arms, 1 + n_boot, n_sum))


def match(control: xr.Dataset, treated: xr.Dataset, what: str = "magnitude", *, toward: str = "true",
          center: str | ArrayLike = "minimal_loss", n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95,
          rng: RngLike = None) -> pd.DataFrame:
    """Give a control run the treated run's magnitude or cosine distribution; report the interventional share.

    * ``what="magnitude"``: each control feature is rescaled so that its RMS ``||h|| / sqrt(F)`` becomes
      the treated RMS at the same quantile (:func:`quantile_match`); directions are unchanged.
    * ``what="cosine"``: each control feature is rotated in the plane of ``(h, c)`` (``c`` its class
      center in the control run's own geometry) to the quantile-matched treated cosine
      (:func:`set_cosine`); norms are unchanged.
    * ``what="both"``: both (they commute: rotation keeps norms, rescaling keeps directions).

    For each outcome ``Y`` the *interventional share* is
    ``(Y_matched - Y_control) / (Y_treated - Y_control)``: the fraction of the treated-control gap
    that setting this mediator alone closes (NaN where the gap is 0).

    Parameters
    ----------
    control, treated : xarray.Dataset
        Two runs with heads (e.g. cross-entropy and label smoothing).
    what : {"magnitude", "cosine", "both"}
    toward : {"true", "predicted"}
        Whose class center defines the cosine (default the true class, as in Park et al. 2024).
    center : str or array of shape (K, F)
        Center kind (:func:`causalgeom.metrics.geometry.class_centers`), computed per run, or explicit
        centers (used for both runs).
    n_bins, n_boot, ci, rng
        As in :func:`rescale`. Control and matched outcomes share their bootstrap weights (the same
        samples); the treated run is resampled independently. The quantile map is held fixed.

    Returns
    -------
    pandas.DataFrame
        Index ``outcome`` (:data:`OUTCOMES`); columns ``control``, ``treated``, ``matched``, ``gap``
        (treated - control), ``share``, each with ``_ci_low`` / ``_ci_high``. ``df.attrs`` records
        ``what``, the run ids and the bootstrap settings.
    """
    _check_options(n_bins, n_boot, ci)
    if not isinstance(treated, xr.Dataset):
        raise SchemaError(f"treated: expected one run (xarray.Dataset), got {type(treated).__name__}; "
                          "for several runs use match_study")
    m = _Matcher.build(control, [treated], what, toward, center, "interventions.match")
    gen = check_random_state(rng)
    seed_c, seed_t = _seed(gen), _seed(gen)
    cm = _run_sums(control, m.W, m.b, n_bins, n_boot, seed_c, m)
    Wt, bt = head64(treated, "interventions.match (treated run)")
    tt = _run_sums(treated, Wt, bt, n_bins, n_boot, seed_t)
    df = _share_frame(_outcome_matrix(cm[0], n_bins), _outcome_matrix(tt[0], n_bins),
                      _outcome_matrix(cm[1], n_bins), ci)
    df.attrs.update(what=m.what, toward=m.toward, center=_center_label(center),
                    control_run=control.attrs.get("run_id"), treated_run=treated.attrs.get("run_id"),
                    n_bins=int(n_bins), n_boot=int(n_boot), ci=float(ci), bootstrap_seed=[seed_c, seed_t],
                    bootstrap="percentile, Poisson(1) weights over samples; control and matched share weights, "
                              "the quantile map is held fixed",
                    quantile_method="inverted_cdf at mid-ranks")
    return df
