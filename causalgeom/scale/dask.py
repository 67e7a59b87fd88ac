# Over 600 lines on purpose: one concern (analyses from per-run sufficient statistics on a cluster): run_moments and the mediation on them share the moment layout.
"""Dask analysis from per-run sufficient statistics (`run_moments`, `mediate_study`)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import HeadMissingError, QueryError
from ..dump.study import as_study
from ..metrics import robustness
from ..metrics.blocks import one_blas_thread
from ..metrics.kernels import FUSED_FIELDS
from ..metrics.table import attack_names, fused_lazy, headless_center, min_flip_column, robust_column

log = logging.getLogger(__name__)


# ============================================================================================
# the cluster bootstrap from per-run sufficient statistics
# ============================================================================================
#: Per-sample columns of the study table (`causalgeom.metrics.table.study_frame`) that `run_moments` computes from the
#: chunks, besides ``robust[ATTACK@EPS]`` and ``min_flip_eps[ATTACK]``.
SAMPLE_MOMENT_COLUMNS = ("label", "norm", "rms", "cos_true", "cos_pred", "confidence", "correct", "overconfidence",
                         "nll", "brier")
_RUN_LEVEL = ("strength", "seed")


def _moments_block(block: np.ndarray) -> np.ndarray:
    """Sufficient statistics of a block of rows (m, c): ``[n, mean (c), comoment (c*c), non-finite count (c)]``."""
    x = np.asarray(block, dtype=np.float64)
    m, c = x.shape
    bad = ~np.isfinite(x)
    nonfinite = bad.sum(0).astype(np.float64)
    if bad.any():
        x = np.where(bad, 0.0, x)
    if m == 0:
        return np.concatenate([[0.0], np.zeros(c), np.zeros(c * c), nonfinite])
    mean = x.mean(0)
    xc = x - mean
    return np.concatenate([[float(m)], mean, (xc.T @ xc).ravel(), nonfinite])


def _moments_combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise combination of two `_moments_block` results (Chan, Golub & LeVeque 1979)."""
    c = int(round(np.sqrt(a.size))) - 1  # size = 1 + c + c*c + c = (c + 1)^2
    na, nb = a[0], b[0]
    n = na + nb
    if na == 0 or nb == 0:
        out = (b if na == 0 else a).copy()
        out[1 + c + c * c:] = a[1 + c + c * c:] + b[1 + c + c * c:]
        return out
    ma, mb = a[1:1 + c], b[1:1 + c]
    delta = mb - ma
    mean = ma + delta * (nb / n)
    C = a[1 + c:1 + c + c * c] + b[1 + c:1 + c + c * c] + np.outer(delta, delta).ravel() * (na * nb / n)
    return np.concatenate([[n], mean, C, a[1 + c + c * c:] + b[1 + c + c * c:]])


