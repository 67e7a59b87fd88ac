"""Inference that stays honest with a few runs per arm: CR2 standard errors, a run-level randomization test,
the design's p-value floor and intervals for the proportion mediated.

* **CR2** (Bell & McCaffrey 2002; Pustejovsky & Tipton 2018): cluster-robust covariance of the stacked mediator
  and outcome coefficients with the bias-reduced ("CR2") adjustment of each cluster's residuals,
  ``A_g = (I - H_gg)^(-1/2)``, computed from per-cluster Gram matrices only (``H_gg = U_g U_g'`` with
  ``U_g = Z_g (Z'Z)^(-1/2)`` has rank ``p``, so ``A_g = I + U_g W f(Λ) W' U_g'`` from the ``p × p`` eigensystem
  ``U_g'U_g = W Λ W'``, ``f(λ) = ((1 - λ)^(-1/2) - 1) / λ``). Effects are smooth functions of the coefficients, so
  their standard errors follow by the delta method (Jacobian by central differences); intervals and p-values use
  Student's t with ``G - 2`` degrees of freedom (the number of clusters less the two run-level regressors,
  intercept and treatment: Donald & Lang 2007; see docs/methods_causal.md for why not ``G - 1``).
* **Randomization test** (Fisher 1935; Imbens & Rubin 2015, ch. 5): the treatment labels are permuted across runs
  (never images); the statistic is the effect estimate itself, two-sided. All ``C(R, R_1)`` relabelings are
  enumerated when there are at most `MAX_EXACT` of them (exact p-value), otherwise `n` random ones with the +1
  correction ``p = (1 + #{|θ*| >= |θ|}) / (n + 1)`` (Phipson & Smyth 2010). It tests the sharp null of no effect of
  the treatment on mediators and outcome.
* **Floor**: no p-value below what the randomization distribution of the design can give, ``2 / C(R, R_1)`` for
  equal arms (a relabeling and its swap give the same |statistic|), ``1 / C(R, R_1)`` otherwise. Counts are
  computed in log space (``math.lgamma``), so thousands of units (``cluster=None``) never overflow.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["MAX_EXACT", "randomization_floor", "log_assignments", "floor_words", "design_floor",
           "seeds_for_floor", "relabelings", "cr2_scores", "CR2", "delta_ratio", "fieller", "WEBB",
           "wild_replicates"]

#: Largest number of relabelings enumerated for an exact randomization test.
MAX_EXACT = 20_000


def log_assignments(run_T: np.ndarray | None) -> float:
    """Natural logarithm of the number of distinct assignments of the observed treatment values to the runs.

    ``log C = log R! - sum_v log c_v!`` (a multinomial coefficient; ``C(R, R_1)`` for two arms), computed with
    `math.lgamma`, so it never overflows whatever the number of runs or rows (``cluster=None`` makes every row a
    unit). 0 (one assignment) when ``run_T`` is None, empty or not finite.
    """
    if run_T is None or len(run_T) == 0 or not np.all(np.isfinite(run_T)):
        return 0.0
    _, counts = np.unique(np.asarray(run_T, dtype=float), return_counts=True)
    return max(0.0, math.lgamma(len(run_T) + 1) - sum(math.lgamma(int(c) + 1) for c in counts))


def _symmetric(run_T: np.ndarray) -> bool:
    _, counts = np.unique(np.asarray(run_T, dtype=float), return_counts=True)
    return bool(counts.size == 2 and counts[0] == counts[1])


def randomization_floor(run_T: np.ndarray | None) -> tuple[float, int | None]:
    """Smallest two-sided p-value a run-level randomization test of this design can give.

    Parameters
    ----------
    run_T : ndarray, shape (R,), or None
        Treatment of each run (None: the treatment varies within runs; no floor).

    Returns
    -------
    floor : float
        ``2 / C`` (two arms of equal size), ``1 / C`` otherwise, from ``log C`` (`log_assignments`): exact where
        ``exp`` is representable, 0.0 where it underflows (below about 1e-308: below any printable p-value; say so
        with `floor_words`); 0 when undefined.
    n_assignments : int or None
        ``C``, the number of distinct assignments of the observed treatment values to the runs, exactly, when it
        is at most ``2**53`` (so it converts to a float exactly); None above (use `log_assignments`).
    """
    if run_T is None or len(run_T) == 0 or not np.all(np.isfinite(run_T)):
        return 0.0, 0
    logC = log_assignments(run_T)
    C: int | None = None
    if logC <= 53 * math.log(2) + 1e-9:
        _, counts = np.unique(np.asarray(run_T, dtype=float), return_counts=True)
        C, rest = 1, len(run_T)
        for c in counts:  # a product of binomials: exact integers, each small here
            C *= math.comb(rest, int(c))
            rest -= int(c)
        if C > 2 ** 53:
            C = None
    if C is not None and C <= 1:
        return 1.0, C
    if C is not None:  # exact division where the count is an exact float
        return min(1.0, (2.0 if _symmetric(run_T) else 1.0) / C), C
    log_floor = (math.log(2.0) if _symmetric(run_T) else 0.0) - logC
    return (min(1.0, math.exp(log_floor)) if log_floor > -745.0 else 0.0), C


def design_floor(counts: Sequence[int], *, paired: bool = False) -> float:
    """The randomization floor of a design given by its arm sizes.

    Parameters
    ----------
    counts : sequence of int
        Runs per treatment value (``paired=False``), or ``[n_pairs]`` (``paired=True``).
    paired : bool
        Sign-flip test over ``n`` matched pairs (arm labels swapped within pairs): ``2 / 2^n``. Otherwise the
        relabelings of the runs across arms (`randomization_floor`): ``2 / C`` for two equal arms, else ``1 / C``.

    Returns
    -------
    float
        The floor (0.0 where it underflows).
    """
    counts = [int(c) for c in counts]
    if paired:
        n = counts[0]
        return min(1.0, 2.0 ** (1 - n)) if n < 1000 else 0.0
    run_T = np.repeat(np.arange(len(counts), dtype=float), counts)
    return randomization_floor(run_T)[0]


def seeds_for_floor(counts: Sequence[int], alpha: float = 0.05, *, paired: bool = False,
                    max_n: int = 100_000) -> int:
    """Smallest number ``n`` of seeds per arm (equal arms; or of seed pairs when ``paired``) whose design floor
    (`design_floor`) is at most ``alpha``: e.g. 4 per arm for two arms (``2 / C(8, 4) = 0.029``), 6 pairs for a
    sign-flip test (``2 / 2^6 = 0.031``) at ``alpha = 0.05``."""
    k = 1 if paired else max(len(counts), 2)
    n = 1
    while n <= max_n:
        if design_floor([n] * k if not paired else [n], paired=paired) <= alpha:
            return n
        n += 1
    return max_n


def floor_words(floor: float, n_assignments: int | None = None, log_count: float | None = None) -> str:
    """The design's p-value floor in words: ``"1/10 = 0.1"``-like for printable floors, or that it lies below any
    printable level (the count written as a power of ten from its logarithm)."""
    if floor > 0:
        return f"{floor:.3g}"
    if log_count is not None and log_count > 0:
        return f"below any printable level (about 10^-{log_count / math.log(10):.0f})"
    return "below any printable level"


def relabelings(run_T: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Treatment relabelings of the runs: every distinct one (exact) or ``n`` random permutations.

    Returns
    -------
    labels : ndarray, shape (b, R)
        Row ``i`` is a treatment vector; in the exact case the observed one is included.
    exact : bool
    """
    run_T = np.asarray(run_T, dtype=float)
    R = run_T.size
    vals, counts = np.unique(run_T, return_counts=True)
    _, C = randomization_floor(run_T)
    if C is not None and C <= MAX_EXACT and vals.size == 2:
        out = np.full((C, R), vals[0])
        for i, idx in enumerate(itertools.combinations(range(R), int(counts[1]))):
            out[i, list(idx)] = vals[1]
        return out, True
    if C is not None and C <= MAX_EXACT and R <= 8:
        perms = np.array(sorted(set(itertools.permutations(run_T.tolist()))))
        return perms, True
    return np.stack([rng.permutation(run_T) for _ in range(n)]), False


