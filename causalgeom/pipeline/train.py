"""Training of the regularizer grid: soft targets, one soft-target loss, resumable runs, grid runner.

Every regularizer is expressed as a *soft target* ``q`` (B, K) for one loss, the soft-target
cross-entropy ``-sum_k q_k log softmax(z)_k`` (:func:`soft_cross_entropy`):

* ``ce`` -- one-hot targets (the control);
* ``label_smoothing`` (eps) -- ``q = (1 - eps) onehot(y) + eps / K`` (Szegedy et al. 2016);
* ``mixup`` (alpha) -- ``torchvision.transforms.v2.MixUp``: ``lam ~ Beta(alpha, alpha)``,
  ``x' = lam x + (1 - lam) x_prev``, ``q = lam onehot(y) + (1 - lam) onehot(y_prev)`` (Zhang et al. 2018);
* ``cutmix`` (alpha) -- ``torchvision.transforms.v2.CutMix``: a box of ``x_prev`` pasted into ``x``,
  ``q`` weighted by the kept area (Yun et al. 2019);
* ``weight_decay`` / ``dropout`` -- hard targets, with the optimizer's weight decay / dropout before the head
  as the treatment;
* ``+``-joined combinations, e.g. ``label_smoothing+mixup`` (mix first, then smooth; with both mixup and
  cutmix one of the two is chosen per batch with probability 1/2).

Runs live in ``OUT/runs/RUN_ID/{checkpoint.pt, config.json, curves.csv, DONE}``. The checkpoint is
rewritten atomically after every epoch, so a killed run resumes from its last finished epoch and (on
CPU) ends with the same weights as an uninterrupted one; runs with a ``DONE`` marker are skipped.
Randomness comes from the run's seed only: an explicit ``torch.Generator`` orders the data and draws
the Mixup/CutMix/augmentation randomness; model initialization and dropout use torch's global RNG
inside ``torch.random.fork_rng``, seeded from the run and restored afterwards (no global side effect).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data as _data
from . import models as _models
from .._util import dask as _dask
from .._util.checks import check_choice
from .._util.io import atomic_write, file_lock, read_toml
from .._util.torch import autocast as _autocast
from .._util.torch import device as _device
from ..errors import ConfigError, StoreLockedError

__all__ = [
    "REGULARIZERS",
    "init_digest",
    "TrainConfig",
    "GridConfig",
    "SoftTargets",
    "soft_cross_entropy",
    "evaluate",
    "train_run",
    "run_grid",
    "load_grid",
    "default_grid",
    "load_checkpoint",
    "run_status",
    "DEFAULT_PRESET",
]

log = logging.getLogger(__name__)

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
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
CURVES = "curves.csv"
DONE = "DONE"
_CURVE_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "calib_nll", "calib_acc", "calib_confidence",
                 "seconds")


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


# ------------------------------------------------------------------------------------------ soft targets
class SoftTargets:
    """Turn a batch ``(x, y)`` into ``(x', q)``: (possibly mixed) inputs and soft targets.

    Parameters
    ----------
    num_classes : int
        K.
    label_smoothing : float
        eps in [0, 1): ``q <- (1 - eps) q + eps / K`` (applied last).
    mixup_alpha, cutmix_alpha : float
        Beta(alpha, alpha) parameters of ``torchvision.transforms.v2.MixUp`` / ``CutMix`` (0: off). With both,
        one of the two is used per batch, each with probability 1/2.

    Notes
    -----
    torchvision's MixUp/CutMix draw from torch's global CPU RNG; each call runs inside
    ``torch.random.fork_rng`` seeded from ``generator``, so results depend on ``generator`` only and the
    global RNG state is left untouched. Samples are paired with their predecessor in the batch
    (``torch.roll``), so the batch must already be shuffled.
    """

    def __init__(self, num_classes: int, *, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0) -> None:
        from torchvision.transforms import v2

        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.mixers = []
        if mixup_alpha > 0:
            self.mixers.append(v2.MixUp(alpha=float(mixup_alpha), num_classes=self.num_classes))
        if cutmix_alpha > 0:
            self.mixers.append(v2.CutMix(alpha=float(cutmix_alpha), num_classes=self.num_classes))

    @classmethod
    def from_config(cls, config: TrainConfig, num_classes: int) -> "SoftTargets":
        """The soft-target map of a run's regularizer."""
        return cls(num_classes, label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
                   cutmix_alpha=config.cutmix_alpha)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, H, W) float, ``y`` (B,) int64 -> ``(x', q)`` with ``q`` (B, K) float32, rows summing to 1."""
        if self.mixers:
            if generator is None:
                generator = torch.Generator().manual_seed(0)
            pick = int(torch.randint(len(self.mixers), (1,), generator=generator)) if len(self.mixers) > 1 else 0
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                x, q = self.mixers[pick](x, y)
            q = q.to(torch.float32)
        else:
            q = F.one_hot(y, self.num_classes).to(torch.float32)
        if self.label_smoothing > 0:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return x, q


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k q_k log softmax(z)_k``; ``logits`` (B, K), ``targets`` q (B, K).

    Equals ``torch.nn.functional.cross_entropy`` for one-hot / label-smoothed ``q``.
    """
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Run the block with torch's global RNGs (CPU, and ``device`` if CUDA) forked and seeded from ``seed``."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[cuda[0]].manual_seed(seed)
        yield


def _set_rng_state(device: torch.device, state: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device.index or 0)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device.index or 0)
    return state


def _batches(n: int, batch_size: int, generator: torch.Generator | None, drop_last: bool) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = list(order.split(batch_size))
    if drop_last and len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks.pop()
    return chunks


def _iterate(dataset, index_batches: list[torch.Tensor], num_workers: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(dataset, _data.ArrayDataset):
        for idx in index_batches:
            yield dataset.batch(idx)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[b.tolist() for b in index_batches],
                                         num_workers=num_workers)
    for x, y in loader:
        yield x, torch.as_tensor(y, dtype=torch.int64)


def _flip_crop(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop after zero padding; ``x`` (B, C, H, W)."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(-1, x.shape[1], -1, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return cropped.gather(3, cols)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int = 512, device: str | torch.device = "cpu",
             amp: bool = False, num_workers: int = 0) -> dict[str, float]:
    """Accuracy, mean confidence (max softmax probability) and NLL of ``model`` on ``dataset``.

    Returns
    -------
    dict
        ``accuracy``, ``mean_confidence``, ``nll`` (means over the samples), ``n`` (sample count).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = conf = nll = 0.0
    n = 0
    for x, y in _iterate(dataset, _batches(len(dataset), batch_size, None, False), num_workers):
        x, y = x.to(device, non_blocking=True), y.to(device)
        with _autocast(device, amp):
            logits = model(x)
        logp = F.log_softmax(logits.float(), dim=1)
        top, pred = logp.max(dim=1)
        correct += float((pred == y).sum())
        conf += float(top.exp().sum())
        nll += float(F.nll_loss(logp, y, reduction="sum"))
        n += int(y.numel())
    model.train(was_training)
    n_safe = max(n, 1)
    return {"accuracy": correct / n_safe, "mean_confidence": conf / n_safe, "nll": nll / n_safe, "n": n}


def _lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    total = config.epochs * steps_per_epoch
    warm = config.warmup_epochs * steps_per_epoch
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "constant":
        return config.lr
    progress = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _model_spec(config: TrainConfig, info: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": config.model, "num_classes": int(info["num_classes"]), "in_channels": int(info["in_channels"]),
            "mean": [float(v) for v in info["mean"]], "std": [float(v) for v in info["std"]],
            "cifar_stem": bool(config.cifar_stem), "dropout": float(config.dropout),
            "image_size": [int(v) for v in info["image_size"]]}


def _build_from_spec(spec: Mapping[str, Any]) -> _models.NormalizedClassifier:
    return _models.build_model(spec["name"], spec["num_classes"], spec["in_channels"], mean=spec["mean"],
                               std=spec["std"], cifar_stem=spec["cifar_stem"], dropout=spec["dropout"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _write_curves(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CURVE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in _CURVE_FIELDS})
    atomic_write(path, buf.getvalue().encode())


def _config_json(config: TrainConfig, spec: Mapping[str, Any]) -> str:
    from ..dump.schema import package_versions

    return json.dumps({**config.to_dict(), **config.run_attrs(), "model_spec": dict(spec),
                       "versions": package_versions()}, indent=2, sort_keys=True)


def _run_lock(run_dir: Path) -> contextlib.AbstractContextManager:
    return file_lock(run_dir.parent / f".{run_dir.name}.lock",
                     what=f"run {run_dir.name!r} is being trained by another process")


def run_status(run_dir: str | os.PathLike) -> str:
    """``"done"`` (DONE marker), ``"partial"`` (a checkpoint, no DONE) or ``"new"``."""
    run_dir = Path(run_dir)
    if (run_dir / DONE).is_file():
        return "done"
    if (run_dir / CHECKPOINT).is_file():
        return "partial"
    return "new"


# --------------------------------------------------------------------------------------------- train_run
def train_run(config: TrainConfig | Mapping[str, Any], out_dir: str | os.PathLike, progress: bool = True, *,
              stop_after: int | None = None) -> Path:
    """Train one run into ``OUT/runs/RUN_ID/`` (resuming a partial run; a finished run is left as it is).

    Parameters
    ----------
    config : TrainConfig or dict
        Validated (with the dataset folder checked) before anything is trained or written.
    out_dir : path
        Output root; the run folder is ``out_dir / "runs" / run_id``.
    progress : bool
        Show a tqdm bar over epochs (on stderr).
    stop_after : int, optional
        Train at most this many epochs in this call and return without the DONE marker; the next call
        continues (time-sliced jobs; also how tests simulate an interruption).

    Returns
    -------
    pathlib.Path
        The run folder, holding ``checkpoint.pt`` (``torch.load(..., weights_only=True)``-safe: ``model``
        state dict, ``config`` JSON string, ``optimizer`` state, ``epoch``, RNG states), ``config.json``,
        ``curves.csv`` (one row per epoch: lr, train loss/accuracy, calib NLL/accuracy/mean confidence,
        seconds) and ``DONE`` (written last).

    Raises
    ------
    ConfigError
        Invalid config or missing dataset (before training starts), or an existing run folder whose
        config differs.
    StoreLockedError
        Another process is training the same run.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    config = config.validate()
    run_dir = Path(out_dir) / "runs" / str(config.run_id)
    if (run_dir / DONE).is_file():
        log.info("run %s is done; skipping", config.run_id)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir), _threads(config.num_threads):
        if (run_dir / DONE).is_file():
            return run_dir
        _train_locked(config, run_dir, progress, stop_after)
    return run_dir


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (None: unchanged), restoring the previous number."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _resume_checkpoint(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The run's last checkpoint (None if there is none); ConfigError if it was trained with another config."""
    if not (run_dir / CHECKPOINT).is_file():
        return None
    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    old = TrainConfig.from_dict(json.loads(ckpt["config"]))
    if old.to_dict() != config.to_dict():
        diff = {k: (v, config.to_dict()[k]) for k, v in old.to_dict().items() if config.to_dict()[k] != v}
        raise ConfigError(f"run {config.run_id!r}: {str(run_dir)!r} holds a checkpoint trained with a different "
                          f"config (field: (stored, given) = {diff}); use another run_id or out_dir")
    return ckpt


def _train_set(config: TrainConfig) -> torch.utils.data.Dataset:
    """The training split, cut to its first ``max_train_samples`` samples when set."""
    train_set = _data.load_dataset(config.dataset, "train", config.data_root)
    if config.max_train_samples is not None and config.max_train_samples < len(train_set):
        keep = list(range(config.max_train_samples))
        train_set = train_set.subset(keep) if isinstance(train_set, _data.ArrayDataset) else \
            torch.utils.data.Subset(train_set, keep)
    return train_set


def init_digest(model: nn.Module) -> str:
    """SHA-256 over the model's state-dict tensors in key order (name, dtype, shape and the bytes of each).

    Recorded as the run attribute ``init_digest`` when training starts: two runs share an initialisation
    exactly when their digests match (equal seeds alone are no evidence: another model or code version
    draws other weights from the same seed).
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, cfg_json: str, epoch: int,
                     curves: list[dict[str, Any]], gen: torch.Generator, device: torch.device) -> None:
    """Everything a resumed run needs after ``epoch`` finished epochs (weights on CPU, optimizer, curves, RNGs)."""
    _atomic_torch_save({
        "model": {k: v.detach().to("cpu", memory_format=torch.contiguous_format)
                  for k, v in model.state_dict().items()},
        "config": cfg_json, "optimizer": _optimizer_state_cpu(optimizer), "epoch": epoch,
        "curves": json.dumps(curves), "rng": {"generator": gen.get_state(), "torch": _rng_state(device)},
    }, path)


def _train_locked(config: TrainConfig, run_dir: Path, progress: bool, stop_after: int | None) -> None:
    device = _device(config.device)
    info = _data.dataset_info(config.dataset, config.data_root)
    spec = _model_spec(config, info)
    cfg_json = _config_json(config, spec)

    ckpt = _resume_checkpoint(run_dir, config)
    for stale in run_dir.glob(".*.tmp*"):  # temp files of a run killed while saving
        stale.unlink(missing_ok=True)
    atomic_write(run_dir / CONFIG, cfg_json.encode())

    train_set = _train_set(config)
    calib_set = _data.load_dataset(config.dataset, "calib", config.data_root)
    soft = SoftTargets.from_config(config, spec["num_classes"])
    drop_last = len(train_set) > config.batch_size
    steps_per_epoch = len(_batches(len(train_set), config.batch_size, None, drop_last))
    use_amp = config.amp and device.type == "cuda"
    memory_format = torch.channels_last if (config.channels_last and device.type == "cuda") else None

    gen = torch.Generator().manual_seed(int(config.seed))
    start_epoch, curves = 0, []
    if ckpt is not None:
        gen.set_state(ckpt["rng"]["generator"])
        start_epoch = int(ckpt["epoch"])
        curves = json.loads(ckpt["curves"])

    with _forked_rng(device, int(config.seed)):
        model = _build_from_spec(spec)  # initialization draws from the forked, seeded global RNG
        # evidence of the initialisation (decompose pairs runs by it, never by equal seeds alone); a resumed run
        # rebuilds the same initial weights before loading its checkpoint, so its digest is the same
        cfg_json = json.dumps({**json.loads(cfg_json), "init_digest": init_digest(model)}, indent=2, sort_keys=True)
        atomic_write(run_dir / CONFIG, cfg_json.encode())
        model.to(device=device)
        if memory_format is not None:
            model.to(memory_format=memory_format)
        optimizer = _make_optimizer(config, model)
        if ckpt is not None:  # resume: weights, optimizer and the RNG state (dropout) as after the last epoch
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            _set_rng_state(device, ckpt["rng"]["torch"])
            del ckpt
        last = config.epochs if stop_after is None else min(config.epochs, start_epoch + int(stop_after))
        bar = _progress(range(start_epoch, last), progress, config, start_epoch)
        for epoch in bar:
            t0 = time.perf_counter()
            model.train()
            loss_sum = acc_sum = 0.0
            seen = 0
            batches = _batches(len(train_set), config.batch_size, gen, drop_last)
            for i, (x, y) in enumerate(_iterate(train_set, batches, config.num_workers)):
                step = epoch * steps_per_epoch + i
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(config, step, steps_per_epoch)
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if config.augment == "flip_crop":
                    x = _flip_crop(x, gen)
                x, q = soft(x, y, gen)
                if memory_format is not None:
                    x = x.contiguous(memory_format=memory_format)
                with _autocast(device, use_amp):
                    logits = model(x)
                loss = soft_cross_entropy(logits, q)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"run {config.run_id!r}: non-finite loss at epoch {epoch + 1}, step {i}; "
                                             f"lower lr (now {config.lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                b = int(y.numel())
                loss_sum += float(loss.detach()) * b
                acc_sum += float((logits.detach().argmax(1) == y).sum())
                seen += b
            calib = evaluate(model, calib_set, batch_size=config.eval_batch_size, device=device, amp=use_amp,
                             num_workers=config.num_workers)
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(seen, 1),
                   "train_acc": acc_sum / max(seen, 1), "calib_nll": calib["nll"], "calib_acc": calib["accuracy"],
                   "calib_confidence": calib["mean_confidence"], "seconds": round(time.perf_counter() - t0, 3)}
            curves.append(row)
            _save_checkpoint(run_dir / CHECKPOINT, model, optimizer, cfg_json, epoch + 1, curves, gen, device)
            _write_curves(run_dir / CURVES, curves)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", calib_acc=f"{row['calib_acc']:.3f}",
                                conf=f"{row['calib_confidence']:.3f}")
        if hasattr(bar, "close"):
            bar.close()
    if len(curves) >= config.epochs:
        atomic_write(run_dir / DONE, json.dumps({"epochs": config.epochs,
                                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def _optimizer_state_cpu(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = optimizer.state_dict()
    state["state"] = {k: {n: (v.detach().cpu() if torch.is_tensor(v) else v) for n, v in s.items()}
                      for k, s in state["state"].items()}
    return state


def _progress(iterable, enabled: bool, config: TrainConfig, initial: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=str(config.run_id), total=config.epochs, initial=initial, unit="ep", leave=False,
                file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------ checkpoints
def load_checkpoint(run_dir_or_file: str | os.PathLike) -> tuple[_models.NormalizedClassifier, dict[str, Any]]:
    """Load a trained model (eval mode, CPU) and its config dict from a run folder or ``checkpoint.pt``.

    The file is read with ``torch.load(weights_only=True)`` (no code runs); the model is rebuilt from the
    stored model spec, so the dataset need not be present.

    Returns
    -------
    (NormalizedClassifier, dict)
        The model and the run's config (:meth:`TrainConfig.to_dict` fields plus ``strength``,
        ``regularizer_params``, ``model_spec``, ``versions``).

    Raises
    ------
    ConfigError
        No checkpoint at the path, or not a causalgeom checkpoint.
    """
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"run_dir_or_file: expected a run folder holding {CHECKPOINT} or the file itself, "
                          f"got {str(run_dir_or_file)!r} (not found)")
    import pickle

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the file needs arbitrary objects (code) to load: refused, nothing ran
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines[1:] if not ln.startswith("Check the documentation")), lines[0] if lines
                      else type(exc).__name__)
        raise ConfigError(f"checkpoint {str(path)!r}: refused, loading it would unpickle arbitrary objects "
                          f"(torch.load(weights_only=True): {detail})") from None
    except Exception as exc:  # noqa: BLE001
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"cannot read checkpoint {str(path)!r} with torch.load(weights_only=True): "
                          f"{detail}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"checkpoint {str(path)!r}: expected a causalgeom checkpoint (keys 'model', 'config'), "
                          f"got keys {sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__}")
    # the checkpoint is untrusted: check its config and that the weights fit the model it names before building
    # the model for real (a model spec with a huge size is built on the meta device only, allocating nothing)
    try:
        config = json.loads(ckpt["config"])
        spec = config["model_spec"]
        if not isinstance(spec, dict):
            raise TypeError(f"model_spec is a {type(spec).__name__}")
        state = ckpt["model"]
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise TypeError("'model' is not a state dict of tensors")
        try:
            with torch.device("meta"):
                skeleton = _build_from_spec(spec)
        except (RuntimeError, NotImplementedError):  # a model whose construction needs real tensors
            skeleton = None
    except ConfigError as exc:
        raise ConfigError(f"checkpoint {str(path)!r}: its model spec is invalid: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"checkpoint {str(path)!r}: expected a JSON 'config' with a 'model_spec' and a 'model' "
                          f"state dict, got {type(exc).__name__}: {exc}") from None
    given = {k: tuple(v.shape) for k, v in state.items()}
    expected = given if skeleton is None else {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if expected != given:
        diff = sorted(set(expected) ^ set(given)) or sorted(k for k in expected if expected[k] != given[k])
        shown = [f"{k}: {given.get(k, 'missing')} vs {expected.get(k, 'unexpected')}" for k in diff[:4]]
        raise ConfigError(f"checkpoint {str(path)!r}: its weights do not fit the model spec {spec.get('name')!r} "
                          f"(checkpoint vs spec: {'; '.join(shown)}{' ...' if len(diff) > 4 else ''})")
    with torch.random.fork_rng(devices=[]):  # initialization is overwritten; keep the global RNG untouched
        model = _build_from_spec(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {str(path)!r}: its weights do not fit the model spec {spec.get('name')!r}: "
                          f"{' '.join(str(exc).split())}") from None
    model.eval()
    return model, config


# ------------------------------------------------------------------------------------------------ grids
@dataclasses.dataclass
class GridConfig:
    """A study's training grid: regularizers (with strengths) x seeds x models x datasets.

    Parameters
    ----------
    regularizers : list of dict
        Each ``{"name": "mixup", "strengths": [0.2, 1.0], ...}``: ``strengths`` sweeps the first component's
        parameter (omit for ``ce``); other keys are :class:`TrainConfig` fields for this entry only (e.g. the
        fixed ``mixup_alpha`` of ``label_smoothing+mixup``) and ``tag`` (a suffix of its run ids).
    seeds : list of int
    models, datasets : list of str
        With more than one, run ids are prefixed ``"DATASET-MODEL-"``.
    train : dict
        Shared :class:`TrainConfig` fields (epochs, lr, data_root, ...).
    name, description : str
    """

    regularizers: list[dict[str, Any]]
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    models: list[str] = dataclasses.field(default_factory=lambda: ["small_cnn"])
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["digits"])
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "grid"
    description: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GridConfig":
        """Build from the TOML layout (``model``/``dataset`` may be a string or a list).

        Raises
        ------
        ConfigError
            Unknown keys or wrong types (naming the key).
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"grid config: expected a table, got {type(d).__name__}")
        allowed = {"name", "description", "model", "models", "dataset", "datasets", "seeds", "train", "regularizers"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"grid config: unknown key(s) {', '.join(map(repr, unknown))}; expected "
                              f"{', '.join(sorted(allowed))}")

        def _list(key: str, alt: str, default: list) -> list:
            value = d.get(key, d.get(alt, default))
            value = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
            if not isinstance(value, list) or not value:
                raise ConfigError(f"grid config: {key!r} must be a non-empty list, got {value!r}")
            return list(value)

        regs = d.get("regularizers")
        if not isinstance(regs, list) or not regs or not all(isinstance(r, Mapping) and "name" in r for r in regs):
            raise ConfigError("grid config: 'regularizers' must be a non-empty list of tables each with a 'name' "
                              f"(e.g. [[regularizers]] name = \"mixup\" strengths = [1.0]), got {regs!r}")
        train = d.get("train", {})
        if not isinstance(train, Mapping):
            raise ConfigError(f"grid config: 'train' must be a table of TrainConfig fields, got {train!r}")
        return cls(regularizers=[dict(r) for r in regs], seeds=_list("seeds", "seed", [0]),
                   models=_list("models", "model", ["small_cnn"]), datasets=_list("datasets", "dataset", ["digits"]),
                   train=dict(train), name=str(d.get("name", "grid")), description=str(d.get("description", "")))

    def to_dict(self) -> dict[str, Any]:
        """The TOML layout as a dict (``from_dict(to_dict())`` round-trips)."""
        return {"name": self.name, "description": self.description, "models": list(self.models),
                "datasets": list(self.datasets), "seeds": list(self.seeds), "train": dict(self.train),
                "regularizers": [dict(r) for r in self.regularizers]}

    def expand(self, *, check_data: bool = True, **overrides: Any) -> list[TrainConfig]:
        """All runs of the grid as validated :class:`TrainConfig` (``overrides`` replace shared fields).

        Raises
        ------
        ConfigError
            Any invalid run (naming it) or duplicate run ids, before anything is trained.
        """
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        shared = {**self.train, **{k: v for k, v in overrides.items() if v is not None}}
        bad = sorted(set(shared) - fields)
        for key in ("run_id", "regularizer", "seed", "model", "dataset"):
            if key in shared:
                bad.append(key)
        if bad:
            raise ConfigError(f"grid config [train]: key(s) {', '.join(map(repr, bad))} not allowed; expected "
                              f"TrainConfig fields other than run_id, regularizer, seed, model, dataset")
        multi = len(self.models) > 1 or len(self.datasets) > 1
        configs: list[TrainConfig] = []
        checked: set[tuple[str, Any]] = set()
        for dataset in self.datasets:
            for model in self.models:
                for entry in self.regularizers:
                    entry = dict(entry)
                    name = entry.pop("name")
                    tag = entry.pop("tag", None)
                    strengths = entry.pop("strengths", entry.pop("strength", None))
                    bad = sorted((set(entry) - fields) | (set(entry) & {"run_id", "regularizer", "seed", "model",
                                                                            "dataset"}))
                    if bad:
                        raise ConfigError(f"grid config regularizer {name!r}: key(s) "
                                          f"{', '.join(map(repr, bad))} not allowed; expected name, strengths, tag "
                                          "or TrainConfig fields other than run_id, regularizer, seed, model, dataset")
                    comps = _parse_regularizer(name)
                    main = REGULARIZERS[comps[0]]
                    if strengths is None:
                        strengths = [None]
                    elif main is None:
                        raise ConfigError(f"grid config regularizer 'ce': takes no strengths, got {strengths!r}")
                    elif not isinstance(strengths, list):
                        strengths = [strengths]
                    for strength in strengths:
                        for seed in self.seeds:
                            kw = {**shared, **entry, "regularizer": name, "seed": seed, "model": model,
                                  "dataset": dataset}
                            if strength is not None:
                                kw[main] = strength
                            try:
                                cfg = TrainConfig(**kw)
                                cfg = cfg.validate(check_data=False)
                            except TypeError as exc:
                                raise ConfigError(f"grid config regularizer {name!r}: {exc}") from None
                            except ConfigError as exc:
                                raise ConfigError(f"grid config, run {name!r} strength={strength!r} seed={seed!r}: "
                                                  f"{exc}") from None
                            reg_part, _, seed_part = cfg.default_run_id().rpartition("-")
                            run_id = f"{reg_part}_{tag}-{seed_part}" if tag else f"{reg_part}-{seed_part}"
                            if multi:
                                run_id = f"{dataset}-{model}-{run_id}"
                            cfg = dataclasses.replace(cfg, run_id=run_id).validate(check_data=False)
                            key = (cfg.dataset, cfg.data_root)
                            if check_data and key not in checked:
                                _data.check_dataset(*key)
                                checked.add(key)
                            configs.append(cfg)
        ids = [c.run_id for c in configs]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"grid config: duplicate run ids {dup}; give the entries distinct 'tag' values")
        return configs


