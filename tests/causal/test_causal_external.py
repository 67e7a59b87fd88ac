"""External validation on real data: statsmodels' framing study (Brader, Valentino & Suhay 2008, as shipped with
statsmodels' own tests) through `mediate` and through statsmodels' `Mediation`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels
import statsmodels.api as sm
from statsmodels.stats.mediation import Mediation

from causalgeom.causal import mediate

FRAMING = Path(statsmodels.__file__).parent / "stats" / "tests" / "results" / "framing.csv"
COV = ["age", "educ", "gender", "income"]
RHS = "treat + age + educ + gender + income"


@pytest.fixture(scope="module")
def framing():
    return pd.read_csv(FRAMING)  # ships with statsmodels (its test data); a missing file is a failure, not a skip


def _ours(data, outcome_model):
    r = mediate(data, treatment="treat", mediators="emo", outcome="cong_mesg", covariates=COV, cluster=None,
                outcome_model=outcome_model)
    return r, r.summary().set_index("effect")


def test_framing_linear_equals_the_ols_product_exactly(framing):
    """Linear spec: the natural effects are the products of statsmodels' OLS coefficients (closed form)."""
    r, s = _ours(framing, "linear")
    a = sm.OLS.from_formula(f"emo ~ {RHS}", framing).fit().params["treat"]
    out = sm.OLS.from_formula(f"cong_mesg ~ emo + {RHS}", framing).fit().params
    # the same least squares by another algorithm (Gram matrices vs statsmodels' pinv): 1e-9
    assert s.loc["indirect", "estimate"] == pytest.approx(a * out["emo"], rel=1e-9)
    assert s.loc["direct", "estimate"] == pytest.approx(out["treat"], rel=1e-9)
    assert r.design.startswith("unpaired") and r.n_clusters == 265  # cluster=None: every row its own cluster


@pytest.mark.slow
@pytest.mark.parametrize("outcome_model", ["linear", "logistic"])
def test_framing_matches_statsmodels_mediation(framing, outcome_model):
    """statsmodels' parametric ``Mediation`` (Imai, Keele & Tingley 2010, algorithm 1) reports Monte Carlo means over
    simulated coefficients; our g-formula is the plug-in estimate. They agree within 4 Monte Carlo standard errors
    (the simulation spread over sqrt(n_rep))."""
    family = sm.families.Binomial() if outcome_model == "logistic" else None
    f = f"cong_mesg ~ emo + {RHS}"
    om = sm.GLM.from_formula(f, framing, family=family) if family else sm.OLS.from_formula(f, framing)
    mm = sm.OLS.from_formula(f"emo ~ {RHS}", framing)
    n_rep = 40  # statsmodels refits both models per draw (~0.2 s each); the tolerance scales with 1/sqrt(n_rep)
    tab = Mediation(om, mm, "treat", "emo").fit(method="parametric", n_rep=n_rep,
                                                 rng=np.random.default_rng(4231)).summary()
    _, s = _ours(framing, outcome_model)
    for ours, theirs in (("indirect", "ACME (treated)"), ("direct", "ADE (control)"), ("total", "Total effect")):
        row = tab.loc[theirs]
        mc_se = (row["Upper CI bound"] - row["Lower CI bound"]) / (2 * 1.96) / np.sqrt(n_rep)
        assert s.loc[ours, "estimate"] == pytest.approx(row["Estimate"], abs=4 * mc_se), ours


def test_framing_probit_matches_the_published_statsmodels_and_r_numbers(framing):
    """Probit outcome, the specification of R ``mediation``'s framing example: statsmodels' test suite publishes
    its parametric-simulation estimates (``framing_para_4231``, 100 draws, which reproduce R's); our plug-in
    g-formula agrees within 4 Monte Carlo standard errors of those means."""
    from statsmodels.stats.tests.test_mediation import framing_para_4231 as ref

    _, s = _ours(framing, "probit")
    n_rep = 100
    for ours, theirs in (("indirect", "ACME (treated)"), ("direct", "ADE (control)"), ("total", "Total effect")):
        row = ref.loc[theirs]
        mc_se = (row["Upper CI bound"] - row["Lower CI bound"]) / (2 * 1.96) / np.sqrt(n_rep)
        assert s.loc[ours, "estimate"] == pytest.approx(row["Estimate"], abs=4 * mc_se), ours
    # the probit fit itself equals statsmodels' GLM probit (same likelihood, different optimizer): 1e-6
    glm = sm.GLM.from_formula(f"cong_mesg ~ emo + {RHS}", framing,
                              family=sm.families.Binomial(link=sm.families.links.Probit())).fit()
    r, _ = _ours(framing, "probit")
    assert r.coefficients["b[emo->cong_mesg]"] == pytest.approx(glm.params["emo"], rel=1e-6)
    assert r.coefficients["c[cong_mesg]"] == pytest.approx(glm.params["treat"], rel=1e-6)
