"""The one check of an option against its allowed values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from ..errors import CausalGeomError, ConfigError

__all__ = ["check_choice"]

T = TypeVar("T")


def check_choice(value: T, name: str, allowed: Iterable[T], *,
                 error: type[CausalGeomError] = ConfigError) -> T:
    """Return ``value`` if it is one of ``allowed``, else raise ``error`` listing the allowed values.

    Parameters
    ----------
    value
        The option given.
    name : str
        Argument name for the message.
    allowed : iterable
        The accepted values (in the order the message lists them).
    error : type
        `ConfigError` (default) for options; the causal layer passes `QueryError`.

    Raises
    ------
    ConfigError
        ``"{name}: expected one of [...], got {value!r}"``.
    """
    allowed = list(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable / incomparable value
        ok = False
    if not ok:
        raise error(f"{name}: expected one of {allowed}, got {value!r}")
    return value
