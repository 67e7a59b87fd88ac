"""Where a whole-study analysis runs, in this process or out of core on Dask, decided by one rule: the study's size.

The rule lives in `_util` (below every layer) because two layers apply it: the command line
(`causalgeom.cli._scale`) and `causalgeom.reporting`, which may not import `causalgeom.scale`; it is re-exported as
`causalgeom.scale.choose_path`. It reads only each run's metadata (sizes and the features' data type), never a
sample.

The threshold comes from ``benchmarks/bench_scaling.py`` (docs/scaling.md; :data:`DASK_THRESHOLD_ROWS` says how):
below it, the in-process path (``Study.to_frame()`` + ``cg.causal.mediate`` on the dask threads of this process)
was faster than starting a ``LocalCluster`` and running the out-of-core path (``mediate_study``) on it, and its
per-sample table fits comfortably in memory; above it the out-of-core path is chosen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .dask import WORKER_MALLOC_ENV, local_cluster_options  # noqa: F401  (re-exported)

__all__ = ["DASK_THRESHOLD_ROWS", "IN_PROCESS_BYTES_PER_ROW", "memory_rows", "THRESHOLD_ENV", "PATHS", "PathChoice", "dask_threshold", "study_size",
           "choose_path", "WORKER_MALLOC_ENV", "local_cluster_options"]

#: Rows of the study table (samples summed over the runs) from which whole-study analyses run out of core on a
#: Dask LocalCluster. Measured by ``benchmarks/bench_scaling.py`` (2-core AMD EPYC, 24 GiB of RAM, nothing else
#: running, d=512 float32, 10 runs paired by image, the fused pass reading chunk files directly; docs/scaling.md):
#: the in-process path was faster at every size timed, 10^4 to 8.89 million rows (17 GiB of features, more than
#: the page cache holds; in-process / Dask-path time 0.55 at 10^6 rows, 0.76 at 3.16 x 10^6, 0.79 at 8.89 x 10^6),
#: so no crossover was measured; the log-log trend of the last two sizes reaches parity near 13.8 million rows (an
#: extrapolation), rounded down here. Before that, memory binds: the in-process table took ~460-500 bytes per row at
#: its peak (:data:`IN_PROCESS_BYTES_PER_ROW`), so `choose_path` also goes out of core where the table would fill
#: a quarter of this machine's RAM, if that comes first (12.6 million rows on that machine).
DASK_THRESHOLD_ROWS = 12_000_000

#: Peak memory of the in-process path per row of the study table (``to_frame`` + ``mediate``), measured by
#: ``benchmarks/bench_scaling.py`` (498 bytes at 3.16 million rows, 456 at 8.89 million), rounded up.
IN_PROCESS_BYTES_PER_ROW = 500

#: Environment variable that overrides :data:`DASK_THRESHOLD_ROWS` (a number of rows, e.g. ``2e6``).
THRESHOLD_ENV = "CAUSALGEOM_DASK_THRESHOLD_ROWS"

#: The two paths.
PATHS = ("in-process", "dask")

_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class PathChoice:
    """The outcome of :func:`choose_path`.

    Attributes
    ----------
    path : {"in-process", "dask"}
    rows : int
        Samples summed over the study's complete runs (the rows of ``Study.to_frame()``).
    features_gib : float
        Bytes of the runs' ``features`` arrays, in GiB.
    threshold : int
        The threshold in rows that was applied.
    reason : str
        One line saying which path and why (size vs threshold).
    """

    path: str
    rows: int
    features_gib: float
    threshold: int
    reason: str

    def __str__(self) -> str:
        return self.reason


def dask_threshold(threshold: int | float | None = None) -> int:
    """The threshold in rows: ``threshold`` if given, else ``$CAUSALGEOM_DASK_THRESHOLD_ROWS``, else the constant.

    Raises
    ------
    ConfigError
        ``threshold`` or the environment variable is not a number of rows >= 0.
    """
    where = "threshold"
    if threshold is None:
        text = os.environ.get(THRESHOLD_ENV, "").strip()
        if not text:
            return DASK_THRESHOLD_ROWS
        where = f"${THRESHOLD_ENV}"
        try:
            threshold = float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number of rows (e.g. 2e6), got {text!r}") from None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ConfigError(f"{where}: expected a number of rows >= 0, got {threshold!r}")
    return int(threshold)


def memory_rows() -> int | None:
    """Rows whose in-process table (:data:`IN_PROCESS_BYTES_PER_ROW` each) fills a quarter of this machine's RAM
    (None when the RAM cannot be read)."""
    try:
        import psutil  # a dependency of dask.distributed

        return int(psutil.virtual_memory().total // 4 // IN_PROCESS_BYTES_PER_ROW)
    except Exception:  # noqa: BLE001 - no psutil, or no RAM figure on this platform
        return None


def _features_itemsize(path: Any) -> int:
    """Bytes per value of a run store's ``features`` (its Zarr metadata; 4 when it cannot be read)."""
    try:
        meta = json.loads((Path(path) / "features" / "zarr.json").read_text())
        return _ITEMSIZE.get(str(meta.get("data_type")), 4)
    except (OSError, ValueError, TypeError):
        return 4


