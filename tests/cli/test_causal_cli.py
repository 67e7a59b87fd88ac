"""``causalgeom mediate``: from options, from a query file, on a study folder or a table file."""

from __future__ import annotations

import pandas as pd
import pytest

import causalgeom as cg
from causalgeom.causal import Query, read_queries, simulate_mediation
from causalgeom.cli import main


def test_mediate_study_from_options(study, capsys):
    rc = main(["mediate", str(study.path), "--treatment", "regularizer", "--control", "ce", "--treated",
               "label_smoothing", "--mediators", "rms,cos_true", "--outcome", "overconfidence", "--n-boot", "50",
               "--bootstrap", "naive", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr()
    assert "indirect[rms]" in out.out and "NAIVE" in out.out
    folder = study.path.parent / "study_mediation"
    s = pd.read_csv(folder / "mediation_summary.csv")
    assert list(s.columns) == ["query", "outcome", "effect", "estimate", "ci_low", "ci_high", "p_value", "p_floor",
                               "note", "n_runs", "n_samples"]
    assert (folder / "mediation_summary.parquet").exists() and (folder / "mediation_sensitivity.csv").exists()
    assert (folder / "forest.png").stat().st_size > 0 and "###" in (folder / "mediation.md").read_text()
    (q,) = read_queries(folder / "query.toml")
    assert q.mediators == ["rms", "cos_true"] and q.bootstrap == "naive" and q.n_boot == 50


@pytest.mark.slow
def test_mediate_from_query_file_with_override(study, tmp_path, capsys):
    qs = tmp_path / "q.toml"
    Query(treatment="strength", control=0.0, treated=0.1, mediators=["rms"], outcomes=["nll"], level="run",
          n_boot=20, name="per strength").to_toml(qs)
    rc = main(["mediate", str(study.path), "--query", str(qs), "--seed", "4", "--out", str(tmp_path / "o"),
               "--no-progress", "--refute"])
    assert rc == 0
    s = pd.read_csv(tmp_path / "o" / "mediation_summary.csv")
    assert (s["query"] == "per strength").all() and (s.n_samples == 4).all()
    assert read_queries(tmp_path / "o" / "query.toml")[0].seed == 4
    assert "refuter" in capsys.readouterr().out


def test_mediate_table_file_and_errors(tmp_path, capsys):
    df, _ = simulate_mediation(n_runs_per_arm=3, n_samples=20, continuous=[0.0, 1.0], rng=0)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    rc = main(["mediate", str(path), "--treatment", "strength", "--control", "0", "--treated", "1",
               "--mediators", "m1", "--outcome", "y", "--n-boot", "10", "--method", "dowhy"])
    assert rc == 0 and (tmp_path / "t_mediation" / "mediation_summary.csv").exists()
    assert main(["mediate", str(path), "--treatment", "strength", "--mediators", "nope", "--outcome", "y"]) == 2
    assert "not in the table: mediators 'nope'" in capsys.readouterr().err
    assert main(["mediate", str(path), "--mediators", "m1", "--outcome", "y"]) == 2
    assert "no treatment given" in capsys.readouterr().err
