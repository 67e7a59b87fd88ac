"""The training loop: soft targets and their loss, batches, augmentation, evaluation, `train_run`."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as _data
from ..._util.io import atomic_write
from ..._util.torch import autocast as _autocast
from ..._util.torch import device as _device
from .config import TrainConfig
from .runs import (CHECKPOINT, CONFIG, CURVES, DONE, _build_from_spec, _config_json, _forked_rng, _model_spec,
                   _resume_checkpoint, _run_lock, _save_checkpoint, _set_rng_state, _write_curves, init_digest)

log = logging.getLogger(__name__)


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


def _train_set(config: TrainConfig) -> torch.utils.data.Dataset:
    """The training split, cut to its first ``max_train_samples`` samples when set."""
    train_set = _data.load_dataset(config.dataset, "train", config.data_root)
    if config.max_train_samples is not None and config.max_train_samples < len(train_set):
        keep = list(range(config.max_train_samples))
        train_set = train_set.subset(keep) if isinstance(train_set, _data.ArrayDataset) else \
            torch.utils.data.Subset(train_set, keep)
    return train_set


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


def _progress(iterable, enabled: bool, config: TrainConfig, initial: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=str(config.run_id), total=config.epochs, initial=initial, unit="ep", leave=False,
                file=sys.stderr, dynamic_ncols=True)
