"""`study_frame` / `Study.to_frame`: the analysis table agrees with the metric functions, run by run."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import causalgeom as cg
from causalgeom import calibration, geometry, robustness
from causalgeom.errors import QueryError
from causalgeom.metrics.table import (RUN_COLUMNS, SAMPLE_COLUMNS, min_flip_column, robust_acc_column, robust_column,
                              study_frame)


# `study`: the shared fixture of tests/conftest.py (in memory / on disk / compressed)


@pytest.fixture(scope="module")
def frame(study):
    return study.to_frame(level="sample", progress=False)


def test_sample_frame_matches_metric_functions(study, frame):
    eps = [1 / 255, 2 / 255, 4 / 255]
    robust = [robust_column("pgd-linf", e) for e in eps]
    assert list(frame.columns) == list(SAMPLE_COLUMNS) + robust + [min_flip_column("pgd-linf")]
    assert frame.attrs["level"] == "sample" and len(frame) == 480
    assert robust[0] == "robust[pgd-linf@1/255]"
    for run_id in study.run_ids:
        ds = study[run_id]
        part = frame[frame.run_id == run_id]
        mag, cos = geometry.magnitude(ds).compute(), geometry.cosine_to_center(ds).compute()
        cal = calibration.per_sample(ds).compute()
        np.testing.assert_allclose(part.norm, mag.norm.values, rtol=1e-12)
        np.testing.assert_allclose(part.rms, mag.rms.values, rtol=1e-12)
        np.testing.assert_allclose(part.cos_true, cos.cos_true.values, rtol=1e-12)
        np.testing.assert_allclose(part.cos_pred, cos.cos_pred.values, rtol=1e-12)
        for c in ("confidence", "overconfidence", "nll", "brier"):
            np.testing.assert_allclose(part[c], cal[c].values, rtol=1e-12)
        np.testing.assert_array_equal(part.correct, cal.correct.values.astype(int))
        np.testing.assert_array_equal(part.label, ds.label.values)
        adv = ds.adv_correct.values
        for j, col in enumerate(robust):
            np.testing.assert_array_equal(part[col], adv[0, j].astype(int))
        np.testing.assert_array_equal(part[min_flip_column("pgd-linf")], robustness.min_flip_eps(ds).values[0])
        assert (part.regularizer == ds.attrs["regularizer"]).all() and (part.seed == ds.attrs["seed"]).all()
        assert (part.strength == ds.attrs["strength"]).all()
    assert frame.correct.dtype == np.int8 and frame[robust[0]].dtype == np.int8


def test_run_frame(study, frame):
    runs = study.to_frame(level="run", progress=False)
    assert list(runs.columns[:len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert runs.attrs["level"] == "run" and len(runs) == 4
    for rec in runs.to_dict("records"):
        ds = study[rec["run_id"]]
        part = frame[frame.run_id == rec["run_id"]]
        assert rec["n_samples"] == 120
        assert rec["rms"] == pytest.approx(part.rms.mean())
        assert rec["accuracy"] == pytest.approx(float(calibration.accuracy(ds)))
        assert rec["ece"] == pytest.approx(float(calibration.ece(ds)))
        assert rec["signed_ece"] == pytest.approx(float(calibration.signed_ece(ds)))
        ra = robustness.robust_accuracy(ds)
        for e in ra.eps.values:
            assert rec[robust_acc_column("pgd-linf", e)] == pytest.approx(float(ra.sel(attack="pgd-linf", eps=e)))
        assert rec[min_flip_column("pgd-linf")] == pytest.approx(np.median(part[min_flip_column("pgd-linf")]))


def test_attack_and_eps_selection(study):
    t = study_frame(study, attack="pgd-linf", eps=[2 / 255], progress=False, run_ids=study.run_ids[:1])
    assert [c for c in t.columns if c.startswith("robust")] == [robust_column("pgd-linf", 2 / 255)]
    with pytest.raises(QueryError, match="attack: 'fgsm' is not in this run"):
        study_frame(study, attack="fgsm", progress=False)
    with pytest.raises(QueryError, match="eps: 0.5 is not in this run"):
        study_frame(study, eps=0.5, progress=False)
    with pytest.raises(QueryError, match=r"level: expected one of \['sample', 'run'\], got 'class'"):
        study_frame(study, level="class", progress=False)


def test_progress_and_center(study, capsys):
    t = study.to_frame(progress=True, center="mean", run_ids=study.run_ids[:2])
    assert len(t) == 240 and t.cos_true.notna().all()
    assert "analysis table" in capsys.readouterr().err


def test_dump_without_head_and_without_attacks(tmp_path):
    rng = np.random.default_rng(0)
    st = cg.open_study(tmp_path / "nohead", create=True)
    f = rng.normal(size=(50, 6)).astype(np.float32)
    st.add(cg.from_arrays(f, rng.normal(size=(50, 3)), rng.integers(0, 3, 50),
                          attrs={"run_id": "x", "regularizer": "ce", "seed": 0}))
    with pytest.warns(UserWarning, match="no head_weight.*mean class centers"):
        t = st.to_frame(progress=False)  # the head-based default falls back to the mean centers, said once
    assert t.attrs["center"] == "mean" and not any(c.startswith("robust") for c in t.columns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = st.to_frame(progress=False, center="mean")
    assert m.cos_true.notna().all() and m.attrs["center"] == "mean"
    pd.testing.assert_frame_equal(t, m)  # the same computation


def test_empty_study(tmp_path):
    t = cg.open_study(tmp_path / "empty", create=True).to_frame(progress=False)
    assert list(t.columns) == list(SAMPLE_COLUMNS) and len(t) == 0


def test_table_feeds_mediation(frame):
    res = cg.causal.mediate(frame, treatment="regularizer", control="ce", treated="label_smoothing",
                            mediators=["rms", "cos_true"], outcome=["overconfidence", "correct"],
                            covariates=[], n_boot=50, rng=0, bootstrap="naive")
    s = res.summary()
    assert set(s.outcome) == {"overconfidence", "correct"}
    prop = s.effect.str.startswith("prop_mediated")
    assert s.estimate[~prop].notna().all()
    # a proportion is NaN only where it is not estimable, and then the note says why
    assert s[prop & s.estimate.isna()].note.str.contains("not estimable").all()
    assert res.n_runs == 4 and res.n_samples == 480
    cat = frame.assign(label=frame.label.astype("category"))
    r2 = cg.causal.mediate(cat, treatment="regularizer", mediators="rms", outcome="overconfidence",
                           covariates=["label"], n_boot=0)
    s2 = r2.summary()
    assert s2.estimate[~s2.effect.str.startswith("prop_mediated")].notna().all()
    assert isinstance(pd.DataFrame(r2.sensitivity), pd.DataFrame)
