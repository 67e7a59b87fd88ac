"""Inference of a decomposition: run pairing, relabelings and sign flips, paired t and Hoeffding intervals."""

from __future__ import annotations
import itertools
import math
from typing import Any
import numpy as np
import pandas as pd
from ...errors import QueryError
from .worlds import (MAX_EXACT_RELABELINGS, _TOL)

def _relabelings(n: int, n_treated: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Boolean (R, n) treated masks: all C(n, n_treated) when few (exact, the observed one included), else
    `MAX_EXACT_RELABELINGS` uniform random draws (the observed labeling enters through the +1 correction)."""
    total = math.comb(n, n_treated)
    if total <= MAX_EXACT_RELABELINGS:
        masks = np.zeros((total, n), dtype=bool)
        for r, combo in enumerate(itertools.combinations(range(n), n_treated)):
            masks[r, list(combo)] = True
        return masks, True
    masks = np.zeros((MAX_EXACT_RELABELINGS, n), dtype=bool)
    for r in range(MAX_EXACT_RELABELINGS):
        masks[r, rng.choice(n, n_treated, replace=False)] = True
    return masks, False


def _seed_matches(table: pd.DataFrame, c_ids: list[str], t_ids: list[str]) -> tuple[list[tuple[str, str]] | None, str]:
    """Control/treated run ids matched one to one by their ``seed`` attribute, or None and the reason."""
    runs = table.set_index("run_id")
    if "seed" not in runs.columns:
        return None, "the runs have no 'seed' attribute"
    cs, ts = runs.loc[c_ids, "seed"], runs.loc[t_ids, "seed"]
    if cs.isna().any() or ts.isna().any():
        return None, "some runs have no seed"
    if cs.duplicated().any() or ts.duplicated().any() or set(cs) != set(ts):
        return None, (f"the control seeds {sorted(map(str, cs))} and treated seeds {sorted(map(str, ts))} do not "
                      "match one to one")
    by_seed = {seed: rid for rid, seed in ts.items()}
    return [(rid, by_seed[seed]) for rid, seed in cs.items()], ""


def _sign_flips(n: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Boolean (R, n) swap patterns: all 2^n when few (exact), else random ones (+1 correction applies)."""
    if 2 ** n <= MAX_EXACT_RELABELINGS:
        return np.array(list(itertools.product([False, True], repeat=n)), dtype=bool).reshape(-1, n), True
    return rng.random((MAX_EXACT_RELABELINGS, n)) < 0.5, False


def _paired_t(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """Mean and t-interval (df n − 1) of paired observations."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    est = float(v.mean())
    se = float(v.std(ddof=1)) / math.sqrt(v.size)
    if se <= _TOL * max(1.0, abs(est)):
        return est, est, est
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1)) * se
    return est, est - half, est + half


def _hoeffding_t(F: np.ndarray, level: float) -> tuple[float, float, float]:
    """Estimate, CI of the mean of F (n_c, n_t) over control × treated pairs (two-sample U-statistic).

    Hoeffding decomposition ``F(i, j) = μ + a_i + b_j + e_ij``: ``Var(Ū) = σ_a²/n_c + σ_b²/n_t + σ_e²/(n_c n_t)``.
    With the mean squares ``MS_row = n_t s_row²`` (expectation ``n_t σ_a² + σ_e²``), ``MS_col = n_c s_col²``
    (``n_c σ_b² + σ_e²``) and the interaction ``MS_e`` (``σ_e²``), the unbiased estimate is
    ``(MS_row + MS_col − MS_e) / (n_c n_t)``: the row- and column-mean variances each already contain the
    interaction term, so it is subtracted once, not added. It is bounded below by ``MS_e / (n_c n_t)`` (the
    variance with no run effects; then df = (n_c − 1)(n_t − 1)); otherwise Satterthwaite df over the three
    mean squares. For the total (``F = Y_t − Y_c``, no interaction) this is exactly Welch's t-interval.
    """
    from scipy import stats

    n_c, n_t = F.shape
    est = float(F.mean())
    row, col = F.mean(axis=1), F.mean(axis=0)
    ms_row, ms_col = n_t * float(row.var(ddof=1)), n_c * float(col.var(ddof=1))
    resid = F - row[:, None] - col[None, :] + est
    df_r = (n_c - 1) * (n_t - 1)
    ms_e = float((resid ** 2).sum() / df_r)
    nn = n_c * n_t
    unbiased = ms_row + ms_col - ms_e
    if unbiased > ms_e:
        var = unbiased / nn
        df = unbiased ** 2 / (ms_row ** 2 / (n_c - 1) + ms_col ** 2 / (n_t - 1) + ms_e ** 2 / df_r)
    else:
        var, df = ms_e / nn, float(df_r)
    if var <= _TOL * max(1.0, est * est):
        return est, est, est
    half = float(stats.t.ppf(0.5 + level / 2, max(df, 1.0))) * math.sqrt(var)
    return est, est - half, est + half


# ----------------------------------------------------------------------------------------------
# prose that follows the numbers
# ----------------------------------------------------------------------------------------------


def _randomization_row(outcome: str, component: str, est: float, lo: float, hi: float, stat: np.ndarray,
                       exact: bool, n_relab: int, floor: float) -> dict[str, Any]:
    """One summary row with its two-sided randomization p-value.

    ``stat`` holds the statistic under each relabeling (the observed one included when ``exact``); the p-value is
    the share at least as extreme as ``|est|`` (exact) or ``(1 + #) / (n + 1)`` (Monte Carlo, Phipson & Smyth
    2010), never below the design's ``floor``.
    """
    tol = 1e-9 * max(1.0, abs(est))
    hits = np.abs(stat) >= abs(est) - tol
    p = float(hits.mean()) if exact else float((hits.sum() + 1) / (n_relab + 1))
    p = max(p, floor)
    note = "p at the design's floor" if p <= floor * (1 + 1e-9) else ""
    return dict(outcome=outcome, component=component, estimate=est, ci_low=lo, ci_high=hi, p_value=p,
                p_floor=floor, note=note)




def _pairing(run_table: pd.DataFrame, c_ids: list[str], t_ids: list[str], pairs: str, head_dependent: bool,
             facs: tuple[str, ...]) -> tuple[str, list[tuple[str, str]] | None, str]:
    """(pairing, seed-matched pairs, initialisation status); refuses head-dependent factors without evidence."""
    matched, why = _seed_matches(run_table, c_ids, t_ids)
    runs = run_table.set_index("run_id")
    dig = runs["init_digest"] if "init_digest" in runs.columns else pd.Series(index=runs.index, dtype=object)

    def same(c: str, t: str) -> bool:
        a, b = dig.get(c), dig.get(t)
        return isinstance(a, str) and isinstance(b, str) and a != "" and a == b

    verified = matched is not None and all(same(c, t) for c, t in matched)
    all_same = all(same(c, t) for c in c_ids for t in t_ids)
    if pairs == "seed":
        if matched is None:
            raise QueryError(f"pairs='seed': {why}; use pairs='all'")
        bad = [(c, t) for c, t in matched if isinstance(dig.get(c), str) and isinstance(dig.get(t), str)
               and not same(c, t)]
        if bad:
            raise QueryError(f"pairs='seed': runs {bad[0][0]!r} and {bad[0][1]!r} have the same seed but different "
                             "'init_digest' attributes (their initial weights differ); they do not share an "
                             "initialisation. Use pairs='all'" + ("" if not head_dependent else
                                                                   " with factors=('scale', 'shape')"))
        return "seed", matched, ("verified (matching init_digest)" if verified else
                                 "stated, not verified (pairs='seed': the user states that same-seed runs share an "
                                 "initialisation; no matching init_digest)")
    if pairs == "auto" and verified:
        return "seed", matched, "verified (matching init_digest)"
    if head_dependent and not all_same:
        reason = (why if matched is None else "their seeds match but no matching 'init_digest' attributes show that "
                  "they share an initialisation (runs not trained by causalgeom, or trained before it recorded one)")
        if pairs == "all":
            reason = "pairs='all' pairs runs that do not all share one 'init_digest'"
        raise QueryError(f"factors={facs}: swapping heads between runs is meaningful only for runs shown to share an "
                         f"initialisation, and {reason}. Use factors=('scale', 'shape') (the function-level split: "
                         "any two models, no head needed), or pairs='seed' to state that same-seed runs share an "
                         "initialisation")
    if head_dependent:
        return "all", None, "verified (one init_digest for all runs)"
    return "all", None, ("verified (one init_digest for all runs)" if all_same else
                         "not needed (no head is applied to another run's features)")


