"""``causalgeom.report``: the report function, importable under the module name it always had.

``cg.report(study, out=...)`` is a function (`causalgeom.reporting.report`), not a module with a swapped class.
For code written against the old module (``from causalgeom.report import SECTION_IDS``) this file replaces its own
entry in ``sys.modules`` by that function, which carries the names of `causalgeom.reporting` as attributes
(the same mechanism as `causalgeom.extract`; see docs/CONTRACTS.md). New code imports from `causalgeom.reporting`.
"""

from __future__ import annotations

import sys

from .reporting import report

sys.modules[__name__] = report  # type: ignore[assignment]
