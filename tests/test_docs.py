"""The docs stay true: the CLI reference matches the parsers; the README has its two commands; links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from causalgeom.cli._docs import render_cli_reference

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == render_cli_reference(), \
        "docs/cli.md is stale: run `python -m causalgeom.cli._docs > docs/cli.md`"


def test_readme_has_exactly_two_setup_and_go_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


def test_relative_links_in_docs_resolve():
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"`[^`]*`", "", md.read_text())  # code spans are not links
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (md.parent / target).exists(), f"{md.name}: broken link {target}"
