"""Explicit preprocessing of a checkpoint that brings none of its own (a local state dict, random weights).

A :class:`Preprocess` names the resize, centre crop, interpolation and per-channel normalization a network was
trained with. The resize and crop act on the PIL image (:meth:`Preprocess.transform`: PIL -> float tensor in
[0, 1]); the normalization goes inside the model (`causalgeom.pipeline.models.Normalize`), so attacks act on pixels.
Its :meth:`Preprocess.spec` is the text stored in the run attribute ``preprocess``.

Named presets (:data:`PRESETS`): ``imagenet`` (resize 256, crop 224, bilinear, ImageNet mean/std), ``cifar10``
and ``cifar100`` (resize 32, crop 32, the training sets' per-channel mean/std, as `causalgeom.pipeline.data.dataset_info`),
``none`` (no resize, mean 0, std 1: every image must already have the network's size). A spec is a preset name
or ``key=value`` pairs separated by commas, e.g. ``resize=36,crop=32,mean=0.5,0.5,0.5,std=0.25,0.25,0.25``
(values of ``mean``/``std`` continue over the commas until the next ``key=``), optionally starting from a preset:
``cifar10,resize=40``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

__all__ = ["Preprocess", "PRESETS", "KEYS", "INTERPOLATIONS", "parse_preprocess", "describe_transform"]

#: Keys of a preprocessing spec.
KEYS = ("resize", "crop", "mean", "std", "interpolation")
#: Interpolations of the resize (torchvision's names).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side), centre crop, interpolation and normalization of a network's input.

    Parameters
    ----------
    resize : int, optional
        The shorter image side after resizing (aspect ratio kept); None: no resize.
    crop : int, optional
        Side of the square centre crop after the resize; None: no crop.
    mean, std : tuple of float
        Per-channel normalization ``(x - mean) / std`` of pixels in [0, 1] (applied inside the model).
    interpolation : str
        One of :data:`INTERPOLATIONS`.
    name : str, optional
        The preset it came from (kept in :meth:`spec` for readers).
    """

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"
    name: str | None = None

    def spec(self) -> str:
        """The text of the run attribute ``preprocess``: ``"cifar10: resize=32,crop=32,mean=...,std=...,..."``."""
        def nums(v: Sequence[float]) -> str:
            return ",".join(f"{x:g}" for x in v)

        parts = [f"resize={self.resize if self.resize is not None else 'none'}",
                 f"crop={self.crop if self.crop is not None else 'none'}",
                 f"mean={nums(self.mean)}", f"std={nums(self.std)}", f"interpolation={self.interpolation}"]
        return f"{self.name + ': ' if self.name else ''}{','.join(parts)}"

    def transform(self, in_channels: int = 3) -> Any:
        """PIL image -> float32 tensor (C, H, W) in [0, 1]: resize, centre crop, to tensor (no normalization)."""
        import torch
        from torchvision.transforms import InterpolationMode, v2

        steps: list[Any] = []
        if in_channels == 1:
            steps.append(v2.Grayscale(1))
        steps.append(v2.ToImage())
        if self.resize is not None:
            steps.append(v2.Resize(self.resize, interpolation=InterpolationMode(self.interpolation), antialias=True))
        if self.crop is not None:
            steps.append(v2.CenterCrop(self.crop))
        steps.append(v2.ToDtype(torch.float32, scale=True))
        return v2.Compose(steps)


#: Named presets (see the module docstring).
PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess(resize=256, crop=224, name="imagenet", **_IMAGENET),
    "cifar10": Preprocess(resize=32, crop=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                          name="cifar10"),
    "cifar100": Preprocess(resize=32, crop=32, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                           name="cifar100"),
    "none": Preprocess(name="none"),
}


