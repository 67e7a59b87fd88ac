"""`plan`: how many seeds (training runs) per arm a question needs, from a pilot study or a given effect and SD.

Two conditions must hold for a design to decide at level ``alpha`` (docs/methods_causal.md, "Planning seeds"):

* **the exact test can reach alpha**: the run-level randomization test (`causalgeom.causal.inference`) has a floor,
  ``2 / C(2n, n)`` for two arms of ``n`` runs (``2 / 2^n`` for a sign-flip test over ``n`` seed pairs); below
  ``n_floor`` runs per arm no p-value can fall under ``alpha`` whatever the data;
* **the interval is narrow enough**: with between-run standard deviation ``σ`` of the run-level outcome (of the
  pair differences when paired) the t-interval of the effect has half-width ``t_{1-α/2, df} σ sqrt(2/n)``
  (``σ / sqrt(n)`` paired), ``df = 2n - 2`` (``n - 1``) — the degrees of freedom `mediate` and `decompose` use —
  and the two-sided t test rejects ``effect = 0`` with probability ``power`` at ``n_power`` runs per arm (the
  noncentral t, as ``statsmodels.stats.power.TTestIndPower`` / ``TTestPower``). ``n_width`` is the smallest ``n``
  whose expected half-width is below ``|effect|`` (the interval is expected to exclude 0: power about one half).

The advice is ``max(n_floor, n_power)`` seeds per arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import QueryError
from .inference import design_floor, seeds_for_floor
from .results import MediationResult, markdown_table

__all__ = ["plan", "PlanResult", "t_power"]


def t_power(effect: float, sd: float, n: int, alpha: float = 0.05, *, paired: bool = False) -> float:
    """Power of the two-sided t test of ``effect = 0`` with ``n`` runs per arm (or ``n`` pairs when ``paired``).

    Noncentral t with ``df = 2n - 2`` and noncentrality ``effect / (sd sqrt(2/n))`` (paired: ``df = n - 1``,
    ``effect / (sd / sqrt(n))``); both tails counted, as statsmodels' ``TTestIndPower.power``.
    """
    from scipy import stats

    df = n - 1 if paired else 2 * n - 2
    if df < 1:
        return float("nan")
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2.0 / n)
    nc = abs(effect) / se if se > 0 else math.inf
    q = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(q, df, nc) + stats.nct.cdf(-q, df, nc))


def _half_width(sd: float, n: int, alpha: float, paired: bool) -> float:
    from scipy import stats

    df = n - 1 if paired else 2 * n - 2
    if df < 1:
        return float("inf")
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2.0 / n)
    return float(stats.t.ppf(1 - alpha / 2, df) * se)


@dataclass
class PlanResult:
    """The result of `plan`: seeds per arm at which the design can decide at ``alpha``.

    Attributes
    ----------
    effect, sd : float
        Effect (treated − control) and between-run standard deviation (of pair differences when ``paired``).
    alpha, power : float
    paired : bool
    n_floor : int
        Smallest seeds per arm (pairs) whose exact-test floor is at most ``alpha``.
    n_width : int
        Smallest seeds per arm whose expected t half-width is below ``|effect|``.
    n_power : int
        Smallest seeds per arm with t-test power at least ``power``.
    n_per_arm : int
        The advice: ``max(n_floor, n_power)``.
    current : list of int
        Runs per arm (pairs) of the pilot, empty when none.
    table : DataFrame
        ``n_per_arm, floor, half_width, power`` for n = 2 .. a little past the advice.
    source : str
        Where effect and SD came from.
    """

    effect: float
    sd: float
    alpha: float
    power: float
    paired: bool
    n_floor: int
    n_width: int
    n_power: int
    n_per_arm: int
    current: list[int] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: str = ""
    outcome: str = ""

    @property
    def can_decide(self) -> bool | None:
        """Whether the pilot's design already meets both conditions (None without a pilot)."""
        if not self.current:
            return None
        return min(self.current) >= self.n_per_arm and design_floor(
            self.current if not self.paired else self.current[:1], paired=self.paired) <= self.alpha

    def sentence(self) -> str:
        """One line for a report."""
        unit = "seed pairs" if self.paired else "seeds per arm"
        what = f" on {self.outcome}" if self.outcome else ""
        now = ""
        if self.current:
            now = (f" (now {' + '.join(map(str, self.current))}"
                   + (": enough)" if self.can_decide else ")"))
        return (f"Design: to decide an effect of {self.effect:.3g}{what} (between-run SD {self.sd:.3g}) at "
                f"α = {self.alpha:g} with power {self.power:g}, use {self.n_per_arm} {unit}{now}: the exact test "
                f"needs {self.n_floor} to go below α, the t test {self.n_power} for that power "
                f"({self.n_width} for an interval expected to exclude 0).")

    def summary(self) -> pd.DataFrame:
        """One row: ``outcome, effect, sd, alpha, power, paired, n_floor, n_width, n_power, n_per_arm, current,
        can_decide``."""
        return pd.DataFrame([dict(outcome=self.outcome, effect=self.effect, sd=self.sd, alpha=self.alpha,
                                  power=self.power, paired=self.paired, n_floor=self.n_floor, n_width=self.n_width,
                                  n_power=self.n_power, n_per_arm=self.n_per_arm,
                                  current=" + ".join(map(str, self.current)), can_decide=self.can_decide)])

    def to_markdown(self) -> str:
        """Title, the sentence, where the numbers come from, and the table of floor, half-width and power by n."""
        return "\n".join(["### Seeds per arm", "", self.sentence(), "", f"Effect and SD: {self.source}.", "",
                          markdown_table(self.table)]) + "\n"

    def _repr_html_(self) -> str:
        import html

        return ("<div class='causalgeom-plan'><h4>Seeds per arm</h4>"
                f"<p>{html.escape(self.sentence())}</p><p>Effect and SD: {html.escape(str(self.source))}.</p>"
                + self.table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="") + "</div>")

    def __repr__(self) -> str:
        return f"<PlanResult>\n{self.sentence()}\n{self.table.to_string(index=False)}"


