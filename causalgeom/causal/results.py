"""`MediationResult`: estimates, intervals and how they were obtained; summary table, forest plot, Markdown, HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MediationResult", "SUMMARY_COLUMNS", "markdown_table", "floor_interval_sentence"]

#: Columns of `MediationResult.summary` (``outcome`` first, so results with several outcomes stay one table).
SUMMARY_COLUMNS = ("outcome", "effect", "estimate", "ci_low", "ci_high", "p_value", "p_floor", "note", "n_runs",
                   "n_samples")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return ""
        return f"{v:.4g}"
    return str(v)


def floor_interval_sentence(effects: list[str], p_floor: float, counts: list[int] | dict[str, int], *,
                            alpha: float = 0.05, ci_level: float = 0.95, paired: bool = False) -> str:
    """One sentence when intervals exclude 0 but the exact (randomization) test cannot reach ``alpha``.

    Parameters
    ----------
    effects : list of str
        The effects whose interval excludes 0 (empty: no sentence).
    p_floor : float
        The design's smallest p-value (`causalgeom.causal.inference.randomization_floor`); no sentence when it is
        at most ``alpha``.
    counts : list of int or dict
        Runs per arm (or ``[n_pairs]`` when ``paired``).
    alpha : float
        The level the exact test should be able to reach.
    paired : bool
        The floor is that of a sign-flip test over seed pairs (``2 / 2^n``).

    Returns
    -------
    str
        "" or the sentence, with the smallest number of seeds per arm (pairs) whose floor is at most ``alpha``
        (`causalgeom.causal.inference.seeds_for_floor`).
    """
    from .inference import seeds_for_floor

    if not effects or not np.isfinite(p_floor) or p_floor <= alpha:
        return ""
    sizes = list(counts.values()) if isinstance(counts, dict) else list(counts)
    n = seeds_for_floor(sizes, alpha, paired=paired)
    if paired:
        have = f"{sizes[0]} seed pairs"
        need = f"{n} seed pairs ({n - sizes[0]} more)"
    else:
        have = " + ".join(str(int(c)) for c in sizes) + " runs"
        more = [max(n - int(c), 0) for c in sizes]
        need = f"{n} seeds per arm ({' and '.join(str(m) for m in more)} more)" if len(set(more)) > 1 else \
            f"{n} seeds per arm ({more[0]} more each)"
    which = ", ".join(effects)
    verb = "interval of {} excludes".format(which) if len(effects) == 1 else f"intervals of {which} exclude"
    return (f"The {100 * ci_level:g}% {verb} 0, but with {have} the exact randomization test "
            f"cannot give p below {p_floor:.2g} (> {alpha:g}), so it cannot confirm it at {alpha:g}; {need} would "
            f"let it.")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats to 4 significant digits, NaN empty)."""
    cols = [str(c) for c in df.columns]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(esc(_fmt(v)) for v in row) + " |")
    return "\n".join(lines)


