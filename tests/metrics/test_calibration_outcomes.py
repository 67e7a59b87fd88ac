"""Outcomes beyond the binned ECE (ece_ts, ece_debiased, ece_floor, aurc) and reliability intervals, each checked
against a closed form, a direct implementation, a Monte Carlo simulation or statsmodels; and their use by the
run-level table, `run_metrics`, `mediate` and `decompose`."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.stats as st
from statsmodels.stats.proportion import proportion_confint

import causalgeom as cg
from causalgeom.errors import ConfigError, QueryError
from causalgeom.metrics import calibration as cal
from causalgeom.metrics.kernels import (aurc, bin_index, calibration_error, debiased_squared_ce, ece_noise_floor,
                                        poisson_binomial_pmf, width_bin_stats)
from causalgeom.metrics.robustness import wilson_interval
from causalgeom.testing import make_run


# ----------------------------------------------------------------------------------------------
# AURC
# ----------------------------------------------------------------------------------------------
def _aurc_direct(conf, correct):
    """O(n^2) (times the tie orders) definition: the mean over k of (errors among the k most confident) / k,
    averaged over every order of the tied samples."""
    conf, err = np.asarray(conf, float), 1.0 - np.asarray(correct, float)
    groups = [np.flatnonzero(conf == c) for c in sorted(set(conf.tolist()), reverse=True)]
    values = []
    for perms in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
        order = np.concatenate([np.asarray(p, dtype=int) for p in perms])
        values.append(np.mean([err[order[:k]].sum() / k for k in range(1, conf.size + 1)]))
    return float(np.mean(values))


def test_aurc_hand_computed():
    # accepted in order 0.9 (right), 0.8 (wrong), 0.7 (right): risks 0, 1/2, 1/3
    assert aurc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3, abs=1e-15)
    # a tie of a right and a wrong answer: orders (right, wrong) -> (0 + 1/2)/2, (wrong, right) -> (1 + 1/2)/2
    assert aurc([0.9, 0.9], [1, 0]) == pytest.approx(0.5, abs=1e-15)
    assert aurc([0.5, 0.6], [1, 1]) == 0.0
    assert aurc([0.5, 0.6], [0, 0]) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_aurc_matches_direct_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 7
    conf = rng.choice([0.3, 0.5, 0.8, 0.95], size=n)  # many ties
    correct = rng.random(n) < conf
    assert aurc(conf, correct) == pytest.approx(_aurc_direct(conf, correct), abs=1e-12)
    perm = rng.permutation(n)  # the tie rule makes it independent of the storage order
    assert aurc(conf[perm], correct[perm]) == pytest.approx(aurc(conf, correct), abs=1e-12)


def test_aurc_without_ties_matches_direct_definition_larger():
    rng = np.random.default_rng(3)
    conf = rng.random(300)
    correct = rng.random(300) < conf
    order = np.argsort(-conf)
    err = 1.0 - correct[order]
    direct = np.mean([err[:k].sum() / k for k in range(1, 301)])
    assert aurc(conf, correct) == pytest.approx(direct, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# noise floor
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,p", [(1, 0.3), (5, 0.8), (60, 0.93), (700, 0.55)])
def test_poisson_binomial_is_binomial_for_equal_probabilities(m, p):
    np.testing.assert_allclose(poisson_binomial_pmf(np.full(m, p)), st.binom.pmf(np.arange(m + 1), m, p),
                               rtol=0, atol=1e-12)  # FFT round-off: about 1e-15 of the largest mass


def test_poisson_binomial_matches_direct_convolution():
    p = np.random.default_rng(0).uniform(0.1, 1.0, 257)
    direct = np.ones(1)
    for pi in p:
        direct = np.convolve(direct, [1 - pi, pi])
    np.testing.assert_allclose(poisson_binomial_pmf(p), direct, rtol=0, atol=1e-12)


def test_noise_floor_closed_forms():
    # one sample: E|c - y| = c (1 - c) + (1 - c) c
    assert ece_noise_floor(np.array([0.7]), 15) == pytest.approx(2 * 0.7 * 0.3, abs=1e-15)
    # one bin of m equal confidences: E|m c - S| / m with S ~ Binomial(m, c)
    m, c = 40, 0.96
    k = np.arange(m + 1)
    expect = float(np.sum(st.binom.pmf(k, m, c) * np.abs(k - m * c))) / m
    assert ece_noise_floor(np.full(m, c), 15) == pytest.approx(expect, abs=1e-12)


def test_noise_floor_against_monte_carlo():
    rng = np.random.default_rng(11)
    conf = np.clip(rng.beta(8, 1.5, size=150), 0.2, 1.0)
    exact = ece_noise_floor(conf, 15)
    R = 20000
    y = rng.random((R, conf.size)) < conf  # (R, n) labels of a perfectly calibrated model
    idx = bin_index(conf, 15)
    sims = sum(np.abs(conf[idx == b].sum() - y[:, idx == b].sum(1)) for b in np.unique(idx)) / conf.size
    for r in range(3):  # the vectorized ECE is the package's
        assert sims[r] == pytest.approx(calibration_error(width_bin_stats(conf, y[r], 15), "l1"), abs=1e-12)
    se = sims.std(ddof=1) / math.sqrt(R)
    # the Monte Carlo mean lies within 5 standard errors of the exact expectation (fails with prob. < 1e-6)
    assert abs(sims.mean() - exact) < 5 * se
    assert exact > 0.02  # at n = 150 the binning noise alone is a sizeable ECE


# ----------------------------------------------------------------------------------------------
# debiased ECE
# ----------------------------------------------------------------------------------------------
def test_debiased_squared_ce_hand_computed():
    # bin A: 4 samples at 0.9, 3 right -> (0.9 - 0.75)^2 - 0.75*0.25/3; bin B: 1 sample (contributes 0);
    # bin C: 2 samples at 0.5, 0 right -> 0.25 - 0
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.3, 0.5, 0.5])
    correct = np.array([1, 1, 1, 0, 1, 0, 0])
    expect = 4 / 7 * ((0.9 - 0.75) ** 2 - 0.75 * 0.25 / 3) + 2 / 7 * 0.25
    assert debiased_squared_ce(width_bin_stats(conf, correct, 10)) == pytest.approx(expect, abs=1e-15)
    out = cal.confidence_outcomes(conf, correct, 10)
    assert out["ece_debiased"] == pytest.approx(math.sqrt(expect), abs=1e-15)


def test_debiased_squared_ce_is_unbiased():
    """Labels drawn with a known accuracy per bin: the mean of the estimate is the squared L2 gap, the plug-in's is
    larger by the binning noise."""
    rng = np.random.default_rng(5)
    conf = np.repeat([0.55, 0.75, 0.95], [30, 40, 50])
    true_acc = np.repeat([0.5, 0.6, 0.9], [30, 40, 50])
    truth = np.sum(np.array([30, 40, 50]) / 120 * (np.array([0.55, 0.75, 0.95]) - [0.5, 0.6, 0.9]) ** 2)
    R = 5000
    deb, plug = np.empty(R), np.empty(R)
    for r in range(R):
        stats = width_bin_stats(conf, rng.random(conf.size) < true_acc, 15)
        deb[r] = debiased_squared_ce(stats)
        plug[r] = calibration_error(stats, "l2") ** 2
    assert abs(deb.mean() - truth) < 5 * deb.std(ddof=1) / math.sqrt(R)
    assert plug.mean() - truth > 10 * plug.std(ddof=1) / math.sqrt(R)


# ----------------------------------------------------------------------------------------------
# ECE after temperature scaling
# ----------------------------------------------------------------------------------------------
def test_ts_split_is_paired_by_sample_id_and_balanced():
    ids = np.array([40, 10, 30, 20, 50])
    fit = cal.ts_split(ids)
    # ranks: 10->0, 20->1, 30->2, 40->3, 50->4: even ranks fit
    assert fit.tolist() == [False, True, True, False, True]
    perm = np.random.default_rng(0).permutation(5)
    assert cal.ts_split(ids[perm]).tolist() == fit[perm].tolist()  # another storage order: the same images
    assert cal.ts_split(np.arange(7)).sum() == 4


def test_ece_ts_is_ece_at_the_temperature_fitted_on_the_fit_half():
    ds = make_run(n=301, k=5, seed=2, scale=3.0)
    res = cal.ece_ts(ds, 10)
    fit = cal.ts_split(ds["sample"].values)
    t = cal.fit_temperature(ds.isel(sample=np.flatnonzero(fit)))
    expect = cal.ece(ds.isel(sample=np.flatnonzero(~fit)), 10, temperature=t)
    assert float(res) == float(expect)  # the same computation
    assert res.attrs["temperature"] == t and t != pytest.approx(1.0, abs=1e-3)
    assert (res.attrs["n_fit"], res.attrs["n_eval"]) == (151, 150)
    assert res.attrs["split_rule"] == cal.TS_SPLIT_RULE
    # the array entry point (the decomposition's) fits the same temperature and gives the same ECE
    val, t2 = cal.ece_ts_from_logits(ds["logits"].values, ds["label"].values, fit, 10)
    assert t2 == pytest.approx(t, rel=1e-12) and val == pytest.approx(float(res), abs=1e-12)


def test_ece_ts_lazy_equals_in_memory(tmp_path):
    ds = make_run(n=250, k=4, seed=3, scale=2.5)
    cg.save(ds, tmp_path / "r.zarr", sample_chunk=64)
    lazy = cg.open(tmp_path / "r.zarr")
    a, b = cal.ece_ts(ds), cal.ece_ts(lazy)
    assert float(a) == pytest.approx(float(b), abs=1e-12)  # chunked sums: another summation order
    assert a.attrs["temperature"] == pytest.approx(b.attrs["temperature"], rel=1e-9)


def test_ece_ts_removes_a_pure_temperature_miscalibration():
    """Logits of a calibrated model multiplied by 3: the plain ECE is large, ece_ts is back near the noise floor."""
    rng = np.random.default_rng(4)
    n, k = 20000, 5
    z = rng.normal(size=(n, k)) * 2.0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)  # labels drawn from softmax(z): calibrated
    ds = cg.from_arrays(rng.normal(size=(n, 3)).astype(np.float32), (3.0 * z).astype(np.float32), y,
                        attrs={"run_id": "hot"})
    assert float(cal.ece(ds)) > 0.1
    res = cal.ece_ts(ds)
    assert res.attrs["temperature"] == pytest.approx(3.0, rel=0.05)
    # calibrated after the fit: within a few noise floors of the evaluation half (floor ~0.008 at n = 10000)
    floor = float(cal.ece_floor(ds.isel(sample=np.flatnonzero(~cal.ts_split(ds["sample"].values)))))
    assert float(res) < 3 * floor


# ----------------------------------------------------------------------------------------------
# reliability with evidence
# ----------------------------------------------------------------------------------------------
def test_wilson_interval_matches_statsmodels():
    count = np.array([1, 3, 7, 20, 450, 0])
    succ = np.array([1, 0, 5, 13, 401, 0])
    for level in (0.9, 0.95):
        lo, hi = wilson_interval(succ, count, level)
        slo, shi = proportion_confint(succ[:-1], count[:-1], alpha=1 - level, method="wilson")
        np.testing.assert_allclose(lo[:-1], slo, rtol=0, atol=1e-12)
        np.testing.assert_allclose(hi[:-1], shi, rtol=0, atol=1e-12)
        assert np.isnan(lo[-1]) and np.isnan(hi[-1])


@pytest.mark.parametrize("binning", ["width", "mass"])
def test_reliability_counts_intervals_and_few_flag(binning):
    ds = make_run(n=200, k=5, seed=6)
    rel = cal.reliability(ds, 10, binning, level=0.9, min_count=20)
    count = rel["count"].values
    assert count.sum() == 200
    nonempty = count > 0
    slo, shi = proportion_confint(np.round(rel["accuracy"].values[nonempty] * count[nonempty]), count[nonempty],
                                  alpha=0.1, method="wilson")
    np.testing.assert_allclose(rel["acc_low"].values[nonempty], slo, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rel["acc_high"].values[nonempty], shi, rtol=0, atol=1e-12)
    assert rel["few"].values.tolist() == ((count > 0) & (count < 20)).tolist()
    assert rel.attrs["min_count"] == 20 and rel.attrs["level"] == 0.9 and "Wilson" in rel.attrs["interval"]
    if binning == "width":
        assert rel["few"].values.any()  # this run has sparsely filled low-confidence bins


def test_reliability_rejects_bad_options():
    ds = make_run(n=50, k=3)
    with pytest.raises(ConfigError, match="level"):
        cal.reliability(ds, level=1.5)
    with pytest.raises(ConfigError, match="min_count"):
        cal.reliability(ds, min_count=0)


# ----------------------------------------------------------------------------------------------
# the outcomes in run_metrics, the run-level table, mediate and decompose
# ----------------------------------------------------------------------------------------------
def test_dataset_entry_points_agree_with_kernels():
    ds = make_run(n=180, k=4, seed=7)
    ps = cal.per_sample(ds)
    conf, correct = ps["confidence"].values, ps["correct"].values
    assert float(cal.aurc(ds)) == aurc(conf, correct)
    assert float(cal.ece_floor(ds, 12)) == ece_noise_floor(conf, 12)
    assert float(cal.ece_debiased(ds, 12)) == cal.confidence_outcomes(conf, correct, 12)["ece_debiased"]


def _paired_study(tmp_path, n_runs=4, n=160, k=4, d=6):
    """Runs that score the same images (same labels), the treated half with shrunken features."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n)
    base = rng.normal(size=(k, d))
    latent = base[labels] + 0.9 * rng.normal(size=(n, d))
    s = cg.open_study(tmp_path / "study", create=True)
    for i in range(n_runs):
        treated = i >= n_runs // 2
        r = np.random.default_rng(100 + i)
        W = (2.0 * base + 0.3 * r.normal(size=(k, d))).astype(np.float32)
        b = (0.1 * r.normal(size=k)).astype(np.float32)
        f = ((0.5 if treated else 1.0) * (latent + 0.3 * r.normal(size=(n, d)))).astype(np.float32)
        s.add(cg.from_arrays(f, f @ W.T + b, labels, head_weight=W, head_bias=b,
                             attrs={"run_id": f"{'ls' if treated else 'ce'}-s{i}",
                                    "regularizer": "label_smoothing" if treated else "ce", "seed": i,
                                    "strength": 0.1 if treated else 0.0}))
    return s


