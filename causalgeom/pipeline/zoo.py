"""Zoo studies: several public checkpoints scored on the same images, one run per checkpoint.

A zoo file (TOML) lists checkpoints and labels them::

    name = "zoo_resnet50_imagenet"
    control = "tv_in1k"                 # the id of the control arm

    [[models]]
    id = "tv_in1k"                      # run id (and, unless labels.regularizer is given, the arm)
    model = "torchvision:resnet50"      # anything causalgeom.pipeline.models.load takes, or a `causalgeom train` run
                                        # folder / its checkpoint.pt (without arch)
    weights = "IMAGENET1K_V1"
    labels = { recipe = "torchvision v1", loss = "ce", label_smoothing = 0.0, mixup = 0.0, cutmix = 0.0 }
    # preprocess = "cifar10"            # local state dicts and weights = "none" only (see causalgeom.preprocess)
    # attrs = { seed = 1, strength = 0.1 }   # run attributes (override the labels and the defaults)

:func:`extract_zoo` loads every entry with :func:`causalgeom.pipeline.models.load`, scores it on the same images (the same
sample ids, checked by digest) with its own preprocessing, and writes one run per entry into a study folder.
Each arm holds ONE model: a comparison of arms is conditional on these checkpoints (the model-conditional
estimand, paired by image); it says nothing about the recipes in general (see ``docs/zoo.md``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .._util.io import read_toml
from ..errors import ConfigError

__all__ = ["ZOO_KEYS", "ENTRY_KEYS", "LABEL_KEYS", "read_zoo", "extract_zoo", "load_entry", "missing_weights",
           "is_random_weights"]

ZOO_KEYS = ("name", "description", "control", "models")
ENTRY_KEYS = ("id", "model", "weights", "arch", "num_classes", "head", "labels", "preprocess", "attrs")
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
    cfg = read_toml(path, error=ConfigError, what="zoo file")
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
        extra = e.get("attrs", {})
        if not isinstance(extra, Mapping):
            raise ConfigError(f"zoo file {path}: models[{i}].attrs: expected a table, got {extra!r}")
        e = {**e, "labels": dict(labels), "attrs": dict(extra)}
        if "preprocess" in e:  # checked here, so that a bad spec stops the study before any extraction
            from .preprocess import parse_preprocess

            parse_preprocess(e["preprocess"], where=f"zoo file {path}: models[{i}].preprocess")
        e["where"] = f"zoo file {path}: models[{i}] ({rid})"
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


def is_random_weights(weights: Any) -> bool:
    """``weights = "none"`` (CLI ``--weights none``): the architecture with its random initialization."""
    return isinstance(weights, str) and weights.strip().lower() == "none"


def _preprocess_of(e: Mapping[str, Any], what: str, flag: str) -> Any:
    """The entry's explicit :class:`~causalgeom.pipeline.preprocess.Preprocess`, required here."""
    from .preprocess import PRESETS, parse_preprocess

    if e.get("preprocess") is None:
        where = e.get("where")
        raise ConfigError(
            f"{flag}: {what} brings no preprocessing of its own, and ImageNet statistics are not assumed; pass "
            f"{flag} with a preset ({', '.join(PRESETS)}) or resize=N,crop=N,mean=R,G,B,std=R,G,B,interpolation=NAME"
            + (f" ({where}: a preprocess key)" if where else " (zoo files: a preprocess key in the entry)"))
    return parse_preprocess(e["preprocess"], where=flag)


