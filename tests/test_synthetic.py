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


def _same_anchor_share(X_new, anchor: np.ndarray, *, log: bool = True, k: int = 10) -> float:
    """Share of each new cell's k nearest new cells (euclidean, on log1p values) from the same real cell."""
    dense = np.asarray(X_new.toarray() if sp.issparse(X_new) else X_new, dtype=np.float32)
    nn, _, _ = G.nearest_neighbors(np.log1p(dense) if log else dense, k, metric="euclidean", backend="exact")
    return float((anchor[nn] == anchor[:, None]).mean())


def test_resampled_counts_follow_the_plan_and_break_up_copies(real):
    X, _ = real
    n_new = 3000
    anchor, partner, lam = synthesis_plan(X, n_new, seed=6)
    smooth1, _ = synthesize(X, n_new, seed=6, counts=True, resample=True, smooth=1)
    assert smooth1.shape == (n_new, 20) and np.all(smooth1 == np.rint(smooth1)) and smooth1.min() >= 0
    # smooth = 1: each new cell is a Poisson draw around the plan's interpolated counts, at its depth.
    depth = X.sum(1)
    d_new = (1 - lam) * depth[anchor] + lam * depth[partner]
    per = X / depth[:, None]
    mean = d_new[:, None] * ((1 - lam)[:, None] * per[anchor] + lam[:, None] * per[partner])
    assert np.all(smooth1[mean == 0] == 0)
    z = (smooth1.sum(0) - mean.sum(0)) / np.sqrt(mean.sum(0))  # Poisson: variance = mean
    assert np.abs(z).max() < 5
    assert not np.allclose(smooth1, np.rint(mean))  # fresh noise, not the rounded mean
    # Interpolated copies of one real cell crowd each other's neighbourhoods; fresh counts much less.
    interp, _ = synthesize(X, n_new, seed=6, counts=True, noise=0.0)
    resampled, _ = synthesize(X, n_new, seed=6, counts=True, resample=True)
    assert _same_anchor_share(resampled, anchor) < 0.5 * _same_anchor_share(interp, anchor)
    # Sparse input gives the same cells.
    again, _ = synthesize(sp.csr_matrix(X), n_new, seed=6, counts=True, resample=True)
    assert sp.issparse(again) and np.array_equal(again.toarray(), resampled)


def test_resampling_log_normalised_values_keeps_their_scale(real):
    X, _ = real
    X = X.copy()
    X[:, 0] = 1  # every cell holds a single molecule somewhere, so its size factor can be read back
    depth = X.sum(1)
    logged = np.log1p(X * (1e4 / depth)[:, None]).astype(np.float32)
    new, _ = synthesize(logged, 2000, seed=7, resample=True)
    assert new.dtype == np.float32 and new.min() >= 0
    # Written the same way: log1p(c / d) with c whole molecules and d the depth between the two real cells.
    anchor, partner, lam = synthesis_plan(logged, 2000, seed=7)
    d_new = (1 - lam) * depth[anchor] / 1e4 + lam * depth[partner] / 1e4
    c = np.expm1(new.astype(np.float64)) * d_new[:, None]
    assert np.abs(c - np.rint(c)).max() < 0.02 and c.max() > 3
    # Same gene-wise level as the real cells (per 10,000 molecules).
    real_level = np.expm1(logged.astype(np.float64)).mean(0)
    new_level = np.expm1(new.astype(np.float64)).mean(0) * (
        1e4 / np.expm1(new.astype(np.float64)).sum(1).mean()
    )
    assert np.corrcoef(real_level, new_level)[0, 1] > 0.95
    # Values that are not log1p(counts x factor) are refused with what to do instead.
    with pytest.raises(DataError, match="raw counts"):
        synthesize(logged * 0.37, 10, resample=True)
    # Raw counts given as log values (counts=False, the default) are told to pass counts=True.
    with pytest.raises(DataError, match="pass counts=True"):
        synthesize(X, 10, resample=True)
    with pytest.raises(DataError, match="smooth"):
        synthesize(X, 10, counts=True, resample=True, smooth=0)


def test_pbmc3k_resampled_cells_are_not_clouds_of_copies():
    import anndata as ad

    a = ad.read_h5ad(shared_file("pbmc3k_seurat250.h5ad"))
    interp = synthesize_adata(a, 8000, seed=0)
    fresh = synthesize_adata(a, 8000, seed=0, resample=True)
    assert fresh.uns["synthetic"]["resample"] is True and fresh.uns["synthetic"]["smooth"] == 5
    anchor = fresh.obs["synthetic_anchor"].to_numpy()
    assert np.array_equal(anchor, interp.obs["synthetic_anchor"].to_numpy())  # one plan
    share_fresh = _same_anchor_share(fresh.X, anchor, log=False)
    assert share_fresh < 0.05 < _same_anchor_share(interp.X, anchor, log=False)
