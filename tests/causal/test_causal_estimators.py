"""The regression mediation estimator against known truths and outside references (statsmodels OLS/Logit)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from causalgeom.causal import (FewClustersWarning, bootstrap_pvalue, effect_names, mediate, percentile_ci,
                               simulate_mediation)
from causalgeom.causal.design import build_design
from causalgeom.causal.bootstrap import ReplicateBatch, cluster_counts, replicate_batches
from causalgeom.causal.estimators import LinearMediation


def _est(df, **kw):
    r = mediate(df, treatment=kw.pop("treatment", "regularizer"), mediators=kw.pop("mediators", ["m1"]),
                outcome=kw.pop("outcome", "y"), covariates=kw.pop("covariates", ["x"]), n_boot=kw.pop("n_boot", 0),
                rng=0, paired_by=kw.pop("paired_by", None), **kw)
    return r.summary().set_index("effect")["estimate"]


# -- recovery of known effects ------------------------------------------------------------------------------------
def test_recovers_one_mediator():
    df, truth = simulate_mediation(n_runs_per_arm=30, n_samples=100, a=(1.0,), b=(2.0,), c=0.5, run_sd_m=0.05,
                                   run_sd_y=0.05, rng=1)
    est = _est(df)
    for k in ("total", "direct", "indirect", "prop_mediated"):
        assert est[k] == pytest.approx(truth[k], abs=0.08), k


def test_recovers_two_parallel_mediators():
    df, truth = simulate_mediation(n_runs_per_arm=30, n_samples=100, a=(1.0, -0.5), b=(1.0, 2.0), c=0.3,
                                   run_sd_m=0.02, run_sd_y=0.02, noise_m=0.3, noise_y=0.3, rng=2)
    est = _est(df, mediators=["m1", "m2"])
    for k in ("total", "direct", "indirect", "indirect[m1]", "indirect[m2]"):
        assert est[k] == pytest.approx(truth[k], abs=0.08), k
    assert est["indirect"] == pytest.approx(est["indirect[m1]"] + est["indirect[m2]"], abs=1e-12)
    assert est["total"] == pytest.approx(est["direct"] + est["indirect"], abs=1e-12)


def test_recovers_ordered_mediators_in_either_order():
    df, truth = simulate_mediation(n_runs_per_arm=30, n_samples=100, a=(1.0, -0.5), b=(1.0, 2.0), c=0.3, theta=0.7,
                                   run_sd_m=0.02, run_sd_y=0.02, noise_m=0.3, noise_y=0.3, rng=3)
    est = _est(df, mediators=["m1", "m2"], ordered=True)
    for k in ("total", "direct", "indirect", "indirect[m1]", "indirect[m1->m2]", "indirect[m2]"):
        assert est[k] == pytest.approx(truth[k], abs=0.12), k
    # the joint indirect effect does not depend on the order, nor on whether the mediators are ordered
    rev = _est(df, mediators=["m2", "m1"], ordered=True)
    par = _est(df, mediators=["m1", "m2"])
    assert rev["indirect"] == pytest.approx(est["indirect"], abs=1e-10)
    assert par["indirect"] == pytest.approx(est["indirect"], abs=1e-10)
    assert est["indirect[m1]"] + est["indirect[m1->m2]"] + est["indirect[m2]"] == pytest.approx(est["indirect"])


def test_recovers_continuous_treatment_per_unit_and_between_values():
    df, truth = simulate_mediation(n_runs_per_arm=8, n_samples=100, continuous=[0.0, 1.0, 2.0, 3.0], a=(0.8,),
                                   b=(1.5,), c=-0.4, run_sd_m=0.02, run_sd_y=0.02, noise_m=0.3, noise_y=0.3, rng=4)
    per_unit = _est(df, treatment="strength")
    for k in ("total", "direct", "indirect"):
        assert per_unit[k] == pytest.approx(truth[k], abs=0.05), k
    between = _est(df, treatment="strength", control=1.0, treated=3.0)
    for k in ("total", "direct", "indirect"):
        assert between[k] == pytest.approx(2 * per_unit[k], rel=1e-10), k


def test_categorical_treatment_with_other_levels_drops_rows():
    df, _ = simulate_mediation(n_runs_per_arm=4, n_samples=20, rng=5)
    extra = df[df.regularizer == "treated"].assign(regularizer="mixup", run_id=lambda d: d.run_id + "x")
    both = pd.concat([df, extra], ignore_index=True)
    r = mediate(both, treatment="regularizer", control="ce", treated="treated", mediators="m1", outcome="y",
                n_boot=0)
    assert r.n_samples == len(df)
    assert any("left out" in n for n in r.notes)
    assert r.summary()["estimate"].tolist() == pytest.approx(
        mediate(df, treatment="regularizer", mediators="m1", outcome="y", n_boot=0).summary()["estimate"].tolist())


# -- outside references -------------------------------------------------------------------------------------------
def _ols(y, X):
    X = np.column_stack([np.asarray(X, float)]) if np.ndim(X) == 1 else np.asarray(X, float)
    return np.asarray(sm.OLS(np.asarray(y, float), sm.add_constant(X, has_constant="add")).fit().params)


def test_product_of_coefficients_equals_statsmodels_ols():
    df, _ = simulate_mediation(n_runs_per_arm=5, n_samples=60, a=(1.0, 0.4), b=(0.7, -1.2), rng=6)
    est = _est(df, mediators=["m1", "m2"])
    T = (df.regularizer == "treated").to_numpy(float)
    X = np.column_stack([T, df.x.to_numpy()])
    a1, a2 = _ols(df.m1.to_numpy(), X)[1], _ols(df.m2.to_numpy(), X)[1]
    p = _ols(df.y, np.column_stack([T, df.m1.to_numpy(), df.m2.to_numpy(), df.x.to_numpy()]))
    assert est["direct"] == pytest.approx(p[1], abs=1e-10)
    assert est["indirect[m1]"] == pytest.approx(a1 * p[2], abs=1e-10)
    assert est["indirect[m2]"] == pytest.approx(a2 * p[3], abs=1e-10)
    assert est["total"] == pytest.approx(_ols(df.y, X)[1], abs=1e-10)  # OLS identity: total = c + sum a_j b_j


def _gformula(df, T, t0, t1, mediators, predict, a):
    """Reference g-formula: average predictions with mediators shifted to M + a (t' - T)."""
    def po(t, tm):
        M = {m: df[m].to_numpy() + a[m] * (tm[m] - T) for m in mediators}
        return predict(np.full(len(df), t), M).mean()

    t0m, t1m = {m: t0 for m in mediators}, {m: t1 for m in mediators}
    p00, p10, p11 = po(t0, t0m), po(t1, t0m), po(t1, t1m)
    out = {"total": p11 - p00, "direct": p10 - p00, "indirect": p11 - p10}
    if len(mediators) > 1:
        for m in mediators:
            out[f"indirect[{m}]"] = po(t1, {**t0m, m: t1}) - p10
    return out


def test_interaction_matches_reference_gformula():
    df, _ = simulate_mediation(n_runs_per_arm=5, n_samples=80, a=(1.0, 0.5), b=(0.7, -0.4), rng=7)
    df["y"] = df["y"] + 0.6 * (df.regularizer == "treated") * df.m1
    est = _est(df, mediators=["m1", "m2"], interaction=True)
    T = (df.regularizer == "treated").to_numpy(float)
    a = {m: _ols(df[m], np.column_stack([T, df.x.to_numpy()]))[1] for m in ("m1", "m2")}
    m1, m2, x = df.m1.to_numpy(), df.m2.to_numpy(), df.x.to_numpy()
    p = _ols(df.y, np.column_stack([T, m1, m2, x, T * m1, T * m2]))

    def predict(t, M):
        return p[0] + p[1] * t + p[2] * M["m1"] + p[3] * M["m2"] + p[4] * x + p[5] * t * M["m1"] + p[6] * t * M["m2"]

    ref = _gformula(df, T, 0.0, 1.0, ["m1", "m2"], predict, a)
    for k, v in ref.items():
        assert est[k] == pytest.approx(v, abs=1e-9), k


def test_logistic_gformula_matches_reference():
    df, _ = simulate_mediation(n_runs_per_arm=6, n_samples=80, a=(1.0, -0.5), b=(0.8, 0.5), rng=8)
    rng = np.random.default_rng(0)
    df["yb"] = (rng.random(len(df)) < 1 / (1 + np.exp(-(df.y - df.y.mean())))).astype(int)
    est = _est(df, mediators=["m1", "m2"], outcome="yb", outcome_model="logistic", interaction=True)
    T = (df.regularizer == "treated").to_numpy(float)
    a = {m: _ols(df[m], np.column_stack([T, df.x.to_numpy()]))[1] for m in ("m1", "m2")}
    m1, m2, x = df.m1.to_numpy(), df.m2.to_numpy(), df.x.to_numpy()
    Xy = sm.add_constant(np.column_stack([T, m1, m2, x, T * m1, T * m2]))
    p = np.asarray(sm.Logit(df.yb.to_numpy(), Xy).fit(disp=0, tol=1e-12, maxiter=200).params)

    def predict(t, M):
        eta = p[0] + p[1] * t + p[2] * M["m1"] + p[3] * M["m2"] + p[4] * x + p[5] * t * M["m1"] + p[6] * t * M["m2"]
        return 1 / (1 + np.exp(-eta))

    ref = _gformula(df, T, 0.0, 1.0, ["m1", "m2"], predict, a)
    for k, v in ref.items():
        assert est[k] == pytest.approx(v, abs=1e-7), k


def test_linear_gformula_and_closed_form_agree_for_continuous_treatment():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=50, continuous=[0.0, 0.5, 1.5], rng=9)
    df["y"] = df["y"] + 0.3 * df.strength * df.m1
    est = _est(df, treatment="strength", control=0.5, treated=1.5, interaction=True)
    T = df.strength.to_numpy()
    a = {"m1": _ols(df.m1.to_numpy(), np.column_stack([T, df.x.to_numpy()]))[1]}
    p = _ols(df.y, np.column_stack([T, df.m1.to_numpy(), df.x.to_numpy(), T * df.m1]))
    ref = _gformula(df, T, 0.5, 1.5, ["m1"],
                    lambda t, M: p[0] + p[1] * t + p[2] * M["m1"] + p[3] * df.x.to_numpy() + p[4] * t * M["m1"], a)
    for k, v in ref.items():
        assert est[k] == pytest.approx(v, abs=1e-9), k


