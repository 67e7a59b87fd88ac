"""Zoo studies: several public checkpoints scored on the same images, one run per checkpoint.

A zoo file (TOML) lists checkpoints and labels them::

    name = "zoo_resnet50_imagenet"
    control = "tv_in1k"                 # the id of the control arm

    [[models]]
    id = "tv_in1k"                      # run id (and, unless labels.regularizer is given, the arm)
    model = "torchvision:resnet50"      # anything causalgeom.models.load takes, or a `causalgeom train` run
                                        # folder / its checkpoint.pt (without arch)
    weights = "IMAGENET1K_V1"
    labels = { recipe = "torchvision v1", loss = "ce", label_smoothing = 0.0, mixup = 0.0, cutmix = 0.0 }

:func:`extract_zoo` loads every entry with :func:`causalgeom.models.load`, scores it on the same images (the same
sample ids, checked by digest) with its own preprocessing, and writes one run per entry into a study folder.
Each arm holds ONE model: a comparison of arms is conditional on these checkpoints (the model-conditional
estimand, paired by image); it says nothing about the recipes in general (see ``docs/zoo.md``).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

__all__ = ["ZOO_KEYS", "ENTRY_KEYS", "LABEL_KEYS", "read_zoo", "extract_zoo"]

ZOO_KEYS = ("name", "description", "control", "models")
ENTRY_KEYS = ("id", "model", "weights", "arch", "num_classes", "head", "labels")
#: Labels every entry may carry (others are kept too); ``loss = "bce"`` flags sigmoid confidences.
LABEL_KEYS = ("regularizer", "recipe", "loss", "label_smoothing", "mixup", "cutmix")


def read_zoo(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a zoo file.

    Returns
    -------
    dict
        ``name``, ``description``, ``control`` (an entry id) and ``models`` (list of entry dicts with the keys
        of :data:`ENTRY_KEYS`; relative local weight paths resolved against the file's folder).

    Raises
    ------
    ConfigError
        Unreadable TOML, unknown keys (the message lists the allowed ones), duplicate or invalid ids, a
        control that is not an entry.
    """
    from ..dump.schema import check_run_id

    path = Path(path)
    try:
        cfg = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"zoo file {path}: cannot read it as TOML: {exc}") from None
    unknown = sorted(set(cfg) - set(ZOO_KEYS))
    if unknown:
        raise ConfigError(f"zoo file {path}: unknown key(s) {unknown}; expected some of {list(ZOO_KEYS)}")
    entries = cfg.get("models")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"zoo file {path}: expected a non-empty [[models]] list")
    seen: list[str] = []
    out = []
    for i, e in enumerate(entries):
        bad = sorted(set(e) - set(ENTRY_KEYS))
        if bad:
            raise ConfigError(f"zoo file {path}: models[{i}] has unknown key(s) {bad}; expected some of "
                              f"{list(ENTRY_KEYS)}")
        for key in ("id", "model"):
            if not isinstance(e.get(key), str):
                raise ConfigError(f"zoo file {path}: models[{i}].{key}: expected a string, got {e.get(key)!r}")
        rid = check_run_id(e["id"])
        if rid in seen:
            raise ConfigError(f"zoo file {path}: duplicate id {rid!r}")
        seen.append(rid)
        labels = e.get("labels", {})
        if not isinstance(labels, Mapping):
            raise ConfigError(f"zoo file {path}: models[{i}].labels: expected a table, got {labels!r}")
        e = {**e, "labels": dict(labels)}
        for key in ("model", "weights"):  # local files (and run folders) relative to the zoo file
            val = e.get(key)
            local = key == "model" and not val.startswith(("torchvision:", "timm:"))
            local = local or (isinstance(val, str) and Path(val).suffix in (".pt", ".pth", ".bin", ".safetensors"))
            if local and not Path(val).expanduser().is_absolute():
                e[key] = str(path.parent / val)
        out.append(e)
    control = cfg.get("control", seen[0])
    if control not in seen:
        raise ConfigError(f"zoo file {path}: control {control!r} is not one of the ids {seen}")
    return {"name": str(cfg.get("name", path.stem)), "description": str(cfg.get("description", "")),
            "control": control, "models": out}


def _is_causalgeom_run(model: str, arch: Any) -> bool:
    p = Path(model).expanduser()
    return arch is None and ((p.is_dir() and (p / "checkpoint.pt").is_file()) or p.name == "checkpoint.pt")