@pytest.fixture(scope="module")
def paired_study(tmp_path_factory):
    """Runs that score the same images with a known class geometry (not `make_study`: the treated features are
    halved and the heads share a base)."""
    return _paired_study(tmp_path_factory.mktemp("outcomes"))


@pytest.fixture(scope="module")
def run_level(paired_study):
    return paired_study.to_frame(level="run", progress=False)


@pytest.mark.slow
def test_run_table_run_metrics_and_direct_functions_agree(paired_study, run_level):
    table = run_level
    for name in cal.EXTRA_OUTCOMES:
        assert name in table.columns
    frame = cg.summary.run_frame(paired_study, progress=False)
    for rid in paired_study.run_ids:
        ds = paired_study[rid]
        row = table.set_index("run_id").loc[rid]
        rm = frame.set_index("run_id").loc[rid]
        ts = cal.ece_ts(ds)
        assert row["ece_ts"] == pytest.approx(float(ts), abs=1e-12)
        assert rm["ece_ts"] == pytest.approx(float(ts), abs=1e-12)
        assert rm["ts_temperature"] == pytest.approx(ts.attrs["temperature"], rel=1e-12)
        for name in ("ece_debiased", "ece_floor", "aurc"):
            direct = float(getattr(cal, name)(ds))
            # the table computes from the fused pass's confidences (another summation order of the softmax)
            assert row[name] == pytest.approx(direct, abs=1e-9), name
            assert rm[name] == pytest.approx(direct, abs=1e-12), name
    paper = cg.summary.paper_table(frame)
    for name in cal.EXTRA_OUTCOMES:
        assert {name, f"{name}_low", f"{name}_high"} <= set(paper.columns)


