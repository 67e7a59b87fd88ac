"""The bring-your-own-dump worked example in docs/byod.md runs as written."""

from __future__ import annotations

import re

import pytest

from tests._helpers import REPO_ROOT

ROOT = REPO_ROOT


@pytest.mark.slow
def test_worked_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "byod.md").read_text()
    code = re.search(r"## Worked example.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/byod.md", "exec"), {})  # noqa: S102 - our own documentation
    import causalgeom as cg

    assert cg.open_study(tmp_path / "byod_study").run_ids == [f"{r}-s{s}" for r in ("ce", "label_smoothing")
                                                             for s in range(3)]
    page = (tmp_path / "byod_report" / "report.html").read_text()
    assert "<section id='mediation'>" in page and "label_smoothing" in page
