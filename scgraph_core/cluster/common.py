"""What every clustering step shares: the noise label, the exact-kNN size limit and the input checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError

NOISE = -1

# Above this many cells kNN graphs (Leiden, UMAP) use approximate neighbours (pynndescent); below it
# the exact search is fast, needs no numba compilation and does not depend on threading.
EXACT_KNN_MAX_CELLS = 50_000


def matrix(X: Any, name: str, *, allow_sparse: bool = True) -> Any:
    """``X`` as a finite cells x features matrix (dense float, or CSR when sparse is allowed)."""
    if sp.issparse(X):
        if not allow_sparse:
            X = X.toarray()
        else:
            X = sp.csr_matrix(X)
            if not np.isfinite(X.data).all():
                raise ConfigError(f"{name} contains NaN or infinite values; remove or impute them first.")
            return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ConfigError(f"{name} must be a cells x features matrix; got an array of shape {X.shape}.")
    if not np.issubdtype(X.dtype, np.number):
        raise ConfigError(f"{name} must hold numbers; got values of type {X.dtype}.")
    X = X.astype(np.float64 if X.dtype == np.float64 else np.float32, copy=False)
    if not np.isfinite(X).all():
        raise ConfigError(f"{name} contains NaN or infinite values; remove or impute them first.")
    return X


def min_cells(n: int, needed: int, what: str) -> None:
    if n < needed:
        raise ConfigError(f"{what} needs at least {needed} cells; got {n}.")
