"""The crossed design (runs × images): pairing by image, CR2, the randomization test and its floor, overlap,
estimands — against pyfixest, statsmodels and closed forms."""

from __future__ import annotations

import warnings
from math import comb

import numpy as np
import pandas as pd
import pyfixest as pf
import pytest
import statsmodels.api as sm
from scipy import stats

from causalgeom.causal import mediate, simulate_mediation
from causalgeom.causal.design import build_design
from causalgeom.causal.estimators import LinearMediation
from causalgeom.causal.inference import cr2_scores, fieller, randomization_floor, relabelings
from causalgeom.causal.mediation import _refit
from causalgeom.errors import QueryError


@pytest.fixture(scope="module")
def crossed():
    df, truth = simulate_mediation(n_runs_per_arm=3, n_samples=60, difficulty_m=1.0, difficulty_y=1.0, rng=3)
    df["T"] = (df.regularizer == "treated").astype(float)
    return df, truth


KW = dict(treatment="regularizer", mediators="m1", outcome="y", covariates=["x"])


# -- pairing ------------------------------------------------------------------------------------------------------
def test_auto_pairs_when_every_run_scored_the_same_images(crossed):
    df, _ = crossed
    r = mediate(df, **KW)
    assert r.design == "paired by image: image fixed effects absorbed by within-image demeaning (60 images × 6 runs)"
    assert r.estimand.startswith("effect over training runs")
    assert "image fixed effects" in r.estimator
    # one run scored other images: unpaired, with the reason
    other = df.assign(sample=np.where(df.run_id == df.run_id.iloc[0], df["sample"] + 1000, df["sample"]))
    r2 = mediate(other, **KW)
    assert r2.design.startswith("unpaired: the runs did not score the same sample ids") and r2.mundlak.empty
    with pytest.raises(QueryError, match="paired_by='sample': the runs cannot be paired by image: the runs did not"):
        mediate(other, paired_by="sample", **KW)
    dup = pd.concat([df, df[df.run_id == df.run_id.iloc[0]].head(3)])
    with pytest.raises(QueryError, match="pairs occur more than once"):
        mediate(dup, paired_by="sample", **KW)
    assert mediate(df, paired_by=None, **KW).design == "unpaired: paired_by=None"


def test_sample_id_is_not_a_covariate(crossed):
    df, _ = crossed
    with pytest.raises(QueryError, match="covariates: 'sample' is an image id.*paired_by='sample'"):
        mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["sample"])


@pytest.mark.slow  # pyfixest compiles its numba kernels on first use (~3 s)
def test_fixed_effect_slopes_and_cr1_match_pyfixest(crossed):
    df, _ = crossed
    d = build_design(df, paired_by="auto", **{k: v for k, v in KW.items() if k != "outcome"}, outcome="y")
    est = LinearMediation(d)
    est.point()
    co = est.coefficients()
    out = pf.feols("y ~ T + m1 + x | sample", data=df, vcov={"CRV1": "run_id"})
    med = pf.feols("m1 ~ T + x | sample", data=df, vcov={"CRV1": "run_id"})
    # same least squares, different algorithms (demeaning here, pyfixest's alternating projections): 1e-8
    assert co["b[m1->y]"] == pytest.approx(out.coef()["m1"], rel=1e-8)
    assert co["c[y]"] == pytest.approx(out.coef()["T"], rel=1e-8)
    assert co["a[m1]"] == pytest.approx(med.coef()["T"], rel=1e-8)
    # CR1 = CR0 · G/(G-1) · (N-1)/(N-k); pyfixest's default small-sample correction counts the 60 image effects in k
    cr0 = est.cr2("CR0")
    se0 = np.sqrt(np.diag(cr0.vcov_theta))
    G, N, n_img = 6, len(df), 60
    adj = lambda k: np.sqrt(G / (G - 1) * (N - 1) / (N - k - n_img))  # noqa: E731
    # stacked theta: mediator model [1, T, x], outcome model [1, T, m1, x]
    np.testing.assert_allclose(se0[[1, 2]] * adj(2), med.se()[["T", "x"]], rtol=1e-6)
    np.testing.assert_allclose(se0[[4, 5, 6]] * adj(3), out.se()[["T", "m1", "x"]], rtol=1e-6)


