"""Extraction: model + data → one Zarr store of features, logits, labels, head and attack outcomes.

``cg.extract(model, data, out)`` streams batches into a Zarr (format 3) store laid out exactly as
:func:`causalgeom.save` writes it (so :func:`causalgeom.open` reads it): the store is created up
front with its final shapes, each chunk-aligned block of samples is written by a background
writer thread as soon as it is computed (bounded queue, bounded memory), and each finished
chunk leaves a marker in ``OUT/.progress/`` so an interrupted extraction resumes where it
stopped. The completion mark is written only when every chunk is done; with
``shard=(rank, world)`` several processes fill disjoint chunk ranges of one store and the last
one to finish marks it complete.

The public entry point is the function :func:`extract`, also reached as ``cg.extract`` through the package
facade (docs/CONTRACTS.md); its options can be grouped in an :class:`ExtractConfig`. The other public names of
this package are imported from here (``from causalgeom.pipeline.extract import extract_runs``).

The package is split by concern: `options` (`ExtractConfig`, its checks, the resolved job), `sources` (the data
cut into chunk-aligned batches), `writer` (the store's skeleton and layout, progress markers, preparation,
completion, the writer thread), `loop` (the batch loop: feature-layer hooks, attacks) and `runs` (training runs
as input). This module holds the three entry points: `extract`, `extract_checkpoint` and `extract_runs`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from torch import nn

from .. import attacks as _attacks
from ..._util import torch as _torch_util
from ...errors import ConfigError, StoreError
from ..models import find_head
from ...dump.schema import SCHEMA_VERSION, check_run_id, normalize_attrs
from ...dump.store import DEFAULT_COMPRESSOR, is_complete, store_lock
from .loop import _named_module, _probe_layer, _run
from .options import (DEFAULT_BATCH_SIZE, PROGRESS_DIR, ExtractConfig, _amp_modes, _base_seed, _default_chunk,
                      _default_run_id, _digest, _Job, _package_versions, _shard)
from .runs import _check_input_shape, _dataset, _find_runs, _load, _run_attrs, already_extracted
from .sources import _make_source
from .writer import (_FEATURE_STORE_DTYPE, _AlreadyComplete, _complete_same_plan, _finalize, _layout, _plan_digest,
                     _prepare_store, _template)

if TYPE_CHECKING:  # xarray is imported where a store is built
    import xarray as xr

__all__ = ["extract", "ExtractConfig", "find_head", "extract_checkpoint", "extract_runs", "PROGRESS_DIR",
           "DEFAULT_BATCH_SIZE"]


def extract(model: nn.Module, data: Any, out: str | os.PathLike, config: ExtractConfig | None = None,
            **options: Any) -> Path:
    """Run ``model`` over ``data`` and stream a schema-v1 run into the Zarr store ``out``.

    Recorded per sample: ``features`` (exact input of the final linear layer, captured by a
    forward pre-hook in eval mode), ``logits`` (model output), ``label``; once: ``head_weight`` /
    ``head_bias``; with attacks: ``adv_correct``, ``adv_margin``, ``min_flip_eps`` (and with
    ``save_adv``: ``adv_features``, ``adv_logits``) from :func:`causalgeom.pipeline.attacks.sweep` semantics
    (monotone-ε rule, see ``docs/attacks.md``).

    Parameters
    ----------
    model : nn.Module
        Takes pixel-space input in [0, 1] (normalization inside the model), returns logits (n, K)
        equal to the output of its final ``nn.Linear``. Moved to ``device``; run in eval mode
        (its train/eval flags are restored afterwards).
    data : Dataset, DataLoader, or (x, y) tensors
        Map-style, fixed order (a shuffling DataLoader is refused). Batches are (x, y) pairs.
    out : path-like
        Store folder (conventionally ``RUN_ID.zarr``); parent folders are created.
    config : ExtractConfig, optional
        The options below as one object; keywords given as well replace its fields.
    head : str, optional
        Qualified name of the final linear layer (default: :func:`find_head`).
    feature_layer : str, optional
        Qualified name of any module whose output is stored as ``features`` (averaged over its spatial dims when
        it has them, `causalgeom.pipeline.models.pool_features`; ``adv_features`` likewise), recorded in the attribute
        ``feature_layer``. When that output is exactly the head's input (checked on the first batch), the head is
        stored as usual; otherwise ``head_weight`` / ``head_bias`` are not stored and the run is analysed as a
        run without a head (geometry with mean class centers, calibration, robustness, mediation). Default: the
        head's input.
    attacks : attack(s), optional
        Anything :func:`causalgeom.pipeline.attacks.resolve` takes (attacks, torchattacks objects, spec
        strings, :data:`causalgeom.pipeline.attacks.REFERENCE`). None: no attack outcomes, unless ``eps``
        is given (then PGD L-inf with default settings).
    eps : float or list of float, optional
        ε grid (default: the presets' grids, else :data:`causalgeom.pipeline.attacks.STANDARD_EPS`).
    batch_size : int, optional
        Default: the DataLoader's batch size, else 256.
    device : str or torch.device
    attrs : mapping, optional
        Provenance (``run_id``, ``regularizer``, ``strength``, ``seed``, ``dataset``, ``split``...).
        ``run_id`` defaults to the store's name without ``.zarr``.
    shard : (rank, world), optional
        Fill only this process's contiguous share of the sample chunks; the last shard to finish
        marks the store complete. Every shard must be called with the same arguments. A shard that
        finds the store complete with the same plan (its digest is kept in the completion mark) returns
        it: shards with no chunk, late shards and shards that finish first all end cleanly.
    amp : bool or {"clean", "all"}
        True/"clean": bf16 autocast for the clean pass; the logits are then recomputed in fp32 from
        the captured features with the head's weights. "all": also for attack passes. Default
        False: everything in fp32.
    progress : bool
        Show a progress bar (tqdm).
    mode : {"w-", "w"}
        "w-" (default): create the store, or resume an unfinished extraction with the same
        settings; a complete store raises :class:`StoreExistsError`. "w": start over (not with
        ``shard``).
    save_adv : bool
        Also store ``adv_features`` (A, E, N, F) and ``adv_logits`` (A, E, N, K).
    sample_chunk : int, optional
        Samples per Zarr chunk (the unit of writing, resuming and sharding). Default: a multiple
        of ``batch_size`` of about 32 MiB for the widest variable, at most 4096 samples.
    generator : torch.Generator or int, optional
        Seeds the attacks' randomness; each chunk gets its own generator derived from this seed
        and the chunk index, so resumed and sharded extractions equal an uninterrupted one.
    num_workers : int, optional
        DataLoader workers (default: the DataLoader's, else 0).
    queue_size : int
        Batches waiting for the writer thread at most (bounds memory).
    compressor : {"none", "blosc-lz4", "zstd"}, optional
        Chunk compressor of the store (`causalgeom.dump.store.COMPRESSORS`; default ``"none"``, the fastest to read,
        docs/benchmarks.md); every chunk keeps its CRC32C checksum. Part of the plan: a resume must use the same.
    features_dtype : {"float32", "float16", "bfloat16"}
        Precision ``features`` are stored at (default ``"float32"``; ``None`` is the same); half precision halves
        their bytes. Each batch is rounded to nearest even by torch (``.to(torch.float16 / torch.bfloat16)``);
        float16 is a float16 Zarr array, bfloat16 (which Zarr lacks) its uint16 bit patterns with the attribute
        ``encoded_dtype="bfloat16"``; both carry ``stored_dtype``, and `causalgeom.open` decodes them to float32
        exactly. A finite feature beyond float16's range (|h| >= 65520) raises ConfigError before its chunk is
        written. logits, the head and ``adv_features`` stay float32. Error bound on rms and cosine:
        docs/methods_metrics.md, "Half-precision features". Part of the plan: a resume must use the same.

    Returns
    -------
    pathlib.Path
        The store; complete unless ``shard`` is given and other shards are still running.

    Raises
    ------
    ConfigError, SchemaError, StoreExistsError, StoreLockedError
    """
    cfg = ExtractConfig.from_options(config, **options)
    cfg.check()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    head, attacks, eps, batch_size, attrs = cfg.head, cfg.attacks, cfg.eps, cfg.batch_size, cfg.attrs
    mode, save_adv, sample_chunk, generator = cfg.mode, cfg.save_adv, cfg.sample_chunk, cfg.generator
    shard_ = _shard(cfg.shard)
    dev = _torch_util.device(cfg.device)
    amp_clean, amp_attack = _amp_modes(cfg.amp)
    if attacks is None and eps is not None:
        attacks = [_attacks.PGD("linf")]
    atks, grid = _attacks.resolve(attacks, eps)
    if save_adv and not atks:
        raise ConfigError("save_adv=True needs attacks (there is nothing adversarial to save)")
    head_name, head_mod = find_head(model, head)
    source = _make_source(data, batch_size, cfg.num_workers)
    n = source.n
    if n == 0:
        raise ConfigError("data: the dataset is empty (0 samples)")
    out = Path(out)
    base_seed = _base_seed(generator)

    W = head_mod.weight.detach().float().cpu().numpy()
    b = None if head_mod.bias is None else head_mod.bias.detach().float().cpu().numpy()
    K, F_ = W.shape
    layer = None
    feature_layer = head_name
    if cfg.feature_layer is not None:
        layer = (cfg.feature_layer, _named_module(model, cfg.feature_layer))
        F_, feeds_head = _probe_layer(model, source, n, layer, head_mod, dev)
        feature_layer = cfg.feature_layer
        if not feeds_head:
            if amp_clean or amp_attack:
                raise ConfigError(f"amp: feature_layer={cfg.feature_layer!r} does not feed the head directly, so the "
                                  "logits cannot be recomputed in fp32 from the features; run without amp")
            W = b = None
    A, E = len(atks), len(grid)
    features_dtype = cfg.features_dtype or "float32"
    per_sample = _FEATURE_STORE_DTYPE[features_dtype].itemsize * F_ + 4 * K + 8 + A * E * 5 + A * 4 + (4 * A * E * (F_ + K) if save_adv else 0)
    chunk = _default_chunk(source.batch_size, per_sample) if sample_chunk is None else int(sample_chunk)
    chunk = min(chunk, n)
    n_chunks = math.ceil(n / chunk)

    user = normalize_attrs(attrs)
    run_id = check_run_id(user.get("run_id", _default_run_id(out)))
    full_attrs: dict[str, Any] = {
        "run_id": run_id, "model": type(model).__name__, "input_range": "[0, 1]", **user,
        "feature_layer": feature_layer, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _package_versions(), "source": "causalgeom.extract",
    }
    if amp_clean:
        full_attrs["logits_source"] = "fp32 head applied to bf16 features (amp)"
    if atks:
        full_attrs["attack_params"] = {a.name: a.params() for a in atks}
        full_attrs["attack_seed"] = base_seed
        full_attrs["attack_amp"] = amp_attack
    full_attrs = normalize_attrs(full_attrs)
    plan = normalize_attrs({
        "n_samples": n, "sample_chunk": chunk, "n_features": F_, "n_classes": K, "feature_layer": feature_layer,
        "attacks": [a.name for a in atks], "attack_params": full_attrs.get("attack_params"), "eps": grid,
        "save_adv": bool(save_adv), "head": _digest(W, b) if W is not None else None, "attack_seed": base_seed, "amp": [amp_clean, amp_attack],
        "compressor": cfg.compressor or DEFAULT_COMPRESSOR, "features_dtype": features_dtype,
        "attrs": {k: v for k, v in full_attrs.items() if k not in ("created", "versions")},
    })

    def build_template() -> xr.Dataset:
        return _template(n, chunk, W, b, atks, grid, save_adv, full_attrs, features_dtype, shape=(K, F_))

    layout = _layout(F_, K, atks, len(grid), save_adv, features_dtype)

    if not out.parent.exists():
        try:
            out.parent.mkdir(parents=True)
        except OSError as exc:
            raise StoreError(f"cannot create folder {out.parent} for store {out}: {exc.strerror}") from None
    if mode == "w-" and is_complete(out) and _complete_same_plan(out, plan, shard_):
        return out  # a late shard: the others completed the store with this plan
    lock_target = out if shard_ is None else out.parent / f"{out.name}.shard-{shard_[0]}-of-{shard_[1]}"
    complete_info = {"n_samples": n, "sample_chunk": chunk, "writer": "causalgeom.extract", "plan": _plan_digest(plan)}
    with store_lock(lock_target):
        prepare = None
        if out.exists() and mode == "w-":  # resume (or refuse) now: the finished chunks must be known
            done = _prepare_store(out, plan, build_template, mode, shard_)
            if done is None:
                return out  # another shard completed the store with this plan meanwhile
        else:  # new store (or start over): created by the writer thread once the first batch is computed
            def prepare() -> bool:
                return _prepare_store(out, plan, build_template, mode, shard_) is not None

            done = set()
        mine = list(range(n_chunks))
        if shard_ is not None:
            mine = [int(c) for c in np.array_split(np.arange(n_chunks), shard_[1])[shard_[0]]]
        todo = [c for c in mine if c not in done]
        if todo:
            try:
                _run(model, source, _Job(out, todo, chunk, n, layout, atks, grid, head_name, head_mod, dev, amp_clean,
                                         amp_attack, save_adv, base_seed, cfg.progress, cfg.queue_size, run_id,
                                         prepare, features_dtype, layer))
            except _AlreadyComplete:
                return out  # another shard completed the store with this plan before this one wrote anything
        elif prepare is not None and not prepare():
            return out  # a shard with no chunk: the others completed the store meanwhile
        _finalize(out, n_chunks, complete_info)
    return out


def extract_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *, split: str = "test",
                       data_root: str | os.PathLike | None = None, dataset: Any = None, **kwargs: Any) -> Path:
    """Extract one trained run (``checkpoint.pt`` or its run folder) with its own dataset split.

    Parameters
    ----------
    checkpoint : path-like
        Loaded with ``causalgeom.pipeline.train.load_checkpoint`` → ``(model, config)``.
    out : path-like
        ``*.zarr``: the store; otherwise a study folder receiving ``RUN_ID.zarr``.
    split : str
        Dataset split (``causalgeom.pipeline.data.load_dataset(config["dataset"], split, root=...)``).
    data_root : path-like, optional
        Overrides ``config["data_root"]``.
    dataset : Dataset, optional
        Use this data instead of loading the split.
    **kwargs
        Passed to :func:`extract` (attacks, eps, batch_size, device, amp, progress, mode, ...).

    Returns
    -------
    pathlib.Path
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ConfigError(f"checkpoint: no file or run folder at {checkpoint}")
    model, config = _load(checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    run_id = str(config.get("run_id") or run_dir.name)
    out = Path(out)
    if out.suffix != ".zarr":
        out = out / f"{run_id}.zarr"
    if dataset is None:
        if "dataset" not in config:
            raise ConfigError(f"checkpoint {checkpoint}: its config has no 'dataset'; pass dataset=")
        dataset = _dataset(config["dataset"], split, data_root if data_root is not None else config.get("data_root"))
    _check_input_shape(config, dataset, checkpoint)
    attrs = {**_run_attrs(config, split, checkpoint), **dict(kwargs.pop("attrs", None) or {})}
    attrs["run_id"] = run_id
    return extract(model, dataset, out, attrs=attrs, **kwargs)


def extract_runs(runs_dir: str | os.PathLike, study_dir: str | os.PathLike | None = None, *, split: str = "test",
                 attacks: Any = _attacks.REFERENCE, eps: Any = None, data_root: str | os.PathLike | None = None,
                 run_ids: Sequence[str] | None = None, progress: bool = True, **kwargs: Any) -> list[Path]:
    """Extract every finished run of a training output folder into one study folder.

    Runs are the folders ``RUNS_DIR/runs/RUN_ID`` (or ``RUNS_DIR/RUN_ID``) holding a ``DONE`` file.
    A run whose store is already complete is skipped whatever settings it was extracted with (pass
    ``mode="w"`` to redo it), except an explicit ``features_dtype`` other than its stored precision, which
    raises `StoreExistsError` (`already_extracted`); an unfinished one is resumed (same settings required).
    Datasets are loaded once per (dataset, split, root).

    Parameters
    ----------
    runs_dir : path-like
        Training output folder (``OUT`` with ``runs/``) or its ``runs`` folder.
    study_dir : path-like, optional
        Default ``OUT/study``.
    split : str
    attacks, eps
        As in :func:`extract` (default: :data:`causalgeom.pipeline.attacks.REFERENCE`; ``None`` for none).
    data_root : path-like, optional
    run_ids : list of str, optional
        Only these runs.
    progress : bool
    **kwargs
        Passed to :func:`extract` (batch_size, device, amp, save_adv, shard, ...).

    Returns
    -------
    list of pathlib.Path
        Store of every selected run (extracted now or before).
    """
    runs_dir = Path(runs_dir)
    runs = _find_runs(runs_dir)
    if run_ids is not None:
        wanted = set(run_ids)
        missing = wanted - {p.name for p in runs}
        if missing:
            raise ConfigError(f"run_ids: no finished runs {sorted(missing)} in {runs_dir}; finished: "
                              f"{[p.name for p in runs]}")
        runs = [p for p in runs if p.name in wanted]
    if not runs:
        raise ConfigError(f"runs_dir: no finished runs (folders with a DONE file) in {runs_dir}")
    root = runs_dir.parent if runs_dir.name == "runs" else runs_dir
    study = Path(study_dir) if study_dir is not None else root / "study"
    study.mkdir(parents=True, exist_ok=True)
    cache: dict[tuple, Any] = {}
    paths = []
    overwrite = kwargs.get("mode") == "w"
    for i, run_dir in enumerate(runs):
        target = study / f"{run_dir.name}.zarr"
        if already_extracted(target, overwrite=overwrite, progress=progress, tag="extract",
                             features_dtype=kwargs.get("features_dtype")):
            paths.append(target)
            continue
        model, config = _load(run_dir)
        run_id = str(config.get("run_id") or run_dir.name)
        target = study / f"{run_id}.zarr"
        if already_extracted(target, overwrite=overwrite, progress=False, tag="extract",
                             features_dtype=kwargs.get("features_dtype")):
            paths.append(target)
            continue
        root_ = data_root if data_root is not None else config.get("data_root")
        key = (config.get("dataset"), split, str(root_))
        if key not in cache:
            if "dataset" not in config:
                raise ConfigError(f"run {run_dir}: its config has no 'dataset'")
            cache.clear()
            cache[key] = _dataset(config["dataset"], split, root_)
        attrs = {**_run_attrs(config, split, run_dir), "run_id": run_id}
        if progress:
            print(f"[extract] {run_id} ({i + 1}/{len(runs)})", file=sys.stderr)
        paths.append(extract(model, cache[key], target, attacks=attacks, eps=eps, attrs=attrs, progress=progress,
                             **kwargs))
    return paths
