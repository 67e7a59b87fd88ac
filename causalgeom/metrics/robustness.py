"""Adversarial robustness of a run from its stored attack outcomes (``adv_correct``, ``min_flip_eps``).

Robust accuracy per attack × ε with Wilson score intervals, attack success rate over the samples
classified correctly without attack, the normalized area under the robust-accuracy curve, and the
per-sample smallest flipping ε. Reductions are computed (in memory); per-sample results are lazy
on dask-backed dumps. Definitions and references: ``docs/methods_metrics.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from .blocks import check_run, compute, require_vars
from ..errors import ConfigError, SchemaError

__all__ = [
    "robust_accuracy",
    "robust_accuracy_ci",
    "wilson_interval",
    "clean_correct",
    "first_flip_eps",
    "flip_given_clean",
    "attack_success_rate",
    "robust_auc",
    "min_flip_eps",
]


def _require_attacks(ds: xr.Dataset, what: str) -> None:
    check_run(ds, what)
    if "adv_correct" not in ds.variables:
        raise SchemaError(f"{what} needs the attack outcomes (variable 'adv_correct' with dims (attack, eps, "
                          f"sample)), which this dump does not have (run_id={ds.attrs.get('run_id')!r}); "
                          "extract with attacks=[...] or import them")
    for coord in ("attack", "eps"):
        if coord not in ds.coords:
            raise SchemaError(f"{what}: variable 'adv_correct' needs the coordinate {coord!r}")


def clean_correct(ds: xr.Dataset) -> xr.DataArray:
    """argmax(logits) == label per sample (bool, lazy on dask-backed dumps)."""
    check_run(ds, "clean_correct")
    require_vars(ds, ("logits", "label"), "clean_correct")
    out = ds["logits"].argmax("class") == ds["label"]
    out.name = "clean_correct"
    return out


def wilson_interval(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k/n (Wilson 1927; Agresti & Coull 1998).

    ``(p̂ + z²/2n ± z sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)``, z = Φ⁻¹((1 + level)/2).
    NaN where n = 0.
    """
    from scipy import stats

    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = stats.norm.ppf(0.5 + float(level) / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        lo, hi = np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def robust_accuracy(ds: xr.Dataset) -> xr.DataArray:
    """Robust accuracy: share of samples still correctly classified after each attack at each ε.

    Parameters
    ----------
    ds : xarray.Dataset
        A run with ``adv_correct`` (attack, eps, sample).

    Returns
    -------
    xarray.DataArray
        (attack, eps), float64, computed.

    Raises
    ------
    SchemaError
        If the dump has no attack outcomes.
    """
    _require_attacks(ds, "robust_accuracy")
    out = compute(ds["adv_correct"].astype(np.float64).mean("sample"))[0]
    out.name = "robust_accuracy"
    return out


def robust_accuracy_ci(ds: xr.Dataset, level: float = 0.95) -> xr.Dataset:
    """Robust accuracy with Wilson score confidence intervals (samples as Bernoulli trials).

    Returns
    -------
    xarray.Dataset
        (attack, eps): ``robust_accuracy``, ``low``, ``high``, ``n_correct``; attrs ``level``, ``n``,
        ``method`` = "Wilson score".
    """
    _require_attacks(ds, "robust_accuracy_ci")
    if not (0 < float(level) < 1):
        raise ConfigError(f"level: expected a number in (0, 1), got {level!r}")
    k = compute(ds["adv_correct"].sum("sample"))[0]
    n = int(ds.sizes["sample"])
    lo, hi = wilson_interval(k.values, np.full(k.shape, n), level)
    return xr.Dataset({"robust_accuracy": k / n, "low": (k.dims, lo), "high": (k.dims, hi),
                       "n_correct": k.astype(np.int64)},
                      attrs={"level": float(level), "n": n, "method": "Wilson score",
                             "run_id": ds.attrs.get("run_id")})


def attack_success_rate(ds: xr.Dataset) -> xr.DataArray:
    """Attack success rate: among samples classified correctly without attack, the share misclassified after it.

    ``ASR(a, ε) = #{i : clean_correct_i and not adv_correct_{a,ε,i}} / #{i : clean_correct_i}``.

    Returns
    -------
    xarray.DataArray
        (attack, eps), float64, computed; attrs ``n_clean_correct``. NaN if no sample is correct.
    """
    _require_attacks(ds, "attack_success_rate")
    cc = clean_correct(ds)
    flipped, n_cc = compute((cc & ~ds["adv_correct"]).sum("sample"), cc.sum())
    n_cc = int(n_cc)
    out = flipped.astype(np.float64) / n_cc if n_cc else flipped.astype(np.float64) * np.nan
    out.name = "attack_success_rate"
    out.attrs = {"n_clean_correct": n_cc}
    return out


def robust_auc(ds: xr.Dataset, include_clean: bool = True) -> xr.DataArray:
    """Area under the robust-accuracy curve, normalized by the ε range (so it lies in [0, 1]).

    ``AUC_a = (1 / (ε_max − ε_min)) ∫ acc_a(ε) dε`` by the trapezoid rule over the stored ε grid.
    With ``include_clean`` and a grid not starting at 0, the point (0, clean accuracy) is
    prepended (a clean sample is an ε = 0 attack), so ε_min = 0 and runs with different grids that
    share the maximum are comparable. A single-point grid gives that point's accuracy.

    Returns
    -------
    xarray.DataArray
        (attack,), float64, computed; attrs ``eps_min``, ``eps_max``.
    """
    _require_attacks(ds, "robust_auc")
    eps = np.asarray(ds["eps"].values, dtype=np.float64)
    ra, cc = compute(ds["adv_correct"].astype(np.float64).mean("sample"),
                     clean_correct(ds).astype(np.float64).mean() if include_clean else xr.DataArray(np.nan))
    auc, eps = _normalized_auc(eps, np.asarray(ra.transpose("attack", "eps").values), float(cc), include_clean)
    return xr.DataArray(auc, dims=("attack",), coords={"attack": ds["attack"].values}, name="robust_auc",
                        attrs={"eps_min": float(eps[0]), "eps_max": float(eps[-1]),
                               "include_clean": bool(include_clean)})


def _normalized_auc(eps: np.ndarray, acc: np.ndarray, clean: float,
                    include_clean: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid AUC of each row of ``acc`` (attack, eps) over ``eps`` / eps range; returns (auc, eps used)."""
    eps = np.asarray(eps, dtype=np.float64)
    acc = np.atleast_2d(np.asarray(acc, dtype=np.float64))
    if include_clean and eps[0] > 0:
        eps = np.concatenate([[0.0], eps])
        acc = np.concatenate([np.full((acc.shape[0], 1), clean), acc], axis=1)
    width = eps[-1] - eps[0]
    auc = np.trapezoid(acc, eps, axis=1) / width if width > 0 else acc[:, 0]
    return auc, eps


def min_flip_eps(ds: xr.Dataset) -> xr.DataArray:
    """Per sample, the smallest swept ε at which the attack flips the prediction.

    Uses the stored ``min_flip_eps`` (attack, sample) when the dump has it; otherwise derives it
    from ``adv_correct``: 0 for a sample misclassified without attack, else the smallest ε of the
    grid with ``adv_correct`` False, and +inf if no swept ε flips it. (ε is only known up to the
    grid: the true threshold lies between the previous grid value and this one.)

    Returns
    -------
    xarray.DataArray
        (attack, sample), float32, lazy on dask-backed dumps.
    """
    _require_attacks(ds, "min_flip_eps")
    if "min_flip_eps" in ds.variables:
        return ds["min_flip_eps"]
    out = flip_given_clean(first_flip_eps(ds), clean_correct(ds))
    out.name = "min_flip_eps"
    return out


def first_flip_eps(ds: xr.Dataset) -> xr.DataArray:
    """Per (attack, sample), the smallest swept ε with ``adv_correct`` False (+inf if none), ignoring the clean
    prediction; `flip_given_clean` turns it into `min_flip_eps` (lazy on dask-backed dumps)."""
    _require_attacks(ds, "first_flip_eps")
    eps = ds["eps"].astype(np.float64)
    return xr.where(~ds["adv_correct"], eps, math.inf).min("eps").transpose("attack", "sample")


def flip_given_clean(first: Any, clean: Any) -> Any:
    """`min_flip_eps` from `first_flip_eps` and the clean correctness (sample,): 0 where the clean prediction is
    wrong, float32. Works on DataArrays (lazy) and on numpy arrays ((attack, sample) and (sample,))."""
    if isinstance(first, xr.DataArray):
        return xr.where(clean, first, 0.0).astype(np.float32).transpose("attack", "sample")
    return np.where(np.asarray(clean, dtype=bool)[None, :], first, 0.0).astype(np.float32)
