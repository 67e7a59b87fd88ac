"""Training grids: `GridConfig` (TOML), `DEFAULT_PRESET` and `run_grid` (inline or on a Dask cluster)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .. import data as _data
from ..._util import dask as _dask
from ..._util.io import atomic_write, read_toml
from ...errors import ConfigError, StoreLockedError
from .config import REGULARIZERS, TrainConfig, _parse_regularizer
from .loop import train_run
from .runs import run_status

log = logging.getLogger(__name__)


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
