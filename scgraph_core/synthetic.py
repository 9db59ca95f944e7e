"""Synthetic cells for scale tests, interpolated between real neighbouring cells.

Each new cell is

    x_new = max(0, x_i + λ (x_j − x_i) + ε),   λ ~ U(0, 1),

with x_i a real cell drawn at random, x_j one of its ``n_neighbors`` nearest real cells (exact
euclidean kNN) and ε small Gaussian noise on the cell's non-zero entries (zeros stay zero, so sparse
data stay sparse). With ``counts=True`` the result is rounded to whole numbers. New cells inherit the
labels of x_i. Plain tiling with noise is avoided on purpose: there each cell's nearest neighbours are
its own copies and the kNN graph falls apart into isolated cliques (../shared/data/README.md).

The recipe is not immune: with k = 5 and about 8 new cells per real cell, the new cells anchored on an
outlying real cell can still be each other's nearest neighbours and split off as small clouds (pbmc3k
to 20,000 cells: 95 % of cells in one component, about 120 clouds of 6-20 cells; at 10,000 and 100,000
cells over 99 %). Check ``Graph.stats()`` before reading scale results as biology.

``resample=True`` (the recipe for scale tests of clustering) removes what is left of that trap. Every
new cell copies its anchor's technical noise under interpolation, so at 100,000 cells made from
pbmc3k's 2,638 each real cell has ~38 descendants and 43 % of a new cell's 10 nearest neighbours (on 50
PCs) share its anchor: the data hold ~2,600 tight clouds no real dataset has. Resampling draws whole
new counts instead:

    c_new ~ Poisson( d_new · ((1 − λ) s_i + λ s_j) ),   d_new = (1 − λ) d_i + λ d_j,

with s_i the expression per unit depth averaged over cell i and its ``smooth`` − 1 nearest real cells
(an estimate of i's expression with most of its own sampling noise averaged out) and d_i its depth.
Each new cell thus carries fresh, independent sampling noise at a real cell's depth; the same-anchor
share falls to 4 % (smooth 5). Counts come back as counts; log1p-normalised input (log1p(c · r), as
Seurat and scanpy write it) is turned back into counts first (r is the smallest non-zero value's
expm1: one molecule) and the new cells are written the same way with r = 1 / d_new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import DataError
from .graphs import _as_dense, nearest_neighbors

#: New cells generated per chunk, so memory stays a few chunk-sized copies of the output.
CHUNK = 8192


def synthesis_plan(
    X: Any, n_cells: int, *, n_neighbors: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which real cells each new cell comes from: (anchor i, partner j, λ), each of length ``n_cells``.

    ``synthesize`` with the same ``n_neighbors`` and ``seed`` uses exactly this plan.
    """
    return _plan(n_cells, _neighbours(X, n_neighbors), seed)


def _neighbours(X: Any, n_neighbors: int) -> np.ndarray:
    """Each real cell's ``n_neighbors`` nearest real cells (exact euclidean), as indices."""
    n_real = X.shape[0]
    if n_real < 2:
        raise DataError(f"Synthesising cells needs at least 2 real cells; got {n_real}.")
    k = min(n_neighbors, n_real - 1)
    neighbours, _, _ = nearest_neighbors(
        _as_dense(X, "The real cells"), k, metric="euclidean", backend="exact"
    )
    return neighbours


