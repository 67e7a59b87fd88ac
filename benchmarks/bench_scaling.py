"""When the out-of-core Dask path overtakes the in-process one, and what 2 workers buy over 1.

Synthetic studies of ``--runs`` runs (half ``ce``, half ``label_smoothing``, every run scoring the same images;
feature dim ``--dim``, default 512, float32) of ``--min-rows`` to ``--max-rows`` samples in total are written with
``cg.save`` (Zarr, chunks of ``--chunk`` samples). One mediation question (regularizer -> rms, cos_true ->
overconfidence, paired by image, ``--n-boot`` cluster-bootstrap replicates) is answered at each size by

* the **in-process path**, what a command does without a cluster: ``study.to_frame()`` (the fused pass over the
  chunks on dask's threads in this process, the per-sample table collected here) + ``cg.causal.mediate(table)``;
* the **Dask path**, what the automatic choice starts: a ``LocalCluster`` (2 worker processes x 1 thread, 1 BLAS
  thread each: Dask's ``OMP_NUM_THREADS=1`` pre-spawn setting, checked and printed) + ``mediate_study`` (per-run
  moments as Dask tasks over the chunks, two passes, nothing per-sample leaves the workers) + closing the cluster;
  its start and stop are timed once and added (the workers get `causalgeom.scale.WORKER_MALLOC_ENV`, as every
  LocalCluster `causalgeom.scale.client` starts: Dask's own malloc setting made the fused pass 45% slower
  per chunk),

and also ``study_frame`` / ``mediate_study`` on 1 and on 2 workers, and ``mediate_study`` in this process. Wall
time and the peak resident memory of this process (increase over its level before) and of the largest worker
are recorded (sampled every 20 ms). It prints the crossover (the size from which the Dask path stays faster,
log-log interpolated, or that none was found in range) and the rows at which the in-process path's measured
memory per row would fill a quarter of this machine's RAM; `causalgeom.scale.DASK_THRESHOLD_ROWS` is the smaller
of the two (docs/scaling.md).

``--big`` also writes a study of ``--big-runs`` x ``--big-rows-per-run`` x 512 (20 x 200,000: 7.6 GiB of float32
features, into ``--dir``) and times ``run_moments`` of the geometry + calibration columns (one fused pass) on a
LocalCluster of 1 and of 2 single-threaded workers, alternated twice, best of each.

    python benchmarks/bench_scaling.py                        # 10^4 .. 4x10^5 rows at d=512 (about a minute)
    python benchmarks/bench_scaling.py --max-rows 1e6 --big --dir /tmp    # + the 7.6 GiB study (minutes)

The last lines are machine-readable (``RESULT name=... ratio=... target=...``): the 2-worker speed-ups at the
largest size, the peak-memory ratio of ``mediate_study`` to the in-process path, and with ``--big`` the 2-worker
speed-up of the out-of-core geometry (target >= 1.6).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

MIB = 2**20


class PeakRSS:
    """Sample the RSS of this process and of the given worker pids; peaks in bytes."""

    def __init__(self, worker_pids: list[int], interval: float = 0.02):
        import psutil

        self.me = psutil.Process()
        self.workers = [psutil.Process(p) for p in worker_pids]
        self.interval = interval
        self.base = self.me.memory_info().rss
        self.client_peak = self.base
        self.worker_peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        self.client_peak = max(self.client_peak, self.me.memory_info().rss)
        for w in self.workers:
            try:
                self.worker_peak = max(self.worker_peak, w.memory_info().rss)
            except Exception:  # noqa: BLE001 - a worker may be restarting
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _features_block(labels: np.ndarray, W: np.ndarray, scale: float, seed: int, block_info: Any = None) -> np.ndarray:
    """Features of one chunk: ``scale * (noise + 3 W[label])`` (float32), its noise seeded by (seed, first row)."""
    row = block_info[0]["array-location"][0][0] if block_info else 0
    rng = np.random.default_rng([seed, row])
    f = rng.standard_normal((labels.shape[0], W.shape[1]), dtype=np.float32)
    f += 3.0 * W[labels]
    f *= np.float32(scale)
    return f


def write_study(root: Path, rows: int, runs: int, dim: int, k: int, chunk: int, seed: int,
                name: str | None = None) -> Path:
    """A study of ``runs`` runs with ``rows`` samples in total (label smoothing shrinks the features); every run
    scores the same sample ids (so analyses pair the runs by image)."""
    import dask.array as da
    import xarray as xr

    import causalgeom as cg

    study = cg.open_study(root / (name or f"study-{rows}"), create=True)
    per_run = rows // runs
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((k, dim)) / np.sqrt(dim)).astype(np.float32)
    b = (rng.standard_normal(k) * 0.1).astype(np.float32)
    labels = da.from_array(rng.integers(0, k, per_run).astype(np.int64), chunks=chunk)  # the same images
    for r in range(runs):
        reg = "ce" if r % 2 == 0 else "label_smoothing"
        scale = 1.0 if reg == "ce" else 0.7 + 0.05 * rng.standard_normal()
        feats = labels.map_blocks(_features_block, W, scale, seed + 1000 * r + 1, new_axis=1,
                                  chunks=(labels.chunks[0], (dim,)), dtype=np.float32)
        logits = (feats @ W.T + b).astype(np.float32)
        ds = xr.Dataset({"features": (("sample", "feature"), feats), "logits": (("sample", "class"), logits),
                         "label": (("sample",), labels), "head_weight": (("class", "feature"), W),
                         "head_bias": (("class",), b)},
                        attrs={"schema_version": cg.SCHEMA_VERSION, "run_id": f"r{r:02d}", "regularizer": reg,
                               "strength": 0.0 if reg == "ce" else 0.1, "seed": r})
        cg.save(ds, study.run_path(f"r{r:02d}"), sample_chunk=chunk, check_values=False)
    return study.path


def measure(fn: Callable[[], Any], pids: list[int]) -> tuple[float, float, float, Any]:
    """Wall seconds, client RSS increase (MiB), largest worker peak RSS (MiB), result."""
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed memory back to the OS so that the baseline of the increase is comparable between runs
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    with PeakRSS(pids) as mem:
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    return wall, (mem.client_peak - mem.base) / MIB, mem.worker_peak / MIB, out


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}")


def _sizes(lo: float, hi: float, per_decade: int) -> list[int]:
    n = int(np.floor(np.log10(hi / lo) * per_decade + 1e-9))
    return sorted({int(round(lo * 10 ** (i / per_decade), -2)) for i in range(n + 1)})


def crossover(sizes: list[int], inproc: list[float], dask_path: list[float]) -> tuple[float | None, str]:
    """The size from which the Dask path stays faster: log-log interpolation of the time ratio between the
    last size where in-process wins and the next; None and why when that does not happen in range."""
    faster = [d < i for d, i in zip(dask_path, inproc)]
    if all(faster):
        return None, f"the Dask path was faster at every size measured (crossover below {sizes[0]:,} rows)"
    last_slow = max(j for j, f in enumerate(faster) if not f)
    if last_slow == len(sizes) - 1:
        return None, f"no crossover up to {sizes[-1]:,} rows: the in-process path was faster at the largest size"
    a, b = last_slow, last_slow + 1
    ga, gb = np.log(dask_path[a] / inproc[a]), np.log(dask_path[b] / inproc[b])  # ga >= 0 > gb
    x = np.log(sizes[a]) + (np.log(sizes[b]) - np.log(sizes[a])) * ga / (ga - gb)
    return float(np.exp(x)), f"between {sizes[a]:,} and {sizes[b]:,} rows"


def _cluster_start(n_workers: int) -> tuple[Any, Any, float]:
    """Enter ``cg.distributed.client(n_workers)`` (1 thread per worker) and import the analysis on the workers;
    returns (context, client, seconds): what the automatic choice pays before its first task."""
    from causalgeom import distributed

    t0 = time.perf_counter()
    ctx = contextlib.ExitStack()
    c = ctx.enter_context(distributed.client(n_workers=n_workers, threads_per_worker=1, memory_limit="auto"))
    c.run(lambda: __import__("causalgeom.scale.dask") and None)
    return ctx, c, time.perf_counter() - t0


def _close(ctx: Any) -> float:
    t0 = time.perf_counter()
    ctx.__exit__(None, None, None)
    return time.perf_counter() - t0


def _blas_threads(c: Any) -> str:
    def info() -> list[int]:
        from threadpoolctl import threadpool_info

        return sorted({d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"})

    got = c.run(info)
    mmap = set(c.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")).values())
    return ", ".join(f"{w.rsplit(':', 1)[-1]}: {v}" for w, v in sorted(got.items())) + f"; malloc mmap threshold {mmap}"


#: The per-sample geometry and calibration columns of the --big part (run_moments of all of them: one fused pass).
GEOMETRY_COLUMNS = ["norm", "rms", "cos_true", "cos_pred", "confidence", "correct", "overconfidence", "nll", "brier"]


def crossover_part(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Time the in-process path and the Dask path of one mediation question over a range of study sizes."""
    import dask

    import causalgeom as cg
    from causalgeom import distributed

    question = dict(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["rms", "cos_true"],
                    outcome="overconfidence")
    sizes = _sizes(args.min_rows, args.max_rows, args.per_decade)
    workers = [int(w) for w in args.workers.split(",")]
    studies = {}
    for rows in sizes:
        t0 = time.perf_counter()
        studies[rows] = write_study(root, rows, args.runs, args.dim, args.classes, args.chunk, args.seed)
        size = sum(f.stat().st_size for f in studies[rows].rglob("*") if f.is_file())
        print(f"wrote {rows:>10,} rows ({args.runs} runs x d={args.dim}) in {time.perf_counter() - t0:6.1f} s, "
              f"{size / MIB:8.1f} MiB on disk", flush=True)
    records: list[dict[str, Any]] = []

    def rec(rows: int, workers: int, op: str, wall: float, cm: float = np.nan, wm: float = np.nan) -> None:
        records.append(dict(rows=rows, workers=workers, op=op, wall_s=wall, client_mib=cm, worker_mib=wm))
        print(f"  {rows:>10,} rows  {op:22s} {'in process' if workers == 0 else f'workers={workers}':10s} "
              f"{wall:8.2f} s  client +{cm:7.0f} MiB  worker {wm:6.0f} MiB", flush=True)

    refs = {}
    warm = cg.open_study(studies[sizes[0]])  # this process imports its modules once, outside the timings
    warm.to_frame(progress=False)
    for rows in sizes:
        study = cg.open_study(studies[rows])
        for r in study.run_ids:  # open (and checksum-verify) once, outside the timings
            study[r]
        with dask.config.set(scheduler="threads"):
            wall, cm, _, table = measure(lambda: study.to_frame(progress=False), [])
            rec(rows, 0, "study_frame", wall, cm)
            wall, cm, _, refs[rows] = measure(lambda: cg.causal.mediate(table, n_boot=args.n_boot, rng=args.seed,
                                                                        **question), [])
            rec(rows, 0, "mediate(table)", wall, cm)
            del table
            wall, cm, _, _ = measure(lambda: distributed.mediate_study(study, n_boot=args.n_boot, rng=args.seed,
                                                                      **question), [])
            rec(rows, 0, "mediate_study", wall, cm)
    for n_workers in workers:
        ctx, c, start = _cluster_start(n_workers)
        try:
            pids = list(c.run(os.getpid).values())
            print(f"LocalCluster with {n_workers} worker(s) x 1 thread started in {start:.2f} s; BLAS threads per "
                  f"worker {_blas_threads(c)}", flush=True)
            distributed.mediate_study(warm, n_boot=10, rng=0, **question)  # the workers' first tasks import more
            warm.to_frame(progress=False)
            for rows in sizes:
                study = cg.open_study(studies[rows])
                for r in study.run_ids:
                    study[r]
                wall, cm, wm, table = measure(lambda: study.to_frame(progress=False), pids)
                rec(rows, n_workers, "study_frame", wall, cm, wm)
                del table
                wall, cm, wm, res = measure(lambda: distributed.mediate_study(
                    study, n_boot=args.n_boot, rng=args.seed, **question), pids)
                rec(rows, n_workers, "mediate_study", wall, cm, wm)
                gap = float(np.max(np.abs(refs[rows].summary()["estimate"].to_numpy()
                                          - res.summary()["estimate"].to_numpy())))
                if gap > 1e-8:  # same estimator from per-run moments: summation order only
                    print(f"WARNING: mediate_study and mediate(table) differ by {gap:.2e}", flush=True)
        finally:
            stop = _close(ctx)
        rec(0, n_workers, "cluster start+stop", start + stop)
    return records


