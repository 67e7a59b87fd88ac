"""Interventions: identities, closed-form cases, outside references (calibration, torchmetrics, attacks.sweep)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from torch import nn

import causalgeom as cg
from causalgeom import interventions as iv
from causalgeom.errors import ConfigError, HeadMissingError, SchemaError

from causalgeom.testing import make_run

N_BOOT = 100


def _head(ds):
    return ds["head_weight"].values.astype(np.float64), ds["head_bias"].values.astype(np.float64)


def _logits0(ds):
    W, b = _head(ds)
    return ds["features"].values.astype(np.float64) @ W.T + b


def _class_means(ds):
    f, y = ds["features"].values.astype(np.float64), ds["label"].values
    return np.stack([f[y == k].mean(0) for k in range(ds.sizes["class"])])


def _assert_outcomes(res, sel, expected, rtol=1e-10):
    for name in iv.OUTCOMES:
        np.testing.assert_allclose(float(res[name].sel(sel)), expected[name], rtol=rtol, atol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def run():
    return make_run(n=600, d=12, k=4, seed=3)


@pytest.fixture(scope="module")
def centers(run):
    return _class_means(run)


# ------------------------------------------------------------------------------------------------
# identities and agreement with the calibration module (outside reference: cg.calibration)
# ------------------------------------------------------------------------------------------------
def test_rescale_one_is_identity_and_matches_calibration(run):
    res = iv.rescale(run, [0.5, 1.0, 3.0], n_boot=N_BOOT, rng=0)
    assert res["accuracy"].dims == ("scale",)
    z0 = _logits0(run) - _head(run)[1]
    b = _head(run)[1]
    y = run["label"].values
    _assert_outcomes(res, {"scale": 1.0}, cg.calibration.outcomes_from_logits(z0 + b, y))
    # the stored float32 logits agree to their precision
    stored = cg.calibration.outcomes_from_logits(run["logits"].values, y)
    assert float(res["nll"].sel(scale=1.0)) == pytest.approx(stored["nll"], rel=1e-5)
    for s in (0.5, 3.0):
        _assert_outcomes(res, {"scale": s}, cg.calibration.outcomes_from_logits(s * z0 + b, y))
    rms = np.sqrt((run["features"].values.astype(np.float64) ** 2).mean())
    np.testing.assert_allclose(res["feature_rms"].values, rms * res["scale"].values, rtol=1e-10)


def test_rescale_ece_matches_torchmetrics(run):
    tm = pytest.importorskip("torchmetrics.functional.classification")
    res = iv.rescale(run, [0.3], n_boot=0, rng=0)
    W, b = _head(run)
    logits = 0.3 * (run["features"].values.astype(np.float64) @ W.T) + b
    probs = torch.softmax(torch.as_tensor(logits), dim=1)
    ref = tm.multiclass_calibration_error(probs, torch.as_tensor(run["label"].values), num_classes=4, n_bins=15,
                                          norm="l1")
    assert float(res["ece"][0]) == pytest.approx(float(ref), abs=1e-6)
    assert np.isnan(res["ece_ci_low"].values).all()  # n_boot=0: no intervals


def test_rotate_zero_is_identity(run, centers):
    f = run["features"].values
    out = iv.rotate_features(f, centers, run["label"].values, 0.0)
    assert np.array_equal(out, f.astype(np.float64))
    res = iv.rotate(run, [0.0, 0.5], center=centers, n_boot=N_BOOT, rng=0)
    _assert_outcomes(res, {"alpha": 0.0}, cg.calibration.outcomes_from_logits(_logits0(run), run["label"].values))


def test_rotate_matches_feature_path(run, centers):
    W, b = _head(run)
    y = run["label"].values
    pred = _logits0(run).argmax(1)
    for toward, cls in (("predicted", pred), ("true", y)):
        res = iv.rotate(run, [-0.5, 0.5, 1.0], toward=toward, center=centers, n_boot=0, rng=0)
        for a in (-0.5, 0.5, 1.0):
            logits = iv.rotate_features(run["features"].values, centers, cls, a) @ W.T + b
            _assert_outcomes(res, {"alpha": a}, cg.calibration.outcomes_from_logits(logits, y), rtol=1e-8)
    assert float(res["cos_to_center"].sel(alpha=1.0)) == pytest.approx(1.0)
    np.testing.assert_allclose(res["feature_rms"].values, res["feature_rms"].values[0], rtol=1e-12)


def test_minimal_loss_centers_by_default(run):
    res = iv.rotate(run, [0.0, 1.0], n_boot=0, rng=0)  # cg.geometry.class_centers(kind="minimal_loss")
    assert res.attrs["center"] == "minimal_loss"
    assert float(res["cos_to_center"].sel(alpha=1.0)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# feature scaling vs temperature scaling
# ------------------------------------------------------------------------------------------------
def test_zero_bias_rescaling_equals_temperature_scaling_exactly():
    ds = make_run(n=300, d=8, k=3, bias=False, attacks=False)
    scales = [0.25, 0.5, 2.0, 4.0]
    cmp = iv.temperature_vs_scaling(ds, scales)
    assert np.all(cmp["max_abs_dprob"].values == 0.0)
    for name in iv.OUTCOMES:
        assert np.all(cmp[f"{name}_diff"].values == 0.0), name
    res = iv.rescale(ds, scales, n_boot=0, rng=0)
    z = ds["features"].values.astype(np.float64) @ ds["head_weight"].values.astype(np.float64).T
    for s in scales:  # temperature scaling by T = 1/s through the calibration module
        ref = cg.calibration.outcomes_from_logits(z, ds["label"].values, temperature=1 / s)
        _assert_outcomes(res, {"scale": s}, ref, rtol=1e-9)
        for name in iv.OUTCOMES:
            assert float(res[name].sel(scale=s)) == float(cmp[f"{name}_scaling"].sel(scale=s))


def test_nonzero_bias_reports_the_difference(run):
    cmp = iv.temperature_vs_scaling(run, [0.5, 1.0, 2.0])
    assert float(cmp["max_abs_dprob"].sel(scale=1.0)) == 0.0
    assert float(cmp["max_abs_dprob"].sel(scale=0.5)) > 0
    b = _head(run)[1]
    assert float(cmp["max_abs_dlogit"].sel(scale=2.0)) == pytest.approx(np.abs(b - b.mean()).max())
    np.testing.assert_allclose(cmp["temperature"].values, [2.0, 1.0, 0.5])
    assert cmp.attrs["bias_spread"] == pytest.approx(b.max() - b.min())


# ------------------------------------------------------------------------------------------------
# rotation geometry (closed form)
# ------------------------------------------------------------------------------------------------
def _cos(a, b):
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("alpha", [-2.0, -0.5, 0.3, 0.5, 1.0])
def test_rotation_keeps_norms_and_reaches_the_requested_cosine(alpha):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 7))
    C = rng.normal(size=(3, 7))
    cls = rng.integers(0, 3, 200)
    theta = np.arccos(np.clip(_cos(f, C[cls]), -1, 1))
    out = iv.rotate_features(f, C, cls, alpha)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(f, axis=1), rtol=1e-12)
    phi = np.clip((1 - alpha) * theta, 0, np.pi)
    np.testing.assert_allclose(_cos(out, C[cls]), np.cos(phi), atol=1e-10)
    # the rotation stays in the plane of (h, c): out is a combination of h and c
    basis = np.stack([f, C[cls]], axis=2)
    coef = np.linalg.lstsq(basis[0], out[0], rcond=None)[0]
    np.testing.assert_allclose(basis[0] @ coef, out[0], atol=1e-10)


def test_rotation_of_parallel_antiparallel_and_zero_features():
    C = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    f = np.array([[3.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    cls = np.array([0, 0, 1])
    out = iv.rotate_features(f, C, cls, 0.5)
    np.testing.assert_allclose(out[0], f[0], atol=1e-12)  # already on the ray
    assert np.linalg.norm(out[1]) == pytest.approx(2.0)  # antiparallel: a fixed orthogonal plane
    assert _cos(out[1:2], C[:1])[0] == pytest.approx(np.cos(np.pi / 2), abs=1e-12)
    np.testing.assert_array_equal(out[2], 0.0)


def test_set_cosine_reaches_targets_and_keeps_norms():
    rng = np.random.default_rng(1)
    f, t = rng.normal(size=(100, 5)), rng.normal(size=(100, 5))
    target = rng.uniform(-1, 1, 100)
    out = iv.set_cosine(f, t, target)
    np.testing.assert_allclose(_cos(out, t), target, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(f, axis=1), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# matching
# ------------------------------------------------------------------------------------------------
def test_quantile_match_reproduces_the_target_distribution():
    rng = np.random.default_rng(2)
    x, t = rng.normal(size=500), rng.gamma(2.0, size=500)
    out = iv.quantile_match(x, t)
    np.testing.assert_array_equal(np.sort(out), np.sort(t))  # same size: a permutation of the target
    assert np.all(np.diff(out[np.argsort(x)]) >= 0)  # monotone in x
    t2 = rng.gamma(2.0, size=1300)
    out2 = iv.quantile_match(x, t2)
    q = np.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(np.quantile(out2, q), np.quantile(t2, q), atol=0.05)


def _shrunk(ds, factor, run_id):
    """The same model and samples with features scaled by ``factor`` (a power of 2: exact in float32)."""
    W, b = ds["head_weight"].values, ds["head_bias"].values
    return cg.from_arrays(ds["features"].values * factor, None, ds["label"].values, head_weight=W, head_bias=b,
                          attrs={"run_id": run_id, "regularizer": "label_smoothing"})


def test_match_magnitude_reproduces_treated_quantiles_and_keeps_directions(run):
    treated = make_run(n=600, d=12, k=4, seed=4, scale=0.5, run_id="ls")
    m = iv.match_features(run, treated, "magnitude")
    norms = np.linalg.norm(m["features"].values.astype(np.float64), axis=1)
    np.testing.assert_allclose(np.sort(norms), np.sort(np.linalg.norm(treated["features"].values, axis=1)),
                               rtol=1e-6)
    np.testing.assert_allclose(_cos(m["features"].values, run["features"].values), 1.0, atol=1e-6)
    assert m.attrs["run_id"] == "run-matched-magnitude"


def test_match_cosine_reproduces_treated_quantiles_and_keeps_norms(run):
    treated = make_run(n=600, d=12, k=4, seed=4, scale=0.5, run_id="ls")
    m = iv.match_features(run, treated, "cosine", toward="true", center="mean")
    own = cg.geometry.class_centers(run, kind="mean")
    got = cg.geometry.cosine_to_center(m, centers=own)["cos_true"].values  # outside check: geometry module
    want = cg.geometry.cosine_to_center(treated, kind="mean")["cos_true"].values
    np.testing.assert_allclose(np.sort(got), np.sort(want), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(m["features"].values, axis=1),
                               np.linalg.norm(run["features"].values, axis=1), rtol=1e-6)


def test_match_share_closed_form(run):
    """Treated = control with features halved: magnitude matching reproduces it (share 1), cosine does nothing."""
    treated = _shrunk(run, 0.5, "half")
    mag = iv.match(run, treated, "magnitude", n_boot=N_BOOT, rng=0)
    assert list(mag.index) == list(iv.OUTCOMES)
    gap = mag["gap"].abs() > 1e-9
    np.testing.assert_allclose(mag.loc[gap, "share"], 1.0, atol=1e-6)
    np.testing.assert_allclose(mag["matched"], mag["treated"], atol=1e-7)
    assert np.isnan(mag.loc["accuracy", "share"])  # halving features (zero bias would be exact) keeps accuracy
    ok = mag[gap]
    assert (ok["share_ci_low"] <= ok["share"]).all() and (ok["share"] <= ok["share_ci_high"]).all()
    cos = iv.match(run, treated, "cosine", center="mean", n_boot=0, rng=0)
    np.testing.assert_allclose(cos.loc[gap, "share"], 0.0, atol=1e-6)
    assert cos.attrs["what"] == "cosine" and cos.attrs["treated_run"] == "half"


def test_bootstrap_is_reproducible_and_chunking_invariant(tmp_path, run):
    a = iv.rescale(run, [0.5, 2.0], n_boot=N_BOOT, rng=7)
    b = iv.rescale(run, [0.5, 2.0], n_boot=N_BOOT, rng=np.random.default_rng(7))
    xr.testing.assert_identical(a, b)
    cg.save(run, tmp_path / "r.zarr", sample_chunk=170)
    lazy = cg.open(tmp_path / "r.zarr")
    assert lazy["features"].chunks is not None
    c = iv.rescale(lazy, [0.5, 2.0], n_boot=N_BOOT, rng=7)
    xr.testing.assert_allclose(a, c, rtol=1e-12)
    for name in iv.OUTCOMES:
        assert np.all(a[f"{name}_ci_low"] <= a[name] + 1e-12) and np.all(a[name] <= a[f"{name}_ci_high"] + 1e-12)
    d = iv.rescale(run, [0.5, 2.0], n_boot=N_BOOT, rng=8)
    assert not np.array_equal(a["ece_ci_low"].values, d["ece_ci_low"].values)
    treated = _shrunk(run, 0.5, "half")
    pd.testing.assert_frame_equal(iv.match(lazy, treated, "both", center="mean", n_boot=N_BOOT, rng=1),
                                  iv.match(run, treated, "both", center="mean", n_boot=N_BOOT, rng=1), rtol=1e-9)


def test_target_rms_global_per_sample_and_from_a_run(run):
    g = iv.rescale(run, target_rms=[0.5, 2.0], n_boot=0)
    np.testing.assert_allclose(g["feature_rms"].values, [0.5, 2.0], rtol=1e-10)
    assert g.attrs["mode"] == "global"
    p = iv.rescale(run, target_rms=0.7, per_sample=True, n_boot=0)
    np.testing.assert_allclose(p["feature_rms"].values, [0.7], rtol=1e-10)
    treated = _shrunk(run, 0.5, "half")
    t = iv.rescale(run, target_rms=treated, n_boot=0)
    np.testing.assert_allclose(t["scale"].values, [0.5], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_dump_without_head_gets_a_clear_error(run):
    headless = cg.from_arrays(run["features"].values, run["logits"].values, run["label"].values,
                              attrs={"run_id": "nohead"})
    for call, name in ((lambda: iv.rescale(headless, [1.0]), "interventions.rescale"),
                       (lambda: iv.rotate(headless, [0.5], center=np.ones((4, 12))), "interventions.rotate"),
                       (lambda: iv.temperature_vs_scaling(headless, [2.0]), "interventions.temperature_vs_scaling"),
                       (lambda: iv.match(headless, run), "interventions.match")):
        with pytest.raises(HeadMissingError, match=name):
            call()


def test_invalid_arguments_name_the_argument(run, centers):
    with pytest.raises(ConfigError, match=r"toward: expected one of \['predicted', 'true'\]"):
        iv.rotate(run, [0.5], toward="nearest", center=centers)
    with pytest.raises(ConfigError, match="alphas: expected values <= 1"):
        iv.rotate(run, [1.5], center=centers)
    with pytest.raises(ConfigError, match="scales: expected values >= 0"):
        iv.rescale(run, [-1.0])
    with pytest.raises(ConfigError, match="exactly one of scales"):
        iv.rescale(run, [1.0], target_rms=1.0)
    with pytest.raises(ConfigError, match="what: expected one of"):
        iv.match(run, run, "angle")
    with pytest.raises(ConfigError, match="center: expected one of"):
        iv.rotate(run, [0.5], center="medoid")
    with pytest.raises(ConfigError, match=r"center: expected shape \(n_classes, n_features\) = \(4, 12\)"):
        iv.rotate(run, [0.5], center=np.ones((3, 12)))
    with pytest.raises(ConfigError, match="n_boot"):
        iv.rescale(run, [1.0], n_boot=-1)
    with pytest.raises(SchemaError, match="expected an xarray.Dataset"):
        iv.rescale(run["features"], [1.0])


# ------------------------------------------------------------------------------------------------
# inside the model
# ------------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self, d_in=6, d=10, k=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, d), nn.Tanh(), nn.Linear(d, d), nn.ReLU())
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture(scope="module")
def net_data():
    torch.manual_seed(0)
    net = _Net().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 6, generator=gen)
    with torch.no_grad():
        feats = net.body(x)
        y = net(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4  # some errors
    ds = cg.from_arrays(feats, None, y, head_weight=net.fc.weight.detach(), head_bias=net.fc.bias.detach(),
                        attrs={"run_id": "net"})
    return net, x, y, ds


def test_in_model_wrapper_gives_the_post_hoc_logits(net_data):
    net, x, y, ds = net_data
    f = ds["features"].values.astype(np.float64)
    W, b = _head(ds)
    C = _class_means(ds)
    pred = (f @ W.T + b).argmax(1)
    with torch.no_grad():
        assert torch.equal(iv.InterventionModel(net, iv.Rescale(1.0))(x), net(x))
        assert torch.equal(iv.InterventionModel(net, iv.Rotate(0.0, C))(x), net(x))
        for s in (0.5, 2.0):
            out = iv.InterventionModel(net, iv.Rescale(s))(x).double().numpy()
            np.testing.assert_allclose(out, iv.rescale_features(f, s) @ W.T + b, rtol=1e-5, atol=1e-5)
            post = iv.rescale(ds, [s], n_boot=0)
            ref = cg.calibration.outcomes_from_logits(out, y.numpy())
            assert float(post["nll"][0]) == pytest.approx(ref["nll"], rel=1e-5)
        for a in (-0.5, 0.5, 1.0):
            out = iv.InterventionModel(net, iv.Rotate(a, C, toward="predicted"))(x).double().numpy()
            np.testing.assert_allclose(out, iv.rotate_features(f, C, pred, a) @ W.T + b, rtol=1e-4, atol=1e-5)
            wrapped = iv.InterventionModel(net, iv.Rotate(a, torch.as_tensor(C), toward="true"))
            with wrapped.labels(y):
                out = wrapped(x).double().numpy()
            np.testing.assert_allclose(out, iv.rotate_features(f, C, y.numpy(), a) @ W.T + b, rtol=1e-4, atol=1e-5)
    assert not net.fc._forward_pre_hooks  # the hook lives only during the forward


def test_true_class_rotation_needs_labels(net_data):
    net, x, y, ds = net_data
    wrapped = iv.InterventionModel(net, iv.Rotate(0.5, _class_means(ds), toward="true"))
    with pytest.raises(ConfigError, match="set_labels"):
        wrapped(x)
    wrapped.set_labels(y[:10])
    with pytest.raises(ConfigError, match="labels were set for 10 samples but the batch has 64"):
        wrapped(x)
    wrapped.set_labels(2)  # one class for every row
    assert wrapped(x).shape == (64, 4)


def test_predicted_rotation_is_differentiable():
    torch.manual_seed(0)
    head = nn.Linear(5, 3).double()
    C = torch.randn(3, 5, dtype=torch.float64)
    rot = iv.Rotate(0.4, C, toward="predicted").double()
    h = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rot(t, head=head), (h,))
    g, = torch.autograd.grad(rot(h, head=head).sum(), h)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_robust_dose_response_through_sweep(net_data):
    net, x, y, ds = net_data
    pgd = cg.attacks.PGD("linf", steps=3)
    eps = [0.02, 0.05]
    res = iv.robust_dose_response(net, x, y, [iv.Rescale(s) for s in (0.5, 1.0, 2.0)], [pgd], eps, n_boot=N_BOOT,
                                  rng=0)
    assert res["robust_accuracy"].dims == ("scale", "attack", "eps")
    plain = cg.attacks.sweep(net, x, y, [pgd], eps)  # identity: the unwrapped model
    np.testing.assert_array_equal(res["adv_correct"].sel(scale=1.0).values, plain["adv_correct"])
    np.testing.assert_allclose(res["clean_accuracy"].sel(scale=1.0), (net(x).argmax(1) == y).float().mean().item())
    assert np.all(res["robust_accuracy"] <= res["clean_accuracy"] + 1e-12)
    fig = iv.plot_dose_response(res)
    assert fig.axes[0].get_legend() is not None  # one line per (attack, eps)
    C = _class_means(ds)
    rot = iv.robust_dose_response(net, x, y, [iv.Rotate(a, C, toward="true") for a in (0.0, 0.5)], [pgd], eps,
                                  n_boot=0)
    assert rot["robust_accuracy"].dims == ("alpha", "attack", "eps")
    np.testing.assert_array_equal(rot["adv_correct"].sel(alpha=0.0).values, plain["adv_correct"])


# ------------------------------------------------------------------------------------------------
# studies, plots, comparison with mediation, CLI
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_head_study(tmp_path_factory):
    """Two ce runs and two label-smoothing runs that reuse their control's head with its features times 0.5."""
    st = cg.open_study(tmp_path_factory.mktemp("iv") / "study", create=True)
    for seed in (0, 1):
        base = make_run(n=300, d=8, k=3, seed=seed, run_id=f"ce-s{seed}", strength=0.0)
        st.add(base)
        W, b = base["head_weight"].values, base["head_bias"].values
        st.add(cg.from_arrays(base["features"].values * 0.5, None, base["label"].values, head_weight=W, head_bias=b,
                              attrs={"run_id": f"ls-s{seed}", "regularizer": "label_smoothing", "strength": 0.1,
                                     "seed": seed}))
    return st


