"""Run every benchmark of the project and tabulate its ratios against their baselines, with peak memory.

Each ``benchmarks/bench_*.py`` runs as a subprocess with its quick default sizes (plus the arguments in
:data:`QUICK_ARGS`); its printed ratios are parsed (each script's own format, or a machine-readable
``RESULT name=... ratio=... target=>=X`` line), and the peak resident memory of its whole process tree
(dask workers and DataLoader workers included) is sampled every 50 ms. The table is printed and written,
with a description of the machine, to ``docs/benchmarks.md``.

    python benchmarks/run_all.py                       # everything, CPU quick sizes (~10 minutes on 2 cores)
    python benchmarks/run_all.py --only extract,ece    # a subset (names without "bench_")
    python benchmarks/run_all.py --args extract="--device cuda --n 50000 --amp" --doc docs/benchmarks_gpu.md

A ratio is always "ours vs the baseline" in the direction stated by its target (``>= 1`` means at least as
fast as the baseline); rows without a target are informational.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: Extra arguments of the quick run, per benchmark (name without ``bench_``).
QUICK_ARGS: dict[str, list[str]] = {
    "mediation": ["--sm-reps", "100"],  # statsmodels' time is measured on 100 simulations and scaled to 1,000
    "geometry": ["--small"],  # 100,000 x 512; the full 2,000,000 x 512 run: python benchmarks/bench_geometry.py
}

#: What each benchmark compares (for the table's notes).
DESCRIPTIONS: dict[str, str] = {
    "attacks": "cg.attacks.PGD vs torchattacks.PGD (same passes); cg.attacks.sweep vs torchattacks once per eps",
    "cifar_extract": "cg.extract of CIFAR-shaped 32x32 images with a PGD sweep over 4 eps (features, logits, attack "
                     "outcomes to Zarr) vs a bare loop running the same PGD at every eps and evaluating, time ratio",
    "ece": "top-label ECE (l1/l2/max) vs torchmetrics; ratio = our time / torchmetrics' time (lower is faster)",
    "extract": "cg.extract (hook, logits, Zarr writer thread) vs a bare no_grad forward loop, throughput ratio",
    "geometry": "the fused per-sample pass (norm, rms, cosines, confidence, NLL, Brier, margin) over a 100k x 512 "
                "dump (--small) vs reading the features once; peak RSS vs the 2 GiB bound",
    "mediation": "cluster bootstrap (1,000 replicates) vs statsmodels Mediation(...).fit(n_rep=1000), speed-up",
    "scaling": "in-process path (to_frame + mediate) vs the Dask path (LocalCluster + mediate_study) by size "
               "(crossover); study table and mediate_study on 1 vs 2 Dask workers (speed-up); mediate_study memory "
               "vs the in-process path; --big: out-of-core geometry of a 20-run study on 1 vs 2 workers",
}


@dataclass
class Result:
    bench: str
    measure: str
    ratio: float | None
    op: str = ""  # ">=" or "<=" or "" (no target)
    target: float | None = None
    note: str = ""

    @property
    def ok(self) -> str:
        if self.ratio is None:
            return "n/a"
        if not self.op:
            return "—"
        good = self.ratio >= self.target if self.op == ">=" else self.ratio <= self.target
        return "yes" if good else "NO"


@dataclass
class Run:
    name: str
    cmd: list[str]
    rc: int | None = None
    wall: float = 0.0
    peak: int = 0
    output: str = ""
    results: list[Result] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ parsers
_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_RESULT = re.compile(rf"^RESULT name=(\S+) ratio={_NUM}(?: target=(>=|<=){_NUM})?(.*)$", re.M)


def _generic(name: str, text: str) -> list[Result]:
    return [Result(name, m.group(1), float(m.group(2)), m.group(3) or "", float(m.group(4)) if m.group(4) else None,
                   m.group(5).strip()) for m in _RESULT.finditer(text)]


def _extract(name: str, text: str) -> list[Result]:
    m = re.search(rf"ratio extract/bare:\s*{_NUM}\s*\(target >= {_NUM}\)", text)
    return [Result(name, "extract / bare loop (throughput)", float(m.group(1)), ">=", float(m.group(2)))] if m else []


def _attacks(name: str, text: str) -> list[Result]:
    out = []
    m = re.search(rf"PGD L-inf.*?\| ratio {_NUM} \(target >= {_NUM}\)", text)
    if m:
        out.append(Result(name, "PGD vs torchattacks (time ratio ta/ours)", float(m.group(1)), ">=", float(m.group(2))))
    m = re.search(rf"eps sweep.*?\| ratio {_NUM} \(target >= {_NUM}", text)
    if m:
        out.append(Result(name, "eps sweep vs torchattacks per eps", float(m.group(1)), ">=", float(m.group(2))))
    return out


def _ece(name: str, text: str) -> list[Result]:
    agree = "values agree" in text
    return [Result(name, f"ECE {m.group(1)}: our time / torchmetrics", float(m.group(2)), "", None,
                   "values agree" if agree else "VALUES DISAGREE")
            for m in re.finditer(rf"norm=(\w+)\s.*?ratio ours/torchmetrics\s+{_NUM}", text)]


def _geometry(name: str, text: str) -> list[Result]:
    out = []
    m = re.search(rf"ratio geometry / read-once: {_NUM}", text)
    if m:
        ok = re.search(r"match numpy: (\w+)", text)
        out.append(Result(name, "geometry pass / read features once (time)", float(m.group(1)), "", None,
                          f"matches numpy: {ok.group(1)}" if ok else ""))
    m = re.search(rf"peak RSS during geometry: {_NUM} MiB .*?limit {_NUM} MiB", text)
    if m:
        out.append(Result(name, "peak RSS / 2 GiB bound", float(m.group(1)) / float(m.group(2)), "<=", 1.0,
                          f"{float(m.group(1)):.0f} MiB"))
    return out


def _mediation(name: str, text: str) -> list[Result]:
    out = []
    m = re.search(rf"speed-up: {_NUM}x for the whole mediate\(\) call, {_NUM}x for the .*?\(target: >= {_NUM}x\)", text)
    diff = re.search(rf"max \|diff\| = {_NUM}", text)
    note = f"point estimates vs exact OLS: {float(diff.group(1)):.1e}" if diff else ""
    if m:
        out.append(Result(name, "mediate() vs statsmodels (speed-up)", float(m.group(1)), ">=", float(m.group(3)),
                          note))
        out.append(Result(name, "bootstrap replicates alone vs statsmodels", float(m.group(2)), ">=",
                          float(m.group(3))))
    return out


PARSERS: dict[str, Callable[[str, str], list[Result]]] = {
    "extract": _extract, "attacks": _attacks, "ece": _ece, "geometry": _geometry, "mediation": _mediation,
}


def parse(name: str, text: str) -> list[Result]:
    """Ratios printed by benchmark ``name``: its ``RESULT`` lines, else its own format."""
    found = _generic(name, text)
    return found or PARSERS.get(name, lambda n, t: [])(name, text)


# ------------------------------------------------------------------------------------------------ running
def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_one(run: Run, timeout: float) -> Run:
    import psutil

    t0 = time.perf_counter()
    child = subprocess.Popen(run.cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc = psutil.Process(child.pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            run.peak = max(run.peak, _tree_rss(proc))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines: list[str] = []

    def read() -> None:
        for line in child.stdout:
            lines.append(line)
            print(f"    {line}", end="", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run.rc = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in proc.children(recursive=True):  # the benchmark's own workers, then the benchmark
            try:
                p.kill()
            except psutil.Error:
                pass
        child.kill()
        child.wait()
        run.rc = None
    stop.set()
    sampler.join()
    reader.join(timeout=5)
    run.wall = time.perf_counter() - t0
    run.output = "".join(lines)
    run.results = parse(run.name, run.output)
    return run


# ------------------------------------------------------------------------------------------------ machine
def machine() -> dict[str, str]:
    import psutil

    info: dict[str, str] = {}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info["CPU"] = cpu
    info["cores"] = f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)"
    try:
        info["cores"] += f", {len(os.sched_getaffinity(0))} usable by this process"
    except AttributeError:  # pragma: no cover - not Linux
        pass
    info["RAM"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    info["OS"] = f"{platform.system()} {platform.release()}"
    info["Python"] = platform.python_version()
    versions = {}
    for mod in ("torch", "torchvision", "numpy", "dask", "distributed", "xarray", "zarr", "pandas", "statsmodels",
                "torchmetrics", "torchattacks"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            versions[mod] = "not installed"
    info["packages"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    try:
        import torch

        if torch.cuda.is_available():
            info["GPU"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            info["CUDA"] = str(torch.version.cuda)
        else:
            info["GPU"] = "none (CUDA not available)"
    except ImportError:  # pragma: no cover
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["commit"] = commit + (" (with uncommitted changes)" if dirty else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    info["date"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return info


# ------------------------------------------------------------------------------------------------ output
def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def table(runs: list[Run]) -> list[list[str]]:
    rows = []
    for run in runs:
        status = "ok" if run.rc == 0 else ("TIMEOUT" if run.rc is None else f"exit {run.rc}")
        results = run.results or [Result(run.name, "(no ratio found)", None)]
        for i, r in enumerate(results):
            target = f"{r.op} {r.target:g}" if r.op else "—"
            rows.append([f"bench_{run.name}" if i == 0 else "", r.measure, _fmt(r.ratio), target, r.ok,
                         r.note, f"{run.wall:.0f}" if i == 0 else "", f"{run.peak / 2**20:,.0f}" if i == 0 else "",
                         status if i == 0 else ""])
    return rows


HEADER = ["benchmark", "measure", "ratio", "target", "met", "note", "wall (s)", "peak RSS (MiB)", "run"]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plain(rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*HEADER), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def write_doc(path: Path, runs: list[Run], rows: list[list[str]], info: dict[str, str], argv: list[str]) -> None:
    def command(r: Run) -> str:
        return " ".join(shlex.quote(c) for c in ["python", str(Path(r.cmd[1]).relative_to(REPO)), *r.cmd[2:]])

    notes = "\n".join(f"* `bench_{r.name}`: {DESCRIPTIONS.get(r.name, '')} — `{command(r)}`" for r in runs)
    machine_lines = "\n".join(f"* **{k}**: {v}" for k, v in info.items())
    raw = "\n\n".join(f"<details><summary>bench_{r.name} output (last lines)</summary>\n\n```\n"
                      + "\n".join(r.output.rstrip().splitlines()[-25:]) + "\n```\n</details>" for r in runs)
    text = f"""# Benchmarks

