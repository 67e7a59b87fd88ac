"""Figures of intervention results: `plot_dose_response` (matplotlib, imported when called)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import ConfigError
from .posthoc import OUTCOMES
from .study import _fmt

__all__ = ["plot_dose_response"]


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
_GRID_DIMS = ("scale", "alpha", "target_rms", "transform")
_IDENTITY = {"scale": 1.0, "alpha": 0.0}


def plot_dose_response(result: xr.Dataset, outcomes: Sequence[str] | str | None = None, *, ax: Any = None) -> Any:
    """Dose-response plot: each outcome against ``s`` or ``alpha``, with its interval band.

    Extra dimensions (``group`` of a study result, ``attack`` x ``eps`` of
    :func:`robust_dose_response`) become separate lines. A dashed vertical line marks the identity
    (``s = 1`` / ``alpha = 0``). Uses matplotlib's object-oriented API (Agg canvas, no display).

    Parameters
    ----------
    result : xarray.Dataset
        Output of :func:`rescale`, :func:`rotate`, their study forms, or :func:`robust_dose_response`.
    outcomes : str or sequence of str, optional
        Variables to plot (default: :data:`OUTCOMES` present in ``result``, else
        ``robust_accuracy``).
    ax : matplotlib Axes or sequence of Axes, optional
        One per outcome (default: a new figure with one panel per outcome).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(result, xr.Dataset):
        raise ConfigError(f"result: expected an xarray.Dataset from rescale/rotate/robust_dose_response, "
                          f"got {type(result).__name__}")
    dims = [d for d in _GRID_DIMS if d in result.dims]
    if not dims:
        raise ConfigError(f"result: expected a dimension among {list(_GRID_DIMS)}, got dims {list(result.dims)}")
    dim = dims[0]
    if outcomes is None:
        outcomes = [o for o in OUTCOMES if o in result] or [v for v in ("robust_accuracy",) if v in result]
    elif isinstance(outcomes, str):
        outcomes = [outcomes]
    unknown = [o for o in outcomes if o not in result.data_vars or dim not in result[o].dims]
    if unknown or not outcomes:
        allowed = [v for v in result.data_vars if dim in result[v].dims and not v.endswith(("_ci_low", "_ci_high"))]
        raise ConfigError(f"outcomes: unknown {unknown or outcomes}; allowed: {allowed}")
    if ax is None:
        fig = Figure(figsize=(3.6 * len(outcomes), 3.2), layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(np.atleast_1d(fig.subplots(1, len(outcomes), squeeze=False)[0]))
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != len(outcomes):
            raise ConfigError(f"ax: expected {len(outcomes)} Axes (one per outcome), got {len(axes)}")
        fig = axes[0].figure
    numeric = dim != "transform"
    x = result[dim].values if numeric else np.arange(result.sizes[dim])
    for a, name in zip(axes, outcomes):
        var = result[name]
        others = [d for d in var.dims if d != dim]
        stacked = var.stack(_line=others) if others else var.expand_dims(_line=[0])
        for i in range(stacked.sizes["_line"]):
            line = stacked.isel(_line=i)
            label = ", ".join(f"{_fmt(line[d].item())}" for d in others) if others else None
            handle = a.plot(x, line.transpose(dim).values, marker="o", ms=3, label=label)[0]
            lo, hi = f"{name}_ci_low", f"{name}_ci_high"
            if lo in result and hi in result:
                sel = {d: line[d].item() for d in others}
                band_lo = result[lo].sel(sel).transpose(dim).values if others else result[lo].values
                band_hi = result[hi].sel(sel).transpose(dim).values if others else result[hi].values
                if np.any(np.isfinite(band_lo)):
                    a.fill_between(x, band_lo, band_hi, color=handle.get_color(), alpha=0.2, lw=0)
        if dim in _IDENTITY:
            a.axvline(_IDENTITY[dim], color="0.5", ls="--", lw=0.8)
        if not numeric:
            a.set_xticks(x, [str(v) for v in result[dim].values], rotation=30, ha="right", fontsize=7)
        a.set_xlabel({"scale": "scale s", "alpha": "rotation fraction α"}.get(dim, dim))
        a.set_ylabel(name.replace("_", " "))
        if others and stacked.sizes["_line"] > 1:
            a.legend(fontsize=7, title=" × ".join(others), title_fontsize=7)
    title = result.attrs.get("run_id") or result.attrs.get("study")
    if title and ax is None:
        fig.suptitle(f"{result.attrs.get('intervention', '')}: {title}", fontsize=9)
    return fig
