"""The demo study: train the demo grid on digits, extract dumps with attack outcomes, write the report.

The demo grid (`DEMO_PRESET`, = ``pipelines/digits_demo.toml``) is the default training preset
(`causalgeom.pipeline.train.DEFAULT_PRESET`) with 5 seeds per regularizer and shorter training, so that the
report's run-level inference can say something (randomization p-values down to 2 / C(10, 5) ≈ 0.008
instead of 0.10 with 3 + 3 runs) while ``bash scripts/demo.sh`` stays within a few minutes on 2 cores.
Extraction stores the attacked images' features (``save_adv``), so the report's decomposition also splits
robust accuracy. Each stage reads only the previous stage's stored output and skips finished work, so an
interrupted demo resumes where it stopped when run again.
"""

from __future__ import annotations

import os
import time
from typing import Any
from pathlib import Path

__all__ = ["run_demo", "demo_grid", "DEMO_PRESET", "DEMO_SEEDS", "DEMO_EPOCHS", "DEMO_EPS", "DEMO_ROBUST_EPS",
           "DEMO_SCALES", "DEMO_ALPHAS", "demo_attacks", "robust_interventions"]

#: Seeds per regularizer of the demo grid: 5 + 5 runs give run-level p-values down to 2 / C(10, 5) ≈ 0.008.
DEMO_SEEDS = (0, 1, 2, 3, 4)
#: Training epochs of the demo grid (the default preset trains 100; see `DEMO_PRESET`).
DEMO_EPOCHS = 40


def _demo_preset() -> dict[str, Any]:
    from .pipeline.train import DEFAULT_PRESET

    train = {**DEFAULT_PRESET["train"], "epochs": DEMO_EPOCHS}
    return {**DEFAULT_PRESET, "name": "digits_demo",
            "description": f"Demo preset: ce, label smoothing 0.1, mixup 1.0, cutmix 1.0 x {len(DEMO_SEEDS)} seeds on "
                           f"digits (small CNN, {DEMO_EPOCHS} epochs).",
            "seeds": list(DEMO_SEEDS), "train": train}


#: The demo's training grid: `causalgeom.pipeline.train.DEFAULT_PRESET` with `DEMO_SEEDS` and `DEMO_EPOCHS`
#: (the same dict as ``pipelines/digits_demo.toml``; a test checks it).
DEMO_PRESET: dict[str, Any] = _demo_preset()


def demo_grid():
    """`DEMO_PRESET` as a `causalgeom.pipeline.train.GridConfig`."""
    from .pipeline.train import GridConfig

    return GridConfig.from_dict(DEMO_PRESET)

#: ε sweep of the demo (pixel scale [0, 1]); 8×8 digits need larger budgets than CIFAR's 1/255…8/255.
DEMO_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)


#: Grids of the in-model interventions (feature scale s, rotation fraction alpha toward the predicted-class center).
DEMO_SCALES = (0.25, 1.0, 4.0)
DEMO_ALPHAS = (-0.25, 0.0, 0.5)
#: ε budgets of the in-model interventions (a subset of `DEMO_EPS`, to keep the demo short).
DEMO_ROBUST_EPS = (4 / 255, 16 / 255, 32 / 255)


