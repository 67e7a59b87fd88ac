"""The report as a reader sees it: headless Chromium at 1280 × 900 measures, from the page itself, that the first
screen answers (verdicts and the headline figure within the first 900 px), that no figure text is below 10 px as
shown, and that no table is wider than the viewport."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

import causalgeom as cg

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Runs in the page after load: first-screen positions, then (all <details> opened) figure text sizes and widths.
_PROBE = """<script>window.addEventListener('load',function(){
var r={vw:window.innerWidth,verdicts:[],headline:null,figures:[],tables:[]};
document.querySelectorAll('p.verdict').forEach(function(p){r.verdicts.push(p.getBoundingClientRect().bottom+scrollY)});
var h=document.querySelector("figure[data-figure='headline'] img");
if(h){r.headline=h.getBoundingClientRect().bottom+scrollY;}
document.querySelectorAll('details').forEach(function(d){d.open=true});
document.querySelectorAll('figure[data-figure]').forEach(function(f){var i=f.querySelector('img');
 r.figures.push({name:f.dataset.figure,px:parseFloat(f.dataset.minFontPx)*i.clientWidth/i.naturalWidth,
 natural:i.naturalWidth,shown:i.clientWidth})});
document.querySelectorAll('table').forEach(function(t){var w=t.parentElement.getBoundingClientRect();
 r.tables.push({right:w.right,width:w.width})});
r.scrollWidth=document.documentElement.scrollWidth;
document.body.setAttribute('data-screen',JSON.stringify(r));});</script>"""


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    return exe


def _run(exe, tmp_path, *args):
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--hide-scrollbars", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screen")
    study = cg.testing.make_study(tmp / "study", n_runs=6, n=300, paired=True)
    out = cg.report(study, out=tmp / "rep" / "report.html", progress=False, refute=False)
    return out


def test_first_screen_answers_and_everything_is_readable(page, tmp_path):
    exe = _chromium()
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _run(exe, tmp_path, "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'data-screen="([^"]*)"', dom.stdout)
    assert m, "the probe did not run"
    r = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert r["vw"] == 1280
    assert r["verdicts"] and max(r["verdicts"]) <= 900  # one verdict per comparison, all on the first screen
    assert r["headline"] is not None and r["headline"] <= 900  # the headline figure too, whole
    assert len(r["figures"]) >= 5
    for f in r["figures"]:
        assert f["shown"] > 0, f
        assert f["px"] >= 10.0, f  # smallest figure text as shown: size at save × shown / natural width
    assert r["tables"]
    for t in r["tables"]:
        assert t["right"] <= r["vw"] and t["width"] <= r["vw"], t
    assert r["scrollWidth"] <= r["vw"]  # nothing makes the page scroll sideways
    shot = tmp_path / "first_screen.png"
    assert _run(exe, tmp_path, f"--screenshot={shot}", page.as_uri()).returncode == 0
    assert shot.stat().st_size > 10_000
