"""Function-level decomposition (scale and shape of the centred logits): invariance to reparametrisation,
closed-form cases, runs without a head, the temperature-scaling comparison; pairing by evidence; basis drift;
the all-pairs U-statistic variance; the prose that follows the signs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import causalgeom as cg
from causalgeom.causal.decompose import _hoeffding_t, decompose, floor_text, split_text

from tests._helpers import REPO_ROOT

K, D, N = 5, 8, 120


def _base(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, N)
    centers = rng.normal(size=(K, D))
    h = 2.0 * (centers[labels] + 0.9 * rng.normal(size=(N, D)))
    W, b = centers + 0.3 * rng.normal(size=(K, D)), 0.2 * rng.normal(size=K)
    return labels, h, W, b


def _ds(run_id, reg, h, W, b, labels, logits=None, head=True, **attrs):
    h, W, b = (np.asarray(a, dtype=np.float32) for a in (h, W, b))
    z = h @ W.T + b if logits is None else np.asarray(logits, dtype=np.float32)
    kw = dict(head_weight=W, head_bias=b) if head else {}
    return cg.from_arrays(h, z, labels, attrs={"run_id": run_id, "regularizer": reg, **attrs}, **kw)


def _study(path, runs):
    s = cg.open_study(path, create=True)
    for ds in runs:
        s.add(ds)
    return s


def _est(res, outcome="nll"):
    return res.summary().set_index(["outcome", "component"])["estimate"]


OUT = ["signed_ece", "ece", "nll", "accuracy", "brier"]


def test_identical_logits_under_two_parametrisations_get_identical_splits(tmp_path):
    labels, h, W, b = _base()
    z_c = (h @ W.T + b).astype(np.float32)
    z_t = (0.7 * z_c).astype(np.float32)  # the treated network's outputs, stored once
    a = _study(tmp_path / "a", [_ds("ce-s0", "ce", h, W, b, labels, z_c),
                                _ds("mx-s0", "mixup", 0.7 * h, W, 0.7 * b, labels, z_t)])
    c = _study(tmp_path / "c", [_ds("ce-s0", "ce", h, W, b, labels, z_c),
                                _ds("mx-s0", "mixup", 1.4 * h, 0.5 * W, 0.7 * b, labels, z_t)])
    ra = decompose(a, control="ce", treated="mixup", outcome=OUT, n_boot=50, rng=0)
    rc = decompose(c, control="ce", treated="mixup", outcome=OUT, n_boot=50, rng=0)
    assert ra.factors == ("scale", "shape") and ra.level == "function"
    np.testing.assert_allclose(_est(ra).to_numpy(), _est(rc).to_numpy(), rtol=0, atol=1e-9)
    # all of the gap is in the scale: the shape of 0.7·z~ is the shape of z~
    e = _est(ra)
    for o in OUT:  # float32 storage of 0.7·z: the shapes agree to ~1e-7 relative
        assert abs(e[o, "shape"]) < 1e-6
        assert e[o, "scale"] == pytest.approx(e[o, "total"], abs=1e-6)
    assert abs(e["nll", "total"]) > 1e-3
    # the representation-level split does depend on the parametrisation (a description, not a causal share)
    rep_a = decompose(a, control="ce", treated="mixup", outcome="nll", factors=("magnitude", "head_norm",
                                                                               "orientation"), n_boot=50, rng=0)
    rep_c = decompose(c, control="ce", treated="mixup", outcome="nll", factors=("magnitude", "head_norm",
                                                                               "orientation"), n_boot=50, rng=0)
    assert rep_a.level == "representation" and "not a causal share" in rep_a.status
    assert abs(_est(rep_a)["nll", "magnitude"] - _est(rep_c)["nll", "magnitude"]) > 1e-3


def test_exactly_scaled_logits_put_the_whole_gap_in_the_scale():
    from causalgeom.causal.decompose import _Run, _run_outcome, _scale_shape, _world_stats, shapley_values

    labels, h, W, b = _base(7)
    z = h @ W.T + b
    runs = []
    for zz in (z, 0.7 * z):  # float64: the treated logits are 0.7 x the control's
        r = _Run("r", labels)
        r.scale, r.shape = _scale_shape(zz)
        runs.append(r)
    worlds = _world_stats(tuple(runs), ("scale", "shape"), "function", adv=False)
    for o in ("nll", "signed_ece", "ece", "brier"):
        v = np.array([_run_outcome(o, w, 15) for w in worlds])
        phi = shapley_values(v)
        assert abs(phi[1]) < 1e-12 and phi[0] == pytest.approx(v[-1] - v[0], abs=1e-12)
        assert phi.sum() == pytest.approx(v[-1] - v[0], abs=1e-14)


def test_a_pure_reparametrisation_gets_zero_for_every_factor(tmp_path):
    labels, h, W, b = _base(1)
    z = (h @ W.T + b).astype(np.float32)
    s = _study(tmp_path / "s", [_ds("ce-s0", "ce", h, W, b, labels, z),
                                _ds("mx-s0", "mixup", 2 * h, W / 2, b, labels, z)])  # the same network
    e = _est(decompose(s, control="ce", treated="mixup", outcome=OUT, n_boot=50, rng=0))
    assert (e.abs() == 0).all()


def test_shape_only_change_and_shapley_shares_sum_to_total(tmp_path):
    labels, h, W, b = _base(2)
    rng = np.random.default_rng(3)
    runs = []
    for i in range(3):
        z = h @ W.T + b + 0.3 * rng.normal(size=(N, K))
        runs.append(_ds(f"ce-s{i}", "ce", h, W, b, labels, z, head=False))
        zt = 0.6 * z + 0.5 * rng.normal(size=(N, K))
        runs.append(_ds(f"mx-s{i}", "mixup", h, W, b, labels, zt, head=False))  # headless dumps
    s = _study(tmp_path / "s", runs)
    res = decompose(s, control="ce", treated="mixup", outcome=OUT)
    e = _est(res)
    for o in OUT:
        assert e[o, "scale"] + e[o, "shape"] == pytest.approx(e[o, "total"], abs=1e-12)
    assert res.alignment.empty and res.initialisation.startswith("not needed")
    pi = res.per_image
    np.testing.assert_allclose(pi["scale"] + pi["shape"], pi["total"], atol=1e-12)
    # the temperature comparison: a fitted temperature on one half, ECE on the other (paired split, recorded)
    t = res.temperature.set_index("run_id")
    assert set(t.arm) == {"control", "treated"} and t.loc["ce-s0", "temperature"] > 0
    assert t.loc[t.arm == "treated", "temperature"].isna().all()
    split = res.temperature_split
    assert len(np.intersect1d(split["fit"], split["eval"])) == 0 and len(split["fit"]) == N // 2


def test_head_factors_need_evidence_of_a_shared_initialisation(tmp_path):
    labels, h, W, b = _base(4)
    runs = [_ds(f"{arm}-s{i}", arm, h * (1 + 0.1 * i), W, b, labels, seed=i) for arm in ("ce", "mixup")
            for i in range(2)]
    s = _study(tmp_path / "s", runs)
    with pytest.raises(cg.QueryError, match=r"factors=\('scale', 'shape'\)"):
        decompose(s, control="ce", treated="mixup", outcome="nll", factors=("head", "magnitude", "direction"))
    res = decompose(s, control="ce", treated="mixup", outcome="nll", factors=("head", "magnitude", "direction"),
                    pairs="seed")
    assert res.initialisation.startswith("stated, not verified") and "not verified" in res.design
    assert "same initialisation verified" not in res.design
    # with matching digests the seed pairing is verified and chosen automatically
    runs = [_ds(f"{arm}-s{i}", arm, h * (1 + 0.1 * i), W, b, labels, seed=i, init_digest=f"d{i}")
            for arm in ("ce", "mixup") for i in range(2)]
    s2 = _study(tmp_path / "s2", runs)
    res = decompose(s2, control="ce", treated="mixup", outcome="nll", factors=("head", "magnitude", "direction"))
    assert res.pairing == "seed" and res.initialisation.startswith("verified")
    # same seed, different digests: not the same initialisation, whatever the seed says
    runs = [_ds(f"{arm}-s{i}", arm, h, W, b, labels, seed=i, init_digest=f"{arm}{i}")
            for arm in ("ce", "mixup") for i in range(2)]
    s3 = _study(tmp_path / "s3", runs)
    with pytest.raises(cg.QueryError, match="init_digest"):
        decompose(s3, control="ce", treated="mixup", outcome="nll", pairs="seed")
    assert decompose(s3, control="ce", treated="mixup", outcome="nll").pairing == "all"


def _rotation(theta_deg, d):
    """Rotate every coordinate pair (2i, 2i+1) by theta."""
    t = np.radians(theta_deg)
    Q = np.eye(d)
    for i in range(0, d - 1, 2):
        Q[i:i + 2, i:i + 2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return Q


@pytest.mark.parametrize("theta", [0, 30, 45])
def test_basis_drift_is_measured_directly(tmp_path, theta):
    labels, h, W, b = _base(5)
    Q = _rotation(theta, D)
    # the treated run: the same function in feature coordinates rotated by theta (head rotated alike), smaller
    runs = [_ds("ce-s0", "ce", h, W, b, labels, seed=0, init_digest="x"),
            _ds("mixup-s0", "mixup", 0.7 * h @ Q.T, W @ Q.T, b, labels, seed=0, init_digest="x")]
    s = _study(tmp_path / "s", runs)
    with pytest.warns(RuntimeWarning, match="unaligned") if theta else _nowarn():
        res = decompose(s, control="ce", treated="mixup", outcome="nll", factors=("head", "magnitude", "direction"),
                        n_boot=30, rng=0)
    a = res.alignment.iloc[0]
    assert a.basis_angle == pytest.approx(theta, abs=1.0)
    assert bool(a.aligned) == (theta == 0)


class _nowarn:
    def __enter__(self):
        import warnings

        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        self._c.__exit__(*exc)


def test_u_statistic_variance_is_unbiased_and_covers():
    from scipy import stats

    rng = np.random.default_rng(0)
    level = 0.95
    # F = a_i + b_j + e_ij, σ_a = σ_b = σ_e = 1 at 5 + 5: Var(mean) = 1/5 + 1/5 + 1/25
    n = 5
    truth = 1 / n + 1 / n + 1 / n ** 2
    var_hat, cover = [], []
    for _ in range(3000):
        F = rng.normal(size=(n, 1)) + rng.normal(size=(1, n)) + rng.normal(size=(n, n))
        row, col = F.mean(1), F.mean(0)
        resid = F - row[:, None] - col[None, :] + F.mean()
        ms_e = (resid ** 2).sum() / (n - 1) ** 2
        var_hat.append((n * row.var(ddof=1) + n * col.var(ddof=1) - ms_e) / n ** 2)
        est, lo, hi = _hoeffding_t(F, level)
        cover.append(lo <= 0 <= hi)
    assert np.mean(var_hat) == pytest.approx(truth, rel=0.05)  # unbiased (the old estimate added MS_e twice)
    assert 0.93 <= np.mean(cover) <= 0.97
    # i.i.d. pair values (no run effects): never anti-conservative
    cover = [(lambda r: r[1] <= 0 <= r[2])(_hoeffding_t(rng.normal(size=(3, 3)), level)) for _ in range(2000)]
    assert np.mean(cover) >= 0.95
    # additive pair values F = Y_t − Y_c: exactly Welch's interval
    yc, yt = rng.normal(size=3), rng.normal(size=4) + 1
    est, lo, hi = _hoeffding_t(yt[None, :] - yc[:, None], level)
    ci = stats.ttest_ind(yt, yc, equal_var=False).confidence_interval(level)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)


@pytest.mark.slow
def test_all_pairs_and_seed_pair_intervals_cover():
    import importlib.util

    path = REPO_ROOT / "benchmarks" / "bench_coverage.py"
    spec = importlib.util.spec_from_file_location("bench_coverage", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for r in (3, 5):
        cov = mod.decompose_cell(r, n_sim=300, seed=r)
        for key, c in cov.items():
            assert 0.90 <= c <= 0.99, (r, key, c)  # 300 simulations: Monte Carlo SE 0.013 around 0.95


# -- prose --------------------------------------------------------------------------------------
def test_split_text_follows_the_signs():
    t = split_text(-0.11, {"scale": -0.17, "shape": 0.06})
    assert "scale lowered it by 0.17 while shape raised it by 0.06" in t
    assert "mostly" not in t and "main part is" not in t  # a share of 155% is not "the main part"
    t = split_text(0.2, {"scale": 0.15, "shape": 0.05})
    assert "The main part is the scale (75% of the change)" in t and "offset" not in t
    t = split_text(0.2, {"scale": 0.1, "shape": 0.1})
    assert "main part is the scale (50%" in t
    t = split_text(0.3, {"head": 0.1, "magnitude": 0.1, "direction": 0.1})
    assert "No factor carries half" in t
    t = split_text(0.1, {"scale": -0.245, "shape": 0.345})
    assert "main part" not in t.replace("No factor is the main part", "") and "mostly" not in t
    assert "shape raised it by 0.34 while scale lowered it by 0.24" in t or \
        "shape raised it by 0.35 while scale lowered it by 0.24" in t or "shape raised it by 0.35 while scale lowered it by 0.25" in t


def test_floor_text_says_how_many_seeds():
    # one implementation with mediate's sentence (causalgeom.causal.results.floor_interval_sentence)
    assert floor_text(0.25, True, "seed", 3, 3, 3) == (
        "The 95% interval of the total excludes 0, but with 3 seed pairs the exact randomization test cannot give p "
        "below 0.25 (> 0.05), so it cannot confirm it at 0.05; 6 seed pairs (3 more) would let it.")
    assert "4 seeds per arm (1 more each)" in floor_text(0.1, True, "all", 3, 3, 9)
    assert floor_text(0.1, False, "all", 3, 3, 9) == "" and floor_text(0.03, True, "all", 4, 4, 16) == ""


# -- pairing by evidence: the digest of the initial weights ---------------------------------------
def test_training_records_the_init_digest_and_extract_carries_it(tmp_path):
    import json

    import torch

    from causalgeom import train
    from causalgeom.pipeline.extract import _run_attrs
    from causalgeom.pipeline.train import TrainConfig

    tiny = dict(dataset="digits", model="small_cnn", epochs=1, batch_size=32, lr=0.05, max_train_samples=64)
    a = train.train_run(TrainConfig(**tiny, regularizer="ce"), tmp_path / "a", progress=False)
    b = train.train_run(TrainConfig(**tiny, regularizer="label_smoothing", label_smoothing=0.1), tmp_path / "b",
                        progress=False)
    c = train.train_run(TrainConfig(**{**tiny, "seed": 1}), tmp_path / "c", progress=False)
    da, db, dc = (json.loads((r / "config.json").read_text())["init_digest"] for r in (a, b, c))
    assert da == db and da != dc and len(da) == 64  # same seed and model: same start; another seed: another
    model, cfg = train.load_checkpoint(a)
    assert cfg["init_digest"] == da and _run_attrs(cfg, "test", a)["init_digest"] == da
    # the digest is the sha256 of the initial state dict: the trained weights give another one
    assert train.init_digest(model.float()) != da
    torch.manual_seed(0)
    m1 = torch.nn.Linear(3, 2)
    torch.manual_seed(0)
    m2 = torch.nn.Linear(3, 2)
    assert train.init_digest(m1) == train.init_digest(m2)
    with torch.no_grad():
        m2.bias[0] += 1e-6
    assert train.init_digest(m1) != train.init_digest(m2)
