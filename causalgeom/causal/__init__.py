"""The causal layer: mediation analysis of regularizer → representation geometry → calibration / robustness.

::

    import causalgeom as cg
    table = study.to_frame(level="sample")
    res = cg.causal.mediate(table, treatment="regularizer", control="ce", treated="label_smoothing",
                            mediators=["rms", "cos_true"], outcome="overconfidence", cluster="run_id",
                            n_boot=1000, rng=np.random.default_rng(0))
    res.summary(); res.plot(); res.sensitivity
    cg.causal.refute(res)                                   # DoWhy refuters (one model per mediator)
    q = cg.causal.Query(treatment="regularizer", control="ce", treated="mixup", mediators=["rms"],
                        outcomes=["overconfidence"]); q.to_toml("q.toml"); cg.causal.Query.from_toml("q.toml")

Modules: `spec` (`MediationSpec`: the question, its constraints declared once), `engine` (the in-process engine
and the choice of engine for a table or study; the Dask engine is handed in by `causalgeom.scale`), `query` (Query, TOML files), `estimators` (the regression estimator), `bootstrap` (resampling
weights), `mediation` (`mediate`), `results` (`MediationResult`), `simulate` (synthetic
structural models with known effects), `decompose` (`decompose`, `DecompositionResult`: the head-based
decomposition of a treated − control gap into head, magnitude and direction). Estimands, estimators, the bootstrap and the
sensitivity analysis are documented in ``docs/methods_causal.md``.
"""

from __future__ import annotations

from .design import MIN_CLUSTERS_CONTINUOUS, MIN_CLUSTERS_PER_ARM
from .estimators import RHO_GRID, effect_names
from .mediation import DEFAULT_INFERENCE, FewClustersWarning, bootstrap_pvalue, mediate, percentile_ci
from .inference import randomization_floor
from .options import ESTIMANDS, INFERENCE, PAIRED_BY
from .query import Query, read_queries, write_queries
from .results import MediationResult
from ._backends import REFUTERS, refute
from .simulate import simulate_mediation
from .decompose import DecompositionResult, decompose
from .plan import PlanResult, plan
from .spec import MediationSpec, PARAMETER_CONSTRAINTS
from .engine import ENGINES, EngineChoice, choose_engine
from .mediation import IN_PROCESS


__all__ = ["mediate", "MediationResult", "Query", "read_queries", "write_queries", "refute", "FewClustersWarning",
           "MIN_CLUSTERS_PER_ARM", "MIN_CLUSTERS_CONTINUOUS", "RHO_GRID", "effect_names", "percentile_ci",
           "bootstrap_pvalue", "REFUTERS", "simulate_mediation", "DEFAULT_INFERENCE", "INFERENCE", "PAIRED_BY",
           "ESTIMANDS", "randomization_floor", "decompose", "DecompositionResult",
           "plan", "PlanResult", "MediationSpec", "PARAMETER_CONSTRAINTS", "ENGINES", "EngineChoice", "IN_PROCESS",
           "choose_engine"]
