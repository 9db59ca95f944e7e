"""Synthetic cells: interpolation between real neighbours, labels, counts, and a graph that holds together."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_file

from scgraph_core import graphs as G
from scgraph_core import params
from scgraph_core.errors import DataError
from scgraph_core.synthetic import synthesis_plan, synthesize, synthesize_adata


@pytest.fixture
def real() -> tuple[np.ndarray, np.ndarray]:
    """150 cells x 20 genes of Poisson counts in three cell types."""
    rng = np.random.default_rng(0)
    rates = rng.gamma(1.0, 2.0, size=(3, 20))
    labels = rng.integers(0, 3, 150)
    X = rng.poisson(rates[labels]).astype(np.float32)
    return X, np.array(["T", "B", "NK"])[labels]


def brute_neighbours(X: np.ndarray, k: int) -> np.ndarray:
    D = ((X[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1)[:, :k]


def test_shapes_labels_and_non_negative(real):
    X, labels = real
    X_new, labels_new = synthesize(X, 1000, noise=0.05, seed=1, labels=labels)
    anchor, _, _ = synthesis_plan(X, 1000, seed=1)
    assert X_new.shape == (1000, 20) and X_new.dtype == np.float32
    assert X_new.min() >= 0
    assert np.array_equal(labels_new, labels[anchor])
    assert synthesize(X, 10, seed=1)[1] is None


def test_new_cells_lie_between_two_real_neighbours(real):
    X, _ = real
    anchor, partner, lam = synthesis_plan(X, 500, n_neighbors=20, seed=3)
    X_new, _ = synthesize(X, 500, n_neighbors=20, noise=0.0, seed=3)
    assert np.all((lam > 0) & (lam < 1))
    expected = X[anchor] + lam[:, None].astype(np.float32) * (X[partner] - X[anchor])
    assert np.allclose(X_new, expected, atol=1e-5)
    nn = brute_neighbours(X, 20)
    # The partner is one of the anchor's 20 nearest real cells (up to ties in distance).
    d = np.linalg.norm(X[partner] - X[anchor], axis=1)
    kth = np.linalg.norm(X[nn[anchor, -1]] - X[anchor], axis=1)
    assert np.all(d <= kth + 1e-4)
    # With noise the cells stay close to the segment, and zeros stay zeros.
    noisy, _ = synthesize(X, 500, n_neighbors=20, noise=0.01, seed=3)
    assert np.all(noisy[expected == 0] == 0)
    assert np.abs(noisy - expected).max() < 0.2


def test_counts_are_whole_numbers_and_sparse_stays_sparse(real):
    X, _ = real
    X_new, _ = synthesize(sp.csr_matrix(X), 800, counts=True, seed=2)
    assert sp.issparse(X_new) and X_new.shape == (800, 20)
    assert np.all(X_new.data == np.rint(X_new.data)) and X_new.data.min() > 0
    dense_new, _ = synthesize(X, 800, counts=True, seed=2)
    assert np.all(dense_new == np.rint(dense_new))
    # Same plan for sparse and dense input: without noise the cells are identical.
    a, _ = synthesize(sp.csr_matrix(X), 50, noise=0.0, seed=9)
    b, _ = synthesize(X, 50, noise=0.0, seed=9)
    assert np.allclose(a.toarray(), b)


def test_knn_graph_does_not_fall_apart(real):
    X, _ = real
    X_new, _ = synthesize(X, 3000, seed=4)
    s = G.build_graph(X_new, params.from_dict(G.GraphSpec, {"k": 5})).stats()
    assert s["n_components"] <= 5 and s["largest_component_fraction"] > 0.5
    # The trap the recipe avoids: tiled copies with noise form one clique per real cell.
    rng = np.random.default_rng(0)
    tiled = np.tile(X, (20, 1)) + rng.normal(scale=0.01, size=(3000, 20)).astype(np.float32)
    t = G.build_graph(tiled, params.from_dict(G.GraphSpec, {"k": 5})).stats()
    assert t["n_components"] > 50


def test_errors(real):
    X, labels = real
    with pytest.raises(DataError, match="non-negative"):
        synthesize(X - 5, 10)
    with pytest.raises(DataError, match="labels"):
        synthesize(X, 10, labels=labels[:5])
    with pytest.raises(DataError, match="at least 2 real cells"):
        synthesize(X[:1], 10)


def test_synthesize_adata(real):
    import anndata as ad

    X, labels = real
    a = ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(
            {"celltype": pd.Categorical(labels), "n_counts": X.sum(1)}, index=[f"c{i}" for i in range(150)]
        ),
        var=pd.DataFrame({"gene_ids": [f"ENSG{i}" for i in range(20)]}, index=[f"g{i}" for i in range(20)]),
    )
    b = synthesize_adata(a, 400, seed=5)
    assert b.shape == (400, 20) and sp.issparse(b.X)
    assert list(b.var_names) == list(a.var_names) and list(b.var["gene_ids"]) == list(a.var["gene_ids"])
    assert isinstance(b.obs["celltype"].dtype, pd.CategoricalDtype)
    assert "n_counts" not in b.obs  # per-cell measurements of the real cell do not carry over
    anchors = a.obs.loc[b.obs["synthetic_anchor"], "celltype"].to_numpy()
    assert np.array_equal(b.obs["celltype"].to_numpy(), anchors)
    assert b.uns["synthetic"]["counts"] is True  # whole numbers detected
    assert np.all(b.X.data == np.rint(b.X.data))


def test_pbmc3k_to_100k_cells():
    import anndata as ad

    a = ad.read_h5ad(shared_file("pbmc3k_seurat250.h5ad"))
    b = synthesize_adata(a, 100_000, seed=0)
    assert b.shape == (100_000, 250) and sp.issparse(b.X)
    assert b.uns["synthetic"]["counts"] is False  # log-normalised values are not rounded
    assert b.X.data.nbytes < 100 * 1024**2
    assert set(b.obs["celltype"].unique()) <= set(a.obs["celltype"].unique())


def test_pbmc3k_synthetic_graph_holds_together():
    import anndata as ad

    a = ad.read_h5ad(shared_file("pbmc3k_seurat250.h5ad"))
    b = synthesize_adata(a, 10_000, seed=0)
    s = G.build_graph(b.X, params.from_dict(G.GraphSpec, {"k": 5})).stats()
    assert s["largest_component_fraction"] > 0.95 and s["n_components"] < 30
    rng = np.random.default_rng(0)
    X = a.X.toarray()
    tiled = np.maximum(np.tile(X, (3, 1)) + rng.normal(scale=0.01, size=(3 * X.shape[0], X.shape[1])), 0)
    t = G.build_graph(tiled.astype(np.float32), params.from_dict(G.GraphSpec, {"k": 5})).stats()
    assert t["largest_component_fraction"] < 0.8 and t["n_components"] > s["n_components"]
