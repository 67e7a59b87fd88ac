"""Private helpers shared by every layer: one copy of each rule (files, randomness, option checks, torch devices).

``_util`` sits at the bottom of the dependency rule (``_util`` <- ``dump`` <- ``metrics`` <- ...): it imports only
the standard library, numpy and `causalgeom.errors`; `causalgeom._util.torch` imports torch and is imported only
by the torch layer (`pipeline`: data, models, train, attacks, extract; `interventions.model`).
"""

from __future__ import annotations

__all__: list[str] = []
