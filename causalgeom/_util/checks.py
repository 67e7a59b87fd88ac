"""The one check of an option against its allowed values, and of a set of options against declared constraints."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from ..errors import CausalGeomError, ConfigError

__all__ = ["check_choice", "check_params", "Interval", "NAME"]

#: A `check_params` constraint: a non-empty string (a column or other name).
NAME = "<non-empty name>"

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


class Interval:
    """A numeric range constraint of `check_params` (``kind`` int or float; ``None`` bound: unbounded).

    Parameters
    ----------
    kind : {int, float}
        ``int``: integers only (bool refused); ``float``: any real number (bool refused).
    low, high : float, optional
        Bounds.
    closed : {"both", "left", "right", "neither"}
        Which bounds belong to the range.
    """

    def __init__(self, kind: type, low: float | None, high: float | None, closed: str = "both") -> None:
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def __contains__(self, value: object) -> bool:
        import numbers

        want = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, want):
            return False
        v = float(value)  # type: ignore[arg-type]
        if v != v:
            return False
        lo_ok = self.low is None or (v >= self.low if self.closed in ("both", "left") else v > self.low)
        hi_ok = self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("both", "left") else "("
            right = "]" if self.closed in ("both", "right") else ")"
            return f"{what} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{what} {'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}"
        return what


def check_params(values: Mapping[str, object], constraints: Mapping[str, Sequence[object]], *,
                 error: type[CausalGeomError] = ConfigError) -> None:
    """Check every named value against its declared constraints (scikit-learn's ``_parameter_constraints`` way).

    Parameters
    ----------
    values : mapping
        ``{name: value}``; names without a constraint are not checked.
    constraints : mapping
        ``{name: [constraint, ...]}``; a value passes when it meets one constraint. A constraint is ``None`` (the
        value None), a type (``str``, ``bool``: an instance, bool only for ``bool``), :data:`NAME` (a non-empty
        string), an `Interval`, or a tuple / list of allowed values (compared with ``==``).
    error : type
        The error raised (`ConfigError` by default; the causal layer passes `QueryError`).

    Raises
    ------
    ConfigError
        ``"{name}: expected one of [...], got {value!r}"`` for a value list, ``"{name}: expected <what>, got
        {value!r}"`` otherwise (``<what>`` joins the alternatives with " or ").
    """
    for name, allowed in constraints.items():
        if name not in values:
            continue
        value = values[name]
        if any(_meets(value, c) for c in allowed):
            continue
        choices = [v for c in allowed if isinstance(c, (tuple, list)) for v in c]
        others = [c for c in allowed if not isinstance(c, (tuple, list))]
        if choices and all(c is None for c in others):
            raise error(f"{name}: expected one of {choices + [None] * bool(others)}, got {value!r}")
        what = " or ".join([f"one of {choices}"] * bool(choices) + [_describe(c) for c in others])
        raise error(f"{name}: expected {what}, got {value!r}")


def _meets(value: object, c: object) -> bool:
    if c is None:
        return value is None
    if isinstance(c, Interval):
        return value in c
    if isinstance(c, str) and c == NAME:
        return isinstance(value, str) and bool(value)
    if isinstance(c, type):
        if c is bool:
            return isinstance(value, bool)
        return isinstance(value, c) and not isinstance(value, bool)
    if isinstance(c, (tuple, list)):
        if value is None or isinstance(value, bool):
            return any(v is value for v in c)
        try:
            return any(v is not None and not isinstance(v, bool) and value == v for v in c)
        except TypeError:  # an unhashable / incomparable value
            return False
    raise TypeError(f"unknown constraint {c!r}")


def _describe(c: object) -> str:
    if c is None:
        return "None"
    if c is bool:
        return "true or false"
    if c is str:
        return "a string"
    if isinstance(c, str) and c == NAME:
        return "a non-empty string (a name)"
    if isinstance(c, type):
        return f"a {c.__name__}"
    return str(c)
