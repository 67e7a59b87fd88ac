"""Per-run metrics, the paper table (t-interval vs scipy) and the ``causalgeom metrics`` command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import causalgeom as cg
from causalgeom import calibration as cal, geometry as geo, robustness as rob
from causalgeom.cli import main
from causalgeom.metrics.summary import format_table, paper_table, robust_key, run_frame, run_metrics

from causalgeom.testing import make_run


@pytest.fixture(scope="module")
def unbalanced_study(tmp_path_factory):
    """3 ce runs and 2 label-smoothing runs in a folder named ``st`` (the tables count runs per arm)."""
    root = tmp_path_factory.mktemp("study") / "st"
    st = cg.open_study(root, create=True)
    for reg, strength in (("ce", 0.0), ("label_smoothing", 0.1)):
        for seed in range(3 if reg == "ce" else 2):
            st.add(make_run(n=60, d=6, k=3, seed=seed + (10 if reg != "ce" else 0),
                            run_id=f"{reg}-s{seed}", regularizer=reg, strength=strength), mode="w-")
    return st


def test_run_metrics_agree_with_module_functions(tmp_path):
    ds = make_run(n=90, d=6, k=3, regularizer="label_smoothing", strength=0.1, run_id="ls")
    row = run_metrics(ds, n_bins=10)
    assert row["run_id"] == "ls" and row["regularizer"] == "label_smoothing" and row["strength"] == 0.1
    assert row["ece"] == pytest.approx(float(cal.ece(ds, 10)))
    assert row["signed_ece"] == pytest.approx(float(cal.signed_ece(ds, 10)))
    assert row["nll"] == pytest.approx(float(cal.nll(ds)))
    assert row["accuracy"] == pytest.approx(float(cal.accuracy(ds)))
    assert row["rms"] == pytest.approx(float(geo.magnitude(ds)["rms"].mean()))
    assert row["cos_true"] == pytest.approx(float(geo.cosine_to_center(ds)["cos_true"].mean()))
    ra = rob.robust_accuracy(ds)
    key = robust_key("pgd-linf", float(ra["eps"][0]))
    assert key == "robust_acc[pgd-linf@1/255]"
    assert row[key] == pytest.approx(float(ra[0, 0]))
    assert row["robust_auc[pgd-linf]"] == pytest.approx(float(rob.robust_auc(ds)[0]))
    cg.save(ds, tmp_path / "ls.zarr", sample_chunk=16)
    lazy_row = run_metrics(cg.open(tmp_path / "ls.zarr"), n_bins=10)
    for k, v in row.items():
        if isinstance(v, float):
            assert lazy_row[k] == pytest.approx(v, rel=1e-10, nan_ok=True), k
        else:
            assert lazy_row[k] == v


def test_run_metrics_without_head_or_attacks():
    ds = make_run(n=30, attacks=False).drop_vars(["head_weight", "head_bias"])
    with pytest.warns(UserWarning, match="no head_weight.*mean class centers"):
        row = run_metrics(ds)  # no NaN column: the cosines fall back to the mean class centers, said so
    assert row["center_kind"] == "mean" and not any(k.startswith("robust") for k in row)
    mean = run_metrics(ds, center_kind="mean")
    assert row["cos_true"] == mean["cos_true"] and -1 <= row["cos_true"] <= 1  # the same computation


@pytest.mark.slow
def test_paper_table_t_interval(unbalanced_study):
    frame = run_frame(unbalanced_study, progress=False)
    assert len(frame) == 5 and set(frame["run_id"]) == set(unbalanced_study.run_ids)
    table = paper_table(frame, ci=0.9)
    assert list(table["regularizer"]) == ["ce", "label_smoothing"]
    assert list(table["n_runs"]) == [3, 2]
    for _, row in table.iterrows():
        x = frame.loc[frame["regularizer"] == row["regularizer"], "ece"].to_numpy()
        lo, hi = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert row["ece"] == pytest.approx(x.mean())
        assert row["ece_low"] == pytest.approx(lo) and row["ece_high"] == pytest.approx(hi)
    assert "seed" not in table.columns and "robust_acc[pgd-linf@1/255]_low" in table.columns
    from_study = paper_table(unbalanced_study, ci=0.9)
    pd.testing.assert_frame_equal(from_study, table)
    one = paper_table(frame[frame["run_id"] == "ce-s0"])
    assert one["n_runs"].iloc[0] == 1 and np.isnan(one["ece_low"].iloc[0])
    shown = format_table(table)
    assert "±" in shown["ece"].iloc[0]
    with pytest.raises(ValueError, match="ci"):
        paper_table(frame, ci=1.5)
    with pytest.raises(TypeError, match="Study"):
        paper_table([1, 2])


@pytest.mark.slow
def test_cli_metrics_study_and_run(unbalanced_study, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["metrics", str(unbalanced_study.path), "--out", str(out), "--no-progress", "--ci", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "label_smoothing" in printed and "±" in printed
    table = pd.read_csv(out / "st.paper_table.csv")
    assert list(table["n_runs"]) == [3, 2]
    assert pd.read_parquet(out / "st.run_metrics.parquet").shape[0] == 5
    assert main(["metrics", str(unbalanced_study.run_path("ce-s0")), "--out", str(out), "--no-parquet"]) == 0
    assert '"run_id": "ce-s0"' in capsys.readouterr().out
    assert pd.read_csv(out / "ce-s0.metrics.csv")["run_id"].iloc[0] == "ce-s0"
    assert main(["metrics", str(tmp_path / "nowhere")]) == 2
    assert "no study folder" in capsys.readouterr().err


def test_cli_metrics_default_output_next_to_study(unbalanced_study, capsys):
    assert main(["metrics", str(unbalanced_study.path), "--no-progress", "--no-parquet"]) == 0
    assert (unbalanced_study.path.parent / "st.paper_table.csv").exists()
    assert (unbalanced_study.path.parent / "st.run_metrics.csv").exists()
