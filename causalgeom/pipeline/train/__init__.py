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

The package is split by concern: `config` (`TrainConfig` and its validation), `loop` (soft targets, the
training loop, `evaluate`, `train_run`), `runs` (a run folder: checkpoints, curves, lock, RNG state,
`init_digest`, `load_checkpoint`) and `grid` (`GridConfig`, `DEFAULT_PRESET`, `run_grid`). Every public name is
imported from here (``from causalgeom.pipeline.train import run_grid``).
"""

from __future__ import annotations

from .config import REGULARIZERS, TrainConfig
from .grid import DEFAULT_PRESET, GridConfig, default_grid, load_grid, run_grid
from .loop import SoftTargets, evaluate, soft_cross_entropy, train_run
from .runs import CHECKPOINT, CONFIG, CURVES, DONE, init_digest, load_checkpoint, run_status

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
