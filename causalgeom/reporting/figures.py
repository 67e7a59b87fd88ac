"""The report's figures, drawn to be read at 1280 px: every text at least `MIN_FONT_PX` pixels where the page shows it.

Each figure is saved at `DPI` with its natural width at most `MAX_WIDTH_PX` (the page's content width), so the page
never shrinks it; `save` raises any smaller text to the minimum and records the smallest text size in pixels
(``min_font_px``) with the PNG, which the page writes as ``data-min-font-px`` for the browser test.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

from .._util.eps import eps_label

__all__ = ["DPI", "MAX_WIDTH_PX", "MIN_FONT_PX", "save", "headline", "reliability_panels", "cone_plot",
           "distributions_plot", "plot_robust"]

#: Resolution of the saved PNGs (pixels per inch); 1 pt of font = DPI / 72 px at natural size.
DPI = 100
#: The page's content width in CSS pixels (the CSS ``max-width`` of the body): figures wider are shrunk by the page.
MAX_WIDTH_PX = 1040
#: The smallest text size, in CSS pixels as shown on the page, a figure may carry.
MIN_FONT_PX = 10.0
_FONT_PT = 10.0  # the report's own figures: 10 pt = 13.9 px at DPI 100


def _png_width(png: bytes) -> int:
    return int(struct.unpack(">I", png[16:20])[0])


def _texts(fig: Any) -> list[Any]:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def save(fig: Any) -> tuple[bytes, float, int]:
    """PNG bytes, the smallest text size in px at natural size, and the natural width in px.

    The figure is shrunk to `MAX_WIDTH_PX` (its fonts kept in points, so they grow relative to it) and any text
    below `MIN_FONT_PX` is raised to it before saving."""
    import matplotlib.pyplot as plt

    w, h = fig.get_size_inches()
    limit = MAX_WIDTH_PX / DPI * 0.97
    if w > limit:  # a wide figure would be shrunk by the page: make it narrower instead
        fig.set_size_inches(limit, h * max(0.75, limit / w))
    min_pt = MIN_FONT_PX * 72.0 / DPI + 0.5
    for t in _texts(fig):
        if t.get_fontsize() < min_pt:
            t.set_fontsize(min_pt)
    try:
        fig.tight_layout() if not fig.get_layout_engine() else None
    except Exception:  # noqa: BLE001 - a layout that cannot be tightened is still readable
        pass
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    sizes = [t.get_fontsize() for t in _texts(fig)]
    plt.close(fig)
    png = buf.getvalue()
    return png, (min(sizes) if sizes else _FONT_PT) * DPI / 72.0, _png_width(png)


def _rc() -> dict[str, Any]:
    return {"font.size": _FONT_PT, "axes.titlesize": _FONT_PT + 1, "axes.labelsize": _FONT_PT,
            "xtick.labelsize": _FONT_PT, "ytick.labelsize": _FONT_PT, "legend.fontsize": _FONT_PT}


_HEADLINE = ("ece", "signed_ece", "nll", "robust_accuracy")
_COMPONENT_COLORS = {"total": "0.35", "scale": "C0", "shape": "C1"}


def headline(rows: list[tuple[str, Any]], words: dict[str, str]) -> Any:
    """The headline figure: one row per comparison, one panel per outcome (ECE, signed ECE, NLL, robust accuracy at
    the result's ε): the treated − control change and its split into the factors, each with its interval."""
    import matplotlib.pyplot as plt

    outcomes = [o for o in _HEADLINE if any(o in r.outcomes for _, r in rows)]
    if "robust_accuracy" not in outcomes and any("accuracy" in r.outcomes for _, r in rows):
        outcomes.append("accuracy")
    with plt.rc_context(_rc()):
        fig, axes = plt.subplots(len(rows), len(outcomes), figsize=(10, 0.4 + 1.45 * len(rows)), squeeze=False)
        for i, (label, res) in enumerate(rows):
            for j, o in enumerate(outcomes):
                ax = axes[i][j]
                g = res.table[res.table["outcome"] == o]
                if g.empty:
                    ax.set_axis_off()
                    continue
                comps = list(g["component"])
                y = np.arange(len(g))[::-1]
                est = g["estimate"].to_numpy(float)
                ax.barh(y, est, color=[_COMPONENT_COLORS.get(c, f"C{k}") for k, c in enumerate(comps)], alpha=0.85)
                err = np.vstack([est - g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float) - est])
                ax.errorbar(est, y, xerr=np.where(np.isfinite(err), np.abs(err), 0.0), fmt="none", ecolor="k",
                            capsize=3)
                ax.axvline(0, color="k", lw=0.8)
                ax.set_yticks(y, [words.get(c, c) for c in comps] if j == 0 else [""] * len(comps))
                ax.locator_params(axis="x", nbins=4)
                title = {"robust_accuracy": f"robust acc. ε={eps_label(res.eps)}" if res.eps is not None
                         else "robust accuracy", "signed_ece": "signed ECE", "ece": "ECE", "nll": "NLL",
                         "accuracy": "accuracy"}.get(o, o)
                if i == 0:
                    ax.set_title(f"Δ {title}")
            axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center")
        fig.tight_layout() if not fig.get_layout_engine() else None
    return fig


