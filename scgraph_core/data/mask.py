"""Hiding known entries of a matrix, to measure how well a model imputes them."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError


def mask_nonzero(
    X: Any, fraction: float = 0.1, seed: int = 0
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Hide a random ``fraction`` of the non-zero entries (set them to 0), for imputation tests.

    Returns ``(X_masked, rows, cols, values)``: a copy of X (CSR for sparse input, ndarray for
    dense) and the positions and original values of the hidden entries, sorted by row then
    column. At least one entry is hidden when X has any non-zero. The input is not changed.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be between 0 and 1 (exclusive); got {fraction}.")
    rng = np.random.default_rng(seed)
    if sp.issparse(X):
        out = sp.csr_matrix(X, copy=True)
        out.sum_duplicates()
        out.eliminate_zeros()
        nnz = out.nnz
        k = min(nnz, max(1, int(round(fraction * nnz)))) if nnz else 0
        pick = np.sort(rng.choice(nnz, size=k, replace=False))
        rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))[pick].astype(np.int64)
        cols = out.indices[pick].astype(np.int64)
        values = out.data[pick].copy()
        out.data[pick] = 0
        out.eliminate_zeros()
        return out, rows, cols, values
    out = np.array(X, copy=True)
    if out.ndim != 2:
        raise ConfigError(f"X must be a 2-D matrix; got shape {out.shape}.")
    r, c = np.nonzero(out)
    nnz = r.size
    k = min(nnz, max(1, int(round(fraction * nnz)))) if nnz else 0
    pick = np.sort(rng.choice(nnz, size=k, replace=False))
    rows, cols = r[pick].astype(np.int64), c[pick].astype(np.int64)
    values = out[rows, cols].copy()
    out[rows, cols] = 0
    return out, rows, cols, values
