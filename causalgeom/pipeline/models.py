# Over 600 lines on purpose: one concern (build, wrap, load classifiers) with the head hooks the loaders check.
"""Classifiers that take pixel-space input in [0, 1] and end in an ``nn.Linear`` head.

Every model returned by :func:`build_model` is a :class:`NormalizedClassifier`: its first module
``normalize`` maps pixels to ``(x - mean) / std`` and ``net`` is the classifier proper, whose final
``nn.Linear`` (the *head*, named by :attr:`NormalizedClassifier.head_name`) receives the penultimate
features. Attacks therefore work in pixel space and feature extraction hooks the head's input.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import urllib.error
import urllib.parse
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .._util.io import load_weights_file
from ..dump.adapters import default_max_bytes
from ..errors import ConfigError, SchemaError, WeightsNotFoundError

__all__ = ["NAMED_MODELS", "Normalize", "NormalizedClassifier", "SmallCNN", "build_model", "available_models",
           "head_of", "find_head", "eval_mode", "load", "wrap", "torch_hub_file", "LOAD_ATTRS"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

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

    def __init__(self, normalize: Normalize, net: nn.Module, head_name: str | None = None) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.head_name = "net." + (head_name if head_name is not None else head_of(net)[0])

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
# (here, below both `attacks` and `extract`, which use them; also ``cg.models.find_head``)
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
            inner = [f"{name}.{n}" for n, m in mod.named_modules() if isinstance(m, nn.Linear)]
            hint = f"; pass head={inner[-1]!r}, its final nn.Linear" if inner else ""
            raise ConfigError(f"head: submodule {name!r} of {cls} is a {type(mod).__name__}, not a single linear "
                              f"layer (expected nn.Linear){hint}")
        found = (name, mod)
    elif callable(getattr(model, "get_classifier", None)):
        clf = model.get_classifier()
        if not isinstance(clf, nn.Linear):
            qual = next((n for n, m in model.named_modules() if m is clf), "")
            inner = [f"{qual}.{n}".strip(".") for n, m in clf.named_modules() if isinstance(m, nn.Linear)]
            raise ConfigError(f"head: {cls}.get_classifier() returned {type(clf).__name__}, not a single linear layer "
                              "(a timm model built with num_classes=0, an nn.Sequential or a convolutional "
                              "classifier); pass head= naming an nn.Linear whose output is the model output"
                              + (f" (here {inner[-1]!r})" if inner else ""))
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


def pool_features(out: Any, name: str) -> torch.Tensor:
    """A module's output as (n, F) features: kept as is when 2-D, averaged over the trailing (spatial) dims when
    it has more (``(n, C, H, W)`` -> ``(n, C)``, the mean over H·W positions; ``(n, T, C)`` token outputs are
    averaged over their last dim, so give the layer whose output is channels-first). Taken when the module
    returns, before any later in-place operation."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"feature_layer={name!r}: the module's output is {shape}; expected a tensor (n, F) or "
                          "(n, C, spatial...)")
    # a copy either way: a later in-place op (ReLU(inplace=True)) must not change the captured values
    return out.clone() if out.dim() == 2 else out.flatten(2).mean(dim=2)


class _LayerCapture(_Capture):
    """Forward hook on any module storing its output as (n, F) features (`pool_features`) while ``active``;
    ``head`` is the model's final linear layer (used only when the layer feeds it directly)."""

    def __init__(self, layer: nn.Module, name: str, head: nn.Module):
        self.head, self.name = head, name
        self.active = False
        self.value: torch.Tensor | None = None
        self.calls = 0
        self._handle = layer.register_forward_hook(self._out_hook)

    def _out_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.active:
            self.calls += 1
            self.value = pool_features(output, self.name)


