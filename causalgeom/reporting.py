"""The scripted report: one self-contained HTML file (figures embedded), a Markdown twin, and PNG figures.

``cg.report(study, out="report.html", query=...)`` runs the whole analysis of a study from stored dumps only
and writes it. It leads with a short summary and the function-level decomposition (`causal.decompose`: what
changed, which mechanism carries it, how sure, on a named estimand); the paper table, reliability diagrams,
magnitude and cosine distributions, cone test, interventions, regression mediation (with its design,
estimand and overlap, compared with the decomposition on the same estimand), refuters and sensitivity
follow. It computes nothing itself: every number comes from `summary`, `calibration`, `geometry`, `table`,
`causal` and `interventions`. Numbers with an interval are rounded to what the interval supports
(`round_to_interval`); attack budgets are written as k/255 (`eps_label`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
import re
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ._util.eps import eps_label, parse_eps_label
from ._util.io import atomic_write
from .errors import CausalGeomError, QueryError
from .dump.study import Study, as_study

__all__ = ["report", "Section", "SECTION_IDS", "default_queries", "eps_label", "round_to_interval", "format_ci",
           "DECOMPOSE_OUTCOMES"]

#: Section ids, in order; the HTML has one ``<section id=...>`` for each (the rendering test checks them).
SECTION_IDS = ("summary", "decomposition", "provenance", "paper-table", "reliability", "distributions", "cone-test",
               "interventions", "mediation", "refuters-sensitivity", "findings")
#: Outcomes of the report's decomposition (``robust_accuracy`` is added when the dumps store ``adv_features``).
DECOMPOSE_OUTCOMES = ("signed_ece", "ece", "nll", "accuracy")
_OUTCOME_WORDS = {"signed_ece": "overconfidence (signed ECE = mean confidence − accuracy)", "ece": "ECE",
                  "nll": "NLL", "accuracy": "accuracy", "robust_accuracy": "robust accuracy"}


def _relabel_eps(text: str) -> str:
    """``robust_acc[pgd-linf@0.0313725]`` → ``robust_acc[pgd-linf@8/255]`` (display only)."""
    return re.sub(r"@([0-9.]+(?:[eE][+-]?[0-9]+)?)\]", lambda m: f"@{eps_label(float(m.group(1)))}]", str(text))


def _decimals(low: float, high: float) -> int | None:
    """Decimals that keep the first significant digit of the interval's half-width, plus one."""
    half = (float(high) - float(low)) / 2.0
    if not (math.isfinite(half) and half > 0):
        return None
    return max(0, -math.floor(math.log10(half)) + 1)


def round_to_interval(estimate: float, low: float, high: float) -> tuple[str, str, str]:
    """Estimate and interval as strings rounded to what the interval supports.

    The number of decimals keeps the first significant digit of the half-width ``(high − low) / 2`` plus
    one more (e.g. half-width 0.034 → 3 decimals: ``-0.081 (-0.115 to -0.048)``). A degenerate or
    missing interval leaves 3 significant digits.
    """
    d = _decimals(low, high)
    if d is None:
        return tuple("" if not _finite(v) else f"{float(v):+.3g}"  # type: ignore[return-value]
                     for v in (estimate, low, high))
    return tuple(f"{float(v):+.{d}f}" if _finite(v) else ""  # type: ignore[return-value]
                 for v in (estimate, low, high))


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def format_ci(estimate: float, low: float, high: float, level: float = 0.95) -> str:
    """``"-0.081 (95% CI -0.115 to -0.048)"``, rounded by `round_to_interval`."""
    e, lo, hi = round_to_interval(estimate, low, high)
    if _decimals(low, high) is None:  # no interval, or one of width 0 (no variation): the estimate alone
        return e
    return f"{e} ({int(round(100 * level))}% CI {lo} to {hi})"


def _mean_pm(table: pd.DataFrame) -> pd.DataFrame:
    """A `causalgeom.metrics.summary.paper_table` as ``"mean ± half-width"`` strings rounded to what each interval supports."""
    metrics = [c for c in table.columns if f"{c}_low" in table.columns and f"{c}_high" in table.columns]
    drop = {f"{m}_{s}" for m in metrics for s in ("low", "high")}
    out = table[[c for c in table.columns if c not in drop]].copy()
    for m in metrics:
        vals = []
        for mean, lo, hi in zip(table[m], table[f"{m}_low"], table[f"{m}_high"]):
            d = _decimals(lo, hi)
            if not _finite(mean):
                vals.append("nan")
            elif d is None:
                vals.append(f"{float(mean):.4g}")
            else:
                vals.append(f"{float(mean):.{d}f} ± {(float(hi) - float(lo)) / 2:.{d}f}")
        out[m] = vals
    return out