def study_size(study: Any) -> tuple[int, float]:
    """Rows (samples summed over the complete runs) and GiB of ``features`` of a `causalgeom.Study`.

    Reads each run's metadata only (`Study.runs`: sample and feature counts; the features' Zarr data type).
    """
    runs = study.runs
    rows, nbytes = 0, 0
    for r in runs.itertuples(index=False):
        n = int(getattr(r, "n_samples", 0) or 0)
        d = getattr(r, "n_features", 0)
        d = 0 if d is None or d != d else int(d)  # NaN for a run without features
        rows += n
        nbytes += n * d * _features_itemsize(getattr(r, "path", ""))
    return rows, nbytes / 2**30


def choose_path(study: Any, *, threshold: int | float | None = None) -> PathChoice:
    """Run a whole-study analysis in this process or out of core on Dask, by the study's size.

    ``"dask"`` when the study table has at least ``threshold`` rows (samples summed over the complete runs),
    else ``"in-process"``. Without a given threshold or ``$CAUSALGEOM_DASK_THRESHOLD_ROWS`` the threshold is
    :data:`DASK_THRESHOLD_ROWS` or, if smaller, `memory_rows` (the table would fill a quarter of the RAM). An explicit choice of the user (``--scheduler``, an open ``cg.distributed.client``
    block, ``cg.report(path=...)``) is applied by the callers before this rule.

    Parameters
    ----------
    study : causalgeom.Study
    threshold : int, optional
        Rows from which to choose Dask; default `dask_threshold()` (``$CAUSALGEOM_DASK_THRESHOLD_ROWS``, else
        :data:`DASK_THRESHOLD_ROWS`, the size measured by ``benchmarks/bench_scaling.py``).

    Returns
    -------
    PathChoice
        ``.path`` and a one-line ``.reason`` stating the size against the threshold.
    """
    limit = dask_threshold(threshold)
    rows, gib = study_size(study)
    source = ("given" if threshold is not None else f"${THRESHOLD_ENV}" if os.environ.get(THRESHOLD_ENV, "").strip()
              else "measured by benchmarks/bench_scaling.py")
    mem = memory_rows() if source.startswith("measured") else None
    if mem is not None and mem < limit:
        limit, source = mem, (f"the rows whose in-process table, ~{IN_PROCESS_BYTES_PER_ROW} bytes per row, "
                              "would fill a quarter of this machine's RAM")
    size = f"{rows:,} rows ({gib:.2f} GiB of features)"
    if rows >= limit:
        return PathChoice("dask", rows, gib, limit,
                          f"out of core on a Dask LocalCluster: the study has {size}, at or above the threshold of "
                          f"{limit:,} rows ({source}; --scheduler in-process to stay in this process)")
    return PathChoice("in-process", rows, gib, limit,
                      f"in this process: the study has {size}, below the threshold of {limit:,} rows for the "
                      f"out-of-core Dask path ({source}; --scheduler local to use Dask anyway)")



