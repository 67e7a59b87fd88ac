"""Attacks (FGSM, PGD, torchattacks wrapper, transfer) and the ε sweep with its monotone rule.

Outside reference: torchattacks (FGSM, PGD, PGDL2 compute the same iterates without random start).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import causalgeom as cg
from tests._numerics import BOUNDARY_ATOL, assert_decisions_agree
from causalgeom.pipeline.attacks import FGSM, PGD, REFERENCE, STANDARD_EPS, Transfer, margin, parse_attack, parse_eps, sweep
from causalgeom.errors import ConfigError

torchattacks = pytest.importorskip("torchattacks")


def init_(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialize every parameter from an explicit generator (uniform, fan-in scaled)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            if "body.1" in name:  # BatchNorm affine: keep it near the identity
                p.copy_(0.1 * torch.rand(p.shape, generator=g) + (1.0 if name.endswith("weight") else 0.0))
                continue
            bound = 1 / math.sqrt(fan_in)
            p.copy_((2 * torch.rand(p.shape, generator=g) - 1) * bound)
    return module


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class TinyCNN(nn.Module):
    """Pixel-space model: normalization inside, conv features, nn.Linear head."""

    def __init__(self, k: int = 4, seed: int = 0):
        super().__init__()
        self.norm = Normalize([0.5, 0.4, 0.3], [0.25, 0.2, 0.3])
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.ReLU())
        self.fc = nn.Linear(16, k)
        init_(self, seed)
        self.eval()

    def forward(self, x):
        return self.fc(self.body(self.norm(x)))


@pytest.fixture(scope="module")
def model():
    return TinyCNN()


@pytest.fixture(scope="module")
def batch(model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(48, 3, 8, 8, generator=g)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:8] = (pred[:8] + 1) % 4  # 8 samples misclassified clean, the rest correct
    return x, y


# ----------------------------------------------------------------------------------------------
# agreement with torchattacks
# ----------------------------------------------------------------------------------------------
def test_fgsm_matches_torchattacks(model, batch):
    x, y = batch
    eps = 4 / 255
    ours = FGSM("linf").perturb(model, x, y, eps)
    ref = torchattacks.FGSM(model, eps=eps)(x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("steps,alpha", [(5, 1 / 255), (3, 3 / 255)])
def test_pgd_linf_no_random_start_matches_torchattacks(model, batch, steps, alpha):
    x, y = batch
    eps = 4 / 255
    ours = PGD("linf", steps=steps, step_size=alpha, random_start=False).perturb(model, x, y, eps)
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_pgd_l2_no_random_start_matches_torchattacks(model, batch):
    x, y = batch
    eps, alpha = 0.5, 0.1
    ours = PGD("l2", steps=5, step_size=alpha, random_start=False).perturb(model, x, y, eps)
    ref = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=5, random_start=False)(x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_relative_default_step(model):
    pgd = PGD("linf", steps=10)
    assert pgd.alpha(8 / 255) == pytest.approx(2.5 * (8 / 255) / 10)
    assert PGD("linf", steps=7, step_size=0.2 / 255).alpha(1.0) == pytest.approx(0.2 / 255)


# ----------------------------------------------------------------------------------------------
# constraints and randomness
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", [
    FGSM("linf"), FGSM("l2"), PGD("linf", steps=3), PGD("l2", steps=3), PGD("linf", steps=2, restarts=3),
    PGD("linf", steps=3, loss="margin"), PGD("l2", steps=3, loss="dlr"), FGSM("linf", loss="dlr"),
])
@pytest.mark.parametrize("eps", [0.0, 2 / 255, 0.3])
def test_perturbation_inside_ball_and_box(model, batch, attack, eps):
    x, y = batch
    xa = attack.perturb(model, x, y, eps, generator=torch.Generator().manual_seed(3))
    assert xa.shape == x.shape and xa.dtype == torch.float32
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    d = (xa - x).flatten(1)
    if attack.norm == "linf":
        assert float(d.abs().max()) <= eps + 1e-6
    else:
        assert float(d.norm(dim=1).max()) <= eps + 1e-5
    if eps == 0:
        assert torch.equal(xa, x)


def test_randomness_only_from_generator(model, batch):
    x, y = batch
    pgd = PGD("linf", steps=2, random_start=True)
    state = torch.random.get_rng_state()
    a = pgd.perturb(model, x, y, 8 / 255, generator=torch.Generator().manual_seed(7))
    b = pgd.perturb(model, x, y, 8 / 255, generator=torch.Generator().manual_seed(7))
    c = pgd.perturb(model, x, y, 8 / 255, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a, b) and not torch.equal(a, c)
    # default (no generator) is deterministic too
    assert torch.equal(pgd.perturb(model, x, y, 8 / 255), pgd.perturb(model, x, y, 8 / 255))


def test_restarts_never_worse_than_one_start(model, batch):
    x, y = batch
    one = PGD("linf", steps=2, restarts=1).perturb(model, x, y, 2 / 255, generator=torch.Generator().manual_seed(0))
    many = PGD("linf", steps=2, restarts=4).perturb(model, x, y, 2 / 255, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        broken_one = model(one).argmax(1) != y
        broken_many = model(many).argmax(1) != y
    # the first restart is the single-start run, later ones only add broken samples
    assert bool((broken_many | ~broken_one).all())


def test_params_unchanged_and_grads_not_accumulated(model, batch):
    x, y = batch
    flags = [p.requires_grad for p in model.parameters()]
    PGD("linf", steps=2).perturb(model, x, y, 1 / 255)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_margin_closed_form():
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    y = torch.tensor([0, 2])
    torch.testing.assert_close(margin(z, y), torch.tensor([1.0, -6.0]))


# ----------------------------------------------------------------------------------------------
# the sweep and the monotone rule
# ----------------------------------------------------------------------------------------------
def test_sweep_shapes_and_monotone_rule(model, batch):
    x, y = batch
    eps = [1 / 255, 4 / 255, 16 / 255, 64 / 255]
    out = sweep(model, x, y, [PGD("linf", steps=3), FGSM("linf")], eps, return_features=True)
    A, E, N = 2, 4, x.shape[0]
    assert out["adv_correct"].shape == (A, E, N) and out["adv_correct"].dtype == bool
    assert out["adv_margin"].shape == (A, E, N) and out["adv_margin"].dtype == np.float32
    assert out["min_flip_eps"].shape == (A, N) and out["min_flip_eps"].dtype == np.float32
    assert out["adv_features"].shape == (A, E, N, 16) and out["adv_logits"].shape == (A, E, N, 4)
    assert list(out["attack"]) == ["pgd-linf", "fgsm-linf"]
    ac, am, mf = out["adv_correct"], out["adv_margin"], out["min_flip_eps"]
    # misclassified clean: broken everywhere, min_flip_eps 0
    assert not ac[:, :, :8].any() and (mf[:, :8] == 0).all()
    # monotone: once broken, broken at every larger eps
    assert (np.diff(ac.astype(int), axis=1) <= 0).all()
    # min_flip_eps is the first eps at which the sample is broken (inf if never)
    for a in range(A):
        for s in range(8, N):
            broken = np.nonzero(~ac[a, :, s])[0]
            expect = eps[broken[0]] if broken.size else math.inf
            assert mf[a, s] == np.float32(expect)
            if broken.size:  # the already-found example is carried to larger eps
                assert (am[a, broken[0]:, s] == am[a, broken[0], s]).all()
    # outcomes are those of the stored adversarial logits / features
    W, b = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    np.testing.assert_allclose(out["adv_features"] @ W.T + b, out["adv_logits"], rtol=1e-5, atol=1e-5)
    yy = y.numpy()
    assert (out["adv_logits"].argmax(-1) == yy).tolist() == ac.tolist()
    true = np.take_along_axis(out["adv_logits"], yy[None, None, :, None], -1)[..., 0]
    other = np.where(np.eye(4, dtype=bool)[yy], -np.inf, out["adv_logits"]).max(-1)
    np.testing.assert_allclose(am, true - other, rtol=1e-6, atol=1e-6)


def test_sweep_equals_cumulative_direct_attacks(model, batch):
    """Deterministic attack: sweep at eps_j = clean-correct AND not broken by the direct attack at any eps_i <= eps_j."""
    x, y = batch
    eps = [1 / 255, 4 / 255, 16 / 255]
    pgd = PGD("linf", steps=3, random_start=False)
    out = sweep(model, x, y, pgd, eps)
    with torch.no_grad():
        clean_ok = (model(x).argmax(1) == y).numpy()
        direct = np.stack([(model(pgd.perturb(model, x, y, e)).argmax(1) == y).numpy() for e in eps])
    expected = np.logical_and.accumulate(direct & clean_ok, axis=0)
    # the sweep attacks only the survivors (another batch shape, another kernel): decisions may differ
    # only next to the boundary
    assert_decisions_agree(out["adv_correct"][0], expected, out["adv_margin"][0])


def test_sweep_batched_equals_unbatched(model, batch):
    x, y = batch
    pgd = PGD("linf", steps=2, random_start=False)
    a = sweep(model, x, y, pgd, [2 / 255, 8 / 255])
    b = sweep(model, x, y, pgd, [2 / 255, 8 / 255], batch_size=10)
    # batches of 10 vs all at once: another summation order (F32 tolerance); decisions agree off the boundary
    assert_decisions_agree(a["adv_correct"], b["adv_correct"], a["adv_margin"])
    close = np.abs(a["adv_margin"]) > BOUNDARY_ATOL
    np.testing.assert_allclose(a["adv_margin"][close], b["adv_margin"][close], rtol=1e-4, atol=1e-4)


def test_sweep_restores_train_mode(batch):
    m = TinyCNN()
    m.train()
    x, y = batch
    sweep(m, x, y, FGSM(), [1 / 255])
    assert m.training and m.body[1].training


def test_sweep_rejects_bad_input(model, batch):
    x, y = batch
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        sweep(model, x * 3 - 1, y, FGSM(), [1 / 255])
    with pytest.raises(ConfigError, match="unique"):
        sweep(model, x, y, [FGSM(), FGSM()], [1 / 255])
    with pytest.raises(ConfigError, match="at least one attack"):
        sweep(model, x, y, [], [1 / 255])


# ----------------------------------------------------------------------------------------------
# transfer and torchattacks objects
# ----------------------------------------------------------------------------------------------
def test_transfer_crafts_on_source_evaluates_on_target(batch):
    source, target = TinyCNN(seed=1), TinyCNN(seed=2)
    x, y = batch
    pgd = PGD("linf", steps=3, random_start=False)
    tr = Transfer(source, pgd)
    assert tr.name == "transfer-pgd-linf"
    eps = [4 / 255, 32 / 255]
    out = sweep(target, x, y, [tr, pgd], eps)
    with torch.no_grad():
        clean_ok = (target(x).argmax(1) == y).numpy()
        direct = np.stack([(target(pgd.perturb(source, x, y, e)).argmax(1) == y).numpy() for e in eps])
        white = np.stack([(target(pgd.perturb(target, x, y, e)).argmax(1) == y).numpy() for e in eps])
    # survivors-only batches vs whole-batch direct attacks: decisions agree off the boundary
    assert_decisions_agree(out["adv_correct"][0], np.logical_and.accumulate(direct & clean_ok, axis=0),
                           out["adv_margin"][0])
    assert_decisions_agree(out["adv_correct"][1], np.logical_and.accumulate(white & clean_ok, axis=0),
                           out["adv_margin"][1])
    # the transfer examples are the source attack's examples
    torch.testing.assert_close(tr.perturb(target, x, y, 4 / 255), pgd.perturb(source, x, y, 4 / 255))


def test_torchattacks_object_is_swept(model, batch):
    x, y = batch
    ta = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=3, random_start=False)
    wrapped = cg.attacks.as_attack(ta)
    assert wrapped.name == "ta-pgd"
    # at eps 4/255 the wrapper sets eps and scales alpha in proportion (1/255)
    ours = PGD("linf", steps=3, step_size=1 / 255, random_start=False).perturb(model, x, y, 4 / 255)
    torch.testing.assert_close(wrapped.perturb(model, x, y, 4 / 255), ours, rtol=0, atol=1e-6)
    assert ta.eps == 8 / 255 and ta.alpha == 2 / 255  # restored
    out = sweep(model, x, y, [ta], [2 / 255, 8 / 255])
    assert out["adv_correct"].shape == (1, 2, x.shape[0])
    fixed = cg.attacks.TorchAttack(ta, sweep_eps=False)
    with pytest.raises(ConfigError, match="sweep_eps=False"):
        fixed.perturb(model, x, y, 2 / 255)


def test_torchattacks_randomness_is_contained(model, batch):
    x, y = batch
    ta = cg.attacks.TorchAttack(torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=2, random_start=True))
    state = torch.random.get_rng_state()
    a = ta.perturb(model, x, y, 4 / 255, generator=torch.Generator().manual_seed(5))
    b = ta.perturb(model, x, y, 4 / 255, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_torchattacks_apgd_on_other_model(batch):
    """A torchattacks object built on one model attacks the model it is given, inside the ball."""
    built_on, attacked = TinyCNN(seed=3), TinyCNN(seed=4)
    x, y = batch
    apgd = torchattacks.APGD(built_on, eps=4 / 255, steps=3, n_restarts=1, loss="ce")
    out = sweep(attacked, x, y, apgd, [4 / 255])
    assert out["adv_correct"].shape == (1, 1, x.shape[0])
    assert apgd.model is built_on


# ----------------------------------------------------------------------------------------------
# presets and parsing
# ----------------------------------------------------------------------------------------------
def test_presets():
    assert STANDARD_EPS == [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    ref = REFERENCE.attack
    assert ref.norm == "linf" and ref.steps == 7 and ref.step_size == pytest.approx(0.2 / 255)
    assert REFERENCE.eps == (pytest.approx(0.4 / 255),)
    atks, eps = cg.attacks.resolve(REFERENCE)
    assert [a.name for a in atks] == ["pgd-linf"] and eps == [pytest.approx(0.4 / 255)]
    atks, eps = cg.attacks.resolve([FGSM()])
    assert eps == STANDARD_EPS


def test_parse_attack():
    p = parse_attack("pgd:linf:eps=1/255,2/255:steps=7")
    assert isinstance(p.attack, PGD) and p.attack.steps == 7 and p.attack.norm == "linf"
    assert p.eps == (pytest.approx(1 / 255), pytest.approx(2 / 255))
    p = parse_attack("pgd:l2:eps=0.5:step=0.1:restarts=2:loss=margin:name=cw")
    assert p.attack.norm == "l2" and p.attack.step_size == 0.1 and p.attack.restarts == 2
    assert p.attack.loss == "margin" and p.attack.name == "cw"
    assert parse_attack("fgsm:eps=standard").eps == tuple(STANDARD_EPS)
    assert parse_attack("pgd:random_start=false").eps is None
    assert parse_attack("reference").eps == REFERENCE.eps
    assert parse_eps("2/255, 1/255,2/255") == [1 / 255, 2 / 255]


@pytest.mark.parametrize("spec,match", [
    ("cw:linf", "unknown attack"), ("pgd:lp", "norm"), ("pgd:stepz=3", "allowed"),
    ("pgd:eps=abc", "fraction"), ("pgd:loss=hinge", "loss"), ("pgd:steps=0", "steps"),
    ("pgd:restarts=2:random_start=false", "random_start"),
])
def test_parse_attack_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_attack(spec)


def test_constructor_errors():
    with pytest.raises(ConfigError, match=r"\['linf', 'l2'\]"):
        PGD("l1")
    with pytest.raises(ConfigError, match="eps"):
        FGSM().perturb(TinyCNN(), torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), -1.0)
    with pytest.raises(ConfigError, match="torchattacks"):
        cg.attacks.as_attack(object())