def load_entry(e: Mapping[str, Any], download: bool = False, *, num_classes: int | None = None, seed: int = 0,
               flag: str = "--preprocess") -> tuple[Any, Any, dict[str, Any]]:
    """``(model in eval mode, preprocess, provenance attrs)`` of one checkpoint entry.

    Parameters
    ----------
    e : mapping
        The keys of :data:`ENTRY_KEYS` (``model`` required). torchvision weights and timm models keep their own
        transforms (``preprocess`` is refused for them); a local state dict (``model`` a file, with ``arch``)
        and ``weights = "none"`` need ``preprocess`` (:func:`causalgeom.pipeline.preprocess.parse_preprocess`);
        a ``causalgeom train`` run folder keeps its training input (``preprocess`` refused).
    download : bool
        Let torch.hub / the Hugging Face hub download absent weights.
    num_classes : int, optional
        K of random weights when the entry gives none (default: the entry's ``num_classes``, else 1000).
    seed : int
        Seed of the random initialization (``weights = "none"``; torch's global generator is forked, not set).
    flag : str
        The option named in errors about the preprocessing (a zoo entry: its ``preprocess`` key).

    Returns
    -------
    tuple
        ``info`` holds ``model_name``, ``weights``, ``weights_file``, ``num_classes``, ``loss``, ``confidence``
        and ``preprocess`` (the preprocessing used, as text); random weights add ``init_seed``.
    """
    from . import models as _models
    from .preprocess import describe_transform

    model_spec, weights = str(e["model"]), e.get("weights")
    own = model_spec.startswith(("torchvision:", "timm:"))
    if _is_causalgeom_run(model_spec, e.get("arch")) and not is_random_weights(weights):
        import torch
        from torchvision.transforms import v2

        from .train import load_checkpoint

        if e.get("preprocess") is not None:
            raise ConfigError(f"{flag}: {model_spec} is a causalgeom training run; it keeps its training input "
                              "(its normalization is inside the model), so no preprocessing applies")
        model, config = load_checkpoint(model_spec)
        spec = config.get("model_spec") or {}
        preprocess = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        if spec.get("in_channels") == 1:
            preprocess = v2.Compose([v2.Grayscale(1), preprocess])
        info = {"model_name": f"causalgeom:{spec.get('name', config.get('model'))}",
                "weights": str(config.get("run_id", "")), "weights_file": str(model_spec),
                "num_classes": int(model.head.out_features), "loss": "ce", "confidence": "softmax",
                "trained_regularizer": str(config.get("regularizer", "")),
                "preprocess": "causalgeom training run: pixels in [0, 1], no resize; normalization inside the model"}
        return model, preprocess, info
    if is_random_weights(weights):
        import torch

        arch = model_spec if own else e.get("arch")
        if arch is None:
            raise ConfigError("--weights none: random weights need an architecture: --model torchvision:NAME or "
                              "timm:NAME (or --arch NAME)")
        family, _, name = str(arch).partition(":")
        arch = f"{family}:{name.partition('.')[0]}" if family == "timm" else str(arch)
        pre = _preprocess_of(e, f"random weights of {arch}", flag)
        k = int(e.get("num_classes") or num_classes or 1000)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = _models._build_arch(arch, k)
        model = _models.wrap(net, mean=pre.mean, std=pre.std, head=e.get("head"), what=arch)
        model.eval()
        info = {"model_name": arch, "weights": "none", "weights_file": "", "num_classes": k,
                "init": "random (the architecture's default initialization; no trained weights)",
                "init_seed": int(seed), "loss": "unknown", "confidence": "softmax", "preprocess": pre.spec()}
        setattr(model, _models.LOAD_ATTRS, info)
        return model, pre.transform(len(pre.mean)), dict(info)
    if own:
        if e.get("preprocess") is not None:
            raise ConfigError(f"{flag}: {model_spec} brings its own preprocessing (its weights' transforms); "
                              f"{flag} applies to local checkpoints (a file with --arch) and to --weights none")
        model, preprocess = _models.load(model_spec, weights, arch=e.get("arch"), num_classes=e.get("num_classes"),
                                         head=e.get("head"), download=download)
        info = dict(getattr(model, _models.LOAD_ATTRS))
        norm = model.normalize
        info["preprocess"] = describe_transform(preprocess, norm.mean.flatten().tolist(), norm.std.flatten().tolist(),
                                                f"{info['model_name']} {info['weights']} transforms")
        return model, preprocess, info
    pre = _preprocess_of(e, f"a local checkpoint ({model_spec})", flag)
    model, _ = _models.load(model_spec, weights, arch=e.get("arch"), num_classes=e.get("num_classes"),
                            head=e.get("head"), download=download, mean=pre.mean, std=pre.std)
    info = dict(getattr(model, _models.LOAD_ATTRS))
    info["preprocess"] = pre.spec()
    return model, pre.transform(len(pre.mean)), info


def missing_weights(e: Mapping[str, Any], download: bool = False) -> str | None:
    """Where the weights of entry ``e`` are expected, when they are not there (None: present or downloadable).

    Only looks at files (loads nothing): a local state dict, torchvision's torch.hub cache file, timm's Hugging
    Face cache entry. Errors other than absent weights (unknown names...) are left to :func:`load_entry`.
    """
    from ..errors import WeightsNotFoundError
    from . import models as _models

    model_spec, weights = str(e["model"]), e.get("weights")
    label = f"{e.get('id', model_spec)}: {model_spec}"
    if download or is_random_weights(weights) or _is_causalgeom_run(model_spec, e.get("arch")):
        return None
    try:
        if model_spec.startswith("torchvision:"):
            w = _models._tv_weights(model_spec.partition(":")[2], weights)
            file = _models.torch_hub_file(w.url)
            return None if file.is_file() else f"{label} {w.name}: expected {file} (from {w.url})"
        if model_spec.startswith("timm:"):
            if weights is not None:
                return None if Path(weights).expanduser().is_file() else f"{label}: expected {weights}"
            import timm

            spec = model_spec.partition(":")[2]
            cfg = timm.models.get_pretrained_cfg(spec)
            if cfg is None:
                return None
            try:
                _models._timm_file(spec, cfg, False)
            except WeightsNotFoundError:
                repo = getattr(cfg, "hf_hub_id", None)
                if not repo:
                    return f"{label}: expected a local file (--weights PATH) from {cfg.url}"
                slug = "models--" + repo.replace("/", "--")
                return (f"{label}: expected {_models._hf_cache_dir()}/{slug}/snapshots/REVISION/model.safetensors "
                        f"(huggingface-cli download {repo})")
            return None
    except (ConfigError, ImportError, RuntimeError):
        return None
    path = Path(model_spec).expanduser()
    return None if path.is_file() else f"{label}: expected the file {path}"


