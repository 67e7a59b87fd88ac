"""Interventions inside the model (torch): `InterventionModel` = ``head o T o backbone`` with ``T`` a `Rescale` or
`Rotate`, so attacks run through the intervention, and `robust_dose_response` (robust accuracy against ``s`` or
``alpha``). The only module of `causalgeom.interventions` that imports torch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..causal import percentile_ci
from ..errors import ConfigError
from ..metrics.geometry import class_centers
from .._util.checks import check_choice
from .._util.rng import RngLike, check_random_state
from .posthoc import (TOWARD, _ORTHO_EPS, _check_centers, _check_options, _grid, _orthonormal_fallback,
                      _poisson_weights, _seed)

__all__ = ["FeatureTransform", "Rescale", "Rotate", "InterventionModel", "robust_dose_response"]


# ---------------------------------------------------------------------------------------------
# inside the model
# ---------------------------------------------------------------------------------------------
class FeatureTransform(nn.Module):
    """An intervention ``T`` on the head's input: ``forward(h, *, head, labels) -> h'`` (differentiable in ``h``).

    ``head`` is the final :class:`torch.nn.Linear` (for transforms that need the prediction) and
    ``labels`` the true classes of the batch (a 0-d tensor: one class for every row), or ``None``
    if none were set (:meth:`InterventionModel.set_labels`).
    """

    #: Name of the grid dimension this transform's parameter spans (``"scale"``, ``"alpha"``).
    grid_dim = "transform"

    @property
    def needs_labels(self) -> bool:
        """True if the transform uses the true labels."""
        return False

    @property
    def grid_value(self) -> float:
        """The transform's parameter (its coordinate on the grid dimension)."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, *, head: nn.Linear, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class Rescale(FeatureTransform):
    """``h -> s h`` (see :func:`rescale_features`); ``s = 1`` returns ``h`` itself.

    Parameters
    ----------
    scale : float >= 0
    """

    grid_dim = "scale"

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(_grid(scale, "scale", minimum=0.0)[0])

    @property
    def grid_value(self) -> float:
        return self.scale

    def forward(self, h: torch.Tensor, *, head: nn.Linear, labels: torch.Tensor | None = None) -> torch.Tensor:
        return h if self.scale == 1.0 else h * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Row norms with a finite (zero) gradient at 0."""
    sq = (x * x).sum(dim=1)
    return torch.sqrt(torch.clamp(sq, min=torch.finfo(x.dtype).tiny)) * (sq > 0)


class Rotate(FeatureTransform):
    """Move ``h`` toward its class center by a fraction ``alpha`` of the angle, keeping ``||h||``.

    The map of :func:`rotate_features`, in torch and differentiable in ``h``: the center is chosen
    per sample (a piecewise-constant choice) and the rotation is smooth, so gradient attacks run
    through it. ``alpha = 0`` returns ``h`` itself.

    Parameters
    ----------
    alpha : float <= 1
    centers : tensor, array or DataArray, shape (K, F)
        Class centers, e.g. ``cg.geometry.class_centers(ds)`` (kept as a float32 buffer, so it moves
        with ``.to(device)``).
    toward : {"predicted", "true"}
        ``"predicted"``: the class the head predicts from the unmodified ``h`` (no labels needed).
        ``"true"``: the true class, set through :meth:`InterventionModel.set_labels` (an oracle).
    """

    grid_dim = "alpha"

    def __init__(self, alpha: float, centers: Any, toward: str = "predicted"):
        super().__init__()
        self.alpha = float(_grid(alpha, "alpha", maximum=1.0)[0])
        self.toward = check_choice(toward, "toward", TOWARD)
        shape = tuple(np.shape(centers))
        if len(shape) != 2:
            raise ConfigError(f"centers: expected shape (n_classes, n_features), got {shape}")
        c = _check_centers(centers, *shape)
        self.register_buffer("centers", torch.as_tensor(c, dtype=torch.float32))

    @property
    def needs_labels(self) -> bool:
        return self.toward == "true"

    @property
    def grid_value(self) -> float:
        return self.alpha

    def _classes(self, h: torch.Tensor, head: nn.Linear, labels: torch.Tensor | None) -> torch.Tensor:
        if self.toward == "predicted":
            with torch.no_grad():  # not through `head(...)`: that would re-enter the hook
                return nn.functional.linear(h, head.weight, head.bias).argmax(dim=1)
        if labels is None:
            raise ConfigError("Rotate(toward='true') needs the true labels: call InterventionModel.set_labels(y) "
                              "(a tensor of the batch's labels, or one class for all rows) before the forward")
        labels = labels.to(h.device)
        if labels.ndim == 0:
            return labels.expand(h.shape[0])
        if labels.shape[0] != h.shape[0]:
            raise ConfigError(f"Rotate(toward='true'): labels were set for {labels.shape[0]} samples but the "
                              f"batch has {h.shape[0]}; set each batch's labels (or one class for all rows)")
        return labels

    def forward(self, h: torch.Tensor, *, head: nn.Linear, labels: torch.Tensor | None = None) -> torch.Tensor:
        if h.ndim != 2 or h.shape[1] != self.centers.shape[1]:
            raise ConfigError(f"Rotate: expected head input of shape (n, {self.centers.shape[1]}), "
                              f"got {tuple(h.shape)}")
        if self.alpha == 0.0:
            return h
        c = self.centers.to(h.dtype)[self._classes(h, head, labels)]
        norm = _safe_norm(h)
        u = h / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]
        v = c / c.norm(dim=1, keepdim=True)
        cos = (u * v).sum(dim=1)
        w = u - cos[:, None] * v
        sin = _safe_norm(w)
        bad = sin < _ORTHO_EPS
        w = w / torch.where(bad, torch.ones_like(sin), sin)[:, None]
        if bool(bad.any()):
            fallback = torch.as_tensor(_orthonormal_fallback(v[bad].detach().cpu().double().numpy()),
                                       dtype=h.dtype, device=h.device)
            w = torch.where(bad[:, None], torch.zeros_like(w), w).index_put((bad.nonzero()[:, 0],), fallback)
        phi = torch.clamp((1.0 - self.alpha) * torch.atan2(sin, cos), 0.0, math.pi)
        return norm[:, None] * (torch.cos(phi)[:, None] * v + torch.sin(phi)[:, None] * w)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, toward={self.toward!r}, centers={tuple(self.centers.shape)}"


class InterventionModel(nn.Module):
    """``head o T o backbone``: the model with the intervention ``T`` applied to the head's input.

    A forward pre-hook on the head is registered for the duration of each forward call only, so
    the wrapped model is untouched outside it and any architecture whose head is an ``nn.Linear``
    works. Differentiable end to end: attacks run through ``T``.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier ending in a linear head (pixel-space input).
    transform : FeatureTransform
        :class:`Rescale` or :class:`Rotate`.
    head_name : str, optional
        Qualified name of the head (default: found by :func:`causalgeom.pipeline.extract.find_head`).

    Notes
    -----
    True-class rotation needs the labels of the rows it sees. Attacks call the model on
    sub-batches (restarts, samples already broken, samples misclassified clean are skipped), so a
    per-row label tensor cannot follow them. :meth:`set_labels` therefore also takes a single class,
    used for every row: attack the samples of one class at a time (what
    :func:`robust_dose_response` does). A per-row tensor works for plain forwards.
    """

    def __init__(self, model: nn.Module, transform: FeatureTransform, head_name: str | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(transform, FeatureTransform):
            raise ConfigError("transform: expected a causalgeom.interventions.FeatureTransform (Rescale, Rotate), "
                              f"got {type(transform).__name__}")
        from ..pipeline.models import find_head

        name, _ = find_head(model, head_name)
        self.model = model
        self.transform = transform
        self.head_name = name
        self._labels: torch.Tensor | None = None

    @property
    def head(self) -> nn.Linear:
        """The wrapped model's final linear layer."""
        return self.model.get_submodule(self.head_name)

    def set_labels(self, labels: int | torch.Tensor | None) -> None:
        """True labels for ``Rotate(toward="true")``: a tensor ``(n,)`` matching the next batches, one class
        (int or 0-d tensor) for every row, or ``None`` to clear them."""
        if labels is None:
            self._labels = None
            return
        t = torch.as_tensor(labels)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim > 1:
            raise ConfigError(f"labels: expected an int class or a 1-d integer tensor, got dtype {t.dtype} "
                              f"shape {tuple(t.shape)}")
        self._labels = t.long()

    @contextlib.contextmanager
    def labels(self, labels: int | torch.Tensor) -> Iterator["InterventionModel"]:
        """Context manager: :meth:`set_labels` inside, cleared on exit."""
        self.set_labels(labels)
        try:
            yield self
        finally:
            self._labels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (self.transform(args[0], head=module, labels=self._labels), *args[1:])

        handle = self.head.register_forward_pre_hook(pre_hook)
        try:
            return self.model(x)
        finally:
            handle.remove()


