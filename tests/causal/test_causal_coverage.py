"""Repeated simulations: 95% intervals cover the true effects (the cluster bootstrap with many runs, the default
CR2 intervals on crossed studies with 3 and 10 runs per arm)."""

from __future__ import annotations

import numpy as np
import pytest

from causalgeom.causal import mediate, simulate_mediation


@pytest.mark.slow
def test_cluster_bootstrap_coverage_two_mediators():  # 20 runs per arm: the bootstrap is fine there
    rng = np.random.default_rng(20240601)
    hits: dict[str, list[bool]] = {}
    withheld: list[str] = []
    n_sim = 250
    for _ in range(n_sim):
        df, truth = simulate_mediation(n_runs_per_arm=20, n_samples=25, a=(1.0, -0.5), b=(1.0, 1.0), c=0.5,
                                       run_sd_m=0.5, run_sd_y=0.5, rng=rng)
        res = mediate(df, treatment="regularizer", control="ce", treated="treated", mediators=["m1", "m2"],
                      outcome="y", covariates=["x"], n_boot=400, rng=rng, inference="bootstrap")
        for row in res.summary().itertuples():
            if row.effect == "prop_mediated" and np.isnan(row.estimate):
                withheld.append(row.note)  # "not estimable": the total's interval includes 0 / opposite signs
                continue
            if row.effect in truth:
                hits.setdefault(row.effect, []).append(row.ci_low <= truth[row.effect] <= row.ci_high)
    coverage = {k: float(np.mean(v)) for k, v in hits.items()}
    assert set(coverage) >= {"total", "direct", "indirect", "indirect[m1]", "indirect[m2]", "prop_mediated"}
    # the proportion is withheld in the studies where the total may be 0 or the parts disagree in sign; where it is
    # given, its Fieller interval covers
    assert len(withheld) < 0.2 * n_sim and all(n.startswith("not estimable") for n in withheld)
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


def _crossed_coverage(runs_per_arm: int, n_sim: int, n_images: int, seed: int) -> dict[str, float]:
    """Coverage of the default `mediate` (paired by image, CR2 t intervals) on crossed studies with shared image
    difficulty (confounding the mediator–outcome slope across images) and a treatment × mediator interaction."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {}
    for _ in range(n_sim):
        df, truth = simulate_mediation(n_runs_per_arm=runs_per_arm, n_samples=n_images, a=(1.0,), b=(0.5,), c=0.3,
                                       d=(0.3,), difficulty_m=1.0, difficulty_y=1.0, run_sd_m=0.5, run_sd_y=0.5,
                                       rng=rng)
        s = mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"], interaction=True,
                    rng=rng).summary().set_index("effect")
        for k in ("total", "direct", "indirect"):
            hits.setdefault(k, []).append(s.loc[k, "ci_low"] <= truth[k] <= s.loc[k, "ci_high"])
    return {k: float(np.mean(v)) for k, v in hits.items()}


@pytest.mark.slow
def test_default_coverage_three_runs_per_arm_crossed():
    """Issue 14's bar: >= 90% at 3 runs per arm. The benchmark (benchmarks/bench_coverage.py, 400 simulations)
    measures 94-95%; with 200 simulations the Monte Carlo SE is 1.5%, so 0.90 leaves > 2 SE of room."""
    cov = _crossed_coverage(3, 200, 40, seed=14)
    assert min(cov.values()) >= 0.90, cov


@pytest.mark.slow
def test_default_coverage_ten_runs_per_arm_crossed():
    """Issue 14's bar: >= 93% at 10 runs per arm (benchmark, 400 simulations). Here 100 simulations (Monte Carlo
    SE 2.2%): asserted at 0.90."""
    cov = _crossed_coverage(10, 100, 30, seed=15)
    assert min(cov.values()) >= 0.90, cov