def _rounded_table(df: pd.DataFrame, cols: tuple[str, str, str] = ("estimate", "ci_low", "ci_high")) -> pd.DataFrame:
    """Each row's estimate and interval as strings rounded to that row's interval; p-values to 2 significant digits."""
    out = df.copy()
    est, lo, hi = cols
    if est in out.columns:
        vals = [round_to_interval(r[est], r[lo], r[hi]) for r in df.to_dict("records")]
        for j, c in enumerate(cols):
            out[c] = [v[j] for v in vals]
    for c in ("p_value", "p_floor"):
        if c in out.columns:
            out[c] = [("" if not _finite(v) else f"{float(v):.2g}") for v in df[c]]
    if "share" in out.columns:
        out["share"] = [("" if not _finite(v) else f"{100 * float(v):.0f}%") for v in df["share"]]
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: _relabel_eps(v) if isinstance(v, str) else v)
    return out


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
                  outcomes=outcomes, method="regression", seed=0) for r in regs]


def _robust_columns(study: Study) -> list[str]:
    runs = study.runs
    if runs.empty or not len(runs.iloc[0]["attacks"]):
        return []
    from .metrics.table import robust_column

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
           refute: bool = True, progress: bool = True, robust: dict[str, Any] | None = None,
           path: str = "auto") -> Path:
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
    path : {"auto", "in-process", "dask"}
        Where the passes over the chunks run. ``"auto"`` (default): inside an open ``cg.distributed.client``
        block on that cluster; otherwise by the study's size (`causalgeom.scale.choose_path`: a LocalCluster with
        one single-threaded worker per core at or above the threshold measured by ``benchmarks/bench_scaling.py``,
        else this process), logged in one line. ``"dask"`` uses the open client or starts a LocalCluster.

    Returns
    -------
    pathlib.Path
        The HTML file.

    Raises
    ------
    ConfigError
        Unknown ``path``.
    """
    import contextlib
    import logging

    from ._util.dask import active_client, client, current_client
    from .scale.choice import PATHS, choose_path
    from ._util.checks import check_choice

    check_choice(path, "path", ("auto",) + PATHS)
    study = as_study(study)
    if len(study) == 0:
        raise QueryError(f"study {study.path} has no complete runs to report on")
    cluster: Any = contextlib.nullcontext()
    if active_client() is None and current_client() is None:  # an open client is the user's explicit choice
        if path == "auto":
            choice = choose_path(study)
            logging.getLogger(__name__).info("report: %s", choice.reason)
            path = choice.path
        if path == "dask":
            cluster = client(f"local:{max(1, os.cpu_count() or 1)}")
    with cluster:
        return _report(study, out, query, interventions, refute, progress, robust)


def _report(study: Study, out: str | os.PathLike, query: Any, interventions: bool, refute: bool, progress: bool,
            robust: dict[str, Any] | None) -> Path:
    from . import causal

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
        ctx.summary, ctx.decomposition_section, ctx.provenance, ctx.paper_table, ctx.reliability, ctx.distributions,
        ctx.cone_test,
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
        self.robust: dict[str, Any] = {}
        self.notes: list[str] = []
        self._decomp: list[tuple[str, Any, Any, Any]] | None = None  # (treatment, control, treated, result | error)
        self._repr: dict[tuple[str, str, str], Any] = {}  # the representation-level description per comparison
        self.versus: pd.DataFrame | None = None

    @property
    def sample_frame(self) -> pd.DataFrame:
        """The default per-sample analysis table."""
        key = "default"
        if key not in self._frames:
            self._frames[key] = self.study.to_frame(level="sample", progress=False)
        return self._frames[key]

    def _headless(self, what: str, needs: str) -> str | None:
        """One sentence saying why a section that needs the head is absent, or None when every run has one."""
        runs = self.runs
        missing = [r for r, h in zip(runs["run_id"], runs.get("has_head", [True] * len(runs))) if h is not True]
        if not missing:
            return None
        which = "no run of this study has" if len(missing) == len(runs) else \
            f"runs {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} have"
        return (f"{what} not shown: {needs} the final linear layer (head_weight, head_bias), and {which} one "
                "stored (import the dumps with their head, or extract with a --feature-layer that feeds the head).")

    def _by_regularizer(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rec in self.runs.sort_values(["regularizer", "run_id"]).to_dict("records"):
            out.setdefault(str(rec.get("regularizer")), []).append(rec["run_id"])
        return out

    # -- the decomposition (computed once, shown first) -------------------------------------------
    def comparisons(self) -> list[tuple[str, Any, Any]]:
        """(treatment, control, treated) of every query whose treatment is a run attribute, in query order."""
        out: list[tuple[str, Any, Any]] = []
        for q in self.queries:
            key = (str(q.treatment), q.control, q.treated)
            if q.treatment in self.runs.columns and q.control is not None and key not in out:
                out.append(key)
        return out

    def decompositions(self) -> list[tuple[str, Any, Any, Any]]:
        """`causal.decompose` of every comparison (its result, or the error that prevented it)."""
        if self._decomp is None:
            from . import causal

            first = self.study[self.runs.iloc[0]["run_id"]]
            adv = "adv_logits" in first.variables or ("adv_features" in first.variables and "head_weight" in first.variables)
            outcomes = list(DECOMPOSE_OUTCOMES) + (["robust_accuracy"] if adv else [])
            rep_outcomes = list(DECOMPOSE_OUTCOMES) + (["robust_accuracy"] if "adv_features" in first.variables else [])
            self._decomp = []
            for treatment, control, treated in self.comparisons():
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        kw = dict(treatment=treatment, control=control, treated=treated, outcome=outcomes, n_boot=500)
                        # the headline: the function-level split (scale, shape), valid for any two models
                        res = causal.decompose(self.study, rng=np.random.default_rng(0), **kw)
                        self._repr[(treatment, str(control), str(treated))] = self._representation(
                            {**kw, "outcome": rep_outcomes})
                except (CausalGeomError, ValueError) as exc:
                    res = exc
                    self.notes.append(f"Decomposition of {treated} vs {control}: not computed ({exc}).")
                self._decomp.append((treatment, control, treated, res))
        return self._decomp

    def _representation(self, kw: dict[str, Any]) -> Any:
        """The representation-level split (head, magnitude, direction) where the runs are shown to share an
        initialisation, else the basis-free one; an error where neither can be computed (no head)."""
        from . import causal

        try:
            res = causal.decompose(self.study, rng=np.random.default_rng(0),
                                   factors=("head", "magnitude", "direction"), **kw)
            if len(res.alignment) and res.alignment["aligned"].all():
                return res
        except (CausalGeomError, ValueError):
            pass
        try:
            res = causal.decompose(self.study, rng=np.random.default_rng(0),
                                   factors=("magnitude", "head_norm", "orientation"), **kw)
            res.notes.append("the runs are not shown to share an initialisation with aligned feature bases, so the "
                             "representation-level description uses the basis-free split (magnitude, head norm, "
                             "orientation)")
            return res
        except (CausalGeomError, ValueError) as exc:
            return exc

    def representations(self) -> list[tuple[str, Any, Any, Any]]:
        """The representation-level description of every comparison (after `decompositions`)."""
        self.decompositions()
        return [(t, c, tr, self._repr.get((t, str(c), str(tr)), QueryError("not computed")))
                for t, c, tr, _ in self._decomp]

    def summary(self) -> Section:
        s = Section("summary", "Summary: what changed, which mechanism carries it, how sure")
        for text in summary_text(self.decompositions(), len(self.runs)):
            s.add_text(text)
        return s

    def decomposition_section(self) -> Section:
        s = Section("decomposition", "Why: the function-level split (logit scale and shape)")
        s.add_text("For every control × treated pair of runs, each test image's centred logits z̃ = z − mean(z) (all "
                   "that softmax sees) are split into their scale ‖z̃‖ and their shape z̃/‖z̃‖; each is taken from the "
                   "control or the treated run (4 worlds) and the treated − control gap is split between the two by "
                   "Shapley averaging. The shares add up to the total exactly. This split is a property of the "
                   "networks' outputs: it needs no head and no shared initialisation, and any reparametrisation that "
                   "keeps the logits leaves it unchanged. The scale is what a temperature can undo. 'switched first' "
                   "is a factor's effect with everything else from the control run; 'switched last' with everything "
                   "else from the treated run. Methods: docs/methods_causal.md.")
        any_ok = False
        for treatment, control, treated, res in self.decompositions():
            label = f"{treatment} = {treated} vs {control}"
            if isinstance(res, Exception):
                s.add_text(f"{label}: not computed — {res}")
                continue
            any_ok = True
            s.add_text(f"{label}. {res.describe()}")
            summ = res.summary()
            s.tables[f"decomposition_{_slug(str(treated))}"] = summ
            s.tables[f"decomposition_switch_{_slug(str(treated))}"] = res.switch_effects
            s.add_table(_rounded_table(summ), f"Decomposition of the {treated} − {control} gap into logit scale and "
                                              f"shape (estimate and {int(round(100 * res.ci_level))}% interval "
                                              "rounded to what the interval supports; share of the total, blank "
                                              "when the total's interval includes 0).")
            s.add_table(_rounded_table(res.switch_effects), "The extreme orders behind each share: the factor "
                                                            "switched first (others from the control run) or last "
                                                            "(others from the treated run).")
            if res.temperature is not None and len(res.temperature):
                t = res.temperature
                s.tables[f"decomposition_temperature_{_slug(str(treated))}"] = t
                ctl, trt = t[t.arm == "control"], t[t.arm == "treated"]
                n_fit, n_eval = (len(res.temperature_split["fit"]), len(res.temperature_split["eval"]))
                s.add_text(f"What a temperature alone does: fitted (NLL) on {n_fit} images and evaluated on {n_eval} "
                           f"other images (the same split for every run), the {control} runs' ECE goes from "
                           f"{ctl['ece'].mean():.3g} to {ctl['ece_temperature_scaled'].mean():.3g} (temperature "
                           f"{ctl['temperature'].mean():.3g} on average); the {treated} runs' ECE on the same images "
                           f"is {trt['ece'].mean():.3g}.")
            s.add_figure(f"decomposition_{_slug(str(treated))}", res.plot(),
                         f"Function-level decomposition, {treated} vs {control}: total and shares with intervals.")
            rep = self._repr.get((treatment, str(control), str(treated)))
            if rep is not None and not isinstance(rep, Exception):
                rsum = rep.summary()
                s.tables[f"decomposition_representation_{_slug(str(treated))}"] = rsum
                s.add_text(f"Representation-level description ({', '.join(rep.factors)}; {rep.status}; "
                           f"initialisation: {rep.initialisation}). The feature magnitude and the head norm together "
                           "are the representation's part of the logit scale; their split is a description of the "
                           "trained networks, not a causal share.")
                s.add_table(_rounded_table(rsum), f"Representation-level description of the {treated} − {control} "
                                                  "gap (logits = W·h + b).")
                for note in rep.notes:
                    if "unaligned" in note or "basis-free" in note:
                        s.add_text(f"Caution: {note}.")
                if len(rep.alignment):
                    align = rep.alignment
                    s.tables[f"decomposition_alignment_{_slug(str(treated))}"] = align
                    s.add_text(f"Alignment of the feature bases ({rep.pairing} pairs): swapping only the head keeps "
                               f"{align['head_swap_accuracy'].mean():.2f} accuracy on average vs "
                               f"{align['own_accuracy'].mean():.2f} for the runs themselves; Procrustes angle between "
                               f"paired features {align['basis_angle'].mean():.1f}° on average; "
                               f"{int(align['aligned'].sum())} of {len(align)} pairs are aligned.")
        if not any_ok:
            s.add_text("No decomposition could be computed (it needs two arms that scored the same images).")
        return s

    # -- sections ----------------------------------------------------------------------------
    def provenance(self) -> Section:
        from .dump.schema import package_versions

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
        sigmoid = [rid for rid in self.runs["run_id"]
                   if self.study[rid].attrs.get("confidence", "softmax") != "softmax"]
        s.add_text("Calibration metrics use top-label softmax confidences of the logits for every run."
                   + (f" Runs trained for sigmoid outputs (binary cross-entropy): {', '.join(sigmoid)}; their "
                      "calibration is that of the softmax of a BCE model, not of the probabilities their training "
                      "targeted." if sigmoid else ""))
        pre = [(rid, self.study[rid].attrs.get("preprocess"), self.study[rid].attrs.get("weights"))
               for rid in self.runs["run_id"]]
        if any(p or w is not None for _, p, w in pre):  # how the images reached each network (issue 25)
            s.add_table(pd.DataFrame([(r, w if w is not None else "", p or "not recorded") for r, p, w in pre],
                                     columns=["run_id", "weights", "preprocess"]),
                        "Weights (none: random initialization) and input preprocessing of each run.")
        if incomplete := self.study.incomplete:
            s.add_text(f"Not included (incompletely written): {', '.join(incomplete)}.")
        return s

    def paper_table(self) -> Section:
        from .metrics.summary import paper_table

        s = Section("paper-table", "The paper table: accuracy, calibration, geometry and robustness per regularizer")
        self.paper = paper_table(self.study)
        shown = _mean_pm(self.paper)
        shown.insert(0, "group", [f"{r} ({st:g})" if r != "ce" else "ce" for r, st in
                                  zip(shown.pop("regularizer"), shown.pop("strength"))])
        shown = shown.set_index("group").T.reset_index().rename(columns={"index": "metric"})
        shown.columns.name = None
        shown["metric"] = shown["metric"].map(_relabel_eps)
        s.add_table(shown, "Mean ± half-width of the 95% t-interval over seeds, rounded to what the interval supports "
                           "(the unit of replication is the "
                           "training run; n_runs per column). robust_acc[ATTACK@ε] is the accuracy under the attack "
                           "at budget ε (k/255 on the pixel scale [0, 1]); robust_auc the normalized area under that "
                           "curve.")
        s.tables["paper_table"] = self.paper
        return s

    def reliability(self) -> Section:
        import matplotlib.pyplot as plt
        import xarray as xr

        from .metrics.calibration import reliability

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
        center = {"mean": "mean", "weight": "weight-row"}.get(df.attrs.get("center"), "minimal-loss")
        if center == "mean" and self._headless("", ""):
            s.add_text("The cosines are to the mean class centers (class means of each run's features): the "
                       "minimal-loss centers need the head, which the dumps do not store.")
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for reg, g in df.groupby("regularizer"):
            axes[0].hist(g["rms"], bins=40, histtype="step", density=True, label=str(reg))
            axes[1].hist(g["cos_true"], bins=40, histtype="step", density=True, label=str(reg))
        axes[0].set_xlabel("feature RMS (‖h‖/√d)"), axes[1].set_xlabel(f"cosine to true-class {center} center")
        axes[0].legend(fontsize=8)
        s.add_figure("distributions", fig, "Distributions of feature magnitude (RMS) and of the cosine to the "
                                           f"true-class {center} center, per regularizer (all seeds).")
        summ = df.groupby("regularizer")[["rms", "cos_true"]].agg(["mean", "median"]).round(4)
        summ.columns = [f"{a}_{b}" for a, b in summ.columns]
        s.add_table(summ.reset_index(), "Per-sample summaries (pooled over seeds).")
        return s

    def cone_test(self) -> Section:
        import matplotlib.pyplot as plt

        from .metrics.geometry import cone_test

        s = Section("cone-test", "Cone test: are decision regions cones around the origin?")
        if why := self._headless("The cone test is", "it scales each feature h and classifies s·h with"):
            s.add_text(why)
            return s
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
        if why := self._headless("Interventions are", "rescaling or rotating h changes the logits only through"):
            s.add_text(why)
            return s
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
            for what, text in (("estimand", res.estimand), ("design", res.design), ("inference", res.inference)):
                if text:
                    s.add_text(f"{label} — {what}: {text}.")
            summ = res.summary()
            shown = summ.assign(outcome=summ["outcome"].map(_relabel_eps))
            s.add_table(_rounded_table(shown) if {"ci_low", "ci_high"} <= set(shown.columns) else shown,
                        f"{label}; mediators {', '.join(q.mediators)} (estimates rounded to their intervals; note: "
                        f"'extrapolated' where the mediator's supports do not overlap, 'not estimable' for a "
                        f"proportion mediated whose total may be 0). {res.describe()}")
            s.tables[f"mediation_{i}_{_slug(str(q.treated))}"] = summ
            overlap = res.overlap
            if len(overlap):
                s.add_table(overlap, f"{label}: overlap of each mediator across the arms (share of the treated "
                                     "runs' values inside the control range and vice versa; natural effects are "
                                     "model extrapolation where the supports do not overlap).")
                s.tables[f"overlap_{i}_{_slug(str(q.treated))}"] = overlap
            else:
                s.add_text(f"{label}: no overlap check available from this mediation result.")
            mundlak = res.mundlak
            if len(mundlak):
                s.add_table(mundlak, f"{label}: within-image vs between-image (Mundlak) slopes of each "
                                     "mediator → outcome relation.")
            self._run_level_and_plan(s, label, res)
            s.add_figure(f"forest_{i}_{_slug(str(q.treated))}", res.plot(),
                         f"Forest plot: {label} (estimates with {int(round(100 * res.ci_level))}% intervals).")
        if not self.mediation_results:
            s.add_text("No mediation query could be estimated.")
        else:
            self._versus_decomposition(s)
        return s

    @staticmethod
    def _run_level_and_plan(s: Section, label: str, res: Any) -> None:
        """Run-level confounding table, the floor/interval sentence and, when this design cannot decide, the
        seeds per arm that would (`causalgeom.causal.plan`)."""
        from . import causal

        if len(res.run_confounding):
            s.add_table(res.run_confounding, f"{label}: mediator → outcome slopes pooled, within runs and between "
                                             f"runs (Mundlak test over runs; slope used: {res.slope}).")
        for note in res.notes:
            if "cannot confirm" in note:
                s.add_text(f"{label}: {note}")
        tot = res.summary().query("effect == 'total'")
        undecided = res.p_floor > 1 - res.ci_level or bool(
            ((tot["ci_low"] <= 0) & (tot["ci_high"] >= 0)).any())
        if undecided:
            try:
                s.add_text(f"{label}: {causal.plan(res, alpha=1 - res.ci_level).sentence()}")
            except QueryError:
                pass

    def _versus_decomposition(self, s: Section) -> None:
        """Regression mediation next to the decomposition, on the same estimand (total indirect, treated network)."""
        table = mediation_vs_decomposition(self.mediation_results, self.representations())
        if table is None or not len(table):
            return
        self.versus = table
        s.tables["mediation_vs_decomposition"] = table
        shown = table.copy()
        for a in ("mediation", "decomposition"):
            vals = [round_to_interval(r[a], r[f"{a}_ci_low"], r[f"{a}_ci_high"]) for r in table.to_dict("records")]
            for j, c in enumerate((a, f"{a}_ci_low", f"{a}_ci_high")):
                shown[c] = [v[j] for v in vals]
        s.add_table(shown, "Regression mediation vs the head-based decomposition on the same estimand: the "
                           "mediation's indirect effect through a mediator is a total natural indirect effect (the "
                           "treated network: head and the other factors from the treated runs), so it is set beside "
                           "the decomposition's effect of switching the matching factor last (rms ↔ magnitude, "
                           "cos_true ↔ direction), both averaged over training runs. The decomposition computes "
                           "its worlds exactly; the mediation estimates them from a regression model, so a "
                           "difference measures that model's error (functional form, the proxy mediator), not "
                           "confounding by itself.")

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
        for text in findings_text(self.paper, self.mediation_results, self.intervention_results, self.robust,
                                  self.versus):
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
                        marker="o", ms=3, capsize=2, label=f"ε={eps_label(eps)}")
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


def _ci(rec: dict[str, Any], level: float = 0.95) -> str:
    return format_ci(rec["estimate"], rec["ci_low"], rec["ci_high"], level)


def _excludes_zero(rec: dict[str, Any]) -> bool:
    return bool(rec["ci_low"] > 0 or rec["ci_high"] < 0)


def _estimand_sentence(results: list[Any], n_runs: int) -> str:
    """The first sentence of the summary: which estimand the numbers below are about."""
    kinds = {"runs" if r.estimand.startswith("average effect over training runs") else "model" for r in results}
    if kinds == {"runs"}:
        return ("Estimand: every number below is an effect over training runs — the runs of each regularizer are "
                "samples of its training procedure, intervals and p-values come from the variation between runs, "
                "and test images are paired across runs.")
    if kinds == {"model"}:
        return ("Estimand: model-conditional: these models, inference over test images — with one run per arm the "
                "effect over training runs is undefined, so the intervals say how sure we are about these models on "
                "this test set, not about retraining.")
    return ("Estimand: mixed — comparisons with >= 2 runs per arm are effects over training runs; those with one run "
            "in an arm are model-conditional (these models, inference over test images); each line says which.")


def _how_sure(res: Any, tot: dict[str, Any]) -> str:
    level = int(round(100 * res.ci_level))
    inside = not _excludes_zero(tot)
    text = (f"the total's {level}% interval {'includes' if inside else 'excludes'} 0")
    if _finite(tot.get("p_value")):
        p, floor = float(tot["p_value"]), float(tot["p_floor"])
        if res.pairing == "seed":
            units = f"{res.per_pair.groupby(['control_run', 'treated_run']).ngroups} seed-matched run pairs"
        else:
            units = f"{len(res.control_runs)} + {len(res.treated_runs)} runs"
        if p <= floor * (1 + 1e-9):
            text += f"; randomization p = {p:.2g}, the smallest p-value {units} can give"
        else:
            text += f"; randomization p = {p:.2g} (floor {floor:.2g} with {units})"
    else:
        text += " (image bootstrap, conditional on these models)"
    return text


def summary_text(decompositions: list[tuple[str, Any, Any, Any]], n_runs: int) -> list[str]:
    """The report's opening paragraphs: estimand first, then per comparison what changed, which mechanism, how sure."""
    ok = [(t, c, tr, r) for t, c, tr, r in decompositions if not isinstance(r, Exception)]
    if not ok:
        failed = "; ".join(f"{tr} vs {c}: {r}" for _, c, tr, r in decompositions) or "no comparison was requested"
        return ["Estimand: none — the decomposition could not be computed "
                f"({failed}); the regression mediation below states its own estimand and design."]
    out = [_estimand_sentence([r for *_, r in ok], n_runs)]
    for treatment, control, treated, res in ok:
        summ = res.summary()
        sentences = []
        for outcome in [o for o in ("signed_ece", "robust_accuracy") if o in res.outcomes] or [res.outcomes[0]]:
            g = {r["component"]: r for r in summ[summ.outcome == outcome].to_dict("records")}
            tot = g["total"]
            factors = [f for f in res.factors if f in g]
            parts = [f"{_FACTOR_WORDS.get(f, f)} {_ci(g[f], res.ci_level)}" for f in factors]
            clear = [f for f in factors if _excludes_zero(g[f])]
            what = _OUTCOME_WORDS.get(outcome, outcome)
            if outcome == "robust_accuracy" and res.eps is not None:
                what += f" under {res.attack} at ε = {eps_label(res.eps)}"
            text = (f"{treated} vs {control}, {what}: the treated runs differ by {_ci(tot, res.ci_level)}; "
                    f"it splits into {', '.join(parts)}.")
            if clear and _excludes_zero(tot):
                from .causal.decompose import split_text

                text += " Mechanism: " + split_text(float(tot["estimate"]),
                                                    {f: float(g[f]["estimate"]) for f in factors}, _FACTOR_WORDS)
            elif clear:
                text += (f" The total may be 0, but the {', '.join(clear)} share(s) do not: the factors pull in "
                         "opposite directions.")
            else:
                text += " No factor's interval excludes 0."
            text += f" How sure: {_how_sure(res, tot)}."
            from .causal.decompose import floor_text

            n_pairs = res.per_pair.groupby(["control_run", "treated_run"]).ngroups
            floor = float(tot["p_floor"]) if _finite(tot.get("p_floor")) else float("nan")
            extra = floor_text(floor, _excludes_zero(tot), res.pairing, len(res.control_runs), len(res.treated_runs),
                               n_pairs)
            if extra:
                text += " " + extra
            sentences.append(text)
        for note in res.notes:
            if "unaligned" in note or "basis-free" in note:
                sentences.append(f"Caution: {note}.")
        out.append(" ".join(sentences))
    return out


