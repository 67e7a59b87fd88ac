"""Scaling of the study table and the cluster bootstrap with the number of rows, on 1 vs 2 Dask workers.

Synthetic studies of ``--runs`` runs (half ``ce``, half ``label_smoothing``; feature dim ``--dim``) with
10^4, 10^5, ... up to ``--max-rows`` samples in total are written with ``cg.save`` (Zarr, chunks of
``--chunk`` samples). For each size, on a LocalCluster with 1 and then 2 worker processes, it times

* ``study_frame``: the per-sample study table (``study.to_frame()``; per-run graphs over the chunks on the
  workers, the rows collected in this process),
* ``mediate_study``: ``cg.distributed.mediate_study`` (per-run sufficient statistics as Dask tasks over the
  chunks, then the cluster bootstrap with ``--n-boot`` replicates in this process),

and once per size, in this process only,

* ``mediate(table)``: ``cg.causal.mediate`` on the study table (``n_boot`` replicates, cluster bootstrap),

and records the wall time and the peak resident memory of this process (increase over its level before the
operation) and of the workers (the largest worker), sampled every 20 ms.

    python benchmarks/bench_scaling.py                          # up to 10^5 rows (about a minute)
    python benchmarks/bench_scaling.py --max-rows 10000000 --docs docs    # figures + docs/scaling.md

The last lines are machine-readable (``RESULT name=... ratio=... target=...``): the 2-worker speed-up of
each operation at the largest size, and the peak-memory ratio of ``mediate_study`` to ``mediate(table)``.
"""

from __future__ import annotations

import argparse
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


def write_study(root: Path, rows: int, runs: int, dim: int, k: int, chunk: int, seed: int) -> Path:
    """A study of ``runs`` runs with ``rows`` samples in total (label smoothing shrinks the features)."""
    import dask.array as da
    import xarray as xr

    import causalgeom as cg

    study = cg.open_study(root / f"study-{rows}", create=True)
    per_run = rows // runs
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((k, dim)) / np.sqrt(dim)).astype(np.float32)
    b = (rng.standard_normal(k) * 0.1).astype(np.float32)
    for r in range(runs):
        reg = "ce" if r % 2 == 0 else "label_smoothing"
        scale = 1.0 if reg == "ce" else 0.7 + 0.05 * rng.standard_normal()
        g = da.random.default_rng(seed + 1000 * r + 1)
        labels = g.integers(0, k, per_run, chunks=chunk).astype(np.int64)
        noise = g.standard_normal((per_run, dim), chunks=(chunk, dim), dtype=np.float32)
        feats = (scale * (noise + 3.0 * da.from_array(W, chunks=(k, dim))[labels])).astype(np.float32)
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