def _combine_rows(rows: np.ndarray) -> np.ndarray:
    """`_moments_combine` over the rows of ``rows`` (one `_moments_block` result per chunk), pairwise as a tree."""
    parts = list(np.asarray(rows, dtype=np.float64))
    while len(parts) > 1:
        nxt = [_moments_combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _tree(arr: Any) -> Any:
    """Delayed sufficient statistics of the rows of a dask array (n, c) with one chunk along its columns.

    One `_moments_block` task per row chunk, then one task per run that combines them (`_combine_rows`); few
    tasks, since on a small cluster each costs about as much scheduler time as a millisecond of work. The chunks
    go through ``to_delayed`` so that another reduction of the same array in the same compute (the image means
    of `mediate_study`) shares their keys instead of having the pass fused into it a second time.
    """
    import dask

    c = int(arr.shape[1])
    block = dask.delayed(_moments_block, pure=True)
    parts = [block(b) for b in arr.to_delayed().ravel()]
    if not parts:  # no samples
        return dask.delayed(_moments_block)(np.empty((0, c)))
    return dask.delayed(_combine_rows, pure=True)(parts)


def _sample_columns(ds: Any) -> list[str]:
    """Per-sample numeric columns the study table would have for this run."""
    cols = list(SAMPLE_MOMENT_COLUMNS)
    if "adv_correct" in ds.variables:
        attacks = attack_names(ds["attack"].values)
        eps = np.asarray(ds["eps"].values, dtype=float)
        cols += [robust_column(a, e) for a in attacks for e in eps]
        cols += [min_flip_column(a) for a in attacks]
    return cols


#: Study-table columns taken from the fused pass (`causalgeom.metrics.table.fused_lazy`), by their formula there.
_FUSED_COLUMNS = ("norm", "rms", "cos_true", "cos_pred", "confidence", "correct", "overconfidence", "nll", "brier")


def _assemble(spec: tuple[tuple[str, Any], ...], d: int, *blocks: np.ndarray) -> np.ndarray:
    """The study-table columns of one sample chunk (rows, len(spec)) from that chunk's fused block and extra columns.

    ``spec`` entries: ("fused", j) column j of the fused block (``blocks[0]``); ("rms", j) that column / sqrt(d);
    ("over", (jc, jk)) confidence − correct; ("extra", i) the 1-column block ``blocks[i]``; ("flip", (i, jk))
    `robustness.min_flip_eps` from the first flipping ε in ``blocks[i]`` and the clean correctness (fused column
    jk), so the logits are not read again for it; ("const", v) a value.
    """
    rows = blocks[0].shape[0]
    out = np.empty((rows, len(spec)), dtype=np.float64)
    for k, (kind, arg) in enumerate(spec):
        if kind == "fused":
            out[:, k] = blocks[0][:, arg]
        elif kind == "rms":
            out[:, k] = blocks[0][:, arg] / np.sqrt(float(d))
        elif kind == "over":
            out[:, k] = blocks[0][:, arg[0]] - blocks[0][:, arg[1]]
        elif kind == "extra":
            out[:, k] = blocks[arg][:, 0]
        elif kind == "flip":
            out[:, k] = robustness.flip_given_clean(blocks[arg[0]][:, 0][None, :], blocks[0][:, arg[1]])[0]
        else:
            out[:, k] = arg
    return out


def _run_columns(ds: Any, columns: Sequence[str], center: str) -> Any:
    """The study-table columns ``columns`` of run ``ds`` as one dask array (n_samples, len(columns)) float64.

    Every geometry and calibration column comes from the fused pass (`causalgeom.metrics.table.fused_lazy`:
    one task per sample chunk reads that chunk of ``features``, ``logits`` and ``label`` once), and one more
    task per chunk assembles the asked columns from its block (``rms`` = norm / sqrt(d), ``overconfidence`` =
    confidence − correct, as in `causalgeom.metrics.table.run_table`), so a graph that uses several columns
    still reads each chunk once, in few tasks (per-column slicing made ~25 tasks per chunk, which cost more
    scheduler time than the pass itself on a cluster).
    """
    import dask.array as da

    ref = ds["label"].data
    n = int(ds.sizes["sample"])
    sample_chunks = ref.chunks[0] if isinstance(ref, da.Array) else (n,)

    def lazy2d(x: Any) -> Any:
        data = x.data if hasattr(x, "data") else x
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks=(sample_chunks,) + tuple(-1 for _ in np.shape(data)[1:]))
        data = data.astype(np.float64)
        return data if data.ndim == 2 else data[:, None]

    spec: list[tuple[str, Any]] = []
    extras: list[Any] = []
    flip = None
    needs_fused = False
    for name in columns:
        if name == "rms":
            spec.append(("rms", FUSED_FIELDS.index("norm")))
        elif name == "overconfidence":
            spec.append(("over", (FUSED_FIELDS.index("confidence"), FUSED_FIELDS.index("correct"))))
        elif name in _FUSED_COLUMNS:
            spec.append(("fused", FUSED_FIELDS.index(name)))
        elif name == "label":
            extras.append(lazy2d(ds["label"]))
            spec.append(("extra", len(extras)))
            continue
        elif name in _RUN_LEVEL:
            value = _run_value(ds.attrs, name)
            spec.append(("const", np.nan if value is None else float(value)))
            continue
        else:
            col, derived = None, False
            if "adv_correct" in ds.variables:
                attacks = attack_names(ds["attack"].values)
                eps = np.asarray(ds["eps"].values, dtype=float)
                for i, a in enumerate(attacks):
                    if name == min_flip_column(a):
                        # a stored min_flip_eps as it is; a derived one from the fused pass's correctness
                        derived = "min_flip_eps" not in ds.variables
                        if flip is None:
                            flip = robustness.first_flip_eps(ds) if derived else robustness.min_flip_eps(ds)
                        col = lazy2d(flip.isel(attack=i))
                    for j, e in enumerate(eps):
                        if name == robust_column(a, e):
                            col = lazy2d(ds["adv_correct"].isel(attack=i, eps=j))
            if col is None:
                raise QueryError(f"column {name!r} is not a per-sample column of run {ds.attrs.get('run_id')!r}; "
                                 f"available: {_sample_columns(ds) + list(_RUN_LEVEL)}")
            extras.append(col)
            if not derived:
                spec.append(("extra", len(extras)))
                continue
            spec.append(("flip", (len(extras), FUSED_FIELDS.index("correct"))))
        needs_fused = True
    if needs_fused:
        cosines = any(name in ("cos_true", "cos_pred") for name in columns)
        try:
            first = lazy2d(fused_lazy(ds, center, warn_missing_head=False, cosines=cosines))
        except HeadMissingError:
            raise QueryError(f"columns {list(columns)}: run {ds.attrs.get('run_id')!r} has no head_weight, which "
                             f"center={center!r} needs for the cosines; use center='mean'") from None
    else:  # no fused column asked: the first block only gives the rows
        first = lazy2d(ds["label"])
    chunks = first.chunks[0]
    arrays = [first.rechunk({1: -1})] + [e.rechunk({0: chunks, 1: -1}) for e in extras]
    return da.map_blocks(_assemble, tuple(spec), int(ds.sizes["feature"]), *arrays, chunks=(chunks, (len(spec),)),
                         dtype=np.float64, meta=np.empty((0, 0), dtype=np.float64))


