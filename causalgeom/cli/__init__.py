"""The ``causalgeom`` command line: one sub-module per group of commands, each with ``register(subparsers)``.

Commands parse their arguments and call the library; they compute nothing themselves.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from ..errors import CausalGeomError
from . import _scale

__all__ = ["main", "build_parser", "cli_words"]

#: cli sub-modules, in the order their commands appear in ``--help``.
_MODULES = ("demo", "train", "extract", "io", "metrics", "mediate", "decompose", "plan", "intervene", "report")

EPILOG = """examples:
  causalgeom demo --out demo_out                      train, extract, analyse and report on digits
  causalgeom train pipelines/digits_default.toml      train a regularizer grid
  causalgeom info demo_out/study/ce-s0.zarr           dims, sizes, attrs of a dump
  causalgeom import dump.npz study/run1.zarr          import a third-party dump
  causalgeom mediate demo_out/study --query q.toml    mediation analysis from a query file
  causalgeom report demo_out/study --out report.html  scripted report
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``causalgeom CMD: error: ...``) and exit with status 2.

    Sub-command parsers are of the same class (``add_subparsers`` uses the parent's class).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="causalgeom",
        description="Causal analysis of how soft-label regularizers change calibration and robustness "
                    "through representation geometry.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"causalgeom {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (accepted anywhere on the command line)")
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


#: Environment variable that, set to a non-empty value other than ``0``, acts like ``--debug``.
DEBUG_ENV = "CAUSALGEOM_DEBUG"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _explain(exc: BaseException) -> tuple[str, int]:
    """The class of mistake and the exit status for an exception that reached the command line boundary.

    Bad input (exit status 2): causalgeom's own errors, and what libraries raise for a file or value the user gave
    (missing, unreadable or mistyped files, tables pandas cannot parse, names that are not there, values out of
    range). Anything else is a bug in causalgeom or a library (exit status 1).
    """
    import pandas as pd

    if isinstance(exc, CausalGeomError):
        return "error", 2
    if isinstance(exc, (pd.errors.ParserError, pd.errors.EmptyDataError)):
        return "error (unreadable table)", 2
    if isinstance(exc, UnicodeError):
        return "error (file is not UTF-8 text)", 2
    if isinstance(exc, FileNotFoundError):
        return "error (no such file or folder)", 2
    if isinstance(exc, PermissionError):
        return "error (permission denied)", 2
    if isinstance(exc, (IsADirectoryError, NotADirectoryError, FileExistsError)):
        return "error (a file or folder is in the way)", 2
    if isinstance(exc, OSError):
        return "error (cannot read or write a file)", 2
    if isinstance(exc, (KeyError, IndexError)):
        return "error (unknown name or index)", 2
    if isinstance(exc, (ValueError, TypeError, OverflowError)):
        return "error (invalid value)", 2
    if isinstance(exc, MemoryError):
        return "error (out of memory; use a smaller input or more memory)", 1
    return "internal error", 1


#: Python keyword advice -> command-line flags, for keywords whose flag is not ``--NAME`` of the same name.
_KEYWORD_FLAGS = {"mode='w'": "--overwrite", 'mode="w"': "--overwrite"}


def cli_words(text: str, command: argparse.ArgumentParser | None) -> str:
    """``text`` with the library's keyword advice spelled as the command's flags.

    ``labels_key=`` / ``the labels_key= argument`` -> ``--labels-key``, ``method='regression'`` -> ``--method
    regression``, ``mode='w'`` -> ``--overwrite``; only for keywords that are options of ``command`` (others stay).
    For a command that also reads a query file (``--query``), a bare keyword names the query key too:
    ``n_boot=`` -> ``--n-boot / query key n_boot``.
    """
    import re

    if command is None:
        return text
    flags = {}
    for action in command._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            flags[action.dest] = longs[0]
    for keyword, flag in _KEYWORD_FLAGS.items():
        if flag in flags.values():
            text = re.sub(rf"(pass |use |or |with |\(|\b){re.escape(keyword)}(?![\w'\"])", lambda m: m.group(1) + flag,
                          text)

    # a command that reads a query file (--query) takes most settings from it too: a bare keyword names both
    queries = "--query" in flags.values()

    def value(m: "re.Match[str]") -> str:
        flag = flags.get(m.group(1))
        if flag is None:
            return m.group(0)
        if m.group(3) is not None:
            return f"{flag} {m.group(3)}"
        return f"{flag} / query key {m.group(1)}" if queries and m.group(1) not in ("query", "out") else flag

    text = re.sub(r"(?<![\w.-])([a-z_][a-z0-9_]*)=(['\"]([^'\"]*)['\"])?(?: argument)?(?![\w(])", value, text)
    text = re.sub(r" \(e\.g\. table\.\w+\([^()]*\)\)", "", text)  # pandas advice has no command-line form
    text = re.sub(r"(--[a-z0-9-]+) \(\1\)", r"\1", text)  # "--overwrite (--overwrite)"
    text = re.sub(r"(--[a-z0-9-]+) / \1\b", r"\1", text)  # "--overwrite / --overwrite"
    return re.sub(r"with the (--[a-z0-9-]+)", r"with \1", text)


def _message(exc: BaseException, command: argparse.ArgumentParser | None = None) -> str:
    if isinstance(exc, CausalGeomError):
        return cli_words(_one_line(exc), command)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return _one_line(f"{exc.strerror}{where}")
    if isinstance(exc, KeyError) and exc.args:
        return _one_line(exc.args[0] if isinstance(exc.args[0], str) else f"{exc.args[0]!r} not found")
    return _one_line(f"{type(exc).__name__}: {exc}")


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``causalgeom`` command. Returns the exit status.

    Every error becomes one line on stderr, ``causalgeom COMMAND: error (CLASS OF MISTAKE): MESSAGE``, with exit
    status 2 for bad input (usage errors included) and 1 for an internal error; ``--debug`` (anywhere on the
    command line) or the environment variable ``CAUSALGEOM_DEBUG=1`` prints the traceback instead.
    """
    console = argv is None and not sys.warnoptions
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if console:  # the console command: a warning is one line naming the command, in its flags' words
        import warnings

        words = _command_parser(parser, args.command)
        warnings.showwarning = lambda message, category, *_, **__: print(
            f"causalgeom {args.command}: warning: {cli_words(_one_line(message), words)}", file=sys.stderr)
    try:
        return int(_scale.call(args) or 0)
    except KeyboardInterrupt:
        print(f"causalgeom {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary: explain everything in one line
        if debug:
            traceback.print_exc()
        what, status = _explain(exc)
        hint = "" if debug or status == 2 else " (re-run with --debug for the traceback, and please report it)"
        print(f"causalgeom {args.command}: {what}: {_message(exc, _command_parser(parser, args.command))}{hint}",
              file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