# --------------------------------------------------------------------------------------------
# public checkpoints: torchvision weight enums, timm pretrained configs, local state dicts
# --------------------------------------------------------------------------------------------
#: timm tags of the "ResNet strikes back" recipes A1/A2/A3, trained with binary cross-entropy (sigmoid outputs):
#: Wightman, Touvron & Jégou (2021), "ResNet strikes back: An improved training procedure in timm", Table 1.
_BCE_TAG = re.compile(r"^a[123]h?_in1k$")
#: Attribute of a model returned by :func:`load` holding its provenance (recorded in the dump's attrs).
LOAD_ATTRS = "causalgeom_attrs"


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def torch_hub_file(url: str) -> Path:
    """Where torch.hub caches the download of ``url``: ``torch.hub.get_dir()/checkpoints/<file name of url>``
    (``torch.hub.get_dir()`` is ``$TORCH_HOME/hub``, ``TORCH_HOME`` defaulting to ``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def _classifier_container(net: nn.Module) -> tuple[str, nn.Module] | None:
    for attr in ("fc", "classifier", "heads", "head"):
        mod = getattr(net, attr, None)
        if isinstance(mod, nn.Module):
            return attr, mod
    return None


def _check_head(net: nn.Module, head: str | None, what: str) -> str:
    """The qualified name (inside ``net``) of the linear layer whose input are the features.

    timm models: ``get_classifier()`` must be an ``nn.Linear``; torchvision models: the classifier block
    (``fc``, ``classifier``, ``heads``) must contain exactly one ``nn.Linear`` (the last layer). An MLP head is
    refused unless ``head`` names the linear layer to use.
    """
    if head is not None:
        return find_head(net, head)[0]
    hint = ("pass head='NAME' (CLI: --head NAME) naming the final nn.Linear to use its input (the MLP's hidden "
            "layer) as the features")
    if callable(getattr(net, "get_classifier", None)):
        clf = net.get_classifier()
        if not isinstance(clf, nn.Linear):
            raise ConfigError(f"model {what}: its classifier is a {type(clf).__name__}, not one nn.Linear; "
                              f"causalgeom records the input of a final linear layer: {hint}")
        return find_head(net)[0]
    block = _classifier_container(net)
    if block is not None and not isinstance(block[1], nn.Linear):
        linears = [f"{block[0]}.{n}" for n, m in block[1].named_modules() if isinstance(m, nn.Linear)]
        if len(linears) > 1:
            raise ConfigError(f"model {what}: its classifier {block[0]!r} is an MLP head with linear layers "
                              f"{linears}, not one nn.Linear; {hint} (e.g. head={linears[-1]!r})")
    return find_head(net)[0]


def wrap(net: nn.Module, *, mean: Sequence[float], std: Sequence[float], head: str | None = None,
         what: str | None = None) -> NormalizedClassifier:
    """``net`` (taking normalized input) as a :class:`NormalizedClassifier` taking pixels in [0, 1].

    Parameters
    ----------
    net : nn.Module
        A torchvision or timm classifier, input (B, 3, H, W) normalized with ``mean``/``std``.
    mean, std : sequence of float
        Per-channel normalization of ``net``'s training data (moved into the model, so attacks act on pixels).
    head : str, optional
        Qualified name (inside ``net``) of the final linear layer; default: ``get_classifier()`` (timm) or
        the single linear layer of the classifier block (an MLP head is refused, see :func:`load`).
    what : str, optional
        Name used in error messages.

    Returns
    -------
    NormalizedClassifier
        Its ``head`` input is the classifier's input (the pre-logits features).
    """
    name = _check_head(net, head, what or type(net).__name__)
    return NormalizedClassifier(Normalize(mean, std), net, head_name=name)


def _tv_weights(arch: str, weights: Any):
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        options = torchvision.models.list_models(module=torchvision.models)
        close = difflib.get_close_matches(arch, options, n=3)
        raise ConfigError(f"model 'torchvision:{arch}': torchvision has no classification model {arch!r}"
                          f"{f' (did you mean {close}?)' if close else ''}") from None
    names = [w.name for w in enum]
    if weights is None:
        weights = "DEFAULT"
    if isinstance(weights, enum):
        return weights
    key = str(weights).rpartition(".")[2]
    try:
        return enum[key]
    except KeyError:
        raise ConfigError(f"weights: torchvision's {enum.__name__} has no {weights!r}; expected one of "
                          f"{', '.join(names)} or DEFAULT") from None


def _tv_build(arch: str, w: Any) -> nn.Module:
    """The architecture exactly as torchvision's builder shapes it for weights ``w`` (its ``_ovewrite_named_param``
    calls), built with ``weights=None``; the cached state dict is then read by :func:`_read_state` (tensors only)."""
    import torchvision

    kwargs: dict[str, Any] = {"num_classes": len(w.meta["categories"])}
    drop_aux = arch in ("googlenet", "inception_v3")
    if drop_aux:
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    if arch.startswith("vit_") and "min_size" in w.meta:
        kwargs["image_size"] = w.meta["min_size"][0]
    if arch.startswith("maxvit") and "min_size" in w.meta:
        kwargs["input_size"] = w.meta["min_size"]
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _tv_drop_aux(net: nn.Module) -> None:
    """After loading, as torchvision's googlenet / inception_v3 builders do: the auxiliary heads are training-only."""
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, name):
                setattr(net, name, None)