def _from_result(res: MediationResult, effect_name: str, outcome: str | None, alpha: float
                 ) -> tuple[float, float, list[int], str, str]:
    from scipy import stats

    outcome = res.outcomes[0] if outcome is None else outcome
    t = res.summary()
    row = t[(t["effect"] == effect_name) & (t["outcome"] == outcome)]
    if row.empty:
        raise QueryError(f"effect_name: no effect {effect_name!r} for outcome {outcome!r} in the result; effects: "
                         f"{res.effect_names}, outcomes: {res.outcomes}")
    r = row.iloc[0]
    if not (np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])):
        raise QueryError(f"effect {effect_name!r} on {outcome!r} has no interval; plan needs one to infer the SD")
    counts = [int(v) for v in res.clusters_per_arm.values()]
    if len(counts) != 2 or min(counts) < 2:
        raise QueryError(f"plan from a mediation result needs two arms of >= 2 runs, got {res.clusters_per_arm}")
    df = max(sum(counts) - 2, 1)
    se = (r["ci_high"] - r["ci_low"]) / (2 * stats.t.ppf(0.5 + res.ci_level / 2, df))
    sd = float(se / math.sqrt(1 / counts[0] + 1 / counts[1]))
    src = (f"the pilot mediation result: {effect_name} = {r['estimate']:.4g}, between-run SD = its standard error "
           f"(from the {100 * res.ci_level:g}% interval, t with {df} df) / sqrt(1/{counts[0]} + 1/{counts[1]})")
    return float(r["estimate"]), sd, counts, src, outcome


def _from_table(table: pd.DataFrame, outcome: str, treatment: str, control: Any, treated: Any, paired: bool,
                pair_by: str) -> tuple[float, float, list[int], str]:
    for col, role in ((outcome, "outcome"), (treatment, "treatment")):
        if col not in table.columns:
            raise QueryError(f"{role}: no column {col!r} in the table; columns: {list(table.columns)}")
    if "run_id" in table.columns and table["run_id"].duplicated().any():  # sample level: run means
        keys = ["run_id", treatment] + ([pair_by] if paired else [])
        table = table.groupby(keys, as_index=False, sort=True)[outcome].mean()
    levels = list(pd.unique(table[treatment]))
    control = ("ce" if "ce" in levels else None) if control is None else control
    if treated is None:
        rest = [v for v in levels if v != control]
        treated = rest[0] if len(rest) == 1 else None
    if control not in levels or treated not in levels:
        raise QueryError(f"control/treated: levels {control!r} and {treated!r} must be values of {treatment!r}; "
                         f"found {levels}")
    y0 = table.loc[table[treatment] == control]
    y1 = table.loc[table[treatment] == treated]
    if paired:
        if pair_by not in table.columns:
            raise QueryError(f"pair_by: no column {pair_by!r} to pair runs by")
        m = y0.set_index(pair_by)[outcome].to_frame("c").join(y1.set_index(pair_by)[outcome].to_frame("t"),
                                                               how="inner")
        if len(m) < 2:
            raise QueryError(f"paired: fewer than 2 {pair_by}-matched pairs of {control!r} and {treated!r} runs")
        diff = (m["t"] - m["c"]).to_numpy(float)
        return (float(diff.mean()), float(diff.std(ddof=1)), [len(diff)],
                f"the pilot's {len(diff)} {pair_by}-matched run pairs: mean and SD of the pair differences of "
                f"{outcome!r}")
    a, b = y0[outcome].to_numpy(float), y1[outcome].to_numpy(float)
    if min(a.size, b.size) < 2:
        raise QueryError(f"the pilot needs >= 2 runs per arm to estimate the between-run SD; got {a.size} "
                         f"{control!r} and {b.size} {treated!r} runs")
    sd = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    return (float(b.mean() - a.mean()), sd, [a.size, b.size],
            f"the pilot's run-level {outcome!r}: difference of arm means ({treated!r} − {control!r}) and pooled "
            f"within-arm SD over {a.size} + {b.size} runs")


