"""The out-of-core analysis (`run_moments`, `mediate_study`) reads each chunk of a run's features once per pass.

Reads are counted on the Zarr LocalStore (as for ``Study.to_frame`` in tests/metrics/test_fused.py); the computation runs
in this process (dask's threaded scheduler), where the counter sees every read. The values are checked against the
in-memory study table (`causalgeom.metrics.table.run_table`, itself checked against outside references in test_fused).
"""

from __future__ import annotations


import dask
import numpy as np
import pytest

import causalgeom as cg
from causalgeom import distributed, table

from .._reads import ReadCounter
from causalgeom.testing import make_run

pytestmark = pytest.mark.filterwarnings("ignore::causalgeom.causal.FewClustersWarning")

N, CHUNK = 300, 64  # ceil(300 / 64) = 5 sample chunks per run


@pytest.fixture(scope="module")
def chunked_study(tmp_path_factory):
    """4 runs stored in `CHUNK`-sample chunks, checksums verified (the read counts below depend on both)."""
    st = cg.open_study(tmp_path_factory.mktemp("reads") / "study", create=True)
    for i in range(4):
        reg = "ce" if i % 2 == 0 else "label_smoothing"
        ds = make_run(n=N, d=8, k=4, seed=i, run_id=f"r{i}", scale=1.0 if reg == "ce" else 0.7, regularizer=reg,
                      strength=0.0 if reg == "ce" else 0.1)
        cg.save(ds, st.run_path(f"r{i}"), sample_chunk=CHUNK)
    for rid in st.run_ids:  # the first open verifies the checksums (reads every file); not counted
        st[rid]
    return st


def _per_chunk(reads: ReadCounter, var: str) -> set[int]:
    got = reads.chunks(var)
    assert len(got) == 4 * 5, sorted(got)  # every chunk of every run was read
    return set(got.values())


COLS = ["norm", "rms", "cos_true", "cos_pred", "confidence", "correct", "overconfidence", "nll", "brier"]


def test_run_moments_reads_each_chunk_once_and_matches_the_table(chunked_study, monkeypatch):
    reads = ReadCounter(monkeypatch)
    with dask.config.set(scheduler="threads"):
        mom = distributed.run_moments(chunked_study, COLS)
    assert _per_chunk(reads, "features") == {1}
    assert _per_chunk(reads, "logits") == {1}
    for rid in chunked_study.run_ids:
        x = table.run_table(chunked_study[rid])[COLS].to_numpy(float)
        m = mom[rid]
        assert m.n == N and not m.nonfinite.any()
        # chunked pairwise (Chan et al.) vs one-shot sums of the same float64 values: summation order only
        np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(m.comoment, (x - x.mean(0)).T @ (x - x.mean(0)), rtol=1e-9, atol=1e-12)


def test_derived_min_flip_takes_the_fused_correctness_without_a_second_read_of_the_logits(chunked_study, monkeypatch):
    ds0 = chunked_study[chunked_study.run_ids[0]]
    assert "adv_correct" in ds0.variables and "min_flip_eps" not in ds0.variables  # derived, not stored
    flip = [c for c in table.run_table(ds0).columns if c.startswith("min_flip_eps[")]
    cols = ["norm", "correct"] + flip + [c for c in table.run_table(ds0).columns if c.startswith("robust[")][:1]
    reads = ReadCounter(monkeypatch)
    with dask.config.set(scheduler="threads"):
        mom = distributed.run_moments(chunked_study, cols)
    assert _per_chunk(reads, "features") == {1}
    assert _per_chunk(reads, "logits") == {1}
    monkeypatch.undo()
    for rid in chunked_study.run_ids:
        x = table.run_table(chunked_study[rid])[cols].to_numpy(float)
        finite = np.isfinite(x)  # inf = no swept eps flips the sample; run_moments counts it and sums it as 0
        np.testing.assert_array_equal(mom[rid].nonfinite, (~finite).sum(0))
        # min_flip_eps is the same float32 value either way (robustness.flip_given_clean); sums: order only
        np.testing.assert_allclose(mom[rid].mean, np.where(finite, x, 0).mean(0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("paired_by, passes", [(None, 1), ("sample", 2)])
def test_mediate_study_reads_each_chunk_once_per_pass(chunked_study, monkeypatch, paired_by, passes):
    kw = dict(treatment="regularizer", mediators=["rms", "cos_true"], outcome=["overconfidence", "nll"], n_boot=0,
              rng=0, paired_by=paired_by)
    reads = ReadCounter(monkeypatch)
    with dask.config.set(scheduler="threads"):
        res = distributed.mediate_study(chunked_study, **kw)
    # unpaired: one pass; paired: the runs' moments share the image-mean pass, then the demeaned moments
    assert _per_chunk(reads, "features") == {passes}
    assert _per_chunk(reads, "logits") == {passes}
    monkeypatch.undo()
    with dask.config.set(scheduler="threads"):
        ref = cg.causal.mediate(chunked_study.to_frame(progress=False), **kw)
    assert res.design == ref.design
    # per-run moments vs the rows' regression: floating-point summation order only
    np.testing.assert_allclose(res.summary()["estimate"].to_numpy(), ref.summary()["estimate"].to_numpy(),
                               rtol=1e-8, atol=1e-10)


def test_missing_head_falls_back_to_mean_centers(tmp_path):
    st = cg.open_study(tmp_path / "study", create=True)
    ds = make_run(n=50, d=4, k=3, seed=0, run_id="nohead", regularizer="ce", strength=0.0)
    cg.save(ds.drop_vars(["head_weight", "head_bias"]), st.run_path("nohead"), sample_chunk=25)
    with pytest.warns(UserWarning, match="no head_weight"):  # the in-process table's rule (headless_center)
        fallback = distributed.run_moments(st, ["cos_true"])["nohead"]
    np.testing.assert_array_equal(fallback.mean, distributed.run_moments(st, ["cos_true"], center="mean")["nohead"].mean)
    mom = distributed.run_moments(st, ["norm"], center="mean")["nohead"]  # mean centers need no head
    no_cos = distributed.run_moments(st, ["norm"])["nohead"]  # no cosine asked: no centers, no head needed
    np.testing.assert_array_equal(no_cos.mean, mom.mean)  # the same norms, the same sums: exact
    np.testing.assert_allclose(mom.mean[0], np.linalg.norm(ds["features"].values.astype(float), axis=1).mean(),
                               rtol=1e-12)
