"""Small real-shaped datasets made inside the tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp


def toy_counts(n_cells: int = 150, n_genes: int = 60, n_types: int = 3, seed: int = 0) -> ad.AnnData:
    """Poisson counts from ``n_types`` cell types with distinct mean profiles; labels in obs['celltype']."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_cells)
    profiles = rng.gamma(1.5, 2.0, size=(n_types, n_genes))
    # Each type over-expresses its own block of marker genes.
    block = n_genes // n_types
    for t in range(n_types):
        profiles[t, t * block : (t + 1) * block] *= 6
    X = rng.poisson(profiles[types]).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["celltype"] = [f"type{t}" for t in types]
    return adata