def _hash_prefix(file: Path) -> str | None:
    """The SHA-256 prefix torch.hub reads from a file name ``NAME-<hex>.EXT`` (its ``HASH_REGEX``), if any."""
    m = re.search(r"-([a-f0-9]{6,})\.", file.name)
    return m.group(1) if m else None


def _download(url: str, file: Path, what: str) -> None:
    """Download ``url`` to ``file`` (torch.hub's own downloader: a temporary file, then a rename), checking the
    SHA-256 prefix in the file name when there is one. Only the bytes are fetched; they are read by
    :func:`_read_state` like any cached file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(file), hash_prefix=_hash_prefix(file), progress=False)
    except (OSError, urllib.error.URLError, RuntimeError) as exc:
        raise WeightsNotFoundError(f"weights {what}: cannot fetch {url} ({exc}); save the file as {file}") from None


def _load_torchvision(arch: str, weights: Any, head: str | None, download: bool
                      ) -> tuple[NormalizedClassifier, Any, dict[str, Any]]:
    w = _tv_weights(arch, weights)
    file = torch_hub_file(w.url)
    if not file.is_file():
        if not download:
            raise WeightsNotFoundError(
                f"weights torchvision:{arch} {w.name}: no cached file {file}. Download {w.url} and save it there "
                "(the torch.hub cache is $TORCH_HOME/hub/checkpoints, TORCH_HOME defaults to ~/.cache/torch), or "
                "allow downloading (download=True, CLI --download). causalgeom reads the file as tensors only "
                "(torch.load(weights_only=True)): a file that needs unpickling code is refused")
        _download(w.url, file, f"torchvision:{arch} {w.name}")
    net = _tv_build(arch, w)
    # the cached file is read here, never by torchvision's loader (torch.hub.load_state_dict_from_url unpickles
    # with weights_only=False by default)
    _load_state(net, _read_state(file), f"{file}")
    _tv_drop_aux(net)
    tf = w.transforms()
    model = wrap(net, mean=tf.mean, std=tf.std, head=head, what=f"torchvision:{arch}")
    preprocess = w.transforms(mean=(0.0,) * len(tf.mean), std=(1.0,) * len(tf.std))  # pixels in [0, 1]
    attrs = {"model_name": f"torchvision:{arch}", "weights": w.name, "weights_file": str(file),
             "weights_url": w.url, "num_classes": len(w.meta["categories"])}
    return model, preprocess, attrs


def _timm_file(spec: str, cfg: Any, download: bool) -> str:
    """The weights file of timm model ``spec``: from the Hugging Face cache (``model.safetensors`` first, then
    ``pytorch_model.bin``) or, for configs without a hub repository, the torch.hub cache of ``cfg.url``; downloaded
    there first when ``download`` (the bytes only: the file is read by :func:`_read_state`, never by timm)."""
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        url = getattr(cfg, "url", None)
        if not url:
            raise WeightsNotFoundError(f"weights timm:{spec}: its pretrained config names no file to download; pass "
                                       "weights=PATH (CLI --weights PATH)")
        file = torch_hub_file(url)
        if not file.is_file():
            if not download:
                raise WeightsNotFoundError(
                    f"weights timm:{spec}: no cached file {file}. Download {url} and save it there, pass "
                    "weights=PATH (CLI --weights PATH), or allow downloading (download=True, CLI --download). The "
                    "file is read as tensors only (torch.load(weights_only=True) or safetensors)")
            _download(url, file, f"timm:{spec}")
        return str(file)
    from huggingface_hub import try_to_load_from_cache

    cache = _hf_cache_dir()
    names = [n for n in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin") if n]
    names = list(dict.fromkeys(names))
    for fname in names:
        found = try_to_load_from_cache(repo, fname, cache_dir=str(cache))
        if isinstance(found, str) and os.path.isfile(found):
            return found
    slug = "models--" + repo.replace("/", "--")
    if not download:
        raise WeightsNotFoundError(
            f"weights timm:{spec}: not in the Hugging Face cache {cache} (expected {cache}/{slug}/snapshots/REVISION/"
            f"model.safetensors). Run `huggingface-cli download {repo}` where there is network (HF_HUB_CACHE / "
            "HF_HOME select the cache), pass weights=PATH to a local file (CLI --weights PATH), or allow downloading "
            "(download=True, CLI --download). The file is read as tensors only (safetensors, or "
            "torch.load(weights_only=True) for pytorch_model.bin)")
    from huggingface_hub import hf_hub_download

    errors = []
    for fname in names:
        try:
            return hf_hub_download(repo, fname, cache_dir=str(cache))
        except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types (absent file, no network)
            errors.append(f"{fname}: {type(exc).__name__}")
    raise WeightsNotFoundError(f"weights timm:{spec}: cannot download {names} from {repo} ({'; '.join(errors)})")


def _mismatch(ref: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """The first missing, unexpected and wrongly shaped keys of ``state`` against the model state ``ref``."""
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(ref[k].shape)}" for k in state
              if k in ref and tuple(state[k].shape) != tuple(ref[k].shape)]
    parts = [f"{len(missing)} missing keys {missing[:5]}" if missing else "",
             f"{len(unexpected)} unexpected keys {unexpected[:5]}" if unexpected else "",
             f"{len(shapes)} wrong shapes {shapes[:3]}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def _timm_mismatch(spec: str, state: Mapping[str, Any]) -> str:
    """:func:`_mismatch` of ``state`` against timm model ``spec`` (built on the meta device: nothing allocated)."""
    import timm

    try:
        with torch.device("meta"):
            ref = timm.create_model(spec, pretrained=False).state_dict()
    except Exception:  # noqa: BLE001 - only used to word the message
        return ""
    return _mismatch(ref, state)


def _load_timm(spec: str, weights: Any, head: str | None, download: bool
               ) -> tuple[NormalizedClassifier, Any, dict[str, Any]]:
    try:
        import timm
        import timm.data
    except ImportError:
        raise ConfigError(f"model 'timm:{spec}': timm is not installed; pip install 'causalgeom[timm]'") from None
    arch, _, tag = spec.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {close}?)" if close else ""
        raise ConfigError(f"model 'timm:{spec}': timm has no model {arch!r}{hint}")
    try:
        cfg = timm.models.get_pretrained_cfg(spec)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        raise ConfigError(f"model 'timm:{spec}': timm has no pretrained weights {spec!r}; expected one of "
                          f"{timm.list_pretrained(arch + '.*')[:20]}")
    if weights is not None:
        file = Path(weights).expanduser()
        if not file.is_file():
            raise WeightsNotFoundError(f"weights: no file {file} (for timm:{spec}); expected a .safetensors or "
                                       ".pth/.bin state dict")
        file_s = str(file)
    else:
        file_s = _timm_file(spec, cfg, download)
    state = _read_state(Path(file_s))
    # timm gets the tensors, not the file: its own filter / stem / classifier adaptation runs on this dict
    # (pretrained_cfg.state_dict is timm's in-memory source), and it never opens a file itself
    overlay = {"state_dict": dict(state), "file": None, "source": "", "custom_load": False}
    try:
        net = timm.create_model(spec, pretrained=True, pretrained_cfg_overlay=overlay)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError, AssertionError) as exc:
        detail = _timm_mismatch(spec, state) or f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        raise ConfigError(f"weights file {file_s} does not fit timm:{spec}: {detail}") from None
    net.pretrained_cfg.pop("state_dict", None)  # the tensors live in the model; keep the config small
    data_cfg = timm.data.resolve_data_config(model=net)
    preprocess = timm.data.create_transform(**{**data_cfg, "mean": (0.0,) * len(data_cfg["mean"]),
                                               "std": (1.0,) * len(data_cfg["std"])})
    model = wrap(net, mean=data_cfg["mean"], std=data_cfg["std"], head=head, what=f"timm:{spec}")
    tag = net.pretrained_cfg.get("tag") or tag
    attrs = {"model_name": f"timm:{spec}", "weights": tag or "default", "weights_file": file_s,
             "num_classes": int(model.head.out_features)}
    if tag and _BCE_TAG.match(tag):
        attrs["loss"] = "bce"
    return model, preprocess, attrs


def _load_state(net: nn.Module, state: Any, where: str) -> None:
    if not isinstance(state, Mapping):
        raise ConfigError(f"weights file {where}: expected a state dict (name -> tensor), got {type(state).__name__}")
    detail = _mismatch(net.state_dict(), state)
    if detail:
        raise ConfigError(f"weights file {where} does not fit the architecture {type(net).__name__}: {detail}")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:4])[:500]
        raise ConfigError(f"weights file {where} does not fit the architecture: {first}") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a weights file, read as tensors only (:func:`causalgeom._util.io.load_weights_file`):
    never unpickled, declared sizes checked against the file and the memory limit before anything is allocated."""
    return load_weights_file(path, limit=default_max_bytes(), error=ConfigError)


