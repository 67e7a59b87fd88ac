# Over 600 lines on purpose: one concern (the regression mediation estimator): mediator and outcome models with their closed-form effect algebra.
"""The ``"regression"`` mediation estimator: linear mediator models, a linear or logistic outcome model.

Notation (``docs/methods_causal.md`` has the derivations). Treatment ``T``, mediators ``M_1..M_K``, covariates
``X``, outcome ``Y``; the compared treatment values are ``t0`` (control) and ``t1`` (treated), ``Δ = t1 - t0``.

Mediator models (OLS), parallel mediators::

    M_j = α_j + a_j T + γ_j' X + e_j

Outcome model (OLS, or logistic for a 0/1 outcome), optionally with treatment × mediator terms::

    Y = β_0 + c T + Σ_j b_j M_j + δ' X [+ Σ_j d_j T M_j] + ε        (logit P(Y=1) = the same right side)

Estimands (Pearl 2001; Robins & Greenland 1992; VanderWeele 2015), with ``Y(t, m)`` the potential outcome::

    total    = E[Y(t1, M(t1))] - E[Y(t0, M(t0))]
    direct   = E[Y(t1, M(t0))] - E[Y(t0, M(t0))]     pure natural direct effect (Imai's ADE(0))
    indirect = E[Y(t1, M(t1))] - E[Y(t1, M(t0))]     total natural indirect effect (Imai's ACME(1))
    indirect[m_j] = E[Y(t1, M_j(t1), M_-j(t0))] - E[Y(t1, M(t0))]

so ``total = direct + indirect``. Linear outcome: closed forms (product of coefficients without interaction,
``direct = cΔ``, ``indirect[m_j] = a_j b_j Δ``; with interaction ``direct = Δ(c + Σ d_j E[M_j(t0)])``,
``indirect[m_j] = a_j (b_j + d_j t1) Δ``). Logistic outcome: the g-formula, averaging predicted probabilities
over the rows with each row's mediators shifted to their counterfactual values,
``M_ij(t') = M_ij + a_j (t' - T_i)`` (its own residual kept; Imai, Keele & Tingley 2010, algorithm 1 with the
empirical residual distribution instead of simulated draws).

Every quantity is computed from weighted Gram matrices, so bootstrap replicates are weights (see
`causalgeom.causal.bootstrap`) and all replicates are solved together as a batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .._util.checks import check_params
from ..errors import QueryError
from .design import Design
from .spec import PARAMETER_CONSTRAINTS

__all__ = ["LinearMediation", "Layout", "effect_names", "RHO_GRID"]

#: Grid of the sensitivity parameter ρ (correlation of mediator and outcome errors).
RHO_GRID = np.round(np.arange(-0.9, 0.9001, 0.05), 2)

#: Target size (number of float64 elements) of the temporary arrays of one batch of replicates.
_BATCH_ELEMS = 2**23


def effect_names(mediators: list[str], ordered: bool) -> list[str]:
    """Names of the effects, in summary order.

    ``total``, ``direct``, ``indirect`` (through all mediators jointly); with 2+ mediators also
    ``indirect[m]`` per mediator (ordered pair ``m1 → m2``: ``indirect[m1]``, ``indirect[m1->m2]``,
    ``indirect[m2]``); then ``prop_mediated`` (= indirect / total) and ``prop_mediated[...]`` per path.
    """
    paths: list[str] = []
    if len(mediators) > 1:
        if ordered:
            m1, m2 = mediators
            paths = [f"indirect[{m1}]", f"indirect[{m1}->{m2}]", f"indirect[{m2}]"]
        else:
            paths = [f"indirect[{m}]" for m in mediators]
    props = ["prop_mediated"] + ["prop_mediated" + p[len("indirect"):] for p in paths]
    return ["total", "direct", "indirect"] + paths + props


def image_means(V: np.ndarray, images: np.ndarray, n_images: int) -> np.ndarray:
    """Mean of every column of ``V`` (n, c) over the rows of the same image, broadcast back to the rows (n, c)."""
    counts = np.bincount(images, minlength=n_images).astype(np.float64)
    out = np.empty_like(V, dtype=np.float64)
    for j in range(V.shape[1]):
        out[:, j] = (np.bincount(images, weights=V[:, j], minlength=n_images) / counts)[images]
    return out


def _group_means(V: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean of every column of ``V`` (n, c) within each group (run), broadcast back to the rows (n, c)."""
    n_g = int(groups.max()) + 1 if groups.size else 0
    counts = np.bincount(groups, minlength=n_g).astype(np.float64)
    out = np.empty((V.shape[0], V.shape[1]), dtype=np.float64)
    for j in range(V.shape[1]):
        out[:, j] = (np.bincount(groups, weights=V[:, j], minlength=n_g) / counts)[groups]
    return out


def _within_varying(X: np.ndarray, groups: np.ndarray | None) -> list[int]:
    """Columns of ``X`` that vary within some group (run-constant columns are run-level already)."""
    if groups is None or X.shape[1] == 0:
        return []
    dev = np.abs(X - _group_means(X, groups)).max(0)
    scale = np.maximum(np.abs(X).max(0), 1.0)
    return [j for j in range(X.shape[1]) if dev[j] > 1e-10 * scale[j]]


