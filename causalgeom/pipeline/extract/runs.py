"""Training runs as extraction input: a run's attributes, its checkpoint and dataset, finished runs, complete stores."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

from ...errors import ConfigError, StoreExistsError
from ...dump.store import is_complete, stored_features_dtype


_RUN_ATTR_KEYS = ("run_id", "regularizer", "strength", "regularizer_params", "seed", "model", "dataset",
                  "init_digest")


def _run_attrs(config: Mapping[str, Any], split: str, checkpoint: Path) -> dict[str, Any]:
    attrs = {k: config[k] for k in _RUN_ATTR_KEYS if k in config and config[k] is not None}
    attrs["split"] = split
    attrs["checkpoint"] = str(checkpoint)
    return json.loads(json.dumps(attrs, default=str))


def _load(checkpoint: Path):
    import importlib

    train = importlib.import_module("causalgeom.pipeline.train")
    return train.load_checkpoint(checkpoint)


def _dataset(name: str, split: str, root: Any):
    import importlib

    data = importlib.import_module("causalgeom.pipeline.data")
    return data.load_dataset(name, split, root=root)


def _check_input_shape(config: Mapping[str, Any], dataset: Any, checkpoint: Path) -> None:
    """Refuse data whose images disagree with the input the checkpoint's model spec declares (``in_channels``,
    ``image_size``): a 1-channel image given to a 3-channel model is broadcast by the normalization, silently."""
    spec = config.get("model_spec") if isinstance(config.get("model_spec"), Mapping) else {}
    want_c, want_hw = spec.get("in_channels"), spec.get("image_size")
    if want_c is None and not want_hw:
        return
    try:
        shape = tuple(int(s) for s in dataset[0][0].shape)
    except Exception:  # noqa: BLE001 - an empty or unusual dataset: extract reports what it cannot use
        return
    if len(shape) != 3:
        return
    if want_c is not None and shape[0] != int(want_c):
        raise ConfigError(f"checkpoint {checkpoint}: its model spec declares {int(want_c)} input channel(s), but the "
                          f"data give images of shape {shape} (C, H, W) with {shape[0]}; extract on the data the model "
                          "was trained on (dataset= / --data-root)")
    if want_hw and tuple(int(s) for s in want_hw) != shape[1:]:
        raise ConfigError(f"checkpoint {checkpoint}: its model spec declares images of size {tuple(want_hw)} (H, W), "
                          f"but the data give {shape[1:]}; extract on the data the model was trained on")


def _find_runs(runs_dir: Path) -> list[Path]:
    base = runs_dir / "runs" if (runs_dir / "runs").is_dir() else runs_dir
    if not base.is_dir():
        raise ConfigError(f"runs_dir: no folder at {runs_dir}")
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "DONE").exists())


def already_extracted(target: Path, *, overwrite: bool, progress: bool, tag: str,
                      features_dtype: str | None = None) -> bool:
    """Whether a study's run store ``target`` is complete and must be kept (not ``overwrite``); says so on stderr.

    A complete store is kept whatever settings it was extracted with, except an explicitly asked
    ``features_dtype`` (not None) that differs from the precision its features are stored at: that raises
    `StoreExistsError` (re-extract with ``mode="w"`` / ``--overwrite``, or ask for the stored precision), so a
    study never silently mixes precisions it was not asked for.
    """
    if overwrite or not is_complete(target):
        return False
    if features_dtype is not None:
        stored = stored_features_dtype(target)
        if stored != features_dtype:
            raise StoreExistsError(
                f"store {target} is complete with features stored as {stored}, but features_dtype="
                f"{features_dtype!r} was asked; pass mode='w' (--overwrite) to re-extract it, or "
                f"features_dtype={stored!r} to keep it")
    if progress:
        print(f"[{tag}] {target.name[:-5] if target.name.endswith('.zarr') else target.name}: already extracted, "
              "skipping", file=sys.stderr)
    return True
