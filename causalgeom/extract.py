"""``causalgeom.extract``: the extraction function, importable under the module name it always had.

``cg.extract`` is a function (`causalgeom.extraction.extract`), not a module. For code written against the old
module (``import causalgeom.extract``, ``from causalgeom.extract import find_head, PROGRESS_DIR``,
``cg.extract.extract_runs(...)``) this file replaces its own entry in ``sys.modules`` by that function, which
carries the public names of `causalgeom.extraction` as attributes. Python's import system supports a module
replacing itself in ``sys.modules`` (the import statement returns, and binds on the package, whatever that entry
holds after the module ran), so ``import causalgeom.extract`` leaves ``cg.extract`` callable. New code imports
from `causalgeom.extraction`.
"""

from __future__ import annotations

import sys

from .pipeline.extract import extract

sys.modules[__name__] = extract  # type: ignore[assignment]
