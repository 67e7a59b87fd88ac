"""Head-based decomposition: known answers on constructed runs, exact additivity, the Shapley formula in closed
form, world outcomes against torchmetrics / scikit-learn, run-level inference and its p-value floor, errors, CLI."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

import causalgeom as cg
from causalgeom.causal.decompose import _load_run, _rotate_to_cosine, _run_outcome, _world_stats, shapley_values
from causalgeom.causal.decompose import decompose as _decompose

HMD = ("head", "magnitude", "direction")


def decompose(*args, **kw):
    """This file tests the representation-level split: head, magnitude, direction unless other factors are named."""
    kw.setdefault("factors", HMD)
    return _decompose(*args, **kw)

K, D, N = 4, 6, 96


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, N)
    base = rng.normal(size=(K, D))
    latent = base[labels] + 0.8 * rng.normal(size=(N, D))  # shared image difficulty
    return labels, base, latent


def _run(run_id, reg, W, b, f, labels, adv=None):
    W, b, f = (np.asarray(a, dtype=np.float32) for a in (W, b, f))
    ds = cg.from_arrays(f, f @ W.T + b, labels, head_weight=W, head_bias=b,
                        attrs={"run_id": run_id, "regularizer": reg, "seed": 0,
                               "init_digest": "d0"})  # one initialisation for all runs: heads may be swapped
    if adv is not None:
        ds["adv_features"] = (("attack", "eps", "sample", "feature"), np.asarray(adv, dtype=np.float32)[None, None])
        ds = ds.assign_coords(attack=("attack", np.asarray(["pgd-linf"], dtype=object)), eps=("eps", [8 / 255]))
    return ds


def _study(tmp_path, runs):
    s = cg.open_study(tmp_path / "study", create=True)
    for ds in runs:
        s.add(ds)
    return s


def _two_arms(tmp_path, *, head=False, magnitude=False, direction=False, copies=2, adv=False):
    """`copies` identical runs per arm; the treated arm differs from the control only in the named factors."""
    labels, base, latent = _images()
    rng = np.random.default_rng(1)
    W, b = base + 0.3 * rng.normal(size=(K, D)), 0.1 * rng.normal(size=K)
    f = 2.0 * latent
    Wt, bt, ft = W.copy(), b.copy(), f.copy()
    if head:
        Wt, bt = 0.6 * W + 0.4 * rng.normal(size=(K, D)), b + 0.2
    if direction:  # new direction, same norm
        g = f + 1.5 * rng.normal(size=f.shape)
        ft = g / np.linalg.norm(g, axis=1, keepdims=True) * np.linalg.norm(f, axis=1, keepdims=True)
    if magnitude:
        ft = ft * np.exp(rng.normal(-0.6, 0.2, size=(N, 1)))
    runs = []
    for i in range(copies):
        runs.append(_run(f"ce-s{i}", "ce", W, b, f, labels, adv=0.8 * f if adv else None))
        runs.append(_run(f"mixup-s{i}", "mixup", Wt, bt, ft, labels, adv=0.8 * ft if adv else None))
    return _study(tmp_path, runs)


OUTCOMES = ["signed_ece", "ece", "nll", "accuracy", "brier"]


@pytest.mark.parametrize("factor", ["head", "magnitude", "direction"])
def test_a_single_changed_factor_carries_the_whole_gap(tmp_path, factor):
    s = _two_arms(tmp_path, **{factor: True}, copies=1)
    res = decompose(s, control="ce", treated="mixup", outcome=OUTCOMES, n_boot=50, rng=0)
    summ = res.summary()
    for o in OUTCOMES:
        g = summ[summ.outcome == o].set_index("component")
        assert abs(g.loc["total", "estimate"]) > 1e-3, o  # the constructed change does move every outcome
        for other in ("head", "magnitude", "direction"):
            expect = g.loc["total", "estimate"] if other == factor else 0.0
            # features are stored in float32: an unchanged magnitude or direction agrees to ~1e-7 relative
            assert g.loc[other, "estimate"] == pytest.approx(expect, abs=1e-6)
        if g.loc["total", "ci_low"] > 0 or g.loc["total", "ci_high"] < 0:
            assert g.loc[factor, "share"] == pytest.approx(1.0, abs=1e-4)
        else:
            assert np.isnan(g.loc[factor, "share"])
    assert summ[summ.component == factor].share.notna().sum() >= 1  # shares shown where the total is clearly not 0


@pytest.fixture(scope="module")
def crossed(tmp_path_factory):
    """3 + 3 runs that differ in head, magnitude and direction, with run-to-run noise, and attacked features."""
    labels, base, latent = _images(2)
    runs = []
    for arm, (hs, fs) in {"ce": (1.4, 2.2), "mixup": (1.0, 1.0)}.items():
        for i in range(3):
            r = np.random.default_rng(10 * i + len(arm))
            W, b = hs * base + 0.3 * r.normal(size=(K, D)), 0.1 * r.normal(size=K)
            f = fs * (latent + 0.4 * r.normal(size=(N, D)))
            runs.append(_run(f"{arm}-s{i}", arm, W, b, f, labels, adv=f - 0.5 * W[labels]))
    return _study(tmp_path_factory.mktemp("crossed"), runs)


def test_shares_add_up_to_the_total_per_pair_per_image_and_on_average(crossed):
    res = decompose(crossed, control="ce", treated="mixup", outcome=OUTCOMES + ["robust_accuracy", "robust_margin"])
    pp = res.per_pair.pivot_table(index=["control_run", "treated_run", "outcome"], columns="component",
                                  values="value")
    assert len(pp) == 9 * 7
    np.testing.assert_allclose(pp[["head", "magnitude", "direction"]].sum(axis=1), pp["total"], rtol=0, atol=1e-9)
    pi = res.per_image
    assert set(pi.outcome) == {"signed_ece", "nll", "accuracy", "brier", "robust_accuracy", "robust_margin"}
    np.testing.assert_allclose(pi[["head", "magnitude", "direction"]].sum(axis=1), pi["total"], rtol=0, atol=1e-9)
    summ = res.summary().set_index(["outcome", "component"])["estimate"]
    for o in res.outcomes:
        assert summ[o, "head"] + summ[o, "magnitude"] + summ[o, "direction"] == pytest.approx(summ[o, "total"],
                                                                                               abs=1e-9)
        if o in set(pi.outcome):  # per-image means equal the run-level shares (signed ECE = mean(conf − correct))
            means = pi[pi.outcome == o][["total", "head", "magnitude", "direction"]].mean()
            for c in means.index:
                assert means[c] == pytest.approx(summ[o, c], abs=1e-9)
    # the total is the treated − control gap of the outcome computed on the stored logits (float32 outputs)
    gaps = [float(cg.calibration.signed_ece(crossed[t])) - float(cg.calibration.signed_ece(crossed[c]))
            for c in res.control_runs for t in res.treated_runs]
    assert summ["signed_ece", "total"] == pytest.approx(np.mean(gaps), abs=1e-5)


def test_cosine_variant_adds_up_and_has_the_same_total(crossed):
    a = decompose(crossed, control="ce", treated="mixup", outcome=["nll", "ece"]).summary()
    b = decompose(crossed, control="ce", treated="mixup", outcome=["nll", "ece"],
                  factors=("head", "magnitude", "cosine")).summary()
    assert list(b.component[:5]) == ["total", "head", "magnitude", "cosine", "direction"]
    for o in ("nll", "ece"):
        ga, gb = a[a.outcome == o].set_index("component"), b[b.outcome == o].set_index("component")
        assert gb.loc["total", "estimate"] == pytest.approx(ga.loc["total", "estimate"], abs=1e-12)
        assert gb.loc[["head", "magnitude", "cosine", "direction"], "estimate"].sum() == \
            pytest.approx(gb.loc["total", "estimate"], abs=1e-9)
        assert gb.loc["magnitude", "estimate"] == pytest.approx(ga.loc["magnitude", "estimate"], rel=0.5)


def test_only_the_cosine_changed_puts_the_gap_on_the_cosine(tmp_path):
    labels, base, latent = _images(3)
    rng = np.random.default_rng(4)
    W, b = base + 0.3 * rng.normal(size=(K, D)), 0.1 * rng.normal(size=K)
    f = 2.0 * latent
    ctrl = _run("ce-s0", "ce", W, b, f, labels)
    centers = cg.geometry.class_centers(ctrl, kind="minimal_loss").values[labels]
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = np.einsum("nf,nf->n", u, centers / np.linalg.norm(centers, axis=1, keepdims=True))
    ft = cg.interventions.set_cosine(f, centers, np.clip(cos + 0.3 * (1 - cos), -1, 1))  # closer to the center
    s = _study(tmp_path, [ctrl, _run("mixup-s0", "mixup", W, b, ft, labels)])
    res = decompose(s, control="ce", treated="mixup", outcome=["nll", "signed_ece"],
                    factors=("head", "magnitude", "cosine"), n_boot=50, rng=0)
    g = res.summary().set_index(["outcome", "component"])["estimate"]
    for o in ("nll", "signed_ece"):
        assert abs(g[o, "total"]) > 1e-3
        # float32 storage of the rotated features: the rest of the direction moves by ~1e-7
        assert g[o, "cosine"] == pytest.approx(g[o, "total"], abs=1e-5)
        assert abs(g[o, "head"]) < 1e-12 and abs(g[o, "magnitude"]) < 1e-5 and abs(g[o, "direction"]) < 1e-5


def test_rotation_agrees_with_interventions_set_cosine():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(50, 7))
    u = h / np.linalg.norm(h, axis=1, keepdims=True)
    t = rng.normal(size=(50, 7))
    c = rng.uniform(-1, 1, 50)
    np.testing.assert_allclose(_rotate_to_cosine(u, t, c), cg.interventions.set_cosine(u, t, c), atol=1e-12)


def test_shapley_closed_form_two_factors():
    v = np.array([1.0, 4.0, 2.0, 9.0])  # worlds 00, 10 (factor 0 treated), 01, 11
    phi = shapley_values(v)
    assert phi[0] == pytest.approx(0.5 * ((4 - 1) + (9 - 2)))
    assert phi[1] == pytest.approx(0.5 * ((2 - 1) + (9 - 4)))
    assert phi.sum() == pytest.approx(9 - 1)


def test_shapley_additive_game_and_split_interaction():
    a = np.array([0.3, -1.2, 2.0])
    worlds = np.array([[(s >> j) & 1 for j in range(3)] for s in range(8)], dtype=float)
    np.testing.assert_allclose(shapley_values(worlds @ a), a, atol=1e-15)  # additive: each factor its own term
    inter = worlds[:, 0] * worlds[:, 2]  # pure interaction of factors 0 and 2: split equally
    np.testing.assert_allclose(shapley_values(inter), [0.5, 0.0, 0.5], atol=1e-15)
    with pytest.raises(cg.QueryError, match="2\\*\\*k"):
        shapley_values(np.zeros(6))


def test_world_outcomes_match_torchmetrics_and_sklearn(crossed):
    c, _, _, _ = _load_run(crossed["ce-s0"], None, False, False, None, None)
    t, _, _, _ = _load_run(crossed["mixup-s1"], None, False, False, None, None)
    worlds = _world_stats((c, t), ("head", "magnitude", "direction"), "direction", adv=False)
    # world 5 = bits 101: head and direction from the treated run, magnitude from the control run
    logits = (c.norm[:, None] * t.unit) @ t.W.T + t.b
    y = c.labels
    p = torch.softmax(torch.tensor(logits), dim=1).numpy()
    w = worlds[5]
    ece_ref = float(multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=K, n_bins=15))
    assert _run_outcome("ece", w, 15) == pytest.approx(ece_ref, abs=1e-6)  # torchmetrics computes in float32
    assert _run_outcome("nll", w, 15) == pytest.approx(log_loss(y, p, labels=range(K)), rel=1e-9)
    assert _run_outcome("accuracy", w, 15) == accuracy_score(y, p.argmax(1))
    assert _run_outcome("signed_ece", w, 15) == pytest.approx(p.max(1).mean() - accuracy_score(y, p.argmax(1)),
                                                              abs=1e-12)  # closed form: mean confidence − accuracy
    onehot = np.eye(K)[y]
    assert _run_outcome("brier", w, 15) == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-9)


def test_run_level_inference_never_prints_below_the_floor(crossed):
    res = decompose(crossed, control="ce", treated="mixup", outcome=["signed_ece", "nll"])
    summ = res.summary()
    np.testing.assert_allclose(summ.p_floor, 2 / math.comb(6, 3), rtol=1e-12)
    assert (summ.p_value >= 0.1 - 1e-12).all()
    assert "over training runs" in res.estimand and "randomization" in res.inference and "0.1" in res.inference
    # the total's interval is Welch's t-interval on the per-run outcomes (closed form)
    from scipy import stats

    yc = [float(cg.calibration.nll(crossed[r])) for r in res.control_runs]
    yt = [float(cg.calibration.nll(crossed[r])) for r in res.treated_runs]
    tot = summ[(summ.outcome == "nll") & (summ.component == "total")].iloc[0]
    ci = stats.ttest_ind(yt, yc, equal_var=False).confidence_interval(0.95)
    assert (tot.ci_low, tot.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-5)  # float32 logits vs W·h + b
    # the p-value is the share of the 20 relabelings at least as extreme: recompute it by brute force
    y = dict(zip(res.control_runs + res.treated_runs, yc + yt))
    ids = list(y)
    obs = np.mean(yt) - np.mean(yc)
    hits = 0
    for combo in itertools.combinations(range(6), 3):
        tr = [y[ids[i]] for i in combo]
        co = [y[ids[i]] for i in range(6) if i not in combo]
        hits += abs(np.mean(tr) - np.mean(co)) >= abs(obs) - 1e-6
    assert tot.p_value == pytest.approx(max(hits / 20, 0.1))


def test_one_run_per_arm_is_model_conditional(tmp_path):
    s = _two_arms(tmp_path, magnitude=True, direction=True, copies=1)
    res = decompose(s, control="ce", treated="mixup", outcome="ece", n_boot=200, rng=np.random.default_rng(0))
    assert res.estimand.startswith("model-conditional: these models, inference over test images")
    assert "bootstrap over test images, paired" in res.inference
    summ = res.summary()
    assert summ.p_value.isna().all()
    assert (summ.ci_low <= summ.estimate + 1e-12).all() and (summ.estimate <= summ.ci_high + 1e-12).all()
    again = decompose(s, control="ce", treated="mixup", outcome="ece", n_boot=200, rng=np.random.default_rng(0))
    pd.testing.assert_frame_equal(summ, again.summary())  # same rng, same computation: identical
    with pytest.raises(cg.QueryError, match="estimand='model'"):
        decompose(s, control="ce", treated="mixup", estimand="runs")


def test_share_is_nan_when_the_total_may_be_zero(crossed):
    res = decompose(crossed, control="ce", treated="mixup", outcome="accuracy")
    summ = res.summary()
    tot = summ[summ.component == "total"].iloc[0]
    if tot.ci_low <= 0 <= tot.ci_high:
        assert summ.share.isna().all()
    else:
        assert tot.share == 1.0
    fig = res.plot()
    assert len(fig.axes) == 1
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_errors_name_the_argument_and_the_fix(tmp_path, crossed):
    with pytest.raises(cg.QueryError, match="outcome: expected one of .*'signed_ece'.*got 'overconf'"):
        decompose(crossed, outcome="overconf")
    with pytest.raises(cg.QueryError, match="factors: expected"):
        decompose(crossed, factors=("head", "magnitude"))
    with pytest.raises(cg.QueryError, match="treated: no run has regularizer = 'cutmix'"):
        decompose(crossed, control="ce", treated="cutmix")
    with pytest.raises(cg.QueryError, match="estimand: expected one of"):
        decompose(crossed, estimand="population")
    labels, base, latent = _images()
    W, b = base, np.zeros(K)
    a = _run("ce-s0", "ce", W, b, latent, labels)
    bb = _run("mixup-s0", "mixup", W, b, latent, labels).assign_coords(sample=np.arange(N) + 5)
    s = _study(tmp_path, [a, bb])
    with pytest.raises(cg.QueryError, match="sample ids differ"):
        decompose(s, control="ce", treated="mixup")
    s2 = _two_arms(tmp_path / "x", magnitude=True, copies=1)
    with pytest.raises(cg.QueryError, match="extract --save-adv"):
        decompose(s2, control="ce", treated="mixup", outcome="robust_accuracy")


def test_images_are_paired_by_sample_id_not_by_row(tmp_path):
    s = _two_arms(tmp_path, magnitude=True, copies=1)
    ref = decompose(s, control="ce", treated="mixup", outcome="nll", n_boot=20, rng=0).summary()
    perm = np.random.default_rng(0).permutation(N)
    ids = np.arange(N) * 3 + 1000  # explicit sample ids
    c = s["ce-s0"].load().assign_coords(sample=ids)
    t = s["mixup-s0"].load().assign_coords(sample=ids).isel(sample=perm)
    s2 = _study(tmp_path / "p", [c, t])
    out = decompose(s2, control="ce", treated="mixup", outcome="nll", n_boot=20, rng=0).summary()
    # same images, another row order: the same numbers up to the order of float sums
    np.testing.assert_allclose(out.estimate, ref.estimate, atol=1e-12)


def test_cli_prints_the_summary_with_its_estimand(crossed, tmp_path, capsys):
    from causalgeom.cli import main

    out = tmp_path / "dec.csv"
    rc = main(["decompose", str(crossed.path), "--control", "ce", "--treated", "mixup", "--outcome",
               "signed_ece,nll", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Estimand: average effect over training runs" in text and "Design: paired by image" in text
    assert "Inference:" in text and "scale" in text
    assert list(pd.read_csv(out).component[:3]) == ["total", "scale", "shape"]  # the default: function-level
    rc = main(["decompose", str(crossed.path), "--control", "ce", "--treated", "mixup", "--outcome",
               "signed_ece,nll", "--factors", "head,magnitude,direction", "--out", str(out)])
    assert rc == 0 and "magnitude" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.component[:4]) == ["total", "head", "magnitude", "direction"]
    rc = main(["decompose", str(crossed.path), "--control", "ce", "--treated", "mixup", "--outcome", "bogus"])
    assert rc == 2 and "outcome: expected one of" in capsys.readouterr().err


def test_swapping_the_arms_negates_shares_and_swaps_first_and_last(crossed):
    a = decompose(crossed, control="ce", treated="mixup", outcome=["ece", "nll"])
    b = decompose(crossed, control="mixup", treated="ce", outcome=["ece", "nll"])
    np.testing.assert_allclose(b.summary().estimate, -a.summary().estimate, atol=1e-12)
    np.testing.assert_allclose(b.summary().p_value, a.summary().p_value, atol=1e-12)
    sa, sb = (r.switch_effects.set_index(["outcome", "factor", "switched"])["estimate"] for r in (a, b))
    for o in ("ece", "nll"):
        for f in ("head", "magnitude", "direction"):
            assert sb[o, f, "first"] == pytest.approx(-sa[o, f, "last"], abs=1e-12)
    # closed form: with one factor changed, switching it first or last gives the same, the whole gap


def test_switch_effects_of_a_single_changed_factor_equal_the_total(tmp_path):
    s = _two_arms(tmp_path, head=True, copies=1)
    res = decompose(s, control="ce", treated="mixup", outcome="nll", n_boot=30, rng=0)
    tot = res.summary().set_index("component").loc["total", "estimate"]
    sw = res.switch_effects.set_index(["factor", "switched"])["estimate"]
    assert sw["head", "first"] == pytest.approx(tot, abs=1e-12) and sw["head", "last"] == pytest.approx(tot, abs=1e-12)
    assert abs(sw["magnitude", "first"]) < 1e-12 and abs(sw["direction", "last"]) < 1e-12


def test_monte_carlo_randomization_keeps_the_plus_one_correction(crossed, monkeypatch):
    import importlib

    dec = importlib.import_module("causalgeom.causal.decompose")  # the package (cg.causal.decompose is the function)
    # the relabelings are drawn in the package's inference module, which reads the constant
    monkeypatch.setattr(importlib.import_module("causalgeom.causal.decompose.inference"), "MAX_EXACT_RELABELINGS",
                        9)  # C(6, 3) = 20 > 9: random relabelings
    res = dec.decompose(crossed, control="ce", treated="mixup", outcome="nll", rng=np.random.default_rng(1))
    assert "Monte Carlo, 9 relabelings" in res.inference
    summ = res.summary()
    assert (summ.p_value >= 1 / 10 - 1e-12).all()  # (hits + 1) / (B + 1) >= 1 / (B + 1)
    assert ((summ.p_value * 10).round(9) % 1 == 0).all()  # multiples of 1 / (B + 1)


def _seeded_study(tmp_path, rotate_treated: bool = False, n_seeds: int = 4):
    """Runs matched by seed: seed s trains both arms from the same start (same basis), unless rotated."""
    labels, base, latent = _images(5)
    runs = []
    for s in range(n_seeds):
        r = np.random.default_rng(100 + s)
        W, b = base + 0.3 * r.normal(size=(K, D)), 0.1 * r.normal(size=K)
        f = 2.0 * (latent + 0.3 * r.normal(size=(N, D)))
        Wt = 0.8 * W + 0.1 * r.normal(size=(K, D))
        ft = 0.6 * f + 0.2 * r.normal(size=(N, D))
        if rotate_treated:  # another network computing the same function in other feature coordinates
            Q = np.linalg.qr(r.normal(size=(D, D)))[0]
            Wt, ft = Wt @ Q.T, ft @ Q.T
        for arm, (W_, b_, f_) in (("ce", (W, b, f)), ("mixup", (Wt, b, ft))):
            ds = _run(f"{arm}-s{s}", arm, W_, b_, f_, labels)
            ds.attrs["seed"] = s
            ds.attrs["init_digest"] = f"d{s}"  # trained here: the digest shows the shared start
            runs.append(ds)
    return _study(tmp_path, runs)


def test_seed_matched_pairs_use_paired_inference(tmp_path):
    from scipy import stats

    s = _seeded_study(tmp_path)
    res = decompose(s, control="ce", treated="mixup", outcome=["nll", "signed_ece"])
    assert res.pairing == "seed" and len(res.per_pair.groupby(["control_run", "treated_run"])) == 4
    assert all(c.split("-")[1] == t.split("-")[1] for c, t in zip(res.per_pair.control_run, res.per_pair.treated_run))
    summ = res.summary()
    np.testing.assert_allclose(summ.p_floor, 2 / 2 ** 4, rtol=1e-12)  # sign flips of 4 pairs: 16 patterns
    assert (summ.p_value >= 2 / 16 - 1e-12).all() and "sign-flip" in res.inference
    assert res.alignment.aligned.all()
    # the total's interval is the paired t-interval of the per-seed outcome differences
    yc = np.array([float(cg.calibration.nll(s[f"ce-s{i}"])) for i in range(4)])
    yt = np.array([float(cg.calibration.nll(s[f"mixup-s{i}"])) for i in range(4)])
    ci = stats.ttest_rel(yt, yc).confidence_interval(0.95)
    tot = summ[(summ.outcome == "nll") & (summ.component == "total")].iloc[0]
    assert (tot.ci_low, tot.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-5)  # float32 logits vs W·h + b
    every = decompose(s, control="ce", treated="mixup", outcome="nll", pairs="all", factors=("scale", "shape"))
    assert every.pairing == "all" and len(every.per_pair.groupby(["control_run", "treated_run"])) == 16
    with pytest.raises(cg.QueryError, match="init_digest"):  # other seeds' heads: not one initialisation
        decompose(s, control="ce", treated="mixup", outcome="nll", pairs="all")


def test_unaligned_feature_bases_are_flagged(tmp_path):
    s = _seeded_study(tmp_path, rotate_treated=True, n_seeds=2)
    with pytest.warns(RuntimeWarning, match="unaligned feature bases"):
        res = decompose(s, control="ce", treated="mixup", outcome="nll")
    assert not res.alignment.aligned.any()
    assert (res.alignment.head_swap_accuracy < res.alignment.own_accuracy - 0.2).all()
    assert any("only the total" in n for n in res.notes)
    with pytest.raises(cg.QueryError, match="pairs: expected one of"):
        decompose(s, control="ce", treated="mixup", pairs="matched")


def test_basis_free_split_survives_a_rotated_feature_basis(tmp_path):
    labels, base, latent = _images(6)
    rng = np.random.default_rng(7)
    W, b = base + 0.3 * rng.normal(size=(K, D)), 0.1 * rng.normal(size=K)
    f = 2.0 * latent
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0]  # the treated network: same function in rotated coordinates ...
    shrink = np.exp(rng.normal(-0.5, 0.2, size=(N, 1)))  # ... with smaller features
    runs = [_run("ce-s0", "ce", W, b, f, labels), _run("mixup-s0", "mixup", W @ Q.T, b, (shrink * f) @ Q.T, labels),
            _run("cutmix-s0", "cutmix", 1.7 * W @ Q.T, b, f @ Q.T, labels)]  # a larger head, same features
    s = _study(tmp_path, runs)
    factors = ("magnitude", "head_norm", "orientation")
    mag = decompose(s, control="ce", treated="mixup", outcome=["nll", "signed_ece"], factors=factors, n_boot=30,
                    rng=0).summary().set_index(["outcome", "component"])["estimate"]
    head = decompose(s, control="ce", treated="cutmix", outcome=["nll", "signed_ece"], factors=factors, n_boot=30,
                     rng=0).summary().set_index(["outcome", "component"])["estimate"]
    for o in ("nll", "signed_ece"):
        # float32 storage of the rotated features and heads: the unchanged factors agree to ~1e-6
        assert abs(mag[o, "total"]) > 1e-3 and mag[o, "magnitude"] == pytest.approx(mag[o, "total"], abs=1e-5)
        assert abs(mag[o, "head_norm"]) < 1e-5 and abs(mag[o, "orientation"]) < 1e-5
        assert abs(head[o, "total"]) > 1e-3 and head[o, "head_norm"] == pytest.approx(head[o, "total"], abs=1e-5)
        assert abs(head[o, "magnitude"]) < 1e-5 and abs(head[o, "orientation"]) < 1e-5
    with pytest.warns(RuntimeWarning, match="unaligned"):  # the head/direction split cannot be read here
        decompose(s, control="ce", treated="mixup", outcome="nll", n_boot=30, rng=0)
