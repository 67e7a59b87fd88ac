"""Runs without a head (issue 25, item 3): every analysis the data allows, no silent NaN column.

A study imported from ``.npz`` files holding features, logits and labels but no head (docs/byod.md) gets
magnitudes, cosines to the *mean* class centers (stated as such), calibration, mediation on the mediators
that exist, and a complete report whose head-based sections say why they are absent.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import causalgeom as cg
from causalgeom.cli import main
from tests._numerics import F32_ATOL, F32_RTOL


def _headless_study(tmp_path, n=120, d=8, k=4):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(k, d)).astype("float32")
    rows, files = ["file,run_id,regularizer,strength,seed"], []
    for reg, scale, strength in (("ce", 1.0, 0.0), ("label_smoothing", 0.4, 0.1)):
        for seed in (0, 1, 2):
            y = rng.integers(0, k, n)
            f = (scale * (2 * W[y] + rng.normal(size=(n, d)))).astype("float32")
            path = tmp_path / f"{reg}_{seed}.npz"
            np.savez(path, features=f, logits=f @ W.T, labels=y)  # no head stored
            rows.append(f"{path.name},{reg}-s{seed},{reg},{strength},{seed}")
            files.append(str(path))
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    assert main(["import", *files, str(tmp_path / "st"), "--run-table", str(tmp_path / "runs.csv")]) == 0
    return cg.open_study(tmp_path / "st")


def _mean_center_cosines(f: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Closed form: cosine of each feature to the mean of its class's features (float64, from scratch)."""
    f = f.astype(np.float64)
    centers = np.stack([f[y == c].mean(0) for c in range(k)])
    c = centers[y]
    return (f * c).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(c, axis=1))


def test_table_falls_back_to_mean_centers_stated_once(tmp_path):
    st = _headless_study(tmp_path)
    assert not st.runs["has_head"].any()
    with pytest.warns(UserWarning, match=r"6 runs .* no head_weight, which center='minimal_loss' needs.*mean") as rec:
        t = st.to_frame(progress=False)
    assert sum("no head_weight" in str(w.message) for w in rec) == 1  # one line for the table, not one per run
    assert t.attrs["center"] == "mean" and np.isfinite(t["cos_true"]).all() and np.isfinite(t["cos_pred"]).all()
    ds = st["ce-s1"]
    ref = _mean_center_cosines(ds["features"].values, ds["label"].values, 4)
    np.testing.assert_allclose(t.loc[t.run_id == "ce-s1", "cos_true"].to_numpy(), ref, rtol=F32_RTOL, atol=F32_ATOL)


def test_mixed_study_uses_one_center_kind(tmp_path):
    """One run with a head, one without: both get the mean centers (a column mixing kinds would compare unlike)."""
    st = cg.open_study(tmp_path / "mix", create=True)
    for i, head in enumerate((True, False)):
        ds = cg.testing.make_run(n=60, d=5, k=3, seed=i, run_id=f"r{i}", regularizer="ce", strength=0.0)
        st.add(ds if head else ds.drop_vars(["head_weight", "head_bias"]))
    with pytest.warns(UserWarning, match="run 'r1' has no head_weight"):
        t = st.to_frame(progress=False)
    ds = st["r0"]
    ref = _mean_center_cosines(ds["features"].values, ds["label"].values, 3)
    np.testing.assert_allclose(t.loc[t.run_id == "r0", "cos_true"].to_numpy(), ref, rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.slow
def test_cli_metrics_prints_no_nan_column(tmp_path, capsys):
    st = _headless_study(tmp_path)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="mean class centers"):
        assert main(["metrics", str(st.path), "--no-progress", "--no-parquet"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"\bnan\b", out.split("\n", 1)[1].lower()), out
    frame = pd.read_csv(tmp_path / "st.run_metrics.csv")
    assert (frame["center_kind"] == "mean").all() and frame[["cos_true", "cos_pred"]].notna().all().all()


def test_cli_mediate_on_headless_study(tmp_path, capsys):
    st = _headless_study(tmp_path)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="mean class centers"):
        rc = main(["mediate", str(st.path), "--treatment", "regularizer", "--control", "ce", "--treated",
                   "label_smoothing", "--mediators", "rms,cos_true", "--outcome", "overconfidence"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "dropna" not in captured.err and "cos_true" in captured.out


@pytest.mark.slow
@pytest.mark.parametrize("center", [None, "mean"])
def test_report_on_headless_study(tmp_path, capsys, center):
    st = _headless_study(tmp_path)
    args = ["report", str(st.path), "--out", str(tmp_path / "rep" / "report.html"), "--no-progress", "--no-refute"]
    if center:
        q = tmp_path / "q.toml"
        q.write_text('[[query]]\ntreatment = "regularizer"\ncontrol = "ce"\ntreated = "label_smoothing"\n'
                     'mediators = ["rms", "cos_true"]\noutcomes = ["overconfidence"]\ncenter = "mean"\n')
        args += ["--query", str(q)]
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", md, re.S | re.M))
    cone = next(v for k, v in sections.items() if k.startswith("Cone test"))
    assert "not shown" in cone and "no run of this study has one stored" in cone
    iv = next(v for k, v in sections.items() if k.startswith("Interventions"))
    assert "not shown" in iv and "head_weight" in iv
    dist = next(v for k, v in sections.items() if k.startswith("Feature magnitude"))
    assert "mean class centers" in dist and "minimal-loss center," not in dist
    med = next(v for k, v in sections.items() if k.startswith("Mediation"))
    assert "indirect" in med and "not estimable —" not in med
    assert "| nan" not in md.lower()


def _sequential_head_dump(path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(20, 8)
    h = torch.relu(head[0](x)).detach()
    torch.save({"features": h, "logits": head(x).detach(), "labels": torch.randint(0, 3, (20,)),
                "state_dict": {f"classifier.{k}": v for k, v in head.state_dict().items()}}, path)
    return head


def test_sequential_head_on_import_names_head_flag(tmp_path, capsys):
    """A head stored as an nn.Sequential is not silently dropped: the error names --head and the final layer."""
    head = _sequential_head_dump(tmp_path / "seq.pt")
    with pytest.raises(cg.DumpImportError, match=r"not a single linear layer.*head='classifier\.2'"):
        cg.import_dump(tmp_path / "seq.pt")
    assert main(["import", str(tmp_path / "seq.pt"), str(tmp_path / "seq.zarr")]) == 2
    err = capsys.readouterr().err
    assert "--head classifier.2" in err and "head=" not in err and not (tmp_path / "seq.zarr").exists()
    assert main(["import", str(tmp_path / "seq.pt"), str(tmp_path / "seq.zarr"), "--head", "classifier.2"]) == 0
    ds = cg.open(tmp_path / "seq.zarr")
    np.testing.assert_array_equal(ds["head_weight"].values, head[2].weight.detach().numpy())  # stored as given


def test_sequential_head_module_names_its_final_linear():
    from torch import nn

    from causalgeom.cli import cli_words
    from causalgeom.cli import build_parser
    from causalgeom.pipeline.models import find_head

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
    model.fc = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(cg.ConfigError, match=r"'fc' .* Sequential, not a single linear layer.*head='fc\.2'") as exc:
        find_head(model, "fc")
    parser = build_parser()
    extract = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    assert "--head fc.2" in cli_words(str(exc.value), extract.choices["extract"])
