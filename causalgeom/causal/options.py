"""Allowed values of the options of `causalgeom.causal.mediate` and `causalgeom.causal.Query`.

Kept in a module of their own so that `mediation` and `query` both import them without importing each other.
"""

from __future__ import annotations

__all__ = ["METHODS", "BOOTSTRAP_SCHEMES", "OUTCOME_MODELS", "LEVELS", "TREATMENT_TYPES", "CENTERS", "INFERENCE",
           "PAIRED_BY", "ESTIMANDS", "SLOPES", "DEFAULT_INFERENCE"]

#: Inference used when ``inference=`` is not given: the method whose 95% intervals reached nominal coverage with
#: 3 runs per arm in the simulations of docs/methods_causal.md (benchmarks/bench_coverage.py).
DEFAULT_INFERENCE = "cr2"

#: Estimation methods accepted by `causalgeom.causal.mediate`.
METHODS = ("regression", "statsmodels", "dowhy")
#: Resampling schemes of ``inference="bootstrap"``: clusters (runs) only, clusters then samples within them,
#: samples (naive), or runs crossed with images (``"two-way"``, the pigeonhole bootstrap of Owen 2007).
BOOTSTRAP_SCHEMES = ("cluster", "cluster+samples", "naive", "two-way")
#: Outcome models of the ``"regression"`` method (``"auto"``: logistic for 0/1 outcomes, else linear).
OUTCOME_MODELS = ("auto", "linear", "logistic", "probit")
#: Levels of the analysis table (`causalgeom.metrics.table.study_frame`).
LEVELS = ("sample", "run")
#: How the treatment column is read.
TREATMENT_TYPES = ("auto", "categorical", "continuous")
#: Class centers of the cosine columns (`causalgeom.metrics.geometry.class_centers`).
CENTERS = ("minimal_loss", "mean", "weight")
#: Inference methods: CR2 cluster-robust standard errors with t intervals, a run-level randomization
#: (permutation) test, the wild cluster bootstrap (Webb weights), the bootstrap of ``bootstrap=``.
INFERENCE = ("cr2", "permutation", "wild", "bootstrap")
#: Pairing of runs by test image (``None`` turns it off).
PAIRED_BY = ("auto", "sample", None)
#: Estimands: the effect over training runs, or of these models over test images (``"auto"``: runs when every
#: arm has 2+ runs, else the model-conditional estimand).
ESTIMANDS = ("auto", "runs", "model")
#: Mediator → outcome slope of `causalgeom.causal.mediate`: ``"pooled"`` (within- and between-run variation, after
#: image effects) or ``"within"`` (within-run variation only: image + run fixed effects, robust to run-level
#: confounding). The default is chosen in docs/methods_causal.md ("Run-level confounding").
SLOPES = ("pooled", "within")