def _run_value(attrs: Mapping[str, Any], name: str) -> Any:
    if name == "strength":
        reg = attrs.get("regularizer")
        s = attrs.get("strength", 0.0 if reg == "ce" else np.nan)
        return np.nan if s is None else float(s)
    return attrs.get(name)


def _lazy_moments(ds: Any, columns: Sequence[str], center: str, stacked: Any = None) -> Any:
    """Delayed sufficient statistics of ``columns`` of one run: one task per Zarr chunk, then a tree.

    ``stacked``: the run's `_run_columns` array when the caller shares it with another reduction of the same pass.
    """
    import dask

    if stacked is None:
        stacked = _run_columns(ds, columns, center)
    return _tree(stacked)


def _headless_center(runs: Mapping[str, Any], columns: Sequence[str], center: str) -> str:
    """The in-process table's rule (`causalgeom.metrics.table.headless_center`, same warning) for the cosine
    columns: when some of ``runs`` have no ``head_weight``, every run's cosines use the mean class centers."""
    if not any(c in ("cos_true", "cos_pred") for c in columns):
        return center  # no cosine asked: the centers are never computed
    without = [str(ds.attrs.get("run_id", r)) for r, ds in runs.items() if "head_weight" not in ds.variables]
    return headless_center(center, without, stacklevel=4)


def _graphs_here() -> Any:
    """Build the per-run graphs with dask's synchronous scheduler: the few small reads they need (the head for the
    class centers) then happen in this process instead of as a round trip to the cluster per array (about 60 ms
    per run on a LocalCluster, serial before any task starts)."""
    import dask

    return dask.config.set(scheduler="sync")


class RunMoments(NamedTuple):
    """Sufficient statistics of some study-table columns over one run's samples (see :func:`run_moments`)."""

    n: int
    mean: np.ndarray  # (c,)
    comoment: np.ndarray  # (c, c), about the run's own mean
    nonfinite: np.ndarray  # (c,)


def _unpack(vec: np.ndarray, c: int) -> RunMoments:
    vec = np.asarray(vec, dtype=np.float64)
    return RunMoments(int(round(vec[0])), vec[1:1 + c], vec[1 + c:1 + c + c * c].reshape(c, c), vec[1 + c + c * c:])