def _build_arch(arch: str, num_classes: int) -> nn.Module:
    family, _, name = arch.partition(":")
    if family == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"arch: torchvision has no classification model {name!r}")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if family == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError(f"arch {arch!r}: timm is not installed; pip install 'causalgeom[timm]'") from None
        if not timm.is_model(name.partition(".")[0]):
            raise ConfigError(f"arch: timm has no model {name!r}")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    raise ConfigError(f"arch: expected 'torchvision:NAME' or 'timm:NAME', got {arch!r}")


def _load_local(path: Path, arch: str | None, num_classes: int | None, head: str | None,
                mean: Sequence[float] | None, std: Sequence[float] | None
                ) -> tuple[NormalizedClassifier, Any, dict[str, Any]]:
    from torchvision.transforms import v2

    if not path.is_file():
        raise WeightsNotFoundError(f"model: no weights file {path}")
    if arch is None:
        raise ConfigError(f"arch: a local state dict ({path}) needs its architecture, e.g. "
                          "arch='torchvision:resnet50' or arch='timm:resnet50' (CLI --arch)")
    state = _read_state(path)
    if "normalize.mean" in state and any(k.startswith("net.") for k in state):  # a NormalizedClassifier's state
        mean = mean if mean is not None else state["normalize.mean"].flatten().tolist()
        std = std if std is not None else state["normalize.std"].flatten().tolist()
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    probe = _build_arch(arch, num_classes or 1000)
    hname = _check_head(probe, head, arch)
    wkey = f"{hname}.weight"
    k_file = int(state[wkey].shape[0]) if wkey in state and getattr(state[wkey], "ndim", 0) == 2 else None
    if num_classes is not None and k_file is not None and k_file != num_classes:
        raise ConfigError(f"num_classes: {num_classes} given, but the head {wkey!r} in {path} has {k_file} outputs")
    k = num_classes or k_file or 1000
    net = probe if k == (num_classes or 1000) else _build_arch(arch, k)
    _load_state(net, state, str(path))
    mean = tuple(mean) if mean is not None else _IMAGENET_MEAN
    std = tuple(std) if std is not None else _IMAGENET_STD
    model = wrap(net, mean=mean, std=std, head=head, what=f"{arch} from {path}")
    preprocess = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    attrs = {"model_name": arch, "weights": path.name, "weights_file": str(path), "num_classes": k}
    return model, preprocess, attrs


