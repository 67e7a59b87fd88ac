# Over 600 lines on purpose: one concern (attacks, spec parsing, the eps sweep) sharing projection and loss helpers.
"""Adversarial attacks in pixel space [0, 1] and the ε sweep that records per-sample outcomes.

Definitions, presets and the monotone-ε rule are documented in ``docs/attacks.md``.

Models take pixel-space input in ``[0, 1]`` with the normalization inside the model, so
every attack perturbs raw pixels, clips to ``[0, 1]`` and projects onto the ε-ball of its
norm. All randomness (random starts, restarts) comes from an explicit
:class:`torch.Generator`; ``generator=None`` means a fresh generator seeded with 0, so
results are reproducible and the global RNG is never touched.

Examples
--------
>>> import causalgeom as cg
>>> pgd = cg.attacks.PGD("linf", steps=10)                          # doctest: +SKIP
>>> x_adv = pgd.perturb(model, x, y, eps=2 / 255)                    # doctest: +SKIP
>>> out = cg.attacks.sweep(model, x, y, [pgd], cg.attacks.STANDARD_EPS)  # doctest: +SKIP
>>> out["adv_correct"].mean(-1)        # robust accuracy per (attack, eps)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._util.checks import check_choice
from .._util.torch import autocast as _autocast
from ..errors import ConfigError
from .models import _Capture, find_head
from .models import eval_mode as _eval_mode

__all__ = [
    "Attack", "FGSM", "PGD", "TorchAttack", "Transfer", "AttackPreset", "REFERENCE", "STANDARD_EPS", "LOSSES",
    "NORMS", "sweep", "parse_attack", "parse_eps", "resolve", "as_attack", "margin"
]

#: Allowed ``norm`` values.
NORMS = ("linf", "l2")
#: Allowed ``loss`` values: cross-entropy, Carlini-Wagner margin, difference of logits ratio (Croce & Hein 2020).
LOSSES = ("ce", "margin", "dlr")
#: Standard L-inf budgets on [0, 1] pixels: 1/255, 2/255, 4/255, 8/255.
STANDARD_EPS = [1 / 255, 2 / 255, 4 / 255, 8 / 255]

_DIV_EPS = 1e-10  # as torchattacks' PGDL2 (eps_for_division)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin: true-class logit minus the largest other logit.

    Parameters
    ----------
    logits : torch.Tensor, shape (n, K)
    y : torch.Tensor of int, shape (n,)

    Returns
    -------
    torch.Tensor, shape (n,)
        Positive: correctly classified with that margin; negative: misclassified.
    """
    z = logits.float()
    zy = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return zy - other


def _loss(z: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Summed per-sample loss to *maximize* (sum: each sample's gradient is independent of the batch)."""
    z = z.float()
    if kind == "ce":
        return F.cross_entropy(z, y, reduction="sum")
    if kind == "margin":
        return (-margin(z, y)).sum()
    if kind == "dlr":
        if z.shape[1] < 3:
            raise ConfigError(f"loss='dlr' needs at least 3 classes, the model gives {z.shape[1]}; use loss='margin'")
        zs = z.sort(1).values
        return (-margin(z, y) / (zs[:, -1] - zs[:, -3] + 1e-12)).sum()
    raise ConfigError(f"loss: expected one of {list(LOSSES)}, got {kind!r}")


def _check_choice(arg: str, value: Any, allowed: Sequence[str]) -> str:
    """Case-insensitive `check_choice` that also accepts the spellings ``inf``/``l_inf``/``linfty`` of ``linf``."""
    v = str(value).lower()
    if v in ("inf", "l_inf", "linfty") and "linf" in allowed:
        v = "linf"
    if v not in allowed:
        check_choice(value, arg, allowed)  # raises ConfigError listing the allowed values
    return v


def _check_eps(eps: Any) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"eps: expected a number >= 0, got {eps!r}") from None
    if not math.isfinite(e) or e < 0:
        raise ConfigError(f"eps: expected a finite number >= 0, got {eps!r}")
    return e


def _default_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def _rand(shape: Sequence[int], generator: torch.Generator, device: torch.device, normal: bool = False) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) draws from ``generator`` (on its own device), moved to ``device``."""
    fn = torch.randn if normal else torch.rand
    return fn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32).to(device)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ε-ball around ``x`` and clip to [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1)
        factor = torch.where(n > eps, eps / (n + 1e-12), torch.ones_like(n))
        delta = delta * _view(factor, delta)
    return (x + delta).clamp(0, 1)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Temporarily stop parameters from requiring grad (attacks need input gradients only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# --------------------------------------------------------------------------------------------
# attacks
# --------------------------------------------------------------------------------------------
class Attack:
    """Base class: an attack has a ``name`` (the ``attack`` coordinate) and ``perturb``.

    Subclasses implement :meth:`perturb`. The model is used as given (call it in eval mode;
    :func:`sweep` and ``cg.extract`` do that for you).
    """

    name: str = "attack"
    norm: str = "linf"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Return adversarial examples for ``x``.

        Parameters
        ----------
        model : nn.Module
            Takes pixel-space input in [0, 1], returns logits (n, K).
        x : torch.Tensor, shape (n, ...)
            Clean inputs in [0, 1].
        y : torch.Tensor of int, shape (n,)
            True labels.
        eps : float
            Budget (radius of the ball of ``self.norm``).
        generator : torch.Generator, optional
            Source of all randomness (default: a fresh generator seeded with 0).

        Returns
        -------
        torch.Tensor, shape (n, ...)
            ``x_adv`` in [0, 1] with ``||x_adv - x|| <= eps``.
        """
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """JSON-serializable parameters (recorded in a dump's ``attack_params`` attribute)."""
        return {"type": type(self).__name__, "norm": self.norm}

    def to(self, device: torch.device | str) -> "Attack":
        """Move any model the attack owns (transfer sources) to ``device``; returns ``self``."""
        return self

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "type")
        return f"{type(self).__name__}({inner})"


