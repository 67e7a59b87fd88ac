"""Headless runs out of core (issues 22/25 leftovers): `run_moments` and `mediate_study` follow the in-process
table's rule -- runs without ``head_weight`` get cosines to the mean class centers, stated by the same one-line
warning (`causalgeom.metrics.table.headless_center`) -- and agree with the in-process path on a headless study."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import causalgeom as cg
from causalgeom.scale import mediate_study, run_moments
from tests._numerics import F32_ATOL, F32_RTOL
from tests.metrics.test_headless import _headless_study, _mean_center_cosines

pytestmark = pytest.mark.filterwarnings("ignore::causalgeom.causal.FewClustersWarning")

COLS = ["rms", "cos_true", "cos_pred", "overconfidence"]
HEADLESS = r"6 runs .* no head_weight, which center='minimal_loss' needs: .*mean class centers"


def _table_moments(frame: pd.DataFrame, run_id: str) -> tuple[int, np.ndarray, np.ndarray]:
    x = frame.loc[frame.run_id == run_id, COLS].to_numpy(np.float64)
    d = x - x.mean(0)
    return len(x), x.mean(0), d.T @ d


def test_run_moments_on_headless_study_equal_the_table(tmp_path):
    st = _headless_study(tmp_path)
    with pytest.warns(UserWarning, match=HEADLESS) as rec:
        frame = st.to_frame(progress=False)
    table_msgs = [str(w.message) for w in rec if "no head_weight" in str(w.message)]
    with pytest.warns(UserWarning, match=HEADLESS) as rec:
        mom = run_moments(st, COLS)
    msgs = [str(w.message) for w in rec if "no head_weight" in str(w.message)]
    assert msgs == table_msgs and len(msgs) == 1  # the same one line as the table, once for the study
    assert frame.attrs["center"] == "mean"
    for rid in st.run_ids:
        n, mean, com = _table_moments(frame, rid)
        m = mom[rid]
        assert m.n == n and not m.nonfinite.any()
        np.testing.assert_allclose(m.mean, mean, rtol=F32_RTOL, atol=F32_ATOL)
        # a co-moment is a sum of n products: its error grows with n and the column scales
        np.testing.assert_allclose(m.comoment, com, rtol=F32_RTOL, atol=n * F32_ATOL * max(1.0, np.abs(mean).max()))
    # and against the closed form of the mean-center cosine (independent of both paths)
    ds = st["ce-s2"]
    ref = _mean_center_cosines(ds["features"].values, ds["label"].values, 4)
    np.testing.assert_allclose(mom["ce-s2"].mean[COLS.index("cos_true")], ref.mean(), rtol=F32_RTOL, atol=F32_ATOL)


def test_mixed_study_out_of_core_uses_one_center_kind(tmp_path):
    st = cg.open_study(tmp_path / "mix", create=True)
    for i, head in enumerate((True, False)):
        ds = cg.testing.make_run(n=60, d=5, k=3, seed=i, run_id=f"r{i}", regularizer="ce", strength=0.0)
        st.add(ds if head else ds.drop_vars(["head_weight", "head_bias"]))
    with pytest.warns(UserWarning, match="run 'r1' has no head_weight"):
        mom = run_moments(st, ["cos_true"])
    ds = st["r0"]  # the run WITH a head gets the mean centers too, as in the table
    ref = _mean_center_cosines(ds["features"].values, ds["label"].values, 3)
    np.testing.assert_allclose(mom["r0"].mean[0], ref.mean(), rtol=F32_RTOL, atol=F32_ATOL)


def test_no_cosine_column_no_warning(tmp_path):
    st = _headless_study(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no center is computed, so nothing to state
        mom = run_moments(st, ["rms", "overconfidence"])
    assert set(mom) == set(st.run_ids)


@pytest.mark.parametrize("inference", ["cr2", "bootstrap"])
def test_mediate_study_on_headless_study_equals_mediate(tmp_path, inference):
    st = _headless_study(tmp_path)
    kw = dict(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["rms", "cos_true"],
              outcome="overconfidence", paired_by=None, rng=5, inference=inference,
              **({"n_boot": 200} if inference == "bootstrap" else {}))
    with pytest.warns(UserWarning, match=HEADLESS):
        frame = st.to_frame(progress=False)
    ref = cg.causal.mediate(frame, outcome_model="linear", **kw)
    with pytest.warns(UserWarning, match=HEADLESS):
        res = mediate_study(st, **kw)
    a, b = ref.summary(), res.summary()
    assert np.isfinite(b[["estimate", "ci_low", "ci_high"]].to_numpy(np.float64)).all()  # cos_true: no NaN
    pd.testing.assert_frame_equal(a.drop(columns="note"), b.drop(columns="note"), check_exact=False,
                                  rtol=F32_RTOL, atol=F32_ATOL)
