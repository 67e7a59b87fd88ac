"""A study: a folder of runs (``RUN_ID.zarr`` stores) with unique run ids and a run table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Union

import pandas as pd
import xarray as xr

from ..errors import ConfigError, IncompleteStoreError, StoreError, StoreExistsError
from .schema import check_run_id
from .store import COMPLETE_ATTR, open as open_run, read_attrs, save

__all__ = ["Study", "StudyLike", "as_study", "open_study", "ATTR_COLUMNS"]

#: Columns of `Study.runs`, in order (attributes missing from a run are NaN).
ATTR_COLUMNS = ("run_id", "model", "dataset", "split", "regularizer", "strength", "regularizer_params", "seed",
                "n_samples", "n_classes", "n_features", "has_head", "attacks", "eps", "path")


_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def _features_itemsize(path: Any) -> int:
    """Bytes per value of a run store's ``features`` (its Zarr metadata; 4 when it cannot be read)."""
    import json

    try:
        meta = json.loads((Path(path) / "features" / "zarr.json").read_text())
        return _ITEMSIZE.get(str(meta.get("data_type")), 4)
    except (OSError, ValueError, TypeError):
        return 4


class Study:
    """A folder of runs. Readers see only complete runs; incomplete ones are listed in `incomplete`.

    Parameters
    ----------
    path : path-like
        The study folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"no study folder at {self.path} (create one with open_study(path, create=True))")
        if not self.path.is_dir():
            raise StoreError(f"study path {self.path} is a file, not a folder")

    # -- discovery -------------------------------------------------------------------------
    def _scan(self) -> tuple[dict[str, Path], dict[str, dict[str, Any]], list[str]]:
        runs: dict[str, Path] = {}
        attrs: dict[str, dict[str, Any]] = {}
        incomplete: list[str] = []
        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith(".") or not entry.name.endswith(".zarr") or not entry.is_dir():
                continue
            try:
                a = read_attrs(entry)
            except StoreError:
                incomplete.append(entry.name)
                continue
            if COMPLETE_ATTR not in a:
                incomplete.append(entry.name)
                continue
            run_id = a.get("run_id")
            if entry.name != f"{run_id}.zarr":
                raise StoreError(f"study {self.path}: folder {entry.name!r} holds run_id {run_id!r}; "
                                 "a run's folder must be named RUN_ID.zarr")
            runs[run_id] = entry
            attrs[run_id] = a
        return runs, attrs, incomplete

    @property
    def run_ids(self) -> list[str]:
        """Ids of the complete runs, sorted."""
        return list(self._scan()[0])

    @property
    def incomplete(self) -> list[str]:
        """Folder names of runs that are not completely written (being written, or crashed)."""
        return self._scan()[2]

    @property
    def runs(self) -> pd.DataFrame:
        """Run table: one row per complete run, columns :data:`ATTR_COLUMNS` plus any other attrs."""
        paths, attrs, _ = self._scan()
        rows = []
        for run_id, a in attrs.items():
            row = {k: v for k, v in a.items() if k not in (COMPLETE_ATTR, "versions", "_ARRAY_DIMENSIONS")}
            ds = xr.open_zarr(paths[run_id], consolidated=False, zarr_format=3, chunks={})
            row.update(n_samples=ds.sizes.get("sample"), n_classes=ds.sizes.get("class"),
                       n_features=ds.sizes.get("feature"), has_head="head_weight" in ds.variables,
                       attacks=list(map(str, ds["attack"].values)) if "attack" in ds.coords else [],
                       eps=[float(e) for e in ds["eps"].values] if "eps" in ds.coords else [],
                       path=str(paths[run_id]))
            rows.append(row)
        df = pd.DataFrame(rows)
        cols = [c for c in ATTR_COLUMNS if c in df.columns] + [c for c in df.columns if c not in ATTR_COLUMNS]
        return df.reindex(columns=cols if rows else list(ATTR_COLUMNS))

    def __len__(self) -> int:
        return len(self.run_ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.run_ids)

    def __contains__(self, run_id: object) -> bool:
        return isinstance(run_id, str) and run_id in self._scan()[0]

    def __getitem__(self, run_id: str) -> xr.Dataset:
        check_run_id(run_id)
        runs, _, incomplete = self._scan()
        if run_id not in runs:
            if f"{run_id}.zarr" in incomplete:
                raise IncompleteStoreError(f"run {run_id!r} in {self.path} is not completely written")
            raise KeyError(f"no run {run_id!r} in study {self.path}; runs: {list(runs)}")
        return open_run(runs[run_id])

    def run_path(self, run_id: str) -> Path:
        """Where run ``run_id`` is (or would be) stored; the id is checked so it cannot escape the folder."""
        return self.path / f"{check_run_id(run_id)}.zarr"

    def add(self, ds: xr.Dataset, *, mode: str = "w-", sample_chunk: int | None = None,
            compressor: str | None = None) -> Path:
        """Save ``ds`` into the study as ``RUN_ID.zarr``; a duplicate run id is refused unless ``mode="w"``.

        ``sample_chunk`` and ``compressor`` are passed to `causalgeom.save`.
        """
        run_id = check_run_id(ds.attrs.get("run_id"))
        target = self.run_path(run_id)
        if mode == "w-" and target.exists():
            raise StoreExistsError(f"study {self.path} already has a run with run_id {run_id!r}; "
                                   "give the run a unique run_id (or mode='w' to replace it)")
        return save(ds, target, mode=mode, sample_chunk=sample_chunk, compressor=compressor)

    def size(self) -> tuple[int, float]:
        """Rows (samples summed over the complete runs: the rows of ``to_frame()``) and GiB of ``features``.

        Reads each run's metadata only (`runs`: sample and feature counts; the features' Zarr data type), never a
        sample.
        """
        rows, nbytes = 0, 0
        for r in self.runs.itertuples(index=False):
            n = int(getattr(r, "n_samples", 0) or 0)
            d = getattr(r, "n_features", 0)
            d = 0 if d is None or d != d else int(d)  # NaN for a run without features
            rows += n
            nbytes += n * d * _features_itemsize(getattr(r, "path", ""))
        return rows, nbytes / 2**30

    def to_frame(self, level: str = "sample", **kwargs: Any) -> pd.DataFrame:
        """The analysis table (see :func:`causalgeom.metrics.table.study_frame`)."""
        from ..metrics.table import study_frame

        return study_frame(self, level=level, **kwargs)

    def __repr__(self) -> str:
        runs = self.run_ids
        return f"<causalgeom.Study {self.path} with {len(runs)} runs: {', '.join(runs[:6])}{' ...' if len(runs) > 6 else ''}>"


#: What functions taking a study accept: a `Study` or the path of a study folder.
StudyLike = Union[Study, str, os.PathLike]


def open_study(path: str | os.PathLike, *, create: bool = False) -> Study:
    """Open the study folder at ``path`` (``create=True`` makes it if missing)."""
    path = Path(path)
    if create and not path.exists():
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise StoreError(f"cannot create study folder {path}: {exc.strerror}") from None
    return Study(path)


def as_study(study: StudyLike, name: str = "study") -> Study:
    """The `Study` that a ``study=`` argument names: a `Study` as it is, a study folder path opened.

    The one coercion of every function that takes a `StudyLike` (mediation, decomposition, interventions, the
    report, the Dask analysis).

    Parameters
    ----------
    study : Study or path-like
        A study, or the path of a study folder.
    name : str
        Argument name for the message.

    Raises
    ------
    ConfigError
        ``study`` is neither a `Study` nor a path (``"{name}: expected a causalgeom Study or the path of a study
        folder, got TYPE"``).
    StoreError
        The path is not a study folder (from `Study`).
    """
    if isinstance(study, Study):
        return study
    if isinstance(study, (str, os.PathLike)):
        return open_study(study)
    raise ConfigError(f"{name}: expected a causalgeom Study or the path of a study folder, got "
                      f"{type(study).__name__}")

