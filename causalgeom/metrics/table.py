"""The analysis table of a study: one row per sample (or per run) with treatment, mediators and outcomes.

``study_frame`` (``Study.to_frame``) loads each run lazily, computes the per-sample metrics in one fused pass
over the run's chunks (`fused_run`: each chunk of ``features`` and ``logits`` is read once; the formulas are
those of `causalgeom.metrics.geometry`, `causalgeom.metrics.calibration` and `causalgeom.metrics.robustness`, shared through
`causalgeom.metrics.kernels`), and concatenates the runs.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .._util.eps import eps_label
from .._util.checks import check_choice
from ..errors import QueryError
from .blocks import compute, one_blas_thread, require_vars, run_array, sample_map
from .calibration import confidence_outcomes, ece_ts_from_logits, ts_split
from .kernels import FUSED_FIELDS, calibration_error, fused_block, width_bin_stats

__all__ = ["study_frame", "run_table", "fused_run", "robust_column", "min_flip_column", "robust_acc_column",
           "robust_key", "headless_center", "HEAD_CENTERS", "ID_COLUMNS", "SAMPLE_COLUMNS", "RUN_COLUMNS",
           "fused_lazy", "attack_names"]

#: Columns that identify the run of a row.
ID_COLUMNS = ("run_id", "regularizer", "strength", "seed")
#: Fixed columns of the sample-level table (robustness columns follow, one per attack and ε).
SAMPLE_COLUMNS = ID_COLUMNS + ("sample", "label", "norm", "rms", "cos_true", "cos_pred", "confidence", "correct",
                               "overconfidence", "nll", "brier", "margin")
#: Fixed columns of the run-level table.
RUN_COLUMNS = ID_COLUMNS + ("n_samples", "norm", "rms", "cos_true", "cos_pred", "confidence", "accuracy",
                            "overconfidence", "nll", "brier", "ece", "signed_ece", "ece_ts", "ece_debiased",
                            "ece_floor", "aurc")

#: Center kinds computed from the head (W, b); a run without ``head_weight`` gets ``"mean"`` instead.
HEAD_CENTERS = ("minimal_loss", "weight")

_MEAN_COLUMNS = ("norm", "rms", "cos_true", "cos_pred", "confidence", "overconfidence", "nll", "brier")


def robust_key(attack: str, eps: float, metric: str = "robust_acc") -> str:
    """Column name of a per-(attack, ε) metric: ``"robust_acc[pgd-linf@1/255]"`` (ε as `causalgeom._util.eps.eps_label`:
    k/255 where it is one, else 6 significant digits, ``"robust_acc[pgd-l2@0.25]"``).

    The one rule for these names (re-exported as ``causalgeom.metrics.summary.robust_key``).
    """
    return f"{metric}[{attack}@{eps_label(eps)}]"


def robust_column(attack: str, eps: float) -> str:
    """Name of the per-sample robustness indicator: ``"robust[pgd-linf@1/255]"`` (ε as `robust_key`)."""
    return robust_key(attack, eps, metric="robust")


def robust_acc_column(attack: str, eps: float) -> str:
    """Name of the per-run robust accuracy: ``"robust_acc[pgd-linf@1/255]"`` (as `causalgeom.metrics.summary`)."""
    return robust_key(attack, eps)


def min_flip_column(attack: str) -> str:
    """Name of the smallest flipping ε column: ``"min_flip_eps[pgd-linf]"``."""
    return f"min_flip_eps[{attack}]"


def attack_names(values: Any) -> np.ndarray:
    """Attack names (or any coordinate values) as an object array of str (the coordinate may be numpy's StringDType after a Zarr round trip)."""
    return np.array([str(v) for v in np.asarray(values).ravel().tolist()], dtype=object)


def _select(values: np.ndarray, wanted: Any, what: str, close: bool = False) -> np.ndarray:
    if wanted is None:
        return np.arange(values.size)
    wanted = [wanted] if isinstance(wanted, (str, int, float)) else list(wanted)
    idx = []
    for w in wanted:
        hit = np.flatnonzero(np.isclose(values.astype(float), float(w), rtol=1e-6, atol=0) if close
                             else attack_names(values) == str(w))
        if hit.size == 0:
            raise QueryError(f"{what}: {w!r} is not in this run (available: {values.tolist()})")
        idx.append(int(hit[0]))
    return np.asarray(idx)


def headless_center(center: str, without_head: Sequence[str], stacklevel: int = 3) -> str:
    """The center kind to use when the runs ``without_head`` lack ``head_weight``: ``center`` itself when it needs
    no head or every run has one; else ``"mean"`` (class means of each run's features), with a one-line
    `UserWarning` saying so. No cosine column is ever NaN because a head is missing.

    Parameters
    ----------
    center : {"minimal_loss", "mean", "weight"}
        The center kind asked for.
    without_head : sequence of str
        Run ids of the runs (of one table) that have no ``head_weight``.
    """
    if center not in HEAD_CENTERS or not len(without_head):
        return center
    ids = list(without_head)
    which = f"run {ids[0]!r} has" if len(ids) == 1 else (f"{len(ids)} runs ({', '.join(map(repr, ids[:3]))}"
                                                         f"{', ...' if len(ids) > 3 else ''}) have")
    warnings.warn(f"{which} no head_weight, which center={center!r} needs: cos_true/cos_pred are cosines to the "
                  "mean class centers (center='mean': class means of the features) instead", UserWarning,
                  stacklevel=stacklevel)
    return "mean"


def _without_head(study: Any, ids: Sequence[str]) -> list[str]:
    """The run ids among ``ids`` whose stores have no ``head_weight`` (from the run table, no array read)."""
    runs = study.runs
    if not len(runs) or "has_head" not in runs:
        return []
    wanted = set(ids)
    return [r for r, h in zip(runs["run_id"], runs["has_head"]) if r in wanted and h is not True and h != True]  # noqa: E712


def fused_run(ds: Any, center: str = "minimal_loss", *, warn_missing_head: bool = True) -> dict[str, np.ndarray]:
    """Every per-sample quantity of a run from one read of its ``features`` and ``logits`` (the fused pass).

    The class centers come first: in closed form from the head for ``"minimal_loss"`` / ``"weight"``
    (`causalgeom.metrics.geometry.class_centers`, reads no samples), or from one earlier pass over the features for
    ``"mean"`` (class means need every sample before any cosine can be formed, so that kind reads the features
    twice). Then one task per sample chunk reads the chunk of ``features``, ``logits`` and ``label`` once and
    computes `causalgeom.metrics.kernels.fused_block` on it.

    Parameters
    ----------
    ds : xarray.Dataset
        One schema-v1 run (dask-backed or in memory) with ``features``, ``logits``, ``label``.
    center : {"minimal_loss", "mean", "weight"}
        Class centers of the cosines.
    warn_missing_head : bool
        Warn (instead of failing) when a head-based ``center`` is asked of a run without ``head_weight``;
        its cosines then use ``center="mean"`` (`headless_center`).

    Returns
    -------
    dict of str to ndarray
        The columns of `causalgeom.metrics.kernels.FUSED_FIELDS` (each shape (n_samples,), float64; ``correct`` and
        ``pred`` hold integers) plus ``rms`` = norm / sqrt(d).

    Notes
    -----
    Equal to `geometry.magnitude`, `geometry.cosine_to_center` and `calibration.per_sample` up to the order of
    floating-point sums (the same formulas on the same blocks; tests compare at rtol 1e-12).
    """

    require_vars(ds, ("features", "logits", "label"), "fused_run")
    out = fused_lazy(ds, center, warn_missing_head)
    with one_blas_thread():
        arr = np.asarray(compute(out)[0])
    return _fused_columns(arr, int(ds.sizes["feature"]))


def fused_lazy(ds: Any, center: str, warn_missing_head: bool, cosines: bool = True, logits: Any = None) -> Any:
    """The fused pass of ``ds`` as an (n_samples, len(FUSED_FIELDS)) array (lazy on dask-backed runs).

    ``cosines=False``: no class centers are computed (no head needed, no class-mean pass) and the cosine columns
    are NaN, for callers that use none of them. ``logits``: the run's `run_array` of ``logits`` when the caller
    also computes it (one array, so one read of each chunk)."""
    from . import geometry

    C = None
    if cosines and warn_missing_head and "head_weight" not in ds.variables:
        center = headless_center(center, [str(ds.attrs.get("run_id"))], stacklevel=5)
    if cosines:
        C = np.asarray(geometry.class_centers(ds, kind=center).values, dtype=np.float64)
    z = run_array(ds, "logits") if logits is None else logits
    return sample_map(lambda f, z, y: fused_block(f, z, y, C), run_array(ds, "features"), z,
                      run_array(ds, "label"), ncols=len(FUSED_FIELDS))


def _fused_columns(arr: np.ndarray, d: int) -> dict[str, np.ndarray]:

    cols = {name: arr[:, i] for i, name in enumerate(FUSED_FIELDS)}
    cols["rms"] = cols["norm"] / np.sqrt(d)
    return cols


def run_table(ds: Any, *, attack: str | Sequence[str] | None = None, eps: float | Sequence[float] | None = None,
              center: str = "minimal_loss") -> pd.DataFrame:
    """The sample-level rows of one run (see `study_frame` for the columns).

    One pass over the run: each chunk of ``features``, ``logits`` and ``label`` is read once and every
    per-sample column is computed from it (`fused_run`; ``center="mean"`` first reads the features once more
    for the class means).

    Parameters
    ----------
    ds : xarray.Dataset
        One schema-v1 run (dask-backed or in memory).
    attack, eps, center
        As in `study_frame`.

    Returns
    -------
    pandas.DataFrame, shape (n_samples, n_columns)
    """
    return _run_table(ds, attack, eps, center)[0]


def _run_table(ds: Any, attack: Any, eps: Any, center: str, keep_logits: bool = False) -> tuple[pd.DataFrame, Any]:
    """`run_table` and, with ``keep_logits``, the run's logits (n, K) in memory from the same read of its chunks."""
    from . import robustness

    require_vars(ds, ("features", "logits", "label"), "the analysis table")
    n = int(ds.sizes["sample"])
    z = run_array(ds, "logits")
    lazy: dict[str, Any] = {"fused": fused_lazy(ds, center, True, logits=z)}
    if keep_logits:  # the same dask array as the fused pass's: its chunk reads are shared, not repeated
        lazy["logits"] = z
    a_idx = e_idx = None
    if "adv_correct" in ds.variables:
        attacks = attack_names(ds["attack"].values)
        eps_vals = np.asarray(ds["eps"].values, dtype=float)
        a_idx = _select(attacks, attack, "attack")
        e_idx = _select(eps_vals, eps, "eps", close=True)
        lazy["adv"] = ds["adv_correct"].isel(attack=a_idx, eps=e_idx)
        # derived flips combine with the fused pass's correctness, so the logits are not read a second time
        stored_flip = "min_flip_eps" in ds.variables
        lazy["flip"] = (ds["min_flip_eps"] if stored_flip else robustness.first_flip_eps(ds)).isel(attack=a_idx)
    lazy["label"] = ds["label"]
    with one_blas_thread():
        vals = compute(lazy)[0]
    fused = _fused_columns(np.asarray(vals["fused"]), int(ds.sizes["feature"]))

    attrs = ds.attrs
    reg = attrs.get("regularizer")
    strength = attrs.get("strength", 0.0 if reg == "ce" else np.nan)
    sample = np.asarray(ds["sample"].values) if "sample" in ds.coords else np.arange(n)
    correct = fused["correct"].astype(np.int8)
    cols: dict[str, Any] = {
        "run_id": np.full(n, attrs.get("run_id"), dtype=object),
        "regularizer": np.full(n, reg, dtype=object),
        "strength": np.full(n, np.nan if strength is None else float(strength)),
        "seed": pd.array([attrs.get("seed")] * n, dtype="Int64"),
        "sample": sample,
        "label": np.asarray(vals["label"], dtype=np.int64),
        "norm": fused["norm"],
        "rms": fused["rms"],
        "cos_true": fused["cos_true"],
        "cos_pred": fused["cos_pred"],
        "confidence": fused["confidence"],
        "correct": correct,
        "overconfidence": fused["confidence"] - correct,
        "nll": fused["nll"],
        "brier": fused["brier"],
        "margin": fused["margin"],
    }
    if a_idx is not None:
        adv = np.asarray(vals["adv"].values)
        names = attack_names(lazy["adv"]["attack"].values)
        epss = np.asarray(lazy["adv"]["eps"].values, dtype=float)
        flip = np.asarray(vals["flip"].transpose("attack", "sample").values, dtype=float)
        if not stored_flip:
            flip = robustness.flip_given_clean(flip, fused["correct"]).astype(float)
        for i, a in enumerate(names):
            for j, e in enumerate(epss):
                cols[robust_column(a, e)] = adv[i, j].astype(np.int8)
            cols[min_flip_column(a)] = flip[i]
    return pd.DataFrame(cols), (np.asarray(vals["logits"]) if keep_logits else None)


def study_frame(study: Any, level: str = "sample", attack: str | Sequence[str] | None = None,
                eps: float | Sequence[float] | None = None, center: str = "minimal_loss", progress: bool = True,
                run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The analysis table of ``study``: one row per sample (``level="sample"``) or per run (``level="run"``).

    Parameters
    ----------
    study : causalgeom.Study
    level : {"sample", "run"}
    attack : str or list of str, optional
        Attacks whose robustness columns are included (default: all in the dumps).
    eps : float or list of float, optional
        ε values included (default: all swept; matched to a relative tolerance of 1e-6).
    center : {"minimal_loss", "mean", "weight"}
        Class centers of the cosines (`causalgeom.metrics.geometry.cosine_to_center`). When a run lacks ``head_weight``,
        the head-based kinds are replaced by ``"mean"`` for every run of the table, with a one-line warning
        (`headless_center`); ``attrs["center"]`` records the kind used.
    progress : bool
        Progress bar over runs on stderr.
    run_ids : iterable of str, optional
        Only these runs (default: all complete runs).

    Returns
    -------
    pandas.DataFrame
        ``attrs["level"]`` is set to ``level``. Sample level, shape (total samples, columns):

        ============================ ===============================================================
        ``run_id``, ``regularizer``  the run and its treatment (run attributes)
        ``strength``, ``seed``       regularizer strength (0 for ``ce``) and seed
        ``sample``, ``label``        sample index (the ``sample`` coordinate or position) and class
        ``norm``, ``rms``            feature magnitude ‖h‖₂ and ‖h‖₂/√d (`geometry.magnitude`)
        ``cos_true``, ``cos_pred``   cosine of h to its true / predicted class center
        ``confidence``               max softmax probability
        ``correct``                  1 if argmax = label else 0 (int8)
        ``overconfidence``           confidence − correct
        ``nll``, ``brier``           −log p_label; Σ_k (p_k − 1[k=label])²
        ``margin``                   logit margin z_label − max_{k≠label} z_k (> 0 iff correct, no ties)
        ``robust[A@E]``              1 if still correct after attack A at ε = E (int8)
        ``min_flip_eps[A]``          smallest swept ε that flips the sample (inf: none; 0: wrong clean)
        ============================ ===============================================================

        Run level, one row per run: the identifiers, ``n_samples``, the means over samples of ``norm`` ...
        ``brier`` (``accuracy`` = mean of ``correct``), ``ece`` and ``signed_ece`` (15 equal-width bins,
        `calibration.ece` / `calibration.signed_ece`), ``ece_ts`` (ECE after temperature scaling fitted on a
        held-out half, `calibration.ece_ts`), ``ece_debiased``, ``ece_floor`` and ``aurc``
        (`calibration.confidence_outcomes`), ``robust_acc[A@E]`` (mean of ``robust[A@E]`` =
        `robustness.robust_accuracy`) and ``min_flip_eps[A]`` (median over samples, robust to inf).

    Raises
    ------
    QueryError
        Unknown ``level``, ``attack`` or ``eps``.
    """
    check_choice(level, "level", ("sample", "run"), error=QueryError)
    ids = list(study.run_ids if run_ids is None else run_ids)
    it: Iterable[str] = ids
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ids, desc="analysis table", unit="run", file=sys.stderr)
    if center in HEAD_CENTERS:  # one kind of center for every run of the table
        center = headless_center(center, _without_head(study, ids), stacklevel=4)
    frames = []
    for run_id in it:
        ds = study[run_id]
        df, logits = _run_table(ds, attack, eps, center, keep_logits=level == "run")
        if level == "run":
            df = _aggregate(df, logits)
        frames.append(df)
    if not frames:
        cols = SAMPLE_COLUMNS if level == "sample" else RUN_COLUMNS
        out = pd.DataFrame(columns=list(cols))
    else:
        out = pd.concat(frames, ignore_index=True, sort=False)
        fixed = SAMPLE_COLUMNS if level == "sample" else RUN_COLUMNS
        rest = sorted(c for c in out.columns if c not in fixed)
        rest = [c for c in rest if c.startswith(("robust", "robust_acc"))] + \
               [c for c in rest if not c.startswith(("robust", "robust_acc"))]
        out = out[[c for c in fixed if c in out.columns] + rest]
        for c in out.columns:
            if c.startswith("robust[") and out[c].isna().any():
                out[c] = out[c].astype("Float64")
    out.attrs["level"] = level
    out.attrs["center"] = center
    return out


def _aggregate(df: pd.DataFrame, logits: np.ndarray | None = None) -> pd.DataFrame:
    """One run's row of the run-level table from its sample-level rows and (for ``ece_ts``) its logits in memory.

    No further read of the run: ``ece_ts`` fits its temperature on the logits kept from the fused pass's read
    (`causalgeom.metrics.calibration.ece_ts_from_logits`, split by `causalgeom.metrics.calibration.ts_split` of the ``sample``
    column, as `causalgeom.metrics.calibration.ece_ts`)."""
    row: dict[str, Any] = {c: df[c].iloc[0] for c in ID_COLUMNS}
    row["n_samples"] = len(df)
    for c in _MEAN_COLUMNS:
        row[c] = float(df[c].mean())
    row["accuracy"] = float(df["correct"].mean())
    # 15 equal-width bins from the per-sample columns already in memory (no second read of the logits);
    # the same bin statistics as calibration.ece / signed_ece, summed in one piece instead of per chunk.

    stats = width_bin_stats(df["confidence"].to_numpy(float), df["correct"].to_numpy(float), 15)
    row["ece"] = calibration_error(stats, "l1")
    row["signed_ece"] = calibration_error(stats, "signed")
    row["ece_ts"] = (ece_ts_from_logits(logits, df["label"].to_numpy(), ts_split(df["sample"].to_numpy()), 15)[0]
                     if logits is not None else np.nan)
    row.update(confidence_outcomes(df["confidence"].to_numpy(float), df["correct"].to_numpy(float), 15))
    for c in df.columns:
        if c.startswith("robust["):
            row["robust_acc" + c[len("robust"):]] = float(df[c].mean())
        elif c.startswith("min_flip_eps["):
            row[c] = float(np.median(df[c].to_numpy(float)))
    return pd.DataFrame([row])
