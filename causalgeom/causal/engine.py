"""Engines that answer a `MediationSpec`, and the one place that picks one for a table or a study.

An engine (`Engine`) takes a spec and a table or study and returns a `MediationResult` whose ``engine`` names it.
The causal layer holds the in-process engine (`causalgeom.causal.mediation.IN_PROCESS`: the per-sample table and
`causalgeom.causal.mediation.mediate_table`; its ``engine`` is None in an `EngineChoice` made here, which imports
no estimator). The Dask engine lives in `causalgeom.scale` (per-run sufficient
statistics on a cluster), which this layer may not import: the package facade hands its chooser in
(`causalgeom._util.handin`), and `choose_engine` asks for it. Without it (or for a table) the answer is in-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .._util import handin
from .spec import MediationSpec

__all__ = ["Engine", "EngineChoice", "ENGINES", "choose_engine", "is_study"]

#: Names of the engines, as recorded in ``MediationResult.engine``.
ENGINES = ("in-process", "dask")


class Engine(Protocol):
    """What answers a mediation question: ``name`` (one of :data:`ENGINES`), ``problem`` and ``run``."""

    name: str

    def problem(self, spec: MediationSpec, data: Any) -> str | None:
        """Why this engine cannot answer ``spec`` on ``data`` (None: it can)."""

    def run(self, spec: MediationSpec, data: Any, *, rng: np.random.Generator) -> Any:
        """The `MediationResult` of ``spec`` on ``data`` (a table or a study), ``engine`` set to ``name``."""


def is_study(data: Any) -> bool:
    """True for a `causalgeom.Study` or a path (a study folder)."""
    from ..dump.study import Study

    return isinstance(data, (Study, str, os.PathLike))


@dataclass(frozen=True)
class EngineChoice:
    """The outcome of `choose_engine`: the ``engine`` object (None: the in-process engine,
    `causalgeom.causal.mediation.IN_PROCESS`), its ``name`` and a one-line ``reason``."""

    engine: Any
    reason: str
    size: Any = None

    @property
    def name(self) -> str:
        """``"in-process"`` or ``"dask"``."""
        return "in-process" if self.engine is None else self.engine.name

    @property
    def path(self) -> str:
        """The same as `name` (the word of ``causalgeom.scale.PathChoice``)."""
        return self.name

    def __str__(self) -> str:
        return self.reason


def choose_engine(data: Any, spec: MediationSpec | None = None, *, client: Any = None) -> EngineChoice:
    """The engine for ``spec`` on ``data``: in-process for a table; for a study, the handed-in
    `causalgeom.scale.choose_engine` (by size, or Dask when a client is given or active), else in-process."""
    if not is_study(data):
        return EngineChoice(None, "in this process: a table")
    chooser = handin.provided(handin.MEDIATION_ENGINE_CHOOSER)
    if chooser is None:
        return EngineChoice(None, "in this process: no out-of-core engine was handed in (import causalgeom)")
    return chooser(data, spec=spec, client=client)