def randomization_pvalue(point: np.ndarray, null: np.ndarray, exact: bool) -> np.ndarray:
    """Two-sided randomization p-value of ``|θ|`` against the relabeled estimates ``null`` (b, ...)."""
    scale = np.maximum(1.0, np.nanmax(np.abs(null), axis=0))
    ge = (np.abs(null) >= np.abs(point)[None] - 1e-10 * scale).sum(0)  # ties within rounding count as extreme
    b = null.shape[0]
    p = ge / b if exact else (1.0 + ge) / (b + 1.0)
    return np.where(np.isfinite(point), np.minimum(1.0, p), np.nan)


def cr2_scores(Gc: np.ndarray, Ge: np.ndarray, A: np.ndarray, kind: str = "CR2") -> tuple[np.ndarray, bool]:
    """Per-cluster CR2 influence of OLS (or IRLS-weighted) coefficients.

    Parameters
    ----------
    Gc : ndarray, shape (G, p, p)
        ``Z_g' W_g Z_g`` per cluster (``W`` the working weights; identity for OLS).
    Ge : ndarray, shape (G, p)
        ``Z_g' (y_g - mu_g)`` per cluster (for OLS the residual cross-product ``Z_g' e_g``).
    A : ndarray, shape (p, p)
        ``sum_g Gc``.

    Returns
    -------
    psi : ndarray, shape (G, p)
        ``A^{-1} Z_g' W^{1/2} A_g W^{-1/2} (y_g - mu_g)``; ``sum_g psi_g psi_g'`` is the CR2 covariance.
    ok : bool
        False when a cluster has leverage 1 in some direction (CR2 undefined; NaN returned there).

    ``kind="CR0"`` skips the adjustment (``psi_g = A^{-1} Z_g' e_g``, Liang & Zeger 1986); CR1 is CR0 times
    ``G / (G - 1) · (N - 1) / (N - k)``.
    """
    if kind == "CR0":
        return np.linalg.solve(A, Ge.T).T, True
    ev, evec = np.linalg.eigh(A)
    ev = np.maximum(ev, ev.max() * 1e-15)
    Ais = (evec / np.sqrt(ev)) @ evec.T
    Mg = Ais @ Gc @ Ais
    Mg = 0.5 * (Mg + np.swapaxes(Mg, 1, 2))
    lam, Wg = np.linalg.eigh(Mg)
    lam = np.clip(lam, 0.0, None)
    ok = bool((lam < 1 - 1e-9).all())
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(lam < 1e-12, 0.5, ((1.0 - np.minimum(lam, 1 - 1e-12)) ** -0.5 - 1.0) / np.where(lam < 1e-12, 1,
                                                                                                      lam))
    u = np.einsum("ij,gj->gi", Ais, Ge)
    v = np.einsum("gji,gj->gi", Wg, u) * f
    s = Ge + np.einsum("gij,jk,gkl,gl->gi", Gc, Ais, Wg, v)
    psi = np.linalg.solve(A, s.T).T
    if not ok:
        psi[:] = np.nan
    return psi, ok