def reliability_panels(groups: dict[str, Any]) -> Any:
    """Reliability diagrams with evidence, one panel per group: bars of each bin's accuracy with its Wilson interval,
    the bin's image count above it, bins with few images hatched and grey."""
    import matplotlib.pyplot as plt

    n = len(groups)
    cols = min(n, 2)  # half the page wide: two panels a row
    rows_n = -(-n // cols)
    with plt.rc_context(_rc()):
        fig, axes = plt.subplots(rows_n, cols, figsize=(2.5 * min(cols, 2), 2.5 * -(-n // min(cols, 2))), squeeze=False)
        for ax in axes.ravel()[n:]:
            ax.set_axis_off()
        for ax, (name, rel) in zip(axes.ravel(), groups.items()):
            conf, acc, count = (np.asarray(rel[v]) for v in ("confidence", "accuracy", "count"))
            lo, hi, few = (np.asarray(rel[v]) for v in ("acc_low", "acc_high", "few"))
            left = np.asarray(rel["bin_lower"])
            width = np.asarray(rel["bin_upper"]) - left
            keep = count > 0
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            ok = keep & ~few
            ax.bar(left[ok], acc[ok], width=width[ok], align="edge", color="C0", alpha=0.6, edgecolor="k", lw=0.5,
                   label="accuracy")
            ax.bar(left[keep & few], acc[keep & few], width=width[keep & few], align="edge", color="0.8",
                   edgecolor="0.4", hatch="//", lw=0.5, label=f"< {rel.attrs.get('min_count', 20)} images")
            mid = left + width / 2
            ax.errorbar(mid[keep], acc[keep], yerr=np.clip([acc[keep] - lo[keep], hi[keep] - acc[keep]], 0, None), fmt="none",
                        ecolor="k", lw=0.8, capsize=1.5)
            for x, c in zip(mid[keep], count[keep]):  # counts in a strip above the bars, clear of bars and bars' CIs
                if c >= 1:
                    ax.text(x, 1.03, f"{int(c)}", ha="center", va="bottom", rotation=90, fontsize=_FONT_PT - 2)
            ax.axhline(1.0, color="0.6", lw=0.5)
            ax.set_title(name)
            ax.set_xlim(0, 1), ax.set_ylim(0, 1.3), ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
            ax.set_xlabel("confidence")
        for row in axes:
            row[0].set_ylabel("accuracy")  # no legend: the caption says what grey, hatched and the counts mean
        fig.tight_layout() if not fig.get_layout_engine() else None
    return fig


def cone_plot(curves: list[tuple[str, bool, np.ndarray, np.ndarray]]) -> Any:
    """Fraction of predictions unchanged under h → s·h, per group with the bias; the lines without the bias are drawn
    once when they coincide (they are exactly 1 for every group: argmax(s·Wh) = argmax(Wh)), else one per group."""
    import matplotlib.pyplot as plt

    with plt.rc_context(_rc()):
        fig, ax = plt.subplots(figsize=(5.0, 2.6))
        nobias = [(n, s, f) for n, b, s, f in curves if not b]
        for k, (name, with_bias, s, f) in enumerate([c for c in curves if c[1]]):
            ax.plot(s, f, "-", color=f"C{k}", label=f"{name} (with bias)")
        if nobias and all(np.allclose(f, nobias[0][2]) for _, _, f in nobias):
            ax.plot(nobias[0][1], nobias[0][2], "--", color="k", lw=1.5,
                    label=f"without bias (all {len(nobias)} identical)")
        else:
            for k, (name, s, f) in enumerate(nobias):
                ax.plot(s, f, ":", color=f"C{k}", lw=2, label=f"{name} (no bias)")
        ax.set_xscale("log"), ax.set_xlabel("scale s of the feature"), ax.set_ylabel("prediction unchanged")
        ax.set_ylim(-0.02, 1.05)
        ax.legend(loc="lower left", frameon=True, framealpha=0.9)
        fig.tight_layout() if not fig.get_layout_engine() else None
    return fig


def distributions_plot(df: Any, center: str) -> Any:
    """Per-group step histograms of the feature RMS and of the cosine to the true-class centre."""
    import matplotlib.pyplot as plt

    with plt.rc_context(_rc()):
        fig, axes = plt.subplots(2, 1, figsize=(5.0, 3.6))
        for reg, g in df.groupby("regularizer"):
            axes[0].hist(g["rms"], bins=40, histtype="step", density=True, label=str(reg))
            axes[1].hist(g["cos_true"], bins=40, histtype="step", density=True, label=str(reg))
        axes[0].set_xlabel("feature RMS (‖h‖/√d)"), axes[1].set_xlabel(f"cosine to true-class {center} center")
        axes[0].set_ylabel("density")
        axes[1].set_ylabel("density")
        axes[0].legend(frameon=False)
        fig.tight_layout() if not fig.get_layout_engine() else None
    return fig


def plot_robust(res: Any, dim: str) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ra = res["robust_accuracy"]
    grid = np.asarray(res[dim].values, dtype=float)
    for attack in ra["attack"].values:
        for eps in ra["eps"].values:
            sel = dict(attack=attack, eps=eps)
            ax.errorbar(grid, ra.sel(sel).values,
                        yerr=[ra.sel(sel).values - res["robust_accuracy_ci_low"].sel(sel).values,
                              res["robust_accuracy_ci_high"].sel(sel).values - ra.sel(sel).values],
                        marker="o", ms=3, capsize=2, label=f"ε={eps_label(eps)}")
    if dim == "scale":
        ax.set_xscale("log", base=2)
    ax.set_xlabel("feature scale s" if dim == "scale" else "rotation fraction α toward the center")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False)
    return fig
