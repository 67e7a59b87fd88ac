"""Slots an upper layer fills for a lower one: how `scale` is handed in from above, never imported from below.

The package facade (``causalgeom/__init__.py``) provides, at import, a factory for each slot; a lower layer asks
`provided` for it when it needs it (the factory imports the upper layer then, on first use). A slot nobody filled
gives None, and the lower layer falls back to what it can do alone. One slot exists:
:data:`MEDIATION_ENGINE_CHOOSER` (the size-based in-process / Dask choice of `causalgeom.causal.mediate` on a study,
filled with `causalgeom.scale.choose_engine`).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["MEDIATION_ENGINE_CHOOSER", "provide", "provided"]

#: The slot of `causalgeom.scale.choose_engine` (``(study_or_table, spec=None, client=None) -> EngineChoice``).
MEDIATION_ENGINE_CHOOSER = "mediation_engine_chooser"

_FACTORIES: dict[str, Callable[[], Any]] = {}


def provide(slot: str, factory: Callable[[], Any]) -> None:
    """Fill ``slot`` with ``factory`` (called, without arguments, each time the slot is asked for)."""
    _FACTORIES[slot] = factory


def provided(slot: str) -> Any | None:
    """What ``slot`` holds (its factory's value), or None when no upper layer filled it."""
    factory = _FACTORIES.get(slot)
    return None if factory is None else factory()