Produced by `python benchmarks/run_all.py{(' ' + ' '.join(shlex.quote(a) for a in argv)) if argv else ''}`: every
`benchmarks/bench_*.py` with its quick default sizes, each in its own process. **ratio** is ours against the
benchmark's baseline in the direction of its **target** (`>= 1`: at least as fast as the baseline; rows without a
target are informational). **peak RSS** is the largest resident memory of the benchmark's whole process tree
(including Dask workers), sampled every 50 ms; **wall** includes data generation and warm-up.
CUDA-only runs (bf16 extraction, PGD vs torchattacks on GPU, a 50,000-image CIFAR-shaped extraction) are made
by `benchmarks/gpu_check.sh` on a GPU machine. **Not run yet**: no GPU was lent to the session that built these
benchmarks, so the CUDA paths (bf16 clean pass, pinned memory / non-blocking copies, `channels_last` training) and the
targets "≥ 0.9× on CUDA" and "PGD ≥ 1.0× on CUDA" are unmeasured. Record its output here when it runs.

## Machine

{machine_lines}

## Results

{markdown(rows)}

## What is compared

{notes}

## Raw output

{raw}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated benchmark names (without bench_)")
    p.add_argument("--skip", help="comma-separated benchmark names to leave out")
    p.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                   help="extra arguments for one benchmark, e.g. extract=\"--device cuda --amp\" (repeatable)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark (default 1200)")
    p.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"), help="Markdown file to write")
    p.add_argument("--no-doc", action="store_true", help="print only")
    args = p.parse_args(argv)

    names = sorted(f.stem[len("bench_"):] for f in HERE.glob("bench_*.py"))
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            p.error(f"--only: unknown benchmark(s) {unknown}; available: {names}")
        names = [n for n in names if n in wanted]
    if args.skip:
        names = [n for n in names if n not in args.skip.split(",")]
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, sep, rest = item.partition("=")
        if not sep or name not in names:
            p.error(f"--args: expected NAME=ARGS with NAME among {names}, got {item!r}")
        extra[name] = shlex.split(rest)
    info = machine()
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    runs = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *QUICK_ARGS.get(name, []), *extra.get(name, [])]
        print(f"\n=== bench_{name}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
        run = run_one(Run(name, cmd), args.timeout)
        print(f"=== bench_{name}: {'ok' if run.rc == 0 else run.rc} in {run.wall:.0f} s, peak RSS "
              f"{run.peak / 2**20:,.0f} MiB", flush=True)
        runs.append(run)
    rows = table(runs)
    print("\n" + plain(rows))
    if not args.no_doc:
        write_doc(Path(args.doc), runs, rows, info, argv)
        print(f"\nwrote {args.doc}")
    missed = [f"bench_{r.bench}: {r.measure}" for run in runs for r in run.results if r.ok == "NO"]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 0 if all(r.rc == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
