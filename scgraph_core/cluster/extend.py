"""Cluster a sample of a large dataset, then give every other cell the clusters of its nearest sampled cells.

Above ``ClusterParams.cluster_sample`` cells, CellVGAE's label-free choice (UMAP layouts, HDBSCAN grid,
consensus) runs on a random sample; the cells left out take, for every grid run, the label that most of
their ``k`` nearest sampled cells hold in the embedding (a tie goes to the nearest), and a position in the
clustering layout that is the mean of those neighbours'. Neighbours are exact (faiss flat index when
installed, else scikit-learn), so the vote costs one search of the left-out cells against the sample.
"""

from __future__ import annotations

import numpy as np

from .common import NOISE

# Rows voted at once: bounds the count table (rows x labels) to a few tens of MB.
_VOTE_BLOCK = 8192


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct row indices of ``n``, sorted, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def nearest_sampled(
    X: np.ndarray, sampled: np.ndarray, rest: np.ndarray, k: int, *, approx: bool = False, seed: int = 0
) -> np.ndarray:
    """For each row in ``rest``: its ``k`` nearest rows among ``sampled`` (positions in ``sampled``), nearest first.

    ``approx`` searches a faiss HNSW index of the sample (the settings of :mod:`scgraph_core.graphs`)
    instead of comparing every pair, for samples of 100,000 cells and more (exact when faiss is missing).
    """
    base = np.ascontiguousarray(X[sampled], dtype=np.float32)
    query = np.ascontiguousarray(X[rest], dtype=np.float32)
    k = min(k, len(sampled))
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is in requirements.txt
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=k).fit(base).kneighbors(query, return_distance=False)
    if approx:
        from .. import graphs

        index = faiss.IndexHNSWFlat(base.shape[1], graphs.HNSW_M)
        index.hnsw.rng = faiss.RandomGenerator(seed)
        index.hnsw.efConstruction = graphs.HNSW_EF_CONSTRUCTION
        index.add(base)
        index.hnsw.efSearch = max(graphs.HNSW_EF_SEARCH_MIN, 2 * k)
    else:
        index = faiss.IndexFlatL2(base.shape[1])
        index.add(base)
    _, idx = index.search(query, k)
    return idx.astype(np.int64)


def majority(votes: np.ndarray) -> np.ndarray:
    """The most frequent label of each row of ``votes`` (rows x k, nearest first; -1 is noise and can win).

    A tie goes to the tied label whose first vote comes earliest in the row, i.e. the nearest neighbour's.
    """
    votes = np.asarray(votes, dtype=np.int64)
    rows, k = votes.shape
    out = np.empty(rows, dtype=np.int64)
    if rows == 0:
        return out
    shifted = votes - NOISE  # noise -1 -> 0
    width = int(shifted.max()) + 1
    # Each vote counts 1, plus a bonus below 1/k that is larger for nearer positions: ties go to the nearer.
    weight = 1.0 + (k - np.arange(k)) / (k * (k + 1.0))
    for start in range(0, rows, _VOTE_BLOCK):
        block = shifted[start : start + _VOTE_BLOCK]
        r = block.shape[0]
        table = np.zeros((r, width))
        first = np.zeros((r, width))
        np.add.at(table, (np.repeat(np.arange(r), k), block.ravel()), 1.0)
        # the bonus of each label's first (nearest) vote only
        for j in range(k - 1, -1, -1):
            first[np.arange(r), block[:, j]] = weight[j] - 1.0
        out[start : start + r] = np.argmax(table + first, axis=1) + NOISE
    return out


def extend_labels(
    labels_sampled: np.ndarray, neighbours: np.ndarray, sampled: np.ndarray, rest: np.ndarray, n: int
) -> np.ndarray:
    """Labels for all ``n`` cells: the sample's own, and for ``rest`` the majority of their neighbours'."""
    out = np.empty(n, dtype=np.int64)
    out[sampled] = labels_sampled
    out[rest] = majority(labels_sampled[neighbours])
    return out


def extend_coords(
    coords_sampled: np.ndarray, neighbours: np.ndarray, sampled: np.ndarray, rest: np.ndarray, n: int
) -> np.ndarray:
    """Layout positions for all ``n`` cells: the sample's own, and for ``rest`` the mean of their neighbours'."""
    out = np.empty((n, coords_sampled.shape[1]), dtype=np.float32)
    out[sampled] = coords_sampled
    out[rest] = coords_sampled[neighbours].mean(axis=1)
    return out


def describe(n: int, size: int, k: int) -> str:
    """The phrase the rule sentence carries when the choice ran on a sample."""
    return (
        f"; chosen on a random sample of {size:,} of the {n:,} cells, the other cells took the cluster of "
        f"most of their {k} nearest sampled cells in the embedding"
    )
