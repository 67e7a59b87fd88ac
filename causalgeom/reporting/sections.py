# Over 600 lines on purpose: one concern (the report's sections and the page); each section is short, splitting them apart would scatter one page.
"""The report's sections (each built from a `Context`) and the page that holds them.

Order: the summary (the first screen: one verdict per comparison, the headline figure, how sure, whether mediation and
decomposition agree), why (the decomposition), provenance, the paper table, reliability, distributions, cone test,
interventions, mediation, refuters and sensitivity, findings, and one Methods appendix that says the definitions,
estimands and methods once; the other sections link to it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._util.io import atomic_write
from ..errors import QueryError
from . import figures
from .text import (FACTOR_WORDS_SHORT, MEDIATION_CAVEATS, _finite, _mean_pm,
                   _relabel_eps, agreement, eps_label, findings_text, round_to_interval, summary_text,
                   verdict_text, floor_line)

__all__ = ["Section", "SECTION_IDS", "BUILDERS", "write_page"]

#: Section ids, in order; the HTML has one ``<section id=...>`` for each (the rendering test checks them).
SECTION_IDS = ("summary", "decomposition", "provenance", "paper-table", "reliability", "distributions", "cone-test",
               "interventions", "mediation", "refuters-sensitivity", "findings", "methods")

_METHODS = "<a href='#methods'>Methods</a>"


@dataclass
class Section:
    """One report section: a title, HTML and Markdown bodies, named figures (PNG bytes) and tables (CSV)."""

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
        self.html += ((f"<p class='caption'>{html.escape(caption)}</p>" if caption else "")
                      + "<div class='table-wrap'>" + fmt.to_html(index=False, escape=True, border=0, classes="table")
                      + "</div>")
        self.md += (f"{caption}\n\n" if caption else "") + _markdown_table(fmt) + "\n\n"

    def add_text(self, text: str, cls: str = "", link: tuple[str, str] | None = None) -> None:
        """A paragraph; ``link`` = (words, #anchor) appends a link (in the Markdown: the words)."""
        extra = f" <a href='{html.escape(link[1])}'>{html.escape(link[0])}</a>" if link else ""
        self.html += f"<p{f' class={cls!r}' if cls else ''}>{html.escape(text)}{extra}</p>"
        self.md += text + (f" ({link[0]})" if link else "") + "\n\n"

    def open_details(self, summary: str) -> None:
        """Start a collapsed block (the reader opens it); `close_details` ends it. The Markdown shows it all."""
        self.html += f"<details><summary>{html.escape(summary)}</summary>"

    def close_details(self) -> None:
        self.html += "</details>"

    def add_heading(self, text: str, anchor: str) -> None:
        self.html += f"<h3 id='{html.escape(anchor)}'>{html.escape(text)}</h3>"
        self.md += f"### {text}\n\n"

    def add_figure_file(self, name: str, fig: Any) -> None:
        """A figure written to figures/NAME.png only (its numbers are in a table on the page)."""
        self.figures[name] = figures.save(fig)[0]

    def add_figure(self, name: str, fig: Any, caption: str, height: float | None = None) -> None:
        """Embed ``fig`` (``height`` in inches, optional: resize first) and write it to figures/NAME.png."""
        if height is not None:
            fig.set_size_inches(fig.get_size_inches()[0], height)
        png, font_px, width = figures.save(fig)
        self.figures[name] = png
        b64 = base64.b64encode(png).decode("ascii")
        self.html += (f"<figure data-figure='{html.escape(name)}' data-min-font-px='{font_px:.2f}' "
                      f"data-natural-width='{width}'><img alt='{html.escape(caption)}' "
                      f"src='data:image/png;base64,{b64}'/><figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md += f"![{caption}](figures/{name}.png)\n\n"


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if (isinstance(v, float) and np.isnan(v)) else str(v) for v in row) + " |")
    return "\n".join(lines)


def _first_sentence(text: str) -> str:
    head, sep, _ = text.partition(". ")
    return head + "." if sep else text


