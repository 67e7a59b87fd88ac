"""The scripted report: sections, figures, Markdown twin, reproducibility, and rendering in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import causalgeom as cg
from causalgeom.reporting import SECTION_IDS



def crossed_run(run_id: str, reg: str, strength: float, scale: float, seed: int, *, n: int = 150, d: int = 8,
                k: int = 4) -> "xr.Dataset":
    """A run on the shared test images (same labels and image difficulty in every run; own head and noise)."""
    img = np.random.default_rng(0)
    labels = img.integers(0, k, n)
    base = img.normal(size=(k, d))
    latent = base[labels] + 0.8 * img.normal(size=(n, d))
    rng = np.random.default_rng(seed)
    W = (base + 0.3 * rng.normal(size=(k, d))).astype(np.float32)
    b = (0.1 * rng.normal(size=k)).astype(np.float32)
    f = (scale * (latent + 0.3 * rng.normal(size=(n, d)))).astype(np.float32)
    eps = [2 / 255, 8 / 255]
    adv = np.stack([f - 30 * e * W[labels] for e in eps])[None].astype(np.float32)  # (attack, eps, sample, feature)
    z = adv @ W.T + b
    zy = np.take_along_axis(z, labels[None, None, :, None], axis=-1)[..., 0]
    margin = (zy - np.where(np.eye(k, dtype=bool)[labels][None, None], -np.inf, z).max(-1)).astype(np.float32)
    ds = cg.from_arrays(f, f @ W.T + b, labels, head_weight=W, head_bias=b, adv_correct=margin > 0, adv_margin=margin,
                        attacks=["pgd-linf"], eps=eps,
                        attrs={"run_id": run_id, "regularizer": reg, "strength": strength, "seed": seed,
                               "regularizer_params": {"label_smoothing": strength}})
    ds["adv_features"] = (("attack", "eps", "sample", "feature"), adv)
    return ds


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("study")
    s = cg.open_study(path, create=True)
    for reg, scale, strength in (("ce", 2.0, 0.0), ("label_smoothing", 0.7, 0.1)):
        for seed in range(3):
            s.add(crossed_run(f"{reg}-s{seed}", reg, strength, scale, 10 * seed + (reg == "ce")))
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


@pytest.mark.slow
def test_every_section_and_figure_present(written):
    out, _ = written
    page = out.read_text()
    for sid in SECTION_IDS:
        assert f"<section id='{sid}'>" in page
    figures = re.findall(r"data-figure='([^']+)'", page)
    for name in ("headline", "reliability", "distributions", "cone_test", "dose_rescale", "dose_rotate"):
        assert name in figures
    assert list((out.parent / "figures").glob("forest_*.png"))  # the forest plot: its numbers are a table on the page
    assert "src='http" not in page and "src=\"http" not in page  # self-contained
    for name in figures:
        assert (out.parent / "figures" / f"{name}.png").stat().st_size > 1000
    # definitions, estimands and methods said once, in the Methods appendix the rest links to
    assert page.count("Function-level decomposition: for every control × treated pair") == 1
    assert page.count("Estimand: average effect over training runs") == 1 and "href='#methods'" in page
    md = out.with_suffix(".md").read_text()
    assert "## Mediation analysis" in md and "![" in md
    # the estimator, resampling unit and interval are stated
    assert "cluster" in page and "95%" in page
    assert "signed ECE" in page


@pytest.mark.slow
def test_query_file_reproduces_the_same_mediation_table(study, written):
    _, qfile = written
    q = cg.causal.read_queries(qfile)[0]
    frame = study.to_frame(progress=False, **q.table_kwargs())
    a = cg.causal.mediate(frame, **q.mediate_kwargs()).summary()
    b = cg.causal.mediate(frame, **q.mediate_kwargs()).summary()
    assert a.equals(b)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_leads_with_the_decomposition_and_names_the_estimand_first(written):
    out, _ = written
    md = out.with_suffix(".md").read_text()
    sections = re.findall(r"^## (.+)$", md, re.M)
    assert sections[0].startswith("Summary") and sections[1].startswith("Why: the function-level split")
    assert sections[2].startswith("Study and provenance") and sections[-1].startswith("Methods")
    first_para = md.split("## Summary")[1].split("\n\n")[1]
    assert first_para.startswith("Estimand: every number below is an effect over training runs")
    summary = md.split("## Summary")[1].split("## Why")[0]
    assert "label_smoothing vs ce" in summary and "Mechanism:" in summary and "How sure:" in summary
    assert "the smallest p-value 3 + 3 runs can give" in summary  # 2 / C(6, 3) = 0.1: never a smaller p
    assert "4 seeds per arm (1 more each) would let it" in summary  # the floor reconciled with the interval
    assert "ε = 8/255" in summary  # budgets as k/255
    assert "label_smoothing made the model" in summary and "means over runs" in summary  # the verdict
    assert re.search(r"Mediation and decomposition (agree|disagree).*\(why\)", summary)  # the flag and its link
    assert "<h3 id='agreement'>" in out.read_text()
    figures = re.findall(r"data-figure='([^']+)'", out.read_text())
    assert figures[0] == "headline"
    why = md.split("## Why")[1].split("\n## ")[0]
    assert "| outcome | total | scale | shape |" in why and "robust_accuracy (pgd-linf, ε=8/255)" in why


@pytest.mark.slow
def test_mediation_tables_state_design_estimand_and_overlap(written):
    out, _ = written
    md = out.with_suffix(".md").read_text()
    med = md.split("## Mediation analysis")[1].split("## Refuters")[0]
    methods = md.split("## Methods")[1]
    assert "estimand:" in methods and "design:" in methods and "inference:" in methods  # said once, in Methods
    assert "Caveats: regression mediation assumes no unmeasured confounding" in methods
    assert "overlap of each mediator" in med and "rms 0." in med
    assert "| effect | overconfidence |" in med and "| indirect[rms] |" in med and "| prop_mediated |" in med
    assert "Regression mediation vs the head-based decomposition on the same estimand" in med
    assert "evidence of confounding" not in out.read_text() and "points at confounding" not in out.read_text()
    assert (out.parent / "tables" / "mediation_vs_decomposition.csv").exists()


def test_eps_labels_and_rounding_to_the_interval():
    from causalgeom.reporting import eps_label, format_ci, round_to_interval

    assert eps_label(8 / 255) == "8/255" and eps_label(np.float32(2 / 255)) == "2/255" and eps_label(0.3) == "0.3"
    # half-width 0.034: first significant digit at 1e-2, plus one → 3 decimals
    assert round_to_interval(-0.08123, -0.115, -0.047) == ("-0.081", "-0.115", "-0.047")
    # half-width 2.5: 1 decimal
    assert round_to_interval(12.3456, 9.8, 14.8) == ("+12.3", "+9.8", "+14.8")
    assert format_ci(0.5, 0.5, 0.5) == "+0.5"  # degenerate interval: 3 significant digits, no CI
    assert format_ci(-0.0651, -0.0723, -0.0578) == "-0.0651 (95% CI -0.0723 to -0.0578)"
    from causalgeom.reporting.text import _mean_pm

    paper = pd.DataFrame({"regularizer": ["ce"], "nll": [0.18781], "nll_low": [0.1388], "nll_high": [0.2368]})
    assert _mean_pm(paper)["nll"].tolist() == ["0.188 ± 0.049"]
    assert list(_mean_pm(paper).columns) == ["regularizer", "nll"]


@pytest.mark.slow
def test_unaligned_runs_get_the_basis_free_split(tmp_path):
    s = cg.open_study(tmp_path / "study", create=True)
    for reg, scale in (("ce", 2.0), ("label_smoothing", 0.7)):
        for seed in range(2):
            ds = crossed_run(f"{reg}-s{seed}", reg, 0.0, scale, 10 * seed + (reg == "ce"))
            if reg == "label_smoothing":  # the same kind of network in other feature coordinates
                Q = np.linalg.qr(np.random.default_rng(seed).normal(size=(8, 8)))[0].astype(np.float32)
                ds["features"] = (("sample", "feature"), ds["features"].values @ Q.T)
                ds["head_weight"] = (("class", "feature"), ds["head_weight"].values @ Q.T)
                ds["adv_features"] = (("attack", "eps", "sample", "feature"), ds["adv_features"].values @ Q.T)
            s.add(ds)
    q = cg.causal.Query(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["rms"],
                        outcomes=["overconfidence"], n_boot=50, seed=0)
    out = cg.report(s, out=tmp_path / "r" / "report.html", query=q, progress=False, interventions=False, refute=False)
    why = out.with_suffix(".md").read_text().split("## Why")[1].split("\n## ")[0]
    assert "basis-free split" in why and "head_norm" in why and "same initialisation" not in why


def test_summary_names_the_model_conditional_estimand_first(tmp_path):
    from causalgeom.reporting import summary_text

    s = cg.open_study(tmp_path / "study", create=True)
    s.add(crossed_run("ce-s0", "ce", 0.0, 2.0, 1))
    s.add(crossed_run("label_smoothing-s0", "label_smoothing", 0.1, 0.7, 1))
    res = cg.causal.decompose(s, control="ce", treated="label_smoothing", outcome=["signed_ece"], n_boot=50, rng=0)
    text = summary_text([("regularizer", "ce", "label_smoothing", res)], 2)
    assert text[0].startswith("Estimand: model-conditional: these models, inference over test images")
    assert "image bootstrap, conditional on these models" in text[1] and "p =" not in text[1]
    failed = summary_text([("regularizer", "ce", "mixup", cg.QueryError("no run has regularizer = 'mixup'"))], 2)
    assert failed[0].startswith("Estimand: none") and "mixup" in failed[0]


def _fake_decomposition(rows, eps=None):
    """A stand-in with the face `verdict_text` reads: summary() rows of totals, eps and attack."""
    import types

    table = pd.DataFrame([{"outcome": o, "component": "total", "estimate": e, "ci_low": lo, "ci_high": hi}
                          for o, (e, lo, hi) in rows.items()])
    return types.SimpleNamespace(summary=lambda: table, eps=eps, attack="pgd-linf")


def test_verdict_words_follow_signs_and_intervals():
    from causalgeom.reporting import verdict_text

    # ECE up, signed ECE from + to −: underconfident, with both levels written
    res = _fake_decomposition({"ece": (0.121, 0.10, 0.14), "signed_ece": (-0.173, -0.19, -0.15)})
    text = verdict_text("label_smoothing", "ce", res, {"ece": (0.032, 0.153), "signed_ece": (0.022, -0.151)})
    assert text.startswith("label_smoothing made the model underconfident: ECE 0.03")
    assert "→ 0.15" in text and "signed ECE +0.02" in text and "→ −0.15" in text
    # lower signed ECE that stays positive: less overconfident, not underconfident
    text = verdict_text("mixup", "ce", res, {"ece": (0.2, 0.08), "signed_ece": (0.2, 0.03)})
    assert "reduced the model's overconfidence" in text and "underconfident" not in text
    # an interval that includes 0: no claim
    res0 = _fake_decomposition({"ece": (0.01, -0.02, 0.04), "signed_ece": (0.01, -0.02, 0.04),
                                "robust_accuracy": (-0.3, -0.4, -0.2)}, eps=8 / 255)
    text = verdict_text("x", "ce", res0, {"ece": (0.05, 0.06), "signed_ece": (0.01, 0.02),
                                          "robust_accuracy": (0.5, 0.2)})
    assert "did not detectably change" in text and "(change not detectable)" in text
    assert "robust accuracy at ε = 8/255 fell" in text
    # more overconfident
    res1 = _fake_decomposition({"signed_ece": (0.05, 0.03, 0.07)})
    assert "made the model more overconfident" in verdict_text("y", "ce", res1, {"signed_ece": (0.02, 0.07)})


@pytest.mark.slow
def test_paper_table_shows_the_temperature_scaled_ece_and_the_noise_floor(written):
    out, _ = written
    paper = out.with_suffix(".md").read_text().split("## The paper table")[1].split("\n## ")[0]
    metrics = re.findall(r"^\| (\S+) \|", paper, re.M)
    i = metrics.index("ece")
    assert metrics[i + 1:i + 3] == ["ece_ts", "ece_floor"]  # next to ECE
    full = pd.read_csv(out.parent / "tables" / "paper_table.csv")
    assert {"ece_ts", "ece_floor", "aurc"} <= set(full.columns)


def test_reliability_figure_shows_counts_intervals_and_few_bins(study):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.text import Text

    from causalgeom.metrics.calibration import reliability
    from causalgeom.reporting import figures

    rel = reliability(study["ce-s0"], n_bins=15).compute()
    fig = figures.reliability_panels({"ce": rel})
    ax = fig.axes[0]
    counts = sorted(int(t.get_text()) for t in ax.findobj(Text) if t.get_text().isdigit() and t.axes is ax
                    and t not in ax.get_xticklabels() + ax.get_yticklabels())
    assert counts == sorted(int(c) for c in rel["count"].values if c > 0)  # every non-empty bin's count is drawn
    few = int(rel["few"].sum())
    hatched = [p for p in ax.patches if p.get_hatch() == "//"]
    assert len(hatched) == few and few > 0  # 150 images in 15 bins: some bins have < 20
    # one error bar per non-empty bin, spanning its Wilson interval
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    segs = np.concatenate([np.asarray(b.get_segments()) for b in bars])
    keep = rel["count"].values > 0
    lo, hi = rel["acc_low"].values[keep], rel["acc_high"].values[keep]
    spans = sorted(zip(segs[:, 0, 1].round(9), segs[:, 1, 1].round(9)))
    assert spans == sorted(zip(lo.round(9), hi.round(9)))
    assert figures.save(fig)[1] >= figures.MIN_FONT_PX
