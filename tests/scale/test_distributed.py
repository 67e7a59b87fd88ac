"""Analysis and training on a Dask LocalCluster (2 worker processes) equal the in-process results; lost workers.

One cluster is shared by the module (started in about a second); in-process references are computed with
dask's threaded scheduler forced (``dask.config.set(scheduler="threads")``), everything else runs on the
cluster, which is checked by recording the task stream.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings

import cloudpickle
import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import causalgeom as cg
from causalgeom import distributed, interventions, summary, table, train
from causalgeom.cli import main
from causalgeom.errors import ConfigError, QueryError
from causalgeom.testing import make_run

# functions of this module (the slow mapped block below) reach the workers by value, not by import
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.filterwarnings("ignore::causalgeom.causal.FewClustersWarning",
                                        "ignore:Port .* is already in use:UserWarning")

TINY = dict(epochs=2, batch_size=32, lr=0.05, max_train_samples=64, num_threads=1)  # digits, small_cnn


def in_process():
    """Force dask's local threaded scheduler although a distributed client is the default."""
    return dask.config.set(scheduler="threads")


@pytest.fixture(scope="module")
def cluster():
    # torch alone takes ~0.8 GiB of a worker that runs interventions or training (Dask pauses a worker at 80%)
    with distributed.client(n_workers=2, threads_per_worker=1, memory_limit="4GiB") as c:
        yield c


@pytest.fixture(scope="module")
def chunked_study(tmp_path_factory):
    """4 runs (2 ce, 2 label smoothing with smaller features), several chunks each."""
    root = tmp_path_factory.mktemp("study")
    s = cg.open_study(root / "study", create=True)
    for i in range(4):
        reg = "ce" if i % 2 == 0 else "label_smoothing"
        ds = make_run(n=500, seed=i, run_id=f"r{i}", scale=1.0 if reg == "ce" else 0.7, regularizer=reg,
                      strength=0.0 if reg == "ce" else 0.1)  # 2 runs per strength: stratified replicates
        cg.save(ds, s.run_path(f"r{i}"), sample_chunk=128)
    return s


def ran_on(client) -> "dask.distributed.get_task_stream":
    from dask.distributed import get_task_stream

    return get_task_stream(client)


