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


# ---------------------------------------------------------------------------------------------------------------
# Old module paths (before the folder move) stay importable: ``import causalgeom.geometry`` gives the module
# ``causalgeom.metrics.geometry`` itself (the same object, so monkeypatching either name patches both).
# ---------------------------------------------------------------------------------------------------------------
import importlib.abc as _abc  # noqa: E402
import importlib.util as _iutil  # noqa: E402
import sys as _sys  # noqa: E402

#: old module path -> new module path
MOVED_MODULES = {
    'causalgeom.schema': 'causalgeom.dump.schema',
    'causalgeom.store': 'causalgeom.dump.store',
    'causalgeom.study': 'causalgeom.dump.study',
    'causalgeom.adapters': 'causalgeom.dump.adapters',
    'causalgeom.data': 'causalgeom.pipeline.data',
    'causalgeom.models': 'causalgeom.pipeline.models',
    'causalgeom.train': 'causalgeom.pipeline.train',
    'causalgeom.attacks': 'causalgeom.pipeline.attacks',
    'causalgeom.extraction': 'causalgeom.pipeline.extract',
    'causalgeom.zoo': 'causalgeom.pipeline.zoo',
    'causalgeom._blocks': 'causalgeom.metrics.blocks',
    'causalgeom.kernels': 'causalgeom.metrics.kernels',
    'causalgeom.geometry': 'causalgeom.metrics.geometry',
    'causalgeom.calibration': 'causalgeom.metrics.calibration',
    'causalgeom.robustness': 'causalgeom.metrics.robustness',
    'causalgeom.table': 'causalgeom.metrics.table',
    'causalgeom.summary': 'causalgeom.metrics.summary',
    'causalgeom.distributed': 'causalgeom.scale',
}


class _MovedModuleFinder(_abc.MetaPathFinder, _abc.Loader):
    """Serves an old module path by importing the new one (PEP 451 finder + loader)."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname not in MOVED_MODULES:
            return None
        return _iutil.spec_from_loader(fullname, self)

    def __init__(self):
        self._specs = {}

    def create_module(self, spec):  # noqa: D102
        module = importlib.import_module(MOVED_MODULES[spec.name])
        self._specs[module.__name__] = module.__spec__  # the import machinery overwrites __spec__ next
        return module

    def exec_module(self, module):  # noqa: D102
        module.__spec__ = self._specs[module.__name__]  # keep the real spec (relative imports inside functions)


if not any(isinstance(f, _MovedModuleFinder) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _MovedModuleFinder())