def run_moments(study: Any, columns: Sequence[str], *, run_ids: Sequence[str] | None = None,
                center: str = "minimal_loss") -> dict[str, RunMoments]:
    """Per-run sufficient statistics of study-table columns, computed as Dask tasks from the Zarr chunks.

    For each run: the number of samples, the mean of every column and their co-moment matrix
    ``sum_i (x_i - mean)(x_i - mean)'`` (one task per chunk, combined pairwise by Chan, Golub &
    LeVeque's update, so the chunks' rows never leave the workers). Every geometry and calibration
    column comes from the fused per-sample pass (`causalgeom.metrics.table.fused_run`), so each chunk
    of ``features`` and ``logits`` is read once however many columns are asked. All runs are computed
    in one pass (on the cluster inside a :func:`client` block; in this process otherwise, one BLAS
    thread per dask thread).

    Parameters
    ----------
    study : causalgeom.Study or path
    columns : list of str
        Per-sample columns of :func:`causalgeom.metrics.table.study_frame` (:data:`SAMPLE_MOMENT_COLUMNS`,
        ``robust[ATTACK@EPS]``, ``min_flip_eps[ATTACK]``) or run-level ``strength`` / ``seed``.
    run_ids : list of str, optional
        Default: every complete run.
    center : str
        Class centers of the cosine columns (as in ``study_frame``): when some runs have no head, the cosines of
        every run use ``"mean"`` with the table's one-line warning (`causalgeom.metrics.table.headless_center`).

    Returns
    -------
    dict
        run_id -> :class:`RunMoments` ``(n, mean (c,), comoment (c, c), nonfinite (c,))``; ``nonfinite``
        counts the NaN/Inf values of each column, which enter the sums as 0 (the moments of such a column
        are not meaningful; :func:`mediate_study` refuses them).
    """
    study = as_study(study)
    ids = list(study.run_ids if run_ids is None else run_ids)
    columns = list(columns)
    runs = {r: study[r] for r in ids}
    center = _headless_center(runs, columns, center)
    with _graphs_here():
        lazy = [_lazy_moments(runs[r], columns, center) for r in ids]
    import dask

    with one_blas_thread():  # in this process: one BLAS thread per dask thread (workers: Dask's pre-spawn env)
        values = dask.compute(*lazy)  # Delayed trees (not arrays): dask.compute, on the active client if any
    return {r: _unpack(v, len(columns)) for r, v in zip(ids, values)}


def _moment_gram(n: float, center: np.ndarray, comoment: np.ndarray) -> np.ndarray:
    """Gram matrix of ``[1, x - a]`` over a run's rows from its count, mean offset ``center`` (= mean − a) and
    comoment (sum of outer products about the mean), shape (1 + c, 1 + c)."""
    c = center.shape[0]
    G = np.empty((1 + c, 1 + c))
    G[0, 0] = n
    G[0, 1:] = G[1:, 0] = n * center
    G[1:, 1:] = comoment + n * np.outer(center, center)
    return G


def _design_map(p: int, width: int, t: float, n_cols: int) -> np.ndarray:
    """Linear map (p, width) from ``[1, columns]`` to the regressors ``[1, t, first n_cols columns, ...]``; the rows
    after ``2 + n_cols`` (interaction and outcome blocks) are filled by the caller."""
    B = np.zeros((p, width))
    B[0, 0] = 1.0
    B[1, 0] = t
    B[2:2 + n_cols, 1:1 + n_cols] = np.eye(n_cols)
    return B


def _grams(design: Any, moments: list[RunMoments], t_run: np.ndarray, interaction: bool) -> np.ndarray:
    """Per-cluster Gram matrices of ``V = [1, T, Mc, Xc, (T Mc), Yc]`` from per-run moments (R, p, p).

    With ``w = (M, X, Y)`` and ``mu`` their mean over all kept rows, run ``r`` (constant treatment
    ``t_r``) has ``z = [1, w - mu]`` with Gram ``[[n, n d'], [n d, C + n d d']]`` (``d = mean_r - mu``);
    ``v = B_r z`` is linear in ``z``, so ``G_r = B_r Gz_r B_r'``. Equal to
    `LinearMediation.cluster_grams` on the full table up to floating-point summation order.
    """
    K, q, L = design.M.shape[1], design.X.shape[1], design.Y.shape[1]
    c = K + q + L
    n_tot = sum(m.n for m in moments)
    mu = sum(m.n * m.mean for m in moments) / n_tot
    p = 2 + K + q + (K if interaction else 0) + L
    out = np.zeros((len(moments), p, p))
    for r, (m, t) in enumerate(zip(moments, t_run)):
        Gz = _moment_gram(m.n, m.mean - mu, m.comoment)
        B = _design_map(p, 1 + c, t, K + q)
        row = 2 + K + q
        if interaction:
            B[row:row + K, 1:1 + K] = t * np.eye(K)
            row += K
        B[row:row + L, 1 + K + q:] = np.eye(L)
        out[r] = B @ Gz @ B.T
    return out


