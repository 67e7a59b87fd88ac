"""The one coercion of an ``rng=`` argument into a `numpy.random.Generator`."""

from __future__ import annotations

from typing import Union

import numpy as np

from ..errors import CausalGeomError, ConfigError

__all__ = ["RngLike", "check_random_state"]

#: What an ``rng=`` argument accepts.
RngLike = Union[np.random.Generator, int, np.integer, None]


def check_random_state(rng: RngLike, name: str = "rng", *,
                       error: type[CausalGeomError] = ConfigError) -> np.random.Generator:
    """Return ``rng`` as a `numpy.random.Generator` (like scikit-learn's ``check_random_state``).

    Parameters
    ----------
    rng : numpy.random.Generator, int or None
        A Generator is returned as is (shared state, so successive calls draw different numbers); an int
        seed or None goes through `numpy.random.default_rng` (None: fresh OS entropy). Booleans are refused.
    name : str
        Argument name for the error message.
    error : type
        Error class raised on bad input. `ConfigError` (an option is invalid) everywhere except the causal
        layer, whose public functions document `QueryError` for every bad argument of an analysis question.

    Raises
    ------
    ConfigError
        (or ``error``) for anything else, naming the argument and the type given.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise error(f"{name}: expected a numpy.random.Generator, an integer seed or None, got {type(rng).__name__}")
