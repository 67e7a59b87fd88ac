"""Robustness metrics against numpy and statsmodels (Wilson interval)."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

import causalgeom as cg
from causalgeom import robustness as rob

from causalgeom.testing import make_run


def _run_with_two_attacks(n=120, seed=0):
    rng = np.random.default_rng(seed)
    ds = make_run(n=n, d=5, k=3, seed=seed, attacks=False)
    clean = ds["logits"].values.argmax(1) == ds["label"].values
    eps = [0.01, 0.02, 0.04, 0.08]
    thresholds = rng.exponential(0.04, size=(2, n))
    correct = (np.asarray(eps)[None, :, None] < thresholds[:, None, :]) & clean[None, None, :]
    margin = np.where(correct, 1.0, -1.0).astype(np.float32)
    return cg.from_arrays(ds["features"].values, ds["logits"].values, ds["label"].values,
                          head_weight=ds["head_weight"].values, head_bias=ds["head_bias"].values,
                          adv_correct=correct, adv_margin=margin, attacks=["fgsm", "pgd-linf"], eps=eps,
                          attrs={"run_id": f"rob{seed}"}), correct, clean, np.asarray(eps)


@pytest.fixture(scope="module")
def lazy_pair(tmp_path_factory):
    ds = _run_with_two_attacks(n=200, seed=1)[0]
    path = tmp_path_factory.mktemp("rob") / "r.zarr"
    cg.save(ds, path, sample_chunk=32)
    return ds, cg.open(path)


def test_robust_accuracy_and_wilson_ci_against_statsmodels():
    ds, correct, _, eps = _run_with_two_attacks()
    ra = rob.robust_accuracy(ds)
    assert ra.dims == ("attack", "eps")
    np.testing.assert_allclose(ra.values, correct.mean(-1))
    ci = rob.robust_accuracy_ci(ds, level=0.9)
    lo, hi = proportion_confint(correct.sum(-1), correct.shape[-1], alpha=0.1, method="wilson")
    np.testing.assert_allclose(ci["low"], lo, atol=1e-12)
    np.testing.assert_allclose(ci["high"], hi, atol=1e-12)
    assert ci.attrs["method"] == "Wilson score"
    lo0, hi0 = rob.wilson_interval(np.array([0, 10]), np.array([10, 10]))
    assert lo0[0] == pytest.approx(0, abs=1e-15) and hi0[1] == pytest.approx(1)


def test_attack_success_rate_and_auc():
    ds, correct, clean, eps = _run_with_two_attacks(seed=2)
    asr = rob.attack_success_rate(ds)
    np.testing.assert_allclose(asr.values, (clean & ~correct).sum(-1) / clean.sum())
    assert asr.attrs["n_clean_correct"] == clean.sum()
    auc = rob.robust_auc(ds)
    acc = np.concatenate([np.full((2, 1), clean.mean()), correct.mean(-1)], axis=1)
    e = np.concatenate([[0.0], eps])
    ref = [sum((e[i + 1] - e[i]) * (a[i] + a[i + 1]) / 2 for i in range(len(e) - 1)) / e[-1] for a in acc]
    np.testing.assert_allclose(auc.values, ref)
    no_clean = rob.robust_auc(ds, include_clean=False)
    np.testing.assert_allclose(no_clean.values, np.trapezoid(correct.mean(-1), eps, axis=1) / (eps[-1] - eps[0]))
    assert np.all((0 <= auc.values) & (auc.values <= 1))


def test_min_flip_eps_derived_and_stored():
    ds, correct, clean, eps = _run_with_two_attacks(seed=3)
    mfe = rob.min_flip_eps(ds).values
    assert mfe.shape == (2, ds.sizes["sample"])
    for a in range(2):
        for i in range(ds.sizes["sample"]):
            if not clean[i]:
                expect = 0.0
            else:
                flips = [e for e, c in zip(eps, correct[a, :, i]) if not c]
                expect = flips[0] if flips else np.inf
            assert mfe[a, i] == np.float32(expect)
    stored = ds.assign(min_flip_eps=(("attack", "sample"), np.full((2, ds.sizes["sample"]), 0.5, np.float32)))
    assert float(rob.min_flip_eps(stored).max()) == 0.5


def test_missing_attack_outcomes_raise_schema_error():
    ds = make_run(n=20, attacks=False)
    for fn in (rob.robust_accuracy, rob.robust_accuracy_ci, rob.attack_success_rate, rob.robust_auc, rob.min_flip_eps):
        with pytest.raises(cg.SchemaError, match="adv_correct"):
            fn(ds)


def test_dask_and_numpy_paths_agree(lazy_pair):
    ds, lazy = lazy_pair
    np.testing.assert_allclose(rob.robust_accuracy(lazy).values, rob.robust_accuracy(ds).values)
    np.testing.assert_allclose(rob.attack_success_rate(lazy).values, rob.attack_success_rate(ds).values)
    np.testing.assert_allclose(rob.robust_auc(lazy).values, rob.robust_auc(ds).values)
    m = rob.min_flip_eps(lazy)
    assert m.chunks is not None
    np.testing.assert_array_equal(m.values, rob.min_flip_eps(ds).values)
    np.testing.assert_allclose(rob.robust_accuracy_ci(lazy)["low"], rob.robust_accuracy_ci(ds)["low"])
