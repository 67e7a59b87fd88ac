"""Every documented error of the causal layer is raised with a message naming argument, expectation and value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causalgeom.causal import mediate, refute, simulate_mediation
from causalgeom.errors import QueryError


@pytest.fixture(scope="module")
def df():
    table, _ = simulate_mediation(n_runs_per_arm=5, n_samples=20, a=(1.0, 0.5), b=(1.0, 1.0), rng=0)
    return table


def _m(table, **kw):
    args = dict(treatment="regularizer", mediators="m1", outcome="y", n_boot=0)
    args.update(kw)
    return mediate(table, **args)


def test_treatment_with_one_level(df):
    one = df[df.regularizer == "ce"]
    with pytest.raises(QueryError, match="single level"):
        _m(one)
    with pytest.raises(QueryError, match="single value"):
        _m(one, treatment="strength")


@pytest.mark.parametrize("kw, match", [
    (dict(control="mixup"), r"control: value 'mixup' is not a level of treatment 'regularizer'; levels present"),
    (dict(treated="cutmix"), r"treated: value 'cutmix' is not a level"),
    (dict(control="ce", treated="ce"), "equals the control"),
    (dict(treatment="strength", control=0.0, treated=5.0), "outside the observed range"),
    (dict(treatment="strength", control="zero"), "needs a number"),
])
def test_control_or_treated_not_present(df, kw, match):
    with pytest.raises(QueryError, match=match):
        _m(df, **kw)


def test_control_defaults(df):
    nce = df.replace({"regularizer": {"ce": "base"}})
    with pytest.raises(QueryError, match="no 'ce' level"):
        _m(nce)
    three = pd.concat([df, df[df.regularizer == "treated"].assign(regularizer="mixup")])
    with pytest.raises(QueryError, match="choose one"):
        _m(three)


@pytest.mark.parametrize("kw, match", [
    (dict(mediators="magnitude"), r"column\(s\) not in the table: mediators 'magnitude'; available columns"),
    (dict(outcome="ece"), "outcome 'ece'"),
    (dict(treatment="reg"), "treatment 'reg'"),
    (dict(covariates=["z"]), "covariates 'z'"),
    (dict(cluster="run"), "cluster 'run'"),
    (dict(mediators=[]), "at least one mediator"),
    (dict(mediators=["m1"], outcome="m1"), "used twice"),
    (dict(mediators=[3]), "expected column names"),
])
def test_missing_columns(df, kw, match):
    with pytest.raises(QueryError, match=match):
        _m(df, **kw)


def test_non_numeric_columns(df):
    bad = df.assign(m1=df.m1.astype(str))
    with pytest.raises(QueryError, match="mediator 'm1': expected a numeric column, got dtype"):
        _m(bad)
    with pytest.raises(QueryError, match="outcome 'regularizer': expected a numeric column"):
        _m(df, treatment="strength", outcome="regularizer")
    with pytest.raises(QueryError, match="treatment_type='continuous' needs a numeric column"):
        _m(df, treatment_type="continuous")


def test_nan_and_inf(df):
    bad = df.copy()
    bad.loc[[3, 7], "y"] = np.nan
    with pytest.raises(QueryError, match=r"outcome 'y': 2 of \d+ values are not finite \(2 NaN, 0 Inf\)"):
        _m(bad)
    bad = df.copy()
    bad.loc[3, "m1"] = np.inf
    with pytest.raises(QueryError, match=r"1 NaN|0 NaN, 1 Inf"):
        _m(bad)
    bad = df.copy()
    bad["regularizer"] = bad["regularizer"].astype(object)
    bad.loc[0, "regularizer"] = None
    with pytest.raises(QueryError, match="treatment 'regularizer': 1 values are missing"):
        _m(bad)
    bad = df.assign(g=np.where(np.arange(len(df)) == 0, None, "a"))
    with pytest.raises(QueryError, match="covariate 'g'"):
        _m(bad, covariates=["g"])


def test_too_few_runs_to_resample(df):
    two = df[df.run_id.isin(df.run_id.unique()[[0, 1, 5]])]  # 2 ce runs, 1 treated run
    with pytest.raises(QueryError, match=r"estimand='runs': the effect over training runs .* is undefined with one run"):
        _m(two, n_boot=10, estimand="runs")
    # by default one run in an arm switches to the model-conditional estimand, with a note
    res = _m(two, n_boot=10)
    assert res.estimand.startswith("model-conditional") and any("model-conditional" in n for n in res.notes)
    # the naive bootstrap is allowed (and labelled), and points need no resampling
    assert _m(two, n_boot=10, bootstrap="naive").resampling_unit == "naive per-sample"
    cont = df[df.run_id.isin(df.run_id.unique()[[0, 5]])]
    with pytest.raises(QueryError, match="too few clusters"):
        _m(cont, treatment="strength", n_boot=10)


def test_bad_options(df):
    for kw, match in [(dict(method="bayes"), r"method: expected one of \[.*\], got 'bayes'"),
                      (dict(bootstrap="wild"), "bootstrap: expected one of"),
                      (dict(outcome_model="poisson"), "outcome_model: expected one of"),
                      (dict(n_boot=-1), "n_boot: expected an integer >= 0"),
                      (dict(ci_level=95), r"ci_level: expected a number in \(0, 1\)"),
                      (dict(rng="seed"), "rng: expected a numpy Generator"),
                      (dict(treatment_type="ordinal"), "treatment_type: expected one of"),
                      (dict(mediators=["m1", "m2"], method="statsmodels"), "supports a single mediator"),
                      (dict(mediators=["m1", "m2"], method="dowhy"), "supports a single mediator"),
                      (dict(method="dowhy", interaction=True), "needs outcome_model='linear'"),
                      (dict(ordered=True), "exactly 2 mediators"),
                      (dict(mediators=["m1", "m2"], ordered=True, interaction=True), "not supported"),
                      (dict(outcome_model="logistic"), "needs a 0/1 outcome")]:
        with pytest.raises(QueryError, match=match):
            _m(df, **kw)
    with pytest.raises(QueryError, match="table: expected a pandas DataFrame"):
        mediate(df.to_dict(), treatment="regularizer", mediators="m1", outcome="y")
    with pytest.raises(QueryError, match="no rows"):
        _m(df.iloc[:0])


def test_singular_design(df):
    with pytest.raises(QueryError, match="singular design"):
        _m(df.assign(m1=1.0))
    with pytest.raises(QueryError, match="singular design"):
        _m(df.assign(z=df.x * 2), covariates=["x", "z"])


def test_refute_errors(df):
    with pytest.raises(QueryError, match="interaction=False"):
        refute(_m(df, interaction=True))
    with pytest.raises(QueryError, match="unknown refuter"):
        refute(_m(df), methods=("bootstrap_refuter",))
    with pytest.raises(QueryError, match="expected a MediationResult"):
        refute(object())
