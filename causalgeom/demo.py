"""The demo study: train the default grid on digits, extract dumps with attack outcomes, write the report.

Each stage reads only the previous stage's stored output and skips finished work, so an
interrupted demo resumes where it stopped when run again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["run_demo", "DEMO_EPS", "demo_attacks"]

#: ε sweep of the demo (pixel scale [0, 1]); 8×8 digits need larger budgets than CIFAR's 1/255…8/255.
DEMO_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)


def demo_attacks():
    """The demo's attack: PGD under L∞, 7 steps, step size 2.5·ε/7, random start."""
    from .attacks import PGD

    return [PGD(norm="linf", steps=7, random_start=True)]


def run_demo(out: str | os.PathLike = "demo_out", *, preset: str | os.PathLike | None = None,
             progress: bool = True, log=print) -> Path:
    """Run the whole demo and return the path of the HTML report.

    Parameters
    ----------
    out : path
        Working folder: ``train/`` (checkpoints), ``study/`` (Zarr dumps), ``report/``.
    preset : path, optional
        Training grid (TOML); default: `causalgeom.train.default_grid()` (= ``pipelines/digits_default.toml``).
    progress : bool
        Progress bars for every stage.
    """
    from . import report as report_mod
    from .extract import extract_runs
    from .train import default_grid, load_grid, run_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = load_grid(preset) if preset else default_grid()
    t0 = time.perf_counter()
    log(f"[1/3] training the regularizer grid into {out / 'train'} (finished runs are skipped)")
    run_grid(grid, out / "train", progress=progress)
    log(f"      done in {time.perf_counter() - t0:.0f} s")
    t1 = time.perf_counter()
    log(f"[2/3] extracting features, logits, head and PGD outcomes into {out / 'study'}")
    extract_runs(out / "train", out / "study", split="test", attacks=demo_attacks(), eps=list(DEMO_EPS),
                 progress=progress)
    log(f"      done in {time.perf_counter() - t1:.0f} s")
    t2 = time.perf_counter()
    log("[3/3] metrics, mediation, interventions and the report")
    path = report_mod.report(out / "study", out=out / "report" / "report.html", progress=progress)
    log(f"      done in {time.perf_counter() - t2:.0f} s (total {time.perf_counter() - t0:.0f} s)")
    log(f"report: {path.resolve()}")
    return path
