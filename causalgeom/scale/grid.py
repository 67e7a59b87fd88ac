"""Training grids on a Dask cluster: `run_grid` is `causalgeom.pipeline.train.run_grid` with a cluster by default."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping


log = logging.getLogger(__name__)


# ============================================================================================
# training grids on a Dask cluster
# ============================================================================================
def run_grid(grid: Any, out_dir: str | os.PathLike, progress: bool = False, *,
             overrides: Mapping[str, Any] | None = None, scheduler: Any = None) -> list[Path]:
    """Train every run of ``grid`` on a Dask cluster, one :func:`causalgeom.pipeline.train.train_run` per task.

    `causalgeom.pipeline.train.run_grid` (the one grid runner; same parameters, return value and errors) with a
    cluster by default: ``scheduler=None`` means the client of the enclosing :func:`client` block, else a new
    LocalCluster for this call (``train.run_grid``'s ``scheduler=True``), and no progress bar by default.
    Workers must see ``out_dir`` (shared file system on a real cluster).
    """
    from ..pipeline.train import run_grid as _run_grid

    return _run_grid(grid, out_dir, progress, overrides=overrides, scheduler=True if scheduler is None else scheduler)
