"""The one spelling of an attack budget ε: ``k/255`` where it is one, else the number (CLI, column names, report)."""

from __future__ import annotations

import math
import re

__all__ = ["eps_label", "parse_eps_label"]

#: Relative tolerance for "ε is k/255": float32 storage of 2/255 gives 255 ε = 2.0000002.
_RTOL = 1e-5


def eps_label(eps: float) -> str:
    """``"8/255"`` when ``255 ε`` is a whole number (or a tenth below 1, ``"0.4/255"``), else ``f"{ε:.6g}"``.

    Parameters
    ----------
    eps : float
        An attack budget on the pixel scale [0, 1] (L-inf), or any other norm's radius.

    Returns
    -------
    str
        ``eps_label(2 / 255) == "2/255"``, ``eps_label(0.4 / 255) == "0.4/255"``, ``eps_label(0.5) == "0.5"``,
        ``eps_label(0) == "0"``. `parse_eps_label` inverts it.
    """
    e = float(eps)
    k = e * 255.0
    if math.isfinite(k) and k > 0:
        if abs(k - round(k)) <= _RTOL * max(1.0, k):
            return f"{int(round(k))}/255"
        if k < 1 and abs(10 * k - round(10 * k)) <= _RTOL * 10:
            return f"{round(10 * k) / 10:g}/255"
    return f"{e:.6g}"


def parse_eps_label(text: str) -> float:
    """The ε of a label written by `eps_label` (``"2/255"`` -> 2/255, ``"0.5"`` -> 0.5).

    Raises
    ------
    ValueError
        Text that is neither a number nor ``NUMBER/NUMBER``.
    """
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", str(text))
    if m:
        return float(m.group(1)) / float(m.group(2))
    return float(text)