def _demeaned_moments(w: np.ndarray, wbar: np.ndarray, qbar: np.ndarray, start: int, stop: int, K: int) -> np.ndarray:
    """`_moments_block` of ``[w - wbar, M, qbar]`` for the rows ``start:stop`` of a run (``w``: its columns there)."""
    return _moments_block(np.concatenate([w - wbar[start:stop], w[:, :K], qbar[start:stop]], axis=1))


def _pairing_problem(runs: list[Any]) -> str | None:
    """Why ``runs`` cannot be paired by image (None when every run holds the same sample ids in the same order)."""
    ids = [np.asarray(ds["sample"].values) if "sample" in ds.coords else np.arange(int(ds.sizes["sample"]))
           for ds in runs]
    if any(i.shape != ids[0].shape or not np.array_equal(i, ids[0]) for i in ids[1:]):
        return "the runs did not score the same sample ids in the same order"
    if np.unique(ids[0]).size != ids[0].size:
        return "sample ids repeat within a run"
    return None


def _image_means(W: list[Any], K: int, t_run: np.ndarray) -> tuple[Any, Any]:
    """Lazy per-image means over the runs of the columns (n_images, c) and of ``t_r M`` (n_images, K)."""
    R = len(W)
    total = W[0]
    tm = W[0][:, :K] * t_run[0]
    for r in range(1, R):
        total = total + W[r]
        tm = tm + W[r][:, :K] * t_run[r]
    return total / R, tm / R


def _paired_grams(W: list[Any], wbar: np.ndarray, qbar: np.ndarray, K: int, q: int, t_run: np.ndarray,
                  interaction: bool) -> tuple[np.ndarray, str]:
    """Per-run Gram matrices of the within-image demeaned rows, from one more pass over the chunks.

    ``W``: each run's `_run_columns` (n_images, c); ``wbar`` / ``qbar``: the per-image means over the runs of
    the columns and of ``t_r M`` (`_image_means`, computed in the pass that also gives the runs' moments).
    This pass takes, per run, the moments of ``[w - mean_i(w), M, mean_i(t M)]``; the Gram matrix of
    ``V = [1, T, M~, X~, (T Mc)~, Y~]`` (as in `LinearMediation` with image fixed effects) is a linear map of
    them.
    """
    import dask

    R, n_img, c = len(W), int(wbar.shape[0]), int(wbar.shape[1])
    # the image means enter the graph once (one key each, sent once to each worker), not once per run and chunk
    wkey, qkey = dask.delayed(wbar, pure=True), dask.delayed(qbar, pure=True)
    block = dask.delayed(_demeaned_moments, pure=True)
    lazy = []
    for r in range(R):
        stops = np.cumsum(W[r].chunks[0])
        parts = [block(b, wkey, qkey, int(e - n), int(e), K)
                 for b, n, e in zip(W[r].to_delayed().ravel(), W[r].chunks[0], stops)]
        lazy.append(dask.delayed(_combine_rows, pure=True)(parts))
    with one_blas_thread():
        moments = [_unpack(v, c + 2 * K) for v in dask.compute(*lazy)]
    mM = wbar[:, :K].mean(0)  # global mean of the mediators (balanced: mean of the image means)
    tbar = float(np.mean(t_run))
    L = c - K - q
    p = 2 + K + q + (K if interaction else 0) + L
    G = np.zeros((R, p, p))
    for r, (m, t) in enumerate(zip(moments, t_run)):
        c2 = c + 2 * K
        Gz = _moment_gram(m.n, m.mean, m.comoment)
        B = _design_map(p, 1 + c2, t, K + q)
        row = 2 + K + q
        if interaction:
            for j in range(K):
                B[row + j, 0] = -mM[j] * (t - tbar)
                B[row + j, 1 + c + j] = t
                B[row + j, 1 + c + K + j] = -1.0
            row += K
        B[row:row + L, 1 + K + q:1 + c] = np.eye(L)
        G[r] = B @ Gz @ B.T
    return G, f"paired by image: image fixed effects absorbed by within-image demeaning ({n_img} images × {R} runs)"