@pytest.mark.slow  # pyfixest (numba compilation on first use)
def test_mundlak_split_matches_outside_fits(crossed):
    df, _ = crossed
    m = mediate(df, **KW).mundlak.iloc[0]
    within = pf.feols("y ~ T + m1 + x | sample", data=df).coef()["m1"]
    pooled = sm.OLS(df.y, sm.add_constant(df[["T", "m1", "x"]])).fit().params["m1"]
    means = df.groupby("sample")[["y", "m1", "x"]].mean()
    between = sm.OLS(means.y, sm.add_constant(means[["m1", "x"]])).fit().params["m1"]
    assert (m["within"], m["between"], m["pooled"]) == pytest.approx((within, between, pooled), rel=1e-8)
    # image difficulty raises both mediator and outcome: the between-image slope is inflated
    assert m["between"] > m["within"]


# -- CR2 and the randomization test --------------------------------------------------------------------------------
def test_cr2_of_a_run_level_difference_is_the_neyman_variance():
    """CR2 of the slope of y on [1, T] with T per cluster and equal cluster sizes equals s1²/n1 + s0²/n0 of the
    cluster means (Bell & McCaffrey 2002; Imbens & Kolesár 2016, sec. 3)."""
    rng = np.random.default_rng(0)
    R, m = 7, 5
    t = np.array([0, 0, 0, 1, 1, 1, 1], float)
    codes = np.repeat(np.arange(R), m)
    y = rng.normal(size=R)[codes] + rng.normal(size=R * m) + 2 * t[codes]
    Z = np.column_stack([np.ones(R * m), t[codes]])
    A = Z.T @ Z
    beta = np.linalg.solve(A, Z.T @ y)
    e = y - Z @ beta
    Gc = np.stack([Z[codes == g].T @ Z[codes == g] for g in range(R)])
    Ge = np.stack([Z[codes == g].T @ e[codes == g] for g in range(R)])
    psi, ok = cr2_scores(Gc, Ge, A)
    ybar = np.array([y[codes == g].mean() for g in range(R)])
    neyman = ybar[t == 1].var(ddof=1) / 4 + ybar[t == 0].var(ddof=1) / 3
    assert ok and (psi.T @ psi)[1, 1] == pytest.approx(neyman, rel=1e-10)


def test_randomization_floor_and_enumeration():
    assert randomization_floor(np.array([0, 0, 0, 1, 1, 1.0])) == (pytest.approx(2 / comb(6, 3)), 20)
    assert randomization_floor(np.array([0, 0, 1, 1, 1.0]))[0] == pytest.approx(1 / comb(5, 2))
    labels, exact = relabelings(np.array([0, 0, 0, 1, 1, 1.0]), 10, np.random.default_rng(0))
    assert exact and labels.shape == (20, 6) and len({tuple(r) for r in labels}) == 20 and (labels.sum(1) == 3).all()


def test_no_p_value_below_the_floor_with_three_runs_per_arm():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=50, a=(3.0,), b=(2.0,), c=2.0, run_sd_m=0.05,
                               run_sd_y=0.05, rng=4)
    for inference in ("cr2", "permutation", "bootstrap"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = mediate(df, inference=inference, n_boot=200, rng=0, **KW).summary()
        p = s.p_value.dropna()
        assert (p >= 0.1 - 1e-12).all(), inference
        assert np.allclose(s.p_floor.dropna(), 0.1)
        at = s[np.isclose(s.p_value, 0.1)]
        assert len(at) and at.note.str.contains("p ≥ 0.1 \\(design floor\\)").all(), inference


def test_fast_relabeling_equals_refit(crossed):
    df, _ = crossed
    d = build_design(df, paired_by="auto", **KW)
    est = LinearMediation(d)
    est.point()
    labels, _ = relabelings(d.run_T, 0, np.random.default_rng(0))
    fast = est.relabeled(labels[:5])
    slow = np.stack([_refit(est, d, lab) for lab in labels[:5]])
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)  # same model, Gram algebra vs refit