_FACTOR_WORDS = {"head_norm": "head norm ‖W‖", "orientation": "orientation (head and feature directions, bias)",
                 "scale": "logit scale", "shape": "logit shape"}
_MEDIATOR_FACTOR = {"rms": "magnitude", "norm": "magnitude", "cos_true": "direction", "cos_pred": "direction"}


def _decomposition_outcome(outcome: str, res: Any) -> str | None:
    if outcome in ("overconfidence", "signed_ece"):
        return "signed_ece"
    if outcome in ("nll", "ece", "accuracy", "brier"):
        return outcome
    m = re.match(r"robust\[(.+)@([0-9./eE+-]+)\]$", outcome)
    if m and res.eps is not None and m.group(1) == res.attack and math.isclose(parse_eps_label(m.group(2)), res.eps,
                                                                               rel_tol=1e-4):
        return "robust_accuracy"
    return None


def mediation_vs_decomposition(mediation: list[Any],
                               decompositions: list[tuple[str, Any, Any, Any]]) -> pd.DataFrame | None:
    """Mediation indirect effects next to the decomposition's switch-last effects (same estimand and network).

    Returns
    -------
    DataFrame or None
        treated, outcome, mediator, factor, mediation (+ ci), decomposition (+ ci), estimand.
    """
    rows = []
    for q, med in mediation:
        match = [r for t, c, tr, r in decompositions
                 if not isinstance(r, Exception) and t == q.treatment and str(tr) == str(q.treated)
                 and str(c) == str(q.control)]
        if not match:
            continue
        dec = match[0]
        msum = med.summary()
        sw = dec.switch_effects
        for rec in msum.to_dict("records"):
            eff = rec["effect"]
            m = re.match(r"indirect\[(.+)\]$", eff)
            mediator = m.group(1) if m else (q.mediators[0] if eff == "indirect" and len(q.mediators) == 1 else None)
            factor = _MEDIATOR_FACTOR.get(mediator or "")
            outcome = _decomposition_outcome(str(rec["outcome"]), dec)
            if factor is None or outcome is None or outcome not in dec.outcomes:
                continue
            d = sw[(sw.outcome == outcome) & (sw.factor == factor) & (sw.switched == "last")]
            if d.empty:
                continue
            d = d.iloc[0]
            rows.append({"treated": str(q.treated), "outcome": _relabel_eps(rec["outcome"]), "mediator": mediator,
                         "factor": factor, "mediation": rec["estimate"], "mediation_ci_low": rec["ci_low"],
                         "mediation_ci_high": rec["ci_high"], "decomposition": d["estimate"],
                         "decomposition_ci_low": d["ci_low"], "decomposition_ci_high": d["ci_high"],
                         "note": rec.get("note", "") or "",
                         "estimand": "total indirect, treated network; " + (
                             "over training runs" if dec.estimand.startswith("average") else "model-conditional")})
    return pd.DataFrame(rows) if rows else None


