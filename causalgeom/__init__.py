"""causalgeom: causal analysis of how soft-label regularizers change calibration and robustness.

The public API (see ``docs/``)::

    import causalgeom as cg
    ds = cg.from_arrays(features, logits, labels, head_weight=W, head_bias=b, attrs={...})
    cg.save(ds, "run.zarr"); ds = cg.open("run.zarr")
    study = cg.open_study("study/")
"""

from __future__ import annotations

import importlib

from .errors import (CausalGeomError, ConfigError, DumpImportError, HeadMissingError, IncompleteStoreError,
                     QueryError, SchemaError, StoreError, StoreExistsError, StoreLockedError, UnsafeFileError)
from .dump.schema import SCHEMA_VERSION, from_arrays, validate
from .dump.store import open, save, verify  # noqa: A004 - `cg.open` is the documented name
from .dump.study import Study, open_study
from .dump.adapters import import_dump
from ._util import handin as _handin

__version__ = "0.1.0"

#: The facade: public name -> (module path, attribute or None). Each is imported on first use (torch, statsmodels
#: and DoWhy load only when needed). ``None``: the name is the module itself (``cg.geometry`` is the module
#: ``causalgeom.metrics.geometry``); an attribute: the name is that object (``cg.report`` is the function
#: ``causalgeom.reporting.report``, ``cg.extract`` the function ``causalgeom.pipeline.extract.extract``). These are
#: attribute names of the package, not importable module paths: import the module path on the right.
_FACADE: dict[str, tuple[str, str | None]] = {
    "report": ("causalgeom.reporting", "report"),
    "extract": ("causalgeom.pipeline.extract", "extract"),
    "schema": ("causalgeom.dump.schema", None),
    "store": ("causalgeom.dump.store", None),
    "adapters": ("causalgeom.dump.adapters", None),
    "kernels": ("causalgeom.metrics.kernels", None),
    "geometry": ("causalgeom.metrics.geometry", None),
    "calibration": ("causalgeom.metrics.calibration", None),
    "robustness": ("causalgeom.metrics.robustness", None),
    "summary": ("causalgeom.metrics.summary", None),
    "table": ("causalgeom.metrics.table", None),
    "causal": ("causalgeom.causal", None),
    "interventions": ("causalgeom.interventions", None),
    "data": ("causalgeom.pipeline.data", None),
    "models": ("causalgeom.pipeline.models", None),
    "train": ("causalgeom.pipeline.train", None),
    "attacks": ("causalgeom.pipeline.attacks", None),
    "extraction": ("causalgeom.pipeline.extract", None),
    "zoo": ("causalgeom.pipeline.zoo", None),
    "reporting": ("causalgeom.reporting", None),
    "demo": ("causalgeom.demo", None),
    "distributed": ("causalgeom.scale", None),
    "testing": ("causalgeom.testing", None),
}

__all__ = [
    "CausalGeomError", "ConfigError", "DumpImportError", "HeadMissingError", "IncompleteStoreError",
    "QueryError", "SchemaError", "StoreError", "StoreExistsError", "StoreLockedError", "UnsafeFileError",
    "SCHEMA_VERSION", "from_arrays", "validate", "open", "save", "verify", "Study", "open_study",
    "import_dump", *_FACADE,
]


def _scale_engine_chooser():
    """`causalgeom.scale.choose_engine`, handed in to the causal layer (``cg.causal.mediate(study)`` chooses the
    in-process or Dask engine by the study's size with it; docs/CONTRACTS.md, "Scale is handed in from above")."""
    from .scale.choice import choose_engine

    return choose_engine


_handin.provide(_handin.MEDIATION_ENGINE_CHOOSER, _scale_engine_chooser)


def __getattr__(name: str):
    """Resolve a public name of `_FACADE` on first use (and cache it on the package)."""
    try:
        module_path, attribute = _FACADE[name]
    except KeyError:
        raise AttributeError(f"module 'causalgeom' has no attribute {name!r}") from None
    value = importlib.import_module(module_path)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACADE))
