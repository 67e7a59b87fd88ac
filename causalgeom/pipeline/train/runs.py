"""A run folder: its files, checkpoints (save, resume, `load_checkpoint`), curves, lock, RNG state and `init_digest`."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import models as _models
from ..._util.io import atomic_write, file_lock
from ...errors import ConfigError
from .config import TrainConfig


CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
CURVES = "curves.csv"
DONE = "DONE"
_CURVE_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "calib_nll", "calib_acc", "calib_confidence",
                 "seconds")


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
    from ...dump.schema import package_versions

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


def _optimizer_state_cpu(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = optimizer.state_dict()
    state["state"] = {k: {n: (v.detach().cpu() if torch.is_tensor(v) else v) for n, v in s.items()}
                      for k, s in state["state"].items()}
    return state


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
