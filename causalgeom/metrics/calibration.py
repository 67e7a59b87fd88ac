# Over 600 lines on purpose: one concern (calibration of a run's logits): every calibration metric, on datasets and on arrays, shares one set of kernels.
"""Calibration metrics of a run's logits: ECE (binned, signed, classwise), NLL, Brier, temperature, bootstrap CIs.

Every metric is computed from sufficient statistics that are sums over samples (counts, sums of
confidences and of correctness per bin, sums of per-sample losses), produced by one numpy
function of a block of samples. The Dataset entry points (``ece(ds)``, ...) and the array entry
points (``outcomes_from_logits``, ``ece_from_probs``) share these block functions and the
private ``calibration_error`` that turns bin statistics into a number (torchmetrics style:
one ``_compute`` behind a functional and a streaming front). On dask-backed dumps the
statistics are reduced chunk by chunk along ``sample`` (bounded memory). Definitions and
references: ``docs/methods_metrics.md``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike
import xarray as xr

from .blocks import check_run, compute, is_dask, raw, require_vars, sample_reduce
from .._util.checks import check_choice
from .._util.rng import check_random_state
from ..errors import ConfigError, SchemaError
from .kernels import (aurc as _aurc, bin_index, calibration_error, debiased_squared_ce, ece_noise_floor,
                      mass_bin_stats, sample_stats_block, softmax_block, width_bin_stats)
from .robustness import wilson_interval

__all__ = [
    "BINNINGS", "NORMS", "per_sample", "accuracy", "mean_confidence", "ece", "signed_ece", "classwise_ece",
    "nll", "brier", "reliability", "fit_temperature", "bootstrap_ci", "outcomes_from_logits", "ece_from_probs",
    "BOOTSTRAP_METRICS", "confidence_attrs", "EXTRA_OUTCOMES", "TS_SPLIT_RULE", "RELIABILITY_MIN_COUNT", "ts_split",
    "ece_ts", "ece_ts_from_logits", "ece_floor", "ece_debiased", "aurc", "confidence_outcomes", "run_outcome"
]

#: Confidence binnings of `ece`: equal-width or equal-mass bins.
BINNINGS = ("width", "mass")
#: Norms of `ece` over the bins (see `causalgeom.metrics.kernels.calibration_error`).
NORMS = ("l1", "l2", "max")
#: Metric names `bootstrap_ci` resamples from per-sample statistics.
BOOTSTRAP_METRICS = ("accuracy", "mean_confidence", "overconfidence", "ece", "signed_ece", "nll", "brier")
#: Per-run outcomes beyond the binned ECE (every one a column of `causalgeom.metrics.summary.run_metrics`, of the run-level
#: analysis table and an outcome of `causalgeom.causal.decompose`): ECE after temperature scaling fitted on a
#: held-out half, the debiased L2 calibration error, the ECE noise floor, and the AURC.
EXTRA_OUTCOMES = ("ece_ts", "ece_debiased", "ece_floor", "aurc")
#: How `ece_ts` splits the test images (`ts_split`): the same images in each half for every run that scored them.
TS_SPLIT_RULE = ("images ranked by sample id (stable sort); the temperature is fitted (NLL) on the even ranks "
                 "0, 2, 4, ... and the ECE evaluated on the odd ranks 1, 3, 5, ...")
#: Reliability-diagram bins with fewer images than this are flagged ``few`` (their accuracy is too noisy to read).
RELIABILITY_MIN_COUNT = 20

# Layout of the per-run statistics vector produced by `_run_stats_block`.
_N, _CORRECT, _CONF, _NLL, _BRIER = range(5)
_HEAD = 5


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _check_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins: expected a positive integer, got {n_bins!r}")
    return int(n_bins)


def _check_temperature(temperature: Any) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError(f"temperature: expected a positive number, got {temperature!r}") from None
    if not (t > 0 and math.isfinite(t)):
        raise ConfigError(f"temperature: expected a positive finite number, got {temperature!r}")
    return t


# ----------------------------------------------------------------------------------------------
# block functions (numpy, one block of samples)
# ----------------------------------------------------------------------------------------------
def _top_label_bin_block(p: np.ndarray, labels: np.ndarray, n_bins: int) -> np.ndarray:
    """(3, M) equal-width bin statistics straight from probabilities (no float64 copy of the block)."""
    pred = p.argmax(axis=1)
    conf = np.take_along_axis(p, pred[:, None], axis=1)[:, 0].astype(np.float64)
    return width_bin_stats(conf, pred == np.asarray(labels), n_bins)


def _run_stats_block(x: np.ndarray, labels: np.ndarray, n_bins: int, temperature: float = 1.0,
                     probs: bool = False) -> np.ndarray:
    """Flat sufficient statistics of one block: [n, #correct, sum conf, sum nll, sum brier, bins(3, M)]."""
    conf, _, correct, nl, br = sample_stats_block(x, labels, temperature, probs)
    head = np.array([conf.shape[0], correct.sum(), conf.sum(), nl.sum(), br.sum()], dtype=np.float64)
    return np.concatenate([head, width_bin_stats(conf, correct, n_bins).ravel()])


def _finish_run_stats(vec: np.ndarray, n_bins: int) -> dict[str, float]:
    """Turn the summed statistics vector into the per-run outcome numbers."""
    vec = np.asarray(vec, dtype=np.float64)
    n = vec[_N]
    bins = vec[_HEAD:].reshape(3, n_bins)
    return {
        "accuracy": float(vec[_CORRECT] / n),
        "ece": calibration_error(bins, "l1"),
        "signed_ece": calibration_error(bins, "signed"),
        "nll": float(vec[_NLL] / n),
        "brier": float(vec[_BRIER] / n),
        "mean_confidence": float(vec[_CONF] / n),
    }


def _classwise_stats_block(x: np.ndarray, labels: np.ndarray, n_bins: int, temperature: float = 1.0,
                           probs: bool = False) -> np.ndarray:
    """(3, K, M): per class k and equal-width bin of p_k: count, sum of p_k, sum of 1[y = k]."""
    p = softmax_block(x, temperature, probs)
    n, K = p.shape
    idx = bin_index(p, n_bins) + np.arange(K)[None, :] * n_bins
    hit = (np.asarray(labels)[:, None] == np.arange(K)[None, :]).astype(np.float64)
    size = K * n_bins
    return np.stack([
        np.bincount(idx.ravel(), minlength=size).astype(np.float64),
        np.bincount(idx.ravel(), weights=p.ravel(), minlength=size),
        np.bincount(idx.ravel(), weights=hit.ravel(), minlength=size),
    ]).reshape(3, K, n_bins)


# ----------------------------------------------------------------------------------------------
# Dataset plumbing
# ----------------------------------------------------------------------------------------------
def _inputs(ds: xr.Dataset, what: str) -> tuple[Any, Any]:
    require_vars(ds, ("logits", "label"), what)
    return raw(ds["logits"]), raw(ds["label"])


def _lazy_run_stats(ds: xr.Dataset, n_bins: int, temperature: float = 1.0, what: str = "calibration") -> Any:
    """Summed statistics vector of the whole run (lazy on dask); see `_run_stats_block`."""
    logits, labels = _inputs(ds, what)
    return sample_reduce(lambda x, y: _run_stats_block(x, y, n_bins, temperature), logits, labels,
                         shape=(_HEAD + 3 * n_bins,))


def _vectors(ds: xr.Dataset, temperature: float, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """In-memory 1-D confidence, correct, nll, brier of every sample (9 + 24 bytes per sample)."""
    require_vars(ds, ("logits", "label"), what)
    ps = per_sample(ds, temperature=temperature)
    out = compute(ps["confidence"].data, ps["correct"].data, ps["nll"].data, ps["brier"].data)
    return tuple(np.asarray(o) for o in out)  # type: ignore[return-value]


def _scalar(value: float, name: str, **attrs: Any) -> xr.DataArray:
    return xr.DataArray(np.float64(value), name=name, attrs=attrs)


def confidence_attrs(ds: xr.Dataset) -> dict[str, str]:
    """Which confidences a calibration metric used, and which the model was trained to produce.

    Every calibration metric here uses top-label **softmax** confidences of the logits. A run whose attributes say
    ``confidence = "sigmoid"`` (a model trained with binary cross-entropy, e.g. timm's A1/A2/A3 recipes) was trained
    for per-class sigmoid outputs, so its softmax calibration measures the softmax of a BCE model, not the
    probabilities its training targeted; the ``confidence_note`` says so.
    """
    trained = str(ds.attrs.get("confidence", "softmax"))
    out = {"confidence": "softmax", "trained_confidence": trained}
    if trained != "softmax":
        out["confidence_note"] = (f"the model was trained for {trained} outputs (loss {ds.attrs.get('loss', '?')!r}); "
                                  "these are top-label softmax confidences of its logits")
    return out


# ----------------------------------------------------------------------------------------------
# public: per sample
# ----------------------------------------------------------------------------------------------
def per_sample(ds: xr.Dataset, *, temperature: float = 1.0) -> xr.Dataset:
    """Per-sample calibration quantities.

    Parameters
    ----------
    ds : xarray.Dataset
        A schema-v1 run with ``logits`` (sample, class) and ``label`` (sample).
    temperature : float
        Divide the logits by this before the softmax (1: the model as is).

    Returns
    -------
    xarray.Dataset
        Dims (sample,); lazy when ``ds`` is dask-backed. Variables

        - ``confidence``: max_k p_k, p = softmax(z / T)
        - ``correct``: argmax_k p_k == label (bool)
        - ``overconfidence``: confidence − correct (its mean is the signed ECE, see `signed_ece`)
        - ``nll``: −log p_label
        - ``brier``: sum_k (p_k − 1[k = label])² (Brier 1950, summed over classes)

    References
    ----------
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017. Brier, "Verification of
    forecasts expressed in terms of probability", Monthly Weather Review 78, 1950.
    """
    check_run(ds, "per_sample")
    t = _check_temperature(temperature)
    require_vars(ds, ("logits", "label"), "per_sample")
    logits = ds["logits"]
    if is_dask(logits):
        logits = logits.chunk({"class": -1})

    def block(x: np.ndarray, y: np.ndarray):
        conf, _, correct, nl, br = sample_stats_block(x, y, t)
        return conf, correct, nl, br

    conf, correct, nl, br = xr.apply_ufunc(
        block, logits, ds["label"], input_core_dims=[["class"], []], output_core_dims=[[], [], [], []],
        dask="parallelized", output_dtypes=[np.float64, bool, np.float64, np.float64])
    out = xr.Dataset({"confidence": conf, "correct": correct,
                      "overconfidence": conf - correct.astype(np.float64), "nll": nl, "brier": br})
    out.attrs = {"run_id": ds.attrs.get("run_id"), "temperature": t}
    return out


# ----------------------------------------------------------------------------------------------
# public: per run
# ----------------------------------------------------------------------------------------------
def accuracy(ds: xr.Dataset) -> xr.DataArray:
    """Top-1 accuracy (0-d DataArray): mean over samples of argmax(logits) == label."""
    stats = compute(_lazy_run_stats(check_run(ds, "accuracy"), 1, what="accuracy"))[0]
    return _scalar(_finish_run_stats(stats, 1)["accuracy"], "accuracy")


def mean_confidence(ds: xr.Dataset, *, temperature: float = 1.0) -> xr.DataArray:
    """Mean over samples of max_k softmax(z / T)_k (0-d DataArray)."""
    stats = compute(_lazy_run_stats(check_run(ds, "mean_confidence"), 1, _check_temperature(temperature)))[0]
    return _scalar(_finish_run_stats(stats, 1)["mean_confidence"], "mean_confidence")


def ece(ds: xr.Dataset, n_bins: int = 15, binning: str = "width", norm: str = "l1", *,
        temperature: float = 1.0) -> xr.DataArray:
    """Top-label expected calibration error.

    ``ECE = sum_b (n_b / n) |conf_b − acc_b|`` (``norm="l1"``), ``sqrt(sum_b (n_b / n)(conf_b − acc_b)²)``
    (``"l2"``, the square root as in torchmetrics) or ``max_b |conf_b − acc_b|`` over non-empty bins
    (``"max"``, the MCE), where bin b holds the samples whose confidence falls into it and
    conf_b / acc_b are their mean confidence / accuracy.

    Parameters
    ----------
    ds : xarray.Dataset
        A run with ``logits`` (sample, class) and ``label`` (sample).
    n_bins : int
        Number of bins M.
    binning : {"width", "mass"}
        ``"width"``: bin i = [i/M, (i+1)/M), the last bin closed at 1 (torchmetrics puts a
        confidence of exactly 1.0 in an extra bin of its own; otherwise identical).
        ``"mass"``: equal-mass bins — samples sorted by confidence (stable sort) and cut into M
        groups whose sizes differ by at most one (Nixon et al. 2019; Roelofs et al. 2022). This
        needs every sample's confidence in memory (8 bytes per sample).
    norm : {"l1", "l2", "max"}
    temperature : float
        Logits are divided by it before the softmax.

    Returns
    -------
    xarray.DataArray
        0-d, float64, computed (not lazy).

    References
    ----------
    Naeini et al., AAAI 2015; Guo et al., ICML 2017 (ECE, MCE); Kumar et al., NeurIPS 2019 (l2);
    Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W 2019 (adaptive bins).
    """
    check_run(ds, "ece")
    n_bins = _check_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    check_choice(norm, "norm", NORMS)
    t = _check_temperature(temperature)
    stats = _binned_stats(ds, n_bins, binning, t, "ece")
    return _scalar(calibration_error(stats, norm), "ece", n_bins=n_bins, binning=binning, norm=norm,
                   temperature=t, **confidence_attrs(ds))


def _binned_stats(ds: xr.Dataset, n_bins: int, binning: str, t: float, what: str) -> np.ndarray:
    """Per-bin (count, sum of confidence, sum of correct), shape (3, n_bins), for equal-width or equal-mass bins."""
    if binning == "width":
        vec = compute(_lazy_run_stats(ds, n_bins, t, what))[0]
        return np.asarray(vec)[_HEAD:].reshape(3, n_bins)
    conf, correct, _, _ = _vectors(ds, t, what)
    return mass_bin_stats(conf, correct, n_bins)[0]


def signed_ece(ds: xr.Dataset, n_bins: int = 15, binning: str = "width", *, temperature: float = 1.0) -> xr.DataArray:
    """Signed calibration error ``sum_b (n_b / n)(conf_b − acc_b)``; > 0 means overconfident.

    Because every sample lies in exactly one bin, this equals mean(confidence) − accuracy for any
    binning (it is the mean of `per_sample`'s ``overconfidence``); the bins are kept for symmetry
    with `ece`.

    Returns
    -------
    xarray.DataArray
        0-d, float64.
    """
    check_run(ds, "signed_ece")
    n_bins = _check_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    t = _check_temperature(temperature)
    stats = _binned_stats(ds, n_bins, binning, t, "signed_ece")
    return _scalar(calibration_error(stats, "signed"), "signed_ece", n_bins=n_bins, binning=binning,
                   temperature=t, **confidence_attrs(ds))


def classwise_ece(ds: xr.Dataset, n_bins: int = 15, norm: str = "l1", *, per_class: bool = False,
                  temperature: float = 1.0) -> xr.DataArray:
    """Classwise ECE (static calibration error): the binned calibration error of every class's probability.

    For each class k, the samples are binned by p_k (equal width) and
    ``ECE_k = sum_b (n_kb / n) |mean_b(p_k) − mean_b(1[y = k])|`` (or the l2 / max norm as in `ece`);
    classwise ECE = mean_k ECE_k.

    Parameters
    ----------
    per_class : bool
        Return ECE_k per class (dim ``class``) instead of the mean.

    Returns
    -------
    xarray.DataArray
        0-d, or (class,) with ``per_class=True``.

    References
    ----------
    Kull et al., "Beyond temperature scaling", NeurIPS 2019 (classwise-ECE); Nixon et al. 2019 (SCE).
    """
    check_run(ds, "classwise_ece")
    n_bins = _check_bins(n_bins)
    check_choice(norm, "norm", NORMS)
    t = _check_temperature(temperature)
    logits, labels = _inputs(ds, "classwise_ece")
    K = int(ds.sizes["class"])
    stats = np.asarray(compute(sample_reduce(lambda x, y: _classwise_stats_block(x, y, n_bins, t),
                                             logits, labels, shape=(3, K, n_bins)))[0])
    per = np.array([calibration_error(stats[:, k, :], norm) for k in range(K)])
    if per_class:
        return xr.DataArray(per, dims=("class",), name="classwise_ece",
                            attrs={"n_bins": n_bins, "norm": norm, "temperature": t})
    return _scalar(float(per.mean()), "classwise_ece", n_bins=n_bins, norm=norm, temperature=t)


def nll(ds: xr.Dataset, *, temperature: float = 1.0) -> xr.DataArray:
    """Mean negative log-likelihood ``−(1/n) sum_i log softmax(z_i / T)_{y_i}`` (0-d; natural log)."""
    vec = compute(_lazy_run_stats(check_run(ds, "nll"), 1, _check_temperature(temperature), "nll"))[0]
    return _scalar(_finish_run_stats(vec, 1)["nll"], "nll", temperature=float(temperature))


def brier(ds: xr.Dataset, *, temperature: float = 1.0) -> xr.DataArray:
    """Mean multiclass Brier score ``(1/n) sum_i sum_k (p_ik − 1[k = y_i])²`` (0-d; in [0, 2]; Brier 1950)."""
    vec = compute(_lazy_run_stats(check_run(ds, "brier"), 1, _check_temperature(temperature), "brier"))[0]
    return _scalar(_finish_run_stats(vec, 1)["brier"], "brier", temperature=float(temperature))


def reliability(ds: xr.Dataset, n_bins: int = 15, binning: str = "width", *, temperature: float = 1.0,
                level: float = 0.95, min_count: int = RELIABILITY_MIN_COUNT) -> xr.Dataset:
    """Reliability-diagram data with evidence: per bin mean confidence, accuracy, count and an interval on the accuracy.

    Parameters
    ----------
    ds : xarray.Dataset
        A run with ``logits`` and ``label``.
    n_bins, binning, temperature
        As in `ece`.
    level : float
        Coverage of the per-bin interval on the accuracy, in (0, 1).
    min_count : int
        Bins with fewer images than this are flagged ``few`` (default :data:`RELIABILITY_MIN_COUNT` = 20).

    Returns
    -------
    xarray.Dataset
        Dim ``bin`` (M). Variables ``confidence``, ``accuracy`` (NaN for empty bins), ``count``
        (int), ``weight`` (count / n), ``gap`` (confidence − accuracy), ``acc_low`` / ``acc_high``
        (the **Wilson score** interval of the bin's accuracy at ``level``, treating its images as independent
        Bernoulli trials; NaN for empty bins; `causalgeom.metrics.robustness.wilson_interval`, the one used for robust
        accuracy, equal to statsmodels' ``proportion_confint(method="wilson")``), ``few`` (bool:
        0 < count < ``min_count``); coordinates ``bin_lower``, ``bin_upper`` (the bin edges for ``"width"``;
        the lowest / highest confidence in the bin for ``"mass"``). Bins as in `ece`. Attributes record ``interval``, ``level`` and ``min_count``.

    References
    ----------
    Wilson, JASA 1927 (score interval); Bröcker & Smith, "Increasing the reliability of reliability diagrams",
    Weather and Forecasting 2007 (intervals on reliability diagrams).
    """
    check_run(ds, "reliability")
    n_bins = _check_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    t = _check_temperature(temperature)
    try:
        level = float(level)
    except (TypeError, ValueError):
        raise ConfigError(f"level: expected a number in (0, 1), got {level!r}") from None
    if not 0 < level < 1:
        raise ConfigError(f"level: expected a number in (0, 1), got {level!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ConfigError(f"min_count: expected a positive integer, got {min_count!r}")
    if binning == "width":
        vec = compute(_lazy_run_stats(ds, n_bins, t, "reliability"))[0]
        stats = np.asarray(vec)[_HEAD:].reshape(3, n_bins)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lo, hi = edges[:-1], edges[1:]
    else:
        conf, correct, _, _ = _vectors(ds, t, "reliability")
        stats, lo, hi = mass_bin_stats(conf, correct, n_bins)
    count, sconf, sacc = stats
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(count > 0, sconf / count, np.nan)
        a = np.where(count > 0, sacc / count, np.nan)
    low, high = wilson_interval(sacc, count, level)
    return xr.Dataset(
        {"confidence": ("bin", c), "accuracy": ("bin", a), "count": ("bin", count.astype(np.int64)),
         "weight": ("bin", count / count.sum()), "gap": ("bin", c - a), "acc_low": ("bin", low),
         "acc_high": ("bin", high), "few": ("bin", (count > 0) & (count < int(min_count)))},
        coords={"bin": np.arange(n_bins), "bin_lower": ("bin", lo), "bin_upper": ("bin", hi)},
        attrs={"n_bins": n_bins, "binning": binning, "temperature": t, "run_id": ds.attrs.get("run_id"),
               "interval": "Wilson score interval of the bin accuracy", "level": level,
               "min_count": int(min_count)})


# ----------------------------------------------------------------------------------------------
# temperature scaling
# ----------------------------------------------------------------------------------------------
def _temperature_block(x: np.ndarray, labels: np.ndarray, beta: float) -> np.ndarray:
    """[sum NLL(beta z), d/dbeta, d²/dbeta²] for one block (NLL convex in beta = 1/T)."""
    z = np.asarray(x, dtype=np.float64)
    rows = np.arange(z.shape[0])
    zy = z[rows, np.asarray(labels)]
    bz = beta * z
    m = bz.max(axis=1, keepdims=True)
    e = np.exp(bz - m)
    s = e.sum(axis=1)
    p = e / s[:, None]
    ez = np.einsum("ij,ij->i", p, z)
    ez2 = np.einsum("ij,ij->i", p, z * z)
    f = (m[:, 0] + np.log(s)) - beta * zy
    return np.array([f.sum(), (ez - zy).sum(), np.maximum(ez2 - ez * ez, 0.0).sum()])


def fit_temperature(calib_ds: xr.Dataset, *, bounds: tuple[float, float] = (1e-3, 1e3), tol: float = 1e-10,
                    max_iter: int = 100) -> float:
    """Temperature T minimizing the mean NLL of softmax(z / T) on a calibration split.

    The NLL is convex in beta = 1/T (a log-sum-exp of a linear function minus a linear term),
    so it is minimized by a safeguarded Newton iteration on beta (bisection in log beta whenever a
    Newton step leaves the bracket); each iteration is one pass over the logits, so large dask-backed
    splits are fitted in bounded memory.

    Parameters
    ----------
    calib_ds : xarray.Dataset
        A run on the *calibration* split (``attrs["split"]`` should not be the test split), with
        ``logits`` and ``label``.
    bounds : (float, float)
        Search interval for T. If the optimum lies outside, the nearest bound is returned with a
        warning. (On a perfectly separable split the NLL keeps falling as T → 0; the iteration
        stops where its derivative falls below ``tol``, i.e. where the NLL is within about ``tol``
        of its infimum, or at the lower bound.)
    tol : float
        Convergence threshold on |d NLL / d beta| and on the relative change of beta.

    Returns
    -------
    float
        The fitted temperature T.

    References
    ----------
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (temperature scaling).
    """
    check_run(calib_ds, "fit_temperature")
    logits, labels = _inputs(calib_ds, "fit_temperature")
    return _fit_temperature_arrays(logits, labels, bounds, tol, max_iter)


def _fit_temperature_arrays(logits: Any, labels: Any, bounds: tuple[float, float] = (1e-3, 1e3), tol: float = 1e-10,
                            max_iter: int = 100) -> float:
    """`fit_temperature` on (n, K) logits and (n,) labels (numpy or dask); the one implementation of the fit."""
    t_lo, t_hi = (float(b) for b in bounds)
    if not (0 < t_lo < t_hi < math.inf):
        raise ConfigError(f"bounds: expected 0 < low < high < inf, got {bounds!r}")
    lo, hi = 1.0 / t_hi, 1.0 / t_lo  # bracket for beta

    def evaluate(beta: float) -> np.ndarray:
        return np.asarray(compute(sample_reduce(lambda x, y: _temperature_block(x, y, beta), logits, labels,
                                                shape=(3,)))[0])

    beta = min(max(1.0, lo), hi)
    n = float(logits.shape[0])
    if n == 0:
        raise ConfigError("fit_temperature: no samples to fit the temperature on")
    for _ in range(max_iter):
        _, g, h = evaluate(beta) / n
        if abs(g) <= tol:
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else math.nan
        new = step if lo < step < hi else math.sqrt(lo * hi)
        if abs(new - beta) <= tol * beta or (hi - lo) <= tol * hi:
            beta = new
            break
        beta = new
    if beta <= 1.0 / t_hi * (1 + 1e-6) or beta >= 1.0 / t_lo * (1 - 1e-6):
        warnings.warn(f"fit_temperature: the NLL optimum lies at or beyond the bound T={1 / beta:.4g} "
                      f"(bounds={bounds}); returning the bound", RuntimeWarning, stacklevel=3)
    return float(1.0 / beta)


# ----------------------------------------------------------------------------------------------
# outcomes beyond the binned ECE: ECE after temperature scaling, debiased ECE, noise floor, AURC
# ----------------------------------------------------------------------------------------------
def ts_split(sample_ids: ArrayLike) -> np.ndarray:
    """The held-out split of `ece_ts`: True for the images the temperature is fitted on, False for the others.

    Rule (:data:`TS_SPLIT_RULE`): the images are ranked by their sample id (stable sort); even ranks fit, odd ranks
    evaluate. The split depends only on the set of ids, so every run that scored the same images splits them the
    same way whatever order it stores them in (the comparison of ``ece_ts`` between runs is paired); ranks rather
    than the ids themselves keep the halves balanced (sizes ceil(n/2) and floor(n/2)) for any ids.

    Parameters
    ----------
    sample_ids : array, shape (n,)
        The ``sample`` coordinate of a run (or its positions 0..n-1 when it has none).

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    ids = np.asarray(sample_ids).ravel()
    rank = np.empty(ids.size, dtype=np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(ids.size)
    return rank % 2 == 0


def _sample_ids(ds: xr.Dataset) -> np.ndarray:
    n = int(ds.sizes.get("sample", 0))
    return np.asarray(ds["sample"].values) if "sample" in ds.coords else np.arange(n)


def ece_ts(ds: xr.Dataset, n_bins: int = 15) -> xr.DataArray:
    """Top-label ECE after temperature scaling, the temperature fitted on a held-out half of the same images.

    The images are split by `ts_split` (:data:`TS_SPLIT_RULE`: even ranks of the sorted sample ids fit, odd ranks
    evaluate; the same images in each half for every run of a study, so the comparison between runs is paired). The
    temperature T minimizes the NLL on the fit half (`fit_temperature`); the value is ``ece(eval half, n_bins,
    temperature=T)`` (l1, equal-width bins): exactly that computation. It answers whether a model stays better
    calibrated than another once each is given its best single temperature (Guo et al. 2017), without fitting and
    evaluating on the same images.

    Parameters
    ----------
    ds : xarray.Dataset
        A run with ``logits`` and ``label`` (lazy runs are streamed: one pass over the fit half per Newton step).
    n_bins : int

    Returns
    -------
    xarray.DataArray
        0-d float64 (NaN when a half is empty); attrs ``temperature`` (fitted T), ``split_rule``, ``n_fit``,
        ``n_eval``, ``n_bins``.

    References
    ----------
    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
    """
    check_run(ds, "ece_ts")
    n_bins = _check_bins(n_bins)
    require_vars(ds, ("logits", "label"), "ece_ts")
    fit = ts_split(_sample_ids(ds))
    fit_idx, eval_idx = np.flatnonzero(fit), np.flatnonzero(~fit)
    attrs = {"split_rule": TS_SPLIT_RULE, "n_fit": int(fit_idx.size), "n_eval": int(eval_idx.size),
             "n_bins": n_bins}
    if fit_idx.size == 0 or eval_idx.size == 0:
        return _scalar(math.nan, "ece_ts", temperature=math.nan, **attrs)
    t = fit_temperature(ds.isel(sample=fit_idx))
    value = float(ece(ds.isel(sample=eval_idx), n_bins, temperature=t))
    return _scalar(value, "ece_ts", temperature=t, **attrs)


def ece_ts_from_logits(logits: ArrayLike, labels: ArrayLike, fit: ArrayLike, n_bins: int = 15) -> tuple[float, float]:
    """`ece_ts` of raw logits: ``(ECE on the rows where fit is False at T, T)``, T fitted on the rows where fit is True.

    The array entry point (the decomposition's counterfactual logits); ``fit`` is `ts_split` of the images' ids.
    NaN, NaN when a half is empty.
    """
    x = _as_2d(logits, "logits")
    y = _as_labels(labels, x.shape[0], x.shape[1])
    mask = np.asarray(fit, dtype=bool).ravel()
    if mask.shape[0] != x.shape[0]:
        raise SchemaError(f"fit: expected a boolean mask of shape ({x.shape[0]},), got shape {mask.shape}")
    n_bins = _check_bins(n_bins)
    if mask.all() or not mask.any():
        return math.nan, math.nan
    t = _fit_temperature_arrays(x[mask], y[mask])
    return outcomes_from_logits(x[~mask], y[~mask], n_bins, temperature=t)["ece"], t


def confidence_outcomes(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> dict[str, float]:
    """``ece_debiased``, ``ece_floor`` and ``aurc`` from per-sample top-label confidences and correctness.

    The one implementation behind `ece_debiased`, `ece_floor`, `aurc`, `causalgeom.metrics.summary.run_metrics` and the
    run-level analysis table.

    - ``ece_debiased``: ``sqrt(max(D, 0))`` with D the debiased estimate of the squared L2 binned calibration error
      (`causalgeom.metrics.kernels.debiased_squared_ce`; Kumar, Liang, Ma, NeurIPS 2019, their ``unbiased_l2_ce``).
      An estimate of the RMS calibration error ``ece(norm="l2")`` with its binning-noise bias removed (compare it
      with that, not with the l1 ``ece``).
    - ``ece_floor``: the expected l1 ECE of a perfectly calibrated model with these confidences and bins (labels
      drawn Bernoulli(confidence)), exactly (`causalgeom.metrics.kernels.ece_noise_floor`): the ECE binning noise alone
      gives at this n.
    - ``aurc``: area under the risk-coverage curve, confidence = max softmax probability, ties in expectation over
      random orders (`causalgeom.metrics.kernels.aurc`).
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    corr = np.asarray(correct, dtype=np.float64).ravel()
    n_bins = _check_bins(n_bins)
    d = debiased_squared_ce(width_bin_stats(conf, corr, n_bins))
    return {"ece_debiased": float(math.sqrt(max(d, 0.0))) if math.isfinite(d) else math.nan,
            "ece_floor": ece_noise_floor(conf, n_bins), "aurc": _aurc(conf, corr)}


def _confidence_outcome(ds: xr.Dataset, name: str, n_bins: int) -> xr.DataArray:
    check_run(ds, name)
    n_bins = _check_bins(n_bins)
    conf, correct, _, _ = _vectors(ds, 1.0, name)
    return _scalar(confidence_outcomes(conf, correct, n_bins)[name], name, n_bins=n_bins, **confidence_attrs(ds))


def ece_debiased(ds: xr.Dataset, n_bins: int = 15) -> xr.DataArray:
    """Debiased L2 calibration error of the run (0-d); see `confidence_outcomes` for the definition."""
    return _confidence_outcome(ds, "ece_debiased", n_bins)


def ece_floor(ds: xr.Dataset, n_bins: int = 15) -> xr.DataArray:
    """Noise floor of the run's ECE: the expected ECE of a perfectly calibrated model with its confidences (0-d).

    See `confidence_outcomes` and `causalgeom.metrics.kernels.ece_noise_floor`."""
    return _confidence_outcome(ds, "ece_floor", n_bins)


def aurc(ds: xr.Dataset) -> xr.DataArray:
    """Area under the risk-coverage curve of the run (0-d; lower is better); see `causalgeom.metrics.kernels.aurc`."""
    return _confidence_outcome(ds, "aurc", 1)


def run_outcome(name: str, stats: dict[str, np.ndarray], n_bins: int = 15, idx: np.ndarray | None = None) -> float:
    """One of :data:`EXTRA_OUTCOMES` from per-image statistics (for callers that hold them, such as the decomposition).

    Parameters
    ----------
    name : str
        One of :data:`EXTRA_OUTCOMES`.
    stats : dict
        ``confidence`` (n,) and ``correct`` (n,); for ``ece_ts`` also ``logits`` (n, K), ``labels`` (n,) and
        ``ts_fit`` (n,) bool (`ts_split` of the images' ids).
    n_bins : int
    idx : ndarray of int, optional
        Rows to use (a bootstrap resample: a repeated image keeps its half).
    """
    check_choice(name, "outcome", EXTRA_OUTCOMES)

    def get(key: str) -> np.ndarray:
        return stats[key] if idx is None else stats[key][idx]
    if name == "ece_ts":
        return ece_ts_from_logits(get("logits"), get("labels"), get("ts_fit"), n_bins)[0]
    return confidence_outcomes(get("confidence"), get("correct"), n_bins)[name]


# ----------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------
def _metric_from_vectors(name: str, conf: np.ndarray, correct: np.ndarray, nl: np.ndarray, br: np.ndarray,
                         n_bins: int, binning: str, norm: str) -> float:
    if name == "accuracy":
        return float(correct.mean())
    if name == "mean_confidence":
        return float(conf.mean())
    if name in ("overconfidence",):
        return float(conf.mean() - correct.mean())
    if name == "nll":
        return float(nl.mean())
    if name == "brier":
        return float(br.mean())
    stats = (width_bin_stats(conf, correct, n_bins) if binning == "width"
             else mass_bin_stats(conf, correct, n_bins)[0])
    return calibration_error(stats, "signed" if name == "signed_ece" else norm)


def bootstrap_ci(ds: xr.Dataset, metric: str | Callable[[xr.Dataset], Any], n_boot: int = 1000,
                 level: float = 0.95, rng: np.random.Generator | int | None = None, *, n_bins: int = 15,
                 binning: str = "width", norm: str = "l1", temperature: float = 1.0) -> xr.Dataset:
    """Percentile-bootstrap confidence interval of a per-run metric, resampling samples with replacement.

    Each of ``n_boot`` replicates draws n sample indices uniformly with replacement and recomputes
    the metric; the interval is the (1 − level)/2 and (1 + level)/2 percentiles of the replicates
    (the percentile bootstrap, Efron & Tibshirani 1993, ch. 13). Samples are treated as i.i.d.;
    runs/seeds are not resampled (see `causalgeom.metrics.summary.paper_table` for the between-seed interval).

    Parameters
    ----------
    ds : xarray.Dataset
        One run.
    metric : str or callable
        One of :data:`BOOTSTRAP_METRICS` (fast: per-sample statistics are computed once, 33 bytes
        per sample in memory), or a callable ``f(ds) -> float`` applied to ``ds.isel(sample=idx)``
        (general, but it recomputes from the dump for every replicate).
    n_boot : int
        Number of bootstrap replicates.
    level : float
        Coverage of the interval, in (0, 1).
    rng : numpy.random.Generator or int, optional
        Source of randomness (an int seeds a fresh ``numpy.random.default_rng``); ``None`` uses
        fresh OS entropy (not reproducible).
    n_bins, binning, norm, temperature
        Passed to the ECE metrics.

    Returns
    -------
    xarray.Dataset
        0-d variables ``estimate`` (metric on all samples), ``low``, ``high``, and ``std``
        (bootstrap standard error); attrs ``metric``, ``level``, ``n_boot``, ``method``.
    """
    check_run(ds, "bootstrap_ci")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ConfigError(f"n_boot: expected an integer >= 2, got {n_boot!r}")
    if not (0 < float(level) < 1):
        raise ConfigError(f"level: expected a number in (0, 1), got {level!r}")
    rng = check_random_state(rng)
    n_bins = _check_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    check_choice(norm, "norm", NORMS)
    n = int(ds.sizes.get("sample", 0))
    if isinstance(metric, str):
        check_choice(metric, "metric", BOOTSTRAP_METRICS)
        conf, correct, nl, br = _vectors(ds, _check_temperature(temperature), "bootstrap_ci")
        correct = correct.astype(np.float64)

        def f(idx: np.ndarray | None) -> float:
            if idx is None:
                return _metric_from_vectors(metric, conf, correct, nl, br, n_bins, binning, norm)
            return _metric_from_vectors(metric, conf[idx], correct[idx], nl[idx], br[idx], n_bins, binning, norm)
        name = metric
    elif callable(metric):
        def f(idx: np.ndarray | None) -> float:
            return float(metric(ds if idx is None else ds.isel(sample=idx)))
        name = getattr(metric, "__name__", "metric")
    else:
        raise ConfigError(f"metric: expected one of {list(BOOTSTRAP_METRICS)} or a callable, got {metric!r}")
    estimate = f(None)
    reps = np.array([f(rng.integers(0, n, n)) for _ in range(int(n_boot))])
    alpha = (1.0 - float(level)) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return xr.Dataset({"estimate": estimate, "low": low, "high": high, "std": reps.std(ddof=1)},
                      attrs={"metric": name, "level": float(level), "n_boot": int(n_boot),
                             "method": "percentile bootstrap over samples"})


# ----------------------------------------------------------------------------------------------
# array entry points
# ----------------------------------------------------------------------------------------------
def _as_2d(x: Any, name: str) -> Any:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            x = x.double().numpy() if x.dtype in (torch.bfloat16, torch.float16) else x.numpy()
    except ImportError:  # pragma: no cover
        pass
    if not is_dask(x):
        x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 2:
        raise SchemaError(f"{name}: expected an array of shape (n, K) with K >= 2, got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise SchemaError(f"{name}: expected floating-point values, got dtype {x.dtype}")
    return x


def _as_labels(y: Any, n: int, K: int) -> Any:
    try:
        import torch

        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if not is_dask(y):
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise SchemaError(f"labels: expected shape ({n},), got {tuple(y.shape)}")
        if not np.issubdtype(y.dtype, np.integer):
            raise SchemaError(f"labels: expected integer class indices, got dtype {y.dtype}")
        if n and (y.min() < 0 or y.max() >= K):
            raise SchemaError(f"labels: values must lie in [0, {K}), got range [{y.min()}, {y.max()}]")
    return y


def outcomes_from_logits(logits: ArrayLike, labels: ArrayLike, n_bins: int = 15, *,
                         temperature: float = 1.0) -> dict[str, float]:
    """Per-run outcome numbers from raw logits (numpy, torch or dask arrays).

    Parameters
    ----------
    logits : array, shape (n, K)
    labels : array of int, shape (n,)
    n_bins : int
        Equal-width bins of the ECE.
    temperature : float

    Returns
    -------
    dict
        ``accuracy``, ``ece`` (l1, equal width), ``signed_ece``, ``nll``, ``brier``,
        ``mean_confidence`` — the same numbers as the Dataset functions of this module.
    """
    x = _as_2d(logits, "logits")
    y = _as_labels(labels, x.shape[0], x.shape[1])
    if x.shape[0] == 0:
        raise SchemaError("logits: no samples (shape (0, K))")
    n_bins = _check_bins(n_bins)
    t = _check_temperature(temperature)
    vec = compute(sample_reduce(lambda a, b: _run_stats_block(a, b, n_bins, t), x, y,
                                shape=(_HEAD + 3 * n_bins,)))[0]
    return _finish_run_stats(vec, n_bins)


def ece_from_probs(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, binning: str = "width",
                   norm: str = "l1") -> float:
    """Top-label ECE from class probabilities (numpy, torch or dask, shape (n, K)); see `ece`.

    The probabilities are used as given (confidence = max_k p_k, prediction = argmax_k p_k); this is
    the entry point compared against torchmetrics' ``multiclass_calibration_error``.
    """
    x = _as_2d(probs, "probs")
    y = _as_labels(labels, x.shape[0], x.shape[1])
    if x.shape[0] == 0:
        raise SchemaError("probs: no samples (shape (0, K))")
    n_bins = _check_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    check_choice(norm, "norm", NORMS)
    if binning == "width":
        stats = np.asarray(compute(sample_reduce(lambda a, b: _top_label_bin_block(a, b, n_bins), x, y,
                                                 shape=(3, n_bins)))[0])
    else:
        x = np.asarray(compute(x)[0])
        y = np.asarray(compute(y)[0])
        rows = np.arange(x.shape[0])
        pred = x.argmax(axis=1)
        stats = mass_bin_stats(x[rows, pred], pred == y, n_bins)[0]
    return calibration_error(stats, norm)


# Old private names, still imported by causalgeom.causal.decompose (use causalgeom.metrics.kernels instead).
_bin_index, _sample_stats_block, _width_bin_stats, _calibration_error = (bin_index, sample_stats_block,
                                                                          width_bin_stats, calibration_error)
