"""The automatic in-process / Dask choice of whole-study analyses (`causalgeom.scale.choose_path`), its use by the
command line and `cg.report`, and that both paths give the same results.

Fast tests replace the cluster by a recording stand-in (the choice is what is tested; the computation then runs on
dask's threads in this process); the slow test runs the command on a real LocalCluster.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import pytest

import causalgeom as cg
from causalgeom import scale
from causalgeom.cli import main
from causalgeom.errors import ConfigError

from causalgeom.testing import make_run

pytestmark = pytest.mark.filterwarnings("ignore::causalgeom.causal.FewClustersWarning")

N, D, RUNS = 60, 6, 4


@pytest.fixture(scope="module")
def sized_study(tmp_path_factory):
    """`RUNS` runs of `N` samples and `D` features: the size the engine choice below is computed from."""
    st = cg.open_study(tmp_path_factory.mktemp("choice") / "study", create=True)
    for i in range(RUNS):
        ls = i % 2 == 1
        st.add(make_run(n=N, d=D, k=3, seed=i, run_id=f"r{i}", scale=1.0 - 0.3 * ls,
                        regularizer="label_smoothing" if ls else "ce", strength=0.1 if ls else 0.0))
    return st


@pytest.fixture
def clusters(monkeypatch):
    """Record the clusters the CLI and the report would start, without starting any."""
    started: list[str] = []

    @contextlib.contextmanager
    def fake(address=None, **kw):
        started.append(address)
        yield None

    monkeypatch.setattr(scale, "client", fake)
    monkeypatch.setattr("causalgeom._util.dask.client", fake)
    monkeypatch.delenv(scale.SCHEDULER_ENV, raising=False)
    monkeypatch.delenv(scale.THRESHOLD_ENV, raising=False)
    return started


def test_size_and_threshold(sized_study, monkeypatch):
    monkeypatch.delenv(scale.THRESHOLD_ENV, raising=False)
    rows = RUNS * N
    below = scale.choose_path(sized_study, threshold=rows + 1)
    at = scale.choose_path(sized_study, threshold=rows)
    assert (below.path, at.path) == ("in-process", "dask")
    assert below.rows == rows and below.features_gib == pytest.approx(rows * D * 4 / 2**30, rel=1e-12)  # float32
    assert f"{rows:,} rows" in below.reason and f"below the threshold of {rows + 1:,} rows" in below.reason
    assert "at or above the threshold" in at.reason
    # the measured constant by default, or the rows whose table would fill a quarter of the RAM if fewer
    assert scale.choose_path(sized_study).threshold == min(scale.DASK_THRESHOLD_ROWS, scale.memory_rows() or 10**18)
    import causalgeom.scale.choice as sc

    monkeypatch.setattr(sc, "memory_rows", lambda: rows)  # a machine whose RAM bounds the in-process table here
    mem = scale.choose_path(sized_study)
    assert mem.path == "dask" and mem.threshold == rows and "quarter of this machine's RAM" in mem.reason
    assert scale.choose_path(sized_study, threshold=rows + 1).path == "in-process"  # a given threshold wins
    monkeypatch.undo()
    monkeypatch.delenv(scale.THRESHOLD_ENV, raising=False)
    monkeypatch.setenv(scale.THRESHOLD_ENV, "1e2")
    env = scale.choose_path(sized_study)
    assert env.threshold == 100 and env.path == "dask" and scale.THRESHOLD_ENV in env.reason
    monkeypatch.setenv(scale.THRESHOLD_ENV, "lots")
    with pytest.raises(ConfigError, match=f"\\${scale.THRESHOLD_ENV}: expected a number of rows .* got 'lots'"):
        scale.choose_path(sized_study)
    with pytest.raises(ConfigError, match="threshold: expected a number of rows >= 0, got -1"):
        scale.choose_path(sized_study, threshold=-1)


_Q = ["--treatment", "regularizer", "--control", "ce", "--treated", "label_smoothing", "--mediators", "rms,cos_true",
      "--outcome", "overconfidence,nll", "--n-boot", "30", "--inference", "bootstrap", "--no-progress"]


def _summary(sized_study, tmp_path, name, extra, capsys):
    out = tmp_path / name
    assert main(["mediate", str(sized_study.path), *_Q, "--out", str(out), *extra]) == 0
    return pd.read_csv(out / "mediation_summary.csv"), capsys.readouterr().err


def test_cli_decides_by_size(sized_study, clusters, caplog):
    from causalgeom.cli import _scale, build_parser

    for cmd in ("metrics", "mediate", "report"):  # the decision of each whole-study command (not run here)
        with caplog.at_level(logging.INFO, logger="causalgeom.cli"):
            args = build_parser().parse_args([cmd, str(sized_study.path)])
            assert _scale.auto_choice(args).path == "in-process" and args.path_choice == "in-process"
        assert f"{cmd}: in this process" in caplog.text and "below the threshold" in caplog.text
    run = build_parser().parse_args(["metrics", str(sized_study.run_path("r0"))])
    assert _scale.auto_choice(run) is None  # a single run store: no study-wide choice
    assert clusters == []


def test_cli_above_the_threshold_goes_out_of_core_with_the_same_results(sized_study, tmp_path, clusters, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv(scale.THRESHOLD_ENV, "0")
    big, err = _summary(sized_study, tmp_path, "above", [], capsys)
    assert clusters and clusters[0].startswith("local:")  # one single-threaded worker per core
    assert "at or above the threshold of 0 rows" in err and "out of core (cg.distributed.mediate_study" in err
    # the in-process path of the same query: the table and cg.causal.mediate (the CLI's --seed 0 by default)
    ref = cg.causal.mediate(sized_study.to_frame(progress=False), treatment="regularizer", control="ce",
                            treated="label_smoothing", mediators=["rms", "cos_true"], outcome=["overconfidence", "nll"],
                            n_boot=30, inference="bootstrap", rng=np.random.default_rng(0)).summary()
    # the same estimator from per-run moments vs from the rows: floating-point summation order only
    cols = ["estimate", "ci_low", "ci_high", "p_value"]
    np.testing.assert_allclose(big[cols].to_numpy(float), ref[cols].to_numpy(float), rtol=1e-7, atol=1e-10)
    assert list(big["effect"]) == list(ref["effect"])


@pytest.mark.slow
def test_explicit_scheduler_wins(sized_study, tmp_path, clusters, monkeypatch, capsys):
    monkeypatch.setenv(scale.THRESHOLD_ENV, "0")  # the size rule would choose Dask
    _, err = _summary(sized_study, tmp_path, "forced-in", ["--scheduler", "in-process"], capsys)
    assert clusters == [] and "threshold" not in err
    monkeypatch.setenv(scale.THRESHOLD_ENV, "1e12")  # the size rule would stay in process
    _, err = _summary(sized_study, tmp_path, "forced-dask", ["--scheduler", "local:1"], capsys)
    assert clusters == ["local:1"] and "threshold" not in err
    monkeypatch.setenv(scale.SCHEDULER_ENV, "local:2")  # the environment's scheduler is an explicit choice too
    _, err = _summary(sized_study, tmp_path, "env", [], capsys)
    assert clusters == ["local:1", "local:2"]


def test_queries_that_need_the_rows_stay_on_the_table(sized_study, tmp_path, clusters, monkeypatch, capsys):
    monkeypatch.setenv(scale.THRESHOLD_ENV, "0")
    out = tmp_path / "rows"
    assert main(["mediate", str(sized_study.path), *_Q[:-5], "--outcome", "correct", "--n-boot", "20", "--no-progress",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "from the per-sample table built on the Dask workers (a logistic/probit outcome model" in err


def test_report_receives_its_client_and_starts_none(sized_study, tmp_path, clusters, monkeypatch, caplog):
    """The report never starts a cluster; above the size rule (`causal.choose_engine`, the one rule) it says so and runs
    in this process; the CLI applies the same rule and hands the client in."""
    with pytest.raises(ConfigError, match="client: expected a dask.distributed.Client or None, got str"):
        cg.report(sized_study, out=tmp_path / "x.html", client="local")
    calls = []
    monkeypatch.setattr("causalgeom.reporting._report", lambda *a: calls.append(a) or tmp_path / "r.html")
    monkeypatch.setenv(scale.THRESHOLD_ENV, "0")  # above the threshold: still no cluster from the report itself
    with caplog.at_level(logging.WARNING, logger="causalgeom.reporting"):
        cg.report(sized_study, out=tmp_path / "r.html")
    assert clusters == [] and len(calls) == 1
    assert "no client was given: running in this process" in caplog.text  # the same size rule, said, not acted on
    handed, sentinel = [], object()
    monkeypatch.setattr(scale, "active_client", lambda: sentinel)  # the client the CLI's block opened
    monkeypatch.setattr("causalgeom.reporting.report", lambda *a, **kw: handed.append(kw["client"]) or tmp_path / "r.html")
    assert main(["report", str(sized_study.path), "--out", str(tmp_path / "r.html"), "--no-progress"]) == 0
    assert len(clusters) == 1 and clusters[0].startswith("local:")  # the CLI's size rule opened it, via scale
    assert handed == [sentinel]  # the report gets the CLI's client


@pytest.mark.slow
def test_cli_on_a_real_local_cluster_equals_in_process(sized_study, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(scale.SCHEDULER_ENV, raising=False)
    monkeypatch.setenv(scale.THRESHOLD_ENV, "1e12")
    small, _ = _summary(sized_study, tmp_path, "in", [], capsys)
    monkeypatch.setenv(scale.THRESHOLD_ENV, "0")
    big, err = _summary(sized_study, tmp_path, "dask", [], capsys)
    assert "out of core" in err
    cols = ["estimate", "ci_low", "ci_high", "p_value"]
    # per-run moments on the workers vs the rows in process: floating-point summation order only
    np.testing.assert_allclose(big[cols].to_numpy(float), small[cols].to_numpy(float), rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_every_local_cluster_gets_the_worker_malloc_settings(monkeypatch):
    import dask

    monkeypatch.delenv(scale.SCHEDULER_ENV, raising=False)
    with scale.client("local:1") as c:
        env = c.run(lambda: {k: __import__("os").environ.get(k) for k in scale.WORKER_MALLOC_ENV})
    assert list(env.values()) == [{k: str(v) for k, v in scale.WORKER_MALLOC_ENV.items()}]
    key = "distributed.nanny.pre-spawn-environ.MALLOC_TOP_PAD_"
    with dask.config.set({key: 4096}), scale.local_cluster_options():  # the user's own setting wins
        assert dask.config.get(key) == 4096
        assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_") == 256 * 2**20
