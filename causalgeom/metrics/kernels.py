"""Numpy kernels of the metrics: one block of samples in, per-sample or binned statistics out.

The one copy of each formula that calibration, the interventions and the decomposition share: softmax,
per-sample confidence / correctness / NLL / Brier score, equal-width and equal-mass confidence bins, the
calibration error of binned statistics, and the float64 head of a run. Pure numpy; no dask, no xarray
except `head64`'s argument.

References
----------
Guo, Pleiss, Sun, Weinberger (2017), "On Calibration of Modern Neural Networks", ICML (ECE, equal-width bins).
Nixon et al. (2019), "Measuring Calibration in Deep Learning", CVPR Workshops (equal-mass bins, L2 / max norms).
Brier (1950), "Verification of forecasts expressed in terms of probability", Monthly Weather Review.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..errors import ConfigError
from ..dump.schema import require_head

__all__ = ["ERROR_NORMS", "softmax_block", "sample_stats_block", "bin_index", "width_bin_stats", "mass_bin_stats",
           "calibration_error", "debiased_squared_ce", "poisson_binomial_pmf", "ece_noise_floor", "aurc",
           "head64", "FUSED_FIELDS", "fused_block"]

#: Norms of `calibration_error`: l1 (ECE), l2 (RMS calibration error), max (MCE), signed (signed ECE).
ERROR_NORMS = ("l1", "l2", "max", "signed")


def softmax_block(x: np.ndarray, temperature: float = 1.0, probs: bool = False) -> np.ndarray:
    """Class probabilities (n, K) in float64 from logits (or pass probabilities through)."""
    z = np.asarray(x, dtype=np.float64)
    if probs:
        return z
    if temperature != 1.0:
        z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sample_stats_block(x: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
                        probs: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample confidence, prediction, correctness, NLL and Brier score of one block.

    Parameters
    ----------
    x : ndarray, shape (n, K)
        Logits (``probs=False``) or probabilities (``probs=True``).
    labels : ndarray of int, shape (n,)

    Returns
    -------
    confidence, prediction, correct, nll, brier : ndarrays, shape (n,)
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    n = labels.shape[0]
    rows = np.arange(n)
    if probs:
        p = np.asarray(x, dtype=np.float64)
        pred = p.argmax(axis=1)
        conf = p[rows, pred]
        py = p[rows, labels]
        with np.errstate(divide="ignore"):
            nll = -np.log(np.clip(py, np.finfo(np.float64).tiny, None))
    else:
        z = np.asarray(x, dtype=np.float64)
        if temperature != 1.0:
            z = z / temperature
        pred = z.argmax(axis=1)
        m = z[rows, pred]
        e = np.exp(z - m[:, None])
        s = e.sum(axis=1)
        p = e / s[:, None]
        conf = 1.0 / s  # exp(max - max) / sum
        nll = (m + np.log(s)) - z[rows, labels]
        py = p[rows, labels]
    brier = np.einsum("ij,ij->i", p, p) - 2.0 * py + 1.0
    return conf, pred, pred == labels, nll, brier


def bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: bin i holds [i/M, (i+1)/M), the last bin also holds 1."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)


def width_bin_stats(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """(3, n_bins): count, sum of confidence, sum of correctness per equal-width bin."""
    idx = bin_index(conf, n_bins)
    return np.stack([
        np.bincount(idx, minlength=n_bins).astype(np.float64),
        np.bincount(idx, weights=conf, minlength=n_bins),
        np.bincount(idx, weights=np.asarray(correct, dtype=np.float64), minlength=n_bins),
    ])


def mass_bin_stats(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-mass bins: sort by confidence (stable) and cut into ``n_bins`` groups of sizes differing by <= 1.

    Returns the (3, n_bins) statistics and each bin's lowest and highest confidence.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    order = np.argsort(conf, kind="stable")
    groups = np.array_split(order, n_bins)
    stats = np.zeros((3, n_bins))
    lo = np.full(n_bins, np.nan)
    hi = np.full(n_bins, np.nan)
    for i, g in enumerate(groups):
        if g.size:
            stats[:, i] = g.size, conf[g].sum(), correct[g].sum()
            lo[i], hi[i] = conf[g[0]], conf[g[-1]]
    return stats, lo, hi


def calibration_error(stats: np.ndarray, norm: str) -> float:
    """Calibration error from (3, M) bin statistics (the one formula behind ECE, signed ECE and their variants).

    ``l1``: sum_b w_b |conf_b - acc_b|; ``l2``: sqrt(sum_b w_b (conf_b - acc_b)^2) (as torchmetrics);
    ``max``: max_b |conf_b - acc_b| over non-empty bins; ``signed``: sum_b w_b (conf_b - acc_b).
    ``w_b`` = share of samples in bin b; empty bins contribute nothing.
    """
    count, sconf, sacc = np.asarray(stats, dtype=np.float64)
    total = count.sum()
    if total <= 0:
        return float("nan")
    nonempty = count > 0
    gap = np.zeros_like(count)
    gap[nonempty] = (sconf[nonempty] - sacc[nonempty]) / count[nonempty]
    w = count / total
    if norm == "l1":
        return float(np.sum(w * np.abs(gap)))
    if norm == "l2":
        return float(math.sqrt(max(float(np.sum(w * gap ** 2)), 0.0)))
    if norm == "max":
        return float(np.max(np.abs(gap[nonempty])))
    if norm == "signed":
        return float(np.sum(w * gap))
    raise ConfigError(f"norm: expected one of {list(ERROR_NORMS)}, got {norm!r}")  # pragma: no cover


def debiased_squared_ce(stats: np.ndarray) -> float:
    """Debiased estimate of the squared L2 binned calibration error from (3, M) bin statistics (may be < 0).

    ``sum_b w_b [(conf_b - acc_b)^2 - acc_b (1 - acc_b) / (n_b - 1)]`` over bins with ``n_b >= 2`` (bins with
    fewer samples contribute 0), ``w_b = n_b / n``. Given the confidences (so the bins and conf_b are fixed), the
    labels of bin b have mean a_b and ``E[(conf_b - acc_b)^2] = (conf_b - a_b)^2 + a_b (1 - a_b) / n_b``; the
    subtracted term is the unbiased estimate of that variance, so the sum is unbiased for
    ``sum_b w_b (conf_b - a_b)^2`` when every non-empty bin has at least 2 samples (Kumar, Liang, Ma, "Verified
    Uncertainty Calibration", NeurIPS 2019, Sec. 5; their ``unbiased_square_ce``; Bröcker 2012; Ferro & Fricker
    2012).
    """
    count, sconf, sacc = np.asarray(stats, dtype=np.float64)
    total = count.sum()
    if total <= 0:
        return float("nan")
    ok = count >= 2
    n_b = count[ok]
    conf_b = sconf[ok] / n_b
    acc_b = sacc[ok] / n_b
    terms = (conf_b - acc_b) ** 2 - acc_b * (1.0 - acc_b) / (n_b - 1.0)
    return float(np.sum(n_b / total * terms))


def poisson_binomial_pmf(p: np.ndarray) -> np.ndarray:
    """Probability mass function (m + 1,) of the number of successes of m independent Bernoulli(p_i) trials.

    The coefficients of prod_i ((1 - p_i) + p_i x), multiplied pairwise in a balanced tree with real FFTs
    (O(m log^2 m)); round-off is about 1e-15 of the largest mass (tests compare with `scipy.stats.binom` and a
    direct convolution at 1e-12), tiny negative values from round-off are set to 0.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    m = p.size
    if m == 0:
        return np.ones(1)
    size = 1 << max(0, (m - 1).bit_length())
    polys = np.zeros((size, 2))
    polys[:, 0] = 1.0
    polys[:m, 0] = 1.0 - p
    polys[:m, 1] = p
    while polys.shape[0] > 1:
        width = 2 * polys.shape[1] - 1
        if width <= 64:  # short polynomials: exact direct products
            a, b = polys[0::2], polys[1::2]
            out = np.zeros((a.shape[0], width))
            for j in range(b.shape[1]):
                out[:, j:j + a.shape[1]] += a * b[:, j:j + 1]
            polys = out
        else:
            nfft = 1 << (width - 1).bit_length()
            f = np.fft.rfft(polys, n=nfft, axis=1)
            polys = np.fft.irfft(f[0::2] * f[1::2], n=nfft, axis=1)[:, :width]
    pmf = np.clip(polys[0, :m + 1], 0.0, None)
    return pmf / pmf.sum()