def mediate_study(study: Any, *, treatment: str, mediators: str | Sequence[str], outcome: str | Sequence[str],
                  control: Any = None, treated: Any = None, covariates: Sequence[str] = (), n_boot: int = 1000,
                  rng: np.random.Generator | int | None = None, ci_level: float = 0.95, interaction: bool = False,
                  ordered: bool = False, treatment_type: str = "auto", center: str = "minimal_loss",
                  run_ids: Sequence[str] | None = None, inference: str | None = None, bootstrap: str | None = None,
                  paired_by: str | None = "auto", estimand: str = "auto") -> Any:
    """``cg.causal.mediate(study.to_frame(), ..., cluster="run_id")`` without building the per-sample table.

    The regression estimator with a linear outcome model and the cluster bootstrap need only each
    run's Gram matrix (`causalgeom.causal.bootstrap`); these come from per-run sufficient statistics
    (:func:`run_moments`) computed as Dask tasks from the Zarr chunks, so neither features nor
    per-sample rows are collected on one machine. The replicates use the same random draws as
    :func:`causalgeom.causal.mediate` with the same ``rng``, so the results agree with it up to
    floating-point summation order.

    Parameters
    ----------
    study : causalgeom.Study or path
    treatment : str
        A run-level column of the study table: ``"regularizer"`` (categorical), ``"strength"`` or ``"seed"``.
    mediators, outcome, covariates
        Per-sample numeric columns of the study table (see :func:`run_moments`); covariates may also
        be ``strength`` / ``seed``.
    control, treated, n_boot, rng, ci_level, interaction, ordered, treatment_type, inference
        As in :func:`causalgeom.causal.mediate` (``method="regression"``, ``outcome_model="linear"``,
        ``cluster="run_id"``, ``level="sample"``); ``inference`` "cr2", "permutation" or "bootstrap"
        (``bootstrap="cluster"`` only: the other schemes need the rows).
    paired_by : {"auto", "sample"} or None
        As in ``mediate``: image fixed effects by within-image demeaning when every run holds the same
        sample ids (in the same order), from two passes over the chunks (the first gives each run's moments and
        the per-image sums over the runs, an ``n_images × columns`` accumulator; the second each run's moments
        about those image means); unpaired, one pass. Every pass reads each chunk of ``features`` and
        ``logits`` once (the fused per-sample pass, `causalgeom.metrics.table.fused_run`).
        ``"sample"`` raises `QueryError` when the runs cannot be paired; None turns it off. The Mundlak
        table and the overlap check need the rows and are left empty.
    estimand : {"auto", "runs"}
        Only the effect over runs (the model-conditional estimand needs the per-image rows).
    center : str
        Class centers of the cosine columns; runs without a head: as in :func:`run_moments`.
    run_ids : list of str, optional
        Only these runs.

    Returns
    -------
    causalgeom.causal.MediationResult
        As from ``mediate``; the refuters (``cg.causal.refute``) need the per-sample rows and are not
        available on it.

    Raises
    ------
    QueryError
        As ``mediate`` (unknown columns, levels, too few clusters, NaN/Inf values, ...).
    """
    from ..causal.spec import MediationSpec

    spec = MediationSpec(treatment=treatment, mediators=mediators, outcomes=outcome, control=control,
                         treated=treated, covariates=covariates, cluster="run_id", method="regression",
                         n_boot=n_boot, bootstrap=bootstrap, ci_level=ci_level, outcome_model="linear",
                         interaction=interaction, ordered=ordered, treatment_type=treatment_type, level="sample",
                         inference=inference, paired_by=paired_by, estimand=estimand)
    return mediate_moments(study, spec, rng=rng, center=center, run_ids=run_ids)