def _plan(n_cells: int, neighbours: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_real, k = neighbours.shape
    if n_cells < 0:
        raise DataError(f"n_cells must be zero or more; got {n_cells}.")
    rng = np.random.default_rng(seed)
    anchor = rng.integers(0, n_real, size=n_cells)
    partner = neighbours[anchor, rng.integers(0, k, size=n_cells)]
    lam = rng.random(n_cells)
    return anchor, partner, lam


def synthesize(
    X: Any,
    n_cells: int,
    *,
    n_neighbors: int = 20,
    noise: float = 0.01,
    seed: int = 0,
    counts: bool = False,
    labels: Sequence[Any] | np.ndarray | None = None,
    resample: bool = False,
    smooth: int = 5,
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray | None]:
    """``n_cells`` new cells interpolated between real neighbours (see the module docstring).

    ``X``: real cells x genes, dense or sparse, non-negative. ``noise``: standard deviation of ε as a
    fraction of each gene's standard deviation over the real cells. ``resample``: draw new counts
    instead (``noise`` is then unused; ``smooth``: real cells averaged per profile, 1 = the anchor
    alone). Returns (X_new float32, same sparse/dense kind as X; labels_new = labels[i] or None).
    """
    if labels is not None and len(labels) != X.shape[0]:
        raise DataError(
            f"{len(labels)} labels were given for {X.shape[0]} cells; they must match one to one."
        )
    neighbours = _neighbours(X, n_neighbors)
    plan = _plan(n_cells, neighbours, seed)
    if resample:
        X_new = _resample_plan(X, plan, neighbours, smooth=smooth, seed=seed, counts=counts)
    else:
        X_new = _apply_plan(X, plan, noise=noise, seed=seed, counts=counts)
    labels_new = None if labels is None else np.asarray(labels)[plan[0]]
    return X_new, labels_new


def _apply_plan(
    X: Any, plan: tuple[np.ndarray, np.ndarray, np.ndarray], *, noise: float, seed: int, counts: bool
) -> np.ndarray | sp.csr_matrix:
    """The new cells of ``plan``, made chunk by chunk."""
    if noise < 0:
        raise DataError(f"noise must be zero or positive; got {noise}.")
    anchor, partner, lam = plan
    n_cells = anchor.size
    sparse = sp.issparse(X)
    Xr = sp.csr_matrix(X, dtype=np.float32) if sparse else np.asarray(X, dtype=np.float32)
    if (Xr.data if sparse else Xr).min(initial=0.0) < 0:
        raise DataError(
            "Synthesis expects non-negative expression (counts or log values); X has negative values."
        )
    gene_sd = _gene_sd(Xr).astype(np.float32) * np.float32(noise)
    # A second stream for the noise, so the plan does not depend on the noise settings.
    rng = np.random.default_rng([seed, 1])
    parts = []
    for a in range(0, n_cells, CHUNK):
        i, j = anchor[a : a + CHUNK], partner[a : a + CHUNK]
        lm = lam[a : a + CHUNK].astype(np.float32)
        if sparse:
            part = sp.csr_matrix(sp.diags(1.0 - lm) @ Xr[i] + sp.diags(lm) @ Xr[j], dtype=np.float32)
            part.sum_duplicates()
            if noise > 0:
                part.data += rng.standard_normal(part.data.size, dtype=np.float32) * gene_sd[part.indices]
            np.maximum(part.data, 0, out=part.data)
            if counts:
                np.rint(part.data, out=part.data)
            part.eliminate_zeros()
        else:
            part = Xr[i] + lm[:, None] * (Xr[j] - Xr[i])
            if noise > 0:
                rows, cols = np.nonzero(part)
                part[rows, cols] += rng.standard_normal(rows.size, dtype=np.float32) * gene_sd[cols]
            np.maximum(part, 0, out=part)
            if counts:
                np.rint(part, out=part)
        parts.append(part)
    if sparse:
        return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, X.shape[1]), dtype=np.float32)
    return np.concatenate(parts) if parts else np.zeros((0, X.shape[1]), dtype=np.float32)


def _molecules(X: Any, counts: bool) -> tuple[sp.csr_matrix, np.ndarray, bool]:
    """Real cells as molecule counts: (counts csr float64, depth per cell, whether X was log1p-scaled).

    Counts: depth = the cell's total. log1p(c · r) values: r is recovered per cell from its smallest
    non-zero value (one molecule), c = expm1(x) / r must then be whole numbers, and depth = 1 / r.
    """
    C = sp.csr_matrix(X, dtype=np.float64)
    C.eliminate_zeros()
    if C.data.size and C.data.min() < 0:
        raise DataError(
            "Synthesis expects non-negative expression (counts or log values); X has negative values."
        )
    if counts:
        return C, np.asarray(C.sum(axis=1)).ravel(), False
    whole = bool(np.all(np.mod(C.data, 1) == 0))  # raw counts passed with counts=False?
    rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
    smallest = np.full(C.shape[0], np.inf)
    np.minimum.at(smallest, rows, C.data)
    r = np.where(np.isfinite(smallest), np.expm1(np.where(np.isfinite(smallest), smallest, 0.0)), 1.0)
    C.data = np.expm1(C.data) / r[rows]
    off = np.abs(C.data - np.rint(C.data)).max(initial=0.0)
    if off > 0.01 and whole:
        raise DataError(
            "X holds whole numbers, so it looks like raw counts, but it was passed as log values "
            "(counts=False): pass counts=True to resample raw counts."
        )
    if off > 0.01:
        raise DataError(
            "Resampling draws new molecule counts, so it needs counts or log1p-normalised values "
            "(log1p(counts x size factor), as scanpy and Seurat write them) from which the counts can be "
            f"recovered; here expm1(X) divided by each cell's smallest value is off whole numbers by up to "
            f"{off:.3g}. Use raw counts (e.g. adata.layers['counts']) or synthesise without resampling."
        )
    C.data = np.rint(C.data)
    depth = np.where(np.isfinite(smallest), 1.0 / np.maximum(r, 1e-300), 0.0)
    return C, depth, True


