# Over 600 lines on purpose: `decompose` is one pass over blocks of images whose accumulators share state; worlds, inference and text live beside it.
"""Decomposition of a treated − control gap by swapping parts of paired runs between them (Shapley split).

Two levels. The **function-level** split (the default, ``factors=("scale", "shape")``) uses only the logits:
softmax sees the centred logits ``z~ = z − mean(z)``; each image's ``z~`` splits into its scale ``s = ||z~||``
and shape ``v = z~ / s``; a world takes each from the control or the treated run (images paired by sample id),
its logits are ``s · v``. It is a property of the two networks' outputs, so it needs no head, no seed pairing
and no shared feature basis, and it is invariant to every reparametrisation that keeps the logits. The scale
is what a temperature can undo; the result also reports the ECE the control runs reach with a temperature
fitted on held-out images.

The **representation-level** split (``("head", "magnitude", "direction")``, the cosine variant, and the
basis-free ``("magnitude", "head_norm", "orientation")``) uses ``logits = W h + b``: it describes the trained
parametrisation (rescaling h and W inversely changes it without changing the network), and swapping heads is
refused unless the paired runs are shown to share an initialisation (matching ``init_digest``) or the user
states it (``pairs="seed"``, recorded as "stated, not verified").

The treated − control gap of an outcome is split among the factors by the Shapley value (the average over the
k! orders of switching the factors from c to t of each factor's marginal change); the shares add up to the
total exactly, per image for per-image outcomes and for the run-level outcome. Runs are read once, block by
block, so memory does not grow with the number of images (apart from the per-image output). Definitions and
inference: ``docs/methods_causal.md`` ("Decomposition").

::

    res = cg.causal.decompose(study, treatment="regularizer", control="ce", treated="mixup",
                              outcome="signed_ece")                      # factors=("scale", "shape")
    res.summary(); res.text(); res.temperature; res.plot(); res.per_pair; res.estimand; res.design

The package: `worlds` (reading paired runs, swapping factors, a world's outcome, `shapley_values`), `inference`
(pairing, relabelings, intervals), `text` (sentences), `result` (`DecompositionResult`), and here `decompose`.
This module is about 600 lines because `decompose` is one function that walks the runs once (a reason to keep it
whole: every block read feeds every world, outcome and pair in one pass).
"""

from __future__ import annotations
import itertools
import math
import warnings
from typing import Any, Sequence
import numpy as np
import pandas as pd
from ..._util.eps import eps_label
from ..._util.rng import check_random_state
from ...metrics.calibration import EXTRA_OUTCOMES as _EXTRA, ece_ts_from_logits as _ece_ts_from_logits, \
    TS_SPLIT_RULE as _TS_SPLIT_RULE, ts_split as _ts_split
from ...metrics.kernels import bin_index as _bin_index, calibration_error as _calibration_error, \
    width_bin_stats as _width_bin_stats
from ...errors import QueryError
from .worlds import (DECOMPOSE_OUTCOMES, ESTIMANDS, FACTORS, FUNCTION_FACTORS, MAX_BASIS_ANGLE, MAX_EXACT_RELABELINGS, PAIRINGS, PER_IMAGE_OUTCOMES, TEMPERATURE_MAX_IMAGES, _ROBUST, _Source, _align, _block, _chunk_bounds, _components, _ece_of, _image_values, _multinomial_block, _run_outcome, _sample_ids, _source, _warn_logits, _world_stats, shapley_values)
from .inference import (_hoeffding_t, _paired_t, _pairing, _randomization_row, _relabelings, _sign_flips)
from .result import DecompositionResult
# names read by tests and benchmarks at their old address (the module before it became this package)
from .text import floor_text, split_text  # noqa: F401
from .worlds import _Run, _load_run, _rotate_to_cosine, _scale_shape  # noqa: F401

__all__ = ["decompose", "DecompositionResult", "shapley_values", "split_text", "floor_text", "FACTORS",
           "FUNCTION_FACTORS", "DECOMPOSE_OUTCOMES", "PER_IMAGE_OUTCOMES", "ESTIMANDS", "PAIRINGS",
           "MAX_EXACT_RELABELINGS", "MAX_BASIS_ANGLE", "TEMPERATURE_MAX_IMAGES"]