def figures(rows_df, docs: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    styles = {("study_frame", 1): ("C0", "o", "-"), ("study_frame", 2): ("C0", "s", "--"),
              ("mediate_study", 1): ("C1", "o", "-"), ("mediate_study", 2): ("C1", "s", "--"),
              ("mediate(table)", 0): ("C2", "^", ":")}
    for metric, ylabel, fname in (("wall_s", "wall time (s)", "scaling_time.png"),
                                  ("client_mib", "peak RSS increase, client process (MiB)", "scaling_memory.png"),
                                  ("worker_mib", "peak RSS, largest worker (MiB)", "scaling_worker_memory.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for (op, w), (color, marker, ls) in styles.items():
            sub = rows_df[(rows_df.op == op) & (rows_df.workers == w)].sort_values("rows")
            if sub.empty or (metric == "worker_mib" and w == 0):
                continue
            label = f"{op}, {w} worker{'s' if w > 1 else ''}" if w else f"{op} (in process)"
            ax.plot(sub["rows"], sub[metric].clip(lower=1e-3), color=color, marker=marker, ls=ls, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows (samples in the study)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = docs / "figures" / fname
        fig.savefig(path, dpi=120)
        plt.close(fig)
        out.append(path)
    return out


def write_doc(rows_df, docs: Path, args: argparse.Namespace, figs: list[Path]) -> Path:
    import dask
    import pandas as pd

    tab = rows_df.copy()
    tab["rows"] = tab["rows"].map(lambda r: f"{r:,}")
    tab["workers"] = tab["workers"].map(lambda w: "in process" if w == 0 else str(w))
    for c in ("wall_s", "client_mib", "worker_mib"):
        tab[c] = tab[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}" if c == "wall_s" else f"{v:.0f}")
    tab = tab.rename(columns={"wall_s": "wall (s)", "client_mib": "client ΔRSS (MiB)",
                              "worker_mib": "worker peak RSS (MiB)"})
    header = "| " + " | ".join(tab.columns) + " |\n|" + "---|" * len(tab.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in tab.itertuples(index=False))
    text = f"""# Scaling: the study table and the cluster bootstrap, 10^4 to 10^{int(np.log10(args.max_rows))} rows

Measured by `python benchmarks/bench_scaling.py --max-rows {args.max_rows} --docs docs` on
{dt.date.today().isoformat()}: {machine()}; numpy {np.__version__}, dask {dask.__version__}.

Synthetic studies of {args.runs} runs (half `ce`, half `label_smoothing`), feature dim {args.dim}, {args.classes}
classes, Zarr chunks of {args.chunk:,} samples, no attack outcomes. Each size is measured on a `LocalCluster`
with 1 and with 2 worker processes (1 thread each; `causalgeom.distributed.client(n_workers=...)`):

* **study_frame** — `study.to_frame()`: per-run dask graphs over the chunks run on the workers; the per-sample
  rows (~{8 * 15} bytes each) are collected in the client, so its memory grows linearly with the rows.
* **mediate_study** — `cg.distributed.mediate_study(study, treatment="regularizer", mediators=["rms", "cos_true"],
  outcome="overconfidence", n_boot={args.n_boot})`: per-run sufficient statistics as Dask tasks over the chunks
  (only a few numbers per run leave the workers), then the cluster bootstrap in the client.
* **mediate(table)** — `cg.causal.mediate` on the table returned by `study_frame`, same question and `n_boot`,
  in the client only (it does not use the workers; the table is not included in its time).

"client ΔRSS" is the peak resident memory of the benchmark process above its level before the operation;
"worker peak RSS" is the largest worker process's peak (it includes ~180 MiB of imported libraries). Both are
sampled every 20 ms. This machine has few cores, so the 2-worker numbers share the CPU with the client and the
scheduler; on a real cluster the workers have their own cores.

{chr(10).join(f"![{p.stem}](figures/{p.name})" for p in figs)}

{header}{body}"""
    path = docs / "scaling.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-rows", type=float, default=1e4)
    p.add_argument("--max-rows", type=float, default=1e5, help="largest study, rows in total (default 10^5)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--chunk", type=int, default=131072, help="samples per Zarr chunk")
    p.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--dir", default=None, help="where to write the studies (default: a temporary folder)")
    p.add_argument("--docs", default=None, help="write figures/scaling_*.png and scaling.md into this folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.max_rows = int(args.max_rows)

    import warnings

    import dask
    import pandas as pd

    import causalgeom as cg
    from causalgeom import distributed

    warnings.filterwarnings("ignore", category=cg.causal.FewClustersWarning)
    warnings.filterwarnings("ignore", message="Port .* is already in use")
    sizes = [int(10 ** e) for e in range(int(round(np.log10(args.min_rows))), int(round(np.log10(args.max_rows))) + 1)]
    workers = [int(w) for w in args.workers.split(",")]
    question = dict(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["rms", "cos_true"],
                    outcome="overconfidence")
    root = Path(tempfile.mkdtemp(prefix="cg-scaling-", dir=args.dir))
    records: list[dict[str, Any]] = []
    try:
        studies = {}
        for rows in sizes:
            t0 = time.perf_counter()
            studies[rows] = write_study(root, rows, args.runs, args.dim, args.classes, args.chunk, args.seed)
            size = sum(f.stat().st_size for f in studies[rows].rglob("*") if f.is_file())
            print(f"wrote {rows:>10,} rows ({args.runs} runs) in {time.perf_counter() - t0:6.1f} s, "
                  f"{size / MIB:8.1f} MiB on disk", flush=True)
        for n_workers in workers:
            with distributed.client(n_workers=n_workers, threads_per_worker=1, memory_limit="auto") as c:
                pids = list(c.run(os.getpid).values())
                warm = cg.open_study(studies[sizes[0]])  # workers import their modules once, outside the timings
                warm.to_frame(progress=False)
                distributed.mediate_study(warm, n_boot=10, rng=0, **question)
                for rows in sizes:
                    study = cg.open_study(studies[rows])
                    for r in study.run_ids:  # open (and checksum-verify) once, outside the timings
                        study[r]
                    wall, cm, wm, table = measure(lambda: study.to_frame(progress=False), pids)
                    records.append(dict(rows=rows, workers=n_workers, op="study_frame", wall_s=wall, client_mib=cm,
                                        worker_mib=wm))
                    wall, cm, wm, res = measure(lambda: distributed.mediate_study(
                        study, n_boot=args.n_boot, rng=args.seed, **question), pids)
                    records.append(dict(rows=rows, workers=n_workers, op="mediate_study", wall_s=wall, client_mib=cm,
                                        worker_mib=wm))
                    if n_workers == workers[0]:
                        with dask.config.set(scheduler="sync"):
                            wall, cm, _, ref = measure(lambda: cg.causal.mediate(
                                table, n_boot=args.n_boot, rng=args.seed, **question), [])
                        records.append(dict(rows=rows, workers=0, op="mediate(table)", wall_s=wall, client_mib=cm,
                                            worker_mib=np.nan))
                        gap = float(np.max(np.abs(ref.summary()["estimate"].to_numpy()
                                                  - res.summary()["estimate"].to_numpy())))
                        if gap > 1e-8:
                            print(f"WARNING: mediate_study and mediate(table) differ by {gap:.2e}", flush=True)
                    del table
                    for rec in records[-3:] if n_workers == workers[0] else records[-2:]:
                        print(f"  {rec['rows']:>10,} rows  {rec['op']:15s} workers={rec['workers']}  "
                              f"{rec['wall_s']:8.2f} s  client +{rec['client_mib']:7.0f} MiB  "
                              f"worker {rec['worker_mib']:6.0f} MiB", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    df = pd.DataFrame(records)
    pd.set_option("display.width", 160)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    top = df[df.rows == sizes[-1]].set_index(["op", "workers"])
    if len(workers) > 1 and 1 in workers and 2 in workers:
        for op in ("study_frame", "mediate_study"):
            ratio = top.loc[(op, 1), "wall_s"] / top.loc[(op, 2), "wall_s"]
            print(f"RESULT name=scaling_{op}_speedup_2_workers ratio={ratio:.3f} target=>=1.0 "
                  f"rows={sizes[-1]}")
    ms = top.loc[("mediate_study", workers[0]), "client_mib"]
    mt = top.loc[("mediate(table)", 0), "client_mib"] + top.loc[("study_frame", workers[0]), "client_mib"]
    print(f"RESULT name=scaling_mediate_study_memory_vs_table ratio={max(ms, 1.0) / max(mt, 1.0):.3f} target=<=1.0 "
          f"rows={sizes[-1]}")
    if args.docs:
        docs = Path(args.docs)
        figs = figures(df, docs)
        print(f"wrote {write_doc(df, docs, args, figs)} and {', '.join(str(f) for f in figs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
