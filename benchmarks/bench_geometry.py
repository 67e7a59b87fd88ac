"""Benchmark: geometry (magnitude + cosine to minimal-loss centers) on a dump on disk, in bounded memory.

Writes an N x 512 float32 dump (Zarr, chunked along sample), then in the same run times

* reading the features array once (decompress + checksum every chunk, no arithmetic), and
* `magnitude` + `cosine_to_center(kind="minimal_loss")` computed together (one pass),

and prints the ratio and the peak resident memory (RSS, sampled every 5 ms by a thread, plus the
process's lifetime peak from getrusage), which must stay under 2 GiB. The first 20,000 samples
are also checked against an in-memory numpy computation.

    python benchmarks/bench_geometry.py                 # 400,000 x 512 (~0.8 GB on disk)
    python benchmarks/bench_geometry.py --full          # 2,000,000 x 512 (~4 GB on disk)
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

LIMIT = 2 * 2**30


class PeakRSS:
    """Sample this process's RSS in a background thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def write_dump(path: Path, n: int, d: int, k: int, chunk: int, seed: int) -> float:
    import dask.array as da
    import xarray as xr

    import causalgeom as cg

    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((k, d)) / np.sqrt(d)).astype(np.float32)
    b = (rng.standard_normal(k) * 0.1).astype(np.float32)
    drng = da.random.default_rng(seed)
    labels = drng.integers(0, k, size=n, chunks=chunk).astype(np.int64)
    noise = drng.standard_normal((n, d), chunks=(chunk, d), dtype=np.float32)
    feats = (noise + 2.0 * da.from_array(W, chunks=(k, d))[labels]).astype(np.float32)
    logits = (feats @ W.T + b).astype(np.float32)
    ds = xr.Dataset({"features": (("sample", "feature"), feats), "logits": (("sample", "class"), logits),
                     "label": (("sample",), labels), "head_weight": (("class", "feature"), W),
                     "head_bias": (("class",), b)},
                    attrs={"schema_version": cg.SCHEMA_VERSION, "run_id": "bench", "regularizer": "ce"})
    t0 = time.perf_counter()
    cg.save(ds, path, sample_chunk=chunk, check_values=False)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400_000, help="samples (default 400,000)")
    parser.add_argument("--d", type=int, default=512, help="feature dim (default 512)")
    parser.add_argument("--k", type=int, default=10, help="classes (default 10)")
    parser.add_argument("--full", action="store_true", help="2,000,000 samples")
    parser.add_argument("--chunk", type=int, default=16384, help="samples per chunk (default 16384 = 32 MiB)")
    parser.add_argument("--dir", default=None, help="where to write the dump (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the dump")
    parser.add_argument("--repeat", type=int, default=2, help="timings per method (best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = 2_000_000 if args.full else args.n

    import causalgeom as cg
    from causalgeom._blocks import compute
    from causalgeom.geometry import class_centers, cosine_to_center, magnitude

    root = Path(tempfile.mkdtemp(prefix="cg-bench-", dir=args.dir))
    path = root / "bench.zarr"
    try:
        print(f"writing {n:,} x {args.d} float32 features (K={args.k}, chunk {args.chunk}) to {path} ...", flush=True)
        t_write = write_dump(path, n, args.d, args.k, args.chunk, args.seed)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"  written in {t_write:.1f} s, {size / 2**30:.2f} GiB on disk")
        ds = cg.open(path, verify=False)
        feats = ds["features"].data

        def read_once():
            return feats.map_blocks(lambda blk: np.zeros((1,), np.int8), drop_axis=1, chunks=((1,) * feats.numblocks[0],),
                                    dtype=np.int8).sum().compute()

        def geometry():
            # one pass: the features chunks are shared by both graphs (see causalgeom._blocks.compute for why
            # not dask.compute on the xarray objects directly)
            mag, cos = compute(magnitude(ds), cosine_to_center(ds, "minimal_loss"))
            return mag, cos

        results = {}
        for name, fn in (("read features once", read_once), ("magnitude + cosine", geometry)):
            best, peak = float("inf"), 0
            for _ in range(args.repeat):
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    out = fn()
                    best = min(best, time.perf_counter() - t0)
                peak = max(peak, mem.peak)
            results[name] = (best, peak, out)
            print(f"  {name:20s} {best:7.2f} s   {n * args.d * 4 / best / 2**30:5.2f} GiB/s   peak RSS "
                  f"{peak / 2**20:7.0f} MiB")
        t_read, t_geo = results["read features once"][0], results["magnitude + cosine"][0]
        peak = results["magnitude + cosine"][1]
        lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        print(f"ratio geometry / read-once: {t_geo / t_read:.2f}")
        print(f"peak RSS during geometry: {peak / 2**20:.0f} MiB (process lifetime peak {lifetime / 2**20:.0f} MiB; "
              f"limit {LIMIT / 2**20:.0f} MiB) -> {'OK' if peak < LIMIT else 'OVER LIMIT'}")

        mag, cos = results["magnitude + cosine"][2]
        m = 20_000
        f = ds["features"][:m].values.astype(np.float64)
        C = class_centers(ds, "minimal_loss").values
        cosm = (f @ C.T) / np.linalg.norm(f, axis=1)[:, None] / np.linalg.norm(C, axis=1)[None]
        lab = ds["label"][:m].values
        ok = (np.allclose(mag["norm"].values[:m], np.linalg.norm(f, axis=1), rtol=1e-12)
              and np.allclose(cos["cos_true"].values[:m], cosm[np.arange(m), lab], rtol=1e-10, atol=1e-12))
        print(f"first {m:,} samples match numpy: {ok}")
        return 0 if ok and peak < LIMIT else 1
    finally:
        if args.keep:
            print(f"dump kept at {path}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
