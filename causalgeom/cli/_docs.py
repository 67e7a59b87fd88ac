"""Render the CLI reference (``docs/cli.md``) from the argparse parsers, so the docs cannot drift."""

from __future__ import annotations

import argparse
import os

__all__ = ["render_cli_reference"]


def render_cli_reference() -> str:
    """Markdown with the ``--help`` text of ``causalgeom`` and of every sub-command."""
    from . import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help to $COLUMNS: fix it so the output is reproducible
    try:
        return _render(build_parser())
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _render(parser: argparse.ArgumentParser) -> str:
    parts = ["# CLI reference", "",
             "Generated from the parsers by `python -m causalgeom.cli._docs > docs/cli.md` "
             "(a test checks that this file is current).", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"## causalgeom {name}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    print(render_cli_reference(), end="")
