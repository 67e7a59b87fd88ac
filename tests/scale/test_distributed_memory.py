"""A dask-backed metric on a dump larger than the workers' memory stays within their memory limit.

Two worker processes with ``memory_limit="400MiB"`` each (800 MiB together) compute class means and the
mean feature norm of a run whose features alone take 830 MiB: every task reads one Zarr chunk (8 MiB), so
each worker's peak resident memory (``VmHWM``, its whole lifetime) stays under its limit, no worker is
restarted by its nanny, and the numbers equal the in-process ones.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import causalgeom as cg
from causalgeom import distributed, geometry

pytestmark = pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning")

N, D, K, CHUNK = 850_000, 256, 10, 8192
LIMIT = 400 * 2**20


def _peak_rss() -> int:
    """Peak resident memory of this process since it started (``VmHWM``; ``getrusage``'s ``ru_maxrss`` would
    include the parent's high-water mark inherited through fork + exec)."""
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    g = da.random.default_rng(0)
    feats = g.random((N, D), dtype=np.float32, chunks=(CHUNK, D))
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((K, D)) / 16).astype(np.float32)
    b = np.zeros(K, np.float32)
    ds = xr.Dataset({"features": (("sample", "feature"), feats),
                     "logits": (("sample", "class"), (feats @ W.T + b).astype(np.float32)),
                     "label": (("sample",), g.integers(0, K, N, chunks=CHUNK)),
                     "head_weight": (("class", "feature"), W), "head_bias": (("class",), b)},
                    attrs={"schema_version": cg.SCHEMA_VERSION, "run_id": "large", "regularizer": "ce"})
    path = tmp_path_factory.mktemp("large") / "large.zarr"
    cg.save(ds, path, sample_chunk=CHUNK, check_values=False)
    return path


@pytest.mark.slow
def test_metric_on_dump_larger_than_worker_memory(large_run):
    ds = cg.open(large_run, verify=False)
    assert ds["features"].nbytes > 2 * LIMIT  # larger than both workers' memory together
    with dask.config.set(scheduler="threads"):
        ref_centers = geometry.class_centers(ds, kind="mean")
        ref_norm = float(geometry.magnitude(ds)["norm"].mean())
    # The limit is what the test measures (peak RSS below it), not a policy to enforce: with Dask's pause (80% of the
    # limit) a worker whose imports alone take ~200 MiB can sit above 320 MiB of unmanaged memory and run nothing
    # more, and the computation waits forever instead of failing. So no pause, no terminate: a worker that grew past
    # the limit fails the assertion below.
    with dask.config.set({"distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False}), \
            distributed.client(n_workers=2, threads_per_worker=1, memory_limit=LIMIT) as c:
        workers = set(c.scheduler_info()["workers"])
        centers = geometry.class_centers(cg.open(large_run, verify=False), kind="mean")
        norm = float(geometry.magnitude(cg.open(large_run, verify=False))["norm"].mean())
        peaks = c.run(_peak_rss)
        assert set(c.scheduler_info()["workers"]) == workers  # no worker was restarted (killed for memory)
    print(f"worker peak RSS (MiB): {[round(p / 2**20) for p in peaks.values()]}, limit {LIMIT / 2**20:.0f} MiB, "
          f"features {ds['features'].nbytes / 2**20:.0f} MiB")
    assert max(peaks.values()) < LIMIT
    xr.testing.assert_allclose(centers, ref_centers, rtol=1e-12)
    assert norm == pytest.approx(ref_norm, rel=1e-12)
