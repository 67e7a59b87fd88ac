"""The report's words and numbers: rounding to what an interval supports, k/255 budgets, the verdict and summary
sentences, the findings, and the table that sets mediation beside the decomposition."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from .._util.eps import eps_label, parse_eps_label

__all__ = ["eps_label", "round_to_interval", "format_ci", "summary_text", "verdict_text", "how_sure_line", "floor_line",
           "findings_text", "mediation_vs_decomposition", "agreement", "OUTCOME_WORDS"]

OUTCOME_WORDS = {"signed_ece": "signed ECE", "ece": "ECE", "nll": "NLL", "accuracy": "accuracy",
                 "robust_accuracy": "robust accuracy", "ece_ts": "ECE after temperature scaling",
                 "ece_floor": "ECE noise floor", "aurc": "AURC"}
_OUTCOME_WORDS = OUTCOME_WORDS

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


def _ci(rec: dict[str, Any], level: float = 0.95) -> str:
    return format_ci(rec["estimate"], rec["ci_low"], rec["ci_high"], level)


def _excludes_zero(rec: dict[str, Any]) -> bool:
    return bool(rec["ci_low"] > 0 or rec["ci_high"] < 0)


def _estimand_sentence(results: list[Any], n_runs: int) -> str:
    """The first sentence of the summary: which estimand the numbers below are about (details: Methods)."""
    kinds = {"runs" if r.estimand.startswith("average effect over training runs") else "model" for r in results}
    if kinds == {"runs"}:
        return ("Estimand: every number below is an effect over training runs (runs are samples of each training "
                "procedure; test images paired across runs).")
    if kinds == {"model"}:
        return ("Estimand: model-conditional: these models, inference over test images (one run per arm: the "
                "effect over training runs is undefined).")
    return ("Estimand: mixed — comparisons with >= 2 runs per arm are effects over training runs; those with one run "
            "in an arm are model-conditional (these models, inference over test images).")


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


def _outcome_name(outcome: str, res: Any) -> str:
    what = OUTCOME_WORDS.get(outcome, outcome)
    if outcome == "robust_accuracy" and res.eps is not None:
        what += f" ({res.attack}, ε = {eps_label(res.eps)})"
    return what


def how_sure_line(res: Any) -> str:
    """One line that reconciles the intervals with the design's floor (`floor_text`), for the headline outcomes."""
    summ = res.summary()
    totals = {r["outcome"]: r for r in summ[summ.component == "total"].to_dict("records")}
    shown = [o for o in ("ece", "signed_ece", "nll", "robust_accuracy") if o in totals] or list(totals)[:1]
    excl = [o for o in shown if _excludes_zero(totals[o])]
    incl = [o for o in shown if o not in excl]
    level = int(round(100 * res.ci_level))
    parts = []
    if excl:
        parts.append(f"the {level}% intervals of {', '.join(_outcome_name(o, res) for o in excl)} exclude 0")
    if incl:
        parts.append(f"those of {', '.join(_outcome_name(o, res) for o in incl)} include 0 (no detectable change)")
    key = excl[0] if excl else shown[0]
    tot = totals[key]
    text = "How sure: " + "; ".join(parts) + f" — for {_outcome_name(key, res)}, {_how_sure(res, tot)}."
    extra = floor_line(res)
    return text + (" " + extra if extra else "")


def floor_line(res: Any) -> str:
    """The sentence that reconciles the headline total's interval with the design's floor (`floor_text`; ``""``
    when the floor does not bind): the report's visible "how sure" line."""
    from ..causal.decompose import floor_text

    summ = res.summary()
    totals = {r["outcome"]: r for r in summ[summ.component == "total"].to_dict("records")}
    shown = [o for o in ("ece", "signed_ece", "nll", "robust_accuracy") if o in totals] or list(totals)[:1]
    excl = [o for o in shown if _excludes_zero(totals[o])]
    tot = totals[excl[0] if excl else shown[0]]
    n_pairs = res.per_pair.groupby(["control_run", "treated_run"]).ngroups
    floor = float(tot["p_floor"]) if _finite(tot.get("p_floor")) else float("nan")
    return floor_text(floor, _excludes_zero(tot), res.pairing, len(res.control_runs), len(res.treated_runs), n_pairs)


def _fmt_level(v: float, d: int) -> str:
    return "nan" if not _finite(v) else f"{float(v):.{d}f}"


def _fmt_signed(v: float, d: int) -> str:
    return "nan" if not _finite(v) else f"{float(v):+.{d}f}".replace("-", "−")