def _load_entry(e: Mapping[str, Any], download: bool) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, preprocess, provenance attrs)`` of one zoo entry: :func:`causalgeom.models.load`, or a
    ``causalgeom train`` run (its folder or ``checkpoint.pt``, no ``arch``) via ``train.load_checkpoint``."""
    from . import models as _models

    if _is_causalgeom_run(e["model"], e.get("arch")):
        import torch
        from torchvision.transforms import v2

        from .train import load_checkpoint

        model, config = load_checkpoint(e["model"])
        spec = config.get("model_spec") or {}
        preprocess = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        if spec.get("in_channels") == 1:
            preprocess = v2.Compose([v2.Grayscale(1), preprocess])
        info = {"model_name": f"causalgeom:{spec.get('name', config.get('model'))}",
                "weights": str(config.get("run_id", "")), "weights_file": str(e["model"]),
                "num_classes": int(model.head.out_features), "loss": "ce", "confidence": "softmax",
                "trained_regularizer": str(config.get("regularizer", ""))}
        return model, preprocess, info
    model, preprocess = _models.load(e["model"], e.get("weights"), arch=e.get("arch"),
                                     num_classes=e.get("num_classes"), head=e.get("head"), download=download)
    return model, preprocess, dict(getattr(model, _models.LOAD_ATTRS))


def extract_zoo(zoo: str | os.PathLike | Mapping[str, Any], data: str, out: str | os.PathLike, *,
                limit: int | None = None, seed: int = 0, class_map: Any = None, download: bool = False,
                attacks: Any = "reference", eps: Any = None, progress: bool = True, **kwargs: Any) -> list[Path]:
    """Extract every checkpoint of a zoo file on the same images into the study folder ``out``.

    Parameters
    ----------
    zoo : path or dict
        A zoo file (:func:`read_zoo`) or its parsed content.
    data : str
        ``imagefolder:DIR``, ``cifar10:DIR`` or ``cifar100:DIR`` (:func:`causalgeom.data.open_eval_data`).
    out : path-like
        Study folder; run ``ID`` goes to ``out/ID.zarr``. A complete store is skipped unless ``mode="w"``.
    limit, seed, class_map
        As in :func:`causalgeom.data.open_eval_data`: every entry scores the same subset.
    download : bool
        Let torch.hub / the Hugging Face hub download absent weights (default: caches only).
    attacks, eps, progress, **kwargs
        Passed to :func:`causalgeom.extraction.extract` (batch_size, device, amp, num_workers, mode...).

    Returns
    -------
    list of pathlib.Path
        One store per entry, in file order. Run attrs: ``run_id`` (the entry id), ``regularizer`` (the
        ``regularizer`` label, else the id: one arm per checkpoint), ``strength`` 0, no ``seed`` (unknown:
        never 0) and no ``init_digest``, the labels, ``model`` (= ``model_name``), ``model_name``/``weights``/``weights_file``, ``loss`` and ``confidence``
        (``"sigmoid"`` for BCE-trained checkpoints), ``zoo``/``zoo_control``, ``dataset`` (the data spec),
        ``split`` ``"eval"``, and ``sample_ids_sha256`` (equal for every run).
    """
    from . import models as _models
    from .data import open_eval_data
    from .extract import already_extracted, extract

    cfg = read_zoo(zoo) if not isinstance(zoo, Mapping) else zoo
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overwrite = kwargs.get("mode") == "w"
    digest: str | None = None
    paths = []
    control_arm = None
    for e in cfg["models"]:
        if e["id"] == cfg["control"]:
            control_arm = str(e["labels"].get("regularizer", e["id"]))
    for i, e in enumerate(cfg["models"]):
        target = out / f"{e['id']}.zarr"
        if already_extracted(target, overwrite=overwrite, progress=progress, tag="zoo",
                             features_dtype=kwargs.get("features_dtype")):
            paths.append(target)
            continue
        model, preprocess, info = _load_entry(e, download)
        labels = dict(e["labels"])
        if "loss" in labels:
            info["loss"] = str(labels["loss"])
            info["confidence"] = "sigmoid" if info["loss"] == "bce" else "softmax"
        dataset = open_eval_data(data, preprocess, num_classes=int(model.head.out_features), limit=limit, seed=seed,
                                 class_map=class_map)
        this = dataset.digest()
        if digest is None:
            digest = this
        elif this != digest:  # cannot happen with one data spec; guards against a folder changed mid-study
            raise ConfigError(f"zoo: entry {e['id']!r} sees other images than the first entry (sample-id digest "
                              f"{this[:12]} vs {digest[:12]}); the folder changed during the study")
        attrs = {**{k: v for k, v in labels.items() if k != "regularizer"}, **info,
                 "run_id": e["id"], "model": info["model_name"],
                 "regularizer": str(labels.get("regularizer", e["id"])), "strength": 0.0,
                 "zoo": cfg["name"], "zoo_control": control_arm, "arm_units": "one model per arm",
                 "dataset": data, "split": "eval", "sample_ids_sha256": this, "data_limit": limit or 0,
                 "data_seed": seed}
        if progress:
            print(f"[zoo] {e['id']} ({i + 1}/{len(cfg['models'])}): {e['model']} {e.get('weights') or ''}",
                  file=sys.stderr)
        paths.append(extract(model, dataset, target, attacks=attacks, eps=eps, attrs=attrs, progress=progress,
                             **kwargs))
    return paths
