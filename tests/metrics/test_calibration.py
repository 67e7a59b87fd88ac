"""Calibration metrics against outside references: torchmetrics (ECE), scikit-learn (NLL), definitions, scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import optimize, special
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

import causalgeom as cg
from causalgeom import calibration as cal

from causalgeom.testing import make_run


def _run(n=600, k=6, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * scale).astype(np.float32)
    labels = np.where(rng.random(n) < 0.6, logits.argmax(1), rng.integers(0, k, n))
    feats = rng.normal(size=(n, 3)).astype(np.float32)
    return cg.from_arrays(feats, logits, labels, attrs={"run_id": f"c{seed}"}), logits, labels


def _probs(logits):
    return special.softmax(logits.astype(np.float64), axis=1)


@pytest.fixture(scope="module")
def lazy_pair(tmp_path_factory):
    ds, logits, labels = _run(n=500, k=5, seed=3)
    path = tmp_path_factory.mktemp("cal") / "r.zarr"
    cg.save(ds, path, sample_chunk=64)
    lazy = cg.open(path)
    assert lazy["logits"].chunks is not None
    return ds, lazy


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [15, 7])
def test_ece_matches_torchmetrics(norm, n_bins):
    ds, logits, labels = _run(seed=n_bins)
    p = _probs(logits)
    ref = float(multiclass_calibration_error(torch.tensor(p, dtype=torch.float32), torch.tensor(labels),
                                             num_classes=p.shape[1], n_bins=n_bins, norm=norm))
    ours = float(cal.ece(ds, n_bins=n_bins, norm=norm))
    assert ours == pytest.approx(ref, abs=2e-6)
    assert cal.ece_from_probs(p, labels, n_bins=n_bins, norm=norm) == pytest.approx(ref, abs=2e-6)
    assert cal.ece_from_probs(torch.tensor(p), torch.tensor(labels), n_bins=n_bins, norm=norm) == pytest.approx(ref, abs=2e-6)


def test_equal_mass_bins_against_direct_implementation():
    ds, logits, labels = _run(n=503, seed=1)
    p = _probs(logits)
    conf, correct = p.max(1), (p.argmax(1) == labels).astype(float)
    order = np.argsort(conf, kind="stable")
    groups = np.array_split(order, 10)
    assert {len(g) for g in groups} <= {50, 51}
    gaps = np.array([conf[g].mean() - correct[g].mean() for g in groups])
    w = np.array([len(g) for g in groups]) / len(conf)
    assert float(cal.ece(ds, 10, "mass", "l1")) == pytest.approx(np.sum(w * np.abs(gaps)), abs=1e-12)
    assert float(cal.ece(ds, 10, "mass", "l2")) == pytest.approx(np.sqrt(np.sum(w * gaps ** 2)), abs=1e-12)
    assert float(cal.ece(ds, 10, "mass", "max")) == pytest.approx(np.abs(gaps).max(), abs=1e-12)
    rel = cal.reliability(ds, 10, "mass")
    assert rel["count"].values.tolist() == [len(g) for g in groups]
    assert np.all(rel["bin_lower"].values <= rel["bin_upper"].values)
    assert cal.ece_from_probs(p, labels, 10, "mass") == pytest.approx(np.sum(w * np.abs(gaps)), abs=1e-12)


def test_nll_brier_per_sample_against_references():
    ds, logits, labels = _run(seed=2)
    p = _probs(logits)
    assert float(cal.nll(ds)) == pytest.approx(log_loss(labels, p, labels=range(p.shape[1])), rel=1e-9)
    onehot = np.eye(p.shape[1])[labels]
    assert float(cal.brier(ds)) == pytest.approx(np.mean(np.sum((p - onehot) ** 2, axis=1)), rel=1e-12)
    ps = cal.per_sample(ds)
    assert set(ps.data_vars) == {"confidence", "correct", "overconfidence", "nll", "brier"}
    np.testing.assert_allclose(ps["confidence"], p.max(1), rtol=1e-12)
    np.testing.assert_array_equal(ps["correct"], p.argmax(1) == labels)
    np.testing.assert_allclose(ps["overconfidence"], p.max(1) - (p.argmax(1) == labels), atol=1e-12)
    np.testing.assert_allclose(ps["nll"], -np.log(p[np.arange(len(labels)), labels]), rtol=1e-9)
    assert float(cal.accuracy(ds)) == pytest.approx(np.mean(p.argmax(1) == labels))
    assert float(cal.mean_confidence(ds)) == pytest.approx(p.max(1).mean())


def test_signed_ece_and_reliability():
    ds, logits, labels = _run(seed=4, scale=6.0)  # sharp logits, 60 % correct: overconfident
    ps = cal.per_sample(ds)
    s = float(cal.signed_ece(ds))
    assert s > 0.1
    assert s == pytest.approx(float(ps["overconfidence"].mean()), abs=1e-12)
    assert float(cal.signed_ece(ds, 10, "mass")) == pytest.approx(s, abs=1e-12)
    rel = cal.reliability(ds, 15)
    assert int(rel["count"].sum()) == ds.sizes["sample"]
    assert float((rel["weight"] * rel["gap"]).sum()) == pytest.approx(s, abs=1e-12)
    assert float((rel["weight"] * abs(rel["gap"])).sum()) == pytest.approx(float(cal.ece(ds)), abs=1e-12)
    under = cg.from_arrays(ds["features"].values, ds["logits"].values * 0.05, ds["label"].values)
    assert float(cal.signed_ece(under)) < 0  # flat logits: under-confident


def test_classwise_ece_against_loop():
    ds, logits, labels = _run(seed=5)
    p = _probs(logits)
    K, M = p.shape[1], 8
    per = []
    for k in range(K):
        idx = np.clip(np.searchsorted(np.linspace(0, 1, M + 1), p[:, k], side="right") - 1, 0, M - 1)
        e = 0.0
        for b in range(M):
            sel = idx == b
            if sel.any():
                e += sel.mean() * abs(p[sel, k].mean() - (labels[sel] == k).mean())
        per.append(e)
    np.testing.assert_allclose(cal.classwise_ece(ds, M, per_class=True).values, per, atol=1e-12)
    assert float(cal.classwise_ece(ds, M)) == pytest.approx(np.mean(per), abs=1e-12)


def test_fit_temperature_matches_scipy_and_recovers_known_temperature():
    rng = np.random.default_rng(0)
    n, k, T0 = 4000, 5, 2.5
    logits = rng.normal(size=(n, k)) * 4
    labels = np.array([rng.choice(k, p=q) for q in _probs(logits / T0)])
    ds = cg.from_arrays(np.zeros((n, 1)), logits, labels)
    T = cal.fit_temperature(ds)

    def f(logT):
        return log_loss(labels, _probs(ds["logits"].values / np.exp(logT)), labels=range(k))

    ref = np.exp(optimize.minimize_scalar(f, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10}).x)
    assert T == pytest.approx(ref, rel=1e-5)
    assert T == pytest.approx(T0, rel=0.1)
    assert float(cal.nll(ds, temperature=T)) <= float(cal.nll(ds)) + 1e-12


def test_fit_temperature_separable_and_bound():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    ds = cg.from_arrays(np.zeros((20, 1)), logits, np.array([0, 1] * 10))
    T = cal.fit_temperature(ds, bounds=(0.01, 100))
    assert T < 1 and float(cal.nll(ds, temperature=T)) < 1e-9  # NLL -> 0 as T -> 0
    weak = cg.from_arrays(np.zeros((20, 1)), logits * 1e-3, np.array([0, 1] * 10))
    with pytest.warns(RuntimeWarning, match="bound"):
        assert cal.fit_temperature(weak, bounds=(0.01, 100)) == pytest.approx(0.01, rel=1e-6)
    with pytest.raises(ValueError, match="bounds"):
        cal.fit_temperature(ds, bounds=(1, 0.5))


def test_bootstrap_ci_reproducible_and_callable_path_agrees():
    ds, _, _ = _run(n=300, seed=6)
    a = cal.bootstrap_ci(ds, "ece", n_boot=200, rng=np.random.default_rng(1))
    b = cal.bootstrap_ci(ds, "ece", n_boot=200, rng=np.random.default_rng(1))
    assert float(a["low"]) == float(b["low"]) and float(a["high"]) == float(b["high"])
    assert float(a["low"]) <= float(a["estimate"]) <= float(a["high"])
    assert float(a["estimate"]) == pytest.approx(float(cal.ece(ds)))
    assert "percentile" in a.attrs["method"]
    c = cal.bootstrap_ci(ds, lambda d: cal.ece(d), n_boot=20, rng=np.random.default_rng(2))
    s = cal.bootstrap_ci(ds, "ece", n_boot=20, rng=np.random.default_rng(2))
    assert float(c["low"]) == pytest.approx(float(s["low"]), abs=1e-12)
    assert float(c["high"]) == pytest.approx(float(s["high"]), abs=1e-12)
    for m in cal.BOOTSTRAP_METRICS:
        r = cal.bootstrap_ci(ds, m, n_boot=50, rng=0)
        assert float(r["low"]) <= float(r["high"])
    with pytest.raises(ValueError, match="metric"):
        cal.bootstrap_ci(ds, "auc", rng=0)
    with pytest.raises(ValueError, match="rng"):
        cal.bootstrap_ci(ds, "ece", rng=np.random.RandomState(0))


def test_outcomes_from_logits_numpy_torch_agree_with_dataset_functions():
    ds, logits, labels = _run(seed=7)
    out = cal.outcomes_from_logits(logits, labels)
    assert set(out) == {"accuracy", "ece", "signed_ece", "nll", "brier", "mean_confidence"}
    assert out["ece"] == pytest.approx(float(cal.ece(ds)), abs=1e-12)
    assert out["nll"] == pytest.approx(float(cal.nll(ds)), abs=1e-12)
    assert out["brier"] == pytest.approx(float(cal.brier(ds)), abs=1e-12)
    assert out["signed_ece"] == pytest.approx(float(cal.signed_ece(ds)), abs=1e-12)
    tout = cal.outcomes_from_logits(torch.tensor(logits), torch.tensor(labels))
    for key in out:
        assert tout[key] == pytest.approx(out[key], abs=1e-12)
    with pytest.raises(cg.SchemaError, match="labels"):
        cal.outcomes_from_logits(logits, labels[:-1])
    with pytest.raises(cg.SchemaError, match="shape"):
        cal.outcomes_from_logits(logits[:, :1], labels)


def test_dask_and_numpy_paths_agree(lazy_pair):
    ds, lazy = lazy_pair
    ps_lazy = cal.per_sample(lazy)
    assert ps_lazy["confidence"].chunks is not None  # stays lazy
    ps = cal.per_sample(ds)
    for v in ps.data_vars:
        np.testing.assert_allclose(ps_lazy[v].values, ps[v].values, rtol=1e-12)
    for binning in ("width", "mass"):
        for norm in ("l1", "l2", "max"):
            assert float(cal.ece(lazy, 12, binning, norm)) == pytest.approx(float(cal.ece(ds, 12, binning, norm)), abs=1e-12)
    assert float(cal.classwise_ece(lazy)) == pytest.approx(float(cal.classwise_ece(ds)), abs=1e-12)
    assert float(cal.nll(lazy)) == pytest.approx(float(cal.nll(ds)), rel=1e-12)
    assert cal.fit_temperature(lazy) == pytest.approx(cal.fit_temperature(ds), rel=1e-9)
    np.testing.assert_allclose(cal.reliability(lazy)["accuracy"], cal.reliability(ds)["accuracy"])
    assert cal.outcomes_from_logits(lazy["logits"].data, lazy["label"].data) == pytest.approx(
        cal.outcomes_from_logits(ds["logits"].values, ds["label"].values))


def test_errors_name_the_argument():
    ds = make_run(n=40)
    with pytest.raises(ValueError, match=r"norm: expected one of \['l1', 'l2', 'max'\]"):
        cal.ece(ds, norm="l3")
    with pytest.raises(ValueError, match="binning"):
        cal.ece(ds, binning="quantile")
    with pytest.raises(ValueError, match="n_bins"):
        cal.ece(ds, n_bins=0)
    with pytest.raises(ValueError, match="temperature"):
        cal.nll(ds, temperature=0)
    with pytest.raises(cg.SchemaError, match="logits"):
        cal.ece(ds.drop_vars("logits"))
    with pytest.raises(cg.SchemaError, match="xarray.Dataset"):
        cal.ece(np.zeros((3, 3)))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(2, 6), scale=st.floats(0.01, 20.0), seed=st.integers(0, 1000),
       n_bins=st.integers(1, 20))
def test_ece_norm_ordering_property(n, k, scale, seed, n_bins):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * scale
    labels = rng.integers(0, k, n)
    vals = [cal.ece_from_probs(_probs(logits), labels, n_bins, "width", nm) for nm in ("l1", "l2", "max")]
    assert 0.0 <= vals[0] <= vals[1] + 1e-12 <= vals[2] + 2e-12 <= 1.0 + 2e-12
    out = cal.outcomes_from_logits(logits, labels, n_bins)
    assert out["ece"] == pytest.approx(vals[0], abs=1e-9)
    assert abs(out["signed_ece"]) <= out["ece"] + 1e-12


def test_calibration_says_which_confidences_it_used(make_run_fn):
    """ECE and signed ECE always use softmax confidences and say so; a BCE-trained run (zoo attrs) gets a note."""
    plain = make_run_fn(n=50, attacks=False)
    assert cg.calibration.ece(plain).attrs["confidence"] == "softmax"
    assert "confidence_note" not in cg.calibration.signed_ece(plain).attrs
    bce = make_run_fn(n=50, attacks=False, confidence="sigmoid", loss="bce")
    a = cg.calibration.ece(bce).attrs
    assert a["confidence"] == "softmax" and a["trained_confidence"] == "sigmoid" and "bce" in a["confidence_note"]
    # the value itself is unchanged by the flag (same logits, same softmax)
    assert float(cg.calibration.ece(bce)) == float(cg.calibration.ece(make_run_fn(n=50, attacks=False)))
