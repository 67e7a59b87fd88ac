"""Every result object has the same face: ``summary()`` (a DataFrame), ``to_markdown()``, ``__repr__`` and
``_repr_html_`` (mediation, decomposition, plan)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import causalgeom as cg
from causalgeom.testing import make_study

pytestmark = pytest.mark.filterwarnings("ignore::causalgeom.causal.FewClustersWarning")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    study = make_study(tmp_path_factory.mktemp("faces") / "study", n_runs=4, n=60, d=6, k=3, paired=True)
    med = cg.causal.mediate(study.to_frame(progress=False), treatment="regularizer", control="ce",
                            treated="label_smoothing", mediators=["norm"], outcome=["nll"])
    dec = cg.causal.decompose(study, control="ce", treated="label_smoothing", outcome="nll", n_boot=20, rng=0)
    plan = cg.causal.plan(med, effect_name="total")
    return {"MediationResult": med, "DecompositionResult": dec, "PlanResult": plan}


@pytest.mark.parametrize("name", ["MediationResult", "DecompositionResult", "PlanResult"])
def test_the_same_face(results, name):
    res = results[name]
    assert type(res).__name__ == name
    s = res.summary()
    assert isinstance(s, pd.DataFrame) and len(s) >= 1 and "estimate" in s.columns or "n_per_arm" in s.columns
    md = res.to_markdown()
    assert md.startswith("### ") and "|" in md  # a title and a Markdown table
    r = repr(res)
    assert r.startswith(f"<{name}") and "\n" in r and "DataFrame" not in r  # not a dataclass dump of tables
    html = res._repr_html_()
    assert html.startswith("<div class='causalgeom-") and "<table" in html and html.endswith("</div>")
    # the numbers of the summary appear in the Markdown (the same table, not another computation)
    col = "estimate" if "estimate" in s.columns else "n_per_arm"
    first = s[col].iloc[0]
    assert (f"{first:.4g}" if isinstance(first, (float, np.floating)) else str(first)) in md