def plan(study: Any = None, *, outcome: str | None = None, treatment: str = "regularizer", control: Any = None,
         treated: Any = None, effect: float | None = None, sd: float | None = None, effect_name: str = "total",
         alpha: float = 0.05, power: float = 0.8, paired: bool = False, pair_by: str = "seed",
         max_n: int = 10_000) -> PlanResult:
    """Seeds per arm at which the exact test's floor and the expected interval allow a decision at ``alpha``.

    Parameters
    ----------
    study : Study, path, DataFrame, MediationResult or None
        The pilot: a study (its run-level table, `causalgeom.metrics.table.study_frame`), an analysis table (run or sample
        level; sample rows are averaged per ``run_id``), or a `MediationResult` (its ``effect_name`` estimate, and
        the between-run SD implied by its interval). None: give ``effect`` and ``sd``.
    outcome : str
        Outcome column (pilot study or table), or outcome of the mediation result (default its first).
    treatment, control, treated
        Arms of the pilot (defaults: ``regularizer``, ``"ce"``, the only other level).
    effect, sd : float, optional
        Effect (treated − control) and between-run SD; override the pilot's.
    effect_name : str
        Effect of a `MediationResult` to plan for (default ``"total"``).
    alpha : float
        Two-sided level of the decision (default 0.05).
    power : float
        Wanted probability that the t test rejects when the effect is as given (default 0.8).
    paired : bool
        Runs matched by ``pair_by`` across arms (seed pairs): sign-flip floor and one-sample t on differences.
    max_n : int
        Largest n searched.

    Returns
    -------
    PlanResult

    Raises
    ------
    QueryError
        Missing effect/SD, a non-positive SD, alpha or power outside (0, 1), unknown columns or levels.
    """
    for name, v in (("alpha", alpha), ("power", power)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise QueryError(f"{name}: expected a number in (0, 1), got {v!r}")
    current: list[int] = []
    source, out_name = "given", outcome or ""
    if isinstance(study, MediationResult):
        if paired:
            raise QueryError("paired=True: a mediation result compares arms of runs, not seed pairs; give the "
                             "study or a table")
        e0, s0, current, source, out_name = _from_result(study, effect_name, outcome, alpha)
    elif study is not None:
        if outcome is None:
            raise QueryError("outcome: name the pilot's outcome column (e.g. 'ece')")
        table = study
        if not isinstance(study, pd.DataFrame):
            from ..metrics.table import study_frame

            table = study_frame(study, level="run", progress=False)
        e0, s0, current, source = _from_table(table, outcome, treatment, control, treated, paired, pair_by)
    else:
        e0 = s0 = None
    if effect is not None:
        e0, source = float(effect), ("given effect; " + source) if study is not None else "given"
    if sd is not None:
        s0, source = float(sd), ("given SD; " + source) if study is not None else "given"
    if e0 is None or s0 is None:
        raise QueryError("plan needs a pilot (study, table or mediation result) or both effect= and sd=")
    if not (np.isfinite(s0) and s0 > 0):
        raise QueryError(f"sd: expected a positive between-run standard deviation, got {s0!r}")
    if not np.isfinite(e0) or e0 == 0:
        raise QueryError(f"effect: expected a non-zero effect to plan for, got {e0!r}")
    k = [1] if paired else [1, 1]
    n_floor = seeds_for_floor(k, alpha, paired=paired, max_n=max_n)
    start = 2
    n_width = next((n for n in range(start, max_n + 1) if _half_width(s0, n, alpha, paired) < abs(e0)), max_n)
    n_power = next((n for n in range(start, max_n + 1) if t_power(e0, s0, n, alpha, paired=paired) >= power), max_n)
    n_per_arm = max(n_floor, n_power)
    top = min(max_n, max(n_per_arm + 2, max(current, default=0) + 1, 6))
    rows = [dict(n_per_arm=n, floor=design_floor([n] if paired else [n, n], paired=paired),
                 half_width=_half_width(s0, n, alpha, paired), power=t_power(e0, s0, n, alpha, paired=paired))
            for n in range(2, top + 1)]
    return PlanResult(effect=float(e0), sd=float(s0), alpha=float(alpha), power=float(power), paired=bool(paired),
                      n_floor=n_floor, n_width=n_width, n_power=n_power, n_per_arm=n_per_arm, current=current,
                      table=pd.DataFrame(rows), source=source, outcome=out_name)