class CR2:
    """Delta-method covariance of the effects from the CR2 covariance of the stacked model coefficients.

    Parameters
    ----------
    theta : ndarray, shape (P,)
        Stacked coefficients.
    psi : ndarray, shape (G, P)
        Per-cluster CR2 influence of ``theta`` (`cr2_scores` per model, concatenated).
    effects : callable
        ``effects(Theta (b, P)) -> (b, E, L)``.
    """

    def __init__(self, theta: np.ndarray, psi: np.ndarray, effects: Callable[[np.ndarray], np.ndarray]):
        self.theta, self.psi, self.effects = theta, psi, effects
        self.vcov_theta = psi.T @ psi
        P = theta.size
        h = 1e-6 * np.maximum(1.0, np.abs(theta))
        Th = np.concatenate([theta + np.diag(h), theta - np.diag(h)])
        out = effects(Th)  # (2P, E, L)
        self.shape = out.shape[1:]
        J = (out[:P] - out[P:]).reshape(P, -1) / (2 * h[:, None])  # (P, E*L)
        self.J = J.T
        self.vcov = self.J @ self.vcov_theta @ self.J.T

    def se(self) -> np.ndarray:
        """Standard errors of the effects, shape (E, L)."""
        return np.sqrt(np.clip(np.diag(self.vcov), 0, None)).reshape(self.shape)

    def cov(self, i: tuple[int, int], j: tuple[int, int]) -> float:
        """Covariance of effects ``i = (e, l)`` and ``j``."""
        E, L = self.shape
        return float(self.vcov[i[0] * L + i[1], j[0] * L + j[1]])


