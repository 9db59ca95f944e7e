"""Cell graphs: which cells are joined to which, and how strongly.

A :class:`GraphSpec` (declared once with :func:`~scgraph_core.params.param`) says how the graph is built;
:func:`build_graph` turns a cells x genes (or cells x PCs) matrix into a :class:`Graph` holding a
PyTorch-Geometric-style ``edge_index`` (row 0 = source, row 1 = target) and one weight per edge.

Constructions (MODELS.md 1.2, 3.2, 4.2, 5.2, 6.1):

* ``knn`` — each cell i gets an edge i -> j to each of its k nearest other cells j (euclidean, cosine or
  manhattan); weight 1.
* ``pknn`` — kNN on Pearson correlation: rows are centred and L2-normalised, then cosine kNN, so the
  N x N correlation matrix is never formed; weight 1, distance 1 - r.
* ``gaussian`` — scanpy's ``method='gauss', knn=True`` connectivities on the kNN pairs.
* ``linear`` — S = X Xᵀ thresholded at a global percentile of all N² values (scVGAE, paper era),
  computed block by block; binary weights.
* ``edgelist`` — edges read from a csv/tsv file of cell names or 0-based ids.

Exact neighbours come from a faiss flat index (or blockwise torch when faiss is missing); approximate
ones from a faiss HNSW index (pynndescent when faiss is missing). Every graph is deduplicated,
symmetrised (union by default) and sorted by (source, target); ``Graph.info`` records the backend
actually used, the time taken and everything that was pruned or changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError, GraphError, MemoryGuardError
from .params import param

try:  # faiss is optional: without it exact search is blockwise torch and approximate search pynndescent
    import faiss

    HAVE_FAISS = True
except ImportError:  # pragma: no cover - exercised only where faiss-cpu is not installed
    faiss = None
    HAVE_FAISS = False

KINDS = ("knn", "pknn", "gaussian", "linear", "edgelist")
METRICS = ("euclidean", "cosine", "manhattan")

#: Most edges any construction may emit (directed count); the linear kernel is refused above it.
MAX_EDGES = 50_000_000
#: Largest dense copy of the input matrix that may be made from a sparse one (bytes).
MAX_DENSE_BYTES = 4 * 1024**3
#: Size of one block of a blockwise N x N computation (bytes).
BLOCK_BYTES = 128 * 1024**2

# HNSW settings chosen on pbmc3k-derived cells (benchmarks/bench_graphs.py): recall@5 about 0.98.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH_MIN = 48


# ---------------------------------------------------------------------------------------------
# The specification
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphSpec:
    """How the cell graph is built. See the module docstring for the constructions."""

    kind: str = param(
        "knn",
        "How cells are joined: k nearest neighbours, Pearson kNN, Gaussian kernel on the kNN, "
        "linear kernel (top percentile of X Xᵀ) or an edge-list file",
        choices=KINDS,
        label="graph type",
    )
    k: int = param(5, "Neighbours per cell (knn, pknn, gaussian)", min=1, label="neighbours (k)")
    k_reference_cells: int | None = param(
        None,
        "Above this many cells k grows with the square root of the cell count, k x sqrt(cells / this), up to "
        "k_max: a neighbour count is a number of cells, and denser data needs more of them to reach as far "
        "(empty = k as set at any size)",
        min=2,
        advanced=True,
        label="k grows above (cells)",
    )
    k_max: int = param(50, "The most neighbours k_reference_cells lets k grow to", min=1, advanced=True)
    metric: str = param("euclidean", "Distance between cells for knn and gaussian", choices=METRICS)
    use: str = param(
        "graph_genes",
        "Matrix the graph is built on: the graph genes (log values), the model features, or PCs "
        "of the graph genes",
        choices=("graph_genes", "features", "pca"),
        label="built on",
    )
    n_pcs: int = param(50, "Principal components when use = pca", min=1, label="PCs", advanced=True)
    symmetrize: str = param(
        "union",
        "union keeps i-j if either cell lists the other; mutual only if both do; none keeps directions",
        choices=("union", "mutual", "none"),
        advanced=True,
    )
    self_loops: bool = param(False, "Join every cell to itself", advanced=True)
    cutoff_std: float | None = param(
        None,
        "Drop kNN edges longer than mean + cutoff_std x std of all kNN edge lengths (empty = keep all)",
        label="distance cutoff (std)",
        advanced=True,
    )
    percentile: float = param(
        85.0,
        "Linear kernel: keep cell pairs whose x_i·x_j is above this percentile of all N² values",
        min=0.0,
        max=100.0,
        advanced=True,
    )
    max_degree: int | None = param(
        None,
        "Linear kernel: keep at most this many partners per cell, the most similar (empty = no cap)",
        min=1,
        advanced=True,
    )
    backend: str = param(
        "auto",
        "Neighbour search: exact, approximate (HNSW), or auto (approximate from approx_above cells on)",
        choices=("auto", "exact", "approx"),
        advanced=True,
    )
    approx_above: int = param(
        50000, "auto uses approximate search at or above this many cells", min=1, advanced=True
    )
    edge_file: str | None = param(
        None,
        "Edge list (csv/tsv, two columns of cell names or 0-based ids) for kind = edgelist",
        label="edge file",
    )
    seed: int = param(
        0,
        "Seed for PCA and the approximate index (a run's --seed is the training seed)",
        min=0,
        advanced=True,
        label="graph seed",
    )

    def check(self) -> None:
        """Reject combinations of settings that cannot mean what the user wants."""
        if self.kind == "edgelist" and not self.edge_file:
            raise ConfigError("kind = edgelist needs edge_file: the path of a csv/tsv file with two columns.")
        if self.kind != "edgelist" and self.edge_file:
            raise ConfigError(
                f"edge_file is only read when kind = edgelist (kind is {self.kind}); "
                "set kind = edgelist or clear edge_file."
            )
        if self.metric != "euclidean" and self.kind not in ("knn", "gaussian"):
            raise ConfigError(
                f"metric = {self.metric} applies to kind = knn or gaussian only; "
                f"kind = {self.kind} has its own similarity. Leave metric at euclidean."
            )
        if self.cutoff_std is not None and self.kind not in ("knn", "pknn", "gaussian"):
            raise ConfigError(
                f"cutoff_std prunes kNN edges; kind = {self.kind} has none. Clear cutoff_std or use kind = knn."
            )
        if self.max_degree is not None and self.kind != "linear":
            raise ConfigError(
                f"max_degree caps the linear kernel; with kind = {self.kind} set k instead and clear max_degree."
            )
        if self.kind == "linear" and self.percentile >= 100.0:
            raise ConfigError("percentile must be below 100: at 100 the linear kernel keeps no cell pairs.")
        if self.k_reference_cells is not None and self.kind not in ("knn", "pknn", "gaussian"):
            raise ConfigError(
                f"k_reference_cells scales k; kind = {self.kind} has no k. Clear k_reference_cells."
            )
        if self.backend == "approx" and self.kind in ("linear", "edgelist"):
            raise ConfigError(f"kind = {self.kind} has no neighbour search; set backend = auto or exact.")


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------
@dataclass
class Graph:
    """A cell graph.

    ``edge_index``: int64 (2, E), row 0 = source, row 1 = target, sorted by (source, target), no duplicates.
    ``weight``: float32 (E,) (1 for unweighted constructions). ``distance``: float32 (E,), the distance
    behind each kNN edge (None for kernels without one). ``info``: backend used, seconds, pruning, deviations.
    """

    edge_index: np.ndarray
    weight: np.ndarray | None
    n_nodes: int
    spec: GraphSpec
    info: dict[str, Any] = field(default_factory=dict)
    distance: np.ndarray | None = None

    def __post_init__(self) -> None:
        ei = np.ascontiguousarray(self.edge_index, dtype=np.int64)
        if ei.size == 0:
            ei = ei.reshape(2, 0)
        if ei.ndim != 2 or ei.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E); got {ei.shape}")
        self.edge_index = ei
        if self.weight is not None:
            self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to_csr(self) -> sp.csr_matrix:
        """Adjacency A[source, target] = weight (1 where there are no weights)."""
        w = self.weight if self.weight is not None else np.ones(self.n_edges, dtype=np.float32)
        src, dst = self.edge_index
        return sp.csr_matrix((w, (src, dst)), shape=(self.n_nodes, self.n_nodes))

    def to_torch(self) -> tuple[Any, Any]:
        """(edge_index LongTensor (2, E), weight FloatTensor (E,) or None), on the CPU."""
        import torch

        ei = torch.from_numpy(self.edge_index.copy())
        w = None if self.weight is None else torch.from_numpy(self.weight.copy())
        return ei, w

    def stats(self) -> dict[str, Any]:
        """Size and shape of the graph.

        Degrees count the distinct other cells a cell is joined to, ignoring direction and self-loops;
        components are those of that undirected graph. ``n_edges`` is the stored (directed) count.
        """
        from scipy.sparse.csgraph import connected_components

        n = self.n_nodes
        src, dst = self.edge_index
        loops = src == dst
        s, d = src[~loops], dst[~loops]
        ones = np.ones(s.size, dtype=np.int8)
        A = sp.csr_matrix((ones, (s, d)), shape=(n, n))
        U = ((A + A.T) > 0).tocsr()
        deg = np.diff(U.indptr)
        n_comp, labels = connected_components(U, directed=False)
        largest = np.bincount(labels).max() if n else 0
        return {
            "n_nodes": int(n),
            "n_edges": self.n_edges,
            "n_undirected_edges": int(U.nnz // 2),
            "n_self_loops": int(loops.sum()),
            "mean_degree": float(deg.mean()) if n else 0.0,
            "median_degree": float(np.median(deg)) if n else 0.0,
            "min_degree": int(deg.min()) if n else 0,
            "max_degree": int(deg.max()) if n else 0,
            "n_isolated": int((deg == 0).sum()),
            "n_components": int(n_comp),
            "largest_component_fraction": float(largest / n) if n else 0.0,
            "is_symmetric": self._is_symmetric(),
        }

    def _is_symmetric(self) -> bool:
        n = self.n_nodes
        src, dst = self.edge_index
        key = src * n + dst
        rev = dst * n + src
        order = np.argsort(key, kind="stable")
        pos = np.searchsorted(key[order], rev)
        pos = np.minimum(pos, max(key.size - 1, 0))
        if key.size == 0:
            return True
        if not np.array_equal(key[order][pos], rev):
            return False
        if self.weight is None:
            return True
        return bool(np.array_equal(self.weight[order][pos], self.weight))


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def graph_matrix(prepared: Any, spec: GraphSpec) -> np.ndarray:
    """The cells x dims matrix the graph is built on, picked from prepared data by ``spec.use``.

    ``graph_genes``: ``prepared.graph_input`` (log values of the graph genes, unscaled);
    ``features``: ``prepared.features`` (the model's scaled features); ``pca``: the first
    ``n_pcs`` principal components of ``graph_input`` (seeded randomized SVD on centred data,
    capped at min(cells, genes) - 1).
    """
    name = "features" if spec.use == "features" else "graph_input"
    M = getattr(prepared, name, None)
    if M is None:
        raise GraphError(
            f"The prepared data has no {name} matrix; run the prepare step before building the graph."
        )
    if sp.issparse(M):
        M = M.toarray()
    M = np.asarray(M, dtype=np.float32)
    if spec.use != "pca":
        return M
    n, d = M.shape
    n_pcs = min(spec.n_pcs, min(n, d) - 1)
    if n_pcs < 1:
        raise GraphError(
            f"PCA needs at least 2 cells and 2 genes; the graph input is {n} x {d}. Use use = graph_genes."
        )
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_pcs, svd_solver="randomized", random_state=spec.seed)
    return np.ascontiguousarray(pca.fit_transform(M), dtype=np.float32)


def _as_dense(X: Any, what: str = "The graph input") -> np.ndarray:
    """X as a C-contiguous float32 array, refusing NaN/inf, empty input and oversized densification."""
    if sp.issparse(X):
        n, d = X.shape
        need = 4 * n * d
        if need > MAX_DENSE_BYTES:
            raise MemoryGuardError(
                f"{what} is sparse {n} x {d}; building the graph needs a dense copy of {need / 1024**3:.1f} GiB "
                f"(budget {MAX_DENSE_BYTES / 1024**3:.0f} GiB). Build the graph on PCs (use = pca) or fewer genes."
            )
        X = X.toarray()
    X = np.asarray(X)
    if X.ndim != 2:
        raise GraphError(f"{what} must be a cells x dimensions matrix; got an array of shape {X.shape}.")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise GraphError(f"{what} must hold numbers; got dtype {X.dtype}.")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.shape[1] == 0:
        raise GraphError(
            f"{what} has no columns (genes or PCs); select some genes before building the graph."
        )
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise GraphError(
            f"{what} holds {int(bad.sum())} NaN or infinite value(s), the first at cell {r}, column {c}. "
            "Fix or drop those cells (the data check lists them) before building the graph."
        )
    return X


# ---------------------------------------------------------------------------------------------
# Nearest neighbours
# ---------------------------------------------------------------------------------------------
def _normalise_rows(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (cosine similarity 0 to every cell)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    norms[zero] = 1.0
    return np.ascontiguousarray(X / norms, dtype=np.float32), int(zero.sum())


def _rows_per_block(n_cols: int, itemsize: int = 4) -> int:
    return max(1, min(BLOCK_BYTES // max(1, n_cols * itemsize), 1 << 16))


def _search_faiss_flat(X: np.ndarray, k1: int, metric: str) -> np.ndarray:
    d = X.shape[1]
    if metric == "euclidean":
        index = faiss.IndexFlatL2(d)
    elif metric == "cosine":  # rows are unit vectors: inner product = cosine similarity
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexFlat(d, faiss.METRIC_L1)
    index.add(X)
    _, idx = index.search(X, k1)
    return idx


def _search_faiss_hnsw(X: np.ndarray, k1: int, metric: str, seed: int) -> tuple[np.ndarray, dict]:
    d = X.shape[1]
    faiss_metric = {
        "euclidean": faiss.METRIC_L2,
        "cosine": faiss.METRIC_INNER_PRODUCT,
        "manhattan": faiss.METRIC_L1,
    }[metric]
    index = faiss.IndexHNSWFlat(d, HNSW_M, faiss_metric)
    index.hnsw.rng = faiss.RandomGenerator(seed)  # level assignment: same seed, same index
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(X)
    ef = max(HNSW_EF_SEARCH_MIN, 2 * k1)
    index.hnsw.efSearch = ef
    _, idx = index.search(X, k1)
    params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": ef}
    return idx, params


def _search_torch(X: np.ndarray, k1: int, metric: str) -> np.ndarray:
    """Exact search by blocks of query rows, so memory is one block x N."""
    import torch

    T = torch.from_numpy(X)
    sq = (T * T).sum(1) if metric == "euclidean" else None
    out = []
    step = _rows_per_block(X.shape[0])
    for a in range(0, X.shape[0], step):
        Q = T[a : a + step]
        if metric == "euclidean":
            D = sq[a : a + Q.shape[0], None] + sq[None, :] - 2.0 * (Q @ T.T)
            _, i = torch.topk(D, k1, dim=1, largest=False)
        elif metric == "cosine":
            _, i = torch.topk(Q @ T.T, k1, dim=1, largest=True)
        else:
            _, i = torch.topk(torch.cdist(Q, T, p=1), k1, dim=1, largest=False)
        out.append(i.numpy())
    return np.concatenate(out).astype(np.int64)


def _search_pynndescent(X: np.ndarray, k1: int, metric: str, seed: int) -> np.ndarray:
    from .numba_cache import import_umap

    import_umap()
    from pynndescent import NNDescent

    nnd_metric = {"euclidean": "euclidean", "cosine": "dot", "manhattan": "manhattan"}[metric]
    # NN-descent converges poorly with very short lists (recall@5 about 0.8 at k = 6): search 15, keep k1.
    index = NNDescent(X, metric=nnd_metric, n_neighbors=max(k1, 15), random_state=seed, low_memory=True)
    idx, _ = index.neighbor_graph
    return idx[:, :k1].astype(np.int64)


def _pair_distances(X: np.ndarray, rows: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances d(x_rows[r], x_idx[r, c]) for an (R, C) index array, in chunks of rows."""
    R, C = idx.shape
    out = np.empty((R, C), dtype=np.float32)
    step = max(1, (1 << 24) // max(1, C * X.shape[1]))
    for a in range(0, R, step):
        q = X[rows[a : a + step]][:, None, :]
        nb = X[idx[a : a + step]]
        if metric == "euclidean":
            diff = nb - q
            out[a : a + step] = np.sqrt(np.einsum("rcd,rcd->rc", diff, diff))
        elif metric == "cosine":  # rows are unit (or zero) vectors
            sim = np.einsum("rcd,rcd->rc", nb, np.broadcast_to(q, nb.shape))
            out[a : a + step] = np.clip(1.0 - sim, 0.0, 2.0)
        else:
            out[a : a + step] = np.abs(nb - q).sum(axis=2)
    return out


def _drop_self(idx: np.ndarray) -> np.ndarray:
    """From k+1 candidates per row keep k others: drop the row's own index, or the last candidate
    when the row itself is missing (duplicated cells can push it out of the list or off the front)."""
    n, k1 = idx.shape
    keep = idx != np.arange(n)[:, None]
    no_self = keep.all(axis=1)
    keep[no_self, k1 - 1] = False
    return idx[keep].reshape(n, k1 - 1)


def resolve_backend(spec_backend: str, n_cells: int, approx_above: int) -> str:
    """``exact`` or ``approx`` for a data set of ``n_cells``."""
    if spec_backend == "auto":
        return "approx" if n_cells >= approx_above else "exact"
    return spec_backend


def nearest_neighbors(
    X: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    backend: str = "exact",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The k nearest other cells of every cell.

    ``X`` is a dense float32 matrix, already L2-normalised for ``metric='cosine'`` (see
    :func:`build_graph`). Returns (indices int64 N x k, distances float32 N x k sorted ascending, info).
    Distances are recomputed exactly from X whatever the backend: euclidean ||x_i - x_j||₂,
    manhattan ||x_i - x_j||₁, cosine 1 - x_i·x_j.
    """
    n = X.shape[0]
    if n < k + 1:
        raise GraphError(
            f"A {k}-nearest-neighbour graph needs at least k+1 = {k + 1} cells; the data has {n}."
        )
    k1 = k + 1
    info: dict[str, Any] = {}
    if backend == "approx" and HAVE_FAISS:
        idx, params = _search_faiss_hnsw(X, k1, metric, seed)
        info.update(backend="faiss-hnsw", hnsw=params)
        missing = (idx < 0).any(axis=1)
        if missing.any():  # HNSW can return fewer than k1 hits: search those cells exactly
            idx[missing] = _exact_rows(X, np.flatnonzero(missing), k1, metric)
            info["rows_searched_exactly"] = int(missing.sum())
    elif backend == "approx":
        idx = _search_pynndescent(X, k1, metric, seed)
        info["backend"] = "pynndescent"
    elif HAVE_FAISS:
        idx = _search_faiss_flat(X, k1, metric)
        info["backend"] = "faiss-flat"
    else:
        idx = _search_torch(X, k1, metric)
        info["backend"] = "torch-blockwise"
    idx = _drop_self(np.asarray(idx, dtype=np.int64))
    dist = _pair_distances(X, np.arange(n), idx, metric)
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1), info


def _exact_rows(X: np.ndarray, rows: np.ndarray, k1: int, metric: str) -> np.ndarray:
    if HAVE_FAISS:
        d = X.shape[1]
        index = {
            "euclidean": lambda: faiss.IndexFlatL2(d),
            "cosine": lambda: faiss.IndexFlatIP(d),
            "manhattan": lambda: faiss.IndexFlat(d, faiss.METRIC_L1),
        }[metric]()
        index.add(X)
        return index.search(np.ascontiguousarray(X[rows]), k1)[1]
    return _search_torch(X, k1, metric)[rows]  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Edge bookkeeping
# ---------------------------------------------------------------------------------------------
def _dedupe(src: np.ndarray, dst: np.ndarray, vals: list[np.ndarray], n: int):
    """Sort by (source, target) and merge duplicates, keeping the largest of each value array."""
    key = src.astype(np.int64) * n + dst
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(first)
    merged = [np.maximum.reduceat(v[order], starts) if v.size else v for v in vals]
    ukey = key[starts]
    return ukey // n, ukey % n, merged


def _symmetrize(src, dst, vals, n: int, how: str):
    if how == "union":
        src, dst, vals = (
            np.concatenate([src, dst]),
            np.concatenate([dst, src]),
            [np.concatenate([v, v]) for v in vals],
        )
        return _dedupe(src, dst, vals, n)
    src, dst, vals = _dedupe(src, dst, vals, n)
    if how == "mutual":
        key = src * n + dst  # sorted and unique after _dedupe
        rev = dst * n + src
        pos = np.minimum(np.searchsorted(key, rev), max(key.size - 1, 0))
        keep = key[pos] == rev if key.size else np.zeros(0, dtype=bool)
        # Both directions of a mutual pair get the larger of their two values.
        vals = [np.maximum(v, v[pos])[keep] for v in vals]
        src, dst = src[keep], dst[keep]
    return src, dst, vals


def _finish(
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    spec: GraphSpec,
    *,
    weight: np.ndarray | None = None,
    distance: np.ndarray | None = None,
    loop_weight: float = 1.0,
    info: dict[str, Any],
) -> Graph:
    """Symmetrise, add or remove self-loops, deduplicate and sort; return the Graph."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    w = np.ones(src.size, dtype=np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
    vals = [w] if distance is None else [w, np.asarray(distance, dtype=np.float32)]
    loops = src == dst
    if loops.any():
        src, dst, vals = src[~loops], dst[~loops], [v[~loops] for v in vals]
    src, dst, vals = _symmetrize(src, dst, vals, n, spec.symmetrize)
    if spec.self_loops:
        ids = np.arange(n, dtype=np.int64)
        add = [np.full(n, loop_weight, dtype=np.float32)] + (
            [np.zeros(n, dtype=np.float32)] if distance is not None else []
        )
        src, dst, vals = _dedupe(
            np.concatenate([src, ids]),
            np.concatenate([dst, ids]),
            [np.concatenate(p) for p in zip(vals, add, strict=True)],
            n,
        )
    if src.size > MAX_EDGES:
        raise MemoryGuardError(
            f"The graph has {src.size:,} edges, above the {MAX_EDGES:,}-edge budget; use a smaller k or kind = knn."
        )
    info["n_edges"] = int(src.size)
    return Graph(
        edge_index=np.vstack([src, dst]),
        weight=vals[0],
        n_nodes=n,
        spec=spec,
        info=info,
        distance=vals[1] if distance is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Constructions
# ---------------------------------------------------------------------------------------------
def _knn_edges(X: np.ndarray, spec: GraphSpec, metric: str, info: dict[str, Any]):
    """Directed kNN edges i -> j (exactly k per cell) with their distances, after the cutoff."""
    n = X.shape[0]
    backend = resolve_backend(spec.backend, n, spec.approx_above)
    idx, dist, search_info = nearest_neighbors(X, spec.k, metric=metric, backend=backend, seed=spec.seed)
    info.update(search_info)
    src = np.repeat(np.arange(n, dtype=np.int64), spec.k)
    dst = idx.ravel()
    d = dist.ravel()
    if spec.cutoff_std is not None:
        # MODELS.md 1.7 pitfall 2, fixed: statistics of the edge *distances*, not of their indices.
        limit = float(d.mean() + spec.cutoff_std * d.std())
        keep = d <= limit
        info["cutoff"] = {
            "distance": limit,
            "n_pruned": int((~keep).sum()),
            "mean": float(d.mean()),
            "std": float(d.std()),
        }
        src, dst, d = src[keep], dst[keep], d[keep]
    return src, dst, d, dist


def _gaussian_weights(src: np.ndarray, dst: np.ndarray, d: np.ndarray, all_dist: np.ndarray, info: dict):
    """scanpy's Gaussian kernel on kNN pairs (``method='gauss', knn=True``; Haghverdi et al. 2016).

    W_ij = sqrt(2 σ_i σ_j / (σ_i² + σ_j²)) · exp(−d_ij² / (σ_i² + σ_j²)),
    σ_i² = median over the k neighbours of d_ij² (scanpy's rule for kNN distances). σ_i² = 0 (a cell
    whose neighbours are mostly exact copies) is raised to the smallest positive σ² of the data, and
    weights that underflow are raised to 1e-12, so that every kNN edge survives with a weight in (0, 1].
    """
    sig2 = np.median(all_dist.astype(np.float64) ** 2, axis=1)
    positive = sig2[sig2 > 0]
    floor = positive.min() if positive.size else 1.0
    n_floored = int((sig2 <= 0).sum())
    sig2 = np.where(sig2 > 0, sig2, floor)
    sig = np.sqrt(sig2)
    den = sig2[src] + sig2[dst]
    w = np.sqrt(2.0 * sig[src] * sig[dst] / den) * np.exp(-(d.astype(np.float64) ** 2) / den)
    tiny = w < 1e-12
    w = np.clip(w, 1e-12, 1.0)
    info["gaussian"] = {
        "sigma_rule": "sigma_i^2 = median of squared distances to the k neighbours",
        "n_sigma_floored": n_floored,
        "n_weights_floored": int(tiny.sum()),
    }
    return w.astype(np.float32)


def _linear_blocks(X64: np.ndarray, rows: int) -> Callable[[], Iterator[tuple[int, np.ndarray]]]:
    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, X64.shape[0], rows):
            yield a, X64[a : a + rows] @ X64.T

    return blocks


def _blockwise_percentile(
    blocks: Callable[[], Iterator[tuple[int, np.ndarray]]],
    n_values: int,
    q: float,
    lo: float,
    hi: float,
    *,
    bins: int = 65536,
    collect_max: int = 4_000_000,
) -> tuple[float, int]:
    """Exact ``np.percentile(values, q)`` (linear interpolation) of values streamed in blocks.

    With h = (M − 1)·q/100 and r = ⌊h⌋, the answer is v_(r) + (h − r)(v_(r+1) − v_(r)) where v_(i) is the
    i-th smallest of the M values. A closed bracket [lo, hi] known to hold v_(r) is narrowed by histogram
    passes (each pass recounts exactly how many values lie below lo, so the rank bookkeeping never
    drifts, and clamps the bracket to the smallest and largest value inside it) until it holds at most
    ``collect_max`` values or only a few distinct ones (ties); a last pass gathers those values with
    their multiplicities and reads off v_(r) and v_(r+1). Returns (threshold, passes).
    """
    h = (n_values - 1) * q / 100.0
    r = int(math.floor(h))
    frac = h - r
    passes = 0
    count_in = n_values
    while True:
        passes += 1
        if passes > 60:  # pragma: no cover - each pass shrinks the bracket thousands-fold
            raise RuntimeError("blockwise percentile did not converge")
        below = 0
        above_min = np.inf
        spacing = float(np.spacing(max(abs(lo), abs(hi))))
        if count_in <= collect_max or hi - lo <= 8 * spacing:
            uniq, counts = [], []
            for _, S in blocks():
                v = S.ravel()
                below += int(np.count_nonzero(v < lo))
                u, c = np.unique(v[(v >= lo) & (v <= hi)], return_counts=True)
                uniq.append(u)
                counts.append(c)
                above_min = min(above_min, float(np.min(v, where=v > hi, initial=np.inf)))
            u = np.concatenate(uniq)
            order = np.argsort(u, kind="stable")
            u, cum = u[order], np.cumsum(np.concatenate(counts)[order])
            i = r - below
            if cum.size == 0 or not 0 <= i < cum[-1]:  # pragma: no cover - the bracket is exact
                raise RuntimeError("blockwise percentile lost its bracket")
            j = int(np.searchsorted(cum, i, side="right"))
            v_r = float(u[j])
            v_next = v_r if i + 1 < cum[j] else float(u[j + 1]) if j + 1 < u.size else above_min
            return (v_r + frac * (v_next - v_r) if frac > 0 else v_r), passes
        nb = int(min(bins, (hi - lo) / (2 * spacing)))
        hist = np.zeros(nb, dtype=np.int64)
        vmin, vmax = np.inf, -np.inf
        for _, S in blocks():
            v = S.ravel()
            below += int(np.count_nonzero(v < lo))
            hist += np.histogram(v, bins=nb, range=(lo, hi))[0]
            vmin = min(vmin, float(np.min(v, where=v >= lo, initial=np.inf)))
            vmax = max(vmax, float(np.max(v, where=v <= hi, initial=-np.inf)))
        if vmin > vmax:  # pragma: no cover - the bracket is exact
            raise RuntimeError("blockwise percentile lost its bracket")
        edges = np.linspace(lo, hi, nb + 1)
        b = int(np.searchsorted(np.cumsum(hist), r - below, side="right"))
        lo, hi = max(float(edges[b]), vmin), min(float(edges[b + 1]), vmax)
        count_in = int(hist[b])


def _linear_edges(X: np.ndarray, spec: GraphSpec, info: dict[str, Any], block_rows: int | None = None):
    """Binary linear-kernel edges: pairs (i, j) with x_i·x_j above the ``percentile`` of all N² values.

    Refuses (MemoryGuardError) before any allocation when about (1 − p/100)·N² edges would exceed
    ``MAX_EDGES``. The diagonal x_i·x_i counts towards the percentile (it is one of the N² values) but is
    never an edge here; ``self_loops`` adds a loop to every cell as for the other kinds. With
    ``max_degree`` each cell keeps only its most similar partners above the threshold (before
    symmetrisation, so a union graph can exceed the cap for cells chosen by many others).
    """
    n = X.shape[0]
    keep_frac = 1.0 - spec.percentile / 100.0
    expected = keep_frac * float(n) * float(n)
    if spec.max_degree is not None:
        expected = min(expected, float(n) * spec.max_degree * 2)
    if expected > MAX_EDGES:
        raise MemoryGuardError(
            f"The linear kernel keeps the top {100 - spec.percentile:g}% of all {n:,}² cell pairs: about "
            f"{expected:,.0f} edges, above the {MAX_EDGES:,}-edge budget. Use kind = knn (k neighbours per "
            f"cell), set max_degree (for example 30) to cap each cell's partners, or raise percentile."
        )
    X64 = X.astype(np.float64)
    rows = block_rows or _rows_per_block(n, 8)
    blocks = _linear_blocks(X64, rows)
    # |x_i·x_j| <= max ||x||², widened a little for rounding; non-negative data gives S >= 0.
    top = float((X64 * X64).sum(1).max()) * (1 + 1e-6) + 1e-300
    bottom = 0.0 if X64.min() >= 0 else -top
    t, passes = _blockwise_percentile(blocks, n * n, spec.percentile, bottom, top)
    info["linear"] = {"threshold": t, "percentile": spec.percentile, "passes": passes + 1, "block_rows": rows}
    srcs, dsts = [], []
    total = 0
    for a, S in blocks():
        mask = t < S
        r = np.arange(S.shape[0])
        mask[r, a + r] = False  # self-loops are spec.self_loops' business (every cell or none)
        if spec.max_degree is not None and spec.max_degree < n:
            m = spec.max_degree
            scores = np.where(mask, S, -np.inf)
            top_m = np.argpartition(-scores, m - 1, axis=1)[:, :m]
            capped = np.zeros_like(mask)
            np.put_along_axis(capped, top_m, True, axis=1)
            mask &= capped
        s, d = np.nonzero(mask)
        total += s.size
        if total > MAX_EDGES:  # ties above the threshold can exceed the estimate
            raise MemoryGuardError(
                f"The linear kernel produced more than {MAX_EDGES:,} edges; raise percentile or set max_degree."
            )
        srcs.append(s.astype(np.int64) + a)
        dsts.append(d.astype(np.int64))
    src = np.concatenate(srcs) if srcs else np.zeros(0, dtype=np.int64)
    dst = np.concatenate(dsts) if dsts else np.zeros(0, dtype=np.int64)
    return src, dst


def read_edge_list(path: str | Path, n_cells: int, cell_names: Sequence[str] | None = None):
    """Read an edge list: two columns (csv, tsv or whitespace) of cell names or 0-based integer ids.

    A header line is recognised and skipped; blank lines and lines starting with # are ignored; columns
    after the second are ignored. Unknown names, ids out of range and self-references raise GraphError
    naming the first offending line. Returns (source, target) int64 arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise GraphError(
            f"The edge file {path} does not exist; give the path of a csv/tsv file with two columns."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GraphError(f"The edge file {path} cannot be read as text ({exc}).") from None
    lines = [(no, ln.strip()) for no, ln in enumerate(text.splitlines(), 1)]
    lines = [(no, ln) for no, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise GraphError(f"The edge file {path} holds no edges.")
    first = lines[0][1]
    sep = "\t" if "\t" in first else ("," if "," in first else None)
    names = {str(c): i for i, c in enumerate(cell_names)} if cell_names is not None else None

    def fields(no: int, ln: str) -> tuple[str, str]:
        parts = [p.strip().strip('"').strip("'") for p in ln.split(sep)]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise GraphError(f"{path.name} line {no}: expected two columns (source, target); got {ln!r}.")
        return parts[0], parts[1]

    def is_int(s: str) -> bool:
        try:
            int(s)
            return True
        except ValueError:
            return False

    def known(tok: str) -> bool:
        return is_int(tok) or (names is not None and tok in names)

    a, b = fields(*lines[0])
    by_name = names is not None and (a in names or b in names)
    if not known(a) and not known(b):
        lines = lines[1:]  # a header such as "source,target" (a half-known first line is data with an error)
        if not lines:
            raise GraphError(f"The edge file {path} holds a header but no edges.")
        a, b = fields(*lines[0])
        by_name = names is not None and (a in names or b in names)
    src = np.empty(len(lines), dtype=np.int64)
    dst = np.empty(len(lines), dtype=np.int64)
    for e, (no, ln) in enumerate(lines):
        a, b = fields(no, ln)
        ids = []
        for tok in (a, b):
            if by_name:
                if tok not in names:
                    raise GraphError(
                        f"{path.name} line {no}: {tok!r} is not a cell name of this data set "
                        f"(names look like {next(iter(names))!r}). Use the data set's cell names or 0-based ids."
                    )
                ids.append(names[tok])
            else:
                if not is_int(tok):
                    hint = "" if names is None else " nor a cell name of this data set"
                    raise GraphError(
                        f"{path.name} line {no}: {tok!r} is not a 0-based cell id{hint}. "
                        "Use one kind of identifier throughout the file."
                    )
                v = int(tok)
                if not 0 <= v < n_cells:
                    raise GraphError(
                        f"{path.name} line {no}: cell id {v} is out of range; ids run from 0 to {n_cells - 1}."
                    )
                ids.append(v)
        if ids[0] == ids[1]:
            raise GraphError(
                f"{path.name} line {no}: cell {a} is joined to itself; remove the line (use self_loops to add loops)."
            )
        src[e], dst[e] = ids
    return src, dst, ("names" if by_name else "ids")


def k_for(spec: GraphSpec, n_cells: int) -> int:
    """The k a kNN-type graph on ``n_cells`` cells uses: ``spec.k``, grown as k x sqrt(n / k_reference_cells)
    above k_reference_cells cells (never past k_max, never below k)."""
    ref = spec.k_reference_cells
    if ref is None or n_cells <= ref or spec.kind not in ("knn", "pknn", "gaussian"):
        return spec.k
    return max(spec.k, min(spec.k_max, int(round(spec.k * math.sqrt(n_cells / ref)))))


def build_graph(X: Any, spec: GraphSpec, *, cell_names: list[str] | None = None) -> Graph:
    """Build the cell graph described by ``spec`` on ``X`` (cells x dims, dense or sparse).

    ``cell_names`` lets an edge list refer to cells by name. The result's ``info`` holds the backend
    used, the seconds taken, the number of cells/edges pruned and any deviation from the spec.
    """
    t0 = time.perf_counter()
    info: dict[str, Any] = {"kind": spec.kind, "deviations": []}
    if spec.kind == "edgelist":
        n = X.shape[0] if X is not None else len(cell_names or [])
        if cell_names is not None and len(cell_names) != n:
            raise GraphError(
                f"{len(cell_names)} cell names were given for {n} cells; they must match one to one."
            )
        src, dst, mode = read_edge_list(spec.edge_file, n, cell_names)
        info.update(backend="file", identifiers=mode, n_edges_read=int(src.size))
        g = _finish(src, dst, n, spec, info=info)
    else:
        X = _as_dense(X)
        n = X.shape[0]
        if spec.use == "pca" and X.shape[1] < spec.n_pcs:
            info["deviations"].append(f"n_pcs capped at {X.shape[1]} (min(cells, genes) - 1)")
        if spec.kind == "linear":
            if n < 2:
                raise GraphError(f"A graph needs at least 2 cells; the data has {n}.")
            src, dst = _linear_edges(X, spec, info)
            info["backend"] = "blockwise-linear"
            g = _finish(src, dst, n, spec, info=info)
        else:
            grown = k_for(spec, n)
            if grown != spec.k:
                info["deviations"].append(
                    f"k = {grown} for {n:,} cells: k = {spec.k} x sqrt({n:,} / {spec.k_reference_cells:,}) "
                    f"(k_reference_cells; at most k_max = {spec.k_max})"
                )
                spec = replace(spec, k=grown)
            info["k"] = spec.k
            if n < spec.k + 1:
                raise GraphError(
                    f"A {spec.k}-nearest-neighbour graph needs at least k+1 = {spec.k + 1} cells; the data has {n}. "
                    "Lower k or use more cells."
                )
            expected = n * spec.k * (2 if spec.symmetrize == "union" else 1)
            if expected > MAX_EDGES:
                raise MemoryGuardError(
                    f"k = {spec.k} on {n:,} cells gives up to {expected:,} edges, above the {MAX_EDGES:,}-edge "
                    "budget. Lower k."
                )
            metric = spec.metric
            if spec.kind == "pknn":
                # Pearson r(x, y) = cosine of the centred rows: no N x N correlation matrix is formed.
                X = X - X.mean(axis=1, keepdims=True)
                metric = "cosine"
            if metric == "cosine":
                X, n_zero = _normalise_rows(X)
                if n_zero:
                    what = "constant" if spec.kind == "pknn" else "all-zero"
                    info["deviations"].append(
                        f"{n_zero} {what} cell(s) have no direction; their neighbours are arbitrary"
                    )
                info["n_zero_rows"] = n_zero
            src, dst, d, all_dist = _knn_edges(X, spec, metric, info)
            weight = _gaussian_weights(src, dst, d, all_dist, info) if spec.kind == "gaussian" else None
            g = _finish(src, dst, n, spec, weight=weight, distance=d, info=info)
    info["seconds"] = round(time.perf_counter() - t0, 4)
    return g
