"""The scripted report: one self-contained HTML file (figures embedded), a Markdown twin, PNG figures and CSV tables.

``cg.report(study, out="report.html", query=...)`` runs the whole analysis of a study from stored dumps only
and writes it. Its first screen answers: per comparison one verdict sentence in plain words, one headline figure
(the change in ECE, signed ECE, NLL and robust accuracy with intervals, split into logit scale and shape by the
function-level `causal.decompose`), how sure (interval and the design's floor in one line) and whether regression
mediation agrees with the decomposition. Then why (the decomposition), provenance, the paper table, reliability
diagrams with bin counts and Wilson intervals, distributions, cone test, interventions, mediation, refuters and
sensitivity, findings, and one Methods appendix where definitions, estimands and methods are said once. It computes
nothing itself: every number comes from `summary`, `calibration`, `geometry`, `table`, `causal` and
`interventions`. Numbers with an interval are rounded to what the interval supports (`round_to_interval`); attack
budgets are written as k/255 (`eps_label`).

Modules: `context` (what sections share, computed once), `sections` (the sections and the page), `figures`
(figures readable at 1280 px), `text` (sentences and rounding).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

from .._util.dask import client as use_client, is_dask_client
from ..causal import choose_engine
from ..dump.study import Study, as_study
from ..errors import ConfigError, QueryError
from .context import DECOMPOSE_OUTCOMES, Context, default_queries
from .sections import SECTION_IDS, Section, write_page
from .text import (eps_label, findings_text, format_ci, how_sure_line, mediation_vs_decomposition,
                   round_to_interval, summary_text, verdict_text)

__all__ = ["report", "Section", "SECTION_IDS", "default_queries", "eps_label", "round_to_interval", "format_ci",
           "DECOMPOSE_OUTCOMES", "summary_text", "verdict_text", "how_sure_line", "findings_text",
           "mediation_vs_decomposition"]


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
           client: Any = None) -> Path:
    """Analyse ``study`` and write ``out`` (HTML), ``out``'s ``.md`` twin, ``figures/*.png`` and ``tables/*.csv``.

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
    client : dask.distributed.Client, optional
        Where the passes over the chunks run: on this client's cluster when given (it is used, not closed);
        otherwise on the client of an open ``cg.distributed.client`` block if any, else in this process. The report
        never starts a cluster: create one with `causalgeom.scale.client` (``causalgeom report --scheduler`` does,
        choosing by the study's size when no scheduler is named) and pass it.

    Returns
    -------
    pathlib.Path
        The HTML file.

    Raises
    ------
    ConfigError
        ``client`` is not a Dask client, or ``study`` is not a study.
    QueryError
        The study has no complete run, or a query names an unknown column or level.
    """
    if client is not None and not is_dask_client(client):
        raise ConfigError(f"client: expected a dask.distributed.Client or None, got {type(client).__name__}")
    study = as_study(study)
    if len(study) == 0:
        raise QueryError(f"study {study.path} has no complete runs to report on")
    # the one size rule (causalgeom.scale's, handed in through the facade); ``size`` is set only when the study's
    # size decided (not an active client)
    if client is None and (choice := choose_engine(study)).size is not None and choice.name == "dask":
        logging.getLogger(__name__).warning(
            "report: %s, but no client was given: running in this process (pass client=, or use "
            "`causalgeom report`, which opens one by the same rule)", choice.reason)
    with (use_client(client) if client is not None else contextlib.nullcontext()):
        return _report(study, out, query, interventions, refute, progress, robust)


def _report(study: Study, out: str | os.PathLike, query: Any, interventions: bool, refute: bool, progress: bool,
            robust: dict[str, Any] | None) -> Path:
    from .. import causal
    from . import sections as S

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
    ctx = Context(study, queries)
    ctx.robust = dict(robust or {})
    for q in queries:  # a query naming an unknown column or level fails here, before any work
        q.check(ctx.frame(q))
    out.parent.mkdir(parents=True, exist_ok=True)
    # built in the order their inputs are ready (the summary needs the mediation's agreement), shown in SECTION_IDS order
    builders: list[Callable[[], Section]] = [
        lambda: S.decomposition(ctx), lambda: S.provenance(ctx), lambda: S.paper_table(ctx),
        lambda: S.reliability(ctx), lambda: S.distributions(ctx), lambda: S.cone_test(ctx),
        (lambda: S.interventions(ctx)) if interventions else (lambda: S.skipped_interventions(ctx)),
        lambda: S.mediation(ctx), lambda: S.refuters_sensitivity(ctx, refute), lambda: S.summary(ctx),
        lambda: S.findings(ctx), lambda: S.methods(ctx)]
    built = {}
    for build in builders:
        section = build()
        built[section.id] = section
        bar.step(section.id)
    bar.close()
    write_page(out, f"causalgeom report — {study.path.name}", [built[i] for i in SECTION_IDS])
    return out
