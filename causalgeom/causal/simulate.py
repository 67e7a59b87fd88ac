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
                       rng: np.random.Generator | int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Draw a study-shaped table from a linear structural model and return it with the true effects.

    Model, for run ``r`` with treatment ``T_r`` and sample ``i``::

        x_ri  ~ N(0, 1)                                       (sample-level covariate)
        M_jri = 0.2 + a_j T_r [+ theta M_1ri for j = 2] + covariate x_ri + u_jr + e_jri
        Y_ri  = 1.0 + c T_r + sum_j b_j M_jri + covariate x_ri + v_r + eps_ri

    with run effects ``u_jr ~ N(0, run_sd_m²)``, ``v_r ~ N(0, run_sd_y²)`` and sample noise
    ``e ~ N(0, noise_m²)``, ``eps ~ N(0, noise_y²)``; ``corr(e_1, eps) = rho`` (an unmeasured mediator–outcome
    confounder when ``rho != 0``).

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
    rng : numpy.random.Generator or int or None

    Returns
    -------
    table : DataFrame, shape (runs * n_samples, 6 + K)
        ``run_id, regularizer, strength, seed, x, m1..mK, y``.
    truth : dict
        ``total``, ``direct``, ``indirect`` and per path ``indirect[m1]`` ... (``indirect[m1->m2]`` when
        ``theta != 0``), for a change of the treatment by 1 (ce → treated).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    a, b = np.asarray(a, float), np.asarray(b, float)
    K = a.size
    if b.size != K:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    levels = np.asarray(continuous if continuous is not None else [0.0, 1.0], float)
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
            for j in range(K):
                M[:, j] = 0.2 + a[j] * t + covariate * x + rng.normal() * run_sd_m + e[:, j]
                if j == 1 and theta:
                    M[:, j] += theta * M[:, 0]
            y = 1.0 + c * t + M @ b + covariate * x + rng.normal() * run_sd_y + eps
            name = ("treated" if t == 1.0 else "ce") if continuous is None else f"s{t:g}"
            cols = {"run_id": f"{name}-r{r}", "regularizer": name if continuous is None else "ls",
                    "strength": t, "seed": s, "x": x}
            cols.update({f"m{j + 1}": M[:, j] for j in range(K)})
            cols["y"] = y
            frames.append(pd.DataFrame(cols))
            r += 1
    table = pd.concat(frames, ignore_index=True)
    paths = {}
    if K == 1:
        paths["indirect"] = a[0] * b[0]
    elif theta and K == 2:
        paths = {"indirect[m1]": a[0] * b[0], "indirect[m1->m2]": a[0] * theta * b[1], "indirect[m2]": a[1] * b[1]}
    else:
        paths = {f"indirect[m{j + 1}]": a[j] * b[j] for j in range(K)}
    indirect = float(sum(paths.values()))
    truth = {"total": c + indirect, "direct": c, "indirect": indirect}
    if K > 1:
        truth.update({k: float(v) for k, v in paths.items()})
    truth["prop_mediated"] = indirect / (c + indirect)
    return table, truth