def mediate_moments(study: Any, spec: Any, *, rng: Any = None, center: str = "minimal_loss",
                    run_ids: Sequence[str] | None = None) -> Any:
    """The Dask engine's estimation: `mediate_study` for a `causalgeom.causal.MediationSpec` (the question's
    ``cluster``, ``method``, ``level`` and ``outcome_model`` are taken as ``"run_id"``, ``"regression"``,
    ``"sample"`` and ``"linear"``; ``engine="dask"`` on the result).

    Raises
    ------
    QueryError
        As `mediate_study`.
    """
    import pandas as pd

    from .._util.rng import check_random_state
    from ..causal.design import build_design
    from ..causal.mediation import build_result, estimator_text, run_inference

    treatment, mediators, outcome = spec.treatment, list(spec.mediators), list(spec.outcomes)
    control, treated, covariates = spec.control, spec.treated, list(spec.covariates)
    n_boot = 1000 if spec.n_boot is None else spec.n_boot
    ci_level, interaction, ordered = spec.ci_level, spec.interaction, spec.ordered
    treatment_type, paired_by, estimand = spec.treatment_type, spec.paired_by, spec.estimand
    inference, bootstrap = spec.resolved_inference
    if estimand == "model":
        raise QueryError("estimand='model': mediate_study supports the effect over runs only (inference over "
                         "images needs the per-image rows); use cg.causal.mediate(study.to_frame(), "
                         "estimand='model')")
    if inference == "bootstrap" and bootstrap != "cluster":
        raise QueryError(f"bootstrap={bootstrap!r}: mediate_study supports bootstrap='cluster' only (the other "
                         "schemes resample rows)")
    rng = check_random_state(rng, error=QueryError)
    study = as_study(study)
    ids = list(study.run_ids if run_ids is None else run_ids)
    if not ids:
        raise QueryError("study: no complete runs to analyse")
    runs = {r: study[r] for r in ids}
    # one row per run with the table's run-level columns; per-sample columns as placeholders, so that
    # build_design checks the question (columns, levels, clusters) exactly as mediate would
    common = None
    for ds in runs.values():
        cols = _sample_columns(ds)
        common = cols if common is None else [c for c in common if c in cols]
    rows = []
    for r, ds in runs.items():
        a = ds.attrs
        row: dict[str, Any] = {"run_id": a.get("run_id", r), "regularizer": a.get("regularizer"),
                               "strength": _run_value(a, "strength"), "seed": a.get("seed")}
        row.update({c: 0.0 for c in common if c not in row})
        rows.append(row)
    runs_table = pd.DataFrame(rows)
    runs_table["seed"] = pd.array(list(runs_table["seed"]), dtype="Int64")
    meta = build_design(runs_table, treatment=treatment, mediators=mediators, outcome=outcome, control=control,
                        treated=treated, covariates=covariates, cluster="run_id", treatment_type=treatment_type,
                        level="sample", bootstrap="cluster", outcome_model="linear", estimand="runs")
    if treatment not in ("regularizer", "strength", "seed"):
        raise QueryError(f"treatment {treatment!r}: mediate_study needs a run-level treatment ('regularizer', "
                         "'strength' or 'seed'); per-sample treatments need cg.causal.mediate on the table")
    if len(meta.x_names) != len(meta.covariates):
        raise QueryError(f"covariates {meta.covariates}: mediate_study takes numeric covariates only")
    # kept runs in cluster-code order (codes sort the run ids)
    kept = [str(x) for x in meta.cluster_names]
    sizes = {r: int(runs[r].sizes["sample"]) for r in runs}
    n_dropped = sum(sizes.values()) - sum(sizes[r] for r in kept)
    t_run = np.empty(len(kept))
    t_run[meta.codes] = meta.T
    columns = list(meta.mediators) + list(meta.covariates) + list(meta.outcomes)
    # pass 1 over each run's chunks: its moments and, when the runs are paired by image, the per-image means over
    # the runs (one read of every chunk serves both); pass 2 (paired only): the moments about the image means
    import dask

    center = _headless_center(runs, columns, center)
    with _graphs_here():
        W = [_run_columns(runs[r], columns, center) for r in kept]
        lazy = [_lazy_moments(runs[r], columns, center, stacked=w) for r, w in zip(kept, W)]
    pairing = None if paired_by is None else _pairing_problem([runs[r] for r in kept])
    wbar = qbar = None
    with one_blas_thread():
        if paired_by is not None and pairing is None:
            wbar, qbar, *values = dask.compute(*_image_means(W, len(meta.mediators), t_run), *lazy)
        else:
            values = dask.compute(*lazy)
    moments = [_unpack(v, len(columns)) for v in values]
    roles = (["mediator"] * len(meta.mediators) + ["covariate"] * len(meta.covariates)
             + ["outcome"] * len(meta.outcomes))
    n_rows = sum(m.n for m in moments)
    bad = sum(m.nonfinite for m in moments)
    for j, col in enumerate(columns):
        if bad[j]:
            raise QueryError(f"{roles[j]} {col!r}: {int(bad[j])} of {n_rows} values are not finite (NaN or Inf); "
                             "drop those rows first (cg.causal.mediate on a filtered study.to_frame())")
    K, q, L = len(meta.mediators), len(meta.covariates), len(meta.outcomes)
    moment_design, moment_mediation = _moment_classes()
    design = moment_design(
        T=np.empty(0), M=np.empty((0, K)), X=np.empty((0, q)), Y=np.empty((0, L)), codes=meta.codes,
        cluster_names=meta.cluster_names, t0=meta.t0, t1=meta.t1, treatment=meta.treatment,
        mediators=list(meta.mediators), outcomes=list(meta.outcomes), covariates=list(meta.covariates),
        x_names=list(meta.x_names), cluster="run_id", treatment_kind=meta.treatment_kind,
        control_label=meta.control_label, treated_label=meta.treated_label, strata=meta.strata,
        strata_note=meta.strata_note, clusters_per_arm=dict(meta.clusters_per_arm), n_runs=len(kept),
        n_dropped=n_dropped, level="sample", notes=list(meta.notes), n_rows=n_rows, run_codes=meta.codes,
        run_names=meta.cluster_names, run_T=meta.run_T, estimand="runs", design_text="unpaired: paired_by=None")
    G = None
    if paired_by is not None:
        if pairing is not None and paired_by == "sample":
            raise QueryError(f"paired_by='sample': the runs cannot be paired by image: {pairing}; use "
                             "paired_by=None for an unpaired analysis")
        if pairing is None:
            G, text = _paired_grams(W, np.asarray(wbar), np.asarray(qbar), K, q, t_run, interaction)
        design.design_text = text if G is not None else f"unpaired: {pairing}"
    paired = G is not None
    if paired and interaction and inference == "permutation":
        raise QueryError("inference='permutation' with paired runs and interaction=True refits per relabeling and "
                         "needs the rows; use cg.causal.mediate(study.to_frame(), ...) or inference='cr2'")
    if G is None:
        G = _grams(design, moments, t_run, interaction)

    est = moment_mediation(design, G, interaction=interaction, ordered=ordered)
    est.paired = paired
    notes = list(design.notes)
    if n_dropped:
        notes.append(f"{n_dropped} rows with other levels of {treatment!r} were left out")
    point, _ = est.point()
    inf = run_inference(est, design, point, inference=inference, bootstrap=bootstrap, n_boot=n_boot, rng=rng,
                        ci_level=ci_level, notes=notes)
    notes.append("computed from per-run sufficient statistics on Dask (causalgeom.scale.mediate_study); "
                 "the overlap check, the Mundlak table and the refuters need the per-sample table (cg.causal.mediate "
                 "on study.to_frame())")
    result = build_result(est, design, point, None, inf, method="regression",
                          estimator=estimator_text(design, "linear", interaction, ordered, paired), notes=notes,
                          ci_level=ci_level, outcome_model="linear", interaction=interaction, ordered=ordered,
                          bootstrap=bootstrap, inference=inference, overlap=None, keep_design=False)
    result.engine = "dask"
    return result