def ece_noise_floor(conf: np.ndarray, n_bins: int) -> float:
    """Expected top-label ECE (l1, equal-width bins) of a perfectly calibrated model with these confidences.

    Each sample is correct with probability equal to its confidence, independently (y_i ~ Bernoulli(c_i)); the bins
    depend only on the confidences, so they are those of the run. With S_b = the number correct in bin b (a
    Poisson-binomial variable) the floor is ``E[ECE] = (1/n) sum_b E|sum_{i in b} c_i - S_b|``, computed exactly
    from S_b's distribution (`poisson_binomial_pmf`). It is the ECE that binning noise alone produces at this n:
    an ECE near it is no evidence of miscalibration. (The same null as the "consistency resampling" of Bröcker &
    Smith, "Increasing the reliability of reliability diagrams", Weather and Forecasting 2007, which simulates it;
    here its expectation is exact. On the bias of the binned ECE see Roelofs et al., AISTATS 2022.)
    """
    conf = np.asarray(conf, dtype=np.float64).ravel()
    n = conf.size
    if n == 0:
        return float("nan")
    idx = bin_index(conf, n_bins)
    total = 0.0
    for b in np.unique(idx):
        c = conf[idx == b]
        pmf = poisson_binomial_pmf(c)
        total += float(np.dot(pmf, np.abs(np.arange(c.size + 1) - c.sum())))
    return total / n


def aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve of selective classification (lower is better).

    Samples are accepted in order of decreasing confidence; after accepting k of n samples the selective risk is
    (errors among them) / k, and ``AURC = (1/n) sum_{k=1}^n risk(k)`` (Geifman, Uziel, El-Yaniv, "Bias-Reduced
    Uncertainty Estimation for Deep Neural Classifiers", ICLR 2019; Ding et al. 2020). Ties: samples of equal
    confidence are accepted in a uniformly random order and the AURC is its expectation over those orders, in closed
    form (after j of a tied group of m with e errors are accepted, the expected errors among them are j e / m), so
    the value does not depend on the order of the samples.
    """
    conf = np.asarray(conf, dtype=np.float64).ravel()
    err = 1.0 - np.asarray(correct, dtype=np.float64).ravel()
    n = conf.size
    if n == 0:
        return float("nan")
    order = np.argsort(-conf, kind="stable")
    c, e = conf[order], err[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_err = np.add.reduceat(e, starts)
    before = np.r_[0.0, np.cumsum(group_err)[:-1]]  # errors in earlier groups
    g = np.repeat(np.arange(starts.size), sizes)
    j = np.arange(n) - starts[g] + 1.0  # position within the tied group, 1..m
    expected_errors = before[g] + j * group_err[g] / sizes[g]
    return float(np.mean(expected_errors / np.arange(1, n + 1)))


#: Rows per float64 sub-block of `fused_block` (2 MiB at d = 512: stays in cache).
_FUSED_ROWS = 512
#: Columns of `fused_block`'s result, in order.
FUSED_FIELDS = ("norm", "cos_true", "cos_pred", "confidence", "correct", "nll", "brier", "margin", "pred")


def fused_block(f: np.ndarray, z: np.ndarray, y: np.ndarray, C: np.ndarray | None = None) -> np.ndarray:
    """Every per-sample quantity of the analysis table from one block of features and logits (one read of each).

    Parameters
    ----------
    f : ndarray, shape (n, d)
        Features (any float dtype; sums are accumulated in float64).
    z : ndarray, shape (n, K)
        Logits.
    y : ndarray of int, shape (n,)
        Labels.
    C : ndarray, shape (K, d), optional
        Class centers of the cosines; None gives NaN cosines.

    Returns
    -------
    ndarray, shape (n, len(FUSED_FIELDS)), float64
        Columns `FUSED_FIELDS`: ``norm`` = ||h||₂; ``cos_true`` / ``cos_pred`` = cos(h, c_y) / cos(h, c_ŷ)
        (NaN for a zero vector or zero center, clipped to [-1, 1]; the formula of
        `causalgeom.metrics.geometry.cosine_to_center`); ``confidence``, ``correct`` (0/1), ``nll``, ``brier`` as
        `sample_stats_block`; ``margin`` = z_y − max_{j≠y} z_j (the logit margin: > 0 iff correct without ties);
        ``pred`` = argmax_k z_k.
    """
    f = np.asarray(f)
    y = np.asarray(y).astype(np.int64, copy=False)
    n = y.shape[0]
    rows = np.arange(n)
    out = np.empty((n, len(FUSED_FIELDS)), dtype=np.float64)
    conf, pred, correct, nl, br = sample_stats_block(z, y)
    # norms and dot products in float64 from cache-sized float64 copies of the rows (about twice as fast as one
    # float64 copy of a whole 32 MiB chunk); exact products, so only the order of the sums differs from
    # `causalgeom.metrics.geometry`'s formulas
    Ct = None if C is None else np.ascontiguousarray(np.asarray(C, dtype=np.float64).T)
    sq = np.empty(n)
    dots = None if Ct is None else np.empty((n, Ct.shape[1]))
    x64 = np.empty((min(n, _FUSED_ROWS),) + f.shape[1:])  # one cache-sized float64 buffer, reused
    for s in range(0, n, _FUSED_ROWS):
        m = min(_FUSED_ROWS, n - s)
        x = x64[:m]
        np.copyto(x, f[s:s + m], casting="safe")
        np.einsum("ij,ij->i", x, x, out=sq[s:s + m])
        if dots is not None:
            np.matmul(x, Ct, out=dots[s:s + m])
    fn = np.sqrt(sq)
    out[:, 0] = fn
    if dots is None:
        out[:, 1:3] = np.nan
    else:
        cn = np.sqrt(np.einsum("ij,ij->j", Ct, Ct))
        with np.errstate(invalid="ignore", divide="ignore"):
            for col, k in ((1, y), (2, pred)):
                c = dots[rows, k] / (fn * cn[k])
                c[~np.isfinite(c)] = np.nan
                out[:, col] = np.clip(c, -1.0, 1.0)
    out[:, 3] = conf
    out[:, 4] = correct
    out[:, 5] = nl
    out[:, 6] = br
    zz = np.asarray(z, dtype=np.float64).copy()
    own = zz[rows, y].copy()
    zz[rows, y] = -np.inf
    out[:, 7] = own - zz.max(axis=1) if zz.shape[1] > 1 else np.inf
    out[:, 8] = pred
    return out


def head64(ds: xr.Dataset, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(W (K, F), b (K,))`` of the run's head as float64 arrays; `HeadMissingError` naming ``what`` without one."""
    W, b = require_head(ds, what)
    return np.asarray(W.values, dtype=np.float64), np.asarray(b.values, dtype=np.float64)