# ----------------------------------------------------------------------------------------------
# the public function
# ----------------------------------------------------------------------------------------------
def _check_factors(factors: Any) -> tuple[tuple[str, ...], str]:
    if isinstance(factors, str) or not isinstance(factors, (list, tuple)):
        raise QueryError(f"factors: expected a tuple of factor names from {list(FACTORS)}, got {factors!r}")
    fs = tuple(factors)
    for f in fs:
        if f not in FACTORS:
            raise QueryError(f"factors: expected names from {list(FACTORS)}, got {f!r}")
    if len(set(fs)) != len(fs):
        raise QueryError(f"factors: each factor at most once, got {list(fs)}")
    if len(fs) == 2 and set(fs) == set(FUNCTION_FACTORS):
        return fs, "function"
    if fs and set(fs) <= {"head", "magnitude", "direction"} and len(fs) == 3:
        return fs, "direction"
    if set(fs) == {"head", "magnitude", "cosine"}:
        return fs + ("direction",), "cosine"
    if set(fs) == {"head", "magnitude", "cosine", "direction"}:
        return fs, "cosine"
    if len(fs) == 3 and set(fs) == {"magnitude", "head_norm", "orientation"}:
        return fs, "basisfree"
    raise QueryError(f"factors: expected ('scale', 'shape'), ('head', 'magnitude', 'direction'), ('head', 'magnitude', "
                     f"'cosine') (or with "
                     f"'direction' too), or ('magnitude', 'head_norm', 'orientation'), got {list(fs)}")


def _runs_of(runs: pd.DataFrame, treatment: str, level: Any, name: str) -> list[str]:
    if treatment not in runs.columns:
        raise QueryError(f"treatment: expected a run attribute from {sorted(map(str, runs.columns))}, "
                         f"got {treatment!r}")
    col = runs[treatment]
    hit = runs[(col == level) | (col.astype(str) == str(level))]
    if hit.empty:
        raise QueryError(f"{name}: no run has {treatment} = {level!r}; levels: {sorted(set(map(str, col.dropna())))}")
    return sorted(map(str, hit["run_id"]))