def test_mediate_accepts_the_new_outcomes(paired_study, run_level):
    table = run_level
    res = cg.causal.mediate(table, treatment="regularizer", control="ce", treated="label_smoothing",
                            mediators=["rms"], outcome=list(cal.EXTRA_OUTCOMES), cluster="run_id")
    summ = res.summary()
    assert set(summ["outcome"]) == set(cal.EXTRA_OUTCOMES)
    total = summ[(summ.outcome == "aurc") & (summ.effect == "total")]["estimate"].iloc[0]
    by_arm = table.groupby("regularizer")["aurc"].mean()
    assert total == pytest.approx(by_arm["label_smoothing"] - by_arm["ce"], abs=1e-10)


def test_decompose_accepts_the_new_outcomes(paired_study, run_level):
    outs = list(cal.EXTRA_OUTCOMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = cg.causal.decompose(paired_study, control="ce", treated="label_smoothing", outcome=outs,
                                  factors=("magnitude", "head_norm", "orientation"), n_boot=20, rng=0)
    tab = res.table.set_index(["outcome", "component"])
    table = run_level.set_index("run_id")
    for o in outs:
        parts = sum(tab.loc[(o, f), "estimate"] for f in ("magnitude", "head_norm", "orientation"))
        assert parts == pytest.approx(tab.loc[(o, "total"), "estimate"], abs=1e-10)  # Shapley shares add up
    # the world of each run's own parts is the run itself: its total gap is the gap of the run-level outcomes
    # (decompose uses W·h + b in float64, the table the stored float32 logits)
    for o in outs:
        pairs = res.per_pair[(res.per_pair.outcome == o) & (res.per_pair.component == "total")]
        for rec in pairs.to_dict("records"):
            gap = table.loc[rec["treated_run"], o] - table.loc[rec["control_run"], o]
            assert rec["value"] == pytest.approx(gap, abs=1e-4), o


def test_decompose_model_bootstrap_runs_for_new_outcomes(tmp_path):
    s = _paired_study(tmp_path, n_runs=2, n=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = cg.causal.decompose(s, control="ce", treated="label_smoothing", outcome=["ece_ts", "aurc"],
                                  factors=("magnitude", "head_norm", "orientation"), n_boot=10, rng=0)
    tot = res.table[res.table.component == "total"]
    assert np.isfinite(tot[["estimate", "ci_low", "ci_high"]].to_numpy()).all() and len(tot) == 2


def test_unknown_outcome_is_refused(paired_study):
    with pytest.raises(QueryError, match="ece_ts"):  # the message lists the allowed outcomes
        cg.causal.decompose(paired_study, control="ce", treated="label_smoothing", outcome="ece_tss")
    with pytest.raises(ConfigError, match="outcome"):
        cal.run_outcome("nope", {})
