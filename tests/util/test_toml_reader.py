"""The one TOML reader (causalgeom._util.io.read_toml) behind zoo, grid and query files: the depth limit at its
boundary, the error type and file named per caller, and exit status 2 with one line from the command line."""

from __future__ import annotations

import pytest

from causalgeom._util.io import MAX_TOML_DEPTH, parse_toml, read_toml
from causalgeom.errors import ConfigError, QueryError

from ..malformed_toml import KINDS, _text, dotted_key, nested_array, nested_table


def _depth(obj) -> int:
    if isinstance(obj, dict):
        return 1 + max(map(_depth, obj.values()), default=0)
    if isinstance(obj, list):
        return 1 + max(map(_depth, obj), default=0)
    return 0


@pytest.mark.parametrize("nest", [nested_array, nested_table])
def test_depth_limit_is_exact(nest, tmp_path):
    # the top-level table is level 1, so a value nested d deep makes a file of depth d + 1
    ok, bad = tmp_path / "ok.toml", tmp_path / "bad.toml"
    ok.write_text("x = " + nest(MAX_TOML_DEPTH - 1) + "\n")
    bad.write_text("x = " + nest(MAX_TOML_DEPTH) + "\n")
    data = read_toml(ok, error=ConfigError, what="zoo file")
    assert _depth(data) == MAX_TOML_DEPTH  # counted here independently (recursively) of the reader's loop
    with pytest.raises(ConfigError, match=rf"zoo file {bad}: arrays or inline tables nested too deeply"):
        read_toml(bad, error=ConfigError, what="zoo file")


def test_dotted_keys_count_as_nesting():
    assert _depth(parse_toml(dotted_key(MAX_TOML_DEPTH), where="<s>", what="grid config")) == MAX_TOML_DEPTH
    with pytest.raises(QueryError, match=r"query file <s>: arrays or inline tables nested too deeply"):
        parse_toml(dotted_key(MAX_TOML_DEPTH + 1), where="<s>", error=QueryError, what="query file")


def test_error_type_and_file_name(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("a = [1,\n")
    with pytest.raises(QueryError, match=rf"query file {f}: not valid TOML"):
        read_toml(f, error=QueryError, what="query file")
    with pytest.raises(ConfigError, match=rf"cannot read zoo file {tmp_path / 'missing.toml'}: No such file"):
        read_toml(tmp_path / "missing.toml", error=ConfigError, what="zoo file")


def _argv(kind, i, o, path):
    if kind == "zoo":
        return ["extract", "--zoo", str(path), "--data", f"imagefolder:{i}", "--out", str(o / "s"), "--no-progress"]
    if kind == "grid":
        return ["train", str(path), "--out", str(o / "runs"), "--no-progress"]
    from ..malformed_corpus import _TABLE

    (i / "table.csv").write_text(_TABLE)
    return ["mediate", str(i / "table.csv"), "--query", str(path), "--out", str(o / "m"), "--no-progress"]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("nest", [nested_array, nested_table], ids=["arrays", "inline-tables"])
def test_cli_exit_2_one_line_naming_the_file(kind, nest, tmp_path, capsys):
    from causalgeom.cli import main

    name, base, line, _, _ = KINDS[kind]
    i, o = tmp_path / "in", tmp_path / "out"
    i.mkdir(), o.mkdir()
    path = i / name
    path.write_text(_text(base, line, nest(20_000)))
    assert main(_argv(kind, i, o, path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and "nested too deeply" in err and "RecursionError" not in err, err
    assert list(o.iterdir()) == []


@pytest.mark.parametrize("kind", list(KINDS))
def test_valid_files_of_each_kind_still_parse(kind, tmp_path):
    name, base, _, _, _ = KINDS[kind]
    (tmp_path / name).write_text(base)
    data = read_toml(tmp_path / name, what=kind)
    assert data == __import__("tomllib").loads(base)