#: Webb's (2014) six-point distribution: ±sqrt(1/2), ±1, ±sqrt(3/2), each with probability 1/6.
WEBB = np.array([-np.sqrt(1.5), -1.0, -np.sqrt(0.5), np.sqrt(0.5), 1.0, np.sqrt(1.5)])


def wild_replicates(cr2: CR2, B: int, rng: np.random.Generator, batch: int = 256) -> np.ndarray:
    """Unrestricted wild cluster bootstrap (WCU) of the effects with Webb six-point weights.

    Replicate ``b`` multiplies every cluster's (CR2-transformed) residuals by one weight ``v_bg`` shared by the
    mediator and outcome models (so their correlation is kept); for least squares the refitted coefficients are
    exactly ``θ* = θ + Σ_g v_bg ψ_g`` (``ψ_g`` from `cr2_scores`), and the effects are recomputed from ``θ*``
    (Cameron, Gelbach & Miller 2008; Webb 2014; MacKinnon, Nielsen & Webb 2023 for the CR2-type residuals).

    Returns
    -------
    ndarray, shape (B, E, L)
    """
    G = cr2.psi.shape[0]
    out = []
    for s in range(0, B, batch):
        b = min(batch, B - s)
        v = WEBB[rng.integers(0, 6, size=(b, G))]
        out.append(cr2.effects(cr2.theta[None] + v @ cr2.psi))
    return np.concatenate(out) if out else np.empty((0,) + cr2.shape)


def t_interval(point: np.ndarray, se: np.ndarray, df: float, level: float) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """``point ± t_{df, 1-α/2} se`` and the two-sided t p-value of ``θ = 0``."""
    from scipy import stats

    q = stats.t.ppf(0.5 + level / 2, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.t.sf(np.abs(point / se), df)
    return point - q * se, point + q * se, np.where(se > 0, p, np.nan)


def delta_ratio(num: float, den: float, v_num: float, v_den: float, c_nd: float) -> float:
    """Delta-method standard error of ``num / den`` (Oehlert 1992): ``|r| sqrt(v_n/n² + v_d/d² - 2 c/(n d))``."""
    r = num / den
    v = v_num / num ** 2 + v_den / den ** 2 - 2 * c_nd / (num * den) if num != 0 else v_num / den ** 2
    return float(abs(r) * math.sqrt(max(v, 0.0))) if num != 0 else float(math.sqrt(max(v, 0.0)))


def fieller(num: float, den: float, v_num: float, v_den: float, c_nd: float, q: float) -> tuple[float, float]:
    """Fieller's (1954) interval for ``num / den``: the ``r`` with ``(num - r den)² <= q² (v_n - 2 r c + r² v_d)``.

    Bounded when the denominator is significantly away from 0 (``den² > q² v_d``); otherwise ``(nan, nan)``.
    """
    a = den ** 2 - q ** 2 * v_den
    b = -2.0 * (num * den - q ** 2 * c_nd)
    c = num ** 2 - q ** 2 * v_num
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return float("nan"), float("nan")
    r1, r2 = (-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)
    return float(min(r1, r2)), float(max(r1, r2))


def any_nan(x: Any) -> bool:
    return bool(np.isnan(np.asarray(x, dtype=float)).any())
