"""The scripted report: sections, figures, Markdown twin, reproducibility, and rendering in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import causalgeom as cg
from causalgeom.report import SECTION_IDS

from .conftest import make_run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("study")
    s = cg.open_study(path, create=True)
    for reg, scale, strength in (("ce", 1.0, 0.0), ("label_smoothing", 0.5, 0.1)):
        for seed in range(3):
            s.add(make_run(n=150, d=8, k=4, seed=10 * seed + (reg == "ce"), run_id=f"{reg}-s{seed}",
                           regularizer=reg, strength=strength, scale=scale,
                           regularizer_params={"label_smoothing": strength}))
    return s


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    q = cg.causal.Query(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["rms", "cos_true"],
                        outcomes=["overconfidence"], n_boot=200, seed=3)
    qfile = out.parent / "q.toml"
    q.to_toml(qfile)
    cg.report(study, out=out, query=qfile, progress=False)
    return out, qfile


def test_every_section_and_figure_present(written):
    out, _ = written
    page = out.read_text()
    for sid in SECTION_IDS:
        assert f"<section id='{sid}'>" in page
    figures = re.findall(r"data-figure='([^']+)'", page)
    for name in ("reliability", "distributions", "cone_test", "dose_rescale", "dose_rotate"):
        assert name in figures
    assert any(f.startswith("forest_") for f in figures)
    assert "src='http" not in page and "src=\"http" not in page  # self-contained
    for name in figures:
        assert (out.parent / "figures" / f"{name}.png").stat().st_size > 1000
    md = out.with_suffix(".md").read_text()
    assert "## Mediation analysis" in md and "![" in md
    # the estimator, resampling unit and interval are stated
    assert "cluster" in page and "95%" in page
    assert "signed ECE" in page


def test_query_file_reproduces_the_same_mediation_table(study, written):
    _, qfile = written
    q = cg.causal.read_queries(qfile)[0]
    frame = study.to_frame(progress=False, **q.table_kwargs())
    a = cg.causal.mediate(frame, **q.mediate_kwargs()).summary()
    b = cg.causal.mediate(frame, **q.mediate_kwargs()).summary()
    assert a.equals(b)


def test_unknown_column_or_regularizer_in_query(study, tmp_path):
    bad = tmp_path / "bad.toml"
    cg.causal.Query(treatment="regularizer", control="ce", treated="dropout_magic", mediators=["rms"],
                    outcomes=["overconfidence"]).to_toml(bad)
    with pytest.raises(cg.QueryError, match="dropout_magic"):
        cg.report(study, out=tmp_path / "r.html", query=bad, progress=False, interventions=False)
    cg.causal.Query(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["no_such_col"],
                    outcomes=["overconfidence"]).to_toml(bad)
    with pytest.raises(cg.QueryError, match="no_such_col"):
        cg.report(study, out=tmp_path / "r.html", query=bad, progress=False, interventions=False)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.browser
def test_renders_in_headless_chromium(written, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    out, _ = written
    n_figures = out.read_text().count("data-figure=")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                          "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in html
    loaded = re.search(r'data-images-loaded="(\d+)"', html)
    assert loaded, "the page's load handler did not run"
    assert int(loaded.group(1)) == n_figures  # every embedded figure decoded in the browser
