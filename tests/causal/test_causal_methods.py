"""The three methods agree on a single-mediator linear case; DoWhy's refuters run and behave."""

from __future__ import annotations

import numpy as np
import pytest

from causalgeom.causal import mediate, refute, simulate_mediation


@pytest.fixture(scope="module")
def df():
    table, _ = simulate_mediation(n_runs_per_arm=6, n_samples=150, a=(1.0,), b=(1.5,), c=0.5, run_sd_m=0.3,
                                  run_sd_y=0.3, rng=0)
    return table


# statsmodels and DoWhy fit unpaired models: compare with the unpaired regression estimator
KW = dict(treatment="regularizer", control="ce", treated="treated", mediators="m1", outcome="y", covariates=["x"],
          paired_by=None)


def test_three_methods_agree(df):
    reg = mediate(df, method="regression", n_boot=200, rng=0, **KW).summary().set_index("effect")
    dw = mediate(df, method="dowhy", n_boot=200, rng=0, **KW)
    sm = mediate(df, method="statsmodels", n_boot=150, rng=0, **KW)
    d, s = dw.summary().set_index("effect"), sm.summary().set_index("effect")
    for e in ("total", "direct", "indirect", "prop_mediated"):
        assert d.loc[e, "estimate"] == pytest.approx(reg.loc[e, "estimate"], abs=1e-8), e
        # statsmodels' estimates are Monte Carlo means over simulated coefficients
        assert s.loc[e, "estimate"] == pytest.approx(reg.loc[e, "estimate"], abs=0.03), e
    # DoWhy shares the cluster bootstrap; statsmodels' per-sample simulation intervals are narrower here
    assert d.loc["indirect", "ci_low"] == pytest.approx(reg.loc["indirect", "ci_low"])
    width = lambda t: t.loc["indirect", "ci_high"] - t.loc["indirect", "ci_low"]  # noqa: E731
    assert width(s) < width(reg)
    assert "not clustered" not in sm.resampling and "ignore clustering" in sm.resampling
    assert sm.resampling_unit == "per-sample parametric simulation"
    assert "nonparametric-nde" in dw.estimator and "agrees with method='regression'" in dw.estimator


def test_methods_agree_for_continuous_treatment():
    table, _ = simulate_mediation(n_runs_per_arm=3, n_samples=100, continuous=[0.0, 0.5, 1.0], rng=1)
    kw = dict(treatment="strength", control=0.0, treated=0.5, mediators="m1", outcome="y", covariates=["x"],
              n_boot=0)
    reg = mediate(table, method="regression", paired_by=None, **kw).summary().set_index("effect").estimate
    dw = mediate(table, method="dowhy", **kw).summary().set_index("effect").estimate
    sm = mediate(table, method="statsmodels", rng=0, **{**kw, "n_boot": 200}).summary().set_index("effect").estimate
    assert np.allclose(dw.to_numpy(), reg.to_numpy(), atol=1e-8)
    assert np.allclose(sm[["total", "direct", "indirect"]].to_numpy(), reg[["total", "direct", "indirect"]].to_numpy(),
                       atol=0.03)


@pytest.mark.slow
def test_statsmodels_logistic_and_interaction_close_to_regression(df):
    t = df[df.run_id.isin(df.run_id.unique()[[0, 1, 2, 6, 7, 8]])]
    t = t.assign(yb=(t.y > t.y.median()).astype(int))
    kw = {**KW, "outcome": "yb", "outcome_model": "logistic", "interaction": True}
    reg = mediate(t, method="regression", n_boot=0, **kw).summary().set_index("effect").estimate
    sm = mediate(t, method="statsmodels", n_boot=40, rng=0, **kw).summary().set_index("effect").estimate
    for e in ("total", "direct", "indirect"):
        assert sm[e] == pytest.approx(reg[e], abs=0.04), e


def test_refuters(df):
    res = mediate(df, n_boot=0, **KW)
    out = refute(res, num_simulations=5, rng=0)
    assert out is res.refutations
    assert list(out.columns) == ["outcome", "mediator", "effect", "refuter", "estimate", "new_effect", "p_value",
                                 "passed", "status"]
    o = out.set_index(["effect", "refuter"])
    for eff in ("direct", "indirect"):
        est = o.loc[(eff, "random_common_cause"), "estimate"]
        # random common cause and run subsets: the effect stays
        assert o.loc[(eff, "random_common_cause"), "new_effect"] == pytest.approx(est, rel=0.05)
        assert o.loc[(eff, "data_subset_refuter"), "new_effect"] == pytest.approx(est, rel=0.2)
    assert "Refuters" in res.to_markdown()
    # a NaN p-value never reads as passed
    assert not out[out.p_value.isna()].passed.fillna(False).astype(bool).any()


def test_placebo_permutes_runs_not_images():
    """With 3 + 3 runs the placebo refuter enumerates the 20 run relabelings; it cannot reach p < 0.1, so its
    status is inconclusive at alpha = 0.05 (never "passed" on a p-value it cannot have)."""
    table, _ = simulate_mediation(n_runs_per_arm=3, n_samples=40, a=(2.0,), b=(2.0,), run_sd_m=0.05, run_sd_y=0.05,
                                  rng=3)
    res = mediate(table, treatment="regularizer", mediators="m1", outcome="y", n_boot=0)
    out = refute(res, methods=("placebo_treatment_refuter", "data_subset_refuter"), num_simulations=30, rng=0)
    pl = out[out.refuter == "placebo_treatment_refuter"].set_index("effect")
    # the observed labelling and its swap give the largest |effect|: p = 2/20 exactly
    assert pl.loc["indirect", "p_value"] == pytest.approx(0.1)
    assert pl.loc["indirect", "status"].startswith("inconclusive") and pl.loc["indirect", "passed"] is None
    # the mean placebo effect over all relabelings is near 0 next to the estimate
    assert abs(pl.loc["indirect", "new_effect"]) < 0.2 * abs(pl.loc["indirect", "estimate"])
    sub = out[out.refuter == "data_subset_refuter"]  # 2 of 3 runs per arm kept: the effects stay
    assert (sub.status == "passed").all()
    two = table[~table.run_id.isin(table.run_id.unique()[[0, 5]])]
    out2 = refute(mediate(two, treatment="regularizer", mediators="m1", outcome="y", n_boot=0),
                  methods=("data_subset_refuter",), num_simulations=5)
    assert out2.status.str.startswith("not run").all() and out2.p_value.isna().all() and out2.passed.isna().all()


def test_refuter_pass_with_enough_runs():
    table, _ = simulate_mediation(n_runs_per_arm=6, n_samples=30, a=(2.0,), b=(2.0,), run_sd_m=0.05,
                                  run_sd_y=0.05, rng=4)
    res = mediate(table, treatment="regularizer", mediators="m1", outcome="y", n_boot=0)
    out = refute(res, methods=("placebo_treatment_refuter", "data_subset_refuter"), num_simulations=40, rng=1)
    o = out.set_index(["effect", "refuter"])
    assert o.loc[("indirect", "placebo_treatment_refuter"), "status"] == "passed"
    assert o.loc[("indirect", "data_subset_refuter"), "status"] == "passed"
