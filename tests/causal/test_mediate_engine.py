"""`cg.causal.mediate` on a study: one question (`MediationSpec`), the engine chosen by size in one place
(`causalgeom.scale.choose_engine`, as the command line), and ``result.engine`` recording which engine answered."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

import causalgeom as cg
from causalgeom import scale
from causalgeom.causal import IN_PROCESS, MediationSpec, Query, mediate
from causalgeom.errors import QueryError
from causalgeom.testing import make_study

pytestmark = pytest.mark.filterwarnings("ignore::causalgeom.causal.FewClustersWarning")

KW = dict(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["norm", "cos_true"],
          outcome=["nll"], n_boot=40, inference="bootstrap")
COLS = ["estimate", "ci_low", "ci_high", "p_value"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("engine") / "study", n_runs=4, n=60, d=6, k=3)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(scale.SCHEDULER_ENV, raising=False)
    monkeypatch.delenv(scale.THRESHOLD_ENV, raising=False)
    return monkeypatch


def test_spec_declares_and_checks_the_constraints_once():
    spec = MediationSpec(treatment="regularizer", mediators="rms,cos_true", outcomes="nll", n_boot=np.int64(10))
    assert spec.mediators == ("rms", "cos_true") and spec.outcomes == ("nll",) and spec.n_boot == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = "dowhy"  # type: ignore[misc]
    for bad, match in [(dict(method="bayes"), r"method: expected one of \['regression', 'statsmodels', 'dowhy'\], "
                                              r"got 'bayes'"),
                       (dict(n_boot=-1), "n_boot: expected an integer >= 0 or None, got -1"),
                       (dict(ci_level=1.0), r"ci_level: expected a number in \(0, 1\), got 1.0"),
                       (dict(interaction=1), "interaction: expected true or false, got 1"),
                       (dict(cluster=""), "cluster: expected a non-empty string"),
                       (dict(paired_by="image"), r"paired_by: expected one of \['auto', 'sample', None\]")]:
        with pytest.raises(QueryError, match=match):
            MediationSpec(treatment="t", mediators=["m"], outcomes=["y"], **bad)
    # the keyword API, a query and the spec agree: one object, built three ways
    q = Query(treatment="regularizer", mediators=["rms", "cos_true"], outcomes=["nll"], control="ce")
    assert q.spec() == MediationSpec.from_kwargs(**{k: v for k, v in q.mediate_kwargs().items() if k != "rng"})
    with pytest.raises(QueryError, match=r"inference: expected one of .* got 'jackknife'"):
        Query(treatment="regularizer", mediators=["rms"], outcomes=["nll"], inference="jackknife")


@pytest.mark.slow
def test_a_study_below_the_threshold_runs_in_process(small, no_env):
    no_env.setenv(scale.THRESHOLD_ENV, "1e12")
    res = mediate(small, rng=0, **KW)
    ref = mediate(small.to_frame(progress=False), rng=0, **KW)
    assert res.engine == ref.engine == "in-process"
    np.testing.assert_allclose(res.summary()[COLS].to_numpy(float), ref.summary()[COLS].to_numpy(float),
                               rtol=1e-12, atol=0)
    assert cg.causal.choose_engine(small.to_frame(progress=False)).name == "in-process"  # a table: always here
    assert scale.choose_engine(small.to_frame(progress=False)).engine is IN_PROCESS


@pytest.mark.slow
def test_a_tiny_threshold_chooses_dask_with_a_local_cluster_as_the_cli(small, no_env):
    """Above the threshold, Python starts the same LocalCluster as the CLI (recorded here, not started)."""
    started: list[str] = []

    @contextlib.contextmanager
    def fake(address=None, **kw):
        started.append(address)
        yield None

    no_env.setattr("causalgeom._util.dask.client", fake)
    no_env.setenv(scale.THRESHOLD_ENV, "0")
    choice = scale.choose_engine(small)
    assert choice.name == "dask" and "at or above the threshold of 0 rows" in choice.reason
    res = mediate(small, rng=0, **KW)
    assert started == [scale.local_address()] and res.engine == "dask"
    ref = mediate(small.to_frame(progress=False), rng=0, **KW)
    # the same estimator from per-run moments vs from the rows: floating-point summation order only
    np.testing.assert_allclose(res.summary()[COLS].to_numpy(float), ref.summary()[COLS].to_numpy(float),
                               rtol=1e-7, atol=1e-10)
    # a question the moments cannot answer: the table, built on the cluster, in process (and said so)
    wild = mediate(small, rng=0, **{**KW, "inference": "wild"})
    assert wild.engine == "in-process" and any("built on the Dask cluster" in n for n in wild.notes)


@pytest.mark.slow
def test_dask_engine_on_a_real_local_cluster_client(small, no_env):
    """A tiny threshold and a LocalCluster client: the Dask engine answers on it, as the in-process one does."""
    from dask.distributed import Client, LocalCluster

    no_env.setenv(scale.THRESHOLD_ENV, "0")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        res = mediate(small, rng=0, **KW)
        bound = scale.choose_engine(small, client=client)
        assert bound.name == "dask"
        res2 = bound.engine.run(MediationSpec.from_kwargs(**KW), small, rng=np.random.default_rng(0))
    assert res.engine == res2.engine == "dask"
    ref = mediate(small.to_frame(progress=False), rng=0, **KW)
    for r in (res, res2):
        np.testing.assert_allclose(r.summary()[COLS].to_numpy(float), ref.summary()[COLS].to_numpy(float),
                                   rtol=1e-7, atol=1e-10)
