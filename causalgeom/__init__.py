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
from .schema import SCHEMA_VERSION, from_arrays, validate
from .store import open, save, verify  # noqa: A004 - `cg.open` is the documented name
from .study import Study, open_study
from .adapters import import_dump

__version__ = "0.1.0"

#: Sub-modules imported on first use. ``cg.extract`` is the extraction function itself (``causalgeom/extract.py``
#: puts it in ``sys.modules``; see docs/CONTRACTS.md); ``cg.report(...)`` calls the report's main function.
_SUBMODULES = ("geometry", "calibration", "robustness", "summary", "causal", "interventions", "attacks", "train",
               "data", "models", "extract", "report", "table", "demo", "distributed", "adapters", "store",
               "testing", "kernels", "extraction")

__all__ = [
    "CausalGeomError", "ConfigError", "DumpImportError", "HeadMissingError", "IncompleteStoreError",
    "QueryError", "SchemaError", "StoreError", "StoreExistsError", "StoreLockedError", "UnsafeFileError",
    "SCHEMA_VERSION", "from_arrays", "validate", "open", "save", "verify", "Study", "open_study",
    "import_dump", *_SUBMODULES,
]


def __getattr__(name: str):
    """Import heavy submodules (torch, statsmodels, dowhy) only when first used."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'causalgeom' has no attribute {name!r}")