def load_grid(path: str | os.PathLike) -> GridConfig:
    """Read a grid from a TOML file (layout: ``docs/training.md`` and ``pipelines/*.toml``).

    Raises
    ------
    ConfigError
        Missing file, TOML syntax error or invalid layout.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid config: {str(path)!r} {'is a folder' if path.is_dir() else 'not found'} (expected "
                          "a TOML file such as pipelines/digits_default.toml)")
    d = read_toml(path, error=ConfigError, what="grid config")
    return GridConfig.from_dict(d)


#: The default preset (identical to ``pipelines/digits_default.toml``; tested): 4 regularizers x 3 seeds
#: on digits with the small CNN, long enough without weight decay that the ce baseline is overconfident.
DEFAULT_PRESET: dict[str, Any] = {
    "name": "digits_default",
    "description": "Default preset: ce, label smoothing 0.1, mixup 1.0, cutmix 1.0 x 3 seeds on digits (small CNN).",
    "dataset": "digits",
    "model": "small_cnn",
    "seeds": [0, 1, 2],
    "train": {"epochs": 100, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
              "schedule": "cosine", "weight_decay": 0.0, "dropout": 0.0, "max_train_samples": 200,
              "device": "cpu", "num_threads": 1},
    "regularizers": [
        {"name": "ce"},
        {"name": "label_smoothing", "strengths": [0.1]},
        {"name": "mixup", "strengths": [1.0]},
        {"name": "cutmix", "strengths": [1.0]},
    ],
}


def default_grid() -> GridConfig:
    """The default preset as a :class:`GridConfig` (available without the repository's ``pipelines/``)."""
    return GridConfig.from_dict(DEFAULT_PRESET)


def _train_task(config: dict[str, Any], out_dir: str, progress: bool = False) -> str:
    """One run of `run_grid` (on a worker, or here): train or resume it; returns the run folder."""
    return str(train_run(TrainConfig.from_dict(config), out_dir, progress=progress))


class _Inline:
    """A future whose ``result()`` runs the call here (the executor of a grid trained in this process)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._fn, self._args = fn, args

    def result(self) -> Any:
        return self._fn(*self._args)


@contextlib.contextmanager
def _grid_executor(scheduler: Any, executor: Any) -> Iterator[Any]:
    """The executor of `run_grid` (None: train here), from its ``scheduler`` / ``executor`` arguments."""
    if executor is not None:
        yield executor
        return
    if scheduler is False:
        yield None
        return
    if scheduler is None or scheduler is True:
        active = _dask.active_client()
        if active is not None or scheduler is None:
            yield active
            return
        scheduler = None  # True outside a client block: a new LocalCluster
    with _dask.client(scheduler) as c:
        yield c


def run_grid(grid: GridConfig | str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True, *,
             overrides: Mapping[str, Any] | None = None, scheduler: Any = None, executor: Any = None) -> list[Path]:
    """Train every run of ``grid`` into ``OUT/runs/``; finished runs are skipped, partial ones resumed.

    The one grid runner: here one run after the other, or one run per task on an executor (a Dask
    cluster, or any ``concurrent.futures.Executor``). `causalgeom.scale.run_grid` is this function with
    a cluster by default.

    Parameters
    ----------
    grid : GridConfig or path to a TOML file
    out_dir : path
    progress : bool
        tqdm bars over runs (and over epochs when training here).
    overrides : dict, optional
        Shared TrainConfig fields replacing the grid's (e.g. ``{"device": "cuda", "data_root": "/data"}``).
    scheduler : str, dask.distributed.Client or bool, optional
        Dispatch the runs to a Dask cluster, one run per task: a scheduler address, ``"local[:N]"``, a Client
        (see `causalgeom.scale.client`), or True (the enclosing client block's cluster, else a new
        LocalCluster). Default None: the cluster of an enclosing ``causalgeom.scale.client()`` block if
        any, else train here one run after the other. False: always train here.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Submit the runs to this (``executor.submit(fn, config_dict, out_dir)``); workers must see ``out_dir``.
        Exclusive with ``scheduler``.

    Returns
    -------
    list of pathlib.Path
        The run folders, in grid order.

    Raises
    ------
    ConfigError
        Any invalid run or missing dataset, before the first run starts.
    WorkerLostError
        A run kept killing its Dask worker (finished runs are kept; re-run to resume the others).

    Notes
    -----
    Every run is validated before any starts. A run locked by another process is skipped with a warning.
    A run that fails does not stop the others; the first failure is raised once all have been tried.
    """
    if executor is not None:
        if scheduler not in (None, False):
            raise ConfigError("run_grid: give scheduler or executor, not both")
        if not callable(getattr(executor, "submit", None)):
            raise ConfigError(f"executor: expected an object with submit(fn, *args) (a concurrent.futures "
                              f"Executor or a dask.distributed.Client), got {type(executor).__name__}")
    if not isinstance(grid, GridConfig):
        grid = load_grid(grid)
    configs = grid.expand(**dict(overrides or {}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "grid.json", json.dumps(grid.to_dict(), indent=2).encode())
    dirs = [out / "runs" / str(cfg.run_id) for cfg in configs]
    todo = [cfg for cfg, d in zip(configs, dirs) if run_status(d) != "done"]
    for cfg in configs:
        if cfg not in todo:
            log.info("skip %s (done)", cfg.run_id)
    if not todo:
        return dirs
    first: Exception | None = None
    with _grid_executor(scheduler, executor) as ex:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            where = "" if ex is None else f" ({type(ex).__name__})"
            bar = tqdm(total=len(todo), desc=f"grid {grid.name}{where}", unit="run", file=sys.stderr,
                       dynamic_ncols=True)
        try:
            if ex is None:
                futures = [_Inline(_train_task, cfg.to_dict(), str(out), progress) for cfg in todo]
            elif _dask.is_dask_client(ex):  # pure=False: a re-run trains again; a unique key per submission
                futures = [ex.submit(_train_task, cfg.to_dict(), str(out), pure=False,
                                     key=f"causalgeom-train-{cfg.run_id}-{os.urandom(4).hex()}") for cfg in todo]
            else:
                futures = [ex.submit(_train_task, cfg.to_dict(), str(out)) for cfg in todo]
            for cfg, fut in zip(todo, futures):
                try:
                    with _dask.worker_loss_translated(f"training run {cfg.run_id!r}"):
                        fut.result()
                except StoreLockedError as exc:
                    warnings.warn(f"skip {cfg.run_id}: {exc}", RuntimeWarning, stacklevel=2)
                except Exception as exc:  # noqa: BLE001 - re-raised after the other runs were tried
                    log.error("run %s failed: %s", cfg.run_id, exc)
                    first = first or exc
                if bar is not None:
                    bar.set_postfix_str(cfg.run_id)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    if first is not None:
        raise first
    return dirs
