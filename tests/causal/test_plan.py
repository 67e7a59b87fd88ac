"""`cg.causal.plan` and `causalgeom plan` against closed forms and statsmodels' power calculations (issue 24, 7)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.power import TTestIndPower, TTestPower

from causalgeom.causal import mediate, plan, simulate_mediation
from causalgeom.causal.inference import design_floor, seeds_for_floor
from causalgeom.errors import QueryError


@pytest.mark.parametrize("effect,sd", [(0.5, 0.5), (0.02, 0.015), (1.0, 0.4), (-0.3, 0.2)])
def test_n_power_matches_statsmodels(effect, sd):
    res = plan(effect=effect, sd=sd)
    n_sm = TTestIndPower().solve_power(effect_size=abs(effect) / sd, alpha=0.05, power=0.8, ratio=1.0,
                                       alternative="two-sided")
    assert res.n_power == max(2, math.ceil(n_sm - 1e-9))
    for row in res.table.itertuples():  # power at every n, against statsmodels' noncentral t
        assert row.power == pytest.approx(TTestIndPower().power(abs(effect) / sd, row.n_per_arm, 0.05), abs=1e-8)
    assert res.n_per_arm == max(res.n_floor, res.n_power)


def test_paired_matches_one_sample_power():
    res = plan(effect=0.3, sd=0.25, paired=True)
    n_sm = TTestPower().solve_power(effect_size=0.3 / 0.25, alpha=0.05, power=0.8, alternative="two-sided")
    assert res.n_power == math.ceil(n_sm - 1e-9)
    assert res.n_floor == 6  # sign-flip floor 2 / 2^n: 2/32 = 0.0625 > 0.05 >= 2/64
    assert res.table.set_index("n_per_arm").loc[3, "floor"] == pytest.approx(0.25)


def test_floor_and_width_closed_forms():
    from scipy import stats

    assert seeds_for_floor([3, 3], 0.05) == 4  # 2/C(6,3) = 0.1, 2/C(8,4) = 0.0286
    assert design_floor([4, 4]) == pytest.approx(2 / math.comb(8, 4))
    assert seeds_for_floor([3, 3], 0.01) == 5  # 2/C(10,5) = 0.0079
    res = plan(effect=1.0, sd=1.0, alpha=0.05)
    n = res.n_width  # smallest n with t_{.975, 2n-2} sd sqrt(2/n) < |effect|
    hw = lambda k: stats.t.ppf(0.975, 2 * k - 2) * math.sqrt(2 / k)  # noqa: E731
    assert hw(n) < 1.0 <= hw(n - 1)
    # a huge effect: the floor decides
    assert plan(effect=10.0, sd=0.1).n_per_arm == 4


def test_from_pilot_table_and_result():
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=50, rng=4)
    runs = df.groupby(["run_id", "regularizer", "seed"], as_index=False)["y"].mean()
    a = runs.loc[runs.regularizer == "ce", "y"].to_numpy()
    b = runs.loc[runs.regularizer == "treated", "y"].to_numpy()
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    res = plan(df, outcome="y")  # sample-level rows averaged per run
    assert res.effect == pytest.approx(b.mean() - a.mean(), rel=1e-12)
    assert res.sd == pytest.approx(sd, rel=1e-12)
    assert res.current == [3, 3] and res.can_decide is False
    assert "3 + 3" in res.sentence() and "seeds per arm" in res.to_markdown() and "PlanResult" in repr(res)
    pr = plan(df, outcome="y", paired=True)
    d = b - a  # seeds 0, 1, 2 in both arms, in order
    assert pr.effect == pytest.approx(d.mean(), rel=1e-12) and pr.sd == pytest.approx(d.std(ddof=1), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        med = mediate(df, treatment="regularizer", mediators="m1", outcome="y")
    pm = plan(med, effect_name="total")
    assert pm.effect == pytest.approx(med.estimate("total"))
    assert pm.current == [3, 3] and pm.sd > 0


def test_bad_input():
    with pytest.raises(QueryError, match="effect= and sd="):
        plan()
    with pytest.raises(QueryError, match="sd"):
        plan(effect=1.0, sd=0.0)
    with pytest.raises(QueryError, match="alpha"):
        plan(effect=1.0, sd=1.0, alpha=1.5)
    with pytest.raises(QueryError, match="outcome"):
        plan(pd.DataFrame({"regularizer": ["ce", "ls"], "y": [0.0, 1.0]}), outcome="nope")


def test_cli_plan(capsys):
    from causalgeom.cli import main

    assert main(["plan", "--effect", "0.5", "--sd", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "use 17 seeds per arm" in out  # statsmodels: 16.71 per arm for d = 1
    assert main(["plan", "--effect", "0.5"]) == 2
    assert "--effect and --sd" in capsys.readouterr().err  # flags, not Python keywords