def _resample_plan(
    X: Any,
    plan: tuple[np.ndarray, np.ndarray, np.ndarray],
    neighbours: np.ndarray,
    *,
    smooth: int,
    seed: int,
    counts: bool,
) -> np.ndarray | sp.csr_matrix:
    """The new cells of ``plan`` drawn as fresh counts (module docstring), chunk by chunk."""
    if smooth < 1:
        raise DataError(f"smooth must be 1 or more (1: each anchor's own profile); got {smooth}.")
    C, depth, logged = _molecules(X, counts)
    n_real = C.shape[0]
    # Expression per unit depth, averaged over each cell and its smooth - 1 nearest real cells.
    per_depth = sp.diags(np.divide(1.0, depth, out=np.zeros_like(depth), where=depth > 0)) @ C
    m = min(smooth, neighbours.shape[1] + 1)
    group = np.concatenate([np.arange(n_real)[:, None], neighbours[:, : m - 1]], axis=1)
    W = sp.csr_matrix(
        (np.full(group.size, 1.0 / m), group.ravel(), np.arange(0, group.size + 1, m)), shape=(n_real, n_real)
    )
    profile = sp.csr_matrix(W @ per_depth)
    anchor, partner, lam = plan
    rng = np.random.default_rng([seed, 2])
    parts = []
    for a in range(0, anchor.size, CHUNK):
        i, j, lm = anchor[a : a + CHUNK], partner[a : a + CHUNK], lam[a : a + CHUNK]
        d_new = (1.0 - lm) * depth[i] + lm * depth[j]
        mean = sp.csr_matrix(sp.diags((1.0 - lm) * d_new) @ profile[i] + sp.diags(lm * d_new) @ profile[j])
        mean.sum_duplicates()
        mean.data = rng.poisson(mean.data).astype(np.float64)
        if logged:
            rows = np.repeat(np.arange(mean.shape[0]), np.diff(mean.indptr))
            mean.data = np.log1p(mean.data / np.maximum(d_new[rows], 1e-300))
        mean.eliminate_zeros()
        parts.append(mean.astype(np.float32))
    out = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, X.shape[1]), dtype=np.float32)
    return out if sp.issparse(X) else out.toarray()


def _gene_sd(X: np.ndarray | sp.csr_matrix) -> np.ndarray:
    if sp.issparse(X):
        mean = np.asarray(X.mean(axis=0)).ravel()
        sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
        return np.sqrt(np.maximum(sq - mean * mean, 0.0))
    return X.std(axis=0)


def synthesize_adata(
    adata: Any,
    n_cells: int,
    *,
    n_neighbors: int = 20,
    noise: float = 0.01,
    seed: int = 0,
    counts: bool | None = None,
    resample: bool = False,
    smooth: int = 5,
) -> Any:
    """An AnnData of ``n_cells`` synthetic cells made from ``adata.X`` (see :func:`synthesize`).

    ``var`` is copied; ``obs`` inherits every categorical, text and boolean column from the anchor cell
    and records ``synthetic_anchor`` / ``synthetic_partner`` (real cell names) and ``synthetic_lambda``.
    ``counts=None`` rounds when X holds whole numbers. X stays sparse if it was.
    """
    import anndata as ad
    import pandas as pd

    X = adata.X
    if counts is None:
        values = X.data if sp.issparse(X) else np.asarray(X)
        counts = bool(np.all(np.mod(values, 1) == 0))
    neighbours = _neighbours(X, n_neighbors)
    plan = _plan(n_cells, neighbours, seed)
    anchor, partner, lam = plan
    if resample:
        X_new = _resample_plan(X, plan, neighbours, smooth=smooth, seed=seed, counts=counts)
    else:
        X_new = _apply_plan(X, plan, noise=noise, seed=seed, counts=counts)
    names = np.asarray(adata.obs_names)
    obs = pd.DataFrame(index=pd.Index([f"synth{c}" for c in range(n_cells)]))
    for col in adata.obs.columns:
        s = adata.obs[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            obs[col] = pd.Categorical(s.to_numpy()[anchor], categories=s.cat.categories)
        elif s.dtype == object or s.dtype == bool or pd.api.types.is_string_dtype(s):
            obs[col] = s.to_numpy()[anchor]
    obs["synthetic_anchor"] = names[anchor]
    obs["synthetic_partner"] = names[partner]
    obs["synthetic_lambda"] = lam.astype(np.float32)
    uns = {key: adata.uns[key] for key in ("x_kind",) if key in adata.uns}
    uns["synthetic"] = {
        "from_cells": int(adata.n_obs),
        "n_neighbors": int(n_neighbors),
        "noise": 0.0 if resample else float(noise),
        "resample": bool(resample),
        "smooth": int(smooth) if resample else 0,
        "seed": int(seed),
        "counts": bool(counts),
        "source": str(adata.uns.get("source", "")),
    }
    return ad.AnnData(X=X_new, obs=obs, var=adata.var.copy(), uns=uns)