def extract_zoo(zoo: str | os.PathLike | Mapping[str, Any], data: str, out: str | os.PathLike, *,
                limit: int | None = None, seed: int = 0, class_map: Any = None, download: bool = False,
                attacks: Any = "reference", eps: Any = None, progress: bool = True, **kwargs: Any) -> list[Path]:
    """Extract every checkpoint of a zoo file on the same images into the study folder ``out``.

    Parameters
    ----------
    zoo : path or dict
        A zoo file (:func:`read_zoo`) or its parsed content.
    data : str
        ``imagefolder:DIR``, ``cifar10:DIR`` or ``cifar100:DIR`` (:func:`causalgeom.pipeline.data.open_eval_data`).
    out : path-like
        Study folder; run ``ID`` goes to ``out/ID.zarr``. A complete store is skipped unless ``mode="w"``.
    limit, seed, class_map
        As in :func:`causalgeom.pipeline.data.open_eval_data`: every entry scores the same subset.
    download : bool
        Let torch.hub / the Hugging Face hub download absent weights (default: caches only).
    attacks, eps, progress, **kwargs
        Passed to :func:`causalgeom.pipeline.extract.extract` (batch_size, device, amp, num_workers, mode...).

    Returns
    -------
    list of pathlib.Path
        One store per entry, in file order. Run attrs: ``run_id`` (the entry id), ``regularizer`` (the
        ``regularizer`` label, else the id: one arm per checkpoint), ``strength`` 0, no ``seed`` (unknown:
        never 0) and no ``init_digest``, the labels, ``model`` (= ``model_name``), ``model_name``/``weights``/``weights_file``, ``loss`` and ``confidence``
        (``"sigmoid"`` for BCE-trained checkpoints), ``zoo``/``zoo_control``, ``dataset`` (the data spec),
        ``split`` ``"eval"``, ``sample_ids_sha256`` (equal for every run), ``preprocess`` (the preprocessing
        used), then the entry's ``attrs`` table (which overrides any of these).

    Raises
    ------
    WeightsNotFoundError
        Before anything is extracted: every entry whose weights are absent, each with its expected path.
    """
    from ..dump.store import is_complete
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
    todo = [e for e in cfg["models"] if overwrite or not is_complete(out / f"{e['id']}.zarr")]
    missing = [m for m in (missing_weights(e, download) for e in todo) if m]
    if missing:
        from ..errors import WeightsNotFoundError

        raise WeightsNotFoundError(
            f"zoo {cfg['name']}: the weights of {len(missing)} of {len(cfg['models'])} entries are not cached: "
            + "; ".join(missing) + ". Save each file there (torch.hub cache: $TORCH_HOME/hub/checkpoints; Hugging "
            "Face cache: $HF_HUB_CACHE), or allow downloading (--download)")
    n_classes: int | None = None
    for i, e in enumerate(cfg["models"]):
        target = out / f"{e['id']}.zarr"
        if already_extracted(target, overwrite=overwrite, progress=progress, tag="zoo",
                             features_dtype=kwargs.get("features_dtype")):
            paths.append(target)
            continue
        if n_classes is None and is_random_weights(e.get("weights")):
            n_classes = len(set(open_eval_data(data, None, class_map=class_map).classes))
        model, preprocess, info = load_entry(e, download, num_classes=n_classes, seed=seed,
                                             flag=f"{e['where']}.preprocess" if e.get("where") else "--preprocess")
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
                 "data_seed": seed, **e.get("attrs", {})}
        if progress:
            print(f"[zoo] {e['id']} ({i + 1}/{len(cfg['models'])}): {e['model']} {e.get('weights') or ''}",
                  file=sys.stderr)
        paths.append(extract(model, dataset, target, attacks=attacks, eps=eps, attrs=attrs, progress=progress,
                             **kwargs))
    return paths
