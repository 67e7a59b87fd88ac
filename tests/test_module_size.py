"""Units a reader can hold: no module of the package exceeds about 600 lines without a reason at its top.

A longer module states why on its first line, a comment starting with ``# Over 600 lines on purpose:``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "causalgeom"
PIPELINE = PACKAGE / "pipeline"
LIMIT = 600
REASON = "# Over 600 lines on purpose:"


def oversized(root: Path) -> list[str]:
    """Modules under ``root`` over `LIMIT` lines whose first line gives no reason."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > LIMIT and not (lines and lines[0].startswith(REASON) and len(lines[0]) > len(REASON) + 10):
            bad.append(f"{path.relative_to(root.parent)}: {len(lines)} lines")
    return bad


def test_the_check_flags_a_long_module_without_a_reason(tmp_path):
    (tmp_path / "long.py").write_text("x = 1\n" * (LIMIT + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * LIMIT)
    (tmp_path / "why.py").write_text(f"{REASON} one concern, stated here.\n" + "x = 1\n" * LIMIT)
    (tmp_path / "empty_reason.py").write_text(f"{REASON}\n" + "x = 1\n" * LIMIT)
    assert oversized(tmp_path) == [f"{tmp_path.name}/empty_reason.py: {LIMIT + 1} lines",
                                   f"{tmp_path.name}/long.py: {LIMIT + 1} lines"]


def test_modules_are_short_or_say_why():
    bad = oversized(PACKAGE)
    assert not bad, f"split these along their concerns or state the reason on line 1 ({REASON} ...):\n" + \
        "\n".join(bad)


def test_train_and_extract_are_packages_split_by_concern():
    """The two largest pipeline units are packages whose modules each hold one concern."""
    assert {p.stem for p in (PIPELINE / "train").glob("*.py")} == {"__init__", "config", "loop", "runs", "grid"}
    assert {p.stem for p in (PIPELINE / "extract").glob("*.py")} == {
        "__init__", "options", "sources", "writer", "loop", "runs"}
    assert not (PIPELINE / "train.py").exists() and not (PIPELINE / "extract.py").exists()
