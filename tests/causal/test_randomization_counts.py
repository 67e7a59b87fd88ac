"""Randomization counts and the design's p-value floor in log space (issue 24, item 9): never an overflow,
exact against enumerated small cases."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from causalgeom.causal import mediate, simulate_mediation
from causalgeom.causal.inference import floor_words, log_assignments, randomization_floor, relabelings


@pytest.mark.parametrize("run_T", [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1],
                                   [0.0, 0.5, 0.5, 1.0], [0, 0, 1, 1, 2, 2, 2]])
def test_counts_and_floor_equal_enumeration(run_T):
    run_T = np.asarray(run_T, dtype=float)
    distinct = set(itertools.permutations(run_T.tolist()))  # the count by brute force
    floor, C = randomization_floor(run_T)
    assert C == len(distinct)
    assert math.exp(log_assignments(run_T)) == pytest.approx(len(distinct), rel=1e-12)
    vals, counts = np.unique(run_T, return_counts=True)
    sym = vals.size == 2 and counts[0] == counts[1]
    assert floor == pytest.approx((2.0 if sym else 1.0) / len(distinct), rel=1e-12)
    labels, exact = relabelings(run_T, 10, np.random.default_rng(0))
    assert exact and labels.shape[0] == len(distinct)


def test_large_counts_do_not_overflow():
    run_T = np.repeat([0.0, 1.0], 4000)  # 8,000 units: C(8000, 4000) ~ 10^2406, no float can hold it
    floor, C = randomization_floor(run_T)
    assert C is None and floor == 0.0
    # log C(8000, 4000) against Python's exact integer
    assert log_assignments(run_T) == pytest.approx(math.log(math.comb(8000, 4000)), rel=1e-12)
    assert "below any printable level" in floor_words(floor, log_count=log_assignments(run_T))
    # a count just above 2**53 keeps its floor, without the exact integer
    run_T = np.repeat([0.0, 1.0], 30)
    floor, C = randomization_floor(run_T)
    assert C is None and floor == pytest.approx(2.0 / math.comb(60, 30), rel=1e-12)
    labels, exact = relabelings(run_T, 7, np.random.default_rng(0))
    assert not exact and labels.shape == (7, 60)


def test_mediate_cluster_none_on_8000_rows():
    df, truth = simulate_mediation(n_runs_per_arm=4, n_samples=1000, rng=0)
    assert len(df) == 8000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mediate(df, treatment="regularizer", mediators="m1", outcome="y", cluster=None, rng=0)
    s = res.summary().set_index("effect")
    assert np.isfinite(s.loc["indirect", "estimate"]) and np.isfinite(s.loc["indirect", "ci_low"])
    assert any("below any printable level" in n for n in res.notes)
    # the randomization test with that many units draws relabelings instead of enumerating them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mediate(df, treatment="regularizer", mediators="m1", outcome="y", cluster=None, rng=0,
                      inference="permutation", n_boot=50)
    assert res.summary()["p_value"].dropna().min() >= 1 / 51