def test_rescale_and_rotate_study_aggregate_over_runs(shared_head_study):
    res = iv.rescale_study(shared_head_study, [0.5, 1.0], n_boot=50, rng=0)
    assert res["accuracy"].dims == ("group", "scale")
    assert list(res["group"].values) == ["ce/0", "label_smoothing/0.1"]
    per_run = res["ece_per_run"]
    ce = per_run.sel(run=[r for r, g in zip(res["run"].values, res["run_group"].values) if g == "ce/0"])
    np.testing.assert_allclose(res["ece"].sel(group="ce/0"), ce.mean("run"))
    single = iv.rescale(shared_head_study["ce-s0"], [0.5, 1.0], n_boot=0)
    np.testing.assert_allclose(per_run.sel(run="ce-s0"), single["ece"])
    assert np.all(res["ece_ci_low"] <= res["ece"] + 1e-12)
    rot = iv.rotate_study(shared_head_study, [0.0, 0.5], center="mean", by="regularizer", n_boot=0)
    assert list(rot["group"].values) == ["ce", "label_smoothing"]
    tr = iv.rescale_study(shared_head_study, target_rms="label_smoothing/0.1", n_boot=0)
    assert tr["accuracy"].dims == ("group", "target_rms")


def test_match_study_and_share_vs_mediation(shared_head_study, tmp_path):
    share = iv.match_study(shared_head_study, "ce", "label_smoothing", "magnitude", n_boot=50, rng=0)
    per_run = share.attrs["per_run"].groupby("arm")[list(iv.OUTCOMES)].mean()
    expected = (per_run.loc["matched"] - per_run.loc["control"]) / (per_run.loc["treated"] - per_run.loc["control"])
    np.testing.assert_allclose(share["share"], expected[list(iv.OUTCOMES)], rtol=1e-12)
    assert share.attrs["control_runs"] == ["ce-s0", "ce-s1"]
    # one run per arm: the same numbers as `match` on the two runs (closed form: share 1)
    small = cg.open_study(tmp_path / "small", create=True)
    small.add(shared_head_study["ce-s0"])
    small.add(shared_head_study["ls-s0"])
    one = iv.match_study(small, "ce", "label_smoothing", "magnitude", n_boot=0)
    direct = iv.match(shared_head_study["ce-s0"], shared_head_study["ls-s0"], "magnitude", n_boot=0)
    np.testing.assert_allclose(one["share"], direct["share"], rtol=1e-12)
    gap = direct["gap"].abs() > 1e-9
    np.testing.assert_allclose(one.loc[gap, "share"], 1.0, atol=1e-6)
    assert np.isnan(one["share_ci_low"]).all()  # one run per arm: no interval over runs
    cosine = iv.match_study(shared_head_study, "ce", "label_smoothing", "cosine", center="mean", n_boot=0)
    summary = pd.DataFrame({
        "outcome": ["overconfidence"] * 4 + ["nll"],
        "effect": ["total", "prop_mediated", "prop_mediated[rms]", "prop_mediated[cos_true]", "prop_mediated[rms]"],
        "estimate": [0.1, 0.9, 0.8, 0.1, 0.7], "ci_low": [0.0, 0.5, 0.4, -0.1, 0.3],
        "ci_high": [0.2, 1.1, 1.0, 0.3, 0.9]})
    summary.attrs["mediators"] = ["rms", "cos_true"]
    table = iv.share_vs_mediation([share, cosine], summary)
    got = table.set_index(["what", "outcome"])
    assert got.loc[("magnitude", "overconfidence"), "proportion_mediated"] == 0.8
    assert got.loc[("magnitude", "overconfidence"), "interventional_share"] == pytest.approx(
        share.loc["signed_ece", "share"])
    assert got.loc[("magnitude", "nll"), "intervention_outcome"] == "nll"
    assert ("cosine", "overconfidence") in got.index and ("both", "overconfidence") not in got.index
    with pytest.raises(ConfigError, match="nothing to pair"):
        iv.share_vs_mediation(share, summary, outcome="brier")


