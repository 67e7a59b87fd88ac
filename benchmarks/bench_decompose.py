"""`cg.causal.decompose` on an ImageNet-shaped study: time against one read of the same runs, and peak memory.

The study has 3 + 3 runs (ce, mixup) scoring the same images; each run stores features (n × d), logits (n × K),
labels and its head, saved in chunks of 4,096 images. Three measurements, each in its own subprocess (so that
its peak RSS is its own):

* ``read``: one pass over every run's logits and features, chunk by chunk (what any fused pass must read);
* ``decompose``: the default function-level split of signed ECE and NLL (reads the logits once per run);
* ``decompose-rep``: the representation-level split (head, magnitude, direction; reads the features once).

Peak RSS is reported at n and at n / 2 images: with the block-by-block pass it does not grow with n
(apart from the O(n) per-image output).

    python benchmarks/bench_decompose.py --small            # 6 runs x 16,000 x 256, 100 classes, 2,048-row blocks
    python benchmarks/bench_decompose.py                    # 6 runs x 50,000 x 2,048, 1,000 classes (~15 GB)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 4096


def make_study(path: Path, n: int, d: int, k: int, seed: int = 0) -> None:
    import dask.array as da
    import xarray as xr

    import causalgeom as cg

    study = cg.open_study(path, create=True)
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal((k, d)) / np.sqrt(d)).astype(np.float32)
    labels = da.random.default_rng(seed).integers(0, k, size=n, chunks=CHUNK).astype(np.int64)
    for arm, scale in (("ce", 2.0), ("mixup", 1.2)):
        for s in range(3):
            r = np.random.default_rng(100 * s + len(arm))
            W = (base + 0.2 * r.standard_normal((k, d)) / np.sqrt(d)).astype(np.float32)
            b = (0.1 * r.standard_normal(k)).astype(np.float32)
            noise = da.random.default_rng(1000 * s + len(arm)).standard_normal((n, d), chunks=(CHUNK, d),
                                                                                dtype=np.float32)
            feats = (scale * (noise + 3.0 * da.from_array(base, chunks=(k, d))[labels])).astype(np.float32)
            logits = (feats @ W.T + b).astype(np.float32)
            ds = xr.Dataset({"features": (("sample", "feature"), feats), "logits": (("sample", "class"), logits),
                             "label": (("sample",), labels), "head_weight": (("class", "feature"), W),
                             "head_bias": (("class",), b)},
                            attrs={"schema_version": cg.SCHEMA_VERSION, "run_id": f"{arm}-s{s}", "regularizer": arm,
                                   "seed": s, "init_digest": f"bench-{s}"})
            cg.save(ds, path / f"{arm}-s{s}.zarr", sample_chunk=CHUNK, check_values=False)
    del study


def _child(mode: str, path: str) -> None:
    import causalgeom as cg
    from causalgeom.metrics.blocks import run_array

    study = cg.open_study(path)
    t0 = time.perf_counter()
    if mode == "read":
        total = 0.0
        for rid in study.runs["run_id"]:
            ds = study[rid]
            for name in ("logits", "features"):
                arr = run_array(ds, name)
                for i in range(0, arr.shape[0], CHUNK):
                    total += float(np.asarray(arr[i:i + CHUNK]).sum(dtype=np.float64))
    else:
        factors = ("scale", "shape") if mode == "decompose" else ("head", "magnitude", "direction")
        rows = int(os.environ.get("BENCH_BLOCK_ROWS", "0")) or None
        cg.causal.decompose(study, control="ce", treated="mixup", outcome=["signed_ece", "nll"], factors=factors,
                            rng=0, estimand="runs", block_rows=rows)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": dt, "peak_rss": peak}))


def measure(mode: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="6 runs x 16,000 x 256, 100 classes")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    n, d, k = (16_000, 256, 100) if args.small else (50_000, 2048, 1000)
    if args.small:  # blocks smaller than the study, so that both sizes read several blocks
        os.environ["BENCH_BLOCK_ROWS"] = "2048"
    print(f"decompose on 6 runs (3 ce + 3 mixup), features {d}, {k} classes, blocks of "
          f"{os.environ.get('BENCH_BLOCK_ROWS') or 'default'} rows; peak RSS per subprocess")
    print("| images | measurement | seconds | vs one read | peak RSS (MiB) |")
    print("|---:|---|---:|---:|---:|")
    for size in (n // 2, n):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "study"
            make_study(path, size, d, k)
            base = measure("read", path)
            for mode in ("read", "decompose", "decompose-rep"):
                m = base if mode == "read" else measure(mode, path)
                print(f"| {size} | {mode} | {m['seconds']:.2f} | {m['seconds'] / base['seconds']:.2f}x | "
                      f"{m['peak_rss'] / 2 ** 20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
