"""Geometry against closed forms, numerical optimization (scipy L-BFGS), torch autograd and direct numpy code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

import causalgeom as cg
from causalgeom import geometry as geo

from causalgeom.testing import make_run


def _ce(c, W, b, q):
    return float(-(q * special.log_softmax(W @ c + b)).sum())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ds = make_run(n=300, d=8, k=4, seed=11)
    path = tmp_path_factory.mktemp("geo") / "r.zarr"
    cg.save(ds, path, sample_chunk=64)
    lazy = cg.open(path)
    assert len(lazy["features"].chunks[0]) > 1
    return ds, lazy


def _no_head(ds):
    return ds.drop_vars(["head_weight", "head_bias"])


# -- magnitude ---------------------------------------------------------------------------------
def test_magnitude_against_numpy():
    ds = make_run(n=50, d=9)
    f = ds["features"].values.astype(np.float64)
    mag = geo.magnitude(ds)
    np.testing.assert_allclose(mag["norm"], np.linalg.norm(f, axis=1), rtol=1e-12)
    np.testing.assert_allclose(mag["rms"], np.sqrt((f ** 2).mean(axis=1)), rtol=1e-12)
    assert mag["norm"].dims == ("sample",)


# -- minimal-loss centers ----------------------------------------------------------------------
@pytest.mark.parametrize("k,d,eps", [(4, 8, 0.1), (5, 5, 0.2), (6, 5, 0.05)])
def test_minimal_loss_centers_solve_softmax_equation_and_match_lbfgs(k, d, eps):
    rng = np.random.default_rng(k * d)
    W, b = rng.normal(size=(k, d)), rng.normal(size=k) * 0.5
    C, info = geo.minimal_loss_centers(W, b, eps)
    assert info["exact"] and info["rank"] == k - 1
    Q = geo.smoothed_targets(k, eps)
    for j in range(k):
        np.testing.assert_allclose(special.softmax(W @ C[j] + b), Q[j], rtol=1e-9, atol=1e-12)
        # the loss attains its lower bound H(q) there
        assert _ce(C[j], W, b, Q[j]) == pytest.approx(-(Q[j] * np.log(Q[j])).sum(), abs=1e-10)
        # numerical optimization from 0 stays in the row space of PW, so it finds the minimum-norm minimizer
        res = optimize.minimize(_ce, np.zeros(d), args=(W, b, Q[j]), jac=lambda c, *a: W.T @ (
            special.softmax(W @ c + b) - Q[j]), method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
        np.testing.assert_allclose(C[j], res.x, atol=2e-5 * max(1, np.abs(C[j]).max()))
        # every perturbed point has a higher loss; null-space moves keep the loss but increase the norm
        for _ in range(30):
            delta = rng.normal(size=d) * 1e-2
            assert _ce(C[j] + delta, W, b, Q[j]) >= _ce(C[j], W, b, Q[j]) - 1e-12
        _, _, Vt = np.linalg.svd((np.eye(k) - 1 / k) @ W)
        if d > k - 1:
            null = Vt[k - 1:].T @ rng.normal(size=d - k + 1)
            assert _ce(C[j] + null, W, b, Q[j]) == pytest.approx(_ce(C[j], W, b, Q[j]), abs=1e-9)
            assert np.linalg.norm(C[j] + null) > np.linalg.norm(C[j])
        row = np.linalg.pinv((np.eye(k) - 1 / k) @ W) @ rng.normal(size=k)
        assert _ce(C[j] + 1e-2 * row / np.linalg.norm(row), W, b, Q[j]) > _ce(C[j], W, b, Q[j])


def test_minimal_loss_center_equals_shift_closed_form_when_full_row_rank():
    rng = np.random.default_rng(3)
    k, d, eps = 4, 7, 0.15
    W, b = rng.normal(size=(k, d)), rng.normal(size=k)
    C, _ = geo.minimal_loss_centers(W, b, eps)
    Wp = np.linalg.pinv(W)
    for j, q in enumerate(geo.smoothed_targets(k, eps)):
        u, v = Wp @ (np.log(q) - b), Wp @ np.ones(k)
        t = -(u @ v) / (v @ v)
        np.testing.assert_allclose(C[j], u + t * v, atol=1e-10)


def test_minimal_loss_unsolvable_returns_least_squares_point_with_warning():
    rng = np.random.default_rng(4)
    k, d, eps = 7, 3, 0.1
    W, b = rng.normal(size=(k, d)), rng.normal(size=k)
    with pytest.warns(RuntimeWarning, match="no exact solution"):
        C, info = geo.minimal_loss_centers(W, b, eps)
    assert not info["exact"] and info["rank"] == d
    P = np.eye(k) - 1 / k
    for j, q in enumerate(geo.smoothed_targets(k, eps)):
        ref = np.linalg.lstsq(P @ W, P @ (np.log(q) - b), rcond=None)[0]
        np.testing.assert_allclose(C[j], ref, atol=1e-10)


def test_hard_target_direction_is_the_small_eps_limit_and_loss_falls_along_it():
    rng = np.random.default_rng(5)
    k, d = 5, 9
    W, b = rng.normal(size=(k, d)), rng.normal(size=k) * 0.1
    D, info = geo.minimal_loss_centers(W, b, 0.0)
    assert info["direction_only"]
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0)
    Ce, _ = geo.minimal_loss_centers(W, b, 1e-12)
    cos = (Ce * D).sum(1) / np.linalg.norm(Ce, axis=1)
    assert np.all(cos > 0.999)
    for j in range(k):
        e = np.eye(k)[j]
        losses = [_ce(s * D[j], W, b, e) for s in (0.5, 1, 2, 4, 8, 100)]
        assert all(x > y for x, y in zip(losses[:5], losses[1:5])) and losses[-1] < 1e-12


def test_class_centers_kinds_and_smoothing_resolution():
    ds = make_run(n=120, d=6, k=3, regularizer="label_smoothing", strength=0.1)
    W, b = ds["head_weight"].values.astype(np.float64), ds["head_bias"].values.astype(np.float64)
    ml = geo.class_centers(ds)
    assert ml.dims == ("class", "feature") and ml.attrs["smoothing"] == 0.1 and not ml.attrs["direction_only"]
    np.testing.assert_allclose(ml.values, geo.minimal_loss_centers(W, b, 0.1)[0])
    np.testing.assert_allclose(geo.class_centers(ds, "weight").values, W)
    f, y = ds["features"].values.astype(np.float64), ds["label"].values
    np.testing.assert_allclose(geo.class_centers(ds, "mean").values, np.stack([f[y == c].mean(0) for c in range(3)]))
    assert geo.class_centers(make_run(n=30, d=6, k=3), "minimal_loss").attrs["direction_only"]
    ds.attrs.update(regularizer="label_smoothing+mixup", regularizer_params={"label_smoothing": 0.2, "alpha": 1.0})
    assert geo.run_smoothing(ds) == 0.2
    ds.attrs.update(regularizer="mixup", regularizer_params={"alpha": 0.4})
    assert geo.run_smoothing(ds) == 0.0
    ds.attrs.update(regularizer="label_smoothing+cutmix", regularizer_params={"alpha": 1.0})
    with pytest.raises(cg.SchemaError, match="smoothing="):
        geo.run_smoothing(ds)
    with pytest.raises(ValueError, match="kind"):
        geo.class_centers(ds, "median")


# -- cosines, margins, comparison --------------------------------------------------------------
def _cos_ref(f, C):
    return (f @ C.T) / np.linalg.norm(f, axis=1)[:, None] / np.linalg.norm(C, axis=1)[None]


def test_cosine_and_angular_margin_against_numpy():
    ds = make_run(n=80, d=7, k=4)
    f, y = ds["features"].values.astype(np.float64), ds["label"].values
    pred = ds["logits"].values.argmax(1)
    for kind in geo.CENTER_KINDS:
        C = geo.class_centers(ds, kind).values
        cos = _cos_ref(f, C)
        out = geo.cosine_to_center(ds, kind)
        np.testing.assert_allclose(out["cos_true"], cos[np.arange(80), y], atol=1e-12)
        np.testing.assert_allclose(out["cos_pred"], cos[np.arange(80), pred], atol=1e-12)
        theta = np.arccos(np.clip(cos, -1, 1))
        ref = np.array([np.delete(theta[i], y[i]).min() - theta[i, y[i]] for i in range(80)])
        np.testing.assert_allclose(geo.angular_margin(ds, kind), ref, atol=1e-10)
    # weight centers without bias: positive angular margin <=> ... correct when all ||w_k|| equal
    given = geo.cosine_to_center(ds, centers=geo.class_centers(ds, "weight"))
    np.testing.assert_allclose(given["cos_true"], geo.cosine_to_center(ds, "weight")["cos_true"])


def test_compare_centers_against_scipy():
    ds = make_run(n=200, d=6, k=3, seed=2)
    cmp_ = geo.compare_centers(ds, level=0.9)
    assert cmp_["pearson"].dims == ("kind", "cosine")
    conf = special.softmax(ds["logits"].values.astype(np.float64), axis=1).max(1)
    for kind in geo.CENTER_KINDS:
        x = geo.cosine_to_center(ds, kind)["cos_pred"].values
        pr = stats.pearsonr(x, conf)
        lo, hi = pr.confidence_interval(confidence_level=0.9)
        sel = cmp_.sel(kind=kind, cosine="pred")
        assert float(sel["pearson"]) == pytest.approx(pr.statistic, abs=1e-10)
        assert float(sel["pearson_low"]) == pytest.approx(lo, abs=1e-8)
        assert float(sel["pearson_high"]) == pytest.approx(hi, abs=1e-8)
        rho = stats.spearmanr(x, conf).statistic
        assert float(sel["spearman"]) == pytest.approx(rho, abs=1e-10)
        z, se = np.arctanh(rho), np.sqrt(1.06 / (200 - 3))
        assert float(sel["spearman_low"]) == pytest.approx(np.tanh(z - stats.norm.ppf(0.95) * se), abs=1e-10)


# -- cone test, confidence grid, gradient ------------------------------------------------------
def test_cone_test_against_brute_force():
    ds = make_run(n=60, d=5, k=4, seed=3)
    W, b = ds["head_weight"].values.astype(np.float64), ds["head_bias"].values.astype(np.float64) * 20
    ds["head_bias"] = ("class", b.astype(np.float32))
    f = ds["features"].values.astype(np.float64)
    scales = [0.05, 0.25, 0.5, 1.0, 2.0, 8.0]
    ct = geo.cone_test(ds, scales=scales, with_bias=True).compute()
    base = (f @ W.T + b).argmax(1)
    changed = np.array([(s * f @ W.T + b).argmax(1) != base for s in scales])
    np.testing.assert_array_equal(ct["changed"], changed)
    down = [max([s for s, c in zip(scales, changed[:, i]) if c and s < 1], default=np.nan) for i in range(60)]
    np.testing.assert_array_equal(ct["flip_scale_down"], down)
    assert float(ct["frac_never_flips"]) == pytest.approx(1 - changed.any(0).mean())
    assert changed.any()  # a large bias makes small scales flip
    nb = geo.cone_test(ds, scales=scales, with_bias=False).compute()
    assert bool(nb["never_flips"].all()) and float(nb["frac_never_flips"]) == 1.0  # exact cones
    with pytest.raises(ValueError, match="scales"):
        geo.cone_test(ds, scales=[0.0, 1.0])


def test_confidence_grid_against_brute_force():
    ds = make_run(n=25, d=5, k=3, seed=4)
    W, b = ds["head_weight"].values.astype(np.float64), ds["head_bias"].values.astype(np.float64)
    f = ds["features"].values.astype(np.float64)
    k = ds["logits"].values.argmax(1)
    C = geo.class_centers(ds, "minimal_loss").values
    scales, angles = [0.5, 1.0, 3.0], [0.0, 0.4, 1.2]
    grid = geo.confidence_grid(ds, scales, angles)
    ref = np.zeros((3, 3, 3))
    for i in range(25):
        u = C[k[i]] / np.linalg.norm(C[k[i]])
        perp = f[i] - (f[i] @ u) * u
        v = perp / np.linalg.norm(perp)
        for a, s in enumerate(scales):
            for c, th in enumerate(angles):
                p = special.softmax(W @ (s * np.linalg.norm(f[i]) * (np.cos(th) * u + np.sin(th) * v)) + b)
                ref[a, c] += p.max(), p[k[i]], p.argmax() == k[i]
    np.testing.assert_allclose(grid["confidence"], ref[..., 0] / 25, rtol=1e-10)
    np.testing.assert_allclose(grid["prob_center"], ref[..., 1] / 25, rtol=1e-10)
    np.testing.assert_allclose(grid["agree"], ref[..., 2] / 25, rtol=1e-10)
    assert grid["confidence"].dims == ("scale", "angle") and int(grid["n"]) == 25


def test_gradient_split_against_autograd():
    ds = make_run(n=40, d=6, k=4, seed=5, regularizer="label_smoothing", strength=0.1)
    W = torch.tensor(ds["head_weight"].values, dtype=torch.float64)
    b = torch.tensor(ds["head_bias"].values, dtype=torch.float64)
    h = torch.tensor(ds["features"].values, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(ds["label"].values)
    loss = torch.nn.functional.cross_entropy(h @ W.T + b, y, label_smoothing=0.1, reduction="sum")
    (g,) = torch.autograd.grad(loss, h)
    g, hv = g.numpy(), h.detach().numpy()
    out = geo.gradient_split(ds)
    assert out.attrs["smoothing"] == 0.1
    hn = hv / np.linalg.norm(hv, axis=1, keepdims=True)
    radial = (g * hn).sum(1)
    np.testing.assert_allclose(out["grad_norm"], np.linalg.norm(g, axis=1), rtol=1e-9)
    np.testing.assert_allclose(out["radial"], radial, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["tangential"], np.linalg.norm(g - radial[:, None] * hn, axis=1), rtol=1e-7, atol=1e-10)
    cosang = -(g * hv).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(hv, axis=1)
    np.testing.assert_allclose(out["angle_to_neg_h"], np.arccos(cosang), atol=1e-7)


# -- neural collapse, head ---------------------------------------------------------------------
def _nc_reference(H, y, W, logits):
    K = W.shape[0]
    N = len(y)
    mu = np.stack([H[y == c].mean(0) for c in range(K)])
    mu_g = H.mean(0)
    Sw = sum((H[y == c] - mu[c]).T @ (H[y == c] - mu[c]) for c in range(K)) / N
    M = mu - mu_g
    Sb = sum(np.outer(M[c], M[c]) for c in range(K)) / K
    out = {"nc1": np.trace(Sw @ np.linalg.pinv(Sb)) / K}
    for name, V in (("means", M), ("weights", W)):
        norms = np.array([np.linalg.norm(v) for v in V])
        cos = [V[i] @ V[j] / norms[i] / norms[j] for i in range(K) for j in range(K) if i != j]
        out[f"nc2_equinorm_{name}"] = np.std(norms) / np.mean(norms)
        out[f"nc2_equiangle_{name}"] = np.std(cos)
        out[f"nc2_maxangle_{name}"] = np.mean([abs(c + 1 / (K - 1)) for c in cos])
    out["nc3"] = np.linalg.norm(W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2
    ncc = np.array([np.argmin([np.linalg.norm(h - m) for m in mu]) for h in H])
    out["nc4"] = np.mean(ncc != logits.argmax(1))
    return out


def test_neural_collapse_against_direct_numpy():
    ds = make_run(n=150, d=6, k=4, seed=6)
    ref = _nc_reference(ds["features"].values.astype(np.float64), ds["label"].values,
                        ds["head_weight"].values.astype(np.float64), ds["logits"].values)
    nc = geo.neural_collapse(ds)
    for key, val in ref.items():
        assert float(nc[key]) == pytest.approx(val, rel=1e-9, abs=1e-12), key
    partial = geo.neural_collapse(_no_head(ds), include_head=False)
    assert "nc3" not in partial and float(partial["nc1"]) == pytest.approx(ref["nc1"], rel=1e-9)


def test_head_stats():
    ds = make_run(n=20, d=4, k=3)
    W, b = ds["head_weight"].values.astype(np.float64), ds["head_bias"].values.astype(np.float64)
    hs = geo.head_stats(ds)
    np.testing.assert_allclose(hs["w_norm"], np.linalg.norm(W, axis=1))
    assert float(hs["w_norm_cv"]) == pytest.approx(np.linalg.norm(W, axis=1).std() / np.linalg.norm(W, axis=1).mean())
    assert float(hs["bias_range"]) == pytest.approx(b.max() - b.min())


# -- missing head, dask ------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda d: geo.class_centers(d, "minimal_loss"), lambda d: geo.class_centers(d, "weight"),
    lambda d: geo.cosine_to_center(d), lambda d: geo.cone_test(d), lambda d: geo.confidence_grid(d),
    lambda d: geo.gradient_split(d), lambda d: geo.neural_collapse(d), lambda d: geo.head_stats(d),
    lambda d: geo.compare_centers(d),
])
def test_functions_needing_the_head_raise_head_missing(call):
    ds = _no_head(make_run(n=20, d=4, k=3))
    with pytest.raises(cg.HeadMissingError, match="head_weight"):
        call(ds)


def test_head_free_functions_work_without_head():
    ds = _no_head(make_run(n=20, d=4, k=3))
    assert geo.magnitude(ds)["norm"].shape == (20,)
    assert geo.cosine_to_center(ds, "mean")["cos_true"].shape == (20,)
    assert geo.compare_centers(ds, kinds=["mean"])["pearson"].shape == (1, 2)


def test_dask_and_numpy_paths_agree(pair):
    ds, lazy = pair
    lm = geo.magnitude(lazy)
    assert lm["norm"].chunks is not None  # lazy
    np.testing.assert_allclose(lm["norm"].values, geo.magnitude(ds)["norm"].values, rtol=1e-12)
    from causalgeom.metrics.blocks import compute

    mag, cos = compute(lm, geo.cosine_to_center(lazy))  # one pass over shared chunks (xarray#11329 workaround)
    np.testing.assert_allclose(mag["rms"], geo.magnitude(ds)["rms"], rtol=1e-12)
    np.testing.assert_allclose(cos["cos_pred"], geo.cosine_to_center(ds)["cos_pred"], rtol=1e-10)
    for kind in geo.CENTER_KINDS:
        np.testing.assert_allclose(geo.class_centers(lazy, kind).values, geo.class_centers(ds, kind).values, rtol=1e-10)
        a, b = geo.cosine_to_center(lazy, kind).compute(), geo.cosine_to_center(ds, kind)
        np.testing.assert_allclose(a["cos_true"], b["cos_true"], rtol=1e-10)
        np.testing.assert_allclose(a["cos_pred"], b["cos_pred"], rtol=1e-10)
    np.testing.assert_allclose(geo.angular_margin(lazy).values, geo.angular_margin(ds).values, rtol=1e-10)
    ct_l, ct = geo.cone_test(lazy).compute(), geo.cone_test(ds)
    np.testing.assert_array_equal(ct_l["changed"], ct["changed"])
    np.testing.assert_array_equal(ct_l["flip_scale_up"], ct["flip_scale_up"])
    np.testing.assert_allclose(geo.confidence_grid(lazy)["confidence"], geo.confidence_grid(ds)["confidence"], rtol=1e-10)
    g_l, g = geo.gradient_split(lazy).compute(), geo.gradient_split(ds)
    np.testing.assert_allclose(g_l["radial"], g["radial"], rtol=1e-10, atol=1e-14)
    nc_l, nc = geo.neural_collapse(lazy), geo.neural_collapse(ds)
    for key in nc.data_vars:
        assert float(nc_l[key]) == pytest.approx(float(nc[key]), rel=1e-9, abs=1e-12)
    cc_l, cc = geo.compare_centers(lazy), geo.compare_centers(ds)
    np.testing.assert_allclose(cc_l["spearman"], cc["spearman"], rtol=1e-10)
