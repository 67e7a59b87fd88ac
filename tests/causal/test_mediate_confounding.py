"""Run-level confounding in `mediate` (issue 24, items 5 and 6): the within-run slope against pyfixest, the
run-level Mundlak test, the warning with the within-run estimate beside the pooled one, the floor sentence."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyfixest as pf
import pytest

from causalgeom.causal import mediate, simulate_mediation
from causalgeom.causal.design import build_design
from causalgeom.causal.estimators import LinearMediation
from causalgeom.causal.mediation import RunConfoundingWarning
from causalgeom.errors import QueryError

#: float64 least squares by two algorithms (normal equations of demeaned columns here, pyfixest's alternating
#: projections and QR there): agreement to ~1e-12 relative on a well-conditioned design; 1e-8 leaves margin.
LSQ_RTOL = 1e-8


def _study(run_rho, runs=4, n=80, seed=0):
    return simulate_mediation(n_runs_per_arm=runs, n_samples=n, a=(1.0,), b=(0.5,), c=0.3, difficulty_m=1.0,
                              difficulty_y=1.0, run_rho=run_rho, rng=seed)


def _fit(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"], **kw)


def test_within_slope_equals_pyfixest_two_way_fe():
    df, _ = _study(0.8)
    res = _fit(df, slope="within")
    fit = pf.feols("y ~ m1 + x | sample + run_id", data=df, vcov={"CRV1": "run_id"})
    np.testing.assert_allclose(res.coefficients["b[m1->y]"], fit.coef()["m1"], rtol=LSQ_RTOL)
    rc = res.run_confounding.iloc[0]
    np.testing.assert_allclose(rc["within"], fit.coef()["m1"], rtol=LSQ_RTOL)
    # the Mundlak regression with image effects: run means' coefficient = between − within
    df = df.assign(T=(df.regularizer == "treated").astype(float),
                   m_bar=df.groupby("run_id")["m1"].transform("mean"), x_bar=df.groupby("run_id")["x"].transform("mean"))
    mund = pf.feols("y ~ T + m1 + x + m_bar + x_bar | sample", data=df, vcov={"CRV1": "run_id"})
    np.testing.assert_allclose(rc["difference"], mund.coef()["m_bar"], rtol=LSQ_RTOL)
    np.testing.assert_allclose(rc["between"] - rc["within"], rc["difference"], rtol=1e-12)
    pooled = pf.feols("y ~ T + m1 + x | sample", data=df)
    np.testing.assert_allclose(rc["pooled"], pooled.coef()["m1"], rtol=LSQ_RTOL)


def test_within_keeps_the_total_and_moves_the_split():
    df, _ = _study(0.8)
    p, w = _fit(df), _fit(df, slope="within")
    # total = coefficient of y ~ T + x with image effects in both (omitted-variable identity)
    np.testing.assert_allclose(w.estimate("total"), p.estimate("total"), rtol=1e-10)
    np.testing.assert_allclose(w.estimate("direct") + w.estimate("indirect"), w.estimate("total"), rtol=1e-10)
    a = w.coefficients["a[m1]"]
    np.testing.assert_allclose(w.estimate("indirect"), a * w.coefficients["b[m1->y]"], rtol=1e-10)
    assert w.slope == "within" and "within runs" in w.estimator


def test_randomization_fast_path_with_within_slope():
    df, _ = _study(0.5, runs=3, n=40)
    d = build_design(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"],
                     paired_by="auto")
    est = LinearMediation(d, slope="within")
    labels = np.array([[1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 1, 0]], dtype=float)
    fast = est.relabeled(labels)
    slow = np.stack([est.refit_relabeled(lab) for lab in labels])
    np.testing.assert_allclose(fast[:, :3], slow[:, :3], rtol=1e-9, atol=1e-12)


def test_warning_and_within_estimate_beside_the_pooled():
    df, truth = _study(0.95, runs=8, n=60, seed=2)
    with pytest.warns(RunConfoundingWarning, match="mixes run-level confounding"):
        res = mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"])
    assert res.run_confounding["p_value"].iloc[0] < 0.05
    s = res.summary().set_index("effect")
    assert "within-run slope" in s.loc["indirect", "note"]
    w = res.within_effects.set_index("effect").loc["indirect"]
    assert f"{w['estimate']:.3g}" in s.loc["indirect", "note"]
    assert abs(w["estimate"] - truth["indirect"]) < abs(s.loc["indirect", "estimate"] - truth["indirect"])
    assert "Warning" in res.to_markdown() and "WARNING" in repr(res)
    # the within slope: no warning, a note that says which slope was used
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunConfoundingWarning)
        rw = mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"], slope="within")
    assert not rw.confounding_warning and any("slope='within') is used" in n for n in rw.notes)


def test_no_warning_without_confounding_signal():
    df, _ = _study(0.0, runs=4, n=60, seed=5)
    res = _fit(df)
    assert res.run_confounding["p_value"].iloc[0] >= 0.05 and not res.confounding_warning


def test_within_refused_where_undefined():
    df, _ = _study(0.0, runs=4, n=30)
    for kw, msg in ((dict(interaction=True), "interaction=False"), (dict(outcome_model="logistic"), "linear")):
        if kw.get("outcome_model") == "logistic":
            df = df.assign(y=(df.y > df.y.median()).astype(float))
        with pytest.raises(QueryError, match=msg):
            _fit(df, slope="within", **kw)
    small, _ = _study(0.0, runs=2, n=30)
    with pytest.raises(QueryError, match="at least"):
        _fit(small, slope="within")
    with pytest.raises(QueryError, match="slope"):
        _fit(small, slope="between")
    runs = df.groupby(["run_id", "regularizer"], as_index=False)[["m1", "x", "y"]].mean()
    with pytest.raises(QueryError, match="sample-level"):
        mediate(runs, treatment="regularizer", mediators="m1", outcome="y", slope="within")


def test_floor_sentence_when_interval_excludes_zero():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=100, a=(1.0,), b=(2.0,), run_sd_m=0.1, run_sd_y=0.1,
                               rng=1)
    res = mediate(df, treatment="regularizer", mediators="m1", outcome="y")
    s = res.summary().set_index("effect")
    assert s.loc["total", "ci_low"] > 0
    sent = [n for n in res.notes if "cannot confirm" in n]
    assert len(sent) == 1 and "below 0.1" in sent[0] and "4 seeds per arm (1 more each)" in sent[0]
    df4, _ = simulate_mediation(n_runs_per_arm=4, n_samples=100, a=(1.0,), b=(2.0,), run_sd_m=0.1, run_sd_y=0.1,
                                rng=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res4 = mediate(df4, treatment="regularizer", mediators="m1", outcome="y")
    assert not [n for n in res4.notes if "cannot confirm" in n]  # floor 2/70 < 0.05