class _GradientAttack(Attack):
    """Shared parts of FGSM and PGD: norm, loss and gradient of the loss w.r.t. the input."""

    def __init__(self, norm: str, loss: str, name: str | None):
        self.norm = _check_choice("norm", norm, NORMS)
        self.loss = _check_choice("loss", loss, LOSSES)
        self._name = name

    def _grad(self, model: nn.Module, xa: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xa = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            cost = _loss(model(xa), y, self.loss)
            (g,) = torch.autograd.grad(cost, xa)
        return g

    def _step(self, xa: torch.Tensor, g: torch.Tensor, alpha: float) -> torch.Tensor:
        if self.norm == "linf":
            return xa.detach() + alpha * g.sign()
        gn = g.flatten(1).norm(dim=1) + _DIV_EPS
        return xa.detach() + alpha * g / _view(gn, g)

    def _base_name(self, kind: str) -> str:
        if self._name:
            return self._name
        return f"{kind}-{self.norm}" + ("" if self.loss == "ce" else f"-{self.loss}")


class FGSM(_GradientAttack):
    """Fast gradient sign method (Goodfellow et al. 2015), one step of size ε.

    L-inf: ``x + eps * sign(grad)``; L2: ``x + eps * grad / ||grad||``; then clipped to [0, 1].
    With ``norm="linf", loss="ce"`` this is torchattacks' ``FGSM``.

    Parameters
    ----------
    norm : {"linf", "l2"}
    loss : {"ce", "margin", "dlr"}
        Loss maximized (see ``docs/attacks.md``).
    name : str, optional
        Name in the ``attack`` coordinate (default ``"fgsm-<norm>"``, plus ``-<loss>`` if not ce).
    """

    def __init__(self, norm: str = "linf", *, loss: str = "ce", name: str | None = None):
        super().__init__(norm, loss, name)
        self.name = self._base_name("fgsm")

    def perturb(self, model, x, y, eps, generator=None):  # noqa: D102 - see Attack.perturb
        eps = _check_eps(eps)
        x0 = x.detach().float()
        if eps == 0:
            return x0.clone()
        with _frozen(model):
            g = self._grad(model, x0, y)
        with torch.no_grad():
            return self._step(x0, g, eps).clamp(0, 1)

    def params(self) -> dict[str, Any]:  # noqa: D102
        return {"type": "FGSM", "norm": self.norm, "loss": self.loss}


class PGD(_GradientAttack):
    """Projected gradient descent (Madry et al. 2018) under L-inf or L2.

    Each step moves by ``step_size`` along ``sign(grad)`` (L-inf) or ``grad / ||grad||`` (L2),
    projects onto the ε-ball and clips to [0, 1]. With ``random_start``, the start is uniform in
    the L-inf ball, or (L2) a Gaussian direction scaled to a radius ``U(0, 1) * eps``. With
    ``restarts > 1``, samples not yet misclassified are attacked again from a new random start,
    and per sample the example with the lowest margin is kept. With ``random_start=False,
    loss="ce"`` this computes the same iterates as torchattacks' ``PGD`` / ``PGDL2``.

    Parameters
    ----------
    norm : {"linf", "l2"}
    steps : int
        Gradient steps per restart.
    step_size : float, optional
        Absolute step size. Default: ``rel_step * eps / steps``.
    random_start : bool
    restarts : int
        Number of random starts (>= 1; > 1 needs ``random_start``).
    loss : {"ce", "margin", "dlr"}
    rel_step : float
        Relative step used when ``step_size`` is None (default 2.5, Madry et al.).
    name : str, optional
        Name in the ``attack`` coordinate (default ``"pgd-<norm>"``, plus ``-<loss>`` if not ce).
    """

    def __init__(self, norm: str = "linf", steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, restarts: int = 1, loss: str = "ce", *, rel_step: float = 2.5,
                 name: str | None = None):
        super().__init__(norm, loss, name)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ConfigError(f"steps: expected an integer >= 1, got {steps!r}")
        if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
            raise ConfigError(f"restarts: expected an integer >= 1, got {restarts!r}")
        if restarts > 1 and not random_start:
            raise ConfigError(f"restarts={restarts} needs random_start=True (restarts from the same start are "
                              "identical)")
        if step_size is not None:
            step_size = float(step_size)
            if not math.isfinite(step_size) or step_size <= 0:
                raise ConfigError(f"step_size: expected a positive number or None (relative default), "
                                  f"got {step_size!r}")
        rel_step = float(rel_step)
        if not math.isfinite(rel_step) or rel_step <= 0:
            raise ConfigError(f"rel_step: expected a positive number, got {rel_step!r}")
        self.steps = int(steps)
        self.step_size = step_size
        self.rel_step = rel_step
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.name = self._base_name("pgd")

    def alpha(self, eps: float) -> float:
        """Step size used at budget ``eps``."""
        return self.step_size if self.step_size is not None else self.rel_step * eps / self.steps

    def perturb(self, model, x, y, eps, generator=None):  # noqa: D102 - see Attack.perturb
        eps = _check_eps(eps)
        x0 = x.detach().float()
        if eps == 0 or x0.shape[0] == 0:
            return x0.clone()
        if self.random_start and generator is None:
            generator = _default_generator(x0.device)
        with _frozen(model):
            if self.restarts == 1:
                return self._run(model, x0, y, eps, generator)
            best = x0.clone()
            best_margin = torch.full((x0.shape[0],), float("inf"), device=x0.device)
            best_correct = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
            remaining = torch.arange(x0.shape[0], device=x0.device)
            for _ in range(self.restarts):
                xa = self._run(model, x0[remaining], y[remaining], eps, generator)
                with torch.no_grad():
                    z = model(xa).float()
                m = margin(z, y[remaining])
                ok = z.argmax(1) == y[remaining]
                better = (m < best_margin[remaining]) | (best_correct[remaining] & ~ok)
                idx = remaining[better]
                best[idx] = xa[better]
                best_margin[idx] = m[better]
                best_correct[idx] = ok[better]
                remaining = remaining[best_correct[remaining]]
                if remaining.numel() == 0:
                    break
            return best

    def _run(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, eps: float,
             generator: torch.Generator | None) -> torch.Tensor:
        alpha = self.alpha(eps)
        if self.random_start:
            if self.norm == "linf":
                noise = (2 * _rand(x0.shape, generator, x0.device) - 1) * eps
            else:
                d = _rand(x0.shape, generator, x0.device, normal=True)
                r = _rand((x0.shape[0],), generator, x0.device)
                noise = d * _view(r * eps / (d.flatten(1).norm(dim=1) + 1e-12), d)
            xa = (x0 + noise).clamp_(0, 1)
        else:
            xa = x0.clone()
        for _ in range(self.steps):
            g = self._grad(model, xa, y)
            with torch.no_grad():
                if self.norm == "linf":
                    # in place, same float operations in the same order as torchattacks' PGD:
                    # x + alpha*sign(g), delta = clamp(x - x0, -eps, eps), x = clamp(x0 + delta, 0, 1)
                    xa.add_(g.sign_().mul_(alpha)).sub_(x0).clamp_(-eps, eps).add_(x0).clamp_(0, 1)
                else:  # same arithmetic as torchattacks' PGDL2
                    delta = self._step(xa, g, alpha) - x0
                    dn = delta.flatten(1).norm(dim=1)
                    factor = torch.minimum(eps / dn, torch.ones_like(dn))
                    xa = (x0 + delta * _view(factor, delta)).clamp(0, 1)
        return xa

    def params(self) -> dict[str, Any]:  # noqa: D102
        return {"type": "PGD", "norm": self.norm, "steps": self.steps, "step_size": self.step_size,
                "rel_step": self.rel_step, "random_start": self.random_start, "restarts": self.restarts,
                "loss": self.loss}


def _is_torchattack(obj: Any) -> bool:
    return any(c.__module__.split(".")[0] == "torchattacks" and c.__name__ == "Attack" for c in type(obj).__mro__)


class TorchAttack(Attack):
    """Wrap a `torchattacks <https://github.com/Harry24k/adversarial-attacks-pytorch>`_ ``Attack`` object.

    This gives APGD, Square, AutoAttack, etc. The wrapped object was built with its own model
    and ``eps``; :meth:`perturb` runs it on the model it is given (``set_model``/``set_device``
    for the call, then restored).

    How ε is handled: a torchattacks object fixes ``eps`` at construction. With
    ``sweep_eps=True`` (default), ``perturb(..., eps)`` sets ``eps`` on the object *and its
    sub-attacks* (AutoAttack's APGD/FAB/Square...) for the call, and scales an absolute step
    ``alpha`` in proportion (``scale_step``), so the attack can be swept like the native ones.
    With ``sweep_eps=False`` the object's own ε is the only one allowed: ``perturb`` at another
    ε raises :class:`ConfigError`, so a sweep must use ``eps=[attack.eps]``.

    Randomness: torchattacks draws from torch's global RNG (and APGD/Square re-seed it). The
    call runs inside :func:`torch.random.fork_rng` seeded from ``generator``, so the global RNG
    state is unchanged afterwards and results are reproducible given the generator.

    Parameters
    ----------
    attack : torchattacks.Attack
    name : str, optional
        Default ``"ta-<classname>"`` in lower case, e.g. ``"ta-apgd"``.
    norm : {"linf", "l2"}, optional
        Ball to project onto (default: from the object's ``norm`` attribute or class name, else L-inf).
    sweep_eps : bool
    scale_step : bool
    """

    def __init__(self, attack: Any, *, name: str | None = None, norm: str | None = None, sweep_eps: bool = True,
                 scale_step: bool = True):
        if not _is_torchattack(attack):
            raise ConfigError(f"attack: expected a torchattacks.Attack object, got {type(attack).__name__}")
        if not hasattr(attack, "eps"):
            raise ConfigError(f"attack: the torchattacks object {type(attack).__name__} has no 'eps' attribute "
                              "(not a norm-bounded attack); causalgeom sweeps need a budget")
        self.attack = attack
        self.fixed_eps = float(attack.eps)
        if norm is None:
            raw = str(getattr(attack, "norm", "")).lower()
            norm = "l2" if raw == "l2" or type(attack).__name__.upper().endswith("L2") else "linf"
        self.norm = _check_choice("norm", norm, NORMS)
        self.sweep_eps = bool(sweep_eps)
        self.scale_step = bool(scale_step)
        self.name = name or f"ta-{type(attack).__name__.lower()}"

    def _members(self) -> list[Any]:
        subs = list(getattr(self.attack, "_attacks", {}).values())
        return [self.attack] + [s for s in subs if s is not self.attack]

    def perturb(self, model, x, y, eps, generator=None):  # noqa: D102 - see Attack.perturb
        eps = _check_eps(eps)
        if not self.sweep_eps and not math.isclose(eps, self.fixed_eps, rel_tol=1e-9, abs_tol=1e-12):
            raise ConfigError(f"eps: the torchattacks attack {self.name!r} was built with eps={self.fixed_eps!r} and "
                              f"sweep_eps=False, got eps={eps!r}; sweep it with eps=[{self.fixed_eps!r}]")
        x0 = x.detach().float()
        if eps == 0 or x0.shape[0] == 0:
            return x0.clone()
        members = self._members()
        saved = [(m, m.__dict__.get("eps"), m.__dict__.get("alpha")) for m in members]
        old_model, old_device = self.attack.model, getattr(self.attack, "device", None)
        if generator is None:
            generator = _default_generator(x0.device)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        devices = [x0.device] if x0.device.type == "cuda" else []
        try:
            self.attack.set_model(model)
            self.attack.set_device(x0.device)
            for m, e0, a0 in saved:
                if e0 is not None:
                    m.eps = eps
                    if self.scale_step and isinstance(a0, (int, float)) and e0:
                        m.alpha = a0 * eps / e0
            with torch.random.fork_rng(devices=devices), _frozen(model):
                torch.manual_seed(seed)
                x_adv = self.attack(x0, y)
        finally:
            self.attack.set_model(old_model)
            if old_device is not None:
                self.attack.set_device(old_device)
            for m, e0, a0 in saved:
                if e0 is not None:
                    m.eps = e0
                if a0 is not None:
                    m.alpha = a0
        with torch.no_grad():
            return _project(x_adv.detach().float(), x0, eps, self.norm)

    def params(self) -> dict[str, Any]:  # noqa: D102
        return {"type": "torchattacks." + type(self.attack).__name__, "norm": self.norm,
                "built_eps": self.fixed_eps, "sweep_eps": self.sweep_eps, "repr": repr(self.attack)[:500]}


class Transfer(Attack):
    """Transfer attack: craft with ``attack`` on ``source_model``, evaluate on the target model.

    ``perturb(model, x, y, eps)`` ignores ``model`` for crafting (it is the *target*, used by
    :func:`sweep` to evaluate). A transfer attack that succeeds where the white-box attack on the
    target failed is evidence of gradient masking in the target.

    Parameters
    ----------
    source_model : nn.Module
        Model the examples are crafted on (pixel-space input, put in eval mode while crafting).
    attack : Attack, torchattacks object or spec string
    name : str, optional
        Default ``"transfer-<attack.name>"``.
    """

    def __init__(self, source_model: nn.Module, attack: Any, *, name: str | None = None):
        if not isinstance(source_model, nn.Module):
            raise ConfigError(f"source_model: expected a torch.nn.Module, got {type(source_model).__name__}")
        self.source = source_model
        self.attack = as_attack(attack)
        self.norm = self.attack.norm
        self.name = name or f"transfer-{self.attack.name}"

    def perturb(self, model, x, y, eps, generator=None):  # noqa: D102 - see Attack.perturb
        with _eval_mode(self.source):
            return self.attack.perturb(self.source, x, y, eps, generator)

    def to(self, device):  # noqa: D102
        self.source.to(device)
        self.attack.to(device)
        return self

    def params(self) -> dict[str, Any]:  # noqa: D102
        return {"type": "Transfer", "norm": self.norm, "source_model": type(self.source).__name__,
                "attack": self.attack.params()}


# --------------------------------------------------------------------------------------------
# presets and parsing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackPreset:
    """Attacks plus the ε grid they are meant for; accepted wherever attacks are.

    Attributes
    ----------
    name : str
    attacks : tuple of Attack
    eps : tuple of float, or None
        None: no grid given (callers use :data:`STANDARD_EPS`).
    """

    name: str
    attacks: tuple = field(default_factory=tuple)
    eps: tuple | None = None

    @property
    def attack(self) -> Attack:
        """The first (usually only) attack."""
        return self.attacks[0]


#: The reference setting (Park, Kim & Lee, arXiv 2410.03999): PGD, L-inf, 7 steps of 0.2/255, ε = 0.4/255.
REFERENCE = AttackPreset("reference", (PGD("linf", steps=7, step_size=0.2 / 255, random_start=True),), (0.4 / 255,))

_NUM = re.compile(r"^\s*([-+]?[0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+))?\s*$")


def _number(text: str, arg: str) -> float:
    m = _NUM.match(str(text))
    try:
        if not m:
            raise ValueError
        value = float(Fraction(m.group(1))) if m.group(2) is None else float(m.group(1)) / float(m.group(2))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{arg}: expected a number or a fraction such as 2/255, got {text!r}") from None
    return value


def parse_eps(text: str | Iterable[Any]) -> list[float]:
    """Parse an ε list: ``"1/255,2/255"``, ``"standard"`` (:data:`STANDARD_EPS`), or an iterable of numbers.

    Returns
    -------
    list of float, sorted increasing without duplicates.
    """
    if isinstance(text, str):
        if text.strip().lower() in ("standard", "std"):
            return list(STANDARD_EPS)
        values = [_number(t, "eps") for t in text.replace(";", ",").split(",") if t.strip()]
    else:
        values = [_check_eps(v) for v in text]
    if not values:
        raise ConfigError(f"eps: expected at least one value, got {text!r}")
    return sorted({_check_eps(v) for v in values})


_SPEC_KEYS = ("eps", "steps", "step", "step_size", "rel_step", "restarts", "loss", "random_start", "name", "norm")


def parse_attack(spec: str) -> AttackPreset:
    """Parse a command-line attack spec.

    Grammar: ``KIND[:NORM][:key=value]...`` with ``KIND`` in ``fgsm``, ``pgd``, ``reference``;
    ``NORM`` in ``linf``, ``l2``; keys ``eps`` (comma list, fractions allowed, or ``standard``),
    ``steps``, ``step`` (absolute step size), ``rel_step``, ``restarts``, ``loss``
    (``ce``/``margin``/``dlr``), ``random_start`` (true/false), ``name``.

    Examples
    --------
    >>> p = parse_attack("pgd:linf:eps=1/255,2/255:steps=7")
    >>> p.attack.name, p.eps
    ('pgd-linf', (0.00392156862745098, 0.00784313725490196))

    Returns
    -------
    AttackPreset
        ``eps`` is None when the spec gives none.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"attack spec: expected a string such as 'pgd:linf:eps=1/255,2/255:steps=7', got {spec!r}")
    parts = [p.strip() for p in spec.strip().split(":") if p.strip()]
    kind = parts[0].lower()
    if kind not in ("fgsm", "pgd", "reference", "ref"):
        raise ConfigError(f"attack spec {spec!r}: unknown attack {parts[0]!r}; expected one of "
                          "['fgsm', 'pgd', 'reference']")
    opts: dict[str, str] = {}
    for p in parts[1:]:
        if "=" not in p:
            opts["norm"] = p
            continue
        k, v = (s.strip() for s in p.split("=", 1))
        k = k.lower()
        if k not in _SPEC_KEYS:
            raise ConfigError(f"attack spec {spec!r}: unknown key {k!r}; allowed: {list(_SPEC_KEYS)}")
        opts[k] = v
    eps = tuple(parse_eps(opts.pop("eps"))) if "eps" in opts else None
    if kind in ("reference", "ref"):
        if opts:
            raise ConfigError(f"attack spec {spec!r}: 'reference' takes only eps=, got {sorted(opts)}")
        return AttackPreset("reference", REFERENCE.attacks, eps if eps is not None else REFERENCE.eps)
    norm = opts.pop("norm", "linf")
    kw: dict[str, Any] = {}
    if "loss" in opts:
        kw["loss"] = opts.pop("loss")
    if "name" in opts:
        kw["name"] = opts.pop("name")
    if kind == "fgsm":
        if opts:
            raise ConfigError(f"attack spec {spec!r}: fgsm takes norm, eps, loss, name; got {sorted(opts)}")
        return AttackPreset(spec, (FGSM(norm, **kw),), eps)
    step = opts.pop("step", None) or opts.pop("step_size", None)
    if step is not None:
        kw["step_size"] = _number(step, "step")
    for key, conv in (("steps", int), ("restarts", int), ("rel_step", float)):
        if key in opts:
            raw = opts.pop(key)
            try:
                kw[key] = conv(raw) if conv is int else _number(raw, key)
            except ValueError:
                raise ConfigError(f"attack spec {spec!r}: {key} expected an integer, got {raw!r}") from None
    if "random_start" in opts:
        raw = opts.pop("random_start").lower()
        if raw not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"attack spec {spec!r}: random_start expected true or false, got {raw!r}")
        kw["random_start"] = raw in ("true", "1", "yes")
    return AttackPreset(spec, (PGD(norm, **kw),), eps)


def as_attack(obj: Any) -> Attack:
    """Return ``obj`` as a causalgeom :class:`Attack` (wrapping torchattacks objects, parsing spec strings)."""
    if isinstance(obj, Attack):
        return obj
    if _is_torchattack(obj):
        return TorchAttack(obj)
    if isinstance(obj, str):
        preset = parse_attack(obj)
        if len(preset.attacks) != 1:
            raise ConfigError(f"attack: spec {obj!r} names {len(preset.attacks)} attacks, expected one")
        return preset.attack
    raise ConfigError(f"attack: expected a causalgeom.pipeline.attacks.Attack, a torchattacks.Attack or a spec string, "
                      f"got {type(obj).__name__}")


def resolve(attacks: Any, eps: Any = None) -> tuple[list[Attack], list[float]]:
    """Normalize the ``attacks``/``eps`` arguments of :func:`sweep` and ``cg.extract``.

    Parameters
    ----------
    attacks : None, Attack, torchattacks object, spec string, AttackPreset, or a list of these
    eps : float or list of float, optional
        The ε grid. Default: the union of the presets' grids (spec strings with ``eps=``,
        :data:`REFERENCE`), else :data:`STANDARD_EPS`. Sorted increasing, duplicates dropped.

    Returns
    -------
    (list of Attack, list of float)
        Empty lists when ``attacks`` is None/empty.
    """
    if attacks is None:
        return [], []
    items = list(attacks) if isinstance(attacks, (list, tuple)) else [attacks]
    out: list[Attack] = []
    grid: set[float] = set()
    for item in items:
        if isinstance(item, str):
            item = parse_attack(item)
        if isinstance(item, AttackPreset):
            out.extend(item.attacks)
            if item.eps:
                grid.update(item.eps)
        else:
            out.append(as_attack(item))
    if not out:
        return [], []
    names = [a.name for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"attacks: names must be unique (they label the 'attack' coordinate), got duplicates {dup}; "
                          "pass name= to tell them apart")
    if eps is None:
        grid_list = sorted(grid) if grid else list(STANDARD_EPS)
    elif isinstance(eps, (int, float, np.floating, np.integer)) and not isinstance(eps, bool):
        grid_list = [_check_eps(eps)]
    else:
        grid_list = parse_eps(eps)
    return out, grid_list


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------
def _evaluate(model: nn.Module, x: torch.Tensor, capture: _Capture | None, amp: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (fp32) and, with ``capture``, head inputs (fp32) of ``x`` (no grad).

    Under ``amp`` the model runs in bf16 and, when the head is known, the logits are recomputed
    in fp32 from the captured features with the head's weights, so ``logits = f @ W.T + b`` holds.
    """
    with torch.no_grad():
        if capture is None:
            with _autocast(x.device, amp):
                out = model(x)
            return out.float(), None
        with capture.on(), _autocast(x.device, amp):
            out = model(x)
        feats = capture.value
        if feats is None:
            from ..errors import SchemaError
            raise SchemaError("the head layer was not called in the forward pass; pass head= naming the final "
                              "linear layer")
        feats = feats.float()
        if amp:
            head = capture.head
            logits = F.linear(feats, head.weight.float(), None if head.bias is None else head.bias.float())
        else:
            logits = out.float()
        return logits, feats


