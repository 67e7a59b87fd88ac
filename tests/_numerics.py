"""Tolerances for comparing results of *different* floating-point computations (issue 13).

Exact equality is kept only where two results come from the same computation by construction (a store
round trip, a resume that recomputes the same batches). Anything computed another way — another batch
size (a different BLAS kernel for a partial batch), another library, thread count or device — is compared
with a tolerance stated here, so the suite passes on any x86 CPU (AMD and Intel BLAS kernels differ in
the last bits).
"""

from __future__ import annotations

import numpy as np

#: float32 results of the same formula computed with another summation order (batch size, kernel):
#: a few units in the last place, relative 2**-23 ≈ 1.2e-7 each, accumulated over ≲ 100 terms.
F32_RTOL = 1e-5
F32_ATOL = 1e-6

#: Decisions (argmax, still-correct-after-attack) may flip only where the deciding margin is within this
#: distance of 0 in logit units: float32 reassociation moves logits by ~1e-6 on these tiny models, and
#: an ε-step attack amplifies a gradient whose sign flips only where that component is ~0.
BOUNDARY_ATOL = 1e-3


def assert_decisions_agree(actual, desired, margin, *, atol: float = BOUNDARY_ATOL, max_frac: float = 0.02) -> None:
    """Boolean decisions of two floating-point computations agree except next to the decision boundary.

    Parameters
    ----------
    actual, desired : array_like of bool, same shape
    margin : array_like of float, broadcastable to that shape
        The deciding quantity (e.g. the logit margin true − best other) of the reference computation.
    atol : float
        Disagreement is allowed only where ``|margin| <= atol``.
    max_frac : float
        At most this share of the decisions may disagree (near the boundary) at all.
    """
    actual, desired = np.asarray(actual, bool), np.asarray(desired, bool)
    margin = np.broadcast_to(np.asarray(margin, float), actual.shape)
    differ = actual != desired
    far = differ & (np.abs(margin) > atol)
    assert not far.any(), (f"{int(far.sum())} of {differ.size} decisions differ although their margin is farther "
                           f"than {atol} from the boundary (first at index {np.argwhere(far)[0].tolist()})")
    assert differ.mean() <= max_frac, f"{differ.mean():.1%} of the decisions differ (allowed {max_frac:.0%})"
