"""Repeated simulations: 95% cluster-bootstrap intervals cover the true effects in at least 90% of them."""

from __future__ import annotations

import numpy as np
import pytest

from causalgeom.causal import mediate, simulate_mediation


@pytest.mark.slow
def test_cluster_bootstrap_coverage_two_mediators():
    rng = np.random.default_rng(20240601)
    hits: dict[str, list[bool]] = {}
    n_sim = 250
    for _ in range(n_sim):
        df, truth = simulate_mediation(n_runs_per_arm=20, n_samples=25, a=(1.0, -0.5), b=(1.0, 1.0), c=0.5,
                                       run_sd_m=0.5, run_sd_y=0.5, rng=rng)
        res = mediate(df, treatment="regularizer", control="ce", treated="treated", mediators=["m1", "m2"],
                      outcome="y", covariates=["x"], n_boot=400, rng=rng)
        for row in res.summary().itertuples():
            if row.effect in truth:
                hits.setdefault(row.effect, []).append(row.ci_low <= truth[row.effect] <= row.ci_high)
    coverage = {k: float(np.mean(v)) for k, v in hits.items()}
    assert set(coverage) >= {"total", "direct", "indirect", "indirect[m1]", "indirect[m2]", "prop_mediated"}
    for k, c in coverage.items():
        assert c >= 0.90, (k, coverage)


@pytest.mark.slow
def test_naive_bootstrap_undercovers_when_runs_differ():
    """The reason the cluster bootstrap is the default: ignoring runs gives intervals that miss the truth."""
    rng = np.random.default_rng(7)
    cl, nv = [], []
    for _ in range(60):
        df, truth = simulate_mediation(n_runs_per_arm=8, n_samples=40, run_sd_m=0.6, run_sd_y=0.6, rng=rng)
        kw = dict(treatment="regularizer", mediators="m1", outcome="y", covariates=["x"], n_boot=300)
        for out, scheme in ((cl, "cluster"), (nv, "naive")):
            s = mediate(df, bootstrap=scheme, rng=rng, **kw).summary().set_index("effect").loc["indirect"]
            out.append(s.ci_low <= truth["indirect"] <= s.ci_high)
    assert np.mean(cl) >= 0.85 and np.mean(nv) < 0.75, (np.mean(cl), np.mean(nv))