def findings_text(paper: pd.DataFrame | None, mediation: list[Any], interventions: dict[str, Any],
                  robust: dict[str, Any] | None = None, versus: pd.DataFrame | None = None) -> list[str]:
    """Plain-language paragraphs: what the numbers support and what they do not.

    One paragraph on calibration per regularizer (over- or underconfident, by the t-interval of the signed
    ECE over runs), one per mediation question and outcome (total, direct and indirect effects with their
    intervals, design and estimand; a path is "supported" when its interval excludes 0; the proportion
    mediated only where it is estimable), one comparing mediation with the decomposition on the same
    estimand, one per intervention, and the caveats that apply to all of them. Numbers are rounded to what
    their intervals support; attack budgets are written as k/255.
    """
    out: list[str] = []
    if paper is not None and "signed_ece" in paper.columns:
        parts, under = [], []
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
            e, l_, h_ = round_to_interval(sece, lo, hi)
            parts.append(f"{rec.get('regularizer')} is {verdict} (signed ECE {e}, 95% t-interval "
                         f"{l_} to {h_} over {rec.get('n_runs', '?')} runs)")
            if verdict == "underconfident":
                under.append(str(rec.get("regularizer")))
        if parts:
            text = "Calibration: " + "; ".join(parts) + "."
            if under:
                text += (f" Note that {', '.join(under)} made the model underconfident: the regularizer "
                         "over-corrected, so a lower confidence is not a better calibration here.")
            out.append(text)
    for q, res in mediation:
        summ = res.summary()
        level = res.ci_level
        for outcome, g in summ.groupby("outcome", sort=False):
            recs = {r["effect"]: r for r in g.to_dict("records")}
            total, direct = recs.get("total"), recs.get("direct")
            if total is None:
                continue
            paths = []
            for m in q.mediators:
                r = recs.get(f"indirect[{m}]") or (recs.get("indirect") if len(q.mediators) == 1 else None)
                if r is not None:
                    note = f" [{r['note']}]" if r.get("note") else ""
                    paths.append(f"through {m} {_ci(r, level)}{note} — " + (
                        "supported" if _excludes_zero(r) else "not supported (the interval includes 0)"))
            text = (f"Mediation, {q.treated} vs {q.control}, outcome {_relabel_eps(outcome)}: total effect "
                    f"{_ci(total, level)}" + (f", direct effect {_ci(direct, level)}" if direct else "")
                    + "; indirect effects: " + "; ".join(paths) + ".")
            pm = recs.get("prop_mediated")
            if pm is not None and _finite(pm.get("estimate")) and _excludes_zero(total):
                text += f" Proportion mediated: {_ci(pm, level)}."
            elif pm is not None:
                text += (" The proportion mediated is not estimable here (the total's interval includes 0 or the "
                         "paths have opposite signs), so it is not given.")
            for what, value in (("Estimand", res.estimand), ("Design", res.design)):
                if value:
                    text += f" {what}: {value}."
            if res.inference:
                text += f" Intervals: {res.inference}."
            out.append(text)
    if versus is not None and len(versus):
        parts = []
        for r in versus.to_dict("records"):
            e1 = format_ci(r["mediation"], r["mediation_ci_low"], r["mediation_ci_high"])
            e2 = format_ci(r["decomposition"], r["decomposition_ci_low"], r["decomposition_ci_high"])
            overlap = (r["mediation_ci_low"] <= r["decomposition_ci_high"]
                       and r["decomposition_ci_low"] <= r["mediation_ci_high"])
            parts.append(f"{r['treated']}, {r['outcome']} through {r['mediator']}: mediation {e1} vs the "
                         f"decomposition's {r['factor']} switched last {e2} — intervals "
                         f"{'overlap' if overlap else 'do not overlap'}")
        out.append("Mediation against the decomposition on the same estimand (total indirect effect, treated "
                   "network): " + "; ".join(parts) + ". The decomposition's worlds are computed from the head, "
                   "not modelled, so where the two differ the regression model (linear form, a scalar proxy of "
                   "a vector mediator) is what to doubt.")
    if interventions.get("rescale") is not None:
        rs = interventions["rescale"]
        e = np.asarray(rs["signed_ece"].values)
        sc = np.asarray(rs["scale"].values)
        acc = np.asarray(rs["accuracy"].values)
        out.append(f"Intervention on magnitude (run {interventions['control_run']}): rescaling every feature by s "
                   f"from {sc.min():g} to {sc.max():g} moves the signed ECE from {e[0]:+.2f} to {e[-1]:+.2f} while "
                   f"accuracy stays within {acc.min():.2f}–{acc.max():.2f}. "
                   + ("Smaller magnitude lowers confidence, as the magnitude → calibration path predicts; this is "
                      "an intervention on the stored representation, not on training."
                      if e[0] < e[-1] else "This does not show smaller magnitude lowering confidence."))
    for kind, res in (robust or {}).items():
        dim = "scale" if kind == "rescale" else "alpha"
        ra = res["robust_accuracy"].isel(attack=0, eps=-1)
        lo, hi = res["robust_accuracy_ci_low"].isel(attack=0, eps=-1), res["robust_accuracy_ci_high"].isel(attack=0, eps=-1)
        grid = np.asarray(res[dim].values, dtype=float)
        pts = []
        for g, a, l_, h_ in zip(grid, ra.values, lo.values, hi.values):
            e_, lo_, hi_ = round_to_interval(a, l_, h_)
            pts.append(f"{dim}={g:g}: {e_.lstrip('+')} ({lo_.lstrip('+')}–{hi_.lstrip('+')})")
        what = ("rescaling the feature (magnitude only)" if dim == "scale"
                else "rotating the feature toward its predicted-class center (direction only)")
        sentences = [f"Inside the model (run {res.attrs.get('run_id')}), {what} gives robust accuracy at "
                     f"ε = {eps_label(float(ra['eps']))} of {', '.join(pts)}."]
        if dim == "alpha" and ra.values[-1] > ra.values[0]:
            sentences.append("Higher cosine to the center goes with higher robustness, as the cosine → robustness "
                             "path predicts.")
        if dim == "scale":
            sentences.append("Caution: attacks through a rescaled head can be weakened by saturated gradients "
                             "(gradient masking) rather than made harder.")
        out.append(" ".join(sentences))
    if mediation:
        out.append("Caveats: regression mediation assumes no unmeasured confounding of the mediator–outcome relation "
                   "beyond what pairing by image removes (see the sensitivity table: the ρ at which each path would "
                   "vanish); the treatment is assigned per training run, so inference is over runs, and with few runs "
                   "per arm no p-value can fall below the design's floor.")
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
    atomic_write(out, page, fsync=False)
    md = f"# {title}\n\n" + "".join(f"## {s.title}\n\n{s.md}" for s in sections)
    atomic_write(out.with_suffix(".md"), md, fsync=False)
