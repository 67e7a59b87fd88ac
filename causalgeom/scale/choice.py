"""Where a whole-study analysis runs, in this process or out of core on Dask, decided by one rule: the study's size.

The one place of the rule: `choose_path` (a study's size against the threshold) and `choose_engine` (the engine of
a mediation question: a given or active Dask client, else the size). The command line (`causalgeom.cli._scale`),
`cg.causal.mediate` on a study (handed in by the package facade, `causalgeom._util.handin`) and the report use it.
It reads only each run's metadata (`causalgeom.Study.size`), never a sample. `DASK_ENGINE` is the Dask engine of
`causalgeom.causal.engine`: per-run sufficient statistics on the cluster (`causalgeom.scale.mediate_study`).

The threshold comes from ``benchmarks/bench_scaling.py`` (docs/scaling.md; :data:`DASK_THRESHOLD_ROWS` says how):
below it, the in-process path (``Study.to_frame()`` + ``cg.causal.mediate`` on the dask threads of this process)
was faster than starting a ``LocalCluster`` and running the out-of-core path (``mediate_study``) on it, and its
per-sample table fits comfortably in memory; above it the out-of-core path is chosen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._util import dask as _dask
from ..causal.engine import EngineChoice, is_study
from ..causal.mediation import IN_PROCESS
from ..causal.spec import MediationSpec
from ..errors import ConfigError

__all__ = ["DASK_THRESHOLD_ROWS", "IN_PROCESS_BYTES_PER_ROW", "memory_rows", "THRESHOLD_ENV", "PATHS", "PathChoice",
           "dask_threshold", "choose_path", "choose_engine", "DaskEngine", "DASK_ENGINE", "local_address"]

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
    rows, gib = study.size()
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





def local_address() -> str:
    """The LocalCluster the automatic choice starts: one single-threaded worker per core (``"local:N"``)."""
    return f"local:{max(1, os.cpu_count() or 1)}"


def _binary(column: str) -> bool:
    """0/1 columns of the study table: ``outcome_model="auto"`` fits a logistic model to them (rows needed)."""
    return column == "correct" or column.startswith("robust[")


class DaskEngine:
    """Out of core on Dask: `causalgeom.scale.mediate_study` (per-run sufficient statistics on the workers).

    A question the moments cannot answer (`problem`) is answered from the per-sample table built on the cluster
    by the in-process estimator (the result then says ``engine="in-process"`` and a note says where the table was
    built).
    """

    name = "dask"

    def problem(self, spec: MediationSpec, data: Any) -> str | None:
        """Why per-run moments cannot answer ``spec`` on study ``data`` with the estimator, design and random draws
        of ``mediate`` on the table (None: they can)."""
        if not is_study(data):
            return "a table is answered in this process"
        if spec.method != "regression":
            return f"method={spec.method!r} needs the per-sample rows"
        if (spec.level or "sample") != "sample":
            return f"level={spec.level!r} needs the run table"
        if spec.cluster != "run_id":
            return f"cluster={spec.cluster!r}: out of core, runs are the clusters"
        if spec.outcome_model in ("logistic", "probit") or (spec.outcome_model == "auto"
                                                            and any(_binary(o) for o in spec.outcomes)):
            return "a logistic/probit outcome model (0/1 outcome) needs the rows"
        if spec.inference == "wild" or (spec.bootstrap or "cluster") != "cluster":
            return "the wild bootstrap and row-resampling bootstraps need the rows"
        if spec.slope == "within":
            return "slope='within' needs the per-sample rows"
        if spec.treatment not in ("regularizer", "strength", "seed"):
            return f"treatment {spec.treatment!r} is not a run-level column"
        if spec.estimand == "model":
            return "estimand='model' needs the per-image rows"
        if spec.estimand == "auto":
            from ..dump.study import as_study

            runs = as_study(data).runs
            if spec.treatment in runs.columns and runs[spec.treatment].value_counts(dropna=False).min() < 2:
                return "an arm has one run, so estimand 'auto' is model-conditional and needs the per-image rows"
        return None

    def run(self, spec: MediationSpec, data: Any, *, rng: np.random.Generator, client: Any = None,
            center: str = "minimal_loss") -> Any:
        """The result of ``spec`` on study ``data`` on ``client`` (default: the active client, else a new
        LocalCluster of `local_address`, closed at the end)."""
        from .dask import mediate_moments

        why = self.problem(spec, data)
        with _dask.client(client if client is not None else _dask.active_client() or _dask.current_client()
                          or local_address()):
            if why is None:
                return mediate_moments(data, spec, rng=rng, center=center)
            result = IN_PROCESS.run(spec, data, rng=rng)
        result.notes.append(f"answered from the per-sample table built on the Dask cluster ({why})")
        return result


#: The Dask engine.
DASK_ENGINE = DaskEngine()


def choose_engine(study_or_table: Any, spec: MediationSpec | None = None, *, client: Any = None,
                  threshold: int | float | None = None) -> EngineChoice:
    """The engine of a whole-study analysis: the one place of the in-process / Dask choice.

    Parameters
    ----------
    study_or_table : causalgeom.Study, study folder or pandas.DataFrame
        A table is always answered in this process.
    spec : causalgeom.causal.MediationSpec, optional
        The question (not needed for the choice itself; the Dask engine answers questions the moments cannot
        from the per-sample table built on the cluster).
    client : dask.distributed.Client or str, optional
        An explicit cluster (a Client, an address, ``"local[:N]"``): the Dask engine on it. Without it, an active
        client (a ``cg.distributed.client`` block, or a default Dask client) is an explicit choice too.
    threshold : int, optional
        Rows from which to choose Dask (see `choose_path`).

    Returns
    -------
    causalgeom.causal.engine.EngineChoice
        ``.engine`` (`causalgeom.causal.engine.IN_PROCESS` or :data:`DASK_ENGINE`; for an explicit ``client`` an
        engine bound to it), ``.name``, ``.reason`` (one line), ``.size`` (the `PathChoice`, None when not sized).
    """
    if not is_study(study_or_table):
        return EngineChoice(IN_PROCESS, "in this process: a table")
    if client is not None:
        return EngineChoice(_Bound(client), "on the given Dask client")
    if _dask.active_client() is not None or _dask.current_client() is not None:
        return EngineChoice(DASK_ENGINE, "on the active Dask client")
    from ..dump.study import as_study

    size = choose_path(as_study(study_or_table), threshold=threshold)
    return EngineChoice(DASK_ENGINE if size.path == "dask" else IN_PROCESS, size.reason, size)


class _Bound(DaskEngine):
    """The Dask engine on one given client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def run(self, spec: MediationSpec, data: Any, *, rng: np.random.Generator, client: Any = None,
            center: str = "minimal_loss") -> Any:
        return super().run(spec, data, rng=rng, client=self.client if client is None else client, center=center)