# -- the bootstrap ------------------------------------------------------------------------------------------------
def test_cluster_counts_keep_arms():
    strata = np.array([0, 0, 0, 1, 1, 1, 1])
    k = cluster_counts(7, strata, 500, np.random.default_rng(0))
    assert k.shape == (500, 7)
    assert (k[:, :3].sum(1) == 3).all() and (k[:, 3:].sum(1) == 4).all()
    assert k[:, 0].mean() == pytest.approx(1.0, abs=0.15)


def test_two_stage_weights_sum_to_cluster_sizes():
    codes = np.repeat(np.arange(4), [4, 4, 3, 3])
    strata = np.array([0, 0, 1, 1])
    (batch,) = list(replicate_batches("cluster+samples", codes=codes, n_clusters=4, strata=strata, row_strata=None,
                                      B=50, rng=np.random.default_rng(1), batch_size=100))
    w = batch.rows()
    assert w.shape == (50, 14)
    assert (w[:, :8].sum(1) == 8).all() and (w[:, 8:].sum(1) == 6).all()  # equal-size clusters: arm totals kept
    assert set(np.unique(w[:, :4].sum(1))) <= {0, 4, 8}  # a cluster contributes k * n_r rows
    (naive,) = list(replicate_batches("naive", codes=codes, n_clusters=4, strata=None, row_strata=(codes >= 2) * 1,
                                      B=20, rng=np.random.default_rng(1), batch_size=100))
    assert (naive.rows()[:, :8].sum(1) == 8).all()


