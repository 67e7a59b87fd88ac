"""``causalgeom report``: the scripted report of a study."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the HTML + Markdown report of a study",
                       description="Analyse a study (paper table, reliability, geometry, cone test, "
                                   "interventions, mediation, refuters, sensitivity) and write one "
                                   "self-contained HTML file, its Markdown twin and the figures as PNG.",
                       epilog="examples:\n  causalgeom report demo_out/study --out report.html\n"
                              "  causalgeom report my_study --query pipelines/queries/demo.toml --out r/report.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study folder")
    p.add_argument("--query", help="TOML query file (treatment, control, treated, mediators, outcomes, ...)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--no-interventions", action="store_true", help="skip the intervention curves")
    p.add_argument("--no-refute", action="store_true", help="skip the DoWhy refuters")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from .. import scale
    from ..reporting import report

    # cli._scale.call already chose where to run (--scheduler, $CAUSALGEOM_SCHEDULER or the study's size) and, for
    # Dask, opened the client through causalgeom.scale: hand it to the report (None: this process)
    path = report(args.study, out=args.out, query=args.query, interventions=not args.no_interventions,
                  refute=not args.no_refute, progress=not args.no_progress, client=scale.active_client())
    print(f"report: {path.resolve()}")
    return 0