def test_permutation_p_values_are_exact_shares():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=30, rng=5)
    s = mediate(df, inference="permutation", **KW).summary().set_index("effect")
    # 20 relabelings: every p-value is a multiple of 1/20 and at least 2/20
    p = s.p_value.dropna().to_numpy()
    assert np.allclose(p * 20, np.round(p * 20)) and (p >= 0.1 - 1e-12).all()


# -- support, proportions, outcome model, estimands ----------------------------------------------------------------
def test_prop_mediated_is_nan_when_the_total_may_be_zero():
    df, _ = simulate_mediation(n_runs_per_arm=5, n_samples=40, a=(1.0,), b=(1.0,), c=-0.9, rng=6)
    s = mediate(df, **KW).summary().set_index("effect")
    assert s.loc["total", "ci_low"] <= 0 <= s.loc["total", "ci_high"]
    assert np.isnan(s.loc["prop_mediated", ["estimate", "ci_low", "ci_high", "p_value"]].astype(float)).all()
    assert s.loc["prop_mediated", "note"].startswith("not estimable")
    df2, _ = simulate_mediation(n_runs_per_arm=5, n_samples=40, a=(1.0,), b=(1.0,), c=1.0, run_sd_m=0.1,
                                run_sd_y=0.1, rng=6)
    s2 = mediate(df2, **KW).summary().set_index("effect")
    assert s2.loc["prop_mediated", "note"] == "Fieller interval; no p-value"
    assert np.isnan(s2.loc["prop_mediated", "p_value"])
    assert s2.loc["prop_mediated", "ci_low"] < s2.loc["prop_mediated", "estimate"] < s2.loc["prop_mediated", "ci_high"]


def test_overlap_and_extrapolated_note():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=40, a=(20.0,), b=(0.1,), rng=7)
    r = mediate(df, **KW)
    o = r.overlap.set_index("mediator").loc["m1"]
    assert o.share_treated_in_control_range == 0 and not o.supported
    s = r.summary().set_index("effect")
    assert "extrapolated" in s.loc["indirect", "note"] and "extrapolated" in s.loc["direct", "note"]
    assert "extrapolated" not in s.loc["total", "note"]
    ok = mediate(simulate_mediation(n_runs_per_arm=3, n_samples=40, rng=7)[0], **KW).overlap
    assert ok.supported.all() and list(ok.columns) == ["mediator", "share_treated_in_control_range",
                                                       "share_control_in_treated_range", "supported"]


def test_binary_outcome_defaults_to_logistic():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=40, rng=8)
    df["yb"] = (df.y > df.y.median()).astype(int)
    r = mediate(df, treatment="regularizer", mediators="m1", outcome="yb", covariates=["x"])
    assert r._options["outcome_model"] == "logistic" and "logistic" in r.estimator
    assert any("need not add up" in n for n in r.notes)
    s = r.summary().set_index("effect")
    assert s.loc["total", "estimate"] == pytest.approx(s.loc["direct", "estimate"] + s.loc["indirect", "estimate"])
    assert np.isfinite(s.loc[["total", "direct", "indirect"], "ci_low"]).all()


def test_one_run_per_arm_gives_the_model_conditional_estimand():
    df, _ = simulate_mediation(n_runs_per_arm=1, n_samples=80, rng=9)
    with pytest.raises(QueryError, match="estimand='runs'.*undefined with one run.*estimand='model'"):
        mediate(df, estimand="runs", **KW)
    r = mediate(df, **KW)
    assert r.estimand == "model-conditional: these models, inference over test images (paired by image)"
    assert r.n_clusters == 80 and any("model-conditional" in n for n in r.notes)
    assert r.summary().p_floor.dropna().eq(0).all()
    # the treatment coefficient of the mediator model is the mean paired difference; its CR2 variance over images
    # is the paired t-test's s²/n (closed form)
    d = build_design(df, paired_by="auto", estimand="model", treatment="regularizer", mediators="m1",
                     outcome="y")
    est = LinearMediation(d)
    est.point()
    piv = df.pivot(index="sample", columns="regularizer", values="m1")
    diff = piv["treated"] - piv["ce"]
    cr2 = est.cr2()
    assert cr2.theta[1] == pytest.approx(diff.mean(), rel=1e-10)
    assert cr2.vcov_theta[1, 1] == pytest.approx(diff.var(ddof=1) / len(diff), rel=1e-8)
    assert stats.ttest_rel(piv["treated"], piv["ce"]).pvalue > 0  # the reference test runs on the same pairs