def load(name: str, weights: Any = None, *, arch: str | None = None, num_classes: int | None = None,
         head: str | None = None, download: bool = False, mean: Sequence[float] | None = None,
         std: Sequence[float] | None = None) -> tuple[NormalizedClassifier, Any]:
    """A public checkpoint by name, with its preprocessing: ``(model in eval mode, preprocess)``.

    Parameters
    ----------
    name : str
        ``"torchvision:ARCH"`` (weights: torchvision's weights enum, e.g. ``"IMAGENET1K_V2"``; default
        ``"DEFAULT"``), ``"timm:ARCH.TAG"`` (timm's ``pretrained_cfg``; ``weights`` optionally a local file
        read here and given to timm as an in-memory state dict), or a local state dict
        ``PATH.pt|.pth|.bin|.safetensors`` with ``arch=``. Every weights file (cached, downloaded or local) is
        read as tensors only (``torch.load(weights_only=True)`` or safetensors) with its declared sizes checked
        before anything is allocated; a file needing code is refused.
    weights : str or path, optional
    arch : str, optional
        ``"torchvision:NAME"`` or ``"timm:NAME"``: the architecture of a local file.
    num_classes : int, optional
        Local files: K (default: the head's rows in the file).
    head : str, optional
        Qualified name (inside the network) of the final linear layer, needed for MLP heads.
    download : bool
        Allow torch.hub / the Hugging Face hub to download absent weights. Default False: only the local
        caches are read (``$TORCH_HOME/hub/checkpoints``, the Hugging Face cache ``$HF_HUB_CACHE``), so nothing
        waits on the network.
    mean, std : sequence of float, optional
        Local files: the normalization the network expects (default ImageNet's, or the values stored in a
        causalgeom model's state dict).

    Returns
    -------
    model : NormalizedClassifier
        Pixels (B, 3, H, W) in [0, 1] -> logits (B, K); normalization inside; ``model.head`` is the final
        linear layer and its input are the pre-logits features. ``getattr(model, LOAD_ATTRS)`` holds the
        provenance (``model_name``, ``weights``, ``weights_file``, ``num_classes``, ``loss`` = ``"bce"`` for
        timm's A1/A2/A3 recipes, ``confidence``).
    preprocess : callable
        PIL image -> float tensor (3, H, W) in [0, 1]: the checkpoint's own resize and crop
        (``weights.transforms()`` / timm's ``create_transform(**resolve_data_config(model=...))``) with the
        normalization moved into ``model``, so ``model(preprocess(img))`` equals the network applied to the
        checkpoint's own transform of ``img``.

    Raises
    ------
    ConfigError
        Unknown model, weights or architecture, a file that does not fit, an MLP head without ``head``; a
        weights file that would need unpickling code or is malformed (the message names the file).
    WeightsNotFoundError
        The weights are not cached (the message names the file and where to put it).
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise ConfigError(f"model: expected 'torchvision:ARCH', 'timm:ARCH.TAG' or a state-dict path, got {name!r}")
    text = str(name)
    if text.startswith("torchvision:"):
        model, preprocess, attrs = _load_torchvision(text[len("torchvision:"):], weights, head, download)
    elif text.startswith("timm:"):
        model, preprocess, attrs = _load_timm(text[len("timm:"):], weights, head, download)
    elif Path(text).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        model, preprocess, attrs = _load_local(Path(text).expanduser(), arch, num_classes, head, mean, std)
    else:
        raise ConfigError(f"model: expected 'torchvision:ARCH', 'timm:ARCH.TAG' or a state-dict file "
                          f"(.pt, .pth, .bin, .safetensors), got {text!r}")
    attrs.setdefault("loss", "unknown")
    attrs["confidence"] = "sigmoid" if attrs["loss"] == "bce" else "softmax"
    setattr(model, LOAD_ATTRS, attrs)
    model.eval()
    return model, preprocess