def robust_interventions(train_dir: str | os.PathLike, study_dir: str | os.PathLike,
                         out_dir: str | os.PathLike, *, n: int = 200) -> dict[str, Any]:
    """Robust accuracy of the first cross-entropy run with its features rescaled or rotated inside the model.

    The model is wrapped as head ∘ T ∘ backbone (`causalgeom.interventions.InterventionModel`) and
    attacked with the demo's PGD sweep on the first ``n`` test images; T rescales the feature by s
    or rotates it toward its predicted-class minimal-loss center by a fraction α of the angle.
    Results are stored as Zarr under ``out_dir`` and reused when present.

    Returns
    -------
    dict
        ``{"rescale": Dataset (scale, attack, eps), "rotate": Dataset (alpha, attack, eps)}``.
    """
    import torch
    import xarray as xr

    from . import interventions as iv
    from .pipeline.data import load_dataset
    from .metrics.geometry import class_centers
    from .dump.study import open_study
    from .pipeline.train import load_checkpoint

    out_dir = Path(out_dir)
    study = open_study(study_dir)
    runs = study.runs
    ce = runs[runs["regularizer"] == "ce"]["run_id"].tolist()
    if not ce:
        return {}
    run_id = ce[0]
    results = {}
    for kind in ("rescale", "rotate"):
        path = out_dir / f"robust_{kind}_{run_id}.zarr"
        if path.exists():
            results[kind] = xr.open_zarr(path, consolidated=False).load()
    if len(results) == 2:
        return results
    model, config = load_checkpoint(Path(train_dir) / "runs" / run_id)
    data = load_dataset(config["dataset"], "test", root=config.get("data_root"))
    xs, ys = zip(*(data[i] for i in range(min(n, len(data)))))
    x, y = torch.stack(xs), torch.as_tensor(ys)
    centers = class_centers(study[run_id], kind="minimal_loss")
    grids = {"rescale": [iv.Rescale(s) for s in DEMO_SCALES],
             "rotate": [iv.Rotate(a, centers, toward="predicted") for a in DEMO_ALPHAS]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, transforms in grids.items():
        if kind in results:
            continue
        res = iv.robust_dose_response(model, x, y, transforms, demo_attacks(), list(DEMO_ROBUST_EPS), n_boot=500,
                                      rng=0, generator=torch.Generator().manual_seed(0))
        res = res.drop_vars("adv_correct", errors="ignore")
        res.attrs.update(run_id=run_id, n_samples=int(len(y)))
        tmp = out_dir / f".robust_{kind}_{run_id}.partial"
        res.to_zarr(tmp, mode="w", consolidated=False)
        os.replace(tmp, out_dir / f"robust_{kind}_{run_id}.zarr")
        results[kind] = res
    return results


def demo_attacks():
    """The demo's attack: PGD under L∞, 7 steps, step size 2.5·ε/7, random start."""
    from .pipeline.attacks import PGD

    return [PGD(norm="linf", steps=7, random_start=True)]


def run_demo(out: str | os.PathLike = "demo_out", *, preset: str | os.PathLike | None = None,
             progress: bool = True, log=print) -> Path:
    """Run the whole demo and return the path of the HTML report.

    Parameters
    ----------
    out : path
        Working folder: ``train/`` (checkpoints), ``study/`` (Zarr dumps), ``report/``.
    preset : path, optional
        Training grid (TOML); default: `demo_grid()` (= ``pipelines/digits_demo.toml``).
    progress : bool
        Progress bars for every stage.
    """
    from .pipeline.extract import extract_runs
    from .reporting import report
    from .pipeline.train import load_grid, run_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = load_grid(preset) if preset else demo_grid()
    t0 = time.perf_counter()
    log(f"[1/3] training the regularizer grid into {out / 'train'} (finished runs are skipped)")
    run_grid(grid, out / "train", progress=progress)
    log(f"      done in {time.perf_counter() - t0:.0f} s")
    t1 = time.perf_counter()
    log(f"[2/3] extracting features, logits, head, PGD outcomes and attacked features into {out / 'study'}")
    extract_runs(out / "train", out / "study", split="test", attacks=demo_attacks(), eps=list(DEMO_EPS),
                 save_adv=True, progress=progress)
    log(f"      done in {time.perf_counter() - t1:.0f} s")
    t2 = time.perf_counter()
    log("[3/3] decomposition, metrics, mediation, interventions (also inside the model, under attack) and the report")
    robust = robust_interventions(out / "train", out / "study", out / "interventions")
    path = report(out / "study", out=out / "report" / "report.html", progress=progress, robust=robust)
    log(f"      done in {time.perf_counter() - t2:.0f} s (total {time.perf_counter() - t0:.0f} s)")
    log(f"report: {path.resolve()}")
    return path