# ------------------------------------------------------------------------------------------- metrics
@pytest.mark.slow
def test_metrics_and_study_table_equal_in_process(cluster, chunked_study):
    with in_process():
        ref_runs = summary.run_frame(chunked_study, progress=False)
        ref_table = table.study_frame(chunked_study, progress=False)
        ref_run_level = table.study_frame(chunked_study, level="run", progress=False, run_ids=["r0", "r1"])
        ref_ece = float(cg.calibration.ece(chunked_study["r0"]))
        ref_centers = cg.geometry.class_centers(chunked_study["r1"], kind="mean")
    with ran_on(cluster) as ts:
        runs = summary.run_frame(chunked_study, progress=False)
        tab = table.study_frame(chunked_study, progress=False)
        run_level = table.study_frame(chunked_study, level="run", progress=False, run_ids=["r0", "r1"])
        ece = float(cg.calibration.ece(chunked_study["r0"]))
        centers = cg.geometry.class_centers(chunked_study["r1"], kind="mean")
    assert len(ts.data) > 100  # the chunks were processed by the workers
    assert {t["worker"] for t in ts.data} == set(cluster.scheduler_info()["workers"])
    pd.testing.assert_frame_equal(runs, ref_runs, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(tab, ref_table, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(run_level, ref_run_level, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(summary.paper_table(runs), summary.paper_table(ref_runs), check_exact=False,
                                  rtol=1e-12)
    assert ece == pytest.approx(ref_ece, rel=1e-12)
    xr.testing.assert_allclose(centers, ref_centers, rtol=1e-12)


@pytest.mark.slow
def test_interventions_equal_in_process(cluster, chunked_study):
    ds = chunked_study["r2"]
    kw = dict(n_boot=50, rng=np.random.default_rng(3))
    with in_process():
        ref_scale = interventions.rescale(ds, scales=[0.5, 1.0, 2.0], **kw)
        ref_rot = interventions.rotate(ds, alphas=[0.0, 0.5], n_boot=50, rng=np.random.default_rng(3))
        ref_match = interventions.match(chunked_study["r0"], chunked_study["r1"], what="magnitude", n_boot=20, rng=1)
    with ran_on(cluster) as ts:
        scale = interventions.rescale(ds, scales=[0.5, 1.0, 2.0], n_boot=50, rng=np.random.default_rng(3))
        rot = interventions.rotate(ds, alphas=[0.0, 0.5], n_boot=50, rng=np.random.default_rng(3))
        matched = interventions.match(chunked_study["r0"], chunked_study["r1"], what="magnitude", n_boot=20, rng=1)
    assert len(ts.data) > 10
    xr.testing.assert_allclose(scale, ref_scale, rtol=1e-12)
    xr.testing.assert_allclose(rot, ref_rot, rtol=1e-12)
    pd.testing.assert_frame_equal(matched, ref_match, check_exact=False, rtol=1e-12)


# ------------------------------------------------------------------------------------------- mediation
@pytest.mark.slow
@pytest.mark.parametrize("kw", [
    dict(treatment="regularizer", mediators=["rms", "cos_true"], outcome=["overconfidence", "nll"]),
    dict(treatment="regularizer", mediators="norm", outcome="robust[pgd-linf@1/255]", covariates=["label"],
         interaction=True),
    dict(treatment="strength", mediators=["rms", "cos_true"], outcome="brier", ordered=True),
], ids=["two-mediators", "covariate-interaction", "continuous-ordered"])
def test_mediate_study_equals_mediate_on_the_table(cluster, chunked_study, kw):
    # unpaired and linear on both sides: mediate_study has no image pairing and no logistic model out of core
    kw = dict(kw, paired_by=None, rng=7, n_boot=300)
    frame = chunked_study.to_frame(progress=False)
    for inference in ("bootstrap", "cr2"):
        with in_process():
            ref = cg.causal.mediate(frame, outcome_model="linear", inference=inference, **kw)
        with ran_on(cluster) as ts:
            res = distributed.mediate_study(chunked_study, inference=inference, **kw)
        assert len(ts.data) >= 4 * 4  # one task per chunk and run, at least
        a, b = ref.summary(), res.summary()
        # same estimator, different summation order (per-run moments vs rows): floating-point tolerance
        pd.testing.assert_frame_equal(a.drop(columns="note"), b.drop(columns="note"), check_exact=False, rtol=1e-7,
                                      atol=1e-9)
        # the overlap check needs the rows: mediate_study has no "extrapolated" marks, the other notes agree
        strip = lambda s: s.str.replace(r"^extrapolated(; )?", "", regex=True)  # noqa: E731
        assert list(strip(a.note)) == list(b.note) and res.overlap.empty
        np.testing.assert_allclose(res.replicates, ref.replicates, rtol=1e-7, atol=1e-10)
        pd.testing.assert_frame_equal(res.sensitivity, ref.sensitivity, check_exact=False, rtol=1e-8)
        assert (res.resampling, res.estimator, res.n_clusters, res.design) == (
            ref.resampling, ref.estimator, ref.n_clusters, ref.design)


@pytest.mark.slow
@pytest.mark.parametrize("interaction", [False, True], ids=["additive", "interaction"])
def test_mediate_study_paired_by_image_equals_mediate(cluster, chunked_study, interaction):
    kw = dict(treatment="regularizer", mediators=["rms", "cos_true"], outcome="overconfidence", rng=3, n_boot=200,
              interaction=interaction)
    with in_process():
        ref = cg.causal.mediate(chunked_study.to_frame(progress=False), inference="bootstrap", **kw)
    res = distributed.mediate_study(chunked_study, inference="bootstrap", **kw)
    assert ref.design.startswith("paired by image") and res.design == ref.design
    a, b = ref.summary(), res.summary()
    # per-run moments about the image means vs demeaned rows: floating-point summation order only
    pd.testing.assert_frame_equal(a.drop(columns="note"), b.drop(columns="note"), check_exact=False, rtol=1e-7,
                                  atol=1e-9)
    np.testing.assert_allclose(res.replicates, ref.replicates, rtol=1e-7, atol=1e-10)
    assert res.estimator == ref.estimator
    cr = distributed.mediate_study(chunked_study, **kw).summary()  # default CR2 from the same per-run Gram matrices
    with in_process():
        cref = cg.causal.mediate(chunked_study.to_frame(progress=False), **kw).summary()
    pd.testing.assert_frame_equal(cref.drop(columns="note"), cr.drop(columns="note"), check_exact=False, rtol=1e-6,
                                  atol=1e-9)


@pytest.mark.slow
def test_mediate_study_pairing_errors(cluster, chunked_study):
    res = distributed.mediate_study(chunked_study, treatment="regularizer", mediators="rms", outcome="nll", n_boot=0,
                                    paired_by=None)
    assert res.design == "unpaired: paired_by=None"
    with pytest.raises(QueryError, match="estimand='model': mediate_study supports the effect over runs only"):
        distributed.mediate_study(chunked_study, treatment="regularizer", mediators="rms", outcome="nll",
                                  estimand="model")


@pytest.mark.slow
def test_mediate_study_errors_like_mediate(cluster, chunked_study):
    with pytest.raises(QueryError, match="column\\(s\\) not in the table: mediators 'nope'"):
        distributed.mediate_study(chunked_study, treatment="regularizer", mediators="nope", outcome="nll")
    with pytest.raises(QueryError, match="treated: value 'mixup' is not a level"):
        distributed.mediate_study(chunked_study, treatment="regularizer", treated="mixup", mediators="rms",
                                  outcome="nll")
    with pytest.raises(QueryError, match="min_flip_eps\\[pgd-linf\\]': .* not finite"):
        distributed.mediate_study(chunked_study, treatment="regularizer", mediators="min_flip_eps[pgd-linf]",
                                  outcome="nll", n_boot=10)


def test_run_moments_match_numpy(cluster, chunked_study):
    mom = distributed.run_moments(chunked_study, ["norm", "nll", "correct"], run_ids=["r3"])["r3"]
    with in_process():
        t = table.run_table(chunked_study["r3"])
    x = t[["norm", "nll", "correct"]].to_numpy(float)
    assert mom.n == len(t)
    np.testing.assert_allclose(mom.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mom.comoment, (x - x.mean(0)).T @ (x - x.mean(0)), rtol=1e-10)


# ------------------------------------------------------------------------------------------- training grid
@pytest.mark.slow
def test_run_grid_on_cluster_equals_in_process(cluster, tmp_path):
    grid = train.GridConfig.from_dict({"name": "tiny", "seeds": [0], "train": dict(TINY), "regularizers": [
        {"name": "ce"}, {"name": "label_smoothing", "strengths": [0.1]}]})
    ref = train.run_grid(grid, tmp_path / "here", progress=False, scheduler=False)
    with ran_on(cluster) as ts:
        dirs = train.run_grid(grid, tmp_path / "there", progress=False, scheduler=cluster)
    assert len([t for t in ts.data if "causalgeom-train" in t["key"]]) == 2  # one task per run
    assert [d.name for d in dirs] == [d.name for d in ref] == ["ce-s0", "label_smoothing0.1-s0"]
    for a, b in zip(ref, dirs):
        wa = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
        wb = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert train.run_status(b) == "done"
    stamp = (dirs[0] / "checkpoint.pt").stat().st_mtime_ns
    with distributed.client(cluster), ran_on(cluster) as ts:  # an enclosing client block: dispatched to it
        train.run_grid(grid, tmp_path / "there", progress=False)
    assert not [t for t in ts.data if "causalgeom-train" in t["key"]]  # finished runs are skipped
    assert (dirs[0] / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_run_grid_validates_before_dispatching(cluster, tmp_path):
    grid = train.GridConfig.from_dict({"train": dict(TINY), "regularizers": [
        {"name": "ce"}, {"name": "mixup", "strengths": [-1.0]}]})
    with pytest.raises(ConfigError, match="mixup_alpha"):
        train.run_grid(grid, tmp_path, progress=False, scheduler=cluster)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_scheduler_option(cluster, chunked_study, tmp_path, capsys, monkeypatch):
    address = cluster.scheduler.address
    with in_process():
        assert main(["metrics", str(chunked_study.path), "--no-progress", "--no-parquet",
                     "--out", str(tmp_path / "a")]) == 0
    with ran_on(cluster) as ts:
        assert main(["metrics", str(chunked_study.path), "--no-progress", "--no-parquet", "--out", str(tmp_path / "b"),
                     "--scheduler", address]) == 0
        assert main(["validate", str(chunked_study.path), "--scheduler", address]) == 0
    assert len(ts.data) > 50
    for name in ("study.run_metrics.csv", "study.paper_table.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / name), pd.read_csv(tmp_path / "a" / name))
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\nseeds = [0]\n[train]\nepochs = 1\nbatch_size = 32\nmax_train_samples = 32\n'
                    'num_threads = 1\n[[regularizers]]\nname = "ce"\n')
    with ran_on(cluster) as ts:  # train dispatches its runs to the cluster
        assert main(["train", str(toml), "--out", str(tmp_path / "runs"), "--no-progress", "--scheduler",
                     address]) == 0
    assert [t for t in ts.data if "causalgeom-train-ce-s0" in t["key"]]
    assert train.run_status(tmp_path / "runs" / "runs" / "ce-s0") == "done"
    capsys.readouterr()
    assert main(["metrics", str(chunked_study.path), "--scheduler", "local:0"]) == 2
    assert "'local:N' with N >= 1" in capsys.readouterr().err
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", "1s")
    assert main(["metrics", str(chunked_study.path), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


def test_scheduler_option_on_analysis_commands_only():
    from causalgeom.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("metrics", "mediate", "intervene", "report", "validate", "train"):
        assert "--scheduler" in sub.choices[name].format_help()
    assert "--scheduler" not in sub.choices["info"].format_help()
    assert "--distributed" in sub.choices["extract"].format_help()


# ------------------------------------------------------------------------------------------- lost workers
def _slow(block: np.ndarray) -> np.ndarray:
    time.sleep(0.05)
    return block


def _slow_run(path) -> xr.Dataset:
    """The run at ``path`` with a sleep mapped over its feature chunks (the metric is unchanged)."""
    ds = cg.open(path)
    return ds.assign(features=(("sample", "feature"), ds["features"].data.map_blocks(_slow, dtype=np.float32)))


class _Killer(threading.Thread):
    """After ``delay`` s, SIGKILL the worker process that holds the most tasks in processing."""

    def __init__(self, c, delay: float):
        super().__init__(daemon=True)
        self.c, self.delay, self.pids, self.busy = c, delay, c.run(os.getpid), 0
        self.start()

    def run(self):
        time.sleep(self.delay)
        processing = self.c.processing()
        victim = max(processing, key=lambda w: len(processing[w]))
        self.busy = len(processing[victim])
        os.kill(self.pids[victim], signal.SIGKILL)


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.zarr"
    cg.save(make_run(n=4000, seed=11, run_id="big"), path, sample_chunk=100)  # 40 chunks, ~2 s with the sleep
    return path


@pytest.mark.slow
def test_killed_worker_is_retried_and_result_unchanged(big_run):
    with in_process():
        ref = summary.run_metrics(cg.open(big_run))
    with distributed.client(n_workers=2, memory_limit="1GiB") as c:
        ds = _slow_run(big_run)
        killer = _Killer(c, delay=0.6)
        row = summary.run_metrics(ds)
        killer.join()
        assert killer.busy > 0  # the worker died mid-computation, holding tasks
    assert row.keys() == ref.keys()
    for k, v in ref.items():
        assert row[k] == (pytest.approx(v, rel=1e-12, nan_ok=True) if isinstance(v, float) else v), k
    cg.verify(big_run)  # the store is untouched


@pytest.mark.slow
def test_worker_lost_for_good_raises_a_clear_error(big_run):
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            pytest.raises(distributed.WorkerLostError, match="worker died during the computation .*KilledWorker"):
        with distributed.client(n_workers=2, memory_limit="1GiB") as c:
            ds = _slow_run(big_run)
            killer = _Killer(c, delay=0.6)
            try:
                summary.run_metrics(ds)
            finally:
                killer.join()
                assert killer.busy > 0
    cg.verify(big_run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cg.open(big_run)