def _grid_of(transforms: Sequence[FeatureTransform]) -> tuple[str, np.ndarray]:
    if isinstance(transforms, FeatureTransform) or not transforms:
        raise ConfigError("transforms: expected a non-empty sequence of FeatureTransform objects "
                          f"(e.g. [Rescale(s) for s in scales]), got {transforms!r}")
    for t in transforms:
        if not isinstance(t, FeatureTransform):
            raise ConfigError(f"transforms: expected FeatureTransform objects (Rescale, Rotate), got {type(t).__name__}")
    dims = {t.grid_dim for t in transforms}
    if len(dims) == 1 and "transform" not in dims:
        values = np.asarray([t.grid_value for t in transforms], dtype=np.float64)
        if np.unique(values).size == values.size:
            return dims.pop(), values
    return "transform", np.asarray([repr(t) for t in transforms], dtype=object)


def robust_dose_response(model: nn.Module, x: torch.Tensor, y: torch.Tensor, transforms: Sequence[FeatureTransform],
                         attacks: Any, eps: Sequence[float], *, head_name: str | None = None,
                         batch_size: int | None = 256, n_boot: int = 1000, ci: float = 0.95, rng: RngLike = None,
                         generator: torch.Generator | None = None) -> xr.Dataset:
    """Robust accuracy of ``head o T o backbone`` for each transform ``T``, attack and ``eps``.

    Runs :func:`causalgeom.pipeline.attacks.sweep` on :class:`InterventionModel` ``(model, T)``. For a
    transform that needs labels (``Rotate(toward="true")``) the samples are attacked one class at a
    time with that class set as the label of every row (see :class:`InterventionModel`).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier, pixel-space input; evaluated in eval mode.
    x : tensor, shape (N, C, H, W)
        Inputs in [0, 1], on the model's device.
    y : tensor of int, shape (N,)
    transforms : sequence of FeatureTransform
        The grid, e.g. ``[Rescale(s) for s in scales]`` or ``[Rotate(a, C) for a in alphas]``.
    attacks : attack or sequence of attacks
        ``cg.attacks.PGD(...)`` etc. (anything :func:`causalgeom.pipeline.attacks.sweep` accepts).
    eps : sequence of float
        Attack budgets.
    head_name : str, optional
        The head (default: :func:`causalgeom.pipeline.extract.find_head`).
    batch_size : int, optional
        Passed to ``sweep``.
    n_boot, ci, rng
        Percentile bootstrap over samples (Poisson(1) weights, the same for every grid point).
    generator : torch.Generator, optional
        Source of the attacks' randomness (default: ``sweep``'s, a generator seeded with 0).

    Returns
    -------
    xarray.Dataset
        ``robust_accuracy`` (grid, attack, eps) with ``_ci_low`` / ``_ci_high``; ``clean_accuracy``
        (grid) with intervals; ``adv_correct`` (grid, attack, eps, sample). The grid dim is
        ``scale`` (all :class:`Rescale`), ``alpha`` (all :class:`Rotate`) or ``transform``.
    """
    from ..pipeline import attacks as cg_attacks

    dim, coord = _grid_of(transforms)
    _check_options(1, n_boot, ci)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError(f"x, y: expected torch tensors, got {type(x).__name__}, {type(y).__name__}")
    y = y.long()
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(f"x, y: expected the same non-zero number of samples, got {x.shape[0]} and {y.shape[0]}")
    n = x.shape[0]
    adv, clean = [], []
    names: list[str] = []
    eps_grid: np.ndarray | None = None
    for t in transforms:
        wrapped = InterventionModel(model, t, head_name)
        groups = ([(None, torch.arange(n, device=y.device))] if not t.needs_labels else
                  [(int(k), (y == k).nonzero()[:, 0]) for k in torch.unique(y).tolist()])
        a_t = None
        c_t = np.zeros(n, dtype=bool)
        for k, rows in groups:
            xb, yb = x[rows], y[rows]
            with wrapped.labels(k) if k is not None else contextlib.nullcontext():
                out = cg_attacks.sweep(wrapped, xb, yb, attacks, eps, generator=generator, batch_size=batch_size)
                with torch.no_grad():
                    pred = torch.cat([wrapped(xb[i:i + (batch_size or n)]).argmax(dim=1)
                                      for i in range(0, xb.shape[0], batch_size or n)])
            if a_t is None:
                a_t = np.zeros(out["adv_correct"].shape[:2] + (n,), dtype=bool)
                names, eps_grid = [str(s) for s in out["attack"]], np.asarray(out["eps"], dtype=np.float64)
            rows_np = rows.cpu().numpy()
            a_t[..., rows_np] = out["adv_correct"]
            c_t[rows_np] = (pred == yb.to(pred.device)).cpu().numpy()
        adv.append(a_t)
        clean.append(c_t)
    adv_arr = np.stack(adv)  # (G, A, E, N)
    clean_arr = np.stack(clean).astype(np.float64)  # (G, N)
    seed = _seed(check_random_state(rng))
    w = _poisson_weights(seed, n_boot, 0, n)  # (R, N)
    wsum = w.sum(axis=1)
    rob = np.einsum("rn,gaen->rgae", w, adv_arr.astype(np.float64)) / wsum[:, None, None, None]
    cl = (w @ clean_arr.T) / wsum[:, None]
    rlo, rhi = percentile_ci(rob[1:], ci)
    clo, chi = percentile_ci(cl[1:], ci)
    grid_dims = (dim, "attack", "eps")
    return xr.Dataset(
        {"robust_accuracy": (grid_dims, rob[0]), "robust_accuracy_ci_low": (grid_dims, rlo),
         "robust_accuracy_ci_high": (grid_dims, rhi),
         "clean_accuracy": ((dim,), cl[0]), "clean_accuracy_ci_low": ((dim,), clo),
         "clean_accuracy_ci_high": ((dim,), chi),
         "adv_correct": ((dim, "attack", "eps", "sample"), adv_arr)},
        coords={dim: coord, "attack": np.asarray(names, dtype=object), "eps": eps_grid},
        attrs={"intervention": "robust_dose_response", "n_samples": int(n), "n_boot": int(n_boot), "ci": float(ci),
               "bootstrap": "percentile, Poisson(1) resampling weights over samples", "bootstrap_seed": seed,
               "transforms": [repr(t) for t in transforms]})