def test_two_way_bootstrap_runs_and_needs_pairing(crossed):
    df, _ = crossed
    r = mediate(df, inference="bootstrap", bootstrap="two-way", n_boot=50, rng=0, **KW)
    assert r.resampling_unit == "two-way (runs × images)" and r.replicates.shape[0] == 50
    with pytest.raises(QueryError, match="two-way.*needs a design paired by image"):
        mediate(df, inference="bootstrap", bootstrap="two-way", paired_by=None, n_boot=10, **KW)


def test_inference_option_lists_allowed_values(crossed):
    df, _ = crossed
    with pytest.raises(QueryError, match=r"inference: expected one of \['cr2', 'permutation', "
                                         r"'wild', 'bootstrap', None\], got 'jackknife'"):
        mediate(df, inference="jackknife", **KW)
    with pytest.raises(QueryError, match="paired_by: expected one of"):
        mediate(df, paired_by="image", **KW)


def test_wild_bootstrap_replicates_are_the_refits_of_reweighted_residuals(crossed):
    """For least squares, multiplying each cluster's residuals by v_g and refitting gives theta + sum_g v_g psi_g
    (CR0 scores here, so the identity is exact): checked against a refit of the outcome model by numpy."""
    df, _ = crossed
    d = build_design(df, paired_by=None, **KW)
    est = LinearMediation(d)
    est.point()
    cr0 = est.cr2("CR0")
    v = np.array([1.0, -1.0, 0.5, 2.0, -0.7, 1.3])
    theta = cr0.theta + v @ cr0.psi
    Z = np.column_stack([np.ones(len(df)), df["T"], df.m1 - df.m1.mean(), df.x - df.x.mean()])
    y = df.y.to_numpy() - df.y.mean()
    beta = np.linalg.lstsq(Z, y, rcond=None)[0]
    e = y - Z @ beta
    ystar = Z @ beta + v[d.codes] * e
    np.testing.assert_allclose(theta[3:], np.linalg.lstsq(Z, ystar, rcond=None)[0], rtol=1e-8, atol=1e-10)
    r = mediate(df, inference="wild", n_boot=300, rng=0, **KW)
    assert r.resampling_unit == "wild cluster (run_id)" and r.replicates.shape == (300, 4, 1)
    s = r.summary().set_index("effect")
    assert s.loc["indirect", "ci_low"] < s.loc["indirect", "estimate"] < s.loc["indirect", "ci_high"]


def test_fieller_interval_solves_its_quadratic():
    """Fieller (1954): the limits r solve (n - r d)² = q² (v_n - 2 r c + r² v_d); with v_d = c = 0 the interval is
    the numerator's interval divided by d (closed form)."""
    n, d, vn, vd, c, q = 0.8, 2.0, 0.04, 0.09, 0.01, 1.96
    lo, hi = fieller(n, d, vn, vd, c, q)
    for r in (lo, hi):
        assert (n - r * d) ** 2 == pytest.approx(q ** 2 * (vn - 2 * r * c + r ** 2 * vd), rel=1e-10)
    assert lo < n / d < hi
    assert fieller(n, d, vn, 0.0, 0.0, q) == pytest.approx(((n - q * 0.2) / d, (n + q * 0.2) / d), rel=1e-12)
    assert np.isnan(fieller(n, 0.1, vn, vd, c, q)[0])  # denominator not away from 0: unbounded, reported as NaN


def test_permutation_needs_runs_and_other_methods_say_they_are_unpaired(crossed):
    df, _ = crossed
    one = df[df.run_id.isin(df.run_id.unique()[[0, 3]])]  # one run per arm: model-conditional estimand
    with pytest.raises(QueryError, match="inference='permutation' relabels the treatment across runs"):
        mediate(one, inference="permutation", **KW)
    r = mediate(df, method="statsmodels", n_boot=2, **KW)
    assert r.design == "unpaired: method='statsmodels' fits unpaired models"