def big_part(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """run_moments of the geometry + calibration columns of a large study on 1 vs 2 workers (best of 2 each)."""
    import dask

    import causalgeom as cg
    from causalgeom import distributed

    rows = args.big_runs * args.big_rows_per_run
    t0 = time.perf_counter()
    path = write_study(root, rows, args.big_runs, 512, args.classes, args.chunk, args.seed, name="big")
    gib = args.big_runs * args.big_rows_per_run * 512 * 4 / 2**30
    print(f"wrote the big study: {args.big_runs} runs x {args.big_rows_per_run:,} x 512 float32 "
          f"({gib:.2f} GiB of features) in {time.perf_counter() - t0:.0f} s", flush=True)
    study = cg.open_study(path)
    for r in study.run_ids:
        study[r]
    small = cg.open_study(write_study(root, 2000, 2, 512, args.classes, args.chunk, args.seed, name="warm"))
    records = []
    for n_workers in (1, 2, 1, 2):  # alternated: the page cache and the other load of the machine fall alike
        ctx, c, _ = _cluster_start(n_workers)
        try:
            pids = list(c.run(os.getpid).values())
            distributed.run_moments(small, GEOMETRY_COLUMNS)
            wall, cm, wm, _ = measure(lambda: distributed.run_moments(study, GEOMETRY_COLUMNS), pids)
            blas = _blas_threads(c)
        finally:
            _close(ctx)
        records.append(dict(rows=rows, workers=n_workers, op="run_moments(geometry)", wall_s=wall, client_mib=cm,
                            worker_mib=wm))
        print(f"  run_moments of {len(GEOMETRY_COLUMNS)} columns, {n_workers} worker(s) x 1 thread (BLAS threads "
              f"{blas}): {wall:7.2f} s = {gib / wall:.2f} GiB/s of features; largest worker {wm:.0f} MiB, "
              f"client +{cm:.0f} MiB", flush=True)
    with dask.config.set(scheduler="threads"):
        wall, cm, _, _ = measure(lambda: distributed.run_moments(study, GEOMETRY_COLUMNS), [])
    records.append(dict(rows=rows, workers=0, op="run_moments(geometry)", wall_s=wall, client_mib=cm,
                        worker_mib=np.nan))
    print(f"  run_moments in this process (dask threads, {os.cpu_count()} threads, 1 BLAS thread each): "
          f"{wall:7.2f} s = {gib / wall:.2f} GiB/s; client +{cm:.0f} MiB", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-rows", type=float, default=1e4, help="smallest study, rows in total (default 10^4)")
    p.add_argument("--max-rows", type=float, default=4e5, help="largest study, rows in total (default 4x10^5)")
    p.add_argument("--per-decade", type=int, default=2, help="sizes per decade between them (default 2)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--chunk", type=int, default=16384, help="samples per Zarr chunk (16,384 x 512 = 32 MiB)")
    p.add_argument("--workers", default="1,2", help="worker counts of the Dask path (default 1,2)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--big", action="store_true",
                   help="also time run_moments on a large study (--big-runs x --big-rows-per-run x 512; 7.6 GiB "
                        "of features by default, written to --dir) on 1 vs 2 workers")
    p.add_argument("--big-only", action="store_true", help="only the --big part")
    p.add_argument("--big-runs", type=int, default=20)
    p.add_argument("--big-rows-per-run", type=int, default=200_000)
    p.add_argument("--dir", default=None, help="where to write the studies (default: a temporary folder)")
    p.add_argument("--docs", default=None, help="write figures/scaling_*.png and scaling.md into this folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.big = args.big or args.big_only

    import warnings

    import pandas as pd

    import causalgeom as cg

    warnings.filterwarnings("ignore", category=cg.causal.FewClustersWarning)
    warnings.filterwarnings("ignore", message="Port .* is already in use")
    print(f"machine: {machine()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="cg-scaling-", dir=args.dir))
    records: list[dict[str, Any]] = []
    big: list[dict[str, Any]] = []
    try:
        if not args.big_only:
            records = crossover_part(args, root)
        if args.big:
            big = big_part(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    pd.set_option("display.width", 160)
    lines = []
    if records:
        df = pd.DataFrame(records)
        print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        sizes = sorted(set(df.rows) - {0})
        wall = df.set_index(["op", "workers", "rows"])["wall_s"]
        inproc = [wall[("study_frame", 0, r)] + wall[("mediate(table)", 0, r)] for r in sizes]
        startstop = wall[("cluster start+stop", 2, 0)] if ("cluster start+stop", 2, 0) in wall.index else np.nan
        dask_path = [startstop + wall[("mediate_study", 2, r)] for r in sizes] if np.isfinite(startstop) else []
        print("\nin-process path = study.to_frame() + cg.causal.mediate(table) in this process (dask threads);")
        print("Dask path = LocalCluster(2 workers x 1 thread) start + mediate_study + stop "
              f"({startstop:.2f} s of start+stop)")
        for r, a, b in zip(sizes, inproc, dask_path):
            lines.append(f"  {r:>10,} rows ({r * args.dim * 4 / 2**30:7.3f} GiB of features): in-process "
                         f"{a:7.2f} s, Dask path {b:7.2f} s, ratio in-process/Dask {a / b:5.2f}")
        print("\n".join(lines))
        if dask_path:
            x, why = crossover(sizes, inproc, dask_path)
            if x is None:
                print(f"CROSSOVER none in range: {why}")
                r0, r1 = inproc[-2] / dask_path[-2] if len(sizes) > 1 else np.nan, inproc[-1] / dask_path[-1]
                if len(sizes) > 1 and r0 < r1 < 1:  # in-process still faster but its lead shrinking
                    slope = np.log(r1 / r0) / np.log(sizes[-1] / sizes[-2])
                    print(f"EXTRAPOLATED parity near {sizes[-1] * np.exp(-np.log(r1) / slope):,.0f} rows (log-log "
                          "trend of the time ratio over the last two sizes; not measured)")
            else:
                print(f"CROSSOVER rows={x:,.0f} features_gib={x * args.dim * 4 / 2**30:.3f} ({why}; log-log "
                      f"interpolation of the time ratio; d={args.dim}, float32)")
            print(f"RESULT name=scaling_inprocess_over_dask_path_at_largest ratio={inproc[-1] / dask_path[-1]:.3f} "
                  f"rows={sizes[-1]} (>1: the Dask path is faster)")
        mem = df[(df.rows == sizes[-1]) & (df.workers == 0) & df.op.isin(["study_frame", "mediate(table)"])]
        per_row = float(mem.client_mib.sum()) * MIB / sizes[-1]
        import psutil

        quarter = psutil.virtual_memory().total / 4 / per_row
        print(f"MEMORY in-process path: {per_row:.0f} bytes per row at its peak (to_frame + mediate, at "
              f"{sizes[-1]:,} rows); a quarter of this machine's RAM holds {quarter:,.0f} rows")
        top = df[df.rows == sizes[-1]].set_index(["op", "workers"])["wall_s"]
        for op in ("study_frame", "mediate_study"):
            if (op, 1) in top.index and (op, 2) in top.index:
                print(f"RESULT name=scaling_{op}_speedup_2_workers ratio={top[(op, 1)] / top[(op, 2)]:.3f} "
                      f"target=>=1.0 rows={sizes[-1]}")
        cmi = df[df.rows == sizes[-1]].set_index(["op", "workers"])["client_mib"]
        w0 = [w for w in (1, 2) if ("mediate_study", w) in cmi.index]
        if w0:
            ms = cmi[("mediate_study", w0[0])]
            mt = cmi[("mediate(table)", 0)] + cmi[("study_frame", 0)]
            print(f"RESULT name=scaling_mediate_study_memory_vs_table ratio={max(ms, 1.0) / max(mt, 1.0):.3f} "
                  f"target=<=1.0 rows={sizes[-1]}")
    if big:
        b = pd.DataFrame(big)
        print(b.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        best = b[b.workers > 0].groupby("workers")["wall_s"].min()
        print(f"RESULT name=scaling_geometry_speedup_2_workers ratio={best[1] / best[2]:.3f} target=>=1.6 "
              f"rows={int(b.rows.iloc[0])} (run_moments of the geometry+calibration columns, best of 2 each)")
    if args.docs and records:
        print(f"wrote {write_doc(pd.DataFrame(records), Path(args.docs), args, lines)}")
    return 0


def write_doc(df: Any, docs: Path, args: argparse.Namespace, lines: list[str]) -> Path:
    """Append the measured table of this run to docs/scaling.md's measurement section (between markers)."""
    path = docs / "scaling.md"
    text = path.read_text() if path.exists() else "# Scaling\n"
    tab = df.copy()
    tab["workers"] = tab["workers"].map(lambda w: "in process" if w == 0 else str(w))
    body = "| rows | workers | op | wall (s) | client ΔRSS (MiB) | worker peak RSS (MiB) |\n|---|---|---|---|---|---|\n"
    body += "".join(f"| {f'{r.rows:,}' if r.rows else '—'} | {r.workers} | {r.op} | {r.wall_s:.2f} | "
                    f"{'' if np.isnan(r.client_mib) else f'{r.client_mib:.0f}'} | "
                    f"{'' if np.isnan(r.worker_mib) else f'{r.worker_mib:.0f}'} |\n" for r in tab.itertuples())
    block = (f"<!-- bench_scaling:begin -->\nMeasured by `python benchmarks/bench_scaling.py` on "
             f"{dt.date.today().isoformat()}: {machine()}.\n\n```\n" + "\n".join(lines) + "\n```\n\n" + body
             + "<!-- bench_scaling:end -->")
    if "<!-- bench_scaling:begin -->" in text:
        head, rest = text.split("<!-- bench_scaling:begin -->", 1)
        text = head + block + rest.split("<!-- bench_scaling:end -->", 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


if __name__ == "__main__":
    sys.exit(main())