@functools.lru_cache(maxsize=1)
def _moment_classes() -> tuple[type, type]:
    """Build the Design / LinearMediation subclasses on first use (keeps this module's import light)."""
    from dataclasses import dataclass

    from ..causal.design import Design
    from ..causal.estimators import LinearMediation, Layout, effect_names

    @dataclass
    class MomentDesign(Design):
        """A `Design` without rows: ``n`` is the number of rows the moments summarize."""

        n_rows: int = 0

        @property
        def n(self) -> int:  # type: ignore[override]
            return int(self.n_rows)

    class MomentMediation(LinearMediation):
        """`LinearMediation` whose per-cluster Gram matrices are given (no per-row arrays)."""

        def __init__(self, design: Any, grams: np.ndarray, *, interaction: bool, ordered: bool):
            K = design.M.shape[1]
            if ordered and K != 2:
                raise QueryError(f"ordered: causally ordered mediators are supported for exactly 2 mediators, "
                                 f"got {K}")
            if ordered and interaction:
                raise QueryError("ordered=True with interaction=True is not supported; drop one of them")
            self.design = design
            self.outcome_model = "linear"
            self.interaction = interaction
            self.ordered = ordered
            self.lay = Layout(K, design.X.shape[1], design.Y.shape[1], interaction)
            self.paired = False
            self.names = effect_names(design.mediators, ordered)
            self.t0, self.t1 = design.t0, design.t1
            self._G = grams
            self._beta_logit = None

        def weighted_grams(self, W: np.ndarray) -> np.ndarray:  # pragma: no cover - not reachable (cluster only)
            raise QueryError("mediate_study supports the cluster bootstrap only (row weights need the rows)")

    return MomentDesign, MomentMediation
