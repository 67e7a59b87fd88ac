"""Malformed TOML configuration files (issues 22 and 25) for the malformed-input corpus (run by test_malformed).

The three kinds of TOML file causalgeom reads -- zoo files (``causalgeom extract --zoo``), grid files
(``causalgeom train``) and query files (``causalgeom mediate --query``) -- go through one reader,
:func:`causalgeom._util.io.read_toml`. Each gets the same hostile inputs: arrays and inline tables nested deeply
enough to exhaust tomllib's recursion, nesting just past the depth limit (parsed, then refused), dotted keys as
deep, a file over the size cap, bytes that are not UTF-8 and a FIFO. Every case goes through the command line's
entry point and expects the kind's causalgeom error naming the file; ``out`` stays empty.
"""

from __future__ import annotations

import os
from pathlib import Path

from causalgeom._util.io import MAX_TOML_BYTES, MAX_TOML_DEPTH
from causalgeom.errors import ConfigError, QueryError

from .malformed_corpus import _QUERY, _TABLE, _cli, register

DEEP = 20_000  # far past Python's recursion limit: tomllib raises RecursionError
JUST_PAST = MAX_TOML_DEPTH + 2  # parses, then refused by the depth check

_ZOO = 'name = "z"\n[[models]]\nid = "a"\nmodel = "torchvision:resnet18"\nweights = "IMAGENET1K_V1"\n'
_GRID = 'dataset = "digits"\nmodel = "small_cnn"\nseeds = [0]\n[train]\nepochs = 1\n[[regularizers]]\nname = "ce"\n'


def nested_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_table(depth: int) -> str:
    return "{a = " * depth + "1" + "}" * depth


def dotted_key(depth: int) -> str:
    return ".".join(["k"] * depth) + " = 1\n"


def zoo_cli(i: Path, o: Path, path: Path) -> None:
    _cli(["extract", "--zoo", path, "--data", f"imagefolder:{i / 'images'}", "--out", o / "study", "--no-progress"])


def grid_cli(i: Path, o: Path, path: Path) -> None:
    _cli(["train", path, "--out", o / "runs", "--no-progress"])


def query_cli(i: Path, o: Path, path: Path) -> None:
    (i / "table.csv").write_text(_TABLE)
    _cli(["mediate", i / "table.csv", "--query", path, "--out", o / "mediation", "--no-progress"])


#: kind -> (file name, valid base text, a line that adds a value in the file's top-level table, CLI, error)
KINDS = {
    "zoo": ("zoo.toml", _ZOO, "description = {}\n", zoo_cli, ConfigError),
    "grid": ("grid.toml", _GRID, "seeds = {}\n", grid_cli, ConfigError),
    "query": ("q.toml", _QUERY, "mediators = {}\n", query_cli, QueryError),
}


def _text(base: str, line: str, value: str) -> str:
    key = line.split(" = ")[0]
    kept = [ln for ln in base.splitlines(keepends=True) if not ln.startswith(f"{key} =")]
    # the value goes into the first table of the file: for the query file that is [query], else the top level
    head = 1 if kept[0].startswith("[") else 0
    return "".join(kept[:head]) + line.format(value) + "".join(kept[head:])


def case_file(kind: str, content: str | bytes | None):
    """``run(inp, out)`` writing ``content`` as the kind's file (``None``: a FIFO) and handing it to the CLI."""
    name, _, _, cli, _ = KINDS[kind]

    def run(i: Path, o: Path) -> None:
        path = i / name
        if content is None:
            os.mkfifo(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        cli(i, o, path)
    return run


def contents(kind: str) -> dict[str, tuple[str | bytes | None, str]]:
    """Case label -> (file content, expected message after the file name)."""
    _, base, line, _, _ = KINDS[kind]
    too_deep = r"arrays or inline tables nested too deeply"
    return {
        "deeply nested arrays": (_text(base, line, nested_array(DEEP)), too_deep),
        "deeply nested inline tables": (_text(base, line, nested_table(DEEP)), too_deep),
        f"arrays nested {JUST_PAST} deep": (_text(base, line, nested_array(JUST_PAST)), too_deep),
        f"inline tables nested {JUST_PAST} deep": (_text(base, line, nested_table(JUST_PAST)), too_deep),
        f"dotted keys {JUST_PAST} deep": (base + dotted_key(JUST_PAST), too_deep),
        "file over the size cap": (base + "#" * (MAX_TOML_BYTES + 1) + "\n", r"\d+ bytes, over the 4\.00 MiB limit"),
        "bytes that are not UTF-8": (base.encode() + b"# \xff\xfe\n", r"not UTF-8 text"),
    } | ({"a FIFO": (None, r"not a regular file")} if kind == "zoo" else {})
    # grid and query files are checked with Path.is_file() before the reader (a FIFO gets "not found" there)


for _kind, (_name, _base, _line, _cli_fn, _error) in KINDS.items():
    for _label, (_content, _match) in contents(_kind).items():
        register(f"{_kind} file: {_label}", _error, rf"{_name}: {_match}")(case_file(_kind, _content))