def _size(key: str, value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else -1
    except ValueError:
        n = -1
    if n <= 0:
        raise ConfigError(f"{where}: {key}: expected a positive number of pixels or 'none', got {value!r}")
    return n


def _floats(key: str, value: Any, where: str) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else [v for v in str(value).replace("/", ",").split(",")]
    try:
        out = tuple(float(v) for v in items if str(v).strip() != "")
    except (TypeError, ValueError):
        out = ()
    if not out:
        raise ConfigError(f"{where}: {key}: expected numbers such as 0.5,0.5,0.5, got {value!r}")
    if key == "std" and not all(v > 0 for v in out):
        raise ConfigError(f"{where}: std: expected positive values, got {value!r}")
    return out


def _pairs(text: str, where: str) -> tuple[str | None, dict[str, str]]:
    """``"cifar10,resize=40"`` -> ``("cifar10", {"resize": "40"})``; bare tokens continue the previous value."""
    preset: str | None = None
    out: dict[str, str] = {}
    last: str | None = None
    for i, token in enumerate(t.strip() for t in text.split(",")):
        if "=" in token:
            key, _, value = token.partition("=")
            last = key.strip().lower()
            if last not in KEYS:
                raise ConfigError(f"{where}: unknown key {key.strip()!r}; expected a preset "
                                  f"({', '.join(PRESETS)}) or key=value with keys {', '.join(KEYS)}")
            out[last] = value.strip()
        elif i == 0 and token:
            preset = token.lower()
        elif last in ("mean", "std") and token:
            out[last] += "," + token
        elif token:
            raise ConfigError(f"{where}: cannot read {token!r} in {text!r}; expected key=value pairs "
                              f"({', '.join(KEYS)}) after an optional preset name")
    return preset, out


def parse_preprocess(spec: str | Mapping[str, Any] | Preprocess, *, where: str = "--preprocess") -> Preprocess:
    """A :class:`Preprocess` from a preset name, a ``key=value,...`` spec, or a mapping (a zoo file's table).

    Parameters
    ----------
    spec : str, mapping or Preprocess
        See the module docstring; a mapping may hold ``preset`` plus any of :data:`KEYS` (``mean``/``std`` as
        lists).
    where : str
        Name of the option in error messages (``--preprocess``, or a zoo file's ``models[i].preprocess``).

    Raises
    ------
    ConfigError
        Unknown preset or key, a bad value, or mean and std of different lengths.
    """
    if isinstance(spec, Preprocess):
        return spec
    if isinstance(spec, Mapping):
        fields = {str(k).lower(): v for k, v in spec.items()}
        preset = fields.pop("preset", None)
        bad = sorted(set(fields) - set(KEYS))
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad}; expected preset and some of {list(KEYS)}")
    elif isinstance(spec, str) and spec.strip():
        preset, fields = _pairs(spec.strip(), where)
    else:
        raise ConfigError(f"{where}: expected a preset ({', '.join(PRESETS)}) or resize=N,crop=N,mean=...,std=...,"
                          f"interpolation=..., got {spec!r}")
    if preset is not None and str(preset).lower() not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {preset!r}; expected one of {', '.join(PRESETS)} or "
                          f"key=value pairs ({', '.join(KEYS)})")
    base = PRESETS[str(preset).lower()] if preset is not None else Preprocess()
    values: dict[str, Any] = {}
    if "resize" in fields:
        values["resize"] = _size("resize", fields["resize"], where)
    if "crop" in fields:
        values["crop"] = _size("crop", fields["crop"], where)
    for key in ("mean", "std"):
        if key in fields:
            values[key] = _floats(key, fields[key], where)
    if "interpolation" in fields:
        interp = str(fields["interpolation"]).strip().lower()
        if interp not in INTERPOLATIONS:
            raise ConfigError(f"{where}: interpolation: expected one of {', '.join(INTERPOLATIONS)}, got {interp!r}")
        values["interpolation"] = interp
    out = dataclasses.replace(base, **values, name=base.name if not values else None)
    if len(out.mean) != len(out.std):
        raise ConfigError(f"{where}: mean and std need one value per channel each, got mean={list(out.mean)}, "
                          f"std={list(out.std)}")
    if not values and preset is None:
        raise ConfigError(f"{where}: empty preprocessing spec {spec!r}")
    if values and preset is not None:
        out = dataclasses.replace(out, name=f"{preset}+")
    return out


def describe_transform(transform: Any, mean: Sequence[float], std: Sequence[float], source: str) -> str:
    """The run attribute ``preprocess`` of a checkpoint that brings its own transform (torchvision, timm).

    ``source`` says whose transform it is (``"torchvision IMAGENET1K_V2 transforms"``); the transform's repr is
    flattened to one line, and the normalization (inside the model) is appended.
    """
    text = " ".join(str(transform).split())
    nums = lambda v: ",".join(f"{float(x):g}" for x in v)  # noqa: E731
    return f"{source}: {text}; mean={nums(mean)},std={nums(std)} (inside the model)"