@pytest.mark.parametrize("outcome_model", ["linear", "logistic"])
def test_cluster_replicate_equals_refit_on_resampled_clusters(outcome_model):
    df, _ = simulate_mediation(n_runs_per_arm=4, n_samples=40, rng=10)
    df["yb"] = (df.y > df.y.median()).astype(int)
    y = "y" if outcome_model == "linear" else "yb"
    d = build_design(df, treatment="regularizer", mediators=["m1"], outcome=y, covariates=["x"], control="ce",
                     treated="treated", outcome_model=outcome_model)
    est = LinearMediation(d, outcome_model=outcome_model)
    est.point()
    counts = cluster_counts(d.n_clusters, d.strata, 3, np.random.default_rng(2))
    reps, _ = est.replicate(ReplicateBatch(counts, None, d.codes))
    names = effect_names(["m1"], False)
    for b in range(3):
        parts = [df[df.run_id == name] for r, name in enumerate(d.cluster_names) for _ in range(counts[b, r])]
        rs = pd.concat(parts, ignore_index=True)
        ref = mediate(rs, treatment="regularizer", control="ce", treated="treated", mediators="m1", outcome=y,
                      covariates=["x"], n_boot=0, outcome_model=outcome_model, inference="bootstrap", paired_by=None)
        got = dict(zip(names, reps[b, :, 0]))
        for row in ref.summary().itertuples():
            if row.effect == "prop_mediated" and np.isnan(row.estimate):  # opposite-signed components
                assert row.note.startswith("not estimable")
                continue
            assert got[row.effect] == pytest.approx(row.estimate, abs=1e-7), (b, row.effect)


def test_naive_replicate_equals_weighted_refit():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=30, rng=11)
    d = build_design(df, treatment="regularizer", mediators=["m1"], outcome="y", covariates=["x"])
    est = LinearMediation(d)
    w = np.random.default_rng(3).integers(0, 3, size=(1, d.n)).astype(float)
    rep = est.effects_from_grams(est.weighted_grams(w))[0, :, 0]
    rs = df.loc[np.repeat(np.arange(len(df)), w[0].astype(int))]
    ref = _est(rs)
    assert rep[:3] == pytest.approx(ref[["total", "direct", "indirect"]].to_numpy(), abs=1e-9)


