"""Interventions on the representation: set the magnitude or the direction of the features, measure what follows.

Mediation estimates (``causalgeom.causal``) read the mechanism off observational variation;
this module *sets* a mediator and measures the outcome (Pearl's ``do``):

* post hoc on a dump (features + head, no model): :func:`rescale` (``h -> s h``),
  :func:`rotate` (move ``h`` toward / away from a class center by a fraction of the angle,
  keeping ``||h||``), :func:`match` (give a control run the treated run's magnitude or cosine
  distribution and report the *interventional share* of each outcome gap), their study-level
  forms :func:`rescale_study`, :func:`rotate_study`, :func:`match_study`, and
  :func:`temperature_vs_scaling`;
* inside the model: :class:`InterventionModel` (``head o T o backbone`` with ``T`` a
  :class:`Rescale` or :class:`Rotate`), so attacks run through the intervention, and
  :func:`robust_dose_response` (robust accuracy against ``s`` or ``alpha``);
* reporting: :func:`plot_dose_response`, :func:`share_vs_mediation`.

The formulas are in ``docs/methods_interventions.md``. Post hoc functions read a schema-v1 run
(in memory or dask-backed) block by block: memory is bounded by one block of features, never
``(n_grid, n_samples, n_classes)``.

References
----------
Park, Kim, Lee (2024), "Impact of Regularization on Calibration and Robustness: from the
Representation Space Perspective", arXiv:2410.03999.
Guo, Pleiss, Sun, Weinberger (2017), "On Calibration of Modern Neural Networks", ICML (ECE,
temperature scaling).
Hanley, MacGibbon (2006), "Creating non-parametric bootstrap samples using Poisson frequencies",
Comput. Methods Programs Biomed. 83(1) (Poisson bootstrap).
Shoemake (1985), "Animating rotation with quaternion curves", SIGGRAPH (slerp).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from ._blocks import NUMPY_BLOCK_ROWS, check_run, compute, is_dask, raw, require_vars, sample_reduce
from .causal import percentile_ci
from .calibration import _bin_index, _sample_stats_block, _softmax_block
from ._util.checks import check_choice
from ._util.rng import check_random_state
from .errors import ConfigError, SchemaError
from .geometry import CENTER_KINDS, class_centers, cosine_to_center, magnitude
from .geometry import _head64 as _head  # (W (K, F), b (K,)) float64, or HeadMissingError naming the analysis
from .schema import require_head

__all__ = [
    "OUTCOMES",
    "MEDIATION_OUTCOME_ALIASES",
    "MEDIATOR_KINDS",
    "rescale",
    "rotate",
    "match",
    "rescale_study",
    "rotate_study",
    "match_study",
    "temperature_vs_scaling",
    "rescale_features",
    "rotate_features",
    "set_cosine",
    "quantile_match",
    "match_features",
    "FeatureTransform",
    "Rescale",
    "Rotate",
    "InterventionModel",
    "robust_dose_response",
    "plot_dose_response",
    "share_vs_mediation",
]

#: Outcomes reported for every grid point (each with ``_ci_low`` / ``_ci_high``).
OUTCOMES = ("accuracy", "ece", "signed_ece", "nll", "brier", "mean_confidence")
#: Where mediation outcome names differ from ours: mediation outcome -> intervention outcome.
MEDIATION_OUTCOME_ALIASES = {"overconfidence": "signed_ece", "correct": "accuracy", "confidence": "mean_confidence"}
#: Mediator columns of the analysis table (``causalgeom.table``) -> the intervention that sets them.
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
def _grid(values: Any, name: str, *, minimum: float | None = None, maximum: float | None = None) -> np.ndarray:
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


_choice = check_choice
_generator = check_random_state


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


def _n_sums(n_bins: int, n_extra: int) -> int:
    return 5 + n_bins + n_extra


def _weighted_sums(logits: np.ndarray, labels: np.ndarray, w: np.ndarray, n_bins: int,
                   extra: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Weighted sufficient statistics of one block, shape ``(n_rep, 5 + n_bins + len(extra))``.

    Columns: total weight, correct, confidence, NLL, Brier (per-sample values from
    :mod:`causalgeom.calibration`), then per equal-width confidence bin the sum of
    ``conf - correct``, then the extra per-sample values.
    """
    conf, _, correct, nll, brier = _sample_stats_block(logits, labels)
    correct = correct.astype(np.float64)
    n = conf.shape[0]
    cols = np.zeros((n, _n_sums(n_bins, len(extra))))
    cols[:, 0] = 1.0
    cols[:, 1], cols[:, 2], cols[:, 3], cols[:, 4] = correct, conf, nll, brier
    cols[np.arange(n), 5 + _bin_index(conf, n_bins)] = conf - correct
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
    lazy for dask-backed arrays (:func:`causalgeom._blocks.sample_reduce`)."""
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
def rescale_features(features: Any, scale: float | np.ndarray) -> np.ndarray:
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


def _check_centers(centers: Any, n_classes: int, n_features: int, name: str = "centers") -> np.ndarray:
    if isinstance(centers, xr.DataArray):
        if set(centers.dims) != {"class", "feature"}:
            raise ConfigError(f"{name}: expected a DataArray with dims ('class', 'feature'), got {centers.dims}")
        centers = centers.transpose("class", "feature").values
    if isinstance(centers, torch.Tensor):
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


def rotate_features(features: Any, centers: Any, classes: Any, alpha: float) -> np.ndarray:
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


def set_cosine(features: Any, targets: Any, cosine: Any) -> np.ndarray:
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


def quantile_match(values: Any, target: Any) -> np.ndarray:
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


def _target_rms_values(target_rms: Any) -> np.ndarray:
    if isinstance(target_rms, xr.Dataset):
        return np.array([_run_rms(_run(target_rms, "target_rms"))])
    return _grid(target_rms, "target_rms", minimum=0.0)


def rescale(ds: xr.Dataset, scales: Any = None, *, target_rms: Any = None, per_sample: bool = False,
            n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: Any = None) -> xr.Dataset:
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
    W, b = _head(ds, "interventions.rescale")
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
    seed = _seed(_generator(rng))
    n_sum = _n_sums(n_bins, 1)

    def block(f: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((grid.size, 1 + n_boot, n_sum))
        for sl in _aligned(idx):
            x = f[sl].astype(np.float64)
            w = _poisson_weights(seed, n_boot, int(idx[sl][0]), int(idx[sl][-1]) + 1)
            z0 = x @ W.T
            ms = np.einsum("ij,ij->i", x, x) / n_features
            rms = np.sqrt(ms)
            for g, s in enumerate(grid):
                if mode == "per_sample":
                    factor = np.divide(targets[g], rms, out=np.ones_like(rms), where=rms > 0)
                    out[g] += _weighted_sums(factor[:, None] * z0 + b, y[sl], w, n_bins, [factor**2 * ms])
                else:
                    out[g] += _weighted_sums(s * z0 + b, y[sl], w, n_bins, [s * s * ms])
        return out

    sums = _reduce(block, [raw(ds["features"]), raw(ds["label"])], (grid.size, 1 + n_boot, n_sum))
    vals = {k: v.T for k, v in _finish(sums, n_bins, ["feature_ms"]).items()}  # (n_rep, n_grid)
    attrs = _base_attrs(ds, "rescale", n_bins, n_boot, ci, seed)
    attrs["mode"] = mode
    if run_rms is not None:
        attrs["run_rms"] = run_rms
    return _grid_dataset(vals, "scale", grid, ci, attrs, ["feature_ms"], extra_coords)


def _resolve_centers(ds: xr.Dataset, center: Any) -> np.ndarray:
    """``(K, F)`` float64 centers: a kind for ``cg.geometry.class_centers`` or an explicit array."""
    K, F = ds.sizes["class"], ds.sizes["feature"]
    if isinstance(center, str):
        _choice(center, "center", CENTER_KINDS)
        return _check_centers(class_centers(ds, kind=center), K, F, name=f"class_centers(kind={center!r})")
    return _check_centers(center, K, F, name="center")


def _center_label(center: Any) -> str:
    return center if isinstance(center, str) else "given"


def rotate(ds: xr.Dataset, alphas: Any, *, toward: str = "predicted", center: Any = "minimal_loss",
           n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: Any = None) -> xr.Dataset:
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
        A ``kind`` of :func:`causalgeom.geometry.class_centers` (``"minimal_loss"``, ``"mean"``,
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
    W, b = _head(ds, "interventions.rotate")
    _check_options(n_bins, n_boot, ci)
    toward = _choice(toward, "toward", TOWARD)
    grid = _grid(alphas, "alphas", maximum=1.0)
    centers = _resolve_centers(ds, center)
    n_features = ds.sizes["feature"]
    seed = _seed(_generator(rng))
    n_sum = _n_sums(n_bins, 2)

    def block(f: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((grid.size, 1 + n_boot, n_sum))
        for sl in _aligned(idx):
            x, yy = f[sl].astype(np.float64), y[sl]
            w = _poisson_weights(seed, n_boot, int(idx[sl][0]), int(idx[sl][-1]) + 1)
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
        return out

    sums = _reduce(block, [raw(ds["features"]), raw(ds["label"])], (grid.size, 1 + n_boot, n_sum))
    extra = ["feature_ms", "cos_to_center"]
    vals = {k: v.T for k, v in _finish(sums, n_bins, extra).items()}
    attrs = _base_attrs(ds, "rotate", n_bins, n_boot, ci, seed)
    attrs.update(toward=toward, center=_center_label(center))
    return _grid_dataset(vals, "alpha", grid, ci, attrs, extra)


def temperature_vs_scaling(ds: xr.Dataset, scales: Any, *, n_bins: int = 15) -> xr.Dataset:
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
    W, b = _head(ds, "interventions.temperature_vs_scaling")
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
        out = np.stack([np.abs(_softmax_block(s * z0 + b) - _softmax_block(s * (z0 + b))).max(axis=1)
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
    """Per-sample RMS ``(N,)`` (:func:`causalgeom.geometry.magnitude`) and, with centers, the cosine to
    the true/predicted class center ``(N,)`` (:func:`causalgeom.geometry.cosine_to_center`; NaN for a
    zero feature) and that class ``(N,)`` (the label, or the argmax of the dump's logits)."""
    lazy: list[Any] = [magnitude(ds)["rms"].data]
    if centers is not None:
        lazy.append(cosine_to_center(ds, centers=centers)[f"cos_{toward[:4]}"].data)
        lazy.append(ds["label"].data if toward == "true" else ds["logits"].argmax("class").data)
    out = [np.asarray(v) for v in compute(*lazy)]
    return (out[0], out[1], out[2].astype(np.int64)) if centers is not None else (out[0], None, None)


def _pooled_targets(treated: Sequence[xr.Dataset], what: str, toward: str, center: Any,
                    label: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-sample RMS and cosine values of the treated run(s), pooled (``None`` where ``what`` skips one;
    NaN cosines of zero features are left out)."""
    use_cos = what in ("cosine", "both")
    rms, cos = [], []
    for t in treated:
        _run(t, f"{label} (treated run)")
        _head(t, f"{label} (treated run)")
        r, c, _ = _per_sample_values(t, _resolve_centers(t, center) if use_cos else None, toward)
        rms.append(r)
        if use_cos:
            cos.append(c[np.isfinite(c)])
    return (np.concatenate(rms) if what != "cosine" else None), (np.concatenate(cos) if use_cos else None)


class _Matcher:
    """The matched features of a control run: quantile maps of RMS and/or cosine onto the treated values."""

    def __init__(self, control: xr.Dataset, pooled: tuple[np.ndarray | None, np.ndarray | None], what: str,
                 toward: str, center: Any, label: str):
        self.what, self.toward = what, toward
        _run(control, f"{label} (control run)")
        self.W, self.b = _head(control, f"{label} (control run)")
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
    def build(cls, control: xr.Dataset, treated: Sequence[xr.Dataset], what: str, toward: str, center: Any,
              label: str) -> "_Matcher":
        what = _choice(what, "what", MATCH_WHAT)
        toward = _choice(toward, "toward", TOWARD)
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
                   toward: str = "true", center: Any = "minimal_loss") -> xr.Dataset:
    """The control run with matched features, as a new in-memory schema-v1 run.

    See :func:`match` for the definition (several treated runs are pooled, as in :func:`match_study`). Logits are recomputed from the control head; attack
    outcomes are dropped. Materializes the features (for inspection and further analyses, e.g.
    ``cg.geometry`` on the matched run).

    Returns
    -------
    xarray.Dataset
        ``run_id`` = ``<control run_id>-matched-<what>``; attrs ``matched_to``, ``matched_what``.
    """
    from .schema import from_arrays

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
        for sl in _aligned(idx):
            x, yy = f[sl].astype(np.float64), y[sl]
            w = _poisson_weights(seed, n_boot, int(idx[sl][0]), int(idx[sl][-1]) + 1)
            out[0] += _weighted_sums(x @ W.T + b, yy, w, n_bins)
            if matcher is not None:
                xm = matcher.features(x, *(r[sl] for r in rest[:-1]))
                out[1] += _weighted_sums(xm @ W.T + b, yy, w, n_bins)
        return out

    arrays = [raw(ds["features"]), raw(ds["label"])] + (matcher.arrays() if matcher is not None else [])
    return _reduce(block, arrays, (n_arms, 1 + n_boot, n_sum))


def match(control: xr.Dataset, treated: xr.Dataset, what: str = "magnitude", *, toward: str = "true",
          center: Any = "minimal_loss", n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95,
          rng: Any = None) -> pd.DataFrame:
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
        Center kind (:func:`causalgeom.geometry.class_centers`), computed per run, or explicit
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
    gen = _generator(rng)
    seed_c, seed_t = _seed(gen), _seed(gen)
    cm = _run_sums(control, m.W, m.b, n_bins, n_boot, seed_c, m)
    Wt, bt = _head(treated, "interventions.match (treated run)")
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


# ---------------------------------------------------------------------------------------------
# study level: runs as the resampling unit
# ---------------------------------------------------------------------------------------------
def _as_study(study: Any):
    from .study import Study, open_study

    if isinstance(study, Study):
        return study
    if isinstance(study, (str, os.PathLike)):
        return open_study(study)
    raise ConfigError(f"study: expected a causalgeom.Study or a study folder path, got {type(study).__name__}")


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _study_groups(study: Any, runs: Sequence[str] | None, by: str | Sequence[str]) -> tuple[Any, list[str], list[str]]:
    study = _as_study(study)
    table = study.runs
    if table.empty:
        raise ConfigError(f"study {study.path} has no complete runs")
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise ConfigError(f"by: unknown run-table columns {missing}; available: {sorted(map(str, table.columns))}")
    if runs is not None:
        unknown = [r for r in runs if r not in set(table["run_id"])]
        if unknown:
            raise ConfigError(f"runs: unknown run ids {unknown}; study runs: {table['run_id'].tolist()}")
        table = table.set_index("run_id").loc[list(runs)].reset_index()
    labels = ["/".join(_fmt(row[c]) for c in by if not _missing(row[c])) or "nan" for _, row in table.iterrows()]
    return study, table["run_id"].tolist(), labels


def _cluster_bootstrap(per_run: xr.Dataset, groups: Sequence[str], dim: str, n_boot: int, ci: float,
                       gen: np.random.Generator) -> xr.Dataset:
    """Mean over runs per group with a percentile bootstrap that resamples runs within each group."""
    names = list(dict.fromkeys(groups))
    groups_arr = np.asarray(groups, dtype=object)
    data_vars: dict[str, Any] = {}
    for var in [v for v in per_run.data_vars if dim in per_run[v].dims]:
        arr = np.asarray(per_run[var].transpose("run", dim).values, dtype=np.float64)
        mean = np.full((len(names), arr.shape[1]), np.nan)
        lo, hi = mean.copy(), mean.copy()
        for i, g in enumerate(names):
            rows = arr[groups_arr == g]
            mean[i] = rows.mean(axis=0)
            if rows.shape[0] >= 2 and n_boot > 0:
                idx = gen.integers(0, rows.shape[0], size=(n_boot, rows.shape[0]))
                lo[i], hi[i] = percentile_ci(rows[idx].mean(axis=1), ci)
        data_vars[var] = (("group", dim), mean)
        if var in OUTCOMES:
            data_vars[f"{var}_ci_low"] = (("group", dim), lo)
            data_vars[f"{var}_ci_high"] = (("group", dim), hi)
        data_vars[f"{var}_per_run"] = (("run", dim), arr)
    counts = [int(np.sum(groups_arr == g)) for g in names]
    return xr.Dataset(data_vars, coords={"group": names, dim: per_run[dim].values, "run": per_run["run"].values,
                                         "run_group": ("run", list(groups)), "n_runs": ("group", counts)})


def _study_grid(fn: Callable[..., xr.Dataset], dim: str, study: Any, runs: Sequence[str] | None,
                by: str | Sequence[str], n_boot: int, ci: float, rng: Any, kwargs: dict[str, Any]) -> xr.Dataset:
    _check_options(kwargs.get("n_bins", 15), n_boot, ci)
    study, run_ids, groups = _study_groups(study, runs, by)
    per_run = []
    for rid in run_ids:
        res = fn(study[rid], n_boot=0, **kwargs)
        res = res[[v for v in res.data_vars if not v.endswith(("_ci_low", "_ci_high"))]]
        if "target_rms" in res.coords:  # the factor differs per run: align runs on the target instead
            res = res.assign(scale_factor=res["scale"]).swap_dims(scale="target_rms").drop_vars("scale")
        per_run.append(res)
    if "target_rms" in per_run[0].dims:
        dim = "target_rms"
    stacked = xr.concat(per_run, dim=pd.Index(run_ids, name="run"), coords="minimal", compat="override",
                        join="exact", combine_attrs="drop")
    seed = _seed(_generator(rng))
    out = _cluster_bootstrap(stacked, groups, dim, n_boot, ci, np.random.default_rng(seed))
    out.attrs.update(intervention=per_run[0].attrs["intervention"], study=str(study.path),
                     by=[by] if isinstance(by, str) else list(by), n_boot=int(n_boot), ci=float(ci),
                     bootstrap="percentile over runs within each group (runs are the resampling unit)",
                     bootstrap_seed=seed, n_bins=int(kwargs.get("n_bins", 15)))
    for key in ("toward", "center", "mode"):
        if key in per_run[0].attrs:
            out.attrs[key] = per_run[0].attrs[key]
    return out


def rescale_study(study: Any, scales: Any = None, *, target_rms: Any = None, per_sample: bool = False,
                  runs: Sequence[str] | None = None, by: str | Sequence[str] = ("regularizer", "strength"),
                  n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: Any = None) -> xr.Dataset:
    """:func:`rescale` on every run of a study, aggregated per group of runs with runs as the resampling unit.

    Parameters
    ----------
    study : causalgeom.Study or path
    scales, target_rms, per_sample, n_bins
        As in :func:`rescale` (``target_rms`` may also name a group, e.g. ``"label_smoothing/0.1"``:
        the pooled RMS of that group's runs).
    runs : sequence of str, optional
        Run ids (default: all complete runs).
    by : str or sequence of str
        Run-table columns whose values define the groups (labels joined by ``/``).
    n_boot, ci, rng
        Cluster bootstrap: runs are resampled with replacement within each group (groups of one
        run get NaN intervals).

    Returns
    -------
    xarray.Dataset
        Dims ``(group, scale)``: each outcome (mean over the group's runs) with ``_ci_low`` /
        ``_ci_high``; ``<outcome>_per_run`` (run, scale); coordinates ``run_group`` and ``n_runs``.
        With ``target_rms`` the grid dim is ``target_rms`` (each run's factor differs) and
        ``scale_factor`` holds the factors.
    """
    if isinstance(target_rms, str):
        st, run_ids, groups = _study_groups(study, None, by)
        chosen = [r for r, g in zip(run_ids, groups) if g == target_rms]
        if not chosen:
            raise ConfigError(f"target_rms: no runs in group {target_rms!r}; groups: {sorted(set(groups))}")
        mss = [(_run_rms(ds) ** 2, ds.sizes["sample"]) for ds in (st[r] for r in chosen)]
        target_rms = math.sqrt(sum(m * n for m, n in mss) / sum(n for _, n in mss))
        study = st
    return _study_grid(rescale, "scale", study, runs, by, n_boot, ci, rng,
                       dict(scales=scales, target_rms=target_rms, per_sample=per_sample, n_bins=n_bins))


def rotate_study(study: Any, alphas: Any, *, toward: str = "predicted", center: Any = "minimal_loss",
                 runs: Sequence[str] | None = None, by: str | Sequence[str] = ("regularizer", "strength"),
                 n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: Any = None) -> xr.Dataset:
    """:func:`rotate` on every run of a study (centers per run), aggregated as in :func:`rescale_study`.

    Returns
    -------
    xarray.Dataset
        Dims ``(group, alpha)``; see :func:`rescale_study`.
    """
    return _study_grid(rotate, "alpha", study, runs, by, n_boot, ci, rng,
                       dict(alphas=alphas, toward=toward, center=center, n_bins=n_bins))


def match_study(study: Any, control: str = "ce", treated: str = "label_smoothing", what: str = "magnitude", *,
                by: str | Sequence[str] = "regularizer", toward: str = "true", center: Any = "minimal_loss",
                n_bins: int = 15, n_boot: int = 1000, ci: float = 0.95, rng: Any = None) -> pd.DataFrame:
    """:func:`match` at the study level: every control run is matched to the pooled treated runs.

    The target distribution pools the per-sample values of all runs in the treated group. Outcomes
    are averaged over runs (control and matched over control runs, treated over treated runs) and
    the share is ``(mean matched - mean control) / (mean treated - mean control)``. Intervals: cluster
    bootstrap resampling control runs (with their matched counterparts) and treated runs
    independently, percentile (NaN when a group has fewer than 2 runs).

    Parameters
    ----------
    study : causalgeom.Study or path
    control, treated : str
        Group labels (values of ``by``), e.g. ``"ce"`` and ``"label_smoothing"``.
    what, toward, center, n_bins
        As in :func:`match`.
    by : str or sequence of str
        Run-table columns defining the groups.
    n_boot, ci, rng
        Cluster bootstrap settings.

    Returns
    -------
    pandas.DataFrame
        As :func:`match`, plus ``df.attrs["per_run"]`` (a DataFrame of per-run outcomes).
    """
    _check_options(n_bins, n_boot, ci)
    st, run_ids, groups = _study_groups(study, None, by)
    c_ids = [r for r, g in zip(run_ids, groups) if g == control]
    t_ids = [r for r, g in zip(run_ids, groups) if g == treated]
    for name, value, ids in (("control", control, c_ids), ("treated", treated, t_ids)):
        if not ids:
            raise ConfigError(f"{name}: no runs in group {value!r} (by={by!r}); groups: {sorted(set(groups))}")
    what = _choice(what, "what", MATCH_WHAT)
    toward = _choice(toward, "toward", TOWARD)
    label = "interventions.match_study"
    t_runs = [st[r] for r in t_ids]
    pooled = _pooled_targets(t_runs, what, toward, center, label)
    rows = []
    c_out, m_out, t_out = [], [], []
    for rid in c_ids:
        m = _Matcher(st[rid], pooled, what, toward, center, label)
        sums = _run_sums(st[rid], m.W, m.b, n_bins, 0, 0, m)
        c_out.append(_outcome_matrix(sums[0], n_bins)[0])
        m_out.append(_outcome_matrix(sums[1], n_bins)[0])
        rows += [{"run_id": rid, "arm": "control", **dict(zip(OUTCOMES, c_out[-1]))},
                 {"run_id": rid, "arm": "matched", **dict(zip(OUTCOMES, m_out[-1]))}]
    for rid, ds in zip(t_ids, t_runs):
        W, b = _head(ds, f"{label} (treated run)")
        t_out.append(_outcome_matrix(_run_sums(ds, W, b, n_bins, 0, 0)[0], n_bins)[0])
        rows.append({"run_id": rid, "arm": "treated", **dict(zip(OUTCOMES, t_out[-1]))})
    C, M, T = (np.asarray(x) for x in (c_out, m_out, t_out))
    gen = _generator(rng)
    seed = _seed(gen)
    boot = np.random.default_rng(seed)
    reps_c, reps_m, reps_t = [C.mean(0)], [M.mean(0)], [T.mean(0)]
    if n_boot > 0 and len(c_ids) >= 2 and len(t_ids) >= 2:
        ic = boot.integers(0, len(c_ids), size=(n_boot, len(c_ids)))
        it = boot.integers(0, len(t_ids), size=(n_boot, len(t_ids)))
        reps_c += list(C[ic].mean(1))
        reps_m += list(M[ic].mean(1))
        reps_t += list(T[it].mean(1))
    df = _share_frame(np.asarray(reps_c), np.asarray(reps_t), np.asarray(reps_m), ci)
    df.attrs.update(what=what, toward=toward, center=_center_label(center), control=control, treated=treated,
                    control_runs=c_ids, treated_runs=t_ids, n_bins=int(n_bins), n_boot=int(n_boot), ci=float(ci),
                    bootstrap="percentile over runs (cluster bootstrap; control and treated runs resampled "
                              "independently)", bootstrap_seed=seed, per_run=pd.DataFrame(rows))
    return df


# ---------------------------------------------------------------------------------------------
# inside the model
# ---------------------------------------------------------------------------------------------
class FeatureTransform(nn.Module):
    """An intervention ``T`` on the head's input: ``forward(h, *, head, labels) -> h'`` (differentiable in ``h``).

    ``head`` is the final :class:`torch.nn.Linear` (for transforms that need the prediction) and
    ``labels`` the true classes of the batch (a 0-d tensor: one class for every row), or ``None``
    if none were set (:meth:`InterventionModel.set_labels`).
    """

    #: Name of the grid dimension this transform's parameter spans (``"scale"``, ``"alpha"``).
    grid_dim = "transform"

    @property
    def needs_labels(self) -> bool:
        """True if the transform uses the true labels."""
        return False

    @property
    def grid_value(self) -> float:
        """The transform's parameter (its coordinate on the grid dimension)."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, *, head: nn.Linear, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class Rescale(FeatureTransform):
    """``h -> s h`` (see :func:`rescale_features`); ``s = 1`` returns ``h`` itself.

    Parameters
    ----------
    scale : float >= 0
    """

    grid_dim = "scale"

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(_grid(scale, "scale", minimum=0.0)[0])

    @property
    def grid_value(self) -> float:
        return self.scale

    def forward(self, h: torch.Tensor, *, head: nn.Linear, labels: torch.Tensor | None = None) -> torch.Tensor:
        return h if self.scale == 1.0 else h * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Row norms with a finite (zero) gradient at 0."""
    sq = (x * x).sum(dim=1)
    return torch.sqrt(torch.clamp(sq, min=torch.finfo(x.dtype).tiny)) * (sq > 0)


class Rotate(FeatureTransform):
    """Move ``h`` toward its class center by a fraction ``alpha`` of the angle, keeping ``||h||``.

    The map of :func:`rotate_features`, in torch and differentiable in ``h``: the center is chosen
    per sample (a piecewise-constant choice) and the rotation is smooth, so gradient attacks run
    through it. ``alpha = 0`` returns ``h`` itself.

    Parameters
    ----------
    alpha : float <= 1
    centers : tensor, array or DataArray, shape (K, F)
        Class centers, e.g. ``cg.geometry.class_centers(ds)`` (kept as a float32 buffer, so it moves
        with ``.to(device)``).
    toward : {"predicted", "true"}
        ``"predicted"``: the class the head predicts from the unmodified ``h`` (no labels needed).
        ``"true"``: the true class, set through :meth:`InterventionModel.set_labels` (an oracle).
    """

    grid_dim = "alpha"

    def __init__(self, alpha: float, centers: Any, toward: str = "predicted"):
        super().__init__()
        self.alpha = float(_grid(alpha, "alpha", maximum=1.0)[0])
        self.toward = _choice(toward, "toward", TOWARD)
        shape = tuple(np.shape(centers))
        if len(shape) != 2:
            raise ConfigError(f"centers: expected shape (n_classes, n_features), got {shape}")
        c = _check_centers(centers, *shape)
        self.register_buffer("centers", torch.as_tensor(c, dtype=torch.float32))

    @property
    def needs_labels(self) -> bool:
        return self.toward == "true"

    @property
    def grid_value(self) -> float:
        return self.alpha

    def _classes(self, h: torch.Tensor, head: nn.Linear, labels: torch.Tensor | None) -> torch.Tensor:
        if self.toward == "predicted":
            with torch.no_grad():  # not through `head(...)`: that would re-enter the hook
                return nn.functional.linear(h, head.weight, head.bias).argmax(dim=1)
        if labels is None:
            raise ConfigError("Rotate(toward='true') needs the true labels: call InterventionModel.set_labels(y) "
                              "(a tensor of the batch's labels, or one class for all rows) before the forward")
        labels = labels.to(h.device)
        if labels.ndim == 0:
            return labels.expand(h.shape[0])
        if labels.shape[0] != h.shape[0]:
            raise ConfigError(f"Rotate(toward='true'): labels were set for {labels.shape[0]} samples but the "
                              f"batch has {h.shape[0]}; set each batch's labels (or one class for all rows)")
        return labels

    def forward(self, h: torch.Tensor, *, head: nn.Linear, labels: torch.Tensor | None = None) -> torch.Tensor:
        if h.ndim != 2 or h.shape[1] != self.centers.shape[1]:
            raise ConfigError(f"Rotate: expected head input of shape (n, {self.centers.shape[1]}), "
                              f"got {tuple(h.shape)}")
        if self.alpha == 0.0:
            return h
        c = self.centers.to(h.dtype)[self._classes(h, head, labels)]
        norm = _safe_norm(h)
        u = h / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]
        v = c / c.norm(dim=1, keepdim=True)
        cos = (u * v).sum(dim=1)
        w = u - cos[:, None] * v
        sin = _safe_norm(w)
        bad = sin < _ORTHO_EPS
        w = w / torch.where(bad, torch.ones_like(sin), sin)[:, None]
        if bool(bad.any()):
            fallback = torch.as_tensor(_orthonormal_fallback(v[bad].detach().cpu().double().numpy()),
                                       dtype=h.dtype, device=h.device)
            w = torch.where(bad[:, None], torch.zeros_like(w), w).index_put((bad.nonzero()[:, 0],), fallback)
        phi = torch.clamp((1.0 - self.alpha) * torch.atan2(sin, cos), 0.0, math.pi)
        return norm[:, None] * (torch.cos(phi)[:, None] * v + torch.sin(phi)[:, None] * w)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, toward={self.toward!r}, centers={tuple(self.centers.shape)}"


class InterventionModel(nn.Module):
    """``head o T o backbone``: the model with the intervention ``T`` applied to the head's input.

    A forward pre-hook on the head is registered for the duration of each forward call only, so
    the wrapped model is untouched outside it and any architecture whose head is an ``nn.Linear``
    works. Differentiable end to end: attacks run through ``T``.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier ending in a linear head (pixel-space input).
    transform : FeatureTransform
        :class:`Rescale` or :class:`Rotate`.
    head_name : str, optional
        Qualified name of the head (default: found by :func:`causalgeom.extract.find_head`).

    Notes
    -----
    True-class rotation needs the labels of the rows it sees. Attacks call the model on
    sub-batches (restarts, samples already broken, samples misclassified clean are skipped), so a
    per-row label tensor cannot follow them. :meth:`set_labels` therefore also takes a single class,
    used for every row: attack the samples of one class at a time (what
    :func:`robust_dose_response` does). A per-row tensor works for plain forwards.
    """

    def __init__(self, model: nn.Module, transform: FeatureTransform, head_name: str | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(transform, FeatureTransform):
            raise ConfigError("transform: expected a causalgeom.interventions.FeatureTransform (Rescale, Rotate), "
                              f"got {type(transform).__name__}")
        from .extract import find_head

        name, _ = find_head(model, head_name)
        self.model = model
        self.transform = transform
        self.head_name = name
        self._labels: torch.Tensor | None = None

    @property
    def head(self) -> nn.Linear:
        """The wrapped model's final linear layer."""
        return self.model.get_submodule(self.head_name)

    def set_labels(self, labels: int | torch.Tensor | None) -> None:
        """True labels for ``Rotate(toward="true")``: a tensor ``(n,)`` matching the next batches, one class
        (int or 0-d tensor) for every row, or ``None`` to clear them."""
        if labels is None:
            self._labels = None
            return
        t = torch.as_tensor(labels)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim > 1:
            raise ConfigError(f"labels: expected an int class or a 1-d integer tensor, got dtype {t.dtype} "
                              f"shape {tuple(t.shape)}")
        self._labels = t.long()

    @contextlib.contextmanager
    def labels(self, labels: int | torch.Tensor) -> Iterator["InterventionModel"]:
        """Context manager: :meth:`set_labels` inside, cleared on exit."""
        self.set_labels(labels)
        try:
            yield self
        finally:
            self._labels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (self.transform(args[0], head=module, labels=self._labels), *args[1:])

        handle = self.head.register_forward_pre_hook(pre_hook)
        try:
            return self.model(x)
        finally:
            handle.remove()


def _grid_of(transforms: Sequence[FeatureTransform]) -> tuple[str, np.ndarray]:
    if isinstance(transforms, FeatureTransform) or not transforms:
        raise ConfigError("transforms: expected a non-empty sequence of FeatureTransform objects "
                          f"(e.g. [Rescale(s) for s in scales]), got {transforms!r}")
    for t in transforms:
        if not isinstance(t, FeatureTransform):
            raise ConfigError(f"transforms: expected FeatureTransform objects (Rescale, Rotate), got {type(t).__name__}")
    dims = {t.grid_dim for t in transforms}
    if len(dims) == 1 and "transform" not in dims:
        values = np.asarray([t.grid_value for t in transforms], dtype=np.float64)
        if np.unique(values).size == values.size:
            return dims.pop(), values
    return "transform", np.asarray([repr(t) for t in transforms], dtype=object)


def robust_dose_response(model: nn.Module, x: torch.Tensor, y: torch.Tensor, transforms: Sequence[FeatureTransform],
                         attacks: Any, eps: Sequence[float], *, head_name: str | None = None,
                         batch_size: int | None = 256, n_boot: int = 1000, ci: float = 0.95, rng: Any = None,
                         generator: torch.Generator | None = None) -> xr.Dataset:
    """Robust accuracy of ``head o T o backbone`` for each transform ``T``, attack and ``eps``.

    Runs :func:`causalgeom.attacks.sweep` on :class:`InterventionModel` ``(model, T)``. For a
    transform that needs labels (``Rotate(toward="true")``) the samples are attacked one class at a
    time with that class set as the label of every row (see :class:`InterventionModel`).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier, pixel-space input; evaluated in eval mode.
    x : tensor, shape (N, C, H, W)
        Inputs in [0, 1], on the model's device.
    y : tensor of int, shape (N,)
    transforms : sequence of FeatureTransform
        The grid, e.g. ``[Rescale(s) for s in scales]`` or ``[Rotate(a, C) for a in alphas]``.
    attacks : attack or sequence of attacks
        ``cg.attacks.PGD(...)`` etc. (anything :func:`causalgeom.attacks.sweep` accepts).
    eps : sequence of float
        Attack budgets.
    head_name : str, optional
        The head (default: :func:`causalgeom.extract.find_head`).
    batch_size : int, optional
        Passed to ``sweep``.
    n_boot, ci, rng
        Percentile bootstrap over samples (Poisson(1) weights, the same for every grid point).
    generator : torch.Generator, optional
        Source of the attacks' randomness (default: ``sweep``'s, a generator seeded with 0).

    Returns
    -------
    xarray.Dataset
        ``robust_accuracy`` (grid, attack, eps) with ``_ci_low`` / ``_ci_high``; ``clean_accuracy``
        (grid) with intervals; ``adv_correct`` (grid, attack, eps, sample). The grid dim is
        ``scale`` (all :class:`Rescale`), ``alpha`` (all :class:`Rotate`) or ``transform``.
    """
    from . import attacks as cg_attacks

    dim, coord = _grid_of(transforms)
    _check_options(1, n_boot, ci)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError(f"x, y: expected torch tensors, got {type(x).__name__}, {type(y).__name__}")
    y = y.long()
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(f"x, y: expected the same non-zero number of samples, got {x.shape[0]} and {y.shape[0]}")
    n = x.shape[0]
    adv, clean = [], []
    names: list[str] = []
    eps_grid: np.ndarray | None = None
    for t in transforms:
        wrapped = InterventionModel(model, t, head_name)
        groups = ([(None, torch.arange(n, device=y.device))] if not t.needs_labels else
                  [(int(k), (y == k).nonzero()[:, 0]) for k in torch.unique(y).tolist()])
        a_t = None
        c_t = np.zeros(n, dtype=bool)
        for k, rows in groups:
            xb, yb = x[rows], y[rows]
            with wrapped.labels(k) if k is not None else contextlib.nullcontext():
                out = cg_attacks.sweep(wrapped, xb, yb, attacks, eps, generator=generator, batch_size=batch_size)
                with torch.no_grad():
                    pred = torch.cat([wrapped(xb[i:i + (batch_size or n)]).argmax(dim=1)
                                      for i in range(0, xb.shape[0], batch_size or n)])
            if a_t is None:
                a_t = np.zeros(out["adv_correct"].shape[:2] + (n,), dtype=bool)
                names, eps_grid = [str(s) for s in out["attack"]], np.asarray(out["eps"], dtype=np.float64)
            rows_np = rows.cpu().numpy()
            a_t[..., rows_np] = out["adv_correct"]
            c_t[rows_np] = (pred == yb.to(pred.device)).cpu().numpy()
        adv.append(a_t)
        clean.append(c_t)
    adv_arr = np.stack(adv)  # (G, A, E, N)
    clean_arr = np.stack(clean).astype(np.float64)  # (G, N)
    seed = _seed(_generator(rng))
    w = _poisson_weights(seed, n_boot, 0, n)  # (R, N)
    wsum = w.sum(axis=1)
    rob = np.einsum("rn,gaen->rgae", w, adv_arr.astype(np.float64)) / wsum[:, None, None, None]
    cl = (w @ clean_arr.T) / wsum[:, None]
    rlo, rhi = percentile_ci(rob[1:], ci)
    clo, chi = percentile_ci(cl[1:], ci)
    grid_dims = (dim, "attack", "eps")
    return xr.Dataset(
        {"robust_accuracy": (grid_dims, rob[0]), "robust_accuracy_ci_low": (grid_dims, rlo),
         "robust_accuracy_ci_high": (grid_dims, rhi),
         "clean_accuracy": ((dim,), cl[0]), "clean_accuracy_ci_low": ((dim,), clo),
         "clean_accuracy_ci_high": ((dim,), chi),
         "adv_correct": ((dim, "attack", "eps", "sample"), adv_arr)},
        coords={dim: coord, "attack": np.asarray(names, dtype=object), "eps": eps_grid},
        attrs={"intervention": "robust_dose_response", "n_samples": int(n), "n_boot": int(n_boot), "ci": float(ci),
               "bootstrap": "percentile, Poisson(1) resampling weights over samples", "bootstrap_seed": seed,
               "transforms": [repr(t) for t in transforms]})


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
_GRID_DIMS = ("scale", "alpha", "target_rms", "transform")
_IDENTITY = {"scale": 1.0, "alpha": 0.0}


def plot_dose_response(result: xr.Dataset, outcomes: Sequence[str] | str | None = None, *, ax: Any = None) -> Any:
    """Dose-response plot: each outcome against ``s`` or ``alpha``, with its interval band.

    Extra dimensions (``group`` of a study result, ``attack`` x ``eps`` of
    :func:`robust_dose_response`) become separate lines. A dashed vertical line marks the identity
    (``s = 1`` / ``alpha = 0``). Uses matplotlib's object-oriented API (Agg canvas, no display).

    Parameters
    ----------
    result : xarray.Dataset
        Output of :func:`rescale`, :func:`rotate`, their study forms, or :func:`robust_dose_response`.
    outcomes : str or sequence of str, optional
        Variables to plot (default: :data:`OUTCOMES` present in ``result``, else
        ``robust_accuracy``).
    ax : matplotlib Axes or sequence of Axes, optional
        One per outcome (default: a new figure with one panel per outcome).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(result, xr.Dataset):
        raise ConfigError(f"result: expected an xarray.Dataset from rescale/rotate/robust_dose_response, "
                          f"got {type(result).__name__}")
    dims = [d for d in _GRID_DIMS if d in result.dims]
    if not dims:
        raise ConfigError(f"result: expected a dimension among {list(_GRID_DIMS)}, got dims {list(result.dims)}")
    dim = dims[0]
    if outcomes is None:
        outcomes = [o for o in OUTCOMES if o in result] or [v for v in ("robust_accuracy",) if v in result]
    elif isinstance(outcomes, str):
        outcomes = [outcomes]
    unknown = [o for o in outcomes if o not in result.data_vars or dim not in result[o].dims]
    if unknown or not outcomes:
        allowed = [v for v in result.data_vars if dim in result[v].dims and not v.endswith(("_ci_low", "_ci_high"))]
        raise ConfigError(f"outcomes: unknown {unknown or outcomes}; allowed: {allowed}")
    if ax is None:
        fig = Figure(figsize=(3.6 * len(outcomes), 3.2), layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(np.atleast_1d(fig.subplots(1, len(outcomes), squeeze=False)[0]))
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != len(outcomes):
            raise ConfigError(f"ax: expected {len(outcomes)} Axes (one per outcome), got {len(axes)}")
        fig = axes[0].figure
    numeric = dim != "transform"
    x = result[dim].values if numeric else np.arange(result.sizes[dim])
    for a, name in zip(axes, outcomes):
        var = result[name]
        others = [d for d in var.dims if d != dim]
        stacked = var.stack(_line=others) if others else var.expand_dims(_line=[0])
        for i in range(stacked.sizes["_line"]):
            line = stacked.isel(_line=i)
            label = ", ".join(f"{_fmt(line[d].item())}" for d in others) if others else None
            handle = a.plot(x, line.transpose(dim).values, marker="o", ms=3, label=label)[0]
            lo, hi = f"{name}_ci_low", f"{name}_ci_high"
            if lo in result and hi in result:
                sel = {d: line[d].item() for d in others}
                band_lo = result[lo].sel(sel).transpose(dim).values if others else result[lo].values
                band_hi = result[hi].sel(sel).transpose(dim).values if others else result[hi].values
                if np.any(np.isfinite(band_lo)):
                    a.fill_between(x, band_lo, band_hi, color=handle.get_color(), alpha=0.2, lw=0)
        if dim in _IDENTITY:
            a.axvline(_IDENTITY[dim], color="0.5", ls="--", lw=0.8)
        if not numeric:
            a.set_xticks(x, [str(v) for v in result[dim].values], rotation=30, ha="right", fontsize=7)
        a.set_xlabel({"scale": "scale s", "alpha": "rotation fraction α"}.get(dim, dim))
        a.set_ylabel(name.replace("_", " "))
        if others and stacked.sizes["_line"] > 1:
            a.legend(fontsize=7, title=" × ".join(others), title_fontsize=7)
    title = result.attrs.get("run_id") or result.attrs.get("study")
    if title and ax is None:
        fig.suptitle(f"{result.attrs.get('intervention', '')}: {title}", fontsize=9)
    return fig


def _mediation_parts(mediation_result: Any) -> tuple[pd.DataFrame, list[str] | None]:
    """The summary table (columns outcome, effect, estimate, ci_low, ci_high) and the mediator names."""
    if isinstance(mediation_result, pd.DataFrame):
        table, mediators = mediation_result, mediation_result.attrs.get("mediators")
    elif callable(getattr(mediation_result, "summary", None)):
        table, mediators = mediation_result.summary(), list(getattr(mediation_result, "mediators", []) or [])
    else:
        raise ConfigError("mediation_result: expected a causalgeom.causal.MediationResult or its summary() "
                          f"DataFrame, got {type(mediation_result).__name__}")
    missing = [c for c in ("outcome", "effect", "estimate", "ci_low", "ci_high") if c not in table.columns]
    if missing:
        raise ConfigError(f"mediation_result: its summary lacks columns {missing}; got {list(table.columns)}")
    return table, mediators


def _mediator_kind(effect: str, mediators: list[str] | None) -> str | None:
    """Which intervention (``what``) a ``prop_mediated...`` effect corresponds to, or None."""
    path = effect[len("prop_mediated"):]
    if path:
        name = path.strip("[]")
        return None if "->" in name else MEDIATOR_KINDS.get(name)
    kinds = {MEDIATOR_KINDS.get(m) for m in (mediators or [])}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    return "both" if kinds == {"magnitude", "cosine"} else None


def share_vs_mediation(match_result: pd.DataFrame | Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame],
                       mediation_result: Any, *, outcome: str | None = None) -> pd.DataFrame:
    """Compare the interventional share with the mediation analysis' proportion mediated.

    Both estimate the fraction of the treated-control difference in an outcome that goes through a
    mediator: the proportion mediated from observational variation (indirect / total effect,
    :func:`causalgeom.causal.mediate`), the interventional share by setting the mediator
    (:func:`match`). Agreement supports the mediation model; a gap points at confounding of the
    mediator, nonlinearity, or a mediator proxy that misses part of the mechanism.

    Parameters
    ----------
    match_result : DataFrame, or mapping / sequence of DataFrames
        Output(s) of :func:`match` / :func:`match_study`; ``df.attrs["what"]`` (or the mapping's keys)
        names the intervention: ``"magnitude"``, ``"cosine"`` or ``"both"``.
    mediation_result : MediationResult or its ``summary()`` DataFrame
        Its ``prop_mediated[m]`` rows (or ``prop_mediated`` with one mediator) are paired with the
        intervention on the same quantity (``rms``/``norm`` -> magnitude, ``cos_true``/``cos_pred``
        -> cosine; see :data:`MEDIATOR_KINDS`); the joint ``prop_mediated`` of a magnitude and a
        cosine mediator pairs with ``what="both"``.
    outcome : str, optional
        Keep only this mediation outcome (e.g. ``"overconfidence"``); outcomes are paired through
        :data:`MEDIATION_OUTCOME_ALIASES` (``overconfidence`` -> ``signed_ece``, ``correct`` ->
        ``accuracy``, ``confidence`` -> ``mean_confidence``; same names otherwise).

    Returns
    -------
    pandas.DataFrame
        One row per paired (mediator, outcome): ``what``, ``mediation_effect``, ``outcome``,
        ``intervention_outcome``, ``interventional_share`` with ``_ci_low`` / ``_ci_high``,
        ``proportion_mediated`` with ``_ci_low`` / ``_ci_high``, and ``difference`` (share -
        proportion).

    Raises
    ------
    ConfigError
        If nothing can be paired (the message lists what each side has).
    """
    if isinstance(match_result, pd.DataFrame):
        results = {match_result.attrs.get("what"): match_result}
    elif isinstance(match_result, Mapping):
        results = dict(match_result)
    else:
        results = {}
        for r in match_result:
            if not isinstance(r, pd.DataFrame):
                raise ConfigError(f"match_result: expected DataFrames from interventions.match, got {type(r).__name__}")
            results[r.attrs.get("what")] = r
    table, mediators = _mediation_parts(mediation_result)
    rows = []
    for rec in table[table["effect"].astype(str).str.startswith("prop_mediated")].itertuples(index=False):
        kind = _mediator_kind(str(rec.effect), mediators)
        iv_outcome = MEDIATION_OUTCOME_ALIASES.get(rec.outcome, rec.outcome)
        if kind not in results or iv_outcome not in OUTCOMES or (outcome is not None and rec.outcome != outcome):
            continue
        share = results[kind].loc[iv_outcome]
        rows.append({"what": kind, "mediation_effect": rec.effect, "outcome": rec.outcome,
                     "intervention_outcome": iv_outcome, "interventional_share": share["share"],
                     "interventional_share_ci_low": share["share_ci_low"],
                     "interventional_share_ci_high": share["share_ci_high"],
                     "proportion_mediated": rec.estimate, "proportion_mediated_ci_low": rec.ci_low,
                     "proportion_mediated_ci_high": rec.ci_high, "difference": share["share"] - rec.estimate})
    if not rows:
        effects = sorted(set(table["effect"].astype(str)))
        raise ConfigError(f"share_vs_mediation: nothing to pair: interventions {sorted(map(str, results))}, "
                          f"mediation mediators {mediators}, effects {effects}, outcomes "
                          f"{sorted(set(map(str, table['outcome'])))}" + (f" (outcome={outcome!r})" if outcome else ""))
    return pd.DataFrame(rows)
