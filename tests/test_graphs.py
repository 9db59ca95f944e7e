"""Cell graphs: neighbour search against brute force, symmetrisation, kernels, edge lists, guards."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_file

from scgraph_core import graphs as G
from scgraph_core import params
from scgraph_core.errors import ConfigError, GraphError, MemoryGuardError


def spec(**kw) -> G.GraphSpec:
    return params.from_dict(G.GraphSpec, kw)


def brute_neighbours(X: np.ndarray, k: int, metric: str) -> np.ndarray:
    X = X.astype(np.float64)
    if metric == "euclidean":
        D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    elif metric == "manhattan":
        D = np.abs(X[:, None, :] - X[None, :, :]).sum(-1)
    else:
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        D = 1.0 - U @ U.T
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :k]


def out_neighbours(g: G.Graph) -> list[set[int]]:
    src, dst = g.edge_index
    out = [set() for _ in range(g.n_nodes)]
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        out[s].add(d)
    return out


def edge_set(g: G.Graph) -> set[tuple[int, int]]:
    return set(zip(*g.edge_index.tolist(), strict=True))


@pytest.fixture
def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(4, 8))
    return (centres[rng.integers(0, 4, 240)] + rng.normal(size=(240, 8))).astype(np.float32)


# ---- the specification ------------------------------------------------------------------------
def test_spec_defaults_and_round_trip():
    s = spec()
    assert (s.kind, s.k, s.metric, s.symmetrize, s.backend) == ("knn", 5, "euclidean", "union", "auto")
    assert params.from_dict(G.GraphSpec, params.to_dict(s)) == s


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"kind": "edgelist"}, "edge_file"),
        ({"kind": "knn", "edge_file": "e.csv"}, "only read when kind = edgelist"),
        ({"kind": "pknn", "metric": "cosine"}, "metric"),
        ({"kind": "linear", "cutoff_std": 1.0}, "cutoff_std"),
        ({"kind": "knn", "max_degree": 10}, "max_degree"),
        ({"kind": "linear", "percentile": 100}, "below 100"),
        ({"kind": "linear", "backend": "approx"}, "no neighbour search"),
        ({"k": 0}, "at least 1"),
        ({"metric": "jaccard"}, "must be one of"),
    ],
)
def test_spec_rejects_bad_combinations(values, words):
    with pytest.raises(ConfigError, match=words):
        spec(**values)


# ---- kNN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan"])
@pytest.mark.parametrize("use_faiss", [True, False])
def test_knn_matches_brute_force(blobs, metric, use_faiss, monkeypatch):
    if use_faiss and not G.HAVE_FAISS:
        pytest.skip("faiss is not installed")
    monkeypatch.setattr(G, "HAVE_FAISS", use_faiss)
    k = 6
    g = G.build_graph(blobs, spec(k=k, metric=metric, symmetrize="none", backend="exact"))
    assert g.info["backend"] == ("faiss-flat" if use_faiss else "torch-blockwise")
    assert g.edge_index.dtype == np.int64 and g.edge_index.shape == (2, blobs.shape[0] * k)
    src = g.edge_index[0]
    assert np.array_equal(np.bincount(src, minlength=g.n_nodes), np.full(g.n_nodes, k))
    assert not np.any(g.edge_index[0] == g.edge_index[1])
    expected = brute_neighbours(blobs, k, metric)
    assert out_neighbours(g) == [set(row.tolist()) for row in expected]
    # Sorted by (source, target), weights 1, distances recorded per edge.
    key = g.edge_index[0] * g.n_nodes + g.edge_index[1]
    assert np.all(np.diff(key) > 0)
    assert g.weight.dtype == np.float32 and np.all(g.weight == 1)
    i, j = g.edge_index[:, 0]
    if metric == "euclidean":
        assert g.distance[0] == pytest.approx(np.linalg.norm(blobs[i] - blobs[j]), rel=1e-5)


def test_knn_with_duplicated_cells_has_no_self_edges():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    X[:12] = X[0]  # 12 identical cells: more copies than k + 1
    g = G.build_graph(X, spec(k=4, symmetrize="none"))
    assert not np.any(g.edge_index[0] == g.edge_index[1])
    assert np.array_equal(np.bincount(g.edge_index[0], minlength=60), np.full(60, 4))
    for i, nbrs in enumerate(out_neighbours(g)[:12]):
        assert nbrs <= set(range(12)) - {i}


def test_union_and_mutual_symmetrisation(blobs):
    directed = edge_set(G.build_graph(blobs, spec(k=5, symmetrize="none")))
    union = G.build_graph(blobs, spec(k=5, symmetrize="union"))
    mutual = G.build_graph(blobs, spec(k=5, symmetrize="mutual"))
    reverse = {(j, i) for i, j in directed}
    assert edge_set(union) == directed | reverse
    assert edge_set(mutual) == directed & reverse
    assert union.stats()["is_symmetric"] and mutual.stats()["is_symmetric"]
    assert union.stats()["min_degree"] >= 5
    assert union.stats()["n_undirected_edges"] == len(directed | reverse) // 2


def test_self_loops_option(blobs):
    g = G.build_graph(blobs, spec(k=3, self_loops=True))
    loops = g.edge_index[0] == g.edge_index[1]
    assert loops.sum() == blobs.shape[0]
    assert g.stats()["n_self_loops"] == blobs.shape[0]


def test_pknn_picks_scaled_and_shifted_copies():
    rng = np.random.default_rng(7)
    bases = rng.normal(size=(4, 30))
    cells, family = [], []
    for f, b in enumerate(bases):
        for scale, shift in ((1.0, 0.0), (10.0, 50.0), (0.2, -3.0)):
            cells.append(scale * b + shift)
            family.append(f)
    X = np.array(cells, dtype=np.float32)
    family = np.array(family)
    g = G.build_graph(X, spec(kind="pknn", k=2, symmetrize="none"))
    for i, nbrs in enumerate(out_neighbours(g)):
        assert nbrs == set(np.flatnonzero(family == family[i]).tolist()) - {i}
    assert np.allclose(g.distance, 0.0, atol=1e-5)  # Pearson distance 1 - r of perfect copies
    # Euclidean kNN does not see them as neighbours: the scaled copies are far away.
    e = out_neighbours(G.build_graph(X, spec(kind="knn", k=2, symmetrize="none")))
    assert any(nbrs != set(np.flatnonzero(family == family[i]).tolist()) - {i} for i, nbrs in enumerate(e))


def test_pknn_constant_cell_is_reported_not_fatal(blobs):
    X = blobs.copy()
    X[5] = 2.0
    g = G.build_graph(X, spec(kind="pknn", k=3))
    assert g.info["n_zero_rows"] == 1 and g.info["deviations"]
    assert g.stats()["n_isolated"] == 0


def test_cutoff_std_removes_long_edges():
    rng = np.random.default_rng(5)
    X = rng.normal(scale=0.1, size=(100, 3)).astype(np.float32)
    X[:4] += 40.0  # a far, small group: the k=5 lists of its cells reach back to the main group
    full = G.build_graph(X, spec(k=5, symmetrize="none"))
    cut = G.build_graph(X, spec(k=5, symmetrize="none", cutoff_std=1.0))
    limit = cut.info["cutoff"]["distance"]
    d = full.distance
    assert limit == pytest.approx(d.mean() + d.std(), rel=1e-5)
    assert cut.info["cutoff"]["n_pruned"] == int((d > limit).sum()) > 0
    assert cut.distance.max() <= limit
    assert full.distance.max() > 30 and cut.distance.max() < 1.0


def test_approx_backend_recall():
    rng = np.random.default_rng(11)
    centres = rng.normal(scale=4.0, size=(10, 16))
    X = (centres[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    k = 10
    exact, _, _ = G.nearest_neighbors(X, k, backend="exact")
    approx, _, info = G.nearest_neighbors(X, k, backend="approx", seed=0)
    recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.9, (recall, info)
    assert not np.any(approx == np.arange(3000)[:, None])
    g = G.build_graph(X, spec(k=5, backend="auto", approx_above=2000))
    assert g.info["backend"] in ("faiss-hnsw", "pynndescent")
    again = G.build_graph(X, spec(k=5, backend="auto", approx_above=2000))
    assert np.array_equal(g.edge_index, again.edge_index)  # seeded: same graph twice


def test_gaussian_weights_formula_and_scanpy():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 6)).astype(np.float32)
    k = 7
    directed = G.build_graph(X, spec(kind="gaussian", k=k, symmetrize="none"))
    nn = brute_neighbours(X, k, "euclidean")
    d2 = ((X[:, None, :].astype(np.float64) - X[nn].astype(np.float64)) ** 2).sum(-1)
    s2 = np.median(d2, axis=1)
    for (i, j), w in zip(directed.edge_index.T.tolist(), directed.weight.tolist(), strict=True):
        dij2 = ((X[i].astype(np.float64) - X[j]) ** 2).sum()
        den = s2[i] + s2[j]
        assert w == pytest.approx(np.sqrt(2 * np.sqrt(s2[i] * s2[j]) / den) * np.exp(-dij2 / den), rel=1e-4)
    g = G.build_graph(X, spec(kind="gaussian", k=k))
    W = g.to_csr()
    assert abs(W - W.T).max() == 0 and g.stats()["is_symmetric"]
    assert np.all(g.weight > 0) and np.all(g.weight <= 1)
    # Same as scanpy's 'gauss' connectivities (n_neighbors counts the cell itself there).
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X.copy())
    sc.pp.neighbors(a, n_neighbors=k + 1, method="gauss", knn=True, use_rep="X", transformer="sklearn")
    C = a.obsp["connectivities"]
    assert ((C > 0) != (W > 0)).nnz == 0
    assert abs(C - W).max() < 1e-5


def test_gaussian_with_duplicated_cells_keeps_weights_in_range():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    X[:8] = X[0]
    g = G.build_graph(X, spec(kind="gaussian", k=3))
    assert np.all(np.isfinite(g.weight)) and np.all(g.weight > 0) and np.all(g.weight <= 1)
    assert g.info["gaussian"]["n_sigma_floored"] >= 8


# ---- linear kernel -----------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["continuous", "ties"])
@pytest.mark.parametrize("q", [85.0, 50.0, 97.3])
def test_blockwise_percentile_is_exact(data, q):
    rng = np.random.default_rng(4)
    if data == "continuous":
        X = rng.normal(size=(90, 7))
    else:  # small counts: S has many repeated values (including a mass of zeros)
        X = rng.poisson(0.3, size=(90, 7)).astype(np.float64)
    S = X @ X.T
    top = float((X * X).sum(1).max()) * 1.001
    blocks = G._linear_blocks(X, 13)
    # Few bins and a tiny collection limit force several histogram passes.
    t, passes = G._blockwise_percentile(blocks, S.size, q, -top, top, bins=16, collect_max=50)
    assert passes >= 2
    assert t == pytest.approx(np.percentile(S, q), rel=1e-12, abs=1e-12)


def test_linear_kernel_edges_match_dense():
    rng = np.random.default_rng(8)
    X = np.abs(rng.normal(size=(120, 10))).astype(np.float32)
    g = G.build_graph(X, spec(kind="linear", percentile=85.0))
    S = X.astype(np.float64) @ X.astype(np.float64).T
    t = np.percentile(S, 85.0)
    assert g.info["linear"]["threshold"] == pytest.approx(t, rel=1e-12)
    expected = t < S
    np.fill_diagonal(expected, False)
    assert edge_set(g) == set(zip(*np.nonzero(expected), strict=True))
    assert np.all(g.weight == 1) and g.stats()["is_symmetric"]
    with_loops = G.build_graph(X, spec(kind="linear", percentile=85.0, self_loops=True))
    assert with_loops.stats()["n_self_loops"] == 120  # every cell, as for the other kinds
    capped = G.build_graph(X, spec(kind="linear", percentile=85.0, max_degree=3, symmetrize="none"))
    assert np.bincount(capped.edge_index[0], minlength=120).max() <= 3
    assert edge_set(capped) <= edge_set(g)


def test_linear_kernel_memory_guard_refuses_quickly():
    X = np.ones((200_000, 2), dtype=np.float32)
    t0 = time.perf_counter()
    with pytest.raises(MemoryGuardError, match=r"edges.*max_degree") as err:
        G.build_graph(X, spec(kind="linear"))
    assert time.perf_counter() - t0 < 2.0
    assert "6,000,000,000" in str(err.value) and "knn" in str(err.value)


# ---- edge lists --------------------------------------------------------------------------------
def test_edge_list_by_names_and_ids(tmp_path):
    names = ["cellA", "cellB", "cellC", "cellD"]
    X = np.zeros((4, 2), dtype=np.float32)
    f = tmp_path / "edges.csv"
    f.write_text("source,target\ncellA,cellB\ncellC,cellB\n\n# comment\ncellA,cellB\n")
    g = G.build_graph(X, spec(kind="edgelist", edge_file=str(f)), cell_names=names)
    assert edge_set(g) == {(0, 1), (1, 0), (2, 1), (1, 2)}
    assert g.info["identifiers"] == "names" and g.stats()["n_isolated"] == 1
    f2 = tmp_path / "edges.tsv"
    f2.write_text("0\t3\n1\t2\n")
    g2 = G.build_graph(X, spec(kind="edgelist", edge_file=str(f2), symmetrize="none"))
    assert edge_set(g2) == {(0, 3), (1, 2)} and g2.info["identifiers"] == "ids"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cellA,cellB\ncellA,cellZ\n", "line 2: 'cellZ' is not a cell name"),
        ("0,1\n2,9\n", "line 2: cell id 9 is out of range"),
        ("0,1\n\n3,3\n", "line 3: cell 3 is joined to itself"),
        ("a\tb\n0\n", "line 2: expected two columns"),
        ("source,target\n", "header but no edges"),
        ("cellQ,cellA\ncellA,cellB\n", "line 1: 'cellQ' is not a cell name"),
    ],
)
def test_edge_list_errors_name_the_line(tmp_path, text, words):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(GraphError, match=words):
        G.build_graph(
            np.zeros((4, 1)), spec(kind="edgelist", edge_file=str(f)), cell_names=["cellA", "cellB", "c", "d"]
        )


def test_edge_list_missing_file(tmp_path):
    with pytest.raises(GraphError, match="does not exist"):
        G.build_graph(np.zeros((4, 1)), spec(kind="edgelist", edge_file=str(tmp_path / "nope.csv")))


# ---- input checks and outputs -------------------------------------------------------------------
def test_input_errors():
    with pytest.raises(GraphError, match=r"at least k\+1 = 6 cells"):
        G.build_graph(np.zeros((5, 3)), spec(k=5))
    X = np.ones((20, 3))
    X[4, 1] = np.nan
    with pytest.raises(GraphError, match=r"NaN.*cell 4"):
        G.build_graph(X, spec(k=3))
    with pytest.raises(GraphError, match="cells x dimensions"):
        G.build_graph(np.zeros(10), spec(k=3))


def test_sparse_input_and_outputs(blobs):
    shifted = blobs - blobs.min()
    g_dense = G.build_graph(shifted, spec(k=4))
    g_sparse = G.build_graph(sp.csr_matrix(shifted), spec(k=4))
    assert np.array_equal(g_dense.edge_index, g_sparse.edge_index)
    A = g_dense.to_csr()
    assert isinstance(A, sp.csr_matrix) and A.shape == (240, 240) and A.nnz == g_dense.n_edges
    ei, w = g_dense.to_torch()
    import torch

    assert ei.dtype == torch.long and tuple(ei.shape) == (2, g_dense.n_edges)
    assert w.dtype == torch.float32 and w.shape[0] == g_dense.n_edges


def test_stats_two_cliques():
    edges = [(i, j) for block in (range(0, 4), range(4, 9)) for i in block for j in block if i != j]
    src, dst = np.array(edges).T
    g = G.Graph(edge_index=np.vstack([src, dst]), weight=None, n_nodes=10, spec=spec())
    s = g.stats()
    assert s["n_components"] == 3  # two cliques and one isolated cell
    assert s["n_isolated"] == 1
    assert s["largest_component_fraction"] == pytest.approx(0.5)
    assert s["n_undirected_edges"] == 6 + 10 and s["n_edges"] == 32
    assert (s["min_degree"], s["max_degree"]) == (0, 4)
    assert s["is_symmetric"]
    directed = G.Graph(edge_index=np.array([[0, 1], [1, 2]]), weight=None, n_nodes=3, spec=spec())
    assert not directed.stats()["is_symmetric"] and directed.stats()["n_components"] == 1


def test_graph_matrix_picks_and_pca():
    class Prepared:
        graph_input = np.random.default_rng(0).poisson(2.0, size=(80, 30)).astype(np.float32)
        features = np.random.default_rng(1).random((80, 12)).astype(np.float32)

    p = Prepared()
    assert graph_matrix_shape(p, "graph_genes") == (80, 30)
    assert graph_matrix_shape(p, "features") == (80, 12)
    pcs = G.graph_matrix(p, spec(use="pca", n_pcs=10))
    assert pcs.shape == (80, 10) and pcs.dtype == np.float32
    assert np.array_equal(pcs, G.graph_matrix(p, spec(use="pca", n_pcs=10)))  # seeded
    assert G.graph_matrix(p, spec(use="pca", n_pcs=500)).shape == (80, 29)  # capped at min(n, d) - 1


def graph_matrix_shape(p, use: str) -> tuple[int, int]:
    return G.graph_matrix(p, spec(use=use)).shape


# ---- scanpy and real data ----------------------------------------------------------------------
@pytest.mark.slow
def _blobs_5000() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(5, 10))
    return (centres[rng.integers(0, 5, 5000)] + rng.normal(size=(5000, 10))).astype(np.float32)


@pytest.mark.slow
def test_leiden_above_the_exact_limit_without_faiss_goes_through_scanpy_and_pynndescent(monkeypatch):
    """Guards the pinned scanpy/scipy pair: scanpy 1.11.5 with scipy 1.17 fails ('csr_array' object has no
    attribute 'getnnz') whenever pynndescent's transformer gives scanpy the neighbours, which is Leiden's
    path above the exact-search limit without faiss. The limit is lowered so that 5,000 cells take it."""
    from scgraph_core.cluster import partition
    from scgraph_core.numba_cache import import_umap

    import_umap()  # as leiden does first: pynndescent's compiled code then comes from numba's disk cache
    from pynndescent import PyNNDescentTransformer

    monkeypatch.setattr(partition, "EXACT_KNN_MAX_CELLS", 4000)
    monkeypatch.setattr(G, "HAVE_FAISS", False)
    fitted = []
    fit = PyNNDescentTransformer.fit
    monkeypatch.setattr(
        PyNNDescentTransformer, "fit", lambda self, *a, **k: fitted.append(k) or fit(self, *a, **k)
    )
    X = _blobs_5000()
    C = partition._knn_connectivities(X, 15, seed=0)
    assert fitted == [{"compress_index": False}]  # pynndescent, and no search index prepared
    assert C.shape == (5000, 5000) and C.nnz >= 5000 * 14
    assert abs(C - C.T).max() < 1e-6  # UMAP's fuzzy union is symmetric


def test_leiden_above_the_exact_limit_with_faiss_uses_the_shared_search(monkeypatch):
    """Above the limit the euclidean neighbours come from the search the layouts share (no pynndescent)."""
    from scgraph_core.cluster import layout, partition

    if not G.HAVE_FAISS:
        pytest.skip("faiss-cpu is not installed (pip install -r requirements.txt)")
    monkeypatch.setattr(partition, "EXACT_KNN_MAX_CELLS", 4000)
    monkeypatch.setattr(layout, "EXACT_KNN_MAX_CELLS", 4000)
    monkeypatch.setattr(partition, "_graph_only_nndescent", lambda **k: pytest.fail("pynndescent was used"))
    X = _blobs_5000()
    C = partition._knn_connectivities(X, 15, seed=0)
    assert C.shape == (5000, 5000) and C.nnz >= 5000 * 14
    exact = partition._knn_connectivities(X[:4000], 15, seed=0)  # at the limit: scanpy's exact search
    big = partition.leiden(X, resolution=0.3, seed=0)
    small = partition.leiden(X[:4000], resolution=0.3, seed=0)
    assert exact.nnz >= 4000 * 14
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(big[:4000], small) > 0.95


def test_pbmc3k_knn_graph():
    import anndata as ad

    a = ad.read_h5ad(shared_file("pbmc3k_seurat250.h5ad"))
    g = G.build_graph(a.X, spec(k=5), cell_names=list(a.obs_names))
    s = g.stats()
    print("pbmc3k kNN k=5 union:", s, g.info)
    assert s["n_nodes"] == 2638 and s["min_degree"] >= 5 and s["is_symmetric"]
    assert s["n_isolated"] == 0 and s["largest_component_fraction"] > 0.9


@pytest.mark.slow
def test_pynndescent_fallback_recall(monkeypatch):
    """Without faiss the approximate backend is pynndescent (its numba JIT takes ~30 s per process)."""
    monkeypatch.setattr(G, "HAVE_FAISS", False)
    rng = np.random.default_rng(12)
    centres = rng.normal(scale=4.0, size=(10, 16))
    X = (centres[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    exact, _, _ = G.nearest_neighbors(X, 5, backend="exact")
    approx, _, info = G.nearest_neighbors(X, 5, backend="approx", seed=0)
    assert info["backend"] == "pynndescent"
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.9 and not np.any(approx == np.arange(3000)[:, None])


def test_k_grows_with_the_square_root_of_the_cells_above_the_reference(blobs):
    # 240 cells; k grows only above k_reference_cells cells, as k * sqrt(cells / reference), up to k_max
    assert G.k_for(spec(k=4), 240) == 4
    assert G.k_for(spec(k=4, k_reference_cells=240), 240) == 4
    assert G.k_for(spec(k=4, k_reference_cells=60), 240) == 8
    assert G.k_for(spec(k=10, k_reference_cells=10_000), 100_000) == 32
    assert G.k_for(spec(k=10, k_reference_cells=10_000, k_max=20), 100_000) == 20
    g = G.build_graph(blobs, spec(k=4, k_reference_cells=60, symmetrize="none"))
    assert g.info["k"] == 8 and g.n_edges == 240 * 8
    assert any("k = 8 for 240 cells" in d for d in g.info["deviations"])
    plain = G.build_graph(blobs, spec(k=4, symmetrize="none"))
    assert plain.info["k"] == 4 and plain.n_edges == 240 * 4 and not plain.info["deviations"]
    with pytest.raises(ConfigError, match="k_reference_cells"):
        spec(kind="linear", k_reference_cells=100).check()