def test_cluster_interval_wider_than_naive_when_runs_differ():
    df, _ = simulate_mediation(n_runs_per_arm=8, n_samples=150, run_sd_m=0.8, run_sd_y=0.8, rng=12)
    kw = dict(treatment="regularizer", mediators="m1", outcome="y", covariates=["x"], n_boot=400)
    cl = mediate(df, rng=1, **kw).summary().set_index("effect")
    nv = mediate(df, rng=1, bootstrap="naive", **kw)
    assert "NAIVE" in nv.resampling and nv.resampling_unit == "naive per-sample"
    nv = nv.summary().set_index("effect")
    for e in ("total", "direct", "indirect"):
        assert (cl.loc[e, "ci_high"] - cl.loc[e, "ci_low"]) > 1.5 * (nv.loc[e, "ci_high"] - nv.loc[e, "ci_low"]), e
    two = mediate(df, rng=1, bootstrap="cluster+samples", **kw)
    assert two.resampling_unit.startswith("two-stage")


def test_rng_makes_results_reproducible():
    df, _ = simulate_mediation(n_runs_per_arm=5, n_samples=30, rng=13)
    kw = dict(treatment="regularizer", mediators="m1", outcome="y", n_boot=200)
    a = mediate(df, rng=np.random.default_rng(5), **kw).summary()
    b = mediate(df, rng=5, **kw).summary()
    c = mediate(df, rng=6, **kw).summary()
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.ci_low, c.ci_low)


def test_run_level_table():
    df, truth = simulate_mediation(n_runs_per_arm=12, n_samples=50, run_sd_m=0.05, run_sd_y=0.05, rng=14)
    runs = df.groupby("run_id", as_index=False).agg(regularizer=("regularizer", "first"), m1=("m1", "mean"),
                                                    y=("y", "mean"))
    r = mediate(runs, treatment="regularizer", mediators="m1", outcome="y", n_boot=200, rng=0)
    assert r.level == "run" and r.n_clusters == 24 and r.n_samples == 24
    assert r.estimate("total") == pytest.approx(truth["total"], abs=0.3)


def test_several_outcomes_share_replicates():
    df, _ = simulate_mediation(n_runs_per_arm=5, n_samples=30, rng=15)
    df["y2"] = 2 * df["y"]
    r = mediate(df, treatment="regularizer", mediators="m1", outcome=["y", "y2"], n_boot=100, rng=0)
    s = r.summary()
    assert list(s.outcome.unique()) == ["y", "y2"]
    one, two = s[s.outcome == "y"], s[s.outcome == "y2"]
    assert two.estimate.to_numpy()[:3] == pytest.approx(2 * one.estimate.to_numpy()[:3])
    assert two.ci_low.to_numpy()[:3] == pytest.approx(2 * one.ci_low.to_numpy()[:3])


def test_few_clusters_warning():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=20, rng=16)
    with pytest.warns(FewClustersWarning, match="per arm"):
        r = mediate(df, treatment="regularizer", mediators="m1", outcome="y", n_boot=50, rng=0,
                    inference="bootstrap")
    assert any("too narrow" in n for n in r.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewClustersWarning)
        mediate(df, treatment="regularizer", mediators="m1", outcome="y", n_boot=50, rng=0, bootstrap="naive")


def test_percentile_ci_and_pvalue():
    reps = np.random.default_rng(0).normal(1.0, 1.0, size=(20000, 2))
    lo, hi = percentile_ci(reps, 0.9)
    assert lo == pytest.approx([1 - 1.645] * 2, abs=0.05) and hi == pytest.approx([1 + 1.645] * 2, abs=0.05)
    p = bootstrap_pvalue(reps)
    assert p == pytest.approx([2 * 0.1587] * 2, abs=0.02)
    assert bootstrap_pvalue(np.ones((99, 1)))[0] == pytest.approx(2 / 100)
    assert np.isnan(percentile_ci(np.empty((0, 3)), 0.95)[0]).all()


def test_n_boot_zero_gives_points_only():
    df, _ = simulate_mediation(n_runs_per_arm=2, n_samples=20, rng=17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewClustersWarning)
        s = mediate(df, treatment="regularizer", mediators="m1", outcome="y", n_boot=0,
                    inference="bootstrap").summary()
    assert s.ci_low.isna().all() and s.p_value.isna().all() and s.estimate[:3].notna().all()
    # direct and indirect have opposite signs in this draw: the proportion mediated is not estimable
    assert np.sign(s.estimate[1]) != np.sign(s.estimate[2])
    assert np.isnan(s.estimate[3]) and s.note[3] == "not estimable: the components have opposite signs"
