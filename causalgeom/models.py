"""Classifiers that take pixel-space input in [0, 1] and end in an ``nn.Linear`` head.

Every model returned by :func:`build_model` is a :class:`NormalizedClassifier`: its first module
``normalize`` maps pixels to ``(x - mean) / std`` and ``net`` is the classifier proper, whose final
``nn.Linear`` (the *head*, named by :attr:`NormalizedClassifier.head_name`) receives the penultimate
features. Attacks therefore work in pixel space and feature extraction hooks the head's input.
"""

from __future__ import annotations

import contextlib
import difflib
from collections import OrderedDict
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .errors import ConfigError, SchemaError

__all__ = ["NAMED_MODELS", "Normalize", "NormalizedClassifier", "SmallCNN", "build_model", "available_models",
           "head_of", "find_head", "eval_mode"]

#: Names with a dedicated builder; any other torchvision classification model is built by name.
NAMED_MODELS = ("small_cnn", "resnet18", "resnet50", "mobilenet_v2")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; ``x`` (B, C, H, W) in pixel space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # checked on the Python values (not the tensors), so a model can be built on the meta device
        try:
            mean_v, std_v = [float(v) for v in mean], [float(v) for v in std]
        except (TypeError, ValueError):
            mean_v, std_v = [], [0.0]
        if len(mean_v) != len(std_v) or not all(s > 0 for s in std_v):
            raise ConfigError(f"normalization: expected mean and std of the same length with std > 0, got "
                              f"mean={list(mean)}, std={list(std)}")
        mean_t = torch.as_tensor(mean_v, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std_v, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:  # noqa: D102
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedClassifier(nn.Module):
    """``net(normalize(x))``: pixel input (B, C, H, W) in [0, 1] -> logits (B, K).

    Attributes
    ----------
    normalize : Normalize
        First module.
    net : nn.Module
        The classifier; its last ``nn.Linear`` is the head.
    head_name : str
        Qualified name of the head inside this module (e.g. ``"net.fc"``); its input are the features.
    """

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.head_name = "net." + head_of(net)[0]

    @property
    def head(self) -> nn.Linear:
        """The final linear layer (input: penultimate features (B, D); output: logits (B, K))."""
        return self.get_submodule(self.head_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(self.normalize(x))


class SmallCNN(nn.Sequential):
    """A small CNN for 8x8 (digits) and other small images.

    conv3x3(C->32) ReLU, conv3x3(32->64) ReLU, maxpool 2, adaptive avg-pool to 4x4, flatten (1024),
    linear(1024->width) ReLU [dropout], head linear(width->K). Features: the ReLU output (B, width).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 128, dropout: float = 0.0) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(in_channels, 32, 3, padding=1)), ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(32, 64, 3, padding=1)), ("relu2", nn.ReLU(inplace=True)),
            ("pool", nn.MaxPool2d(2)), ("avgpool", nn.AdaptiveAvgPool2d(4)), ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(64 * 16, width)), ("relu3", nn.ReLU(inplace=True)),
        ]
        if dropout > 0:
            layers.append(("dropout", nn.Dropout(dropout)))
        layers.append(("head", nn.Linear(width, num_classes)))
        super().__init__(OrderedDict(layers))


def head_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(qualified name, module)`` of the last ``nn.Linear`` registered in ``model``.

    Raises
    ------
    ConfigError
        If ``model`` has no ``nn.Linear``.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"model {type(model).__name__}: expected a final nn.Linear head (its input are the "
                          "features), found no nn.Linear")
    return found[-1]


def available_models() -> list[str]:
    """:data:`NAMED_MODELS` followed by every torchvision classification model name."""
    import torchvision

    tv = [m for m in torchvision.models.list_models(module=torchvision.models) if m not in NAMED_MODELS]
    return [*NAMED_MODELS, *sorted(tv)]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _conv_like(conv: nn.Conv2d, *, in_channels: int | None = None, kernel_size: int | None = None,
               stride: int | None = None, padding: int | None = None) -> nn.Conv2d:
    return nn.Conv2d(in_channels if in_channels is not None else conv.in_channels, conv.out_channels,
                     kernel_size if kernel_size is not None else conv.kernel_size,
                     stride if stride is not None else conv.stride,
                     padding if padding is not None else conv.padding,
                     dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)


def _torchvision(name: str, num_classes: int, in_channels: int, cifar_stem: bool, dropout: float) -> nn.Module:
    import torchvision

    if name == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, dropout=dropout)
        dropout = 0.0  # already inside the classifier
    else:
        try:
            net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except TypeError as exc:
            raise ConfigError(f"model {name!r}: torchvision cannot build it with num_classes={num_classes}: "
                              f"{exc}") from None
    first = _first_conv(net)
    if cifar_stem:
        if first is None:
            raise ConfigError(f"cifar_stem=True: model {name!r} has no Conv2d stem to replace")
        conv_name, conv = first
        _set_submodule(net, conv_name, _conv_like(conv, in_channels=in_channels, kernel_size=3, stride=1, padding=1))
        if isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):  # ResNets
            net.maxpool = nn.Identity()
    elif in_channels != 3:
        if first is None:
            raise ConfigError(f"in_channels={in_channels}: model {name!r} has no Conv2d stem to adapt")
        conv_name, conv = first
        _set_submodule(net, conv_name, _conv_like(conv, in_channels=in_channels))
    head_name, head = head_of(net)
    if head.out_features != num_classes:
        raise ConfigError(f"model {name!r}: its last nn.Linear has {head.out_features} outputs, expected "
                          f"num_classes={num_classes}; it does not end in a linear classification head")
    if dropout > 0:
        _set_submodule(net, head_name, nn.Sequential(OrderedDict([("dropout", nn.Dropout(dropout)),
                                                                  ("linear", head)])))
    return net


def build_model(name: str, num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, cifar_stem: bool = False, dropout: float = 0.0
                ) -> NormalizedClassifier:
    """Build an untrained classifier taking pixel-space input.

    Parameters
    ----------
    name : str
        ``"small_cnn"`` (:class:`SmallCNN`, for digits), ``"resnet18"``, ``"resnet50"``, ``"mobilenet_v2"``,
        or any name of ``torchvision.models.list_models(module=torchvision.models)`` (``weights=None``).
    num_classes : int
        K, the number of logits.
    in_channels : int
        C of the input (B, C, H, W); torchvision stems are rebuilt for C != 3.
    mean, std : sequence of float, optional
        Per-channel normalization applied by the first module (default 0 and 1: identity).
    cifar_stem : bool
        torchvision models: replace the stem by a 3x3 stride-1 convolution and drop the ResNet max-pool
        (the usual adaptation to 32x32 images).
    dropout : float
        Dropout probability before the head (in [0, 1)).

    Returns
    -------
    NormalizedClassifier
        Input (B, C, H, W) float in [0, 1] -> logits (B, K); ``model.head`` is the final ``nn.Linear``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the options) or invalid argument.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"num_classes: expected an int >= 2, got {num_classes!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ConfigError(f"in_channels: expected an int >= 1, got {in_channels!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout: expected a number in [0, 1), got {dropout!r}")
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"mean/std: expected {in_channels} values each (in_channels), got mean={list(mean)}, "
                          f"std={list(std)}")
    options = available_models()
    if name not in options:
        close = difflib.get_close_matches(str(name), options, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"model: unknown name {name!r}{hint}; expected one of {', '.join(options)}")
    if name == "small_cnn":
        net: nn.Module = SmallCNN(num_classes, in_channels, dropout=float(dropout))
    else:
        net = _torchvision(name, num_classes, in_channels, bool(cifar_stem), float(dropout))
    return NormalizedClassifier(Normalize(mean, std), net)


# --------------------------------------------------------------------------------------------
# the head of any model: find it, check it, capture its input
# (here, below both `attacks` and `extract`, which use them; re-exported as ``cg.extract.find_head``)
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` (and every submodule) in eval mode, restoring each module's flag afterwards."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def find_head(model: nn.Module, name: str | None = None, *, example: torch.Tensor | None = None
              ) -> tuple[str, nn.Linear]:
    """Find the final linear layer ("head") whose output is the model's output.

    Rules: ``name`` given → that submodule (must be an ``nn.Linear``); else a model with
    ``get_classifier()`` (timm) → the module it returns (must be an ``nn.Linear``); else the last
    ``nn.Linear`` in module registration order (torchvision classifiers, the training pipeline's
    models, most user models).

    Parameters
    ----------
    model : nn.Module
    name : str, optional
        Qualified module name, e.g. ``"fc"`` or ``"classifier.6"``.
    example : torch.Tensor, shape (n, ...), optional
        A batch on the model's device: also check (eval mode, one forward pass) that the head is
        called once, takes (n, F) input, and that its output equals the model's output.

    Returns
    -------
    (str, nn.Linear)
        Qualified name and module.

    Raises
    ------
    ConfigError
        No ``nn.Linear``, unknown ``name``, or a classifier that is not an ``nn.Linear``.
    SchemaError
        With ``example``: the model's output is not the head's output (e.g. softmax or a
        temperature applied after the head), or not a (n, K) tensor.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    cls = type(model).__name__
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if name is not None:
        modules = dict(model.named_modules())
        if name not in modules:
            raise ConfigError(f"head: {cls} has no submodule named {name!r}; its linear layers are "
                              f"{[n for n, _ in linears][-10:]}")
        mod = modules[name]
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"head: submodule {name!r} of {cls} is a {type(mod).__name__}, expected nn.Linear")
        found = (name, mod)
    elif callable(getattr(model, "get_classifier", None)):
        clf = model.get_classifier()
        if not isinstance(clf, nn.Linear):
            raise ConfigError(f"head: {cls}.get_classifier() returned {type(clf).__name__}, expected nn.Linear "
                              "(a timm model built with num_classes=0, or a convolutional classifier); pass head= "
                              "naming an nn.Linear whose output is the model output")
        qual = next((n for n, m in model.named_modules() if m is clf), None)
        if qual is None:
            raise ConfigError(f"head: the classifier returned by {cls}.get_classifier() is not a submodule of the "
                              "model")
        found = (qual, clf)
    else:
        if not linears:
            raise ConfigError(f"model: {cls} has no nn.Linear layer; causalgeom records the input of the final linear "
                              "layer (features) and its weights. Make the model end in an nn.Linear whose output is "
                              "the logits (e.g. replace a 1x1-conv classifier), or import a dump instead")
        found = linears[-1]
    if example is not None:
        _verify_head(model, found[0], found[1], example)
    return found


class _OutputCheck:
    """Forward hook counting the head's calls and keeping its last (input, output)."""

    def __init__(self, head: nn.Module):
        self.calls = 0
        self.inp: Any = None
        self.out: Any = None
        self._h = head.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.calls += 1
        self.inp, self.out = args[0] if args else None, output

    def remove(self) -> None:
        self._h.remove()

    def check(self, model_out: Any, head_name: str, model_name: str) -> None:
        where = f"{model_name} (head {head_name!r})"
        if not isinstance(model_out, torch.Tensor):
            raise SchemaError(f"model output: expected a tensor of logits (n, K), got {type(model_out).__name__} from "
                              f"{where}; wrap the model so that forward returns the logits")
        if model_out.dim() != 2:
            raise SchemaError(f"model output: expected logits of shape (n, K), got shape {tuple(model_out.shape)} "
                              f"from {where}")
        if self.calls != 1:
            raise SchemaError(f"head {head_name!r} of {model_name} was called {self.calls} times in one forward pass, "
                              "expected exactly once; pass head= naming the final linear layer")
        if not isinstance(self.inp, torch.Tensor) or self.inp.dim() != 2:
            shape = tuple(self.inp.shape) if isinstance(self.inp, torch.Tensor) else type(self.inp).__name__
            raise SchemaError(f"head {head_name!r} of {model_name}: expected input features of shape (n, F), got "
                              f"{shape}")
        if self.out is not model_out and (self.out.shape != model_out.shape or not torch.equal(self.out, model_out)):
            if self.out.shape != model_out.shape:
                detail = f"head output shape {tuple(self.out.shape)} vs model output shape {tuple(model_out.shape)}"
            else:
                detail = f"max |difference| {float((self.out.float() - model_out.float()).abs().max()):.4g}"
            raise SchemaError(
                f"model output: {model_name}'s output is not the output of its final linear layer {head_name!r} "
                f"({detail}); the model changes the logits after the head (softmax, temperature, ...) or the head "
                "is not the last layer. causalgeom needs logits = head(features): return the head's output, or "
                "pass head= naming the right nn.Linear")


def _verify_head(model: nn.Module, name: str, head: nn.Linear, x: torch.Tensor) -> None:
    check = _OutputCheck(head)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    finally:
        check.remove()
    check.check(out, name, type(model).__name__)


class _Capture:
    """Forward pre-hook on the head storing its exact input while ``active``."""

    def __init__(self, head: nn.Module):
        self.head = head
        self.active = False
        self.value: torch.Tensor | None = None
        self.calls = 0
        self._handle = head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if self.active:
            self.calls += 1
            self.value = args[0]

    @contextlib.contextmanager
    def on(self) -> Iterator["_Capture"]:
        self.active, self.value, self.calls = True, None, 0
        try:
            yield self
        finally:
            self.active = False

    def remove(self) -> None:
        self._handle.remove()