def _sweep_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], eps: Sequence[float],
                 clean_logits: torch.Tensor, clean_features: torch.Tensor | None, *, capture: _Capture | None,
                 generator: torch.Generator | None, amp: bool, keep_adv: bool,
                 attack_batch: int | None = None) -> dict[str, torch.Tensor]:
    """Attack ``x`` over the ε grid with the monotone rule; tensors stay on ``x``'s device.

    The samples still unbroken at each ε are attacked in batches of ``attack_batch`` (default: all
    at once), so batches stay full while the active set shrinks.
    """
    A, E, B = len(attacks), len(eps), x.shape[0]
    dev = x.device
    clean_m = margin(clean_logits, y)
    clean_ok = clean_logits.argmax(1) == y
    out = {
        "adv_correct": torch.zeros((A, E, B), dtype=torch.bool, device=dev),
        "adv_margin": torch.empty((A, E, B), dtype=torch.float32, device=dev),
        "min_flip_eps": torch.where(clean_ok, float("inf"), 0.0).float().expand(A, B).clone(),
    }
    if keep_adv:
        out["adv_logits"] = torch.empty((A, E) + tuple(clean_logits.shape), dtype=torch.float32, device=dev)
        if clean_features is not None:
            out["adv_features"] = torch.empty((A, E) + tuple(clean_features.shape), dtype=torch.float32, device=dev)
    for a, atk in enumerate(attacks):
        active = clean_ok.nonzero().squeeze(1)
        cur_m = clean_m.clone()
        cur_z = clean_logits.float().clone() if keep_adv else None
        cur_f = clean_features.clone() if keep_adv and clean_features is not None else None
        for e, budget in enumerate(eps):
            if active.numel():
                step = attack_batch or active.numel()
                zs, fs = [], []
                for i in range(0, active.numel(), step):
                    idx = active[i:i + step]
                    with _autocast(dev, amp):
                        xa = atk.perturb(model, x[idx], y[idx], float(budget), generator)
                    zi, fi = _evaluate(model, xa, capture, amp)
                    zs.append(zi)
                    fs.append(fi)
                z = zs[0] if len(zs) == 1 else torch.cat(zs)
                f = fs[0] if len(fs) == 1 or fs[0] is None else torch.cat(fs)
                ya = y[active]
                cur_m[active] = margin(z, ya)
                if cur_z is not None:
                    cur_z[active] = z
                if cur_f is not None and f is not None:
                    cur_f[active] = f
                ok = z.argmax(1) == ya
                out["min_flip_eps"][a, active[~ok]] = float(budget)
                active = active[ok]
            out["adv_correct"][a, e, active] = True
            out["adv_margin"][a, e] = cur_m
            if cur_z is not None:
                out["adv_logits"][a, e] = cur_z
            if cur_f is not None:
                out["adv_features"][a, e] = cur_f
    return out


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Any, eps: Any = None,
          return_features: bool = False, head: str | None = None, generator: torch.Generator | None = None, *,
          batch_size: int | None = None, amp: bool = False) -> dict[str, np.ndarray]:
    """Attack ``(x, y)`` with each attack at each ε and record per-sample outcomes.

    Monotone rule (see ``docs/attacks.md``): the grid is visited in increasing ε. A sample
    misclassified clean is broken at every ε (``min_flip_eps = 0``) and never attacked. A sample
    broken at ε_i is not attacked again at ε_j > ε_i: its adversarial example lies inside the
    larger ball, so it counts as broken there, and its ``adv_margin`` (and ``adv_logits`` /
    ``adv_features``) at ε_j are those of the example found at ε_i.

    Parameters
    ----------
    model : nn.Module
        Pixel-space model returning logits; put in eval mode for the call (restored after).
    x : torch.Tensor, shape (N, ...)
        Clean inputs in [0, 1], on the model's device.
    y : torch.Tensor of int, shape (N,)
    attacks : Attack, torchattacks object, spec string, AttackPreset, or a list of these
    eps : float or list of float, optional
        ε grid (default: the presets' grids, else :data:`STANDARD_EPS`); sorted increasing.
    return_features : bool
        Also return ``adv_features`` (head inputs) and ``adv_logits``.
    head : str, optional
        Qualified name of the final linear layer (default: found by ``cg.models.find_head``).
    generator : torch.Generator, optional
        Source of all randomness (default: a fresh generator seeded with 0).
    batch_size : int, optional
        Largest batch given to the model (default: all of ``x`` at once). The monotone rule is
        applied over all of ``x``: at each ε the still-unbroken samples are regrouped into full
        batches.
    amp : bool
        Run attack and evaluation passes under bf16 autocast (default False: fp32 gradients).

    Returns
    -------
    dict of numpy arrays
        ``adv_correct`` (A, E, N) bool; ``adv_margin`` (A, E, N) float32 (true logit minus best
        other); ``min_flip_eps`` (A, N) float32 (0: misclassified clean, inf: never flipped within
        the sweep, else the smallest swept ε at which the sample is broken); with
        ``return_features``: ``adv_features`` (A, E, N, F) and ``adv_logits`` (A, E, N, K)
        float32. Also ``attack`` (names) and ``eps`` (grid) for the coordinates.
    """
    atks, grid = resolve(attacks, eps)
    if not atks:
        raise ConfigError("attacks: expected at least one attack, got none")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError(f"x, y: expected torch tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"y: expected {x.shape[0]} labels (one per row of x), got {y.shape[0]}")
    if x.shape[0] == 0:
        raise ConfigError("x: expected at least one sample, got an empty batch")
    if x.numel() and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
        raise ConfigError(f"x: expected pixel-space inputs in [0, 1] (normalization belongs inside the model), "
                          f"got range [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    y = y.long()
    for atk in atks:
        atk.to(x.device)
    capture = None
    if return_features:
        _, head_mod = find_head(model, head)
        capture = _Capture(head_mod)
    if generator is None:
        generator = _default_generator(x.device)
    n = x.shape[0]
    bs = int(batch_size) if batch_size else n
    if bs < 1:
        raise ConfigError(f"batch_size: expected a positive integer or None, got {batch_size!r}")
    x = x.float()
    try:
        with _eval_mode(model):
            clean = [_evaluate(model, x[i:i + bs], capture, amp) for i in range(0, n, bs)]
            z = torch.cat([c[0] for c in clean])
            f = torch.cat([c[1] for c in clean]) if capture is not None else None
            res = _sweep_batch(model, x, y, atks, grid, z, f, capture=capture, generator=generator, amp=amp,
                               keep_adv=return_features, attack_batch=bs)
    finally:
        if capture is not None:
            capture.remove()
    result: dict[str, np.ndarray] = {k: v.cpu().numpy() for k, v in res.items()}
    result["attack"] = np.asarray([a.name for a in atks], dtype=object)
    result["eps"] = np.asarray(grid, dtype=np.float64)
    return result
