"""The mediation question as one object: `MediationSpec`, with its constraints declared once beside it.

`MediationSpec` holds what `causalgeom.causal.mediate`, `causalgeom.scale.mediate_study`, `Query` and the command
line share: the treatment and the levels compared, the mediators, outcomes and covariates, the clusters, and how
the effects are estimated and their uncertainty stated. It is frozen and validated on construction against
`PARAMETER_CONSTRAINTS` (scikit-learn's ``_parameter_constraints`` manner: name -> allowed values, types or ranges),
checked by `causalgeom._util.checks.check_params` in one message style (``NAME: expected ..., got VALUE``).

It is built from `mediate`'s keywords (`MediationSpec.from_kwargs`), from a TOML query (`Query.spec`) and from the
command line (through `Query`); the engines (`causalgeom.causal.engine`) take a spec and a table or study.
Randomness (``rng``) is an argument of the run, not part of the question.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .._util.checks import NAME, Interval, check_params
from ..errors import QueryError
from .options import (BOOTSTRAP_SCHEMES, DEFAULT_INFERENCE, ESTIMANDS, INFERENCE, LEVELS, METHODS, OUTCOME_MODELS, PAIRED_BY, SLOPES,
                      TREATMENT_TYPES)

__all__ = ["MediationSpec", "PARAMETER_CONSTRAINTS", "as_columns", "resolve_inference"]

#: Allowed values of every field of `MediationSpec` (one constraint list per name; a value passes when it meets
#: one). The one declaration of these rules: `mediate`, `mediate_study`, `Query` and the CLI all go through it.
PARAMETER_CONSTRAINTS: dict[str, list[Any]] = {
    "treatment": [NAME],
    "cluster": [NAME, None],
    "method": [METHODS],
    "n_boot": [Interval(int, 0, None), None],
    "bootstrap": [BOOTSTRAP_SCHEMES, None],
    "ci_level": [Interval(float, 0, 1, closed="neither")],
    "outcome_model": [OUTCOME_MODELS],
    "interaction": [bool],
    "ordered": [bool],
    "treatment_type": [TREATMENT_TYPES],
    "level": [LEVELS, None],
    "inference": [INFERENCE, None],
    "paired_by": [PAIRED_BY],
    "estimand": [ESTIMANDS],
    "slope": [SLOPES, None],
}


def resolve_inference(inference: str | None, bootstrap: str | None) -> tuple[str, str]:
    """``(inference, bootstrap)`` after defaults: an explicit ``bootstrap=`` scheme without ``inference=`` asks for
    the bootstrap; otherwise `DEFAULT_INFERENCE`."""
    if inference is None:
        inference = "bootstrap" if bootstrap is not None else DEFAULT_INFERENCE
    return inference, (bootstrap if bootstrap is not None else "cluster")


def as_columns(value: Any, name: str) -> tuple[str, ...]:
    """A column name, a comma-separated string or a sequence of names -> a tuple of non-empty names.

    Raises
    ------
    QueryError
        Not a name or a sequence of non-empty names.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")] if "," in value else [value]
    try:
        items = tuple(value)
    except TypeError:
        raise QueryError(f"{name}: expected a column name or a list of column names, got {value!r}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise QueryError(f"{name}: expected column names (non-empty strings), got {item!r} in {list(items)!r}")
    return items


def _level_value(value: Any, key: str) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # a numpy scalar
        value = value.item()
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise QueryError(f"{key}: expected a string or a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"{key}: expected a level or a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class MediationSpec:
    """One mediation question and how to answer it (see `causalgeom.causal.mediate` for every field).

    Parameters
    ----------
    treatment : str
    mediators, outcomes : tuple of str
        At least one each (a string or a list is accepted and stored as a tuple).
    control, treated : str or number, optional
    covariates : tuple of str
    cluster : str or None
    method, n_boot, bootstrap, ci_level, outcome_model, interaction, ordered, treatment_type, level, inference,
    paired_by, estimand, slope
        As the keywords of ``mediate`` (``None`` where ``mediate`` resolves a default).

    Raises
    ------
    QueryError
        A field against `PARAMETER_CONSTRAINTS`, or no mediator / outcome.
    """

    treatment: str
    mediators: tuple[str, ...]
    outcomes: tuple[str, ...]
    control: Any = None
    treated: Any = None
    covariates: tuple[str, ...] = ()
    cluster: str | None = "run_id"
    method: str = "regression"
    n_boot: int | None = None
    bootstrap: str | None = None
    ci_level: float = 0.95
    outcome_model: str = "auto"
    interaction: bool = False
    ordered: bool = False
    treatment_type: str = "auto"
    level: str | None = None
    inference: str | None = None
    paired_by: str | None = "auto"
    estimand: str = "auto"
    slope: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen: normalize once, here
        set_("mediators", as_columns(self.mediators, "mediators"))
        set_("outcomes", as_columns(self.outcomes, "outcomes"))
        set_("covariates", as_columns(self.covariates, "covariates"))
        set_("control", _level_value(self.control, "control"))
        set_("treated", _level_value(self.treated, "treated"))
        if hasattr(self.n_boot, "item") and not isinstance(self.n_boot, bool):
            set_("n_boot", self.n_boot.item())
        check_params({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, PARAMETER_CONSTRAINTS,
                     error=QueryError)
        if not self.mediators:
            raise QueryError("mediators: expected at least one mediator column, got none")
        if not self.outcomes:
            raise QueryError("outcomes: expected at least one outcome column, got none")
        set_("ci_level", float(self.ci_level))

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def from_kwargs(cls, *, outcome: Any = None, **kwargs: Any) -> MediationSpec:
        """The spec of ``mediate(table, **kwargs)`` (``outcome=`` as in ``mediate``; ``rng`` is not part of it)."""
        if "outcomes" in kwargs and outcome is not None:
            raise QueryError("give outcome= or outcomes=, not both")
        mediators = kwargs.pop("mediators", None)
        outcomes = kwargs.pop("outcomes", outcome)
        treatment = kwargs.pop("treatment", None)
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise QueryError(f"unknown mediation options {unknown}; allowed: {sorted(PARAMETER_CONSTRAINTS)}")
        return cls(treatment=treatment, mediators=mediators, outcomes=outcomes, **kwargs)

    def replace(self, **changes: Any) -> MediationSpec:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------- using
    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `causalgeom.causal.mediate` (without ``rng``); ``outcome`` is a list."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["outcome"] = list(d.pop("outcomes"))
        for k in ("mediators", "covariates"):
            d[k] = list(d[k])
        return d

    @property
    def resolved_inference(self) -> tuple[str, str]:
        """``(inference, bootstrap)`` after defaults (`resolve_inference`)."""
        return resolve_inference(self.inference, self.bootstrap)

    def as_dict(self) -> Mapping[str, Any]:
        """The fields, as a plain dict."""
        return dataclasses.asdict(self)