def _mediation_compact(summ: pd.DataFrame, q: Any) -> pd.DataFrame:
    """Effects as rows, outcomes as columns, cells ``estimate [low, high]`` († extrapolated); the aggregate indirect
    and per-mediator proportions only where there is one mediator (their rows are in the CSV)."""
    effects = ["total", "direct"] + [f"indirect[{m}]" for m in q.mediators] + ["prop_mediated"]
    if len(q.mediators) == 1:
        effects = ["total", "direct", "indirect", "prop_mediated"]
    rows = []
    for eff in effects:
        row = {"effect": eff}
        for o, g in summ.groupby("outcome", sort=False):
            rec = g[g.effect == eff]
            if rec.empty:
                continue
            r = rec.iloc[0].to_dict()
            note = str(r.get("note") or "")
            row[_relabel_eps(o)] = ("not estimable" if not _finite(r["estimate"]) else _cell(r)) + \
                (" †" if "extrapolated" in note else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def _cell(rec: dict[str, Any], share: bool = False) -> str:
    e, lo, hi = round_to_interval(rec["estimate"], rec["ci_low"], rec["ci_high"])
    out = e if not lo else f"{e} [{lo}, {hi}]"
    if share and _finite(rec.get("share")):
        out += f" ({100 * float(rec['share']):.0f}%)"
    return out.replace("-", "−")


def _compact(res: Any) -> pd.DataFrame:
    """One row per outcome: the total and each factor as ``estimate [low, high] (share)``."""
    rows = []
    for o in res.outcomes:
        g = {r["component"]: r for r in res.table[res.table.outcome == o].to_dict("records")}
        row = {"outcome": _outcome_label(o, res), "total": _cell(g["total"])}
        for f in res.factors:
            if f in g:
                row[f] = _cell(g[f], share=True)
        rows.append(row)
    return pd.DataFrame(rows)


def _outcome_label(o: str, res: Any) -> str:
    if o == "robust_accuracy" and res.eps is not None:
        return f"robust_accuracy ({res.attack}, ε={eps_label(res.eps)})"
    return o


# -- sections --------------------------------------------------------------------------------
def summary(ctx: Any) -> Section:
    s = Section("summary", "Summary: what changed, which mechanism carries it, how sure")
    decomps = ctx.decompositions()
    lines = summary_text(decomps, len(ctx.runs))
    s.add_text(lines[0], link=("definitions: Methods", "#methods"))
    ok = [(t, c, tr, r) for t, c, tr, r in decomps if not isinstance(r, Exception)]
    for t, c, tr, r in ok:
        s.add_text(verdict_text(tr, c, r, ctx.levels(t, c, tr, r)), cls="verdict")
    if ok:
        s.add_figure("headline", figures.headline([(f"{tr}\nvs {c}", r) for _, c, tr, r in ok], FACTOR_WORDS_SHORT),
                     "Change (treated − control) in ECE, signed ECE, NLL and "
                     + ("robust accuracy at the stated ε" if any("robust_accuracy" in r.outcomes for *_, r in ok)
                        else "accuracy (no attacked outputs stored)")
                     + ", each split into the logit scale and shape (function-level decomposition), with 95% "
                       "intervals.")
    floors = {floor_line(r) for *_, r in ok}
    if len(floors) == 1 and next(iter(floors)):
        s.add_text(f"How sure (every comparison): {next(iter(floors))}", cls="sure")
    if lines[1:]:
        s.open_details("Mechanism and how sure, per comparison (intervals, randomization p-values, design floor)")
        for line in lines[1:]:
            s.add_text(line)
        s.close_details()
    flag, text = agreement(ctx.versus)
    if flag is not None:
        s.add_text(("✔ " if flag else "⚠ ") + text, cls="flag", link=("why", "#agreement"))
    return s


def decomposition(ctx: Any) -> Section:
    s = Section("decomposition", "Why: the function-level split (logit scale and shape)")
    s.html += (f"<p>Each test image's centred logits are split into their scale and shape, swapped between paired "
               f"runs and attributed by Shapley averaging (definitions: {_METHODS}). Cells: estimate [95% interval] "
               "(share of the total, when the total's interval excludes 0).</p>")
    s.md += "Each test image's centred logits are split into their scale and shape (see Methods).\n\n"
    any_ok = False
    for treatment, control, treated, res in ctx.decompositions():
        label = f"{treatment} = {treated} vs {control}"
        if isinstance(res, Exception):
            s.add_text(f"{label}: not computed — {res}")
            continue
        any_ok = True
        slug = _slug(str(treated))
        s.tables[f"decomposition_{slug}"] = res.summary()
        s.tables[f"decomposition_switch_{slug}"] = res.switch_effects
        s.open_details(f"{treated} vs {control}: scale and shape shares of every outcome (table)")
        s.add_table(_compact(res), f"{label}: function-level split (switch-first/last effects: "
                                   f"tables/decomposition_switch_{slug}.csv).")
        s.close_details()
        if res.temperature is not None and len(res.temperature):
            t = res.temperature
            s.tables[f"decomposition_temperature_{slug}"] = t
            ctl, trt = t[t.arm == "control"], t[t.arm == "treated"]
            s.add_text(f"What a temperature alone does (fit on {len(res.temperature_split['fit'])} images, evaluated "
                       f"on {len(res.temperature_split['eval'])} others): {control} ECE {ctl['ece'].mean():.3g} → "
                       f"{ctl['ece_temperature_scaled'].mean():.3g} (temperature {ctl['temperature'].mean():.3g}); "
                       f"{treated} ECE {trt['ece'].mean():.3g} on the same images.")
        rep = ctx.representation(treatment, control, treated)
        if rep is not None and not isinstance(rep, Exception):
            s.tables[f"decomposition_representation_{slug}"] = rep.summary()
            s.open_details(f"{treated} vs {control}: representation-level description ({', '.join(rep.factors)})")
            s.add_table(_compact(rep), f"Representation-level description ({', '.join(rep.factors)}; {rep.status}; "
                                       f"initialisation: {rep.initialisation}): a description of the trained "
                                       "networks, not a causal share.")
            for note in rep.notes:
                if "unaligned" in note or "basis-free" in note:
                    s.add_text(f"Caution: {note}.")
            if len(rep.alignment):
                align = rep.alignment
                s.tables[f"decomposition_alignment_{slug}"] = align
                s.add_text(f"Feature bases ({rep.pairing} pairs): head swap keeps {align['head_swap_accuracy'].mean():.2f} "
                           f"accuracy vs {align['own_accuracy'].mean():.2f} own; Procrustes angle "
                           f"{align['basis_angle'].mean():.1f}°; {int(align['aligned'].sum())} of {len(align)} pairs "
                           "aligned.")
            s.close_details()
        elif ctx.headless_reason("", ""):
            s.add_text("The representation-level description is not shown: it needs the head, which the dumps do "
                       "not store; the function-level split above needs only the logits.")
    if not any_ok:
        s.add_text("No decomposition could be computed (it needs two arms that scored the same images).")
    return s


def provenance(ctx: Any) -> Section:
    from ..dump.schema import package_versions

    s = Section("provenance", "Study and provenance")
    runs = ctx.runs
    s.add_text(f"Study folder: {ctx.study.path} — {len(runs)} runs, generated "
               f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by causalgeom "
               f"{package_versions().get('causalgeom', '?')}.")
    cols = [c for c in ("run_id", "regularizer", "strength", "seed", "n_samples") if c in runs.columns]
    same = {c: runs[c].iloc[0] for c in ("model", "dataset", "split", "n_classes", "n_features", "feature_layer")
            if c in runs.columns and runs[c].astype(str).nunique() == 1}
    cols += [c for c in ("model", "dataset", "split", "n_classes", "n_features", "feature_layer")
             if c in runs.columns and c not in same]
    table = runs[cols].copy()
    if "regularizer_params" in runs:
        table["params"] = runs["regularizer_params"].map(lambda p: ", ".join(f"{k}={v}" for k, v in p.items())
                                                         if isinstance(p, dict) else str(p))
    s.open_details(f"Runs ({len(runs)}, one Zarr store each)" + (": " + ", ".join(f"{k} {v}" for k, v in same.items())
                                                                 if same else ""))
    s.add_table(table)
    first = ctx.study[runs.iloc[0]["run_id"]]
    versions = first.attrs.get("versions", {})
    if versions:
        s.add_text("Package versions recorded in the dumps: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    sigmoid = [rid for rid in runs["run_id"] if ctx.study[rid].attrs.get("confidence", "softmax") != "softmax"]
    if sigmoid:
        s.add_text(f"Runs trained for sigmoid outputs (binary cross-entropy): {', '.join(sigmoid)}; their calibration "
                   "is that of the softmax of a BCE model, not of the probabilities their training targeted.")
    pre = [(rid, ctx.study[rid].attrs.get("preprocess"), ctx.study[rid].attrs.get("weights")) for rid in runs["run_id"]]
    if any(p or w is not None for _, p, w in pre):  # how the images reached each network (issue 25)
        s.add_table(pd.DataFrame([(r, w if w is not None else "", p or "not recorded") for r, p, w in pre],
                                 columns=["run_id", "weights", "preprocess"]),
                    "Weights (none: random initialization) and input preprocessing of each run.")
    s.close_details()
    if incomplete := ctx.study.incomplete:
        s.add_text(f"Not included (incompletely written): {', '.join(incomplete)}.")
    return s


#: The paper table's rows on the page (the CSV has every metric): what a reader compares.
PAPER_ROWS = ("accuracy", "ece", "ece_ts", "ece_floor", "ece_debiased", "signed_ece", "nll", "aurc", "rms",
              "cos_true")


def paper_table(ctx: Any) -> Section:
    s = Section("paper-table", "The paper table: accuracy, calibration, geometry and robustness per regularizer")
    paper = ctx.paper_table()
    robust = [c for c in paper.columns if c.startswith("robust_") and not c.endswith(("_low", "_high"))]
    keep = [c for c in PAPER_ROWS if c in paper.columns] + robust
    shown = _mean_pm(paper[["regularizer", "strength", "n_runs"] + [f"{c}{x}" for c in keep
                                                                      for x in ("", "_low", "_high")]])
    shown.insert(0, "group", [f"{r} ({st:g})" if r != "ce" else "ce" for r, st in
                              zip(shown.pop("regularizer"), shown.pop("strength"))])
    shown = shown.set_index("group").T.reset_index().rename(columns={"index": "metric"})
    shown.columns.name = None
    shown["metric"] = shown["metric"].map(_relabel_eps)
    s.add_table(shown, "Mean ± half-width of the 95% t-interval over runs, rounded to what the interval supports. "
                       "ece_ts: ECE after temperature scaling (held-out half); ece_floor: the ECE a perfectly "
                       "calibrated model with the same confidences would show (noise floor). Definitions: Methods; "
                       "every metric: tables/paper_table.csv.")
    s.tables["paper_table"] = paper
    return s


def reliability(ctx: Any) -> Section:
    import xarray as xr

    from ..metrics.calibration import reliability as rel

    s = Section("reliability", "Reliability diagrams per regularizer")
    groups = {}
    for reg, run_ids in ctx.by_regularizer().items():
        ds = xr.concat([ctx.study[r][["logits", "label"]] for r in run_ids], dim="sample")
        groups[f"{reg} ({len(run_ids)} runs)"] = rel(ds, n_bins=15).compute()
    min_count = next(iter(groups.values())).attrs.get("min_count", 20)
    s.add_figure("reliability", figures.reliability_panels(groups),
                 "Accuracy per confidence bin (15 equal-width bins, runs pooled) with its 95% Wilson interval; the "
                 f"number above each bar is the bin's image count; hatched grey: fewer than {min_count} images. Bars "
                 "below the diagonal: overconfident.")
    return s


def distributions(ctx: Any) -> Section:
    s = Section("distributions", "Feature magnitude and cosine to the class center")
    df = ctx.sample_frame
    center = {"mean": "mean", "weight": "weight-row"}.get(df.attrs.get("center"), "minimal-loss")
    if center == "mean" and ctx.headless_reason("", ""):
        s.add_text("The cosines are to the mean class centers (class means of each run's features): the "
                   "minimal-loss centers need the head, which the dumps do not store.")
    s.add_figure("distributions", figures.distributions_plot(df, center),
                 f"Feature magnitude (RMS) and cosine to the true-class {center} center, per regularizer (all seeds).")
    summ = df.groupby("regularizer")[["rms", "cos_true"]].agg(["mean", "median"])
    summ.columns = [f"{a}_{b}" for a, b in summ.columns]
    s.tables["distributions"] = summ.reset_index()
    return s


def cone_test(ctx: Any) -> Section:
    from ..metrics.geometry import cone_test as cone

    s = Section("cone-test", "Cone test: are decision regions cones around the origin?")
    if why := ctx.headless_reason("The cone test is", "it scales each feature h and classifies s·h with"):
        s.add_text(why)
        return s
    rows, curves = [], []
    for reg, run_ids in ctx.by_regularizer().items():
        for with_bias in (True, False):
            res = cone(ctx.study[run_ids[0]], with_bias=with_bias)
            rows.append({"regularizer": reg, "run_id": run_ids[0], "with_bias": with_bias,
                         "fraction_never_flips": float(res["frac_never_flips"])})
            curves.append((reg, with_bias, np.asarray(res["scale"]), 1 - np.asarray(res["frac_changed"])))
    s.add_figure("cone_test", figures.cone_plot(curves), "Fraction of samples whose predicted class is unchanged "
                 "when h is replaced by s·h (one run per regularizer).")
    table = pd.DataFrame(rows)
    s.tables["cone_test"] = table
    wb = table[table.with_bias]
    s.add_text("Never flips over s in 1/16…16, with the bias: " + ", ".join(
        f"{r} {v:.2f}" for r, v in zip(wb.regularizer, wb.fraction_never_flips)) + "; without the bias every "
        "fraction is 1 (argmax(s·Wh) = argmax(Wh): exact cones).")
    return s


def skipped_interventions(ctx: Any) -> Section:
    s = Section("interventions", "Interventions")
    s.add_text("Interventions were not requested for this report.")
    return s


def interventions(ctx: Any) -> Section:
    from .. import interventions as iv

    s = Section("interventions", "Interventions: set the magnitude or the direction, measure what follows")
    if why := ctx.headless_reason("Interventions are", "rescaling or rotating h changes the logits only through"):
        s.add_text(why)
        return s
    groups = ctx.by_regularizer()
    control = groups.get("ce", next(iter(groups.values())))[0]
    ds = ctx.study[control]
    rs = iv.rescale(ds, scales=[0.25, 0.5, 0.75, 1.0, 1.5, 2.0], rng=np.random.default_rng(0))
    rt = iv.rotate(ds, alphas=[-0.5, -0.25, 0.0, 0.25, 0.5, 0.75], rng=np.random.default_rng(0))
    ctx.intervention_results = {"rescale": rs, "rotate": rt, "control_run": control}
    s.add_figure("dose_rescale", iv.plot_dose_response(rs), f"Rescaling h → s·h on run {control}: "
                 "calibration outcomes against s (95% percentile bootstrap over samples).", height=2.2)
    s.add_figure("dose_rotate", iv.plot_dose_response(rt), f"Rotating h toward its predicted-class center by a "
                 f"fraction α of the angle (norm kept) on run {control}.", height=2.2)
    s.tables["intervention_rescale"] = _dataset_table(rs)
    s.tables["intervention_rotate"] = _dataset_table(rt)
    for kind, res in ctx.robust.items():
        dim = "scale" if kind == "rescale" else "alpha"
        s.add_figure(f"robust_{kind}", figures.plot_robust(res, dim),
                     f"Inside the model (head ∘ T ∘ backbone, run {res.attrs.get('run_id')}, "
                     f"{res.attrs.get('n_samples')} test images): robust accuracy under PGD against "
                     f"{'the feature scale s' if dim == 'scale' else 'the rotation fraction α'}, one line per ε "
                     "(95% percentile bootstrap over samples).", height=2.4)
        s.tables[f"robust_{kind}"] = res["robust_accuracy"].to_dataframe().reset_index()
    return s


def _dataset_table(ds: Any) -> pd.DataFrame:
    keep = [v for v in ("accuracy", "ece", "signed_ece", "nll", "mean_confidence") if v in ds]
    return ds[keep].to_dataframe().reset_index()


def mediation(ctx: Any) -> Section:
    from .. import causal

    s = Section("mediation", "Mediation analysis")
    s.html += f"<p>Estimand, design and inference of each question: {_METHODS}.</p>"
    for i, (q, res, caught, err) in enumerate(ctx.mediations()):
        label = f"{q.treatment} = {q.treated} vs {q.control}"
        if err is not None:
            s.add_text(f"{label}: not estimable — {err}")
            continue
        s.open_details(f"{q.treated} vs {q.control}: effects through {', '.join(q.mediators)} (table, overlap, "
                       f"run-level confounding{'; ' + str(len(caught)) + ' caution(s)' if caught else ''})")
        for w in caught:  # e.g. too few runs per arm: the caveat belongs next to the numbers (first sentence)
            s.add_text(f"Caution ({w.category.__name__}): {_first_sentence(str(w.message))}")
        summ = res.summary()
        s.add_table(_mediation_compact(summ, q), f"{label}; mediators {', '.join(q.mediators)}. Cells: estimate "
                    "[95% interval]; † extrapolated (the mediator's supports do not overlap); notes and p-values: "
                    f"tables/mediation_{i}_{_slug(str(q.treated))}.csv.")
        s.tables[f"mediation_{i}_{_slug(str(q.treated))}"] = summ
        if len(res.overlap):
            ov = res.overlap
            s.add_text(f"{label}: overlap of each mediator across the arms (share of the treated runs' values inside "
                       "the control range / of the control runs' inside the treated range): " + "; ".join(
                           f"{r['mediator']} {r['share_treated_in_control_range']:.2f} / "
                           f"{r['share_control_in_treated_range']:.2f}"
                           f"{'' if r.get('supported', True) else ' (no overlap: natural effects extrapolate)'}"
                           for r in ov.to_dict("records")) + ".")
            s.tables[f"overlap_{i}_{_slug(str(q.treated))}"] = ov
        else:
            s.add_text(f"{label}: no overlap check available from this mediation result.")
        if len(res.mundlak):
            s.tables[f"mundlak_{i}_{_slug(str(q.treated))}"] = res.mundlak
        if len(res.run_confounding):
            s.tables[f"run_confounding_{i}_{_slug(str(q.treated))}"] = res.run_confounding
            s.add_text(f"{label}: mediator → outcome slopes pooled, within and between runs (Mundlak test over runs; "
                       f"slope used: {res.slope}): tables/run_confounding_{i}_{_slug(str(q.treated))}.csv.")
        tot = summ.query("effect == 'total'")
        if res.p_floor > 1 - res.ci_level or bool(((tot["ci_low"] <= 0) & (tot["ci_high"] >= 0)).any()):
            try:
                s.add_text(f"{label}: {causal.plan(res, alpha=1 - res.ci_level).sentence()}")
            except QueryError:
                pass
        s.close_details()
        s.add_figure_file(f"forest_{i}_{_slug(str(q.treated))}", res.plot())  # the table above, drawn
    if not ctx.mediation_results:
        s.add_text("No mediation query could be estimated.")
    s.add_heading("Mediation vs decomposition", "agreement")
    table = ctx.versus
    flag, text = agreement(table)
    s.add_text(text)
    if table is not None and len(table):
        s.tables["mediation_vs_decomposition"] = table
        shown = pd.DataFrame({
            "treated": table["treated"], "outcome": table["outcome"], "path": table["mediator"] + " ↔ " + table["factor"],
            "mediation": [_cell({"estimate": r["mediation"], "ci_low": r["mediation_ci_low"],
                                 "ci_high": r["mediation_ci_high"]}) for r in table.to_dict("records")],
            "decomposition (switched last)": [_cell({"estimate": r["decomposition"], "ci_low": r["decomposition_ci_low"],
                                                     "ci_high": r["decomposition_ci_high"]})
                                              for r in table.to_dict("records")]})
        s.add_table(shown, "Regression mediation vs the head-based decomposition on the same estimand: the "
                           "mediation's indirect effect (a total natural indirect effect, treated network) beside the "
                           "decomposition's effect of switching the matching factor last. The decomposition computes "
                           "its worlds exactly; the mediation estimates them from a regression model, so a difference "
                           "measures that model's error (functional form, the proxy mediator), not confounding by "
                           "itself.")
    return s


def refuters_sensitivity(ctx: Any, refute: bool) -> Section:
    from .. import causal

    s = Section("refuters-sensitivity", "Refuters and sensitivity")
    s.open_details("Sensitivity to unmeasured confounding and DoWhy refuters")
    for q, res in ctx.mediation_results:
        sens = getattr(res, "sensitivity", None)
        if sens is not None and len(sens):
            sens = pd.DataFrame(sens)
            s.tables[f"sensitivity_{_slug(str(q.treated))}"] = sens
            cols = [c for c in ("outcome", "mediator", "indirect_path", "rho_at_zero_path") if c in sens.columns]
            shown = sens[cols].assign(outcome=sens["outcome"].map(_relabel_eps)) if "outcome" in cols else sens[cols]
            s.add_table(shown, f"Sensitivity ({res.sensitivity_method.split(':')[0]}): the error correlation ρ at which "
                               f"each path would vanish, {q.treated} vs {q.control} (all columns: "
                               f"tables/sensitivity_{_slug(str(q.treated))}.csv).", "{:.2g}")
    if refute and ctx.mediation_results:
        q, res = ctx.mediation_results[0]
        try:
            ref = causal.refute(res)
        except Exception as exc:  # noqa: BLE001 - a refuter failing must not lose the report; say so
            s.add_text(f"DoWhy refuters could not be run: {type(exc).__name__}: {exc}")
        else:
            s.tables["refuters"] = ref
            status = ref["status"].astype(str).str.split(":").str[0]
            counts = pd.crosstab(ref["refuter"], status).reset_index()
            counts.columns.name = None
            s.add_table(counts, f"DoWhy refuters for {q.treated} vs {q.control}: how many effects each passed, failed "
                                "or could not decide ('inconclusive': the design's smallest p-value is above α); every "
                                "effect: tables/refuters.csv.")
    s.close_details()
    if not ctx.mediation_results:
        s.add_text("No mediation result to refute.")
    return s


def findings(ctx: Any) -> Section:
    s = Section("findings", "Findings in plain language")
    for text in findings_text(ctx.paper, [], ctx.intervention_results, ctx.robust, None):
        s.add_text(text)
    for note in ctx.notes:
        s.add_text(note)
    return s


_DEFINITIONS = (
    "ECE: expected calibration error, Σ_bins (n_b/n)·|accuracy_b − confidence_b| over 15 equal-width bins of the "
    "top-label softmax confidence. Signed ECE: the same with the sign kept (mean confidence − accuracy): positive = "
    "overconfident, negative = underconfident. NLL: mean negative log-likelihood of the true label. ece_ts: ECE after "
    "temperature scaling, the temperature fitted (NLL) on a held-out half of the test images and evaluated on the "
    "other half, the split paired across runs. ece_floor: the expected ECE of a perfectly calibrated model with the "
    "run's confidences and n (the binning noise floor); ece_debiased: ECE minus its estimated bias. AURC: area under "
    "the risk–coverage curve of selective classification. Robust accuracy at ε: accuracy under the attack with budget "
    "ε (k/255 on the pixel scale [0, 1]).",
    "Paper table: per regularizer and strength, the mean over runs and the Student-t 95% interval with the training "
    "run (seed) as the unit of replication; numbers are rounded to keep the first significant digit of the interval's "
    "half-width plus one. Reliability diagrams: per-bin accuracy with the Wilson score interval of its images "
    "(treated as independent Bernoulli trials).",
    "Function-level decomposition: for every control × treated pair of runs, each test image's centred logits "
    "z̃ = z − mean(z) (all that softmax sees) are split into their scale ‖z̃‖ and their shape z̃/‖z̃‖; each is taken "
    "from the control or the treated run (4 worlds) and the treated − control gap is split between the two by "
    "Shapley averaging; the shares add up to the total exactly. It needs no head and no shared initialisation, and "
    "any reparametrisation that keeps the logits leaves it unchanged; the scale is what a temperature can undo. "
    "'Switched first' is a factor's effect with everything else from the control run; 'switched last' with "
    "everything else from the treated run. The representation-level description (head, magnitude, direction, or the "
    "basis-free magnitude, head norm, orientation) describes the trained parametrisation, not a causal share. "
    "More: docs/methods_causal.md.",
)


def methods(ctx: Any) -> Section:
    s = Section("methods", "Methods: definitions, estimands and inference (said once)")
    s.open_details("Definitions, estimands, designs and inference of every number in this report")
    for text in _DEFINITIONS:
        s.add_text(text)
    seen: set[str] = set()
    for treatment, control, treated, res in ctx.decompositions():
        if isinstance(res, Exception):
            continue
        d = res.describe()
        if d not in seen:
            seen.add(d)
            s.add_text(f"Decomposition, {treated} vs {control}: {d}")
    for q, res in ctx.mediation_results:
        label = f"Mediation, {q.treatment} = {q.treated} vs {q.control}"
        parts = [f"{what}: {text}." for what, text in (("estimand", res.estimand), ("design", res.design),
                                                       ("inference", res.inference)) if text]
        key = " ".join(parts)
        s.add_text(f"{label} — " + (key if key not in seen else "as above."))
        seen.add(key)
    if ctx.mediation_results:
        s.add_text(MEDIATION_CAVEATS)
    s.close_details()
    return s


# -- the page ----------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;max-width:1040px;margin:1em auto;padding:0 1em;color:#222;
font-size:15px;line-height:1.4}h1{font-size:22px;margin:.3em 0}h2{font-size:18px;margin:1.2em 0 .4em}
h3{font-size:16px}p{margin:.4em 0}.table-wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:.3em 0 1em}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f2f2f2}figure{margin:.5em 0}img{max-width:100%;height:auto}.caption,figcaption{color:#555;
font-size:13px}nav{font-size:13px}nav a{margin-right:.8em}.verdict{font-size:16px;font-weight:600;margin:.2em 0}
.flag{background:#f6f6f6;padding:.3em .5em}.pair{display:grid;grid-template-columns:1fr 1fr;gap:1.5em}
.pair section{min-width:0}details{margin:.3em 0}summary{cursor:pointer;color:#036}"""
#: Sections shown side by side (their figures are at most half the page wide), first and second of each pair.
_PAIRED = (("reliability",), ("distributions",))
# After load, record how many embedded figures decoded (a browser test reads it from the DOM).
# A link to the Methods appendix opens it.
_SCRIPT = ("<script>window.addEventListener('load',function(){var i=document.images,n=0;"
           "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)n++;}"
           "document.body.setAttribute('data-images-loaded',n);"
           "document.querySelectorAll(\"a[href='#methods']\").forEach(function(a){a.addEventListener('click',"
           "function(){var d=document.querySelector('#methods details');if(d)d.open=true;});});});</script>")


def write_page(out: Path, title: str, sections: list[Section]) -> None:
    """The HTML file (figures embedded), its Markdown twin, ``figures/*.png`` and ``tables/*.csv`` beside it."""
    figdir, tabdir = out.parent / "figures", out.parent / "tables"
    figdir.mkdir(exist_ok=True)
    tabdir.mkdir(exist_ok=True)
    for sec in sections:
        for name, png in sec.figures.items():
            (figdir / f"{name}.png").write_bytes(png)
        for name, df in sec.tables.items():
            df.to_csv(tabdir / f"{name}.csv", index=False)
    nav = "".join(f"<a href='#{s.id}'>{html.escape(s.title.split(':')[0])}</a>" for s in sections)
    body = ""
    for s in sections:
        part = f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>{s.html}</section>"
        if s.id in _PAIRED[0]:  # two narrow sections side by side
            part = "<div class='pair'>" + part
        elif s.id in _PAIRED[1]:
            part += "</div>"
        body += part
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style>{_SCRIPT}</head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}</body></html>")
    atomic_write(out, page, fsync=False)
    md = f"# {title}\n\n" + "".join(f"## {s.title}\n\n{s.md}" for s in sections)
    atomic_write(out.with_suffix(".md"), md, fsync=False)