def _check_within(design: Design, outcome_model: str, interaction: bool, ordered: bool) -> None:
    """Where the within-run slope is defined (`LinearMediation` with ``slope="within"``)."""
    why = None
    if outcome_model != "linear":
        why = f"a linear outcome model (got outcome_model={outcome_model!r})"
    elif interaction or ordered:
        why = "interaction=False and ordered=False"
    elif design.run_codes is None or design.cluster is None or design.level != "sample":
        why = "a sample-level table clustered by run (several rows per run)"
    elif design.estimand != "runs" or design.run_T is None:
        why = "the estimand over training runs with the treatment constant within runs"
    if why:
        raise QueryError(f"slope='within' (image + run fixed effects) needs {why}; use slope='pooled'")


def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched solve; replicates whose system is singular give NaN instead of failing the batch."""
    try:
        return np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        out = np.full(np.broadcast_shapes(A.shape[:-2], b.shape[:-2]) + b.shape[-2:], np.nan)
        for i in range(out.shape[0]):
            try:
                out[i] = np.linalg.solve(A[i], b[i])
            except np.linalg.LinAlgError:
                pass
        return out


def _expit(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


def _probit(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


def _probit_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


@dataclass
class Layout:
    K: int
    q: int
    L: int
    interaction: bool
    paired: bool = False
    #: run means of the within-run-varying outcome regressors (mediators first), ``slope="within"``
    n_rm: int = 0

    def __post_init__(self) -> None:
        K, q, L = self.K, self.q, self.L
        self.i_t = 1
        self.i_m = list(range(2, 2 + K))
        self.i_x = list(range(2 + K, 2 + K + q))
        self.i_tm = list(range(2 + K + q, 2 + K + q + (K if self.interaction else 0)))
        start = 2 + K + q + len(self.i_tm)
        # image means (Mundlak columns) of the mediators, covariates and treatment x mediator terms
        nz = (K + q + len(self.i_tm)) if self.paired else 0
        self.i_zm = list(range(start, start + K)) if self.paired else []
        self.i_zx = list(range(start + K, start + K + q)) if self.paired else []
        self.i_ztm = list(range(start + K + q, start + nz)) if self.paired else []
        start += nz
        self.i_rm = list(range(start, start + self.n_rm))
        start += self.n_rm
        self.i_y = list(range(start, start + L))
        self.p = start + L
        self.med_reg = [0, 1] + self.i_x + self.i_zx
        self.med2_reg = ([0, 1, self.i_m[0]] + self.i_x + self.i_zm[:1] + self.i_zx) if K >= 1 else []
        self.out_reg = [0, 1] + self.i_m + self.i_x + self.i_tm + self.i_zm + self.i_zx + self.i_ztm + self.i_rm
        #: positions in ``out_reg`` of the run means of the mediators (their coefficients: between − within)
        self.pos_rm_m = [self.out_reg.index(c) for c in self.i_rm[:K]]
        #: regressors whose coefficients do not enter the effects (covariates and image means)
        self.i_z = self.i_zm + self.i_zx + self.i_ztm


class LinearMediation:
    """Mediation with linear mediator models and a linear or logistic outcome model (see module docstring).

    Parameters
    ----------
    design : Design
    outcome_model : {"linear", "logistic", "probit"}
    interaction : bool
        Treatment × mediator terms in the outcome model.
    ordered : bool
        Two mediators, the first a cause of the second (path-specific effects of a linear structural model).

    paired : bool, optional
        Absorb image fixed effects (default: when ``design.images`` is set). Linear outcome: every column but the
        intercept and the treatment is demeaned within image (the Frisch–Waugh–Lovell equivalent of image dummies,
        O(n) memory). The treatment is constant within a run, so in the balanced crossed design (every run scores
        every image once) its within-image demeaned value is ``T - mean(T)`` and the intercept absorbs the
        difference. Logistic outcome: demeaning does not carry over to a logit, so the image means of the
        mediators, covariates and treatment × mediator terms enter as regressors instead (the Mundlak–Chamberlain
        correlated-random-effects model; image dummies would suffer the incidental-parameter bias).
    slope : {"pooled", "within"}
        Mediator → outcome slope of the outcome model. ``"pooled"``: from all variation left after the treatment,
        the covariates and the image effects (within- and between-run). ``"within"``: from within-run variation
        only (image + run fixed effects): the run means of the mediators (and of the covariates that vary within
        runs) enter the outcome model as regressors (Mundlak 1978 over runs), so the mediator coefficient is the
        two-way fixed-effects slope and the run means' coefficients ``λ`` are ``between − within``; the run
        means stand in for whatever run-level luck moves mediator and outcome together. Effects: ``indirect =
        a b_within Δ``, ``direct = Δ (c + Σ_j λ_j a_j)`` (the part of the run means' association that the
        treatment does not explain through ``b_within``), total unchanged. Linear outcome, no interaction, not
        ordered; needs at least 3 runs.

    Notes
    -----
    Columns are centred by their full-sample means before the Gram matrices are formed (better conditioning);
    the treatment is not centred, and all effects are invariant to the centring.
    """

    def __init__(self, design: Design, outcome_model: str = "linear", interaction: bool = False,
                 ordered: bool = False, paired: bool | None = None, slope: str = "pooled"):
        K = design.M.shape[1]
        if ordered and K != 2:
            raise QueryError(f"ordered: causally ordered mediators are supported for exactly 2 mediators, got {K}")
        if ordered and interaction:
            raise QueryError("ordered=True with interaction=True is not supported; drop one of them")
        if ordered and outcome_model != "linear":
            raise QueryError("ordered=True needs outcome_model='linear' (path-specific effects of a linear model)")
        check_params({"slope": slope}, {"slope": PARAMETER_CONSTRAINTS["slope"][:1]}, error=QueryError)
        if slope == "within":
            _check_within(design, outcome_model, interaction, ordered)
        rm_x = _within_varying(design.X, design.run_codes) if slope == "within" else []
        if slope == "within" and design.run_T.size < 3 + K + len(rm_x):
            raise QueryError(f"slope='within' needs at least {3 + K + len(rm_x)} runs (intercept, treatment and "
                             f"{K + len(rm_x)} run means, plus one degree of freedom), got {design.run_T.size}; use "
                             "slope='pooled'")
        self.slope = slope
        self.design = design
        self.outcome_model = outcome_model
        self.interaction = interaction
        self.ordered = ordered
        images = getattr(design, "images", None)
        self.paired = bool(images is not None if paired is None else paired)
        if self.paired and images is None:
            raise QueryError("paired=True needs a design paired by image (design.images)")
        self.mundlak_columns = self.paired and outcome_model != "linear"
        self._inv_link = _probit if outcome_model == "probit" else _expit
        self.lay = Layout(K, design.X.shape[1], design.Y.shape[1], interaction, self.mundlak_columns,
                           K + len(rm_x) if slope == "within" else 0)
        self.names = effect_names(design.mediators, ordered)
        self.t0, self.t1 = design.t0, design.t1
        Mc = design.M - design.M.mean(0)
        Xc = design.X - design.X.mean(0) if design.X.shape[1] else design.X
        Yc = design.Y - design.Y.mean(0)
        parts = [np.ones((design.n, 1)), design.T[:, None], Mc, Xc]
        if interaction:
            parts.append(design.T[:, None] * Mc)
        if self.mundlak_columns:
            parts.append(image_means(np.column_stack(parts[2:]), images, design.n_images))
        elif self.paired:
            k = len(parts) - 2
            dm = np.column_stack(parts[2:] + [Yc])
            dm = dm - image_means(dm, images, design.n_images)
            parts = parts[:2] + [dm[:, :k]]
            Mc, Xc = dm[:, :K], dm[:, K:K + design.X.shape[1]]
            Yc = dm[:, k:]
        if slope == "within":  # run means of the (image-demeaned) mediators and within-run-varying covariates
            parts.append(_group_means(np.column_stack([Mc] + [Xc[:, [j]] for j in rm_x]), design.run_codes))
        parts.append(Yc)
        self.V = np.ascontiguousarray(np.column_stack(parts))
        self._Mc = Mc
        self._Xc = Xc
        self._G: np.ndarray | None = None
        self._beta_logit: np.ndarray | None = None

    # -- Gram matrices -----------------------------------------------------------------------------------------
    def _row_chunk(self) -> int:
        return max(1, _BATCH_ELEMS // (self.lay.p * self.lay.p))

    def cluster_grams(self) -> np.ndarray:
        """Per-cluster Gram matrices ``G_r = V_r' V_r``, shape (R, p, p) (the sufficient statistics)."""
        if self._G is None:
            import scipy.sparse as sp

            d, p = self.design, self.lay.p
            R = d.n_clusters
            ind = sp.csr_matrix((np.ones(d.n), (d.codes, np.arange(d.n))), shape=(R, d.n))
            G = np.zeros((R, p * p))
            step = self._row_chunk()
            for s in range(0, d.n, step):
                Vc = self.V[s:s + step]
                G += ind[:, s:s + step] @ (Vc[:, :, None] * Vc[:, None, :]).reshape(len(Vc), p * p)
            self._G = G.reshape(R, p, p)
        return self._G

    def gram(self) -> np.ndarray:
        """Full-sample Gram matrix, shape (p, p)."""
        return self.cluster_grams().sum(0)

    def weighted_grams(self, W: np.ndarray) -> np.ndarray:
        """Gram matrices of row-weighted replicates: ``W`` (b, n) → (b, p, p)."""
        p = self.lay.p
        out = np.zeros((W.shape[0], p * p))
        step = self._row_chunk()
        for s in range(0, self.design.n, step):
            Vc = self.V[s:s + step]
            out += W[:, s:s + step] @ (Vc[:, :, None] * Vc[:, None, :]).reshape(len(Vc), p * p)
        return out.reshape(W.shape[0], p, p)

    # -- models from Gram matrices -----------------------------------------------------------------------------
    def _mediator_coefs(self, S: np.ndarray) -> dict[str, np.ndarray]:
        lay = self.lay
        r = lay.med_reg
        beta = _solve(S[:, r][:, :, r], S[:, r][:, :, lay.i_m])  # (B, |r|, K)
        out = {"a": beta[:, 1, :]}
        if lay.i_rm:  # treatment coefficients of the run-mean columns (slope="within")
            out["a_rm"] = _solve(S[:, r][:, :, r], S[:, r][:, :, lay.i_rm])[:, 1, :]
        if self.ordered:
            r2 = lay.med2_reg
            beta2 = _solve(S[:, r2][:, :, r2], S[:, r2][:, :, [lay.i_m[1]]])[:, :, 0]
            out["a2_direct"] = beta2[:, 1]
            out["theta"] = beta2[:, 2]
        return out

    def _outcome_coefs_linear(self, S: np.ndarray) -> np.ndarray:
        r = self.lay.out_reg
        return _solve(S[:, r][:, :, r], S[:, r][:, :, self.lay.i_y])  # (B, |r|, L)

    def effects_from_grams(self, S: np.ndarray) -> np.ndarray:
        """Effects of a linear outcome model from Gram matrices ``S`` (B, p, p); returns (B, E, L)."""
        lay = self.lay
        n = S[:, 0, 0]
        Tbar = S[:, 0, 1] / n
        Mbar = S[:, 0, lay.i_m] / n[:, None]
        med = self._mediator_coefs(S)
        beta = self._outcome_coefs_linear(S)
        return self.effects_from_coefs(med["a"], beta, Tbar, Mbar, med.get("a2_direct"), med.get("theta"),
                                       med.get("a_rm"))

    def effects_from_coefs(self, a: np.ndarray, beta: np.ndarray, Tbar: np.ndarray, Mbar: np.ndarray,
                           a2_direct: np.ndarray | None = None, theta: np.ndarray | None = None,
                           a_rm: np.ndarray | None = None) -> np.ndarray:
        """Effects of a linear outcome model from its coefficients.

        Parameters
        ----------
        a : ndarray, shape (B, K)
            Treatment coefficients of the mediator models.
        beta : ndarray, shape (B, |outcome regressors|, L)
            Outcome-model coefficients (layout order: 1, T, M, X, T×M, image means).
        Tbar : ndarray, shape (B,)
        Mbar : ndarray, shape (B, K)
            Means of the treatment and of the (centred) mediators.
        a2_direct, theta : ndarray, shape (B,), optional
            Ordered mediators: second mediator model's treatment and first-mediator coefficients.
        a_rm : ndarray, shape (B, n_rm), optional
            ``slope="within"``: treatment coefficients of the run-mean columns (regressed like a mediator); the
            direct effect gets ``Δ Σ_k λ_k a_rm_k``, so the total equals the pooled model's (omitted-variable
            identity of least squares: the coefficient of ``Y ~ T + X``).

        Returns
        -------
        ndarray, shape (B, E, L)
        """
        lay, K = self.lay, self.lay.K
        B = a.shape[0]
        d = self.t1 - self.t0
        c = beta[:, 1, :]  # (B, L)
        b = beta[:, 2:2 + K, :]  # (B, K, L)
        if self.interaction:
            dd = beta[:, 2 + K + lay.q:2 + K + lay.q + K, :]
        else:
            dd = np.zeros_like(b)
        EM0 = Mbar + a * (self.t0 - Tbar[:, None])  # E[M~_j(t0)], (B, K)
        direct = d * (c + np.einsum("bk,bkl->bl", EM0, dd))
        if lay.i_rm:  # slope="within": the run means' part of the treatment's association is direct
            pos = [lay.out_reg.index(c) for c in lay.i_rm]
            direct = direct + d * np.einsum("bk,bkl->bl", a_rm, beta[:, pos, :])
        if self.ordered:
            a1, a2p, th = a[:, 0:1], a2_direct[:, None], theta[:, None]
            paths = np.stack([a1 * b[:, 0] * d, a1 * th * b[:, 1] * d, a2p * b[:, 1] * d], axis=1)
        else:
            paths = (b + dd * self.t1) * (a * d)[:, :, None]  # (B, K, L)
        indirect = paths.sum(1)
        total = direct + indirect
        return self._assemble(B, total, direct, indirect, paths)

    def _assemble(self, B: int, total: np.ndarray, direct: np.ndarray, indirect: np.ndarray,
                  paths: np.ndarray) -> np.ndarray:
        K, L = self.lay.K, self.lay.L
        rows = [total, direct, indirect]
        if K > 1:
            rows += [paths[:, i] for i in range(paths.shape[1])]
        with np.errstate(divide="ignore", invalid="ignore"):
            rows.append(indirect / total)
            if K > 1:
                rows += [paths[:, i] / total for i in range(paths.shape[1])]
        out = np.stack(rows, axis=1)
        assert out.shape == (B, len(self.names), L)
        return out

    # -- logistic outcome --------------------------------------------------------------------------------------
    def _fit_logistic(self, W: np.ndarray, start: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """Weighted logistic regressions for every outcome and replicate: W (b, n) → beta (b, |r|, L)."""
        r = self.lay.out_reg
        Z = self.V[:, r]
        Y = self.design.Y
        b, pz, L = W.shape[0], len(r), Y.shape[1]
        beta = np.zeros((b, pz, L)) if start is None else np.broadcast_to(start, (b, pz, L)).copy()
        converged = True
        for l in range(L):
            y = Y[:, l]
            bl = beta[:, :, l]
            ok = False
            for _ in range(100):
                if self.outcome_model == "probit":  # Fisher scoring: weights φ²/(μ(1-μ)), score φ(y-μ)/(μ(1-μ))
                    eta = bl @ Z.T
                    mu = np.clip(_probit(eta), 1e-12, 1 - 1e-12)
                    phi = _probit_pdf(eta)
                    v = mu * (1.0 - mu)
                    g = (W * phi * (y - mu) / v) @ Z
                    h = W * phi * phi / v
                else:
                    with np.errstate(over="ignore"):
                        mu = _expit(bl @ Z.T)  # (b, n)
                    g = (W * (y - mu)) @ Z  # (b, pz)
                    h = W * mu * (1.0 - mu)
                H = np.matmul(Z.T[None], h[:, :, None] * Z[None])  # (b, pz, pz)
                H += 1e-12 * np.eye(pz)
                step = _solve(H, g[:, :, None])[:, :, 0]
                bl = bl + step
                if np.nanmax(np.abs(step)) < 1e-10 * (1 + np.nanmax(np.abs(bl))):
                    ok = True
                    break
            converged &= ok
            beta[:, :, l] = bl
        return beta, converged

    def logistic_effects(self, S: np.ndarray, W: np.ndarray, start: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
        """Effects of a logistic outcome model by the g-formula.

        Parameters
        ----------
        S : ndarray, shape (b, p, p)
            Weighted Gram matrices (mediator models).
        W : ndarray, shape (b, n)
            Row weights (outcome model and averaging).
        start : ndarray, optional
            Starting coefficients (the point estimate).

        Returns
        -------
        effects : ndarray, shape (b, E, L)
        potential : ndarray, shape (b, 3 + K, L)
            Means of ``Y(t0,M(t0))``, ``Y(t1,M(t0))``, ``Y(t1,M(t1))``, ``Y(t1, M_j(t1), M_-j(t0))``.
        converged : bool
        beta : ndarray, shape (b, |outcome regressors|, L)
            Logistic coefficients (centred scale).
        """
        a = self._mediator_coefs(S)["a"]  # (b, K)
        beta, converged = self._fit_logistic(W, start)
        eff, po = self.gformula(a, beta, W)
        return eff, po, converged, beta

    def gformula(self, a: np.ndarray, beta: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Effects (b, E, L) and potential-outcome means (b, 3 + K, L) of a logistic outcome model.

        ``a`` (b, K) mediator-model treatment coefficients, ``beta`` (b, |outcome regressors|, L) logistic
        coefficients, ``W`` (b, n) row weights of the averages.
        """
        lay, K = self.lay, self.lay.K
        T = self.design.T
        Wsum = W.sum(1)  # (b,)
        q = lay.q
        b0 = beta[:, 0, :]  # (b, L)
        bT = beta[:, 1, :]
        bM = beta[:, 2:2 + K, :]  # (b, K, L)
        bX = beta[:, 2 + K:2 + K + q, :]  # (b, q, L)
        bTM = beta[:, 2 + K + q:2 + K + q + K, :] if self.interaction else np.zeros_like(bM)
        base = b0[:, None, :] + (np.einsum("nq,bql->bnl", self._Xc, bX) if q else 0.0)  # (b, n, L)
        if lay.i_z:  # image means: image-level covariates, held at their observed values
            nz0 = 2 + K + q + len(lay.i_tm)
            bZ = beta[:, nz0:nz0 + len(lay.i_z), :]
            base = base + np.einsum("nz,bzl->bnl", self.V[:, lay.i_z], bZ)

        def mean_po(t: float, tm: np.ndarray) -> np.ndarray:
            eta = base + bT[:, None, :] * t
            for j in range(K):
                Mj = self._Mc[None, :, j] + a[:, j, None] * (tm[j] - T[None, :])  # (b, n)
                eta = eta + (bM[:, j, :] + bTM[:, j, :] * t)[:, None, :] * Mj[:, :, None]
            with np.errstate(over="ignore"):
                return np.einsum("bn,bnl->bl", W, self._inv_link(eta)) / Wsum[:, None]

        t0v, t1v = np.full(K, self.t0), np.full(K, self.t1)
        po = [mean_po(self.t0, t0v), mean_po(self.t1, t0v), mean_po(self.t1, t1v)]
        for j in range(K):
            tm = t0v.copy()
            tm[j] = self.t1
            po.append(mean_po(self.t1, tm))
        po = np.stack(po, axis=1)  # (b, 3+K, L)
        total, direct, indirect = po[:, 2] - po[:, 0], po[:, 1] - po[:, 0], po[:, 2] - po[:, 1]
        paths = po[:, 3:] - po[:, 1:2]
        return self._assemble(W.shape[0], total, direct, indirect, paths), po

    # -- CR2 covariance (causalgeom.causal.inference) ------------------------------------------------------------
    def _cluster_sums(self, values: np.ndarray) -> np.ndarray:
        """Sums of the rows of ``values`` (n, k) within each cluster, shape (R, k)."""
        import scipy.sparse as sp

        d = self.design
        ind = sp.csr_matrix((np.ones(d.n), (d.codes, np.arange(d.n))), shape=(d.n_clusters, d.n))
        return np.asarray(ind @ values)

    def cr2(self, kind: str = "CR2") -> "object":
        """`causalgeom.causal.inference.CR2` of the effects: CR2 covariance of the stacked mediator and outcome
        coefficients over the design's clusters, delta method for the effects."""
        from .inference import CR2, cr2_scores

        lay, K, L = self.lay, self.lay.K, self.lay.L
        G = self.cluster_grams()
        S = G.sum(0)
        thetas, psis = [], []
        regs = [(lay.med_reg, lay.i_m[j]) for j in range(K)]
        if self.ordered:
            regs.append((lay.med2_reg, lay.i_m[1]))
        regs += [(lay.med_reg, c) for c in lay.i_rm]
        if self.outcome_model == "linear":
            regs += [(lay.out_reg, lay.i_y[l]) for l in range(L)]
        for r, y in regs:
            A = S[np.ix_(r, r)]
            beta = np.linalg.solve(A, S[r, y])
            Gc = G[:, r][:, :, r]
            Ge = G[:, r, y] - Gc @ beta
            psi, _ = cr2_scores(Gc, Ge, A, kind)
            thetas.append(beta)
            psis.append(psi)
        r = lay.out_reg
        if self.outcome_model != "linear":
            Z = self.V[:, r]
            pz = len(r)
            for l in range(L):
                beta = self._beta_logit[:, l]
                eta = Z @ beta
                if self.outcome_model == "probit":  # GLM working weights and score of the probit link
                    mu = np.clip(_probit(eta), 1e-12, 1 - 1e-12)
                    phi = _probit_pdf(eta)
                    w = phi * phi / (mu * (1.0 - mu))
                    score = phi * (self.design.Y[:, l] - mu) / (mu * (1.0 - mu))
                else:
                    mu = _expit(eta)
                    w = mu * (1.0 - mu)
                    score = self.design.Y[:, l] - mu
                Gc = np.zeros((self.design.n_clusters, pz * pz))
                step = self._row_chunk()
                for s0 in range(0, self.design.n, step):
                    Zc, wc = Z[s0:s0 + step], w[s0:s0 + step]
                    import scipy.sparse as sp

                    ind = sp.csr_matrix((np.ones(len(Zc)), (self.design.codes[s0:s0 + step], np.arange(len(Zc)))),
                                        shape=(self.design.n_clusters, len(Zc)))
                    Gc += np.asarray(ind @ ((wc[:, None, None] * Zc[:, :, None] * Zc[:, None, :]).reshape(-1, pz * pz)))
                Gc = Gc.reshape(-1, pz, pz)
                Ge = self._cluster_sums(score[:, None] * Z)
                psi, _ = cr2_scores(Gc, Ge, Gc.sum(0), kind)
                thetas.append(beta)
                psis.append(psi)
        theta = np.concatenate(thetas)
        psi = np.concatenate(psis, axis=1)
        n = S[0, 0]
        Tbar, Mbar = S[0, 1] / n, S[0, lay.i_m] / n
        nm, n2 = len(lay.med_reg), len(lay.med2_reg) if self.ordered else 0
        n_rm = len(lay.i_rm)
        off_o = K * nm + n2 + n_rm * nm

        def effects(Th: np.ndarray) -> np.ndarray:
            b = Th.shape[0]
            a = np.stack([Th[:, j * nm + 1] for j in range(K)], axis=1)
            a2d = Th[:, K * nm + 1] if self.ordered else None
            th = Th[:, K * nm + 2] if self.ordered else None
            a_rm = (np.stack([Th[:, K * nm + n2 + k * nm + 1] for k in range(n_rm)], axis=1) if n_rm else None)
            beta = Th[:, off_o:].reshape(b, L, len(r)).transpose(0, 2, 1)
            if self.outcome_model == "linear":
                return self.effects_from_coefs(a, beta, np.full(b, Tbar), np.broadcast_to(Mbar, (b, K)), a2d, th,
                                               a_rm)
            out = []
            for s0 in range(0, b, 4):
                bb = min(4, b - s0)
                out.append(self.gformula(a[s0:s0 + bb], beta[s0:s0 + bb], np.ones((bb, self.design.n)))[0])
            return np.concatenate(out)

        return CR2(theta, psi, effects)

    def relabeled(self, run_T: np.ndarray) -> np.ndarray | None:
        """Effects (b, E, L) with the treatment of the runs relabeled (rows of ``run_T``, shape (b, R)).

        Linear outcome models: the Gram matrix is affine in each run's treatment value, ``S(t) = Σ_r L(t_r) G0_r
        L(t_r)'`` with ``G0_r`` the run's Gram matrix of the treatment-free columns, so relabelings cost
        ``O(R p²)`` each. Returns None where that does not hold (logistic outcome; image means of treatment ×
        mediator terms), and the caller refits.
        """
        lay, d = self.lay, self.design
        if self.outcome_model != "linear" or (self.paired and self.interaction) or d.run_codes is None:
            return None
        if not np.array_equal(d.codes, d.run_codes):
            return None
        wcols = [0] + lay.i_m + lay.i_x + lay.i_zm + lay.i_zx + lay.i_rm + lay.i_y
        w = len(wcols)
        if not hasattr(self, "_G0"):  # the runs' Gram matrices of the treatment-free columns
            G = self.cluster_grams()
            self._G0 = G[:, wcols][:, :, wcols].reshape(G.shape[0], w * w)
        L0 = np.zeros((lay.p, w))
        L1 = np.zeros((lay.p, w))
        for k, c in enumerate(wcols):
            L0[c, k] = 1.0
        L1[1, 0] = 1.0
        for j, c in enumerate(lay.i_tm):
            L1[c, 1 + j] = 1.0
        t = np.asarray(run_T, dtype=float)
        A0 = self._G0.sum(0).reshape(w, w)
        A1 = (t @ self._G0).reshape(-1, w, w)
        A2 = ((t ** 2) @ self._G0).reshape(-1, w, w)
        S = (L0 @ A0 @ L0.T)[None] + L1 @ A1 @ L0.T + L0 @ A1 @ L1.T + L1 @ A2 @ L1.T
        return self.effects_from_grams(S)

    def refit_relabeled(self, run_T: np.ndarray) -> np.ndarray:
        """Point estimate (E, L) refitted with the runs' treatments replaced by ``run_T`` (R,) (slow path of the
        randomization test and the placebo refuter)."""
        import dataclasses

        d = self.design
        d2 = dataclasses.replace(d, T=np.asarray(run_T, dtype=float)[d.run_codes])
        e2 = LinearMediation(d2, outcome_model=self.outcome_model, interaction=self.interaction,
                             ordered=self.ordered, paired=self.paired, slope=self.slope)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return e2.point()[0]

    def mundlak(self) -> "object":
        """Within-image, between-image and pooled slope of each mediator in the linear outcome model.

        ``within``: the slope with image fixed effects (rows demeaned within image); ``between``: the slope of the
        regression of the image means of the outcome on the image means of the mediators and covariates;
        ``pooled``: the slope without image effects. In the balanced crossed design Mundlak's (1978) regression
        ``Y ~ T + M + X + mean_i(M) + mean_i(X)`` has the within slope on ``M`` and ``between − within`` on
        ``mean_i(M)``. With ``interaction=True`` the slopes are those of the control arm. Computed for a linear
        model even when the outcome model is logistic (a linear-probability description of the slopes).

        Returns
        -------
        pandas.DataFrame
            ``outcome, mediator, within, between, pooled`` (empty when the design is not paired).
        """
        import pandas as pd

        cols = ["outcome", "mediator", "within", "between", "pooled"]
        d = self.design
        if not self.paired or d.M.shape[0] == 0:
            return pd.DataFrame(columns=cols)
        K = d.M.shape[1]
        base = [np.ones(d.n), d.T] + [d.M[:, j] for j in range(K)] + [d.X[:, j] for j in range(d.X.shape[1])]
        if self.interaction:
            base += [d.T * (d.M[:, j] - d.M[:, j].mean()) for j in range(K)]
        Z = np.column_stack(base)
        Zw = np.column_stack([Z[:, :2], Z[:, 2:] - image_means(Z[:, 2:], d.images, d.n_images)])
        Yw = d.Y - image_means(d.Y, d.images, d.n_images)
        bw = np.linalg.lstsq(Zw, Yw, rcond=None)[0]
        bp = np.linalg.lstsq(Z, d.Y, rcond=None)[0]
        counts = np.bincount(d.images, minlength=d.n_images)
        sums = lambda A: np.stack([np.bincount(d.images, weights=A[:, j], minlength=d.n_images)  # noqa: E731
                                   for j in range(A.shape[1])], axis=1) / counts[:, None]
        Zb = np.column_stack([np.ones(d.n_images), sums(np.column_stack(base[2:2 + K + d.X.shape[1]]))])
        bb = np.linalg.lstsq(Zb, sums(d.Y), rcond=None)[0]
        rows = [dict(outcome=y, mediator=m, within=float(bw[2 + j, l]), between=float(bb[1 + j, l]),
                     pooled=float(bp[2 + j, l]))
                for l, y in enumerate(d.outcomes) for j, m in enumerate(d.mediators)]
        return pd.DataFrame(rows, columns=cols)

    # -- point estimate and coefficient table ------------------------------------------------------------------
    def point(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Point estimates (E, L) and, for a logistic outcome, potential-outcome means (3 + K, L)."""
        S = self.gram()[None]
        self._check_design(S[0])
        if self.outcome_model == "linear":
            return self.effects_from_grams(S)[0], None
        W = np.ones((1, self.design.n))
        eff, po, converged, beta = self.logistic_effects(S, W)
        if not converged:
            warnings.warn("the logistic outcome model did not converge (perfect or quasi-complete separation?); "
                          "estimates may be unreliable", RuntimeWarning, stacklevel=3)
        self._beta_logit = beta[0]
        return eff[0], po[0]

    def _check_design(self, S: np.ndarray) -> None:
        lay = self.lay
        checks = [("mediator model (treatment, covariates)", lay.med_reg),
                  ("outcome model (treatment, mediators, covariates)", lay.out_reg)]
        if self.ordered:
            checks.append(("second mediator model (treatment, first mediator, covariates)", lay.med2_reg))
        for label, r in checks:
            A = S[np.ix_(r, r)]
            if np.linalg.matrix_rank(A, tol=None) < len(r):
                raise QueryError(
                    f"the {label} has collinear or constant columns (singular design); check for a constant "
                    "mediator or covariate, or a covariate that is a function of the treatment")

    def replicate(self, batch: "object") -> tuple[np.ndarray, np.ndarray | None]:
        """Effects for a `ReplicateBatch` (b, E, L), and potential-outcome means for a logistic outcome."""
        if self.outcome_model == "linear":
            if batch.counts is not None:
                G = self.cluster_grams()
                R, p = G.shape[0], self.lay.p
                S = (batch.counts.astype(np.float64) @ G.reshape(R, p * p)).reshape(-1, p, p)
            else:
                S = self.weighted_grams(batch.rows())
            return self.effects_from_grams(S), None
        W = batch.rows()
        if batch.counts is not None:
            G = self.cluster_grams()
            R, p = G.shape[0], self.lay.p
            S = (batch.counts.astype(np.float64) @ G.reshape(R, p * p)).reshape(-1, p, p)
        else:
            S = self.weighted_grams(W)
        eff, po, _, _ = self.logistic_effects(S, W, start=self._beta_logit)
        return eff, po

    def batch_size(self) -> int:
        """Replicates per batch that keep temporary arrays near `_BATCH_ELEMS` elements."""
        if self.outcome_model == "linear" and self.design.n_clusters * self.lay.p ** 2 <= _BATCH_ELEMS:
            return 4096
        per = self.design.n * (len(self.lay.out_reg) + self.lay.L + 2)
        return int(max(1, min(4096, _BATCH_ELEMS // max(per, 1))))

    def coefficients(self) -> dict[str, np.ndarray]:
        """Point estimates of the model coefficients on the centred scale (for display / debugging)."""
        S = self.gram()[None]
        out = {f"a[{m}]": v for m, v in zip(self.design.mediators, self._mediator_coefs(S)["a"][0])}
        if self.outcome_model == "linear":
            beta = self._outcome_coefs_linear(S)[0]
        else:
            beta = self._beta_logit if self._beta_logit is not None else self._fit_logistic(
                np.ones((1, self.design.n)), None)[0][0]
        K = self.lay.K
        for l, y in enumerate(self.design.outcomes):
            out[f"c[{y}]"] = beta[1, l]
            for j, m in enumerate(self.design.mediators):
                out[f"b[{m}->{y}]"] = beta[2 + j, l]
                if self.interaction:
                    out[f"d[{self.design.treatment}x{m}->{y}]"] = beta[2 + K + self.lay.q + j, l]
        return out

    # -- sensitivity (Imai, Keele & Yamamoto 2010) ------------------------------------------------------------
    def rho_sensitivity(self) -> tuple["object", "object"]:
        """ρ-sensitivity of the indirect effects of a linear outcome model (no interaction terms used).

        For mediator ``j`` and outcome ``y`` let ``σ_Y``, ``σ_M`` be the residual standard deviations and
        ``ρ~`` the residual correlation of ``y`` and ``M_j`` given ``(1, T, X, M_-j)``. If the errors of the
        mediator and outcome models have correlation ``ρ`` (an unmeasured mediator–outcome confounder), the
        mediator's outcome coefficient is ``b_j(ρ) = (σ_Y/σ_M) (ρ~ - ρ sqrt((1 - ρ~²)/(1 - ρ²)))``
        (Imai, Keele & Yamamoto 2010, Prop. 3 for one mediator; here conditional on the other mediators), and
        ``indirect[m_j](ρ) = a_j b_j(ρ) Δ``. ``b_j(0)`` is the OLS coefficient; the path effect vanishes at
        ``ρ = ρ~``.

        Returns
        -------
        summary : DataFrame
            One row per (outcome, mediator): ``rho_tilde``, ``rho_at_zero_path`` (ρ at which the mediator's
            indirect effect is 0) and ``rho_at_zero_indirect`` (ρ at which the joint indirect effect is 0).
        curve : DataFrame
            ``outcome, mediator, rho, indirect_path, indirect`` over `RHO_GRID`.
        """
        import pandas as pd

        lay, d = self.lay, self.design
        S = self.gram()
        a = self._mediator_coefs(S[None])["a"][0]
        delta = self.t1 - self.t0
        rows, curve = [], []
        for l, y in enumerate(d.outcomes):
            iy = lay.i_y[l]
            b0 = np.empty(lay.K)
            stats = []
            for j in range(lay.K):
                z = [0, 1] + [lay.i_m[k] for k in range(lay.K) if k != j] + lay.i_x + lay.i_z + lay.i_rm
                A = [iy, lay.i_m[j]]
                P = S[np.ix_(A, A)] - S[np.ix_(A, z)] @ np.linalg.solve(S[np.ix_(z, z)], S[np.ix_(z, A)])
                sy, sm = np.sqrt(P[0, 0]), np.sqrt(P[1, 1])
                rt = float(np.clip(P[0, 1] / (sy * sm), -1 + 1e-12, 1 - 1e-12))
                stats.append((sy, sm, rt))
                b0[j] = (sy / sm) * rt
            ind0 = a * b0 * delta
            for j, m in enumerate(d.mediators):
                sy, sm, rt = stats[j]
                other = ind0.sum() - ind0[j]
                # joint indirect = other + a_j Δ b_j(ρ) = 0  <=>  b_j(ρ) = g
                with np.errstate(divide="ignore", invalid="ignore"):
                    g = -other / (a[j] * delta)
                    k = rt - g * sm / sy
                    rho_joint = float(np.sign(k) * abs(k) / np.sqrt(1 - rt ** 2 + k ** 2)) if np.isfinite(k) else np.nan
                rows.append(dict(outcome=y, mediator=m, rho_tilde=rt, rho_at_zero_path=rt,
                                 rho_at_zero_indirect=rho_joint))
                bj = (sy / sm) * (rt - RHO_GRID * np.sqrt((1 - rt ** 2) / (1 - RHO_GRID ** 2)))
                path = a[j] * bj * delta
                curve.append(pd.DataFrame(dict(outcome=y, mediator=m, rho=RHO_GRID, indirect_path=path,
                                               indirect=other + path)))
        return pd.DataFrame(rows), pd.concat(curve, ignore_index=True)