def verdict_text(treated: Any, control: Any, res: Any, levels: dict[str, tuple[float, float]]) -> str:
    """One sentence in plain words: what the treatment did to calibration (and robustness), following the numbers.

    Parameters
    ----------
    treated, control : the two arms.
    res : DecompositionResult
        Its totals (treated − control, with intervals) decide the words: a change whose interval includes 0 "did
        not detectably change"; the sign of the treated arm's mean signed ECE (mean confidence − accuracy) decides
        over- or underconfident.
    levels : dict
        Outcome -> (control mean, treated mean) over runs.

    Returns
    -------
    str
    """
    summ = res.summary()
    tot = {r["outcome"]: r for r in summ[summ.component == "total"].to_dict("records")}

    def dec(o: str) -> int:
        r = tot.get(o)
        d = _decimals(r["ci_low"], r["ci_high"]) if r is not None else None
        return 3 if d is None else max(2, min(d, 3))  # at most 3 decimals: one precision across comparisons

    s = tot.get("signed_ece")
    sc, st = levels.get("signed_ece", (math.nan, math.nan))
    if s is None or not _excludes_zero(s):
        verb = "did not detectably change the model's confidence gap"
    elif s["estimate"] < 0:
        verb = ("made the model underconfident" if st < 0 <= sc else "made the model more underconfident"
                if st < 0 else "reduced the model's overconfidence")
    else:
        verb = ("made the model overconfident" if st > 0 >= sc else "made the model more overconfident"
                if st > 0 else "reduced the model's underconfidence")
    nums = []
    if "ece" in levels:
        ec, et = levels["ece"]
        e = tot.get("ece")
        change = "" if e is None or _excludes_zero(e) else " (change not detectable)"
        nums.append(f"ECE {_fmt_level(ec, dec('ece'))} → {_fmt_level(et, dec('ece'))}{change}")
    if "signed_ece" in levels:
        nums.append(f"signed ECE {_fmt_signed(sc, dec('signed_ece'))} → {_fmt_signed(st, dec('signed_ece'))}")
    text = f"{treated} {verb}: " + ", ".join(nums) if nums else f"{treated} {verb}"
    r = tot.get("robust_accuracy")
    if r is not None and "robust_accuracy" in levels:
        rc, rt = levels["robust_accuracy"]
        how = ("did not detectably change" if not _excludes_zero(r) else "fell" if r["estimate"] < 0 else "rose")
        text += (f"; robust accuracy at ε = {eps_label(res.eps)} {how} "
                 f"({_fmt_level(rc, dec('robust_accuracy'))} → {_fmt_level(rt, dec('robust_accuracy'))})")
    return f"{text} (vs {control}; means over runs)."


def summary_text(decompositions: list[tuple[str, Any, Any, Any]], n_runs: int) -> list[str]:
    """The report's opening lines: the estimand first, then per comparison the mechanism and how sure."""
    from ..causal.decompose import split_text

    ok = [(t, c, tr, r) for t, c, tr, r in decompositions if not isinstance(r, Exception)]
    if not ok:
        failed = "; ".join(f"{tr} vs {c}: {r}" for _, c, tr, r in decompositions) or "no comparison was requested"
        return ["Estimand: none — the decomposition could not be computed "
                f"({failed}); the regression mediation below states its own estimand and design."]
    out = [_estimand_sentence([r for *_, r in ok], n_runs)]
    for treatment, control, treated, res in ok:
        summ = res.summary()
        parts = []
        for outcome in [o for o in ("signed_ece", "robust_accuracy") if o in res.outcomes] or [res.outcomes[0]]:
            g = {r["component"]: r for r in summ[summ.outcome == outcome].to_dict("records")}
            tot = g["total"]
            factors = [f for f in res.factors if f in g]
            clear = [f for f in factors if _excludes_zero(g[f])]
            if clear and _excludes_zero(tot):
                why = split_text(float(tot["estimate"]), {f: float(g[f]["estimate"]) for f in factors}, _FACTOR_WORDS)
            elif clear:
                why = (f"the total may be 0, but the {', '.join(clear)} share(s) do not: the factors pull in "
                       "opposite directions.")
            else:
                why = "no factor's interval excludes 0."
            parts.append(f"{_outcome_name(outcome, res)} {_ci(tot, res.ci_level)}: {why}")
        text = f"{treated} vs {control}. Mechanism: " + " ".join(parts) + " " + how_sure_line(res)
        for note in res.notes:
            if "unaligned" in note or "basis-free" in note:
                text += f" Caution: {note}."
        out.append(text)
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
            out.append(text)
    if versus is not None and len(versus):
        parts = []  # the agreement flag of the summary links here
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
    if not out:
        out.append("No finding could be stated from this study.")
    return out


#: The caveats of regression mediation, said once (in the Methods appendix).
MEDIATION_CAVEATS = ("Caveats: regression mediation assumes no unmeasured confounding of the mediator–outcome relation "
                     "beyond what pairing by image removes (see the sensitivity table: the ρ at which each path would "
                     "vanish); the treatment is assigned per training run, so inference is over runs, and with few "
                     "runs per arm no p-value can fall below the design's floor.")


def agreement(versus: pd.DataFrame | None) -> tuple[bool | None, str]:
    """Whether regression mediation and the decomposition agree on the same estimand: every pair of intervals
    overlaps (True), some do not (False), nothing to compare (None); with one line that says so."""
    if versus is None or not len(versus):
        return None, "Mediation vs decomposition: no mediation path matches a decomposition factor."
    ok = [(r["mediation_ci_low"] <= r["decomposition_ci_high"] and r["decomposition_ci_low"] <= r["mediation_ci_high"])
          for r in versus.to_dict("records")]
    bad = [f"{r['treated']} {r['outcome']} via {r['mediator']}" for r, o in zip(versus.to_dict("records"), ok)
           if not o]
    if all(ok):
        return True, (f"Mediation and decomposition agree: the intervals overlap on all {len(ok)} matching paths "
                      "(same estimand).")
    return False, (f"Mediation and decomposition disagree on {len(bad)} of {len(ok)} matching paths ({'; '.join(bad)}): "
                   "their intervals do not overlap; the regression model is what to doubt.")


#: Short factor names for figure labels.
FACTOR_WORDS_SHORT = {"total": "total", "scale": "logit scale", "shape": "logit shape", "head": "head",
                      "magnitude": "magnitude", "direction": "direction", "head_norm": "head norm",
                      "orientation": "orientation"}