def decompose(study: Any, treatment: str = "regularizer", control: Any = "ce", treated: Any = "mixup",
              outcome: str | Sequence[str] = "signed_ece", factors: Sequence[str] = FUNCTION_FACTORS,
              *, n_boot: int = 1000, rng: np.random.Generator | int | None = None, ci_level: float = 0.95,
              estimand: str = "auto", pairs: str = "auto", n_bins: int = 15, attack: str | None = None,
              eps: float | None = None, block_rows: int | None = None) -> DecompositionResult:
    """Split the treated − control gap of an outcome into the shares of factors swapped between paired runs.

    Default (``factors=("scale", "shape")``, function-level): for each control run c and treated run t, images
    paired by their ``sample`` id, each image's centred logits ``z~ = z − mean(z)`` are written as ``s · v``
    (scale ``s = ||z~||``, shape ``v = z~ / s``); a world takes the scale and the shape each from c or t and
    its logits are ``s · v`` (softmax is unchanged by the centring). Only the stored ``logits`` are read, so it
    works for any two models (zoo, imports, dumps without a head), and two parametrisations with the same logits
    get the same split. ``result.temperature`` gives, next to it, the ECE each control run reaches with a
    temperature fitted on one half of the images (evaluated on the other half, the paired split recorded in
    ``result.temperature_split``) and the treated runs' ECE on the same half.

    Representation-level (``factors=("head", "magnitude", "direction")`` and variants): each image's feature
    ``h`` is written as ``m · u`` (``m = ||h||``, ``u = h / m``). Every world takes
    each factor from c or t, its logits are ``W (m u) + b`` and its outcome is computed from them with
    the package's calibration kernels (`causalgeom.metrics.kernels`, shared with `causalgeom.metrics.calibration`). The
    total ``v(all t) − v(all c)`` is split by the Shapley value over the k! orders of switching factors (`shapley_values`); the shares add
    up to the total exactly (rounding only). Run pair values are averaged over the pairs.

    Additivity: for outcomes that are means of a per-image quantity (``signed_ece`` = mean confidence −
    accuracy = mean of confidence − correct, ``nll``, ``accuracy``, ``brier``, ``robust_*``) the shares
    also add up image by image (``result.per_image``). The ECE is not a mean over images (bins of the
    confidence), so its shares are shares of the run-level ECE only.

    This split describes the trained parametrisation, not a causal share (rescaling h and W inversely
    changes it without changing the network; the magnitude and the head norm together are the representation's
    part of the logit scale). The splits that apply one run's head to another run's features (``head``,
    ``direction``, ``cosine``) are refused unless the paired runs are shown to share an initialisation
    (matching ``init_digest`` attributes, recorded by ``causalgeom train``) or ``pairs="seed"`` states it
    (recorded in ``result.initialisation`` as "stated, not verified").

    Runs are read once, block by block (the stored chunks, about ``block_rows`` rows each): memory is bounded
    independently of the number of images, apart from the per-image output.

    Parameters
    ----------
    study : Study or path
        Runs with ``logits`` and ``label`` (function-level); the representation-level factors need
        ``features`` and ``head_weight`` too (``head_bias``: 0 if missing).
    treatment : str
        Run attribute that defines the arms (``study.runs`` column), e.g. ``"regularizer"``.
    control, treated : level
        The two arms' values of ``treatment``.
    outcome : str or list of str
        From :data:`DECOMPOSE_OUTCOMES`: ``"signed_ece"`` (= overconfidence, mean confidence − accuracy),
        ``"ece"`` (top-label, ``n_bins`` equal-width bins, l1), ``"nll"``, ``"accuracy"``, ``"brier"``;
        ``"robust_accuracy"`` / ``"robust_margin"`` (true-class logit minus the best other) from the
        world logits of the attacked images' features (needs ``adv_features``: ``extract --save-adv``).
    factors : tuple of str
        ``("scale", "shape")`` (default, function-level, 2² worlds), ``("head", "magnitude", "direction")`` (2³ worlds), or ``("head", "magnitude", "cosine")``: the
        direction's cosine to the class center is its own factor, and ``direction`` then means the rest of
        the direction (2⁴ worlds, a fourth row ``direction``). In a world with head from run H, direction
        from run D and cosine from run C, the direction is ``u_D`` rotated within the plane of ``u_D`` and
        the minimal-loss center of the true class **of run H's head** (`causalgeom.metrics.geometry.class_centers`,
        ``kind="minimal_loss"``, H's own label-smoothing eps) until its cosine to that center equals
        **run C's cosine to its own head's center**; the rest of the direction (where u points within
        the plane orthogonal to the center) is D's. Where H = D = C the feature is used as stored.
        ``("magnitude", "head_norm", "orientation")`` is the basis-free split for runs whose feature bases
        are not aligned (independently initialised networks, two public models): the logits
        ``z = ||h|| · ||W||_F · (u · W / ||W||_F) + b`` take the feature magnitude from one run, the head's
        Frobenius norm from one run, and the orientation (``u``, ``W / ||W||_F`` and ``b`` together) from
        one run, so no head is ever applied to another network's features.
    n_boot : int
        Bootstrap replicates of the model-conditional estimand (image bootstrap).
    rng : numpy.random.Generator, int or None
        Randomness of the image bootstrap and of a Monte Carlo randomization test.
    ci_level : float
        Confidence level of the intervals, in (0, 1).
    estimand : {"auto", "runs", "model"}
        ``"runs"``: the average effect over training runs (needs >= 2 runs per arm); ``"model"``: these
        models, inference over test images; ``"auto"``: runs when both arms have >= 2 runs, else model.
    pairs : {"auto", "seed", "all"}
        Which control and treated runs are paired. Head and direction can only be swapped between runs whose
        feature coordinates correspond: two independently initialised networks have unrelated feature bases
        (``W_t · u_c`` is then close to chance). ``"seed"``: pair each control run with the treated run of the
        same ``seed`` attribute (error if the seeds do not match one to one, or if their ``init_digest``
        attributes differ): the user's statement that same-seed runs share an initialisation, verified only
        when their digests match; ``"all"``: all n_c × n_t pairs; ``"auto"``: ``"seed"`` when the seeds match
        one to one *and* their ``init_digest`` attributes match, else ``"all"``. ``result.alignment`` reports,
        per pair, the accuracy kept when only the head is swapped and the Procrustes angle between the two
        runs' features; a note flags unaligned pairs.
    n_bins : int
        Bins of the ECE.
    attack, eps
        The attack and budget of the robust outcomes (default: the first attack, the middle of the eps grid).
        Function-level robust outcomes read ``adv_logits`` (else ``W · adv_features + b`` of the run's own head);
        representation-level ones ``adv_features``.
    block_rows : int, optional
        Rows per block of the single pass over each run (default: the stored chunks, about 4 M values).

    Returns
    -------
    DecompositionResult

    Notes
    -----
    Inference over runs (``estimand="runs"``): the estimate is the mean of the pair values F(c, t) over
    the n_c × n_t pairs, a two-sample U-statistic. The interval is a t-interval with its unbiased variance
    from the Hoeffding decomposition, (MS_row + MS_col − MS_e)/(n_c n_t) (the row- and column-mean
    variances each already contain the interaction term once), never below MS_e/(n_c n_t), and
    Satterthwaite degrees of freedom (coverage by simulation: ``benchmarks/bench_coverage.py --decompose``);
    for the total, whose F(c, t) = Y_t − Y_c, this is exactly
    Welch's t-interval on the run outcomes. The p-value is a run-level randomization test: the arm labels
    of the n_c + n_t runs are permuted (all C(n, n_t) relabelings when at most `MAX_EXACT_RELABELINGS`,
    else that many random ones with the +1 correction) and the statistic recomputed from the pair values
    of every run pair (within-arm pairs included); two-sided, |statistic| >= |observed|. Its floor, the
    smallest p-value the design can give, is 2 / C(n, n_t) with equal arms (the mirrored labeling gives
    −observed) and 1 / C(n, n_t) otherwise; it is reported in ``p_floor``.

    With seed-matched pairs (``pairs="seed"``) the pair values are paired observations: the interval is the
    t-interval over the n pairs (df n − 1) and the p-value the exact sign-flip randomization test (within each
    pair the arm labels are swapped, all 2^n patterns; more than `MAX_EXACT_RELABELINGS`: Monte Carlo with
    the +1 correction), whose floor is 2 / 2^n (0.0625 for 5 pairs).

    Model-conditional (``estimand="model"``): the same point estimate; the interval is the percentile
    bootstrap over test images, resampled together for all runs (paired), ``n_boot`` replicates; no
    p-value is given (NaN).

    References
    ----------
    Shapley, "A value for n-person games", 1953. Hoeffding, "A class of statistics with asymptotically
    normal distribution", 1948. Fisher, "The Design of Experiments", 1935 (randomization tests).
    Welch, "The generalization of Student's problem", 1947.
    """
    from ...dump.study import as_study

    study = as_study(study)
    outcomes = (outcome,) if isinstance(outcome, str) else tuple(outcome)
    if not outcomes:
        raise QueryError(f"outcome: expected a name from {list(DECOMPOSE_OUTCOMES)} or a list of them, got {outcome!r}")
    for o in outcomes:
        if o not in DECOMPOSE_OUTCOMES:
            raise QueryError(f"outcome: expected one of {list(DECOMPOSE_OUTCOMES)}, got {o!r}")
    user_factors = tuple(factors) if isinstance(factors, (list, tuple)) else factors
    facs, mode = _check_factors(user_factors)
    if estimand not in ESTIMANDS:
        raise QueryError(f"estimand: expected one of {list(ESTIMANDS)}, got {estimand!r}")
    if pairs not in PAIRINGS:
        raise QueryError(f"pairs: expected one of {list(PAIRINGS)}, got {pairs!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise QueryError(f"n_boot: expected an integer >= 2, got {n_boot!r}")
    try:
        level = float(ci_level)
    except (TypeError, ValueError):
        raise QueryError(f"ci_level: expected a number in (0, 1), got {ci_level!r}") from None
    if not 0 < level < 1:
        raise QueryError(f"ci_level: expected a number in (0, 1), got {ci_level!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise QueryError(f"n_bins: expected a positive integer, got {n_bins!r}")
    gen = check_random_state(rng, error=QueryError)
    if str(control) == str(treated):
        raise QueryError(f"treated: expected a level different from control {control!r}, got {treated!r}")

    run_table = study.runs  # one scan of the study folder
    c_ids = _runs_of(run_table, treatment, control, "control")
    t_ids = _runs_of(run_table, treatment, treated, "treated")
    n_c, n_t = len(c_ids), len(t_ids)
    head_dependent = mode in ("direction", "cosine")
    pairing, matched, init_status = _pairing(run_table, c_ids, t_ids, pairs, head_dependent, user_factors)
    n_units = len(matched) if pairing == "seed" else min(n_c, n_t)
    if estimand == "auto":
        estimand = "runs" if n_units >= 2 else "model"
    elif estimand == "runs" and n_units < 2:
        raise QueryError(f"estimand='runs': the effect over training runs needs >= 2 runs per arm to estimate its "
                         f"variance, got {n_c} {control!r} and {n_t} {treated!r} runs; use estimand='model' (these "
                         "models, inference over test images)")

    need_adv = any(o in _ROBUST for o in outcomes)
    need_cos = mode == "cosine"
    all_ids = c_ids + t_ids
    n_all = len(all_ids)
    sources: list[_Source] = []
    ref_ids: np.ndarray | None = None
    order_ref: np.ndarray | None = None
    sel_attack, sel_eps = attack, eps
    for rid in all_ids:
        ds = study[rid]
        ids = _sample_ids(ds)
        if ref_ids is None:
            if len(np.unique(ids)) != len(ids):
                raise QueryError(f"run {rid!r}: sample ids are not unique; images cannot be paired across runs")
            ref_ids, order = ids, None
            order_ref = np.argsort(ids, kind="stable")
        else:
            order = _align(ref_ids, order_ref, ids, rid, all_ids[0])
            if np.array_equal(order, np.arange(order.size)):
                order = None
        src, a, e = _source(ds, order, mode, need_cos, need_adv, sel_attack, sel_eps)
        if need_adv and sel_attack is None:
            sel_attack, sel_eps = a, e
        sources.append(src)
    labels = sources[0].labels
    for src in sources[1:]:
        if not np.array_equal(src.labels, labels):
            raise QueryError(f"run {src.run_id!r}: the labels of the paired images differ from run {all_ids[0]!r}; "
                             "the runs did not score the same images")
    n_img = labels.shape[0]
    n_classes = int(sources[0].main.shape[1]) if mode == "function" else int(sources[0].W.shape[0])

    k = len(facs)
    n_worlds = 2 ** k
    names = ("total",) + facs + tuple(f"{f}|first" for f in facs) + tuple(f"{f}|last" for f in facs)
    n_main = 1 + k
    # reversing a pair's roles negates the total and every Shapley share, and swaps "first" with "last"
    reverse = np.array([0] + list(range(1, n_main)) + list(range(n_main + k, n_main + 2 * k))
                       + list(range(n_main, n_main + k)))

    if pairing == "seed":
        cross_pairs = [(c_ids.index(c), n_c + t_ids.index(t)) for c, t in matched]
        pair_list = list(cross_pairs)
    else:
        cross_pairs = [(i, n_c + j) for i in range(n_c) for j in range(n_t)]
        pair_list = (list(itertools.combinations(range(n_all), 2)) if estimand == "runs" else list(cross_pairs))
    cross_set = set(cross_pairs)
    ece_like = [o for o in outcomes if o in ("signed_ece", "ece")]
    # ece_ts, ece_debiased, ece_floor, aurc are not sums over images: each world's per-image confidence and
    # correctness (and logits for ece_ts) are kept for the whole set of images, and the outcome is computed once at
    # the end by the metrics layer's one implementation (memory: n_images × (2 + K for ece_ts) per world and pair)
    extras = [o for o in outcomes if o in _EXTRA]
    keep = ("confidence", "correct") + (("logits",) if "ece_ts" in extras else ())
    ext_parts = {p: [{key: [] for key in keep} for _ in range(n_worlds)] for p in range(len(pair_list))} if extras else {}

    # accumulators over the blocks of images (memory independent of the number of images, per_image aside)
    sums = {o: np.zeros((len(pair_list), n_worlds)) for o in outcomes}                 # sums of image values
    bins = {o: np.zeros((len(pair_list), n_worlds, 3, n_bins)) for o in ece_like}       # ECE bin statistics
    correct_sum = np.zeros((len(pair_list), n_worlds))
    gram = {p: None for p in cross_pairs} if head_dependent else {}                     # Σ h_c h_tᵀ (basis drift)
    per_image_sum = {o: np.zeros((n_main, n_img)) for o in outcomes if o in PER_IMAGE_OUTCOMES}
    boot = estimand == "model"
    n_b = int(n_boot)
    if boot:
        boot_sums = {o: np.zeros((len(cross_pairs), n_b, n_worlds)) for o in outcomes}
        boot_bins = {o: np.zeros((len(cross_pairs), n_b, n_worlds, 3, n_bins)) for o in ece_like}
        boot_counts: list[np.ndarray] = []  # the resampling multiplicities, kept for the non-additive outcomes
        remaining = np.full(n_b, n_img, dtype=np.int64)
    # temperature scaling on a paired split of the images: fit on one half, evaluate on the other
    # (the split of `ece_ts`, `causalgeom.metrics.calibration.ts_split`: even ranks of the sample ids fit)
    ts_mask = _ts_split(ref_ids)
    fit_pos = np.flatnonzero(ts_mask)[:TEMPERATURE_MAX_IMAGES]
    eval_pos = np.flatnonzero(~ts_mask)[:TEMPERATURE_MAX_IMAGES]
    fit_z = {i: [] for i in range(n_c)}
    eval_z = {i: [] for i in range(n_all)}

    bounds = _chunk_bounds(sources[0], n_img, n_classes if mode == "function" else int(sources[0].W.shape[1]),
                           block_rows)
    for a, b in bounds:
        blocks = [_block(src, a, b, mode, need_adv) for src in sources]
        f_sel = fit_pos[(fit_pos >= a) & (fit_pos < b)] - a
        e_sel = eval_pos[(eval_pos >= a) & (eval_pos < b)] - a
        for i, blk in enumerate(blocks):
            if i < n_c and f_sel.size:
                fit_z[i].append(blk.logits[f_sel].astype(np.float32))
            if e_sel.size:
                eval_z[i].append(blk.logits[e_sel].astype(np.float32))
        if boot:
            counts = _multinomial_block(gen, remaining, n_img - a, b - a)  # (B, rows)
            if extras:
                boot_counts.append(counts.astype(np.int32))
        cp = 0
        for p, (i, j) in enumerate(pair_list):
            pair = (blocks[i], blocks[j])
            worlds = _world_stats(pair, facs, mode, adv=False)
            adv_worlds = _world_stats(pair, facs, mode, adv=True) if need_adv else None
            is_cross = (i, j) in cross_set
            correct_sum[p] += [w["correct"].sum() for w in worlds]
            for w, st in zip(ext_parts.get(p, ()), worlds):
                for key in keep:
                    w[key].append(st[key].astype(np.float32) if key == "logits" else st[key])
            for o in outcomes:
                ws = adv_worlds if o in _ROBUST else worlds
                img = None if o == "ece" or o in _EXTRA else np.stack([_image_values(o, w) for w in ws])  # (2^k, rows)
                if img is not None:
                    sums[o][p] += img.sum(axis=1)
                if o in bins:
                    bins[o][p] += np.stack([_width_bin_stats(w["confidence"], w["correct"], n_bins) for w in ws])
                if is_cross and o in per_image_sum:
                    per_image_sum[o][:, a:b] += np.concatenate([(img[-1] - img[0])[None], shapley_values(img)])
                if is_cross and boot:
                    if img is not None:
                        boot_sums[o][cp] += counts @ img.T
                    if o in bins:
                        for w, st in enumerate(ws):
                            onehot = np.eye(n_bins)[_bin_index(st["confidence"], n_bins)]  # (rows, M)
                            boot_bins[o][cp, :, w] += np.stack(
                                [counts @ onehot, counts @ (onehot * st["confidence"][:, None]),
                                 counts @ (onehot * st["correct"][:, None])], axis=1)
            if is_cross and head_dependent:
                h_c = blocks[i].unit * blocks[i].norm[:, None]
                h_t = blocks[j].unit * blocks[j].norm[:, None]
                g = h_c.T @ h_t
                gram[(i, j)] = g if gram[(i, j)] is None else gram[(i, j)] + g
            if is_cross:
                cp += 1
        del blocks
    if mode != "function":
        for src in sources:
            _warn_logits(src)

    ts_fit = _ts_split(ref_ids)  # ece_ts: the held-out split of the images, the same in every run (paired)
    ext_stats = {p: [dict({key: np.concatenate(w[key]) for key in keep}, labels=labels, ts_fit=ts_fit) for w in ws]
                 for p, ws in ext_parts.items()}
    del ext_parts

    def world_values(o: str, p: int) -> np.ndarray:
        if o in _EXTRA:
            return np.array([_run_outcome(o, st, n_bins) for st in ext_stats[p]])
        if o in bins:
            norm = "signed" if o == "signed_ece" else "l1"
            return np.array([_calibration_error(bins[o][p, w], norm) for w in range(n_worlds)])
        return sums[o][p] / n_img

    F = {o: np.zeros((len(names), n_all, n_all)) for o in outcomes}
    for p, (i, j) in enumerate(pair_list):
        for o in outcomes:
            vals = _components(world_values(o, p))
            F[o][:, i, j] = vals
            F[o][:, j, i] = -vals[reverse]

    ci_idx = np.array([i for i, _ in cross_pairs])
    cj_idx = np.array([j for _, j in cross_pairs])
    per_pair = pd.DataFrame([
        {"control_run": all_ids[i], "treated_run": all_ids[j], "outcome": o, "component": name,
         "value": float(F[o][m, i, j])}
        for o in outcomes for i, j in cross_pairs for m, name in enumerate(names[:n_main])])

    # alignment of the feature bases (representation-level splits that apply a head to another run's features)
    align_rows = []
    if head_dependent:
        chance = 1.0 / n_classes
        for p, (i, j) in enumerate(pair_list):
            if (i, j) not in cross_set:
                continue
            acc = correct_sum[p] / n_img
            full = n_worlds - 1
            own, swap = (acc[0] + acc[-1]) / 2, (acc[1] + acc[full ^ 1]) / 2
            g = gram[(i, j)]
            nuc = float(np.linalg.svd(g, compute_uv=False).sum())
            cosang = float(np.trace(g)) / nuc if nuc > 0 else 0.0
            angle = math.degrees(math.acos(min(1.0, max(-1.0, cosang))))
            kept = (swap - chance) / max(own - chance, 1e-12)
            align_rows.append({"control_run": all_ids[i], "treated_run": all_ids[j], "own_accuracy": own,
                               "head_swap_accuracy": swap, "basis_angle": angle,
                               "aligned": bool(kept >= 0.5 and angle <= MAX_BASIS_ANGLE)})
    alignment = pd.DataFrame(align_rows, columns=["control_run", "treated_run", "own_accuracy", "head_swap_accuracy",
                                                  "basis_angle", "aligned"])
    if len(alignment):
        alignment["aligned"] = alignment["aligned"].astype(bool)

    table_rows = []
    notes: list[str] = []
    if estimand == "runs" and pairing == "seed":
        n_p = len(cross_pairs)
        signs, exact = _sign_flips(n_p, gen)
        n_relab = signs.shape[0]
        floor = 2.0 / 2 ** n_p
        if not exact:
            floor = max(floor, 1.0 / (n_relab + 1))
        for o in outcomes:
            for m, name in enumerate(names):
                val = F[o][m][ci_idx, cj_idx]
                rev = F[o][m][cj_idx, ci_idx]  # the pair value with the two runs' roles swapped
                est, lo, hi = _paired_t(val, level)
                stat = np.where(signs, rev[None, :], val[None, :]).mean(axis=1)
                table_rows.append(_randomization_row(o, name, est, lo, hi, stat, exact, n_relab, floor))
        est_text = (f"average effect over training runs (runs as the population): the mean over the {n_p} "
                    f"control × treated run pairs matched by seed")
        inf_text = (f"{int(round(100 * level))}% t-intervals over the {n_p} seed-matched run pairs (df {n_p - 1}); "
                    f"two-sided p-values from a sign-flip randomization test (arm labels swapped within pairs; "
                    f"{'all' if exact else 'Monte Carlo,'} {n_relab} patterns; smallest possible p = {floor:.3g})")
    elif estimand == "runs":
        masks, exact = _relabelings(n_all, n_t, gen)
        n_relab = masks.shape[0]
        R = math.comb(n_all, n_t)
        floor = (2.0 if n_c == n_t else 1.0) / R
        if not exact:
            floor = max(floor, 1.0 / (n_relab + 1))
        M = masks.astype(np.float64)
        cross = np.ix_(range(n_c), range(n_c, n_all))
        for o in outcomes:
            for m, name in enumerate(names):
                Fm = F[o][m]
                est, lo, hi = _hoeffding_t(Fm[cross], level)
                stat = np.einsum("ri,ij,rj->r", 1.0 - M, Fm, M) / (n_c * n_t)
                table_rows.append(_randomization_row(o, name, est, lo, hi, stat, exact, n_relab, floor))
        est_text = (f"average effect over training runs (runs as the population): the mean over the {n_c} × {n_t} "
                    f"control × treated run pairs")
        inf_text = (f"{int(round(100 * level))}% t-intervals over runs (unbiased two-sample U-statistic variance, "
                    f"Hoeffding decomposition, Satterthwaite df; the total's is Welch's t-interval); two-sided "
                    f"p-values from a run-level randomization test ({'all' if exact else 'Monte Carlo,'} {n_relab} "
                    f"relabelings of {n_all} runs; smallest possible p = {floor:.3g})")
    else:
        for o in outcomes:
            v_boot = np.zeros((n_b, n_worlds))
            if o in _EXTRA:  # recomputed on each resample (a repeated image keeps its half of the ece_ts split)
                cnt = np.concatenate(boot_counts, axis=1)  # (B, n)
                idx = [np.repeat(np.arange(n_img), c) for c in cnt]
                pairs_idx = [pair_list.index(pr) for pr in cross_pairs]
                for p in pairs_idx:
                    v_boot += np.array([[_run_outcome(o, st, n_bins, ix) for st in ext_stats[p]] for ix in idx])
            for cp in range(len(cross_pairs) if o not in _EXTRA else 0):
                if o in bins:
                    norm = "signed" if o == "signed_ece" else "l1"
                    v_boot += np.array([[_calibration_error(boot_bins[o][cp, r, w], norm) for w in range(n_worlds)]
                                        for r in range(n_b)])
                else:
                    v_boot += boot_sums[o][cp] / n_img
            v_boot /= len(cross_pairs)  # Shapley values are linear in v: shares of the pair-averaged worlds
            reps = _components(v_boot.T).T
            alpha = (1 - level) / 2
            for m, name in enumerate(names):
                est = float(F[o][m][ci_idx, cj_idx].mean())
                lo, hi = np.quantile(reps[:, m], [alpha, 1 - alpha])
                table_rows.append(dict(outcome=o, component=name, estimate=est, ci_low=float(lo), ci_high=float(hi),
                                       p_value=np.nan, p_floor=np.nan, note=""))
        est_text = ("model-conditional: these models, inference over test images" + (
            f" (the {len(cross_pairs)} run pairs averaged)" if len(cross_pairs) > 1 else ""))
        inf_text = (f"{int(round(100 * level))}% percentile bootstrap over test images, paired (the same resampled "
                    f"images for every run), {n_b} replicates; no p-value")
        if min(n_c, n_t) < 2:
            notes.append(f"{min(n_c, n_t)} run in an arm: the effect over training runs is undefined (no between-run "
                         "variance); the estimand is conditional on these models")
    full = pd.DataFrame(table_rows)
    is_switch = full["component"].str.contains("|", regex=False)
    table = full[~is_switch].reset_index(drop=True)
    switch = full[is_switch].reset_index(drop=True)
    parts = switch.pop("component").str.split("|", expand=True)
    switch.insert(1, "factor", parts[0])
    switch.insert(2, "switched", parts[1])
    share = []
    for rec in table.to_dict("records"):
        tot = table[(table["outcome"] == rec["outcome"]) & (table["component"] == "total")].iloc[0]
        ok = tot["ci_low"] > 0 or tot["ci_high"] < 0
        share.append(rec["estimate"] / tot["estimate"] if ok else np.nan)
    table.insert(5, "share", share)
    if table["share"].isna().any():
        notes.append("share: NaN where the total's interval includes 0 (a share of a total that may be 0 means "
                     "nothing)")

    per_image = None
    if per_image_sum:
        n_cross = len(cross_pairs)
        frames = []
        for o, arr in per_image_sum.items():
            d = {"sample": ref_ids, "outcome": o}
            d.update({name: arr[m] / n_cross for m, name in enumerate(names[:n_main])})
            frames.append(pd.DataFrame(d))
        per_image = pd.concat(frames, ignore_index=True)

    # temperature scaling of the control runs (fit on one half of the images, ECE on the other)
    temp_rows = []
    y_fit, y_eval = labels[fit_pos], labels[eval_pos]
    for i, rid in enumerate(all_ids):
        ze = np.concatenate(eval_z[i]).astype(np.float64) if eval_z[i] else np.zeros((0, n_classes))
        row = {"run_id": rid, "arm": "control" if i < n_c else "treated", "temperature": np.nan,
               "ece": _ece_of(ze, y_eval, n_bins) if ze.size else np.nan, "ece_temperature_scaled": np.nan}
        if i < n_c and fit_z[i] and ze.size:
            zf = np.concatenate(fit_z[i]).astype(np.float64)
            fit_mask = np.r_[np.ones(len(zf), bool), np.zeros(len(ze), bool)]
            row["ece_temperature_scaled"], row["temperature"] = _ece_ts_from_logits(
                np.concatenate([zf, ze]), np.concatenate([y_fit, y_eval]), fit_mask, n_bins)
        temp_rows.append(row)
    temperature = pd.DataFrame(temp_rows)
    temperature_split = {"fit": np.asarray(ref_ids)[fit_pos],
                         "eval": np.asarray(ref_ids)[eval_pos], "rule": _TS_SPLIT_RULE,
                         "max_images": TEMPERATURE_MAX_IMAGES}

    mode_text = {"function": "the scale ‖z̃‖ and the shape z̃/‖z̃‖ of the centred logits z̃ = z − mean(z) (what "
                             "softmax sees; the scale is what a temperature can undo)",
                 "direction": "head (W, b), feature magnitude ||h|| and feature direction h/||h||",
                 "cosine": "head (W, b), feature magnitude, cosine to the true-class minimal-loss center of the head "
                           "in use, and the rest of the direction",
                 "basisfree": "feature magnitude ||h||, head norm ||W||_F and orientation (W/||W||_F, h/||h|| and b "
                              "of one run: no head is applied to another network's features)"}[mode]
    if pairing == "seed":
        pair_text = ("runs paired by seed (same initialisation verified by matching init_digest); "
                     if init_status.startswith("verified") else
                     "runs paired by seed (a shared initialisation is stated by pairs='seed', not verified); ")
    else:
        pair_text = "all control × treated run pairs; "
    design = (f"paired by image: {n_img} test images scored by all {n_c} {control!r} and {n_t} {treated!r} "
              f"runs; " + pair_text
              + f"each pair's gap split among {mode_text} by Shapley averaging over the {math.factorial(k)} "
              f"orders of {2 ** k} worlds" + (" (logits = W·h + b)" if mode != "function" else ""))
    if need_adv:
        design += (f"; robust outcomes from the attacked images' {'logits' if mode == 'function' else 'features'} "
                   f"({sel_attack}, ε = {eps_label(sel_eps)})")
    if mode == "function":
        status = ("function-level: a property of the two networks' outputs, invariant to every reparametrisation "
                  "that keeps the logits; needs no head and no shared initialisation")
    else:
        status = ("representation-level: describes the trained parametrisation (rescaling h and W inversely "
                  "changes it without changing the network), not a causal share; the feature magnitude and the head "
                  "norm together are the representation's part of the logit scale")
    n_bad = int((~alignment["aligned"]).sum()) if len(alignment) else 0
    if n_bad:
        msg = (f"{n_bad} of {len(alignment)} run pairs have unaligned feature bases (swapping only the head keeps less "
               f"than half of the above-chance accuracy, or the Procrustes angle between their features exceeds "
               f"{MAX_BASIS_ANGLE:g}°; see .alignment): their worlds combine the coordinates of different networks, so "
               f"their head and direction shares (and the magnitude share, averaged over those worlds) are not "
               f"interpretable; only the total is. Use factors=('scale', 'shape') (function-level) or the basis-free "
               "split factors=('magnitude', 'head_norm', 'orientation').")
        notes.append(msg)
        warnings.warn(f"decompose: {msg}", RuntimeWarning, stacklevel=2)
    return DecompositionResult(table=table, per_pair=per_pair, per_image=per_image, switch_effects=switch,
                               alignment=alignment, pairing=pairing, estimand=est_text, design=design,
                               inference=inf_text, factors=facs, outcomes=outcomes, treatment=treatment,
                               control=control, treated=treated, control_runs=c_ids, treated_runs=t_ids,
                               ci_level=level, attack=sel_attack if need_adv else None,
                               eps=sel_eps if need_adv else None, notes=notes,
                               level="function" if mode == "function" else "representation", status=status,
                               initialisation=init_status, temperature=temperature,
                               temperature_split=temperature_split)


