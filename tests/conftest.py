"""Shared test fixtures: small synthetic runs and studies. Tests keep torch to one thread (2-core CI)."""

from __future__ import annotations

import numpy as np
import xarray as xr
import pytest

import causalgeom as cg

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


def make_run(n: int = 400, d: int = 16, k: int = 5, *, seed: int = 0, run_id: str = "run", bias: bool = True,
             attacks: bool = True, scale: float = 1.0, **attrs) -> xr.Dataset:
    """A synthetic schema-v1 run: Gaussian class clusters, a random head, consistent logits."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(k, d)).astype(np.float32)
    b = (rng.normal(size=k) * 0.1).astype(np.float32) if bias else np.zeros(k, np.float32)
    labels = rng.integers(0, k, n)
    f = (scale * (W[labels] * 0.5 + rng.normal(size=(n, d)))).astype(np.float32)
    logits = f @ W.T + b
    kw = {}
    if attacks:
        eps = [1 / 255, 2 / 255, 4 / 255]
        margin = np.stack([logits[np.arange(n), labels] - np.where(np.eye(k, dtype=bool)[labels], -np.inf, logits).max(1)
                           - 8 * e * np.abs(rng.normal(size=n)) for e in eps])[None].astype(np.float32)
        kw = dict(adv_correct=margin > 0, adv_margin=margin, attacks=["pgd-linf"], eps=eps)
    return cg.from_arrays(f, logits, labels, head_weight=W, head_bias=b,
                          attrs={"run_id": run_id, "regularizer": "ce", "seed": seed, **attrs}, **kw)


@pytest.fixture
def run_ds():
    return make_run()


@pytest.fixture
def make_run_fn():
    return make_run


def pytest_terminal_summary(terminalreporter):
    """Report how many malformed inputs the reliability corpus tried (issue 10)."""
    try:
        from tests.test_malformed import TRIED
    except ImportError:
        return
    if TRIED:
        terminalreporter.write_line(f"malformed inputs tried: {len(TRIED)} (each raised a causalgeom error)")
