"""Sentences of a decomposition: the split of a gap into its factors (`split_text`), the p-value floor."""

from __future__ import annotations
from typing import Any

def _fmt_num(x: float) -> str:
    return f"{abs(x):.2g}"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def split_text(total: float, estimates: dict[str, float], words: dict[str, str] | None = None,
               fmt: Any = None) -> str:
    """One or two sentences that describe how the factors split a total, following the signs.

    A factor is "the main part" only when its share (estimate / total) lies in [0.5, 1] (the total's sign, at
    least half of it, not more than all of it). Factors of opposite signs are described as offsetting ("scale
    lowered it by 0.17 while shape raised it by 0.06"). A share outside [0, 1] is never called "mostly" or
    "the main part": a factor that moves the outcome by more than the total is offset by another.

    Parameters
    ----------
    total : float
        The total change.
    estimates : dict
        Factor name -> its share of the change (same units as ``total``; they add up to it).
    words : dict, optional
        Factor name -> the words to print for it.
    fmt : callable, optional
        Formats an absolute value (default two significant digits).

    Returns
    -------
    str
    """
    words = words or {}
    fmt = fmt or _fmt_num
    name = lambda f: words.get(f, f)  # noqa: E731
    ups = [f for f, v in estimates.items() if v > 0]
    downs = [f for f, v in estimates.items() if v < 0]
    out = []
    if ups and downs:
        lowered = _join([f"{name(f)} lowered it by {fmt(estimates[f])}" for f in downs])
        raised = _join([f"{name(f)} raised it by {fmt(estimates[f])}" for f in ups])
        first, second = (lowered, raised) if abs(sum(estimates[f] for f in downs)) >= \
            abs(sum(estimates[f] for f in ups)) else (raised, lowered)
        out.append(f"The factors offset each other: {first} while {second}.")
    main = [f for f, v in estimates.items() if total != 0 and 0.5 <= v / total <= 1.0]
    if main:
        f = main[0]
        out.append(f"The main part is the {name(f)} ({100 * estimates[f] / total:.0f}% of the change).")
    elif not (ups and downs) and len(estimates) > 1 and total != 0:
        out.append("No factor carries half of the change: it is spread over "
                   + _join([f"{name(f)} ({100 * v / total:.0f}%)" for f, v in estimates.items()]) + ".")
    elif ups and downs:
        out.append("No factor is the main part (each moves the outcome by more than the total or against it).")
    return " ".join(out)


def floor_text(p_floor: float, ci_excludes_zero: bool, pairing: str, n_c: int, n_t: int, n_pairs: int,
               alpha: float = 0.05, ci_level: float = 0.95) -> str:
    """The sentence for a total whose interval excludes 0 while the exact test cannot reach ``alpha``; else "".

    The one implementation is `causalgeom.causal.results.floor_interval_sentence` (also used by `mediate`): the
    smallest two-sided p-value is ``2 / 2^n`` for n seed-matched pairs (sign flips) and ``2 / C(2m, m)`` for
    m + m runs (relabelings); the sentence says how many pairs (or seeds per arm) would let it reach ``alpha``.
    """
    from ..results import floor_interval_sentence

    paired = pairing == "seed"
    return floor_interval_sentence(["the total"] if ci_excludes_zero else [], p_floor,
                                   [n_pairs] if paired else [n_c, n_t], alpha=alpha, ci_level=ci_level,
                                   paired=paired)
