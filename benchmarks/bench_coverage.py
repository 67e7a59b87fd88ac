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
    python benchmarks/bench_coverage.py --decompose      # decompose's all-pairs and seed-pair intervals, 3+3, 5+5
    python benchmarks/bench_coverage.py --scenario run-confounding   # pooled vs within-run slope (issue 24)

``--scenario run-confounding``: the same crossed design without interaction, with correlated run effects on the
mediator and the outcome (``corr(u_r, v_r) = --run-rho``, default 0.8; 0 as the control row) and true indirect
a b = 1.0 × 0.5 = 0.5; it compares the pooled slope (``slope="pooled"``) with the within-run slope
(``slope="within"``) and reports how often the run-level Mundlak test warns.

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


def confounding_cell(runs_per_arm: int, run_rho: float, n_sim: int, n_images: int, seed: int) -> dict[str, dict]:
    """Coverage, bias and mean width of the indirect effect with the pooled and the within-run slope, and the share
    of pooled fits that carry the run-level-confounding warning."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {s: {"hits": {}, "err": [], "width": [], "warned": []} for s in ("pooled", "within")}
    for _ in range(n_sim):
        df, truth = simulate_mediation(n_runs_per_arm=runs_per_arm, n_samples=n_images, a=(1.0,), b=(0.5,), c=0.3,
                                       difficulty_m=1.0, difficulty_y=1.0, run_sd_m=0.5, run_sd_y=0.5,
                                       run_rho=run_rho, rng=rng)
        for slope in ("pooled", "within"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = mediate(df, treatment="regularizer", mediators="m1", outcome="y", covariates=["x"],
                              slope=slope)
            s = res.summary().set_index("effect")
            o = out[slope]
            for k in ("total", "direct", "indirect"):
                o["hits"].setdefault(k, []).append(bool(s.loc[k, "ci_low"] <= truth[k] <= s.loc[k, "ci_high"]))
            o["err"].append(s.loc["indirect", "estimate"] - truth["indirect"])
            o["width"].append(s.loc["indirect", "ci_high"] - s.loc["indirect", "ci_low"])
            o["warned"].append(bool(res.confounding_warning) or bool(
                len(res.run_confounding) and (res.run_confounding["p_value"] < 0.05).any()))
    return {k: dict({h: float(np.mean(v)) for h, v in o["hits"].items()}, bias=float(np.mean(o["err"])),
                    width=float(np.mean(o["width"])), warned=float(np.mean(o["warned"])))
            for k, o in out.items()}


def main_confounding(args: argparse.Namespace) -> None:
    print(f"run-level confounding: {args.n_sim} simulations per cell, {args.n_images} images, 95% CR2 intervals, "
          f"true indirect 0.5; Monte Carlo SE of a coverage near 0.95: {np.sqrt(0.95 * 0.05 / args.n_sim):.3f}")
    print("| runs/arm | corr(run effects) | slope | total | direct | indirect | mean(indirect − truth) | "
          "mean width | test rejects | s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in [int(x) for x in args.runs.split(",")]:
        for rho in (0.0, args.run_rho):
            t = time.perf_counter()
            c = confounding_cell(r, rho, args.n_sim, args.n_images, seed=2000 + r)
            for slope, v in c.items():
                print(f"| {r} | {rho:g} | {slope} | {v['total']:.3f} | {v['direct']:.3f} | {v['indirect']:.3f} | "
                      f"{v['bias']:+.3f} | {v['width']:.3f} | {v['warned']:.2f} | {time.perf_counter() - t:.0f} |",
                      flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-sim", type=int, default=400)
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=400)
    ap.add_argument("--runs", default="3,10", help="runs per arm, comma-separated")
    ap.add_argument("--scenario", choices=("default", "run-confounding"), default="default")
    ap.add_argument("--run-rho", type=float, default=0.8, help="correlation of the run effects (run-confounding)")
    ap.add_argument("--decompose", action="store_true", help="coverage of decompose's all-pairs and seed-pair "
                                                              "intervals instead (runs per arm 3,5 by default)")
    args = ap.parse_args()
    if args.decompose:
        main_decompose(args.n_sim, [int(x) for x in (args.runs if args.runs != "3,10" else "3,5").split(",")])
        return
    if args.scenario == "run-confounding":
        return main_confounding(args)
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



# ----------------------------------------------------------------------------------------------
# decompose: coverage of the all-pairs (two-sample U-statistic) and seed-pair intervals
# ----------------------------------------------------------------------------------------------
def _decompose_pool(n_pool: int, n_images: int, n_classes: int, rng: np.random.Generator):
    """Pair values F[c, t] (outcome, component) of the function-level split for a pool of runs per arm.

    Every run scores the same images (shared image logits Z). A run's logits are ``exp(u) · (Z + 0.6 E)`` with a
    run-level log-scale ``u`` and run noise ``E``; treated runs are cooler (×0.6) and their shape moves (+0.4 S).
    Seed ``s`` trains both arms from one start: its control and treated runs share half of their noise.
    """
    from causalgeom.causal.decompose import _Run, _components, _run_outcome, _scale_shape, _world_stats

    labels = rng.integers(0, n_classes, n_images)
    Z = 2.5 * np.eye(n_classes)[labels] + rng.normal(size=(n_images, n_classes))
    S = rng.normal(size=(n_images, n_classes))
    runs = {"c": [], "t": []}
    for s in range(n_pool):
        shared = rng.normal(size=(n_images, n_classes))
        for arm in ("c", "t"):
            own = rng.normal(size=(n_images, n_classes))
            noise = 0.6 * (np.sqrt(0.5) * shared + np.sqrt(0.5) * own)
            u = rng.normal(0.0, 0.15)
            z = np.exp(u) * (Z + noise) if arm == "c" else 0.6 * np.exp(u) * (Z + noise + 0.4 * S)
            r = _Run(f"{arm}{s}", labels)
            r.scale, r.shape = _scale_shape(z)
            runs[arm].append(r)
    outcomes = ("nll", "signed_ece")
    F = np.zeros((len(outcomes), 3, n_pool, n_pool))  # (outcome, total/scale/shape, control, treated)
    for i, c in enumerate(runs["c"]):
        for j, t in enumerate(runs["t"]):
            worlds = _world_stats((c, t), ("scale", "shape"), "function", adv=False)
            for o, name in enumerate(outcomes):
                F[o, :, i, j] = _components(np.array([_run_outcome(name, w, 15) for w in worlds]))[:3]
    return outcomes, F


def decompose_cell(runs_per_arm: int, n_sim: int = 400, seed: int = 0, n_pool: int = 60, n_images: int = 200,
                   n_classes: int = 10) -> dict[str, float]:
    """Coverage of decompose's 95% intervals: all pairs (``_hoeffding_t``) and seed pairs (``_paired_t``).

    The estimand is the mean pair value over the pool of runs (all control × treated pairs; the seed-matched pairs
    for the seed design); each simulation draws ``runs_per_arm`` runs (seeds) per arm from the pool without
    replacement.
    """
    from causalgeom.causal.decompose import _hoeffding_t, _paired_t

    rng = np.random.default_rng(seed)
    outcomes, F = _decompose_pool(n_pool, n_images, n_classes, rng)
    comps = ("total", "scale", "shape")
    hits: dict[str, list[bool]] = {}
    diag = np.arange(n_pool)
    for _ in range(n_sim):
        ci = rng.choice(n_pool, runs_per_arm, replace=False)
        ti = rng.choice(n_pool, runs_per_arm, replace=False)
        si = rng.choice(n_pool, runs_per_arm, replace=False)
        for o, name in enumerate(outcomes):
            for m, comp in enumerate(comps):
                truth_all = F[o, m].mean()
                _, lo, hi = _hoeffding_t(F[o, m][np.ix_(ci, ti)], 0.95)
                hits.setdefault(f"all:{name}:{comp}", []).append(lo <= truth_all <= hi)
                truth_seed = F[o, m][diag, diag].mean()
                _, lo, hi = _paired_t(F[o, m][si, si], 0.95)
                hits.setdefault(f"seed:{name}:{comp}", []).append(lo <= truth_seed <= hi)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def main_decompose(n_sim: int, runs: list[int]) -> None:
    print(f"decompose (function-level split), {n_sim} simulations per cell, 95% intervals; Monte Carlo SE "
          f"{np.sqrt(0.95 * 0.05 / n_sim):.3f}")
    print("| runs/arm | pairs | outcome | total | scale | shape |")
    print("|---:|---|---|---:|---:|---:|")
    for r in runs:
        c = decompose_cell(r, n_sim=n_sim, seed=r)
        for design in ("all", "seed"):
            for name in ("nll", "signed_ece"):
                print(f"| {r} | {design} | {name} | " + " | ".join(f"{c[f'{design}:{name}:{k}']:.3f}"
                                                            for k in ("total", "scale", "shape")) + " |", flush=True)


if __name__ == "__main__":
    main()
