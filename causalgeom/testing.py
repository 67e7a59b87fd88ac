"""Synthetic runs and studies for tests, examples and benchmarks (numpy only; no torch).

`make_run` builds one schema-v1 run whose logits are ``features @ W.T + b`` (computed in float32); `make_study` writes a
study of such runs, half of them "treated" with smaller features (the regularizer's effect on magnitude in the
paper's hypothesis); `assert_valid_run` is the check a test makes on any run it produced.

>>> from causalgeom.testing import make_run, assert_valid_run
>>> ds = make_run(n=50, d=4, k=3, seed=1)
>>> assert_valid_run(ds, n=50, d=4, k=3)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from .errors import ConfigError, SchemaError
from .dump.schema import from_arrays, validate

__all__ = ["make_run", "make_study", "assert_valid_run", "SYNTHETIC_EPS"]

#: The ε grid of the synthetic attack outcomes of `make_run` (one attack, ``"pgd-linf"``).
SYNTHETIC_EPS = (1 / 255, 2 / 255, 4 / 255)


def make_run(n: int = 400, d: int = 16, k: int = 5, *, seed: int = 0, run_id: str = "run", bias: bool = True,
             attacks: bool = True, scale: float = 1.0, labels: Any = None, **attrs: Any) -> xr.Dataset:
    """A synthetic schema-v1 run: Gaussian class clusters, a random head, consistent logits.

    Parameters
    ----------
    n, d, k : int
        Samples, feature dimension, classes.
    seed : int
        Seeds the run's numbers (``numpy.random.default_rng(seed)``) and is stored as the ``seed`` attribute.
    run_id : str
    bias : bool
        Draw a head bias (else zeros).
    attacks : bool
        Add one attack (``"pgd-linf"``) at `SYNTHETIC_EPS`: ``adv_margin`` is the clean margin minus
        ``8 eps |z|`` (z standard normal), ``adv_correct = adv_margin > 0``.
    scale : float
        Multiplies the features (a smaller scale: smaller feature norms, less confident logits).
    labels : array_like of int, shape (n,), optional
        The samples' classes (default: drawn from ``seed``); runs given the same labels score "the same images".
    **attrs
        More run attributes (``regularizer``, ``strength``, ...); default ``regularizer="ce"``.

    Returns
    -------
    xarray.Dataset
        Dims sample (n), feature (d), class (k) [, attack (1), eps (3)]. Features ``f = scale (W[y]/2 + e)``
        with ``e ~ N(0, I_d)``, ``W ~ N(0, 1)`` (k, d), ``b ~ N(0, 0.01)``; logits ``f @ W.T + b``.
    """
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(k, d)).astype(np.float32)
    b = (rng.normal(size=k) * 0.1).astype(np.float32) if bias else np.zeros(k, np.float32)
    labels = rng.integers(0, k, n) if labels is None else np.asarray(labels, dtype=np.int64)
    f = (scale * (W[labels] * 0.5 + rng.normal(size=(n, d)))).astype(np.float32)
    logits = f @ W.T + b
    kw: dict[str, Any] = {}
    if attacks:
        eps = list(SYNTHETIC_EPS)
        others = np.where(np.eye(k, dtype=bool)[labels], -np.inf, logits).max(1)
        margin = np.stack([logits[np.arange(n), labels] - others - 8 * e * np.abs(rng.normal(size=n))
                           for e in eps])[None].astype(np.float32)
        kw = dict(adv_correct=margin > 0, adv_margin=margin, attacks=["pgd-linf"], eps=eps)
    return from_arrays(f, logits, labels, head_weight=W, head_bias=b,
                       attrs={"run_id": run_id, "regularizer": "ce", "seed": seed, **attrs}, **kw)


def make_study(path: str | os.PathLike, n_runs: int = 4, *, n: int = 120, d: int = 8, k: int = 4, seed: int = 0,
               treated: str = "label_smoothing", strength: float = 0.1, shrink: float = 0.3,
               attacks: bool = True, sample_chunk: int | None = None, compressor: str | None = None,
               paired: bool = False) -> Any:
    """Write a study of ``n_runs`` synthetic runs at ``path`` and return it (`causalgeom.dump.study.Study`).

    The first half of the runs are controls (``regularizer="ce"``, ``strength=0``, run ids ``ce-sSEED``); the
    others are treated (``regularizer=treated``, ``strength``, run ids ``ls-sSEED``) and have their features
    scaled by ``1 - shrink``. Run ``i`` uses seed ``seed + i``.

    Parameters
    ----------
    path : path-like
        The study folder (created; must not hold runs with the same ids).
    n_runs : int
        At least 2 (one control, one treated).
    n, d, k : int
        Per-run sizes, as in `make_run`.
    seed : int
    treated : str
        Regularizer name of the treated runs.
    strength : float
    shrink : float
        Treated features are ``1 - shrink`` times a control's (0 <= shrink < 1).
    attacks : bool
        As in `make_run`.
    sample_chunk, compressor : optional
        Stored chunking and codec of every run, as in `causalgeom.save` (default: its defaults).
    paired : bool
        Every run scores the same samples (the labels drawn once from ``seed``), as in a real study where all
        runs are evaluated on one test set; needed by `causalgeom.causal.decompose`. Default: labels per run.

    Returns
    -------
    causalgeom.dump.study.Study
    """
    from .dump.study import open_study  # the study folder needs the store; imported here to keep this module light

    if n_runs < 2:
        raise ConfigError(f"n_runs: expected at least 2 (a control and a treated run), got {n_runs!r}")
    if not 0 <= shrink < 1:
        raise ConfigError(f"shrink: expected 0 <= shrink < 1, got {shrink!r}")
    study = open_study(path, create=True)
    for i in range(n_runs):
        is_treated = i >= n_runs // 2
        s = seed + i
        if is_treated:
            extra = {"regularizer": treated, "strength": float(strength)}
        else:
            extra = {"regularizer": "ce", "strength": 0.0}
        labels = np.random.default_rng(seed).integers(0, k, n) if paired else None
        study.add(make_run(n=n, d=d, k=k, seed=s, run_id=f"{'ls' if is_treated else 'ce'}-s{s}",
                           scale=1.0 - shrink * is_treated, attacks=attacks, labels=labels, **extra),
                  sample_chunk=sample_chunk, compressor=compressor)
    return study


def assert_valid_run(run: xr.Dataset | str | os.PathLike, *, n: int | None = None, d: int | None = None,
                     k: int | None = None) -> xr.Dataset:
    """Assert that ``run`` is a valid, complete schema-v1 run with the given sizes; return it as a Dataset.

    Parameters
    ----------
    run : xarray.Dataset or path-like
        A run in memory, or a store path (then it must be complete, see `causalgeom.dump.store.is_complete`).
    n, d, k : int, optional
        Expected sizes of ``sample``, ``feature``, ``class``.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    AssertionError
        Naming what is wrong. The schema rules (dims, dtypes, finite values, ``logits = features @ W.T + b``
        within its tolerance) are `causalgeom.dump.schema.validate`'s; its `SchemaError` is turned into an
        AssertionError with the same message.
    """

    if not isinstance(run, xr.Dataset):
        from .dump.store import is_complete, open as open_run

        if not is_complete(run):
            raise AssertionError(f"store {run} is not complete (no completion mark)")
        run = open_run(run)
    try:
        validate(run, check_values=True)
    except SchemaError as exc:
        raise AssertionError(f"not a valid schema-v1 run: {exc}") from None
    for dim, want in (("sample", n), ("feature", d), ("class", k)):
        if want is not None and run.sizes.get(dim) != want:
            raise AssertionError(f"dim {dim!r}: expected {want}, got {run.sizes.get(dim)}")
    return run
