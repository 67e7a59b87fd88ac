"""Training configuration: `TrainConfig`, its validation and the regularizer names (`REGULARIZERS`)."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

from .. import data as _data
from .. import models as _models
from ..._util.checks import check_choice
from ...errors import ConfigError


#: Regularizer components (in canonical order) and the config field holding each one's strength.
REGULARIZERS: dict[str, str | None] = {
    "ce": None,
    "label_smoothing": "label_smoothing",
    "mixup": "mixup_alpha",
    "cutmix": "cutmix_alpha",
    "weight_decay": "weight_decay",
    "dropout": "dropout",
}
_OPTIMIZERS = ("sgd", "adamw")
_SCHEDULES = ("cosine", "constant")
_AUGMENTS = ("none", "flip_crop")
_RUN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def _fmt(value: float) -> str:
    """Short, exact-enough decimal for run ids: 0.1 -> '0.1', 1 -> '1.0', 5e-4 -> '0.0005'."""
    text = repr(float(value))
    if "e" in text:
        text = f"{float(value):.10f}".rstrip("0")
    return text


def _parse_regularizer(name: Any) -> tuple[str, ...]:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"regularizer: expected a name or a '+'-joined combination of "
                          f"{', '.join(map(repr, REGULARIZERS))}, got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in REGULARIZERS]
    if unknown:
        raise ConfigError(f"regularizer: unknown component(s) {', '.join(map(repr, unknown))} in {name!r}; "
                          f"expected one of {', '.join(map(repr, REGULARIZERS))} or a '+'-joined combination "
                          "such as 'label_smoothing+mixup'")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"regularizer: a component is repeated in {name!r}")
    if "ce" in parts and len(parts) > 1:
        raise ConfigError(f"regularizer: 'ce' (hard labels, the control) cannot be combined, got {name!r}")
    return tuple(p for p in REGULARIZERS if p in parts)


def _number(name: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False,
            integer: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        if high is not None:
            bounds = f"in {'(' if low_open else '['}{low:g}, {high:g})"
        else:
            bounds = f"{'>' if low_open else '>='} {low:g}"
        raise ConfigError(f"{name}: expected {'an integer' if integer else 'a number'} {bounds}, got {value!r}")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines one training run (stored as ``config.json`` and inside the checkpoint).

    Parameters
    ----------
    run_id : str, optional
        Folder name; default derived from regularizer, strengths and seed (``"ce-s0"``,
        ``"label_smoothing0.1-s0"``, ``"label_smoothing0.1_mixup1.0-s2"``). Letters, digits, ``.``, ``_``, ``-``.
    dataset, data_root : str
        See :func:`causalgeom.pipeline.data.load_dataset`.
    model, cifar_stem : see :func:`causalgeom.pipeline.models.build_model`.
    regularizer : str
        One of :data:`REGULARIZERS` or a ``+``-joined combination; each component needs its strength > 0.
    label_smoothing, mixup_alpha, cutmix_alpha : float
        Strengths; must be 0 unless their component is in ``regularizer``.
    weight_decay, dropout : float
        Treatments when named in ``regularizer``; otherwise shared hyperparameters (any valid value).
    epochs, batch_size, lr, optimizer, momentum, nesterov, schedule, warmup_epochs :
        Optimization (``optimizer`` "sgd" or "adamw"; ``schedule`` "cosine" (per step, after a linear warmup)
        or "constant").
    augment : {"none", "flip_crop"}
        Training augmentation applied before the regularizer (flip_crop: random horizontal flip and a
        random crop after 4-pixel zero padding, the usual CIFAR augmentation).
    max_train_samples : int, optional
        Train on the first N images of the train split only.
    seed : int
        Seeds initialization, data order, dropout and the regularizer's sampling.
    device : str
        "cpu", "cuda", "cuda:N" or "auto" (cuda when available).
    amp, channels_last : bool
        On CUDA only: bf16 autocast and channels_last memory format.
    num_workers, eval_batch_size : int
        DataLoader workers (datasets not held in memory) and evaluation batch size.
    num_threads : int, optional
        torch CPU threads during this run (restored afterwards); default: leave torch's setting. Small
        models train fastest with 1, especially on a shared machine.
    """

    run_id: str | None = None
    dataset: str = "digits"
    data_root: str | None = None
    model: str = "small_cnn"
    cifar_stem: bool = False
    regularizer: str = "ce"
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    weight_decay: float = 0.0
    dropout: float = 0.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: int = 0
    augment: str = "none"
    max_train_samples: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    channels_last: bool = True
    num_workers: int = 0
    eval_batch_size: int = 512
    num_threads: int | None = None

    # ------------------------------------------------------------------ derived
    @property
    def components(self) -> tuple[str, ...]:
        """The regularizer's components in canonical order (``("ce",)`` for the control)."""
        return _parse_regularizer(self.regularizer)

    @property
    def regularizer_params(self) -> dict[str, float]:
        """``{config field: value}`` of the regularizer's components (``{}`` for ce)."""
        return {REGULARIZERS[c]: float(getattr(self, REGULARIZERS[c])) for c in self.components
                if REGULARIZERS[c] is not None}

    @property
    def strength(self) -> float:
        """The main parameter: the first component's strength (0 for ce)."""
        params = list(self.regularizer_params.values())
        return params[0] if params else 0.0

    def default_run_id(self) -> str:
        """``"ce-s0"``, ``"mixup1.0-s2"``, ``"label_smoothing0.1_mixup1.0-s0"``."""
        comps = self.components
        if comps == ("ce",):
            reg = "ce"
        else:
            reg = "_".join(f"{c}{_fmt(getattr(self, REGULARIZERS[c]))}" for c in comps)  # type: ignore[arg-type]
        return f"{reg}-s{self.seed}"

    # ------------------------------------------------------------------ validation
    def validate(self, *, check_data: bool = True) -> "TrainConfig":
        """Check every field (and that the dataset is readable); return a normalized copy.

        Raises
        ------
        ConfigError
            Naming the field, what was expected and what was given.
        """
        comps = _parse_regularizer(self.regularizer)
        for comp, field in REGULARIZERS.items():
            if field is None:
                continue
            value = getattr(self, field)
            high = 1.0 if field in ("label_smoothing", "dropout") else None
            _number(field, value, low=0.0, high=high)
            if comp in comps and value == 0:
                raise ConfigError(f"{field}: regularizer {self.regularizer!r} includes {comp!r}, so {field} must "
                                  f"be > 0, got {value!r}")
            if comp not in comps and value != 0 and comp not in ("weight_decay", "dropout"):
                raise ConfigError(f"{field}={value!r} is set but regularizer {self.regularizer!r} does not include "
                                  f"{comp!r}; use regularizer={'+'.join((*[c for c in comps if c != 'ce'], comp))!r} "
                                  f"or set {field}=0")
        _number("epochs", self.epochs, low=1, integer=True)
        _number("batch_size", self.batch_size, low=1, integer=True)
        _number("eval_batch_size", self.eval_batch_size, low=1, integer=True)
        _number("lr", self.lr, low=0.0, low_open=True)
        _number("momentum", self.momentum, low=0.0, high=1.0)
        _number("warmup_epochs", self.warmup_epochs, low=0, integer=True)
        _number("seed", self.seed, low=0, integer=True)
        _number("num_workers", self.num_workers, low=0, integer=True)
        if self.num_threads is not None:
            _number("num_threads", self.num_threads, low=1, integer=True)
        if self.max_train_samples is not None:
            _number("max_train_samples", self.max_train_samples, low=1, integer=True)
        for field, options in (("optimizer", _OPTIMIZERS), ("schedule", _SCHEDULES), ("augment", _AUGMENTS)):
            check_choice(getattr(self, field), field, options)
        for field in ("cifar_stem", "nesterov", "amp", "channels_last"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{field}: expected true or false, got {getattr(self, field)!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device: expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {self.device!r}")
        if not isinstance(self.model, str) or self.model not in _models.available_models():
            _models.build_model(str(self.model), 10)  # raises the ConfigError listing the options
        check_choice(self.dataset, "dataset", _data.DATASETS)
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"data_root: expected a path string, got {self.data_root!r}")
        run_id = self.run_id if self.run_id is not None else self.default_run_id()
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
            raise ConfigError(f"run_id: expected 1-128 letters, digits, '.', '_' or '-' (not starting with '.'), "
                              f"got {run_id!r}")
        if check_data:
            _data.check_dataset(self.dataset, self.data_root)
        out = dataclasses.replace(self, run_id=run_id, regularizer="+".join(comps))
        for field in ("label_smoothing", "mixup_alpha", "cutmix_alpha", "weight_decay", "dropout", "lr", "momentum"):
            setattr(out, field, float(getattr(out, field)))
        return out

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``from_dict(to_dict())`` round-trips)."""
        return dataclasses.asdict(self)

    def run_attrs(self) -> dict[str, Any]:
        """The dump attributes the rest of causalgeom reads: run_id, regularizer, strength, regularizer_params,
        seed, model, dataset, weight_decay, dropout."""
        return {"run_id": self.run_id or self.default_run_id(), "regularizer": "+".join(self.components),
                "strength": self.strength, "regularizer_params": self.regularizer_params, "seed": int(self.seed),
                "model": self.model, "dataset": self.dataset, "weight_decay": float(self.weight_decay),
                "dropout": float(self.dropout)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict (a ``config.json`` is accepted: its derived keys are ignored).

        Raises
        ------
        ConfigError
            Unknown keys (listing the allowed ones).
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"training config: expected a table/dict, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        derived = {"strength", "regularizer_params", "model_spec", "versions", "created", "init_digest"}
        unknown = sorted(set(d) - fields - derived)
        if unknown:
            raise ConfigError(f"training config: unknown key(s) {', '.join(map(repr, unknown))}; expected "
                              f"{', '.join(sorted(fields))}")
        return cls(**{k: v for k, v in d.items() if k in fields})
