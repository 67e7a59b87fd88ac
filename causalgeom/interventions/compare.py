"""`share_vs_mediation`: the interventional share of `match` next to the mediation estimate of the same gap."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import ConfigError
from ..metrics.geometry import magnitude
from .posthoc import MEDIATION_OUTCOME_ALIASES, MEDIATOR_KINDS, OUTCOMES

__all__ = ["share_vs_mediation"]

def _mediation_parts(mediation_result: Any) -> tuple[pd.DataFrame, list[str] | None]:
    """The summary table (columns outcome, effect, estimate, ci_low, ci_high) and the mediator names."""
    if isinstance(mediation_result, pd.DataFrame):
        table, mediators = mediation_result, mediation_result.attrs.get("mediators")
    elif callable(getattr(mediation_result, "summary", None)):
        table, mediators = mediation_result.summary(), list(getattr(mediation_result, "mediators", []) or [])
    else:
        raise ConfigError("mediation_result: expected a causalgeom.causal.MediationResult or its summary() "
                          f"DataFrame, got {type(mediation_result).__name__}")
    missing = [c for c in ("outcome", "effect", "estimate", "ci_low", "ci_high") if c not in table.columns]
    if missing:
        raise ConfigError(f"mediation_result: its summary lacks columns {missing}; got {list(table.columns)}")
    return table, mediators


def _mediator_kind(effect: str, mediators: list[str] | None) -> str | None:
    """Which intervention (``what``) a ``prop_mediated...`` effect corresponds to, or None."""
    path = effect[len("prop_mediated"):]
    if path:
        name = path.strip("[]")
        return None if "->" in name else MEDIATOR_KINDS.get(name)
    kinds = {MEDIATOR_KINDS.get(m) for m in (mediators or [])}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    return "both" if kinds == {"magnitude", "cosine"} else None


def share_vs_mediation(match_result: pd.DataFrame | Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame],
                       mediation_result: Any, *, outcome: str | None = None) -> pd.DataFrame:
    """Compare the interventional share with the mediation analysis' proportion mediated.

    Both estimate the fraction of the treated-control difference in an outcome that goes through a
    mediator: the proportion mediated from observational variation (indirect / total effect,
    :func:`causalgeom.causal.mediate`), the interventional share by setting the mediator
    (:func:`match`). Agreement supports the mediation model; a gap points at confounding of the
    mediator, nonlinearity, or a mediator proxy that misses part of the mechanism.

    Parameters
    ----------
    match_result : DataFrame, or mapping / sequence of DataFrames
        Output(s) of :func:`match` / :func:`match_study`; ``df.attrs["what"]`` (or the mapping's keys)
        names the intervention: ``"magnitude"``, ``"cosine"`` or ``"both"``.
    mediation_result : MediationResult or its ``summary()`` DataFrame
        Its ``prop_mediated[m]`` rows (or ``prop_mediated`` with one mediator) are paired with the
        intervention on the same quantity (``rms``/``norm`` -> magnitude, ``cos_true``/``cos_pred``
        -> cosine; see :data:`MEDIATOR_KINDS`); the joint ``prop_mediated`` of a magnitude and a
        cosine mediator pairs with ``what="both"``.
    outcome : str, optional
        Keep only this mediation outcome (e.g. ``"overconfidence"``); outcomes are paired through
        :data:`MEDIATION_OUTCOME_ALIASES` (``overconfidence`` -> ``signed_ece``, ``correct`` ->
        ``accuracy``, ``confidence`` -> ``mean_confidence``; same names otherwise).

    Returns
    -------
    pandas.DataFrame
        One row per paired (mediator, outcome): ``what``, ``mediation_effect``, ``outcome``,
        ``intervention_outcome``, ``interventional_share`` with ``_ci_low`` / ``_ci_high``,
        ``proportion_mediated`` with ``_ci_low`` / ``_ci_high``, and ``difference`` (share -
        proportion).

    Raises
    ------
    ConfigError
        If nothing can be paired (the message lists what each side has).
    """
    if isinstance(match_result, pd.DataFrame):
        results = {match_result.attrs.get("what"): match_result}
    elif isinstance(match_result, Mapping):
        results = dict(match_result)
    else:
        results = {}
        for r in match_result:
            if not isinstance(r, pd.DataFrame):
                raise ConfigError(f"match_result: expected DataFrames from interventions.match, got {type(r).__name__}")
            results[r.attrs.get("what")] = r
    table, mediators = _mediation_parts(mediation_result)
    rows = []
    for rec in table[table["effect"].astype(str).str.startswith("prop_mediated")].itertuples(index=False):
        kind = _mediator_kind(str(rec.effect), mediators)
        iv_outcome = MEDIATION_OUTCOME_ALIASES.get(rec.outcome, rec.outcome)
        if kind not in results or iv_outcome not in OUTCOMES or (outcome is not None and rec.outcome != outcome):
            continue
        share = results[kind].loc[iv_outcome]
        rows.append({"what": kind, "mediation_effect": rec.effect, "outcome": rec.outcome,
                     "intervention_outcome": iv_outcome, "interventional_share": share["share"],
                     "interventional_share_ci_low": share["share_ci_low"],
                     "interventional_share_ci_high": share["share_ci_high"],
                     "proportion_mediated": rec.estimate, "proportion_mediated_ci_low": rec.ci_low,
                     "proportion_mediated_ci_high": rec.ci_high, "difference": share["share"] - rec.estimate})
    if not rows:
        effects = sorted(set(table["effect"].astype(str)))
        raise ConfigError(f"share_vs_mediation: nothing to pair: interventions {sorted(map(str, results))}, "
                          f"mediation mediators {mediators}, effects {effects}, outcomes "
                          f"{sorted(set(map(str, table['outcome'])))}" + (f" (outcome={outcome!r})" if outcome else ""))
    return pd.DataFrame(rows)
