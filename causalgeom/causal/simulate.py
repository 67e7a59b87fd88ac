"""Synthetic linear structural models with known mediation effects, treatment assigned per run (cluster).

Used by the tests, the benchmark and the documentation to check that estimates recover the truth and that
intervals cover it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["simulate_mediation"]


def simulate_mediation(*, n_runs_per_arm: int = 10, n_samples: int = 100, a: Sequence[float] = (1.0,),
                       b: Sequence[float] = (2.0,), c: float = 0.5, theta: float = 0.0, covariate: float = 0.3,
                       run_sd_m: float = 0.5, run_sd_y: float = 0.5, noise_m: float = 1.0, noise_y: float = 1.0,
                       rho: float = 0.0, continuous: Sequence[float] | None = None,
                       difficulty_m: Sequence[float] | float = 0.0, difficulty_y: float = 0.0,
                       d: Sequence[float] | float = 0.0, run_sd_b: float = 0.0, run_rho: float = 0.0,
                       rng: np.random.Generator | int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Draw a study-shaped table from a linear structural model and return it with the true effects.

    Model, for run ``r`` with treatment ``T_r`` and sample ``i``::

        x_ri  ~ N(0, 1)                                       (sample-level covariate)
        z_i   ~ N(0, 1)                                       (difficulty of test image i, shared by all runs)
        M_jri = 0.2 + a_j T_r [+ theta M_1ri for j = 2] + covariate x_ri + difficulty_m_j z_i + u_jr + e_jri
        Y_ri  = 1.0 + c T_r + sum_j (b_j + d_j T_r + w_jr) M_jri + covariate x_ri + difficulty_y z_i + v_r + eps_ri

    Every run scores the same images ``i = 0..n_samples-1`` (column ``sample``): a crossed design. With
    ``difficulty_m`` and ``difficulty_y`` non-zero the image difficulty confounds the mediator–outcome slope
    across images (image fixed effects remove it); ``d`` adds treatment × mediator interaction and
    ``run_sd_b`` run-to-run variation of the slopes (``w_jr ~ N(0, run_sd_b²)``).

    with run effects ``u_jr ~ N(0, run_sd_m²)``, ``v_r ~ N(0, run_sd_y²)`` and sample noise
    ``e ~ N(0, noise_m²)``, ``eps ~ N(0, noise_y²)``; ``corr(e_1, eps) = rho`` (an unmeasured mediator–outcome
    confounder when ``rho != 0``); ``corr(u_1r, v_r) = run_rho`` (run-level confounding: a run's luck moves its
    first mediator and its outcome together; image fixed effects do not remove it, run fixed effects do).

    Parameters
    ----------
    n_runs_per_arm : int
        Runs per treatment arm (categorical) or per treatment value (continuous).
    n_samples : int
        Samples per run.
    a, b : sequence of float, length K
        Treatment → mediator and mediator → outcome coefficients.
    c : float
        Direct effect of the treatment.
    theta : float
        Effect of the first mediator on the second (two mediators; 0: parallel mediators).
    continuous : sequence of float, optional
        Treatment values (``strength``); effects are then per unit of treatment. Default: categorical
        ``regularizer`` in {"ce", "treated"} with ``strength`` 0/1.
    difficulty_m : float or sequence of float (length K)
        Effect of the image difficulty on each mediator.
    difficulty_y : float
        Effect of the image difficulty on the outcome.
    d : float or sequence of float (length K)
        Treatment × mediator interaction coefficients.
    run_sd_b : float
        Standard deviation of the run-specific deviations of the mediator slopes.
    run_rho : float
        Correlation of the first mediator's run effect ``u_1r`` and the outcome's run effect ``v_r``.
    rng : numpy.random.Generator or int or None

    Returns
    -------
    table : DataFrame, shape (runs * n_samples, 7 + K)
        ``run_id, regularizer, strength, seed, sample, x, m1..mK, y``.
    truth : dict
        ``total``, ``direct``, ``indirect`` and per path ``indirect[m1]`` ... (``indirect[m1->m2]`` when
        ``theta != 0``), for a change of the treatment by 1 (ce → treated): the pure natural direct and total
        natural indirect effects over runs, for these test images (``E[M(0)]`` uses their mean difficulty).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    a, b = np.asarray(a, float), np.asarray(b, float)
    K = a.size
    if b.size != K:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    levels = np.asarray(continuous if continuous is not None else [0.0, 1.0], float)
    dm = np.broadcast_to(np.asarray(difficulty_m, float), (K,))
    dd = np.broadcast_to(np.asarray(d, float), (K,))
    if theta and dd.any():
        raise ValueError("theta (ordered mediators) and d (interaction) cannot both be set")
    z = rng.normal(size=n_samples)
    frames = []
    r = 0
    for t in levels:
        for s in range(n_runs_per_arm):
            x = rng.normal(size=n_samples)
            e = rng.normal(size=(n_samples, K)) * noise_m
            eps = rng.normal(size=n_samples)
            if rho:
                eps = rho * e[:, 0] / noise_m + np.sqrt(1 - rho ** 2) * eps
            eps = eps * noise_y
            M = np.empty((n_samples, K))
            u = rng.normal(size=K)
            v = run_rho * u[0] + np.sqrt(1 - run_rho ** 2) * rng.normal() if run_rho else None
            for j in range(K):
                M[:, j] = 0.2 + a[j] * t + covariate * x + dm[j] * z + u[j] * run_sd_m + e[:, j]
                if j == 1 and theta:
                    M[:, j] += theta * M[:, 0]
            slopes = b + dd * t + (rng.normal(size=K) * run_sd_b if run_sd_b else 0.0)
            v = rng.normal() if v is None else v
            y = 1.0 + c * t + M @ slopes + covariate * x + difficulty_y * z + v * run_sd_y + eps
            name = ("treated" if t == 1.0 else "ce") if continuous is None else f"s{t:g}"
            cols = {"run_id": f"{name}-r{r}", "regularizer": name if continuous is None else "ls",
                    "strength": t, "seed": s, "sample": np.arange(n_samples), "x": x}
            cols.update({f"m{j + 1}": M[:, j] for j in range(K)})
            cols["y"] = y
            frames.append(pd.DataFrame(cols))
            r += 1
    table = pd.concat(frames, ignore_index=True)
    paths = {}
    t0, t1 = (0.0, 1.0) if continuous is None else (float(levels[0]), float(levels[0]) + 1.0)
    bt1 = b + dd * t1  # slopes under the treated level (total natural indirect effect)
    if K == 1:
        paths["indirect"] = a[0] * bt1[0]
    elif theta and K == 2:
        paths = {"indirect[m1]": a[0] * b[0], "indirect[m1->m2]": a[0] * theta * b[1], "indirect[m2]": a[1] * b[1]}
    else:
        paths = {f"indirect[m{j + 1}]": a[j] * bt1[j] for j in range(K)}
    indirect = float(sum(paths.values()))
    EM0 = 0.2 + a * t0 + dm * z.mean()  # E[M_j(t0)] over these images (x and run effects average to 0)
    direct = float(c + (dd * EM0).sum())
    truth = {"total": direct + indirect, "direct": direct, "indirect": indirect}
    if K > 1:
        truth.update({k: float(v) for k, v in paths.items()})
    truth["prop_mediated"] = indirect / (direct + indirect)
    return table, truth
