"""Interventions on the representation: set the magnitude or the direction of the features, measure what follows.

Mediation estimates (``causalgeom.causal``) read the mechanism off observational variation;
this module *sets* a mediator and measures the outcome (Pearl's ``do``):

* post hoc on a dump (features + head, no model): :func:`rescale` (``h -> s h``),
  :func:`rotate` (move ``h`` toward / away from a class center by a fraction of the angle,
  keeping ``||h||``), :func:`match` (give a control run the treated run's magnitude or cosine
  distribution and report the *interventional share* of each outcome gap), their study-level
  forms :func:`rescale_study`, :func:`rotate_study`, :func:`match_study`, and
  :func:`temperature_vs_scaling`;
* inside the model: :class:`InterventionModel` (``head o T o backbone`` with ``T`` a
  :class:`Rescale` or :class:`Rotate`), so attacks run through the intervention, and
  :func:`robust_dose_response` (robust accuracy against ``s`` or ``alpha``);
* reporting: :func:`plot_dose_response`, :func:`share_vs_mediation`.

Modules: `posthoc` (numpy: the post hoc functions, their checks and streaming machinery), `study` (numpy:
study-level forms), `model` (torch: the in-model transforms and attacks through them), `plots` (matplotlib),
`compare` (interventional share against mediation). Everything public is re-exported here; the torch names
(`FeatureTransform`, `Rescale`, `Rotate`, `InterventionModel`, `robust_dose_response`) are imported from `model`
on first use, so ``import causalgeom.interventions`` and the post hoc functions need no torch.

The formulas are in ``docs/methods_interventions.md``. Post hoc functions read a schema-v1 run
(in memory or dask-backed) block by block: memory is bounded by one block of features, never
``(n_grid, n_samples, n_classes)``.

References
----------
Park, Kim, Lee (2024), "Impact of Regularization on Calibration and Robustness: from the
Representation Space Perspective", arXiv:2410.03999.
Guo, Pleiss, Sun, Weinberger (2017), "On Calibration of Modern Neural Networks", ICML (ECE,
temperature scaling).
Hanley, MacGibbon (2006), "Creating non-parametric bootstrap samples using Poisson frequencies",
Comput. Methods Programs Biomed. 83(1) (Poisson bootstrap).
Shoemake (1985), "Animating rotation with quaternion curves", SIGGRAPH (slerp).
"""

from __future__ import annotations

import importlib
from typing import Any

from .compare import share_vs_mediation
from .plots import plot_dose_response
from .posthoc import (MATCH_WHAT, MEDIATION_OUTCOME_ALIASES, MEDIATOR_KINDS, OUTCOMES, TOWARD, match, match_features,
                      quantile_match, rescale, rescale_features, rotate, rotate_features, set_cosine,
                      temperature_vs_scaling)
from .study import match_study, rescale_study, rotate_study

#: Public names of `causalgeom.interventions.model`, imported (with torch) on first use.
_TORCH_NAMES = ("FeatureTransform", "Rescale", "Rotate", "InterventionModel", "robust_dose_response")

__all__ = [
    "OUTCOMES",
    "MEDIATION_OUTCOME_ALIASES",
    "MEDIATOR_KINDS",
    "TOWARD",
    "MATCH_WHAT",
    "rescale",
    "rotate",
    "match",
    "rescale_study",
    "rotate_study",
    "match_study",
    "temperature_vs_scaling",
    "rescale_features",
    "rotate_features",
    "set_cosine",
    "quantile_match",
    "match_features",
    "FeatureTransform",
    "Rescale",
    "Rotate",
    "InterventionModel",
    "robust_dose_response",
    "plot_dose_response",
    "share_vs_mediation",
]


def __getattr__(name: str) -> Any:
    """``cg.interventions.Rescale`` etc.: import the torch module `model` only when one of its names is used."""
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
