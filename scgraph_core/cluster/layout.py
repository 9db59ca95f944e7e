"""UMAP layouts of an embedding (the space HDBSCAN clusters in CellVGAE's recipe, and the 2-D view)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from .common import EXACT_KNN_MAX_CELLS, matrix, min_cells

_EXACT_METRICS = ("euclidean", "manhattan", "cosine", "chebyshev")


def _umap_pieces(X: Any, idx: np.ndarray, dist: np.ndarray, metric: str, n_epochs: int | None) -> int:
    """Connected pieces of the graph umap-learn will lay out.

    That is its fuzzy kNN graph after it drops edges lighter than max weight / epochs (the rule in
    umap-learn 0.5's ``simplicial_set_embedding``).
    """
    from scipy.sparse.csgraph import connected_components
    from umap.umap_ import fuzzy_simplicial_set

    n = X.shape[0]
    graph, _, _ = fuzzy_simplicial_set(
        X, idx.shape[1], np.random.RandomState(0), metric, knn_indices=idx, knn_dists=dist
    )
    graph = sp.csr_matrix(graph)
    epochs = n_epochs if n_epochs is not None and n_epochs > 10 else (500 if n <= 10_000 else 200)
    graph.data[graph.data < graph.data.max() / epochs] = 0.0
    graph.eliminate_zeros()
    return int(connected_components(graph, directed=False)[0])


def shared_neighbours(
    X: Any, n_neighbors: int = 15, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """One approximate kNN search that the drawn UMAP and the Leiden comparison share on large data.

    Above :data:`EXACT_KNN_MAX_CELLS` cells umap-learn and scanpy would each run pynndescent on the same
    points; this runs faiss's HNSW index once instead (euclidean; neighbour distances recomputed
    exactly) and returns (indices, distances), each cell itself first, as both libraries take them.
    At or below the limit (exact neighbours, computed in a second or two) or without faiss it returns
    None and each step searches on its own, exactly as before.
    """
    from .. import graphs

    n = X.shape[0]
    if n <= EXACT_KNN_MAX_CELLS or not graphs.HAVE_FAISS:
        return None
    dense = np.ascontiguousarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
    k = min(n_neighbors, n - 1)
    idx, dist, _ = graphs.nearest_neighbors(dense, k - 1, backend="approx", seed=seed)
    rows = np.arange(n, dtype=np.int64)[:, None]
    return np.hstack([rows, idx]), np.hstack([np.zeros((n, 1), np.float32), dist.astype(np.float32)])


#: Above this many cells "auto" starts UMAP from PCA instead of the spectral layout (see umap_embedding).
SPECTRAL_MAX_CELLS = 200_000


def umap_embedding(
    X: Any,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_components: int = 2,
    seed: int | None = 0,
    metric: str = "euclidean",
    n_epochs: int | None = None,
    init: str = "auto",
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """UMAP coordinates of the cells (umap-learn), float32 [N, n_components].

    A seed makes the layout reproducible; umap-learn then runs its optimisation on one thread
    (``seed=None`` lets it use all cores, unseeded). ``n_epochs=None`` keeps umap-learn's default (500
    epochs up to 10,000 cells, 200 above); fewer (e.g. 100-200) trade a little layout quality for
    proportionally less time. Measured on 2 shared CPU cores (50-d input): 3k cells 3-4 s, 20k cells
    16-18 s (12 s with 100 epochs); the first call on a machine adds 5-10 s of numba compilation, kept on
    disk for later processes (:mod:`scgraph_core.numba_cache`).

    Up to 50,000 cells (metrics euclidean, manhattan, cosine, chebyshev) the neighbours are found
    exactly with scikit-learn and handed to umap-learn; above 4,096 cells umap-learn would otherwise
    compile and run pynndescent (about 30 s more on first use).

    ``init`` is umap-learn's initial layout: "spectral" (its default), "pca" or "random". "auto" takes
    "spectral" unless the neighbour graph falls apart into more than 2 x n_components pieces: umap-learn
    then places the pieces with a spectral embedding of their centroids that is not reproducible even
    when seeded (the eigenproblem is degenerate), so "auto" takes "pca" there. The check needs the exact
    neighbours, so above 50,000 cells or with other metrics "auto" means "spectral", and above
    ``SPECTRAL_MAX_CELLS`` (200,000) "pca": the spectral layout's eigenproblem (ARPACK on the fuzzy graph)
    had not converged after 35 minutes on 1,000,000 cells (2 CPU cores), where the rest of the layout
    takes minutes; at 100,000 cells the whole 2-D layout took 72 s with it.

    ``knn`` (indices, distances; each cell itself first, at least ``n_neighbors`` columns, euclidean) are
    neighbours found earlier, e.g. by :func:`shared_neighbours`; they replace umap-learn's own search.
    """
    from ..numba_cache import import_umap

    import_umap()  # compiled once per machine, not once per process
    import umap

    X = matrix(X, "The embedding")
    n = X.shape[0]
    min_cells(n, max(n_components + 2, 4), "UMAP")
    if metric not in umap.distances.named_distances:
        known = ", ".join(sorted(umap.distances.named_distances))
        raise ConfigError(f"Unknown UMAP metric {metric!r}; use one of {known}.")
    if n_neighbors < 2:
        raise ConfigError(f"UMAP n_neighbors must be at least 2; got {n_neighbors}.")
    if n_epochs is not None and n_epochs < 1:
        raise ConfigError(f"UMAP n_epochs must be at least 1 (or unset for the default); got {n_epochs}.")
    if init not in ("auto", "spectral", "pca", "random"):
        raise ConfigError(f"UMAP init must be auto, spectral, pca or random; got {init!r}.")
    k = min(n_neighbors, n - 1)  # umap-learn would truncate with a warning
    pre: tuple[Any, Any, Any] = (None, None, None)
    if knn is not None:
        idx, dist = (np.asarray(a) for a in knn)
        if idx.shape[0] != n or idx.shape[1] < k or metric != "euclidean":
            raise ConfigError(
                f"The given neighbours ({idx.shape[0]} x {idx.shape[1]}, euclidean) do not fit {n} cells, "
                f"{k} neighbours and metric {metric}."
            )
        pre = (idx[:, :k], dist[:, :k], None)
    elif n <= EXACT_KNN_MAX_CELLS and metric in _EXACT_METRICS:
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=k, metric=metric).fit(X).kneighbors(X)  # self first
        pre = (idx, dist, None)  # no search index: we never transform new cells
    if init == "auto" and n > SPECTRAL_MAX_CELLS:
        init = "pca"
    elif init == "auto":
        exact = pre[0] is not None and knn is None
        pieces = _umap_pieces(X, pre[0], pre[1], metric, n_epochs) if exact else 1
        init = "pca" if pieces > 2 * n_components else "spectral"
    reducer = umap.UMAP(
        n_neighbors=k,
        min_dist=min_dist,
        n_components=n_components,
        metric=metric,
        n_epochs=n_epochs,
        init=init,
        random_state=seed,
        n_jobs=1 if seed is not None else -1,  # seeding forces one thread; saying so avoids its warning
        precomputed_knn=pre,
    )
    with warnings.catch_warnings():
        # Without a search index umap-learn cannot transform new cells; we never ask it to.
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)
        return np.asarray(reducer.fit_transform(X), dtype=np.float32)


#: Placed cells take the mean position of this many nearest laid-out cells (see :func:`drawn_layout`).
PLACE_K = 10


def drawn_layout(
    X: Any,
    *,
    sample: int | None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
    seed: int = 0,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict | None]:
    """The 2-D UMAP drawn for the cells: (coordinates [N, 2], how it was made or None).

    Up to ``sample`` cells (or with ``sample=None``) it is :func:`umap_embedding` of all of them and the
    second value is None. Above, umap-learn lays out a random ``sample`` of the cells (seeded) and every
    other cell is put at the mean position of its :data:`PLACE_K` nearest laid-out cells in ``X`` (a
    faiss HNSW search of the sample): umap-learn's seeded optimisation runs on one thread and took over
    30 minutes on 1,000,000 cells (2 CPU cores), against 72 s for 100,000. The placed cells sit inside
    the sampled ones' clouds, so the picture and its clusters keep their shape; the second value is
    ``{"cells": sample, "of": N, "k": PLACE_K}`` for the note the app shows.
    """
    from . import extend

    X = matrix(X, "The embedding")
    n = X.shape[0]
    if sample is None or n <= sample:
        xy = umap_embedding(
            X, n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs, seed=seed, knn=knn
        )
        return xy, None
    if sample < n_neighbors + 2:
        raise ConfigError(f"The UMAP sample must hold more than {n_neighbors + 1} cells; got {sample}.")
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    sampled = extend.sample_rows(n, sample, seed)
    rest = np.setdiff1d(np.arange(n), sampled, assume_unique=True)
    part = dense[sampled]
    xy = umap_embedding(
        part,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        n_epochs=n_epochs,
        seed=seed,
        knn=shared_neighbours(part, n_neighbors, seed=seed),
    )
    near = extend.nearest_sampled(dense, sampled, rest, PLACE_K, approx=True, seed=seed)
    coords = extend.extend_coords(xy, near, sampled, rest, n)
    return coords, {"cells": int(len(sampled)), "of": int(n), "k": int(near.shape[1])}
