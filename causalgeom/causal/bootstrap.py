"""Resampling weights for the bootstrap: clusters (runs), clusters then samples within them, or samples.

A bootstrap replicate is represented by weights, not by copied rows: a resampled data set in which row ``i``
appears ``w[i]`` times gives the same regression as weighted least squares with weights ``w``. For the cluster
bootstrap the weight of a row is the number of times its cluster was drawn, so a replicate of a linear model is
``sum_r k[b, r] * G_r`` over per-cluster Gram matrices ``G_r`` (Field & Welsh 2007; Davison & Hinkley 1997,
sec. 3.8) — a ``(B, R) @ (R, p*p)`` product for all replicates at once.

Schemes
-------
``"cluster"``
    Draw ``R_s`` clusters with replacement within each stratum ``s`` (treatment arm) — every replicate keeps
    both arms and the design's number of clusters per arm.
``"cluster+samples"``
    Two-stage (hierarchical) bootstrap: clusters as above, then ``n_r`` samples with replacement within each
    drawn cluster ``r`` (Davison & Hinkley 1997, sec. 3.8, strategy 2). A cluster drawn ``k`` times contributes
    ``Multinomial(k * n_r, 1/n_r)`` counts to its rows.
``"naive"``
    Rows with replacement within each treatment arm, ignoring clusters. Only valid when rows are independent;
    labelled as such in the results.
``"two-way"``
    Runs (within arms) and images drawn independently, a row weighted by the product of its run's and its
    image's counts: the pigeonhole bootstrap of a crossed design (Owen 2007, Ann. Appl. Stat. 1(2)), for the
    effect over runs *and* test images. Needs a design paired by image.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["cluster_counts", "ReplicateBatch", "replicate_batches", "row_strata"]


def cluster_counts(n_clusters: int, strata: np.ndarray | None, B: int, rng: np.random.Generator) -> np.ndarray:
    """How often each cluster is drawn in each replicate.

    Parameters
    ----------
    n_clusters : int
        ``R``.
    strata : ndarray of int, shape (R,), or None
        Stratum of each cluster; clusters are drawn with replacement within strata (``None``: one stratum).
    B : int
        Number of replicates.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int64, shape (B, R)
        Counts; each row sums to ``R`` and, per stratum, to the stratum's size.
    """
    counts = np.zeros((B, n_clusters), dtype=np.int64)
    groups = [np.arange(n_clusters)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    for idx in groups:
        m = idx.size
        counts[:, idx] = rng.multinomial(m, np.full(m, 1.0 / m), size=B)
    return counts


def row_strata(T: np.ndarray, categorical: bool) -> np.ndarray | None:
    """Strata of the naive bootstrap: the treatment arm (or value) of each row, if every stratum has >= 2 rows."""
    uniq, inv, cnt = np.unique(T, return_inverse=True, return_counts=True)
    if categorical or cnt.min() >= 2:
        return inv.astype(np.int64)
    return None


class ReplicateBatch:
    """A batch of replicates: per-cluster counts (cluster scheme) and/or per-row weights.

    Attributes
    ----------
    counts : ndarray of int, shape (b, R), or None
        Cluster counts (``"cluster"`` scheme only).
    """

    def __init__(self, counts: np.ndarray | None, rows: np.ndarray | None, codes: np.ndarray):
        self.counts = counts
        self._rows = rows
        self._codes = codes

    @property
    def size(self) -> int:
        return int((self.counts if self.counts is not None else self._rows).shape[0])

    def rows(self) -> np.ndarray:
        """Per-row weights, shape (b, n), float64."""
        if self._rows is None:
            self._rows = self.counts[:, self._codes].astype(np.float64)
        return self._rows


def replicate_batches(scheme: str, *, codes: np.ndarray, n_clusters: int, strata: np.ndarray | None,
                      row_strata: np.ndarray | None, B: int, rng: np.random.Generator,
                      batch_size: int, run_codes: np.ndarray | None = None, run_strata: np.ndarray | None = None,
                      images: np.ndarray | None = None, n_images: int = 0) -> Iterator[ReplicateBatch]:
    """Yield the ``B`` replicates of ``scheme`` in batches of at most ``batch_size``.

    Parameters
    ----------
    scheme : {"cluster", "cluster+samples", "naive"}
    codes : ndarray of int, shape (n,)
        Cluster of each row.
    n_clusters : int
    strata : ndarray, shape (R,), or None
        Cluster strata (cluster schemes).
    row_strata : ndarray, shape (n,), or None
        Row strata (naive scheme).
    B, batch_size : int
    rng : numpy.random.Generator
    run_codes, run_strata, images, n_images
        Two-way scheme: run of each row (n,), arm of each run (R_runs,), image of each row (n,), number of images.
    """
    n = codes.shape[0]
    if scheme == "cluster+samples":
        members = _members(codes, n_clusters)
    elif scheme == "naive":
        groups = [np.arange(n)] if row_strata is None else [np.flatnonzero(row_strata == s)
                                                            for s in np.unique(row_strata)]
    done = 0
    while done < B:
        b = min(batch_size, B - done)
        done += b
        if scheme == "cluster":
            yield ReplicateBatch(cluster_counts(n_clusters, strata, b, rng), None, codes)
        elif scheme == "two-way":
            kr = cluster_counts(int(run_codes.max()) + 1, run_strata, b, rng)
            ki = cluster_counts(n_images, None, b, rng)
            yield ReplicateBatch(None, (kr[:, run_codes] * ki[:, images]).astype(np.float64), codes)
        elif scheme == "cluster+samples":
            k = cluster_counts(n_clusters, strata, b, rng)
            w = np.zeros((b, n))
            for r, idx in enumerate(members):
                m = idx.size
                w[:, idx] = rng.multinomial(k[:, r] * m, np.full(m, 1.0 / m))
            yield ReplicateBatch(None, w, codes)
        else:
            w = np.zeros((b, n))
            for idx in groups:
                m = idx.size
                w[:, idx] = rng.multinomial(m, np.full(m, 1.0 / m), size=b)
            yield ReplicateBatch(None, w, codes)


def _members(codes: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_clusters + 1))
    return [order[bounds[r]:bounds[r + 1]] for r in range(n_clusters)]