@dataclass
class MediationResult:
    """The result of `causalgeom.causal.mediate`.

    Attributes
    ----------
    method : str
        ``"regression"``, ``"statsmodels"`` or ``"dowhy"``.
    estimator : str
        What produced the point estimates (models, estimands).
    resampling_unit : str
        Short name of the resampling unit of the intervals, e.g. ``"cluster (run_id)"``.
    resampling : str
        Full description of how intervals and p-values were obtained.
    n_clusters : int
        Number of clusters (runs) in the analysis.
    clusters_per_arm : dict
        Clusters per treatment arm (categorical) or per treatment value (continuous).
    n_boot : int
        Replicates used (after dropping failed ones).
    ci_level : float
    p_value_method : str
    level : str
        ``"sample"`` or ``"run"`` (rows of the table).
    sensitivity : DataFrame
        Compact sensitivity analysis (ρ at which indirect effects vanish, or mediational E-values).
    sensitivity_curve : DataFrame
        The ρ curve (linear outcome), empty otherwise.
    sensitivity_method : str
    replicates : ndarray, shape (n_boot, n_effects, n_outcomes)
        Bootstrap replicates of the effects (empty for statsmodels).
    notes : list of str
        Everything the reader should know (dropped rows, warnings).
    design : str
        One sentence: ``"paired by image: image fixed effects absorbed ... (130 images × 6 runs)"`` or
        ``"unpaired: <reason>"``.
    estimand : str
        ``"effect over training runs (runs as the population; N runs)"`` or ``"model-conditional: these models,
        inference over test images (paired by image)"``.
    inference : str
        Method, unit of resampling and confidence level of the intervals, and how the p-values were obtained.
    overlap : DataFrame
        ``mediator, share_treated_in_control_range, share_control_in_treated_range, supported`` (see
        `causalgeom.causal.mediation.overlap_table`).
    mundlak : DataFrame
        ``outcome, mediator, within, between, pooled``: the mediator's outcome slope within images (image fixed
        effects), between images (image means) and pooled (no image effects); empty when unpaired.
    p_floor : float
        The smallest p-value the design supports (0: none).
    slope : str
        ``"pooled"`` or ``"within"``: the mediator → outcome slope of the outcome model.
    run_confounding : DataFrame
        ``outcome, mediator, pooled, within, between, difference, se, df, p_value``: the run-level Mundlak test of
        between-run = within-run slope (`causalgeom.causal.mediation.run_confounding`); empty when not available.
    within_effects : DataFrame
        ``outcome, effect, estimate, ci_low, ci_high`` with the within-run slope (empty when not available).
    confounding_warning : str
        The warning printed when the pooled slope is used and the test rejects ("" otherwise).
    engine : {"in-process", "dask"}
        Which engine answered: the estimator on the per-sample table in this process, or per-run sufficient
        statistics on Dask (`causalgeom.scale.mediate_study`).
    """

    table: pd.DataFrame
    method: str
    estimator: str
    resampling_unit: str
    resampling: str
    n_clusters: int
    clusters_per_arm: dict[str, int]
    n_runs: int
    n_samples: int
    n_boot: int
    ci_level: float
    p_value_method: str
    level: str
    treatment: str
    control: Any
    treated: Any
    mediators: list[str]
    outcomes: list[str]
    covariates: list[str]
    effect_names: list[str]
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity_curve: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity_method: str = ""
    replicates: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0)))
    coefficients: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    refutations: pd.DataFrame | None = None
    _design: Any = field(default=None, repr=False)
    _options: dict[str, Any] = field(default_factory=dict, repr=False)
    design: str = ""
    estimand: str = ""
    inference: str = ""
    overlap: pd.DataFrame = field(default_factory=pd.DataFrame)
    mundlak: pd.DataFrame = field(default_factory=pd.DataFrame)
    p_floor: float = 0.0
    slope: str = "pooled"
    run_confounding: pd.DataFrame = field(default_factory=pd.DataFrame)
    within_effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    confounding_warning: str = ""
    engine: str = "in-process"

    # -- tables ----------------------------------------------------------------------------------------------
    def summary(self) -> pd.DataFrame:
        """One row per (outcome, effect): ``outcome, effect, estimate, ci_low, ci_high, p_value, p_floor, note,
        n_runs, n_samples`` (``note``: "" or why a number is missing, extrapolated or at the p-value floor)."""
        t = self.table
        for c, v in (("p_floor", np.nan), ("note", "")):
            if c not in t.columns:
                t = t.assign(**{c: v})
        return t.loc[:, list(SUMMARY_COLUMNS)].copy()

    def estimate(self, effect: str, outcome: str | None = None) -> float:
        """The point estimate of ``effect`` (for ``outcome``, default the first)."""
        outcome = self.outcomes[0] if outcome is None else outcome
        t = self.table
        sel = t[(t["effect"] == effect) & (t["outcome"] == outcome)]
        if sel.empty:
            raise KeyError(f"no effect {effect!r} for outcome {outcome!r}; effects: {self.effect_names}, "
                           f"outcomes: {self.outcomes}")
        return float(sel["estimate"].iloc[0])

    def describe(self) -> str:
        """One paragraph: estimator, resampling unit and scheme, clusters, replicates, rows."""
        arms = ", ".join(f"{k}: {v}" for k, v in self.clusters_per_arm.items())
        head = ""
        if self.estimand:
            head += f"Estimand: {self.estimand}. "
        if self.design:
            head += f"Design: {self.design}. "
        return (f"{head}Estimator: {self.estimator}. Intervals: {self.resampling}. "
                f"{self.n_clusters} clusters ({arms}); {self.n_samples} rows at the {self.level} level. "
                f"p-values: {self.p_value_method}.")

    def _title(self) -> str:
        ctl, trt = self.control, self.treated
        return (f"Mediation of {self.treatment} = {trt!r} vs {ctl!r} through {', '.join(self.mediators)} on "
                f"{', '.join(self.outcomes)}")

    def to_markdown(self) -> str:
        """The result as Markdown: title, description, summary table, sensitivity, notes."""
        parts = [f"### {self._title()}", "", self.describe(), ""]
        if self.confounding_warning:
            parts += [f"**Warning:** {self.confounding_warning}.", ""]
        parts += [markdown_table(self.summary())]
        if len(self.overlap):
            parts += ["", "Overlap of the mediators across arms:", "", markdown_table(self.overlap)]
        if len(self.mundlak):
            parts += ["", "Mediator → outcome slopes within images, between images and pooled (Mundlak):", "",
                      markdown_table(self.mundlak)]
        if len(self.run_confounding):
            parts += ["", f"Mediator → outcome slopes pooled, within runs and between runs (Mundlak test over runs; "
                      f"slope used: {self.slope}):", "", markdown_table(self.run_confounding)]
        if len(self.sensitivity):
            parts += ["", f"Sensitivity ({self.sensitivity_method}):", "", markdown_table(self.sensitivity)]
        if self.refutations is not None and len(self.refutations):
            parts += ["", "Refuters:", "", markdown_table(self.refutations)]
        if self.notes:
            parts += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"

    def _repr_html_(self) -> str:
        fmt = {c: (lambda v: _fmt(v)) for c in ("estimate", "ci_low", "ci_high", "p_value")}
        body = [f"<h4>{html.escape(self._title())}</h4>",
                f"<p>{html.escape(self.describe())}</p>"]
        if self.confounding_warning:
            body.append(f"<p><strong>Warning:</strong> {html.escape(self.confounding_warning)}.</p>")
        body.append(self.summary().to_html(index=False, formatters=fmt, na_rep=""))
        if len(self.sensitivity):
            body += [f"<p>Sensitivity ({html.escape(self.sensitivity_method)}):</p>",
                     self.sensitivity.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")]
        if self.notes:
            body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in self.notes) + "</ul>")
        return "<div class='causalgeom-mediation'>" + "\n".join(body) + "</div>"

    def __repr__(self) -> str:
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            warn = f"WARNING: {self.confounding_warning}.\n" if self.confounding_warning else ""
            return (f"<MediationResult {self._title()}>\n{self.describe()}\n{warn}"
                    f"{self.summary().to_string(index=False)}")

    # -- plots -----------------------------------------------------------------------------------------------
    def plot(self, ax: Any = None, *, include_proportion: bool = False) -> Any:
        """Forest plot of the effects with their intervals (proportions mediated left out unless asked for).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draw there; otherwise a new figure is made.
        include_proportion : bool
            Also show ``prop_mediated`` rows (a different scale).

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        t = self.table
        if not include_proportion:
            t = t[~t["effect"].str.startswith("prop_mediated")]
        t = t.iloc[::-1]
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * len(t)))
        else:
            fig = ax.figure
        y = np.arange(len(t))
        est = t["estimate"].to_numpy(float)
        lo, hi = t["ci_low"].to_numpy(float), t["ci_high"].to_numpy(float)
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        outs = list(dict.fromkeys(t["outcome"]))
        col = [colors[outs.index(o) % len(colors)] for o in t["outcome"]]
        for i in range(len(t)):
            if has_ci[i]:
                ax.plot([lo[i], hi[i]], [y[i], y[i]], color=col[i], lw=2, solid_capstyle="butt")
            ax.plot(est[i], y[i], "o", color=col[i], ms=5)
        ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
        labels = [f"{e}" if len(outs) == 1 else f"{o}: {e}" for o, e in zip(t["outcome"], t["effect"])]
        ax.set_yticks(y, labels)
        ax.set_xlabel(f"effect on {outs[0]}" if len(outs) == 1 else "effect")
        ax.set_title(f"{self.treated} vs {self.control} ({int(round(100 * self.ci_level))}% CI, "
                     f"{self.resampling_unit})", fontsize=9)
        ax.set_ylim(-0.6, len(t) - 0.4)
        fig.tight_layout()
        return fig

    def plot_sensitivity(self, ax: Any = None) -> Any:
        """The ρ curve: indirect effects against the error correlation ρ (linear outcome models)."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
        else:
            fig = ax.figure
        c = self.sensitivity_curve
        if c is None or not len(c):
            ax.text(0.5, 0.5, "no ρ curve for this result", ha="center", va="center", transform=ax.transAxes)
            return fig
        for (o, m), g in c.groupby(["outcome", "mediator"], sort=False):
            ax.plot(g["rho"], g["indirect_path"], label=f"{o}: indirect[{m}]")
            if len(self.mediators) > 1:
                ax.plot(g["rho"], g["indirect"], ls=":", label=f"{o}: indirect (joint), ρ on {m}")
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        ax.axvline(0.0, color="0.7", lw=0.6)
        ax.set_xlabel("ρ (correlation of mediator and outcome errors)")
        ax.set_ylabel("indirect effect")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
