"""`DecompositionResult`: the tables of a decomposition and its one face (summary, markdown, repr, HTML)."""

from __future__ import annotations
from dataclasses import dataclass, field
from typing import Any
import numpy as np
import pandas as pd
from ...errors import QueryError
from .text import (split_text)

# ----------------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------------
@dataclass
class DecompositionResult:
    """What `decompose` returns.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per outcome and component (``total``, then one per factor): ``estimate``, ``ci_low``,
        ``ci_high``, ``share`` (estimate / total; NaN when the total's interval includes 0), ``p_value``,
        ``p_floor``, ``note``.
    per_pair : pandas.DataFrame
        One row per control × treated run pair, outcome and component: ``value``.
    per_image : pandas.DataFrame or None
        Per-image shares averaged over the run pairs (per-image outcomes only): ``sample``, ``outcome``,
        ``total`` and one column per factor; each row's factors add up to its total.
    switch_effects : pandas.DataFrame
        The two extreme orders behind each Shapley share, with the same inference: ``switched="first"`` is
        ``v({j}) − v(∅)``, the effect of switching factor j alone with everything else from the control run
        (the analogue of a *pure* natural indirect effect, under the control network), ``"last"`` is
        ``v(N) − v(N ∖ {j})``, switching it last with everything else from the treated run (a *total*
        indirect effect, under the treated network). Columns outcome, factor, switched, estimate, ci_low,
        ci_high, p_value, p_floor, note.
    alignment : pandas.DataFrame
        Per run pair: ``own_accuracy`` (mean of the two runs' accuracies), ``head_swap_accuracy`` (mean accuracy
        of the two worlds where only the head is swapped), ``basis_angle`` (degrees: the angle of the orthogonal
        Procrustes fit of the treated run's features to the control run's on the same images, ``arccos(tr(M) /
        ||M||_*)`` with ``M = H_cᵀ H_t``: 0 for identical bases, θ when every coordinate plane is rotated by θ),
        ``aligned`` (the swap keeps at least half of the above-chance accuracy and the angle is at most
        `MAX_BASIS_ANGLE`). Unaligned pairs combine coordinates of different networks. Empty for the
        function-level and basis-free splits (they never apply one run's head to another run's features).
    pairing : str
        ``"seed"`` or ``"all"`` (see `decompose`'s ``pairs``).
    estimand, design, inference : str
        What is estimated, how runs and images are paired, how intervals and p-values are computed.
    level : str
        ``"function"`` (scale/shape: a property of the outputs) or ``"representation"`` (head, magnitude,
        direction...: a description of the trained parametrisation, not a causal share).
    status : str
        That status in words.
    initialisation : str
        Whether the paired runs share an initialisation: ``"verified (matching init_digest)"``, ``"stated, not
        verified (pairs='seed' ...)"``, or ``"not needed ..."`` for splits that never swap a head.
    temperature : pandas.DataFrame or None
        Per run: ``arm``, ``ece`` on the evaluation half of the images, and for control runs the
        ``temperature`` fitted (NLL) on the other half and ``ece_temperature_scaled``, the ECE it reaches on the
        evaluation half: what a temperature alone does for the control, next to the treated runs' ECE.
    temperature_split : dict or None
        The paired split: sample ids of the ``"fit"`` and ``"eval"`` halves, the permutation ``"seed"`` and
        ``"max_images"`` per half.
    """

    table: pd.DataFrame
    per_pair: pd.DataFrame
    per_image: pd.DataFrame | None
    switch_effects: pd.DataFrame
    alignment: pd.DataFrame
    pairing: str
    estimand: str
    design: str
    inference: str
    factors: tuple[str, ...]
    outcomes: tuple[str, ...]
    treatment: str
    control: Any
    treated: Any
    control_runs: list[str]
    treated_runs: list[str]
    ci_level: float
    attack: str | None = None
    eps: float | None = None
    notes: list[str] = field(default_factory=list)
    level: str = "representation"
    status: str = ""
    initialisation: str = ""
    temperature: pd.DataFrame | None = None
    temperature_split: dict[str, Any] | None = None

    def text(self, outcome: str | None = None) -> str:
        """How the factors split the total, in words that follow the signs (`split_text`), with the status."""
        o = outcome if outcome is not None else self.outcomes[0]
        if o not in self.outcomes:
            raise QueryError(f"outcome: expected one of {list(self.outcomes)}, got {o!r}")
        g = self.table[self.table["outcome"] == o].set_index("component")["estimate"]
        body = split_text(float(g["total"]), {f: float(g[f]) for f in self.factors if f in g.index})
        return (f"{o}: {self.treated} − {self.control} = {g['total']:.3g}. {body} ({self.level}-level split: "
                f"{self.status}.)").replace("  ", " ")

    def summary(self, outcome: str | None = None) -> pd.DataFrame:
        """Rows total then one per factor (per outcome); columns outcome, component, estimate, ci_low,
        ci_high, share, p_value, p_floor, note."""
        t = self.table
        if outcome is not None:
            if outcome not in self.outcomes:
                raise QueryError(f"outcome: expected one of {list(self.outcomes)}, got {outcome!r}")
            t = t[t["outcome"] == outcome]
        return t.reset_index(drop=True).copy()

    def describe(self) -> str:
        """Estimand, design and inference in three sentences."""
        return f"Estimand: {self.estimand}. Design: {self.design}. Inference: {self.inference}."

    def _title(self) -> str:
        what = "Function-level" if self.level == "function" else "Representation-level"
        return (f"{what} decomposition of {self.treated} − {self.control} on {', '.join(self.outcomes)} into "
                f"{', '.join(self.factors)}")

    def to_markdown(self) -> str:
        """The result as Markdown: title, the sentence per outcome, estimand / design / inference, summary table."""
        from ..results import markdown_table

        parts = [f"### {self._title()}", ""] + [self.text(o) for o in self.outcomes] + ["", self.describe(), "",
                                                                                       markdown_table(self.summary())]
        return "\n".join(parts) + "\n"

    def _repr_html_(self) -> str:
        import html

        from ..results import _fmt

        fmt = {c: (lambda v: _fmt(v)) for c in ("estimate", "ci_low", "ci_high", "share", "p_value", "p_floor")}
        body = [f"<h4>{html.escape(self._title())}</h4>"]
        body += [f"<p>{html.escape(self.text(o))}</p>" for o in self.outcomes]
        body += [f"<p>{html.escape(self.describe())}</p>",
                 self.summary().to_html(index=False, formatters=fmt, na_rep="")]
        return "<div class='causalgeom-decomposition'>" + "\n".join(body) + "</div>"

    def __repr__(self) -> str:
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            return (f"<DecompositionResult {self._title()}>\n{self.describe()}\n"
                    f"{self.summary().to_string(index=False)}")

    def plot(self, outcome: str | None = None, ax: Any = None) -> Any:
        """Bar chart of the total and each factor's share with its interval (one panel per outcome).

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        outcomes = [outcome] if outcome is not None else list(self.outcomes)
        for o in outcomes:
            if o not in self.outcomes:
                raise QueryError(f"outcome: expected one of {list(self.outcomes)}, got {o!r}")
        if ax is None:
            fig, axes = plt.subplots(1, len(outcomes), figsize=(3.6 * len(outcomes), 3.2), squeeze=False)
            axes = list(axes[0])
        else:
            axes, fig = [ax], ax.figure
        for a, o in zip(axes, outcomes):
            g = self.table[self.table["outcome"] == o]
            y = np.arange(len(g))[::-1]
            est = g["estimate"].to_numpy()
            colors = ["0.35"] + ["C0", "C1", "C2", "C3"][: len(g) - 1]
            a.barh(y, est, color=colors, alpha=0.8)
            err = np.vstack([est - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - est])
            a.errorbar(est, y, xerr=np.where(np.isfinite(err), err, 0.0), fmt="none", ecolor="k", capsize=3)
            a.axvline(0, color="k", lw=0.8)
            a.set_yticks(y, list(g["component"]))
            a.set_xlabel(f"{o}: {self.treated} − {self.control}")
        what = "Function-level (scale, shape)" if self.level == "function" else "Representation-level"
        fig.suptitle(f"{what} decomposition ({int(round(100 * self.ci_level))}% intervals)", fontsize=10)
        fig.tight_layout()
        return fig

