"""What several report sections share, computed once: the study's tables, the decompositions, the mediations."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..dump.study import Study
from ..errors import CausalGeomError, QueryError

__all__ = ["Context", "default_queries", "DECOMPOSE_OUTCOMES"]

#: Outcomes of the report's decomposition (``robust_accuracy`` is added when the dumps store attacked outputs).
DECOMPOSE_OUTCOMES = ("signed_ece", "ece", "nll", "accuracy")


def default_queries(study: Study) -> list[Any]:
    """The demo's questions: each regularizer vs ``ce``, mediators RMS and cosine, outcomes overconfidence and robustness."""
    from ..causal import Query

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
    from ..metrics.table import robust_column

    first = runs.iloc[0]
    return [robust_column(str(first["attacks"][0]), float(e)) for e in first["eps"]]


class Context:
    """Holds what several sections share (frames, results), computed once."""

    def __init__(self, study: Study, queries: list[Any]):
        self.study, self.queries = study, queries
        self.runs = study.runs
        self._frames: dict[str, pd.DataFrame] = {}
        self.paper: pd.DataFrame | None = None
        self._run_frame: pd.DataFrame | None = None
        self.mediation_results: list[Any] = []
        self._mediations: list[tuple[Any, Any, list[Any], Exception | None]] | None = None
        self.intervention_results: dict[str, Any] = {}
        self.robust: dict[str, Any] = {}
        self.notes: list[str] = []
        self._decomp: list[tuple[str, Any, Any, Any]] | None = None  # (treatment, control, treated, result | error)
        self._repr: dict[tuple[str, str, str], Any] = {}  # the representation-level description per comparison
        self._versus: Any = False

    # -- tables --------------------------------------------------------------------------------
    @property
    def sample_frame(self) -> pd.DataFrame:
        """The default per-sample analysis table."""
        key = "default"
        if key not in self._frames:
            self._frames[key] = self.study.to_frame(level="sample", progress=False)
        return self._frames[key]

    def frame(self, query: Any) -> pd.DataFrame:
        """The analysis table a query asks for (cached per table options)."""
        kwargs = query.table_kwargs()
        key = repr(sorted(kwargs.items()))
        if key not in self._frames:
            self._frames[key] = self.study.to_frame(progress=False, **kwargs)
        return self._frames[key]

    def run_frame(self) -> pd.DataFrame:
        """Per-run metrics (`causalgeom.metrics.summary.run_frame`), once."""
        if self._run_frame is None:
            from ..metrics.summary import run_frame

            self._run_frame = run_frame(self.study, progress=False)
        return self._run_frame

    def paper_table(self) -> pd.DataFrame:
        if self.paper is None:
            from ..metrics.summary import paper_table

            self.paper = paper_table(self.run_frame())
        return self.paper

    def levels(self, treatment: str, control: Any, treated: Any, res: Any) -> dict[str, tuple[float, float]]:
        """Outcome -> (control mean, treated mean) over the runs of each arm, for the verdict sentence."""
        frame = self.run_frame()
        col = treatment if treatment in frame.columns else None
        if col is None:
            return {}
        cols = {"ece": "ece", "signed_ece": "signed_ece"}
        if res.eps is not None and res.attack is not None:
            from ..metrics.table import robust_column

            cols["robust_accuracy"] = robust_column(res.attack, float(res.eps))
        out = {}
        c_rows = frame[frame[col].astype(str) == str(control)]
        t_rows = frame[frame[col].astype(str) == str(treated)]
        for o, c in cols.items():
            if c in frame.columns:
                out[o] = (float(pd.to_numeric(c_rows[c]).mean()), float(pd.to_numeric(t_rows[c]).mean()))
        return out

    def headless_reason(self, what: str, needs: str) -> str | None:
        """One sentence saying why a section that needs the head is absent, or None when every run has one."""
        runs = self.runs
        missing = [r for r, h in zip(runs["run_id"], runs.get("has_head", [True] * len(runs))) if h is not True]
        if not missing:
            return None
        which = "no run of this study has" if len(missing) == len(runs) else \
            f"runs {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} have"
        return (f"{what} not shown: {needs} the final linear layer (head_weight, head_bias), and {which} one "
                "stored (import the dumps with their head, or extract with a --feature-layer that feeds the head).")

    def by_regularizer(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rec in self.runs.sort_values(["regularizer", "run_id"]).to_dict("records"):
            out.setdefault(str(rec.get("regularizer")), []).append(rec["run_id"])
        return out

    # -- the decomposition -----------------------------------------------------------------------
    def comparisons(self) -> list[tuple[str, Any, Any]]:
        """(treatment, control, treated) of every query whose treatment is a run attribute, in query order."""
        out: list[tuple[str, Any, Any]] = []
        for q in self.queries:
            key = (str(q.treatment), q.control, q.treated)
            if q.treatment in self.runs.columns and q.control is not None and key not in out:
                out.append(key)
        return out

    def decompositions(self) -> list[tuple[str, Any, Any, Any]]:
        """`causal.decompose` (function-level) of every comparison: its result, or the error that prevented it."""
        if self._decomp is None:
            from .. import causal

            first = self.study[self.runs.iloc[0]["run_id"]]
            has_head = "head_weight" in first.variables
            adv = "adv_logits" in first.variables or ("adv_features" in first.variables and has_head)
            outcomes = list(DECOMPOSE_OUTCOMES) + (["robust_accuracy"] if adv else [])
            rep_outcomes = list(DECOMPOSE_OUTCOMES) + (["robust_accuracy"] if "adv_features" in first.variables else [])
            self._decomp = []
            for treatment, control, treated in self.comparisons():
                kw = dict(treatment=treatment, control=control, treated=treated, outcome=outcomes, n_boot=500)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        # the headline: the function-level split (scale, shape), valid for any two models
                        res = causal.decompose(self.study, rng=np.random.default_rng(0), **kw)
                except (CausalGeomError, ValueError) as exc:
                    res = exc
                    self.notes.append(f"Decomposition of {treated} vs {control}: not computed ({exc}).")
                if has_head and not isinstance(res, Exception):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        self._repr[(treatment, str(control), str(treated))] = self._representation(
                            {**kw, "outcome": rep_outcomes})
                self._decomp.append((treatment, control, treated, res))
        return self._decomp

    def _representation(self, kw: dict[str, Any]) -> Any:
        """The representation-level split (head, magnitude, direction) where the runs are shown to share an
        initialisation, else the basis-free one; an error where neither can be computed (no head)."""
        from .. import causal

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

    def representation(self, treatment: str, control: Any, treated: Any) -> Any:
        """The representation-level description of one comparison (None when not computed)."""
        self.decompositions()
        return self._repr.get((treatment, str(control), str(treated)))

    def representations(self) -> list[tuple[str, Any, Any, Any]]:
        """The representation-level description of every comparison (after `decompositions`)."""
        self.decompositions()
        return [(t, c, tr, self._repr.get((t, str(c), str(tr)), QueryError("not computed")))
                for t, c, tr, _ in self._decomp]

    # -- mediation -----------------------------------------------------------------------------
    def mediations(self) -> list[tuple[Any, Any, list[Any], Exception | None]]:
        """`causal.mediate` of every query: (query, result, warnings caught, error), once."""
        if self._mediations is None:
            from .. import causal

            self._mediations = []
            for q in self.queries:
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        res = causal.mediate(self.frame(q), **q.mediate_kwargs())
                except QueryError as exc:
                    self.notes.append(f"{q.treatment} = {q.treated} vs {q.control}: not estimable ({exc}).")
                    self._mediations.append((q, None, [], exc))
                    continue
                self.mediation_results.append((q, res))
                self._mediations.append((q, res, list(caught), None))
        return self._mediations

    @property
    def versus(self) -> pd.DataFrame | None:
        """Regression mediation beside the representation-level decomposition on the same estimand."""
        if self._versus is False:
            from .text import mediation_vs_decomposition

            self.mediations()
            self._versus = mediation_vs_decomposition(self.mediation_results, self.representations())
        return self._versus
