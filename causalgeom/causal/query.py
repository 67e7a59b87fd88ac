"""A causal question written once: `Query`, and its TOML query file (read with :mod:`tomllib`, written here).

A query file holds one ``[query]`` table (or the same keys at top level), or several ``[[query]]`` tables::

    [query]
    name = "label smoothing vs ce"
    treatment = "regularizer"
    control = "ce"
    treated = "label_smoothing"
    mediators = ["rms", "cos_true"]
    outcomes = ["overconfidence", "nll"]
    covariates = []
    cluster = "run_id"
    level = "sample"
    method = "regression"
    seed = 0

Keys that are left out take the defaults of `Query`; unknown keys are refused (a typo must not be ignored).
TOML has no null, so ``None`` values are not written, except ``cluster = false`` (rows are independent) and
``seed = false`` (fresh entropy), whose defaults are not None.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .._util.checks import Interval, check_params
from .._util.io import parse_toml, read_toml_text
from ..errors import QueryError
from .spec import MediationSpec, as_columns

__all__ = ["Query", "read_queries", "write_queries", "METHODS", "BOOTSTRAP_SCHEMES", "OUTCOME_MODELS", "LEVELS",
           "TREATMENT_TYPES", "CENTERS", "INFERENCE", "PAIRED_BY", "ESTIMANDS"]

from .options import (BOOTSTRAP_SCHEMES, CENTERS, ESTIMANDS, INFERENCE, LEVELS, METHODS, OUTCOME_MODELS,
                      PAIRED_BY, TREATMENT_TYPES)

_Scalar = str | int | float | bool

#: Constraints of the fields a `Query` adds to its `MediationSpec` (the table's options, the seed, the label).
_QUERY_CONSTRAINTS: dict[str, list[Any]] = {
    "level": [LEVELS], "seed": [Interval(int, 0, None), None], "center": [CENTERS], "name": [str, None],
}
#: Fields whose default is not None; ``false`` in a query file means None (no clusters / fresh entropy).
_FALSE_IS_NONE = ("cluster", "seed", "paired_by")


@dataclass
class Query:
    """One mediation question: treatment → mediators → outcomes, and how to estimate it.

    Parameters
    ----------
    treatment : str
        Treatment column (``"regularizer"``: categorical; ``"strength"``: continuous).
    mediators : list of str
        Mediator columns, e.g. ``["rms", "cos_true"]`` (1 or more).
    outcomes : list of str
        Outcome columns, e.g. ``["overconfidence"]``; each is analysed with the same bootstrap replicates.
    control, treated : str or float, optional
        Categorical treatment: the control and treated levels (control defaults to ``"ce"`` when present; treated
        to the only other level). Continuous treatment: the two values compared (default: the smallest observed
        value and one unit above it, i.e. effects per unit of treatment).
    covariates : list of str
        Pre-treatment common causes adjusted for in every model (numeric, or categorical → indicator columns).
    cluster : str or None
        Column of the unit of treatment assignment (``"run_id"``); ``None``: every row is its own cluster.
    level : {"sample", "run"}
        Which analysis table the query is asked of (`causalgeom.metrics.table.study_frame`).
    method : {"regression", "statsmodels", "dowhy"}
        Estimator (see `causalgeom.causal.mediate`).
    n_boot : int, optional
        Bootstrap replicates (statsmodels: simulation replicates); ``None``: `causalgeom.causal.mediate`'s
        default. Given with the default CR2 inference, which resamples nothing, `mediate` warns.
    seed : int or None
        Seed of the `numpy.random.Generator` used by `run` (``None``: fresh entropy).
    bootstrap : {"cluster", "cluster+samples", "naive", "two-way"}, optional
        Resampling scheme of ``inference="bootstrap"`` (see `causalgeom.causal.mediate`; giving it alone selects
        the bootstrap).
    ci_level : float
        Confidence level of the intervals.
    outcome_model : {"auto", "linear", "logistic", "probit"}
        Outcome model of the ``"regression"`` method (``"auto"``: logistic for 0/1 outcomes).
    inference : {"cr2", "permutation", "bootstrap"}
        Inference method (see `causalgeom.causal.mediate`).
    paired_by : {"auto", "sample"} or None
        Pairing of runs by test image (``false`` in a query file: no pairing).
    estimand : {"auto", "runs", "model"}
        Effect over training runs, or of these models over test images.
    interaction : bool
        Add treatment × mediator terms to the outcome model.
    ordered : bool
        Two mediators causally ordered as listed (first → second); otherwise parallel.
    treatment_type : {"auto", "categorical", "continuous"}
        ``"auto"``: numeric columns are continuous, others categorical.
    name : str, optional
        A label for reports.
    attack, eps, center : optional
        Table options passed to `causalgeom.metrics.table.study_frame` (see `table_kwargs`).
    """

    treatment: str
    mediators: list[str]
    outcomes: list[str]
    control: _Scalar | None = None
    treated: _Scalar | None = None
    covariates: list[str] = field(default_factory=list)
    cluster: str | None = "run_id"
    level: str = "sample"
    method: str = "regression"
    n_boot: int | None = None
    seed: int | None = 0
    bootstrap: str | None = None
    ci_level: float = 0.95
    outcome_model: str = "auto"
    inference: str | None = None
    paired_by: str | None = "auto"
    estimand: str = "auto"
    interaction: bool = False
    ordered: bool = False
    treatment_type: str = "auto"
    name: str | None = None
    attack: list[str] | None = None
    eps: list[float] | None = None
    center: str = "minimal_loss"

    def __post_init__(self) -> None:
        spec = self.spec()  # the question's fields, against causalgeom.causal.spec.PARAMETER_CONSTRAINTS
        self.mediators, self.outcomes = list(spec.mediators), list(spec.outcomes)
        self.covariates, self.control, self.treated = list(spec.covariates), spec.control, spec.treated
        check_params({"level": self.level, "seed": self.seed, "center": self.center, "name": self.name},
                     _QUERY_CONSTRAINTS, error=QueryError)
        self.ci_level = float(self.ci_level)
        if self.attack is not None:
            self.attack = list(as_columns(self.attack, "attack"))
        if self.eps is not None:
            eps = [self.eps] if isinstance(self.eps, (int, float)) else self.eps
            try:
                values = [float(e) for e in eps]
            except (TypeError, ValueError):
                raise QueryError(f"eps: expected a number or a list of numbers, got {self.eps!r}") from None
            if any(isinstance(e, bool) for e in eps) or not all(math.isfinite(e) and e >= 0 for e in values):
                raise QueryError(f"eps: expected finite numbers >= 0, got {self.eps!r}")
            self.eps = values

    # -- use -----------------------------------------------------------------------------------
    def mediate_kwargs(self, outcome: str | None = None) -> dict[str, Any]:
        """Keyword arguments of `causalgeom.causal.mediate` for this query.

        Parameters
        ----------
        outcome : str, optional
            Restrict to one of `outcomes` (default: all of them).
        """
        import numpy as np

        kw = self.spec(outcome).to_kwargs()
        if outcome is not None:
            kw["outcome"] = outcome
        kw.pop("slope")  # not a field of a query: mediate's default
        return dict(kw, rng=np.random.default_rng(self.seed))

    def spec(self, outcome: str | None = None) -> MediationSpec:
        """The `MediationSpec` of this query (validated; ``outcome``: restrict to one of `outcomes`).

        Raises
        ------
        QueryError
            A field against `causalgeom.causal.spec.PARAMETER_CONSTRAINTS`, or ``outcome`` not one of `outcomes`.
        """
        if outcome is not None and outcome not in self.outcomes:
            raise QueryError(f"outcome: {outcome!r} is not one of this query's outcomes {self.outcomes}")
        return MediationSpec(treatment=self.treatment, mediators=self.mediators,
                             outcomes=[outcome] if outcome is not None else self.outcomes, control=self.control,
                             treated=self.treated, covariates=self.covariates, cluster=self.cluster,
                             method=self.method, n_boot=self.n_boot, bootstrap=self.bootstrap,
                             ci_level=self.ci_level, outcome_model=self.outcome_model, interaction=self.interaction,
                             ordered=self.ordered, treatment_type=self.treatment_type, level=self.level,
                             inference=self.inference, paired_by=self.paired_by, estimand=self.estimand)

    def check(self, table: Any) -> None:
        """Check the query against an analysis table without estimating anything.

        Raises
        ------
        QueryError
            For an unknown column, a control or treated level absent from the table, too few levels, NaN
            or non-numeric columns (the same checks `mediate` makes first).
        """
        from .design import build_design

        kw = self.mediate_kwargs()
        args = {k: kw[k] for k in ("treatment", "mediators", "outcome", "control", "treated", "covariates", "cluster",
                                   "treatment_type", "level", "outcome_model", "paired_by", "estimand")}
        inference = kw["inference"] or ("bootstrap" if kw["bootstrap"] else "cr2")
        build_design(table, bootstrap=(kw["bootstrap"] or "cluster") if inference == "bootstrap" else "cluster",
                     **args)

    def table_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `causalgeom.metrics.table.study_frame` (``Study.to_frame``) for this query."""
        return dict(level=self.level, attack=self.attack, eps=self.eps, center=self.center)

    def run(self, table: Any) -> Any:
        """Answer the query on ``table`` (a DataFrame) or a `causalgeom.Study`; returns a `MediationResult`."""
        from .mediation import mediate

        if not _is_frame(table):
            if hasattr(table, "to_frame"):
                table = table.to_frame(progress=False, **self.table_kwargs())
        return mediate(table, **self.mediate_kwargs())

    # -- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields as written to TOML (``None`` left out; ``cluster`` / ``seed`` None → false)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                if f.name in _FALSE_IS_NONE:
                    out[f.name] = False
                continue
            out[f.name] = list(v) if isinstance(v, list) else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Query":
        """Build a query from a mapping of the fields; unknown keys raise `QueryError` listing the allowed ones."""
        if not isinstance(data, Mapping):
            raise QueryError(f"a query must be a table of keys, got {type(data).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise QueryError(f"unknown query key(s) {unknown}; allowed: {allowed}")
        for key in ("treatment", "mediators", "outcomes"):
            if key not in data:
                raise QueryError(f"query is missing the required key {key!r} (required: treatment, mediators, "
                                 "outcomes)")
        data = dict(data)
        for key in _FALSE_IS_NONE:
            if data.get(key) is False:
                data[key] = None
        return cls(**data)

    def dumps(self) -> str:
        """The query as TOML text (one ``[query]`` table)."""
        return _dump_tables([self.to_dict()])

    @classmethod
    def loads(cls, text: str) -> "Query":
        """Parse TOML text holding one query (``[query]``, top-level keys, or a single ``[[query]]``)."""
        queries = _parse(text, "<string>")
        if len(queries) != 1:
            raise QueryError(f"expected one query, the text holds {len(queries)}; use read_queries()")
        return queries[0]

    def to_toml(self, path: str | os.PathLike) -> Path:
        """Write the query file ``path`` (overwrites); returns the path."""
        path = Path(path)
        path.write_text(self.dumps(), encoding="utf-8")
        return path

    @classmethod
    def from_toml(cls, source: str | os.PathLike) -> "Query":
        """Read a query file holding one query. ``source`` is a path (TOML text is accepted too)."""
        queries = read_queries(source)
        if len(queries) != 1:
            raise QueryError(f"{source}: expected one query, the file holds {len(queries)}; use "
                             "causalgeom.causal.read_queries()")
        return queries[0]


def _is_frame(obj: Any) -> bool:
    import pandas as pd

    return isinstance(obj, pd.DataFrame)


def read_queries(source: str | os.PathLike) -> list[Query]:
    """Read every query of a TOML query file (``[query]``, ``[[query]]`` tables, or top-level keys).

    Parameters
    ----------
    source : path-like or str
        A file path; a string that is not an existing file but contains ``=`` is parsed as TOML text.

    Returns
    -------
    list of Query
    """
    text: str
    where = str(source)
    if isinstance(source, str) and not os.path.exists(source) and "=" in source:
        text, where = source, "<string>"
    else:
        path = Path(source)
        if not path.is_file():
            raise QueryError(f"query file {path} {'is a folder' if path.is_dir() else 'does not exist'}")
        text = read_toml_text(path, error=QueryError, what="query file")
    return _parse(text, where)


def write_queries(queries: Iterable[Query], path: str | os.PathLike) -> Path:
    """Write several queries to one file as ``[[query]]`` tables; returns the path."""
    queries = list(queries)
    path = Path(path)
    path.write_text(_dump_tables([q.to_dict() for q in queries], array=len(queries) != 1), encoding="utf-8")
    return path


def _parse(text: str, where: str) -> list[Query]:
    data = parse_toml(text, where=where, error=QueryError, what="query file")
    if "query" in data:
        extra = sorted(set(data) - {"query"})
        if extra:
            raise QueryError(f"{where}: unexpected top-level key(s) {extra} next to the query table(s)")
        block = data["query"]
        tables = block if isinstance(block, list) else [block]
    else:
        tables = [data]
    out = []
    for i, t in enumerate(tables):
        try:
            out.append(Query.from_dict(t))
        except QueryError as exc:
            label = f" (query {i + 1})" if len(tables) > 1 else ""
            raise QueryError(f"{where}{label}: {exc}") from None
    return out


# -- a small TOML writer (strings, numbers, booleans, flat lists) --------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    # JSON escapes (\" \\ \n \t \uXXXX for control characters) are valid TOML basic-string escapes; DEL is not
    # escaped by JSON but is not allowed raw in TOML.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise QueryError(f"cannot write {type(v).__name__} {v!r} to a TOML query file")


def _dump_tables(tables: list[dict[str, Any]], array: bool = False) -> str:
    header = "[[query]]" if array else "[query]"
    chunks = []
    for t in tables:
        lines = [header] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in t.items()]
        chunks.append("\n".join(lines) + "\n")
    return "\n".join(chunks)
