"""`MediationResult` (tables, plots, text) and the sensitivity analyses."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from causalgeom.causal import RHO_GRID, mediate, simulate_mediation  # noqa: E402
from causalgeom.causal.mediation import _evalue  # noqa: E402
from causalgeom.causal.results import SUMMARY_COLUMNS, markdown_table  # noqa: E402


@pytest.fixture(scope="module")
def res():
    df, _ = simulate_mediation(n_runs_per_arm=6, n_samples=40, a=(1.0, -0.5), b=(1.0, 1.0), rng=0)
    return mediate(df, treatment="regularizer", control="ce", treated="treated", mediators=["m1", "m2"],
                   outcome="y", covariates=["x"], n_boot=200, rng=0, inference="bootstrap", paired_by=None)


def test_summary_and_attributes(res):
    s = res.summary()
    assert tuple(s.columns) == SUMMARY_COLUMNS
    assert list(s.effect) == ["total", "direct", "indirect", "indirect[m1]", "indirect[m2]", "prop_mediated",
                              "prop_mediated[m1]", "prop_mediated[m2]"]
    assert (s.n_runs == 12).all() and (s.n_samples == 480).all()
    ok = s.estimate.notna()  # proportions may be "not estimable" (NaN with a note)
    assert (s.ci_low[ok] <= s.estimate[ok]).all() and (s.estimate[ok] <= s.ci_high[ok]).all()
    assert (s.note[~ok].str.startswith("not estimable")).all()
    assert res.method == "regression" and res.n_clusters == 12 and res.clusters_per_arm == {"ce": 6, "treated": 6}
    assert res.resampling_unit == "cluster (run_id)" and "stratified by treatment arm" in res.resampling
    assert res.level == "sample" and res.n_boot == 200 and res.replicates.shape == (200, 8, 1)
    assert "product of coefficients" in res.estimator and "percentile inversion" in res.p_value_method
    assert res.estimate("indirect[m1]") == pytest.approx(s.set_index("effect").loc["indirect[m1]", "estimate"])
    with pytest.raises(KeyError, match="no effect"):
        res.estimate("nde")
    d = res.describe()
    assert "cluster bootstrap over run_id" in d and "12 clusters" in d


def test_text_outputs(res):
    md = res.to_markdown()
    assert md.startswith("### Mediation of regularizer = 'treated' vs 'ce'")
    assert "| outcome | effect | estimate |" in md and "| y | indirect[m1] |" in md and "Sensitivity" in md
    html = res._repr_html_()
    assert "<table" in html and "indirect[m2]" in html and "cluster bootstrap" in html
    assert "MediationResult" in repr(res)
    t = markdown_table(res.summary().head(2).assign(effect=["a|b", "c"]))
    assert "a\\|b" in t and t.count("\n") == 3


def test_plots(res):
    fig = res.plot()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "indirect[m1]" in labels and "prop_mediated" not in labels
    plt.close(fig)
    fig, ax = plt.subplots()
    assert res.plot(ax=ax, include_proportion=True) is fig
    assert len(ax.get_yticklabels()) == 8
    plt.close(fig)
    fig = res.plot_sensitivity()
    assert fig.axes[0].get_lines()
    plt.close(fig)


def test_rho_sensitivity_closed_form(res):
    sens, curve = res.sensitivity, res.sensitivity_curve
    assert list(sens.mediator) == ["m1", "m2"]
    s = res.summary().set_index("effect")
    for m in ("m1", "m2"):
        c = curve[curve.mediator == m].set_index("rho")
        # at rho = 0 the curve is the estimate; at rho = rho_tilde the path effect vanishes
        assert c.loc[0.0, "indirect_path"] == pytest.approx(s.loc[f"indirect[{m}]", "estimate"], rel=1e-9)
        assert c.loc[0.0, "indirect"] == pytest.approx(s.loc["indirect", "estimate"], rel=1e-9)
        row = sens.set_index("mediator").loc[m]
        assert row.rho_at_zero_path == pytest.approx(row.rho_tilde)
    assert np.allclose(np.sort(curve.rho.unique()), RHO_GRID)


def test_rho_curve_recovers_truth_under_confounding():
    """With a mediator-outcome error correlation rho, OLS is biased; the curve at that rho is not."""
    df, truth = simulate_mediation(n_runs_per_arm=20, n_samples=300, a=(1.0,), b=(0.5,), c=0.2, rho=0.5,
                                   run_sd_m=0.0, run_sd_y=0.0, rng=1)
    r = mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"], n_boot=0)
    assert r.estimate("indirect") > truth["indirect"] + 0.3  # confounded
    c = r.sensitivity_curve.set_index("rho")
    assert c.loc[0.5, "indirect_path"] == pytest.approx(truth["indirect"], abs=0.05)
    # for one mediator, joint and path curves coincide, and the sign flips at rho_tilde
    assert np.allclose(c.indirect, c.indirect_path)
    row = r.sensitivity.iloc[0]
    assert row.rho_at_zero_indirect == pytest.approx(row.rho_tilde)


def test_joint_rho_at_zero_solves_the_curve(res):
    row = res.sensitivity.set_index("mediator").loc["m1"]
    d = res._design
    from causalgeom.causal.estimators import LinearMediation

    est = LinearMediation(d)
    # evaluate the joint curve at the reported root with the closed form used by the estimator
    sens, curve = est.rho_sensitivity()
    c = curve[curve.mediator == "m1"]
    rho0 = row.rho_at_zero_indirect
    if np.isfinite(rho0) and abs(rho0) < 0.9:
        vals = np.interp(rho0, c.rho, c.indirect)
        assert abs(vals) < 0.05 * np.abs(c.indirect).max()


def test_evalues_for_logistic_outcome():
    assert _evalue(np.array(2.0)) == pytest.approx(2 + np.sqrt(2))
    assert _evalue(np.array(0.5)) == pytest.approx(2 + np.sqrt(2))
    assert _evalue(np.array(1.0)) == pytest.approx(1.0)
    df, _ = simulate_mediation(n_runs_per_arm=6, n_samples=40, rng=2)
    df["yb"] = (df.y > df.y.median()).astype(int)
    r = mediate(df, treatment="regularizer", mediators="m1", outcome="yb", covariates=["x"], n_boot=100, rng=0,
                outcome_model="logistic", inference="bootstrap")
    s = r.sensitivity.set_index("effect")
    assert list(s.index) == ["direct", "indirect"]
    assert (s.e_value >= 1).all() and (s.e_value_ci <= s.e_value).all()
    assert "E-values" in r.sensitivity_method and len(r.sensitivity_curve) == 0
    assert "logistic" in r.estimator
