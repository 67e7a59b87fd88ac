"""Coverage of the 95% intervals of `cg.causal.mediate` on simulated crossed studies (runs × shared test images).

The simulation (`causalgeom.causal.simulate_mediation`) has what the real studies have: every run scores the same
test images, an image difficulty that raises both the mediator and the outcome (it confounds the mediator → outcome
slope across images), run-to-run noise in mediator and outcome, and a treatment × mediator interaction::

    M = 0.2 + 1.0 T + 0.3 x + 1.0 z_i + u_r + e          Y = 1 + 0.3 T + (0.5 + 0.3 T) M + 0.3 x + 1.0 z_i + v_r + ε

(``z_i`` image difficulty, ``u_r, v_r ~ N(0, 0.5²)`` run effects). True effects (treated vs control, these
images): indirect = a (b + d) = 0.8, direct = c + d E[M(0)], total = their sum. Each configuration fits
``interaction=True`` with the covariate ``x`` and reports the share of simulations whose interval covers the
truth, and the mean indirect estimate.

    python benchmarks/bench_coverage.py                  # 400 simulations per cell, about 10 min on 2 cores
    python benchmarks/bench_coverage.py --n-sim 100      # quick look

The table in docs/methods_causal.md (section "Inference with few runs") was produced by this script.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from causalgeom.causal import mediate, simulate_mediation

CONFIGS = [  # (label, mediate keyword arguments)
    ("CR2, t(G-2), paired [default]", dict(inference="cr2")),
    ("wild cluster bootstrap (Webb), paired", dict(inference="wild")),
    ("cluster bootstrap, paired", dict(inference="bootstrap", bootstrap="cluster")),
    ("CR2, t(G-2), unpaired", dict(inference="cr2", paired_by=None)),
    ("cluster bootstrap, unpaired [old default]", dict(inference="bootstrap", bootstrap="cluster", paired_by=None)),
]


def cell(runs_per_arm: int, kw: dict, n_sim: int, n_images: int, n_boot: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)  # the same simulated studies for every method of a row
    hits: dict[str, list[bool]] = {}
    est = []
    for _ in range(n_sim):
        df, truth = simulate_mediation(n_runs_per_arm=runs_per_arm, n_samples=n_images, a=(1.0,), b=(0.5,), c=0.3,
                                       d=(0.3,), difficulty_m=1.0, difficulty_y=1.0, run_sd_m=0.5, run_sd_y=0.5,
                                       rng=rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"],
                        interaction=True, n_boot=n_boot, rng=rng, **kw).summary().set_index("effect")
        for k in ("total", "direct", "indirect"):
            hits.setdefault(k, []).append(bool(s.loc[k, "ci_low"] <= truth[k] <= s.loc[k, "ci_high"]))
        est.append(s.loc["indirect", "estimate"] - truth["indirect"])
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    out["bias_indirect"] = float(np.mean(est))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-sim", type=int, default=400)
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=400)
    ap.add_argument("--runs", default="3,10", help="runs per arm, comma-separated")
    args = ap.parse_args()
    print(f"{args.n_sim} simulations per cell, {args.n_images} images, 95% intervals; Monte Carlo SE of a coverage "
          f"near 0.95: {np.sqrt(0.95 * 0.05 / args.n_sim):.3f}")
    print("| runs/arm | inference | total | direct | indirect | mean(indirect − truth) | s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in [int(x) for x in args.runs.split(",")]:
        for label, kw in CONFIGS:
            t = time.perf_counter()
            c = cell(r, kw, args.n_sim, args.n_images, args.n_boot, seed=1000 + r)
            print(f"| {r} | {label} | {c['total']:.3f} | {c['direct']:.3f} | {c['indirect']:.3f} | "
                  f"{c['bias_indirect']:+.3f} | {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
