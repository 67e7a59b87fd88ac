"""The ``causalgeom`` command line: one sub-module per group of commands, each with ``register(subparsers)``.

Commands parse their arguments and call the library; they compute nothing themselves.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CausalGeomError
from . import _scale

__all__ = ["main", "build_parser"]

#: cli sub-modules, in the order their commands appear in ``--help``.
_MODULES = ("demo", "train", "extract", "io", "metrics", "mediate", "decompose", "intervene", "report")

EPILOG = """examples:
  causalgeom demo --out demo_out                      train, extract, analyse and report on digits
  causalgeom train pipelines/digits_default.toml      train a regularizer grid
  causalgeom info demo_out/study/ce-s0.zarr           dims, sizes, attrs of a dump
  causalgeom import dump.npz study/run1.zarr          import a third-party dump
  causalgeom mediate demo_out/study --query q.toml    mediation analysis from a query file
  causalgeom report demo_out/study --out report.html  scripted report
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causalgeom",
        description="Causal analysis of how soft-label regularizers change calibration and robustness "
                    "through representation geometry.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"causalgeom {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    _scale.add_options(sub)  # --scheduler on analysis commands, extract --distributed
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``causalgeom`` command. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(_scale.call(args) or 0)
    except CausalGeomError as exc:
        print(f"causalgeom {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"causalgeom {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