def test_share_vs_real_mediation_result(shared_head_study):
    share = iv.match_study(shared_head_study, "ce", "label_smoothing", "magnitude", n_boot=0)
    table = shared_head_study.to_frame(level="sample", progress=False)
    with pytest.warns(Warning):  # two runs per arm: the cluster bootstrap warns about few clusters
        med = cg.causal.mediate(table, treatment="regularizer", control="ce", treated="label_smoothing",
                                mediators="rms", outcome="overconfidence", n_boot=20, rng=0, inference="bootstrap")
    out = iv.share_vs_mediation(share, med)
    assert list(out["what"]) == ["magnitude"] and list(out["outcome"]) == ["overconfidence"]
    # the comparison carries the mediation's own proportion (NaN where it is not estimable, with its note)
    prop = med.summary().set_index("effect").loc["prop_mediated"]
    np.testing.assert_equal(out["proportion_mediated"].to_numpy(), [prop.estimate])
    assert np.isfinite(prop.estimate) or "not estimable" in prop.note


def test_plot_dose_response(run, shared_head_study):
    import matplotlib.figure

    fig = iv.plot_dose_response(iv.rescale(run, [0.5, 1.0, 2.0], n_boot=20, rng=0))
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == len(iv.OUTCOMES)
    fig = iv.plot_dose_response(iv.rescale_study(shared_head_study, [0.5, 1.0], n_boot=0), ["ece", "nll"])
    assert len(fig.axes) == 2 and fig.axes[0].get_legend() is not None
    with pytest.raises(ConfigError, match="outcomes: unknown"):
        iv.plot_dose_response(iv.rescale(run, [1.0], n_boot=0), "robust_accuracy")


@pytest.mark.slow
def test_cli_intervene(shared_head_study, tmp_path, capsys):
    from causalgeom.cli import main

    rc = main(["intervene", str(shared_head_study.path), "--rescale", "0.5,1", "--rotate", "-0.5,0", "--center", "mean",
               "--control", "ce", "--treated", "label_smoothing", "--match", "magnitude", "--n-boot", "20",
               "--temperature", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "interventional share" in out and "rescale" in out
    for stem in ("rescale", "rotate", "match", "temperature"):
        assert (tmp_path / f"study.intervene_{stem}.csv").exists(), stem
    match = pd.read_csv(tmp_path / "study.intervene_match.csv")
    assert {"what", "outcome", "share"} <= set(match.columns)
    rc = main(["intervene", str(shared_head_study.path), "--run", "ce-s0", "--rescale", "0.5,1", "--n-boot", "10",
               "--out", str(tmp_path), "--plot"])
    assert rc == 0 and (tmp_path / "study.ce-s0.intervene_rescale.png").exists()
    assert main(["intervene", str(shared_head_study.path), "--rotate", "2"]) == 2
    assert "alphas: expected values <= 1" in capsys.readouterr().err
