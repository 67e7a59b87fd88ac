"""The scripted report: one self-contained HTML file (figures embedded), a Markdown twin, and PNG figures.

``cg.report(study, out="report.html", query=...)`` runs the whole analysis of a study (paper table,
reliability diagrams, magnitude and cosine distributions, cone test, interventions, mediation with
refuters and sensitivity) from stored dumps only, and writes it. It computes nothing itself: every
number comes from `summary`, `calibration`, `geometry`, `table`, `causal` and `interventions`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import CausalGeomError, QueryError
from .study import Study, open_study

__all__ = ["report", "Section", "SECTION_IDS", "default_queries"]

#: Section ids, in order; the HTML has one ``<section id=...>`` for each (the rendering test checks them).
SECTION_IDS = ("provenance", "paper-table", "reliability", "distributions", "cone-test", "interventions",
               "mediation", "refuters-sensitivity", "findings")


@dataclass
class Section:
    """One report section: a title, HTML and Markdown bodies, and named figures (PNG bytes)."""

    id: str
    title: str
    html: str = ""
    md: str = ""
    figures: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # written as tables/NAME.csv

    def add_table(self, df: pd.DataFrame, caption: str = "", floatfmt: str = "{:.4g}") -> None:
        fmt = df.copy()
        for c in fmt.columns:
            if pd.api.types.is_float_dtype(fmt[c]):
                fmt[c] = fmt[c].map(lambda v: "" if pd.isna(v) else floatfmt.format(v))
        self.html += (f"<p class='caption'>{html.escape(caption)}</p>" if caption else "") + \
            fmt.to_html(index=False, escape=True, border=0, classes="table")
        self.md += (f"{caption}\n\n" if caption else "") + _markdown_table(fmt) + "\n\n"

    def add_text(self, text: str) -> None:
        self.html += f"<p>{html.escape(text)}</p>"
        self.md += text + "\n\n"

    def add_figure(self, name: str, fig: Any, caption: str) -> None:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        png = buf.getvalue()
        self.figures[name] = png
        b64 = base64.b64encode(png).decode("ascii")
        self.html += (f"<figure data-figure='{html.escape(name)}'><img alt='{html.escape(caption)}' "
                      f"src='data:image/png;base64,{b64}'/><figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md += f"![{caption}](figures/{name}.png)\n\n"


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if (isinstance(v, float) and np.isnan(v)) else str(v) for v in row) + " |")
    return "\n".join(lines)


def default_queries(study: Study) -> list[Any]:
    """The demo's questions: each regularizer vs ``ce``, mediators RMS and cosine, outcomes overconfidence and robustness."""
    from .causal import Query

    runs = study.runs
    regs = sorted(set(runs["regularizer"].dropna()) - {"ce"})
    if "ce" not in set(runs["regularizer"]):
        raise QueryError("default report queries compare each regularizer with 'ce', but the study has no "
                         f"'ce' runs (regularizers: {sorted(set(runs['regularizer'].dropna()))}); pass a query file")
    outcomes = ["overconfidence"]
    robust = _robust_columns(study)
    if robust:
        outcomes.append(robust[len(robust) // 2])  # the middle of the first attack's eps sweep
    return [Query(treatment="regularizer", control="ce", treated=r, mediators=["rms", "cos_true"],
                  outcomes=outcomes, method="regression", n_boot=500, seed=0) for r in regs]


def _robust_columns(study: Study) -> list[str]:
    runs = study.runs
    if runs.empty or not len(runs.iloc[0]["attacks"]):
        return []
    from .table import robust_column

    first = runs.iloc[0]
    return [robust_column(str(first["attacks"][0]), float(e)) for e in first["eps"]]


class _Progress:
    def __init__(self, enabled: bool, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="report", disable=not enabled, unit="section")

    def step(self, what: str) -> None:
        self.bar.set_postfix_str(what)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def report(study: Study | str | os.PathLike, out: str | os.PathLike = "report.html", *,
           query: str | os.PathLike | Any | list[Any] | None = None, interventions: bool = True,
           refute: bool = True, progress: bool = True, robust: dict[str, Any] | None = None) -> Path:
    """Analyse ``study`` and write ``out`` (HTML), ``out``'s ``.md`` twin and ``figures/*.png`` beside it.

    Parameters
    ----------
    study : Study or path
    out : path
        The HTML file to write.
    query : path to a TOML query file, a `causalgeom.causal.Query`, a list of them, or None
        The mediation questions; ``None`` uses :func:`default_queries`.
    interventions, refute : bool
        Include the intervention dose-response curves / DoWhy refuters (both on by default).
    progress : bool
        Show a progress bar over sections.
    robust : dict, optional
        In-model intervention results to include (`causalgeom.interventions.robust_dose_response`
        outputs keyed ``"rescale"`` / ``"rotate"``; the demo computes them from the checkpoints).

    Returns
    -------
    pathlib.Path
        The HTML file.
    """
    from . import causal

    if not isinstance(study, Study):
        study = open_study(study)
    if len(study) == 0:
        raise QueryError(f"study {study.path} has no complete runs to report on")
    if query is None:
        queries = default_queries(study)
    elif isinstance(query, (str, os.PathLike)):
        queries = causal.read_queries(query)
    elif isinstance(query, (list, tuple)):
        queries = list(query)
    else:
        queries = [query]
    out = Path(out)
    bar = _Progress(progress, len(SECTION_IDS))
    ctx = _Context(study, queries, bar)
    ctx.robust = dict(robust or {})
    for q in queries:  # a query naming an unknown column or level fails here, before any work
        q.check(ctx.frame(q))
    out.parent.mkdir(parents=True, exist_ok=True)
    builders: list[Callable[[], Section]] = [
        ctx.provenance, ctx.paper_table, ctx.reliability, ctx.distributions, ctx.cone_test,
        (ctx.interventions if interventions else ctx.skipped_interventions), ctx.mediation,
        (lambda: ctx.refuters_sensitivity(refute)), ctx.findings]
    sections = []
    for build in builders:
        section = build()
        sections.append(section)
        bar.step(section.id)
    bar.close()
    _write(out, study, sections)
    return out


class _Context:
    """Holds what several sections share (frames, results), computed once."""

    def __init__(self, study: Study, queries: list[Any], bar: _Progress):
        self.study, self.queries, self.bar = study, queries, bar
        self.runs = study.runs
        self._frames: dict[str, pd.DataFrame] = {}
        self.paper: pd.DataFrame | None = None
        self.mediation_results: list[Any] = []
        self.intervention_results: dict[str, Any] = {}
        self.share_table: pd.DataFrame | None = None
        self.robust: dict[str, Any] = {}
        self.notes: list[str] = []

    @property
    def sample_frame(self) -> pd.DataFrame:
        """The default per-sample analysis table."""
        key = "default"
        if key not in self._frames:
            self._frames[key] = self.study.to_frame(level="sample", progress=False)
        return self._frames[key]

    def _by_regularizer(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rec in self.runs.sort_values(["regularizer", "run_id"]).to_dict("records"):
            out.setdefault(str(rec.get("regularizer")), []).append(rec["run_id"])
        return out

    # -- sections ----------------------------------------------------------------------------
    def provenance(self) -> Section:
        from .schema import package_versions

        s = Section("provenance", "Study and provenance")
        s.add_text(f"Study folder: {self.study.path} — {len(self.runs)} runs, generated "
                   f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by causalgeom "
                   f"{package_versions().get('causalgeom', '?')}.")
        cols = [c for c in ("run_id", "regularizer", "strength", "seed", "model", "dataset", "split", "n_samples",
                            "n_classes", "n_features", "feature_layer") if c in self.runs.columns]
        s.add_table(self.runs[cols], "Runs (one Zarr store each).")
        first = self.study[self.runs.iloc[0]["run_id"]]
        versions = first.attrs.get("versions", {})
        if versions:
            s.add_text("Package versions recorded in the dumps: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
        params = self.runs[["run_id", "regularizer_params"]] if "regularizer_params" in self.runs else None
        if params is not None:
            s.add_table(params.assign(regularizer_params=params.regularizer_params.map(str)),
                        "Regularizer configurations.")
        if incomplete := self.study.incomplete:
            s.add_text(f"Not included (incompletely written): {', '.join(incomplete)}.")
        return s

    def paper_table(self) -> Section:
        from .summary import format_table, paper_table

        s = Section("paper-table", "The paper table: accuracy, calibration, geometry and robustness per regularizer")
        self.paper = paper_table(self.study)
        shown = format_table(self.paper)
        shown.insert(0, "group", [f"{r} ({st:g})" if r != "ce" else "ce" for r, st in
                                  zip(shown.pop("regularizer"), shown.pop("strength"))])
        shown = shown.set_index("group").T.reset_index().rename(columns={"index": "metric"})
        shown.columns.name = None
        s.add_table(shown, "Mean ± half-width of the 95% t-interval over seeds (the unit of replication is the "
                           "training run; n_runs per column). robust_acc[ATTACK@ε] is the accuracy under the attack "
                           "at budget ε (pixel scale [0, 1]); robust_auc the normalized area under that curve.")
        s.tables["paper_table"] = self.paper
        return s

    def reliability(self) -> Section:
        import matplotlib.pyplot as plt
        import xarray as xr

        from .calibration import reliability

        s = Section("reliability", "Reliability diagrams per regularizer")
        groups = self._by_regularizer()
        fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), squeeze=False)
        for ax, (reg, run_ids) in zip(axes[0], groups.items()):
            ds = xr.concat([self.study[r][["logits", "label"]] for r in run_ids], dim="sample")
            rel = reliability(ds, n_bins=15).compute()
            conf, acc, count = (np.asarray(rel[v]) for v in ("confidence", "accuracy", "count"))
            keep = count > 0
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            ax.bar(conf[keep], acc[keep], width=1 / 15, alpha=0.6, edgecolor="k", label="accuracy")
            ax.plot(conf[keep], conf[keep], "r.", label="confidence")
            ax.set_title(f"{reg} ({len(run_ids)} runs)")
            ax.set_xlabel("confidence")
            ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        axes[0][0].set_ylabel("accuracy")
        s.add_figure("reliability", fig, "Reliability diagrams (15 equal-width bins, runs of a regularizer pooled); "
                                         "bars below the diagonal mean overconfidence.")
        return s

    def distributions(self) -> Section:
        import matplotlib.pyplot as plt

        s = Section("distributions", "Feature magnitude and cosine to the class center")
        df = self.sample_frame
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for reg, g in df.groupby("regularizer"):
            axes[0].hist(g["rms"], bins=40, histtype="step", density=True, label=str(reg))
            axes[1].hist(g["cos_true"], bins=40, histtype="step", density=True, label=str(reg))
        axes[0].set_xlabel("feature RMS (‖h‖/√d)"), axes[1].set_xlabel("cosine to true-class minimal-loss center")
        axes[0].legend(fontsize=8)
        s.add_figure("distributions", fig, "Distributions of feature magnitude (RMS) and of the cosine to the "
                                           "true-class minimal-loss center, per regularizer (all seeds).")
        summ = df.groupby("regularizer")[["rms", "cos_true"]].agg(["mean", "median"]).round(4)
        summ.columns = [f"{a}_{b}" for a, b in summ.columns]
        s.add_table(summ.reset_index(), "Per-sample summaries (pooled over seeds).")
        return s

    def cone_test(self) -> Section:
        import matplotlib.pyplot as plt

        from .geometry import cone_test

        s = Section("cone-test", "Cone test: are decision regions cones around the origin?")
        rows = []
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for reg, run_ids in self._by_regularizer().items():
            for with_bias in (True, False):
                res = cone_test(self.study[run_ids[0]], with_bias=with_bias)
                rows.append({"regularizer": reg, "run_id": run_ids[0], "with_bias": with_bias,
                             "fraction_never_flips": float(res["frac_never_flips"])})
                ax.plot(np.asarray(res["scale"]), 1 - np.asarray(res["frac_changed"]),
                        ls="-" if with_bias else ":", label=f"{reg}{'' if with_bias else ' (no bias)'}")
        ax.set_xscale("log"), ax.set_xlabel("scale s of the feature"), ax.set_ylabel("prediction unchanged")
        ax.legend(fontsize=7)
        s.add_figure("cone_test", fig, "Fraction of samples whose predicted class is unchanged when the feature h "
                                       "is replaced by s·h (one run per regularizer; dotted: bias removed).")
        s.add_table(pd.DataFrame(rows), "Fraction of samples whose prediction never changes over the scale grid "
                                        "(1/16 to 16). Without the bias, argmax(s·Wh) = argmax(Wh) for every s > 0, "
                                        "so the regions are exact cones and the fraction is 1; with the bias, the "
                                        "fraction measures how far the decision regions are from cones.")
        return s

    def skipped_interventions(self) -> Section:
        s = Section("interventions", "Interventions")
        s.add_text("Interventions were not requested for this report.")
        return s

    def interventions(self) -> Section:
        from . import interventions as iv

        s = Section("interventions", "Interventions: set the magnitude or the direction, measure what follows")
        groups = self._by_regularizer()
        control = groups.get("ce", next(iter(groups.values())))[0]
        ds = self.study[control]
        scales = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
        alphas = [-0.5, -0.25, 0.0, 0.25, 0.5, 0.75]
        rs = iv.rescale(ds, scales=scales, rng=np.random.default_rng(0))
        rt = iv.rotate(ds, alphas=alphas, rng=np.random.default_rng(0))
        self.intervention_results = {"rescale": rs, "rotate": rt, "control_run": control}
        s.add_figure("dose_rescale", iv.plot_dose_response(rs), f"Rescaling h → s·h on run {control}: "
                     "calibration outcomes against s (95% percentile bootstrap over samples).")
        s.add_figure("dose_rotate", iv.plot_dose_response(rt), f"Rotating h toward its predicted-class center by a "
                     f"fraction α of the angle (norm kept) on run {control}.")
        s.add_table(_dataset_table(rs, "scale"), "Rescaling: outcomes against s.")
        s.add_table(_dataset_table(rt, "alpha"), "Rotation: outcomes against α.")
        for kind, res in self.robust.items():
            dim = "scale" if kind == "rescale" else "alpha"
            s.add_figure(f"robust_{kind}", _plot_robust(res, dim),
                         f"Inside the model (head ∘ T ∘ backbone, run {res.attrs.get('run_id')}, "
                         f"{res.attrs.get('n_samples')} test images): robust accuracy under PGD against "
                         f"{'the feature scale s' if dim == 'scale' else 'the rotation fraction α'}, one line per ε "
                         "(95% percentile bootstrap over samples).")
            table = res["robust_accuracy"].to_dataframe().reset_index()
            s.tables[f"robust_{kind}"] = table
        return s

    def frame(self, query: Any) -> pd.DataFrame:
        """The analysis table a query asks for (cached per table options)."""
        kwargs = query.table_kwargs()
        key = repr(sorted(kwargs.items()))
        if key not in self._frames:
            self._frames[key] = self.study.to_frame(progress=False, **kwargs)
        return self._frames[key]

    def mediation(self) -> Section:
        from . import causal

        s = Section("mediation", "Mediation analysis")
        for i, q in enumerate(self.queries):
            label = f"{q.treatment} = {q.treated} vs {q.control}"
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    res = causal.mediate(self.frame(q), **q.mediate_kwargs())
            except QueryError as exc:
                self.notes.append(f"{label}: not estimable ({exc}).")
                s.add_text(f"{label}: not estimable — {exc}")
                continue
            self.mediation_results.append((q, res))
            for w in caught:  # e.g. too few runs per arm: the caveat belongs next to the numbers
                s.add_text(f"Caution ({w.category.__name__}): {w.message}")
            s.add_table(res.summary(), f"{label}; mediators {', '.join(q.mediators)}. {res.describe()}")
            s.tables[f"mediation_{i}_{_slug(str(q.treated))}"] = res.summary()
            s.add_figure(f"forest_{i}_{_slug(str(q.treated))}", res.plot(),
                         f"Forest plot: {label} (estimates with {int(round(100 * res.ci_level))}% intervals).")
        if not self.mediation_results:
            s.add_text("No mediation query could be estimated.")
        else:
            self._share_vs_mediation(s)
        return s

    def _share_vs_mediation(self, s: Section) -> None:
        """Interventional share (matching the control runs to the treated runs) next to the proportion mediated."""
        from . import interventions as iv

        rows = []
        for q, res in self.mediation_results:
            if q.treatment != "regularizer":
                continue
            try:
                matches = {what: iv.match_study(self.study, control=str(q.control), treated=str(q.treated), what=what,
                                                n_boot=200, rng=np.random.default_rng(0))
                           for what in ("magnitude", "cosine", "both")}
                table = iv.share_vs_mediation(matches, res)
            except (CausalGeomError, ValueError) as exc:
                self.notes.append(f"Interventional share for {q.treated}: not computed ({exc}).")
                continue
            rows.append(table.assign(treated=str(q.treated)))
        if rows:
            table = pd.concat(rows, ignore_index=True)
            self.share_table = table
            s.tables["share_vs_mediation"] = table
            s.add_table(table, "Interventional share vs proportion mediated: the fraction of the treated−control gap "
                               "closed by giving the control runs the treated runs' magnitude (quantile matching of "
                               "RMS), cosine, or both, next to the mediation analysis' proportion mediated through "
                               "the same quantity (intervals: cluster bootstrap over runs). Agreement supports the "
                               "mediation model; a gap points at confounding, nonlinearity or a proxy mediator.")

    def refuters_sensitivity(self, refute: bool) -> Section:
        from . import causal

        s = Section("refuters-sensitivity", "Refuters and sensitivity")
        for q, res in self.mediation_results:
            sens = getattr(res, "sensitivity", None)
            if sens is not None and len(sens):
                s.add_table(pd.DataFrame(sens), f"Sensitivity to unmeasured mediator–outcome confounding "
                                               f"({res.sensitivity_method}): {q.treated} vs {q.control}.")
        if refute and self.mediation_results:
            q, res = self.mediation_results[0]
            try:
                s.add_table(causal.refute(res), f"DoWhy refuters (placebo treatment, random common cause, data "
                                                f"subset) for {q.treated} vs {q.control}.")
            except Exception as exc:  # noqa: BLE001 - a refuter failing must not lose the report; say so
                s.add_text(f"DoWhy refuters could not be run: {type(exc).__name__}: {exc}")
        if not self.mediation_results:
            s.add_text("No mediation result to refute.")
        return s

    def findings(self) -> Section:
        s = Section("findings", "Findings in plain language")
        for text in findings_text(self.paper, self.mediation_results, self.intervention_results, self.share_table,
                                  self.robust):
            s.add_text(text)
        for note in self.notes:
            s.add_text(note)
        return s


def _plot_robust(res: Any, dim: str) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    ra = res["robust_accuracy"]
    grid = np.asarray(res[dim].values, dtype=float)
    for attack in ra["attack"].values:
        for eps in ra["eps"].values:
            sel = dict(attack=attack, eps=eps)
            ax.errorbar(grid, ra.sel(sel).values,
                        yerr=[ra.sel(sel).values - res["robust_accuracy_ci_low"].sel(sel).values,
                              res["robust_accuracy_ci_high"].sel(sel).values - ra.sel(sel).values],
                        marker="o", ms=3, capsize=2, label=f"ε={float(eps) * 255:.0f}/255")
    if dim == "scale":
        ax.set_xscale("log", base=2)
    ax.set_xlabel("feature scale s" if dim == "scale" else "rotation fraction α toward the center")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return fig


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def _dataset_table(ds: Any, dim: str) -> pd.DataFrame:
    keep = [v for v in ("accuracy", "ece", "signed_ece", "nll", "mean_confidence") if v in ds]
    return ds[keep].to_dataframe().reset_index()


def _ci(rec: dict[str, Any]) -> str:
    return f"{rec['estimate']:+.3g} (CI {rec['ci_low']:+.3g} to {rec['ci_high']:+.3g})"


def _excludes_zero(rec: dict[str, Any]) -> bool:
    return bool(rec["ci_low"] > 0 or rec["ci_high"] < 0)


def findings_text(paper: pd.DataFrame | None, mediation: list[Any], interventions: dict[str, Any],
                  share: pd.DataFrame | None = None, robust: dict[str, Any] | None = None) -> list[str]:
    """Plain-language paragraphs: what the numbers support and what they do not.

    One paragraph on calibration per regularizer (over- or underconfident, by the t-interval of the signed
    ECE over runs), one per mediation question and outcome (total, direct and indirect effects with their
    cluster-bootstrap intervals; a path is "supported" when its interval excludes 0), one per intervention,
    and the caveats that apply to all of them.
    """
    out: list[str] = []
    if paper is not None and "signed_ece" in paper.columns:
        parts = []
        for rec in paper.to_dict("records"):
            sece, lo, hi = rec.get("signed_ece"), rec.get("signed_ece_low"), rec.get("signed_ece_high")
            if sece is None or pd.isna(sece):
                continue
            if not pd.isna(lo) and lo > 0:
                verdict = "overconfident"
            elif not pd.isna(hi) and hi < 0:
                verdict = "underconfident"
            else:
                verdict = "neither clearly over- nor underconfident"
            parts.append(f"{rec.get('regularizer')} is {verdict} (signed ECE {sece:+.3f}, 95% t-interval "
                         f"{lo:+.3f} to {hi:+.3f} over {rec.get('n_runs', '?')} runs)")
        if parts:
            under = [p.split(" is ")[0] for p in parts if "underconfident" in p]
            text = "Calibration: " + "; ".join(parts) + "."
            if under:
                text += (f" Note that {', '.join(under)} made the model underconfident: the regularizer "
                         "over-corrected, so a lower confidence is not a better calibration here.")
            out.append(text)
    for q, res in mediation:
        summ = res.summary()
        for outcome, g in summ.groupby("outcome", sort=False):
            recs = {r["effect"]: r for r in g.to_dict("records")}
            total, direct = recs.get("total"), recs.get("direct")
            if total is None:
                continue
            paths = []
            for m in q.mediators:
                r = recs.get(f"indirect[{m}]") or (recs.get("indirect") if len(q.mediators) == 1 else None)
                if r is not None:
                    paths.append(f"through {m} {_ci(r)} — " + ("supported" if _excludes_zero(r) else
                                                               "not supported (the interval includes 0)"))
            text = (f"{q.treated} vs {q.control}, outcome {outcome}: total effect {_ci(total)}"
                    + (f", direct effect {_ci(direct)}" if direct else "") + "; indirect effects: "
                    + "; ".join(paths) + ".")
            pm = recs.get("prop_mediated")
            if pm is not None and _excludes_zero(total):
                text += f" Proportion mediated: {_ci(pm)}."
            elif pm is not None:
                text += " The proportion mediated is not interpreted: the total effect's interval includes 0."
            text += (f" Intervals: {int(round(100 * res.ci_level))}% {res.resampling_unit} bootstrap over "
                     f"{res.n_clusters} runs.")
            out.append(text)
    if interventions.get("rescale") is not None:
        rs = interventions["rescale"]
        e = np.asarray(rs["signed_ece"].values)
        sc = np.asarray(rs["scale"].values)
        acc = np.asarray(rs["accuracy"].values)
        out.append(f"Intervention on magnitude (run {interventions['control_run']}): rescaling every feature by s "
                   f"from {sc.min():g} to {sc.max():g} moves the signed ECE from {e[0]:+.3f} to {e[-1]:+.3f} while "
                   f"accuracy stays within {acc.min():.3f}–{acc.max():.3f}. "
                   + ("Smaller magnitude lowers confidence, as the magnitude → calibration path predicts; this is "
                      "an intervention on the stored representation, not on training."
                      if e[0] < e[-1] else "This does not show smaller magnitude lowering confidence."))
    for kind, res in (robust or {}).items():
        dim = "scale" if kind == "rescale" else "alpha"
        ra = res["robust_accuracy"].isel(attack=0, eps=-1)
        lo, hi = res["robust_accuracy_ci_low"].isel(attack=0, eps=-1), res["robust_accuracy_ci_high"].isel(attack=0, eps=-1)
        grid = np.asarray(res[dim].values, dtype=float)
        pts = ", ".join(f"{dim}={g:g}: {a:.2f} ({l:.2f}–{h:.2f})" for g, a, l, h in
                        zip(grid, ra.values, lo.values, hi.values))
        what = ("rescaling the feature (magnitude only)" if dim == "scale"
                else "rotating the feature toward its predicted-class center (direction only)")
        sentences = [f"Inside the model (run {res.attrs.get('run_id')}), {what} gives robust accuracy at "
                     f"ε={float(ra['eps']) * 255:.0f}/255 of {pts}."]
        if dim == "alpha" and ra.values[-1] > ra.values[0]:
            sentences.append("Higher cosine to the center goes with higher robustness, as the cosine → robustness "
                             "path predicts.")
        if dim == "scale":
            sentences.append("Caution: attacks through a rescaled head can be weakened by saturated gradients "
                             "(gradient masking) rather than made harder.")
        out.append(" ".join(sentences))
    if share is not None and len(share):
        for treated, g in share.groupby("treated", sort=False):
            parts = []
            for r in g.to_dict("records"):
                agree = (r["interventional_share_ci_low"] <= r["proportion_mediated_ci_high"]
                         and r["proportion_mediated_ci_low"] <= r["interventional_share_ci_high"])
                what = {"both": "magnitude and cosine together"}.get(r["what"], r["what"])
                parts.append(f"setting the {what} closes {r['interventional_share']:.2f} "
                             f"({r['interventional_share_ci_low']:.2f}–{r['interventional_share_ci_high']:.2f}) of the "
                             f"{r['intervention_outcome']} gap vs a proportion mediated of {r['proportion_mediated']:.2f} "
                             f"({r['proportion_mediated_ci_low']:.2f}–{r['proportion_mediated_ci_high']:.2f}) — "
                             + ("the two agree" if agree else "the two disagree"))
            out.append(f"Interventions vs mediation, {treated} vs ce: " + "; ".join(parts) + ". Where they disagree, "
                       "the observational (within-study) mediation model does not capture what setting the "
                       "mediator does; the interventional share is the more direct evidence for the stored "
                       "representation, the mediation estimate the one that accounts for training variation.")
    if mediation:
        out.append("Caveats: natural direct and indirect effects assume no unmeasured confounding of the "
                   "mediator–outcome relation (see the sensitivity table: the ρ at which each path would vanish); "
                   "the treatment is assigned per training run, so the intervals resample runs, and with few runs "
                   "per arm they are rough.")
    if not out:
        out.append("No finding could be stated from this study.")
    return out


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f2f2f2}figure{margin:1em 0}img{max-width:100%}.caption,figcaption{color:#555;font-size:13px}
nav a{margin-right:1em}"""
# After load, record how many embedded figures decoded (a browser test reads it from the DOM).
_SCRIPT = ("<script>window.addEventListener('load',function(){var i=document.images,n=0;"
           "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)n++;}"
           "document.body.setAttribute('data-images-loaded',n);});</script>")


def _write(out: Path, study: Study, sections: list[Section]) -> None:
    figdir, tabdir = out.parent / "figures", out.parent / "tables"
    figdir.mkdir(exist_ok=True)
    tabdir.mkdir(exist_ok=True)
    for sec in sections:
        for name, png in sec.figures.items():
            (figdir / f"{name}.png").write_bytes(png)
        for name, df in sec.tables.items():
            df.to_csv(tabdir / f"{name}.csv", index=False)
    title = f"causalgeom report — {study.path.name}"
    nav = "".join(f"<a href='#{s.id}'>{html.escape(s.title.split(':')[0])}</a>" for s in sections)
    body = "".join(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>{s.html}</section>" for s in sections)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style>{_SCRIPT}</head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}</body></html>")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    md = f"# {title}\n\n" + "".join(f"## {s.title}\n\n{s.md}" for s in sections)
    out.with_suffix(".md").write_text(md, encoding="utf-8")


class _CallableModule(types.ModuleType):
    """Lets ``cg.report(study, out=...)`` call the function while ``causalgeom.report`` stays the module."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
