"""Clustering of cell embeddings.

* :func:`umap_embedding` and :func:`hdbscan_grid`: CellVGAE's recipe (MODELS.md 1.5). A UMAP of the
  embedding, HDBSCAN over min_cluster_size x min_samples, all labelings kept, and one chosen without
  labels among the runs with at most 5 % noise and at least two clusters (pitfall 7), by one of three
  rules (``select``): "silhouette" (the best silhouette, MODELS.md's rule), "consensus" (the run that
  agrees best with the other runs, :func:`consensus_scores`) or "dbcv" (HDBSCAN's relative validity).
  :func:`cluster_embedding`'s default clusters a 10-D UMAP with min_dist 0 and picks by consensus
  over three UMAP layouts; the paper's 2-D recipe is ``cluster_umap_dims=2``. :func:`best_with_labels`
  is the "best-of" choice that uses the cell types; it is only ever reported next to the automatic one
  (MODELS.md 6.3).
* :func:`refine_clusters`: the optional small-cluster post-processing (split large clusters, assign
  noise by a kNN vote in the latent space); off by default.
* :func:`leiden`, :func:`kmeans`: graph and centroid clustering.
* :func:`scanpy_baseline`: PCA -> kNN -> Leiden on log-normalised values, the floor every model is
  compared with.
* :func:`cluster_embedding`: one entry point driven by the :class:`ClusterParams` schema.

Every function is seeded and returns integer labels, -1 marking noise (HDBSCAN only). The heavy
libraries (umap, hdbscan, scanpy) are imported inside the functions so that importing this module
stays cheap for the app and the command line.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError
from .metrics import silhouette
from .params import from_dict, param, to_dict

NOISE = -1
SELECT_RULES = ("consensus", "silhouette", "dbcv")

# Above this many cells kNN graphs (Leiden, UMAP) use approximate neighbours (pynndescent); below it
# the exact search is fast, needs no numba compilation and does not depend on threading.
EXACT_KNN_MAX_CELLS = 50_000
_EXACT_METRICS = ("euclidean", "manhattan", "cosine", "chebyshev")


# ---------------------------------------------------------------------------------------------------
# Input checks


def _matrix(X: Any, name: str, *, allow_sparse: bool = True) -> Any:
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


def _min_cells(n: int, needed: int, what: str) -> None:
    if n < needed:
        raise ConfigError(f"{what} needs at least {needed} cells; got {n}.")


def _int_labels(labels: Any, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ConfigError(f"labels must hold one integer per cell ({n}); got shape {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ConfigError("labels must be integer cluster ids with -1 for noise (as HDBSCAN writes them).")
    return lab.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# UMAP


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
) -> np.ndarray:
    """UMAP coordinates of the cells (umap-learn), float32 [N, n_components].

    A seed makes the layout reproducible; umap-learn then runs its optimisation on one thread
    (``seed=None`` lets it use all cores, unseeded). ``n_epochs=None`` keeps umap-learn's default (500
    epochs up to 10,000 cells, 200 above); fewer (e.g. 100-200) trade a little layout quality for
    proportionally less time. Measured on 2 shared CPU cores (50-d input): 3k cells 3-4 s, 20k cells
    16-18 s (12 s with 100 epochs); the first call in a process adds 5-10 s of numba compilation.

    Up to 50,000 cells (metrics euclidean, manhattan, cosine, chebyshev) the neighbours are found
    exactly with scikit-learn and handed to umap-learn; above 4,096 cells umap-learn would otherwise
    compile and run pynndescent (about 30 s more on first use).

    ``init`` is umap-learn's initial layout: "spectral" (its default), "pca" or "random". "auto" takes
    "spectral" unless the neighbour graph falls apart into more than 2 x n_components pieces: umap-learn
    then places the pieces with a spectral embedding of their centroids that is not reproducible even
    when seeded (the eigenproblem is degenerate), so "auto" takes "pca" there. The check needs the exact
    neighbours, so above 50,000 cells or with other metrics "auto" means "spectral".
    """
    import umap

    X = _matrix(X, "The embedding")
    n = X.shape[0]
    _min_cells(n, max(n_components + 2, 4), "UMAP")
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
    knn: tuple[Any, Any, Any] = (None, None, None)
    if n <= EXACT_KNN_MAX_CELLS and metric in _EXACT_METRICS:
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=k, metric=metric).fit(X).kneighbors(X)  # self first
        knn = (idx, dist, None)  # no search index: we never transform new cells
    if init == "auto":
        pieces = 1 if knn[0] is None else _umap_pieces(X, knn[0], knn[1], metric, n_epochs)
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
        precomputed_knn=knn,
    )
    with warnings.catch_warnings():
        # Without a search index umap-learn cannot transform new cells; we never ask it to.
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)
        return np.asarray(reducer.fit_transform(X), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# HDBSCAN grid (CellVGAE)


def pair_agreement(a: Any, b: Any) -> float:
    """Adjusted Rand index between two labelings of the same cells, noise (-1) counted as one group.

        ARI = (Σ_ij C(n_ij, 2) − E) / (½ [Σ_i C(a_i, 2) + Σ_j C(b_j, 2)] − E),
        E = Σ_i C(a_i, 2) · Σ_j C(b_j, 2) / C(n, 2)

    with n_ij the contingency table and a_i, b_j its margins (Hubert & Arabie 1985). Computed from one
    ``bincount`` of the paired codes, so it costs O(n) and no cells x cells matrix. Two labelings that
    are both a single group (or both all singletons) agree perfectly: 1.0, as scikit-learn says.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"Both labelings need one label per cell; got shapes {a.shape} and {b.shape}.")
    n = a.size
    _, ca = np.unique(a, return_inverse=True)
    _, cb = np.unique(b, return_inverse=True)
    nb = int(cb.max()) + 1 if n else 1
    joint = np.bincount(ca.astype(np.int64) * nb + cb, minlength=0).astype(np.float64)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1.0)).sum() / 2.0)

    sum_ij = pairs(joint)
    sum_a = pairs(np.bincount(ca).astype(np.float64))
    sum_b = pairs(np.bincount(cb).astype(np.float64))
    total = n * (n - 1) / 2.0
    expected = sum_a * sum_b / total if total else 0.0
    top = (sum_a + sum_b) / 2.0
    if top == expected:  # both trivial (one group, or all singletons)
        return 1.0
    return float((sum_ij - expected) / (top - expected))


def consensus_scores(
    candidates: Any, voters: Sequence[Any], *, self_index: Sequence[int] | None = None
) -> np.ndarray:
    """How well each candidate labeling agrees with a set of voting labelings: mean ARI.

        score(c) = 1/|V_c| Σ_{v ∈ V_c} ARI(c, v)

    This is the medoid ("median partition") choice of cluster ensembles (Strehl & Ghosh, JMLR 3:583,
    2002): the labeling that shares the most with all the others, so a run that splits a cell type into
    fragments, or merges two because of one layout, loses to the run most runs agree with.
    ``candidates`` is [C, N]; ``voters`` a sequence of [N] labelings. ``self_index[c]`` (optional) is the
    position of candidate c among the voters, left out of its own mean (V_c = V minus itself).
    Identical labelings are compared once (grid points often agree).
    """
    cand = np.asarray(candidates)
    if cand.ndim != 2:
        raise ConfigError(f"candidates must be a [runs, cells] array of labelings; got shape {cand.shape}.")
    votes = [np.asarray(v) for v in voters]
    if not votes:
        raise ConfigError("consensus_scores needs at least one voting labeling.")
    if self_index is not None and len(self_index) != len(cand):
        raise ConfigError("self_index needs one voter position per candidate.")
    memo: dict[tuple[bytes, bytes], float] = {}
    keys = [v.astype(np.int64).tobytes() for v in votes]
    scores = np.empty(len(cand), dtype=np.float64)
    for c, labels in enumerate(cand):
        ck = labels.astype(np.int64).tobytes()
        total, count = 0.0, 0
        for j, (vk, v) in enumerate(zip(keys, votes, strict=True)):
            if self_index is not None and j == self_index[c]:
                continue
            pair = (ck, vk) if ck <= vk else (vk, ck)
            if pair not in memo:
                memo[pair] = 1.0 if ck == vk else pair_agreement(labels, v)
            total += memo[pair]
            count += 1
        scores[c] = total / count if count else np.nan
    return scores


@dataclass
class GridResult:
    """All runs of an HDBSCAN grid and the automatic, label-free choice among them.

    ``runs[i]`` describes row ``labels[i]``: min_cluster_size, min_samples, n_clusters (noise
    excluded), noise (cells), noise_fraction, silhouette (noise excluded, on the clustered points; None
    below two clusters), eligible (noise_fraction <= max_noise with at least two clusters), consensus
    (mean ARI with the eligible runs of every layout; None unless ``select`` is "consensus" or for
    ineligible runs) and dbcv (HDBSCAN's relative validity; None unless ``select`` is "dbcv").
    ``chosen`` is the index picked by ``select``; ``rule`` a sentence saying how it was picked;
    ``n_layouts`` how many point sets voted (1 + len(extra_points)) and ``n_voters`` how many runs.
    """

    runs: list[dict[str, Any]]
    labels: np.ndarray
    chosen: int
    rule: str
    max_noise: float = 0.05
    select: str = "silhouette"
    n_layouts: int = 1
    n_voters: int = 0

    @property
    def chosen_labels(self) -> np.ndarray:
        """Labels of the automatically chosen run (noise -1)."""
        return self.labels[self.chosen]

    @property
    def chosen_run(self) -> dict[str, Any]:
        """The row of ``runs`` that was chosen."""
        return self.runs[self.chosen]


def _named(run: dict[str, Any]) -> str:
    return f"min_cluster_size={run['min_cluster_size']}, min_samples={run['min_samples']}"


def _choose(runs: list[dict[str, Any]], max_noise: float, select: str = "silhouette") -> tuple[int, str]:
    """The label-free choice among eligible runs (noise <= max_noise, >= 2 clusters), else lowest noise.

    "silhouette": best silhouette. "consensus": best consensus score, ties by silhouette. "dbcv": best
    relative validity, ties by silhouette. ``max()`` keeps the first of equal keys, i.e. the earliest
    grid point, so the choice is deterministic.
    """

    def sil(i: int) -> float:
        s = runs[i]["silhouette"]
        return -np.inf if s is None else s

    def score(i: int, key: str) -> float:
        v = runs[i].get(key)
        return -np.inf if v is None or not np.isfinite(v) else float(v)

    eligible = [i for i, r in enumerate(runs) if r["eligible"]]
    pool = f"the {len(eligible)} runs with noise <= {max_noise:.0%} and at least 2 clusters"
    if eligible:
        if select == "consensus":
            best = max(eligible, key=lambda i: (score(i, "consensus"), sil(i)))
            return best, (
                f"the run that agrees best with the others (mean ARI {runs[best]['consensus']:.3f} against "
                f"the eligible runs of every layout) among {pool}: {_named(runs[best])}"
            )
        if select == "dbcv":
            best = max(eligible, key=lambda i: (score(i, "dbcv"), sil(i)))
            return best, (
                f"best HDBSCAN relative validity (DBCV {runs[best]['dbcv']:.3f}) among {pool}: "
                f"{_named(runs[best])}"
            )
        best = max(eligible, key=sil)
        return best, f"best silhouette among {pool}: {_named(runs[best])}"
    several = [i for i, r in enumerate(runs) if r["n_clusters"] >= 2]
    fallback = several or list(range(len(runs)))
    best = min(fallback, key=lambda i: (runs[i]["noise_fraction"], -sil(i)))
    what = "with at least 2 clusters" if several else "(no run found 2 clusters)"
    return best, (
        f"no run had noise <= {max_noise:.0%} with at least 2 clusters; fell back to the lowest noise "
        f"{what}, ties broken by silhouette: {_named(runs[best])} ({runs[best]['noise_fraction']:.1%} noise)"
    )


def _run_grid(
    pts: np.ndarray, sizes: tuple[int, ...], samples: tuple[int, ...], validity: bool
) -> tuple[np.ndarray, list[float | None]]:
    """Labels [len(sizes)·len(samples), N] (min_cluster_size-major) and, if asked, relative validity."""
    import hdbscan

    out = np.empty((len(sizes) * len(samples), pts.shape[0]), dtype=np.int64)
    dbcv: list[float | None] = []
    for r, (size, ms) in enumerate((a, b) for a in sizes for b in samples):
        model = hdbscan.HDBSCAN(min_cluster_size=int(size), min_samples=int(ms), gen_min_span_tree=validity)
        out[r] = model.fit_predict(pts)
        value = None
        if validity:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-noise runs divide by zero inside
                raw = float(model.relative_validity_)
            value = raw if np.isfinite(raw) else None
        dbcv.append(value)
    return out, dbcv


def hdbscan_grid(
    points: Any,
    *,
    min_cluster_sizes: tuple[int, ...] = (10, 25, 50, 100),
    min_samples: tuple[int, ...] = (5, 10, 25, 50),
    max_noise: float = 0.05,
    silhouette_sample: int | None = 5000,
    seed: int | None = 0,
    select: str = "silhouette",
    extra_points: Sequence[Any] = (),
) -> GridResult:
    """Run ``hdbscan.HDBSCAN`` for every (min_cluster_size, min_samples) pair on ``points``.

    ``points`` are normally UMAP coordinates of the embedding (CellVGAE clusters on them), but any
    cells x dims matrix works. Runs are ordered min_cluster_size-major. HDBSCAN itself is
    deterministic; ``seed`` only draws the silhouette subsample (above ``silhouette_sample`` cells).

    ``select`` picks one run without labels among those with noise <= ``max_noise`` and >= 2 clusters:
    "silhouette" (the best silhouette on ``points``, MODELS.md 1.7 pitfall 7; the default here for
    compatibility), "consensus" (:func:`consensus_scores`: the run agreeing best with the other eligible
    runs) or "dbcv" (HDBSCAN's relative validity, a density-based validity index). With "consensus",
    ``extra_points`` (other layouts of the same cells, e.g. UMAPs with other seeds) get the same grid
    and their eligible runs vote too; the candidates are always the runs on ``points``, so the chosen
    labeling is one of the returned ``labels``. Without eligible runs: the lowest-noise run.
    """
    pts = _matrix(points, "The points to cluster", allow_sparse=False)
    n = pts.shape[0]
    sizes, samples = tuple(min_cluster_sizes), tuple(min_samples)
    if not sizes or not samples:
        raise ConfigError("The HDBSCAN grid needs at least one min_cluster_size and one min_samples value.")
    if min(sizes) < 2:
        raise ConfigError(f"HDBSCAN min_cluster_size values must be at least 2; got {min(sizes)}.")
    if min(samples) < 1:
        raise ConfigError(f"HDBSCAN min_samples values must be at least 1; got {min(samples)}.")
    if max(samples) >= n:
        raise ConfigError(
            f"HDBSCAN min_samples={max(samples)} needs more cells than the {n} given; use smaller min_samples values."
        )
    if not 0.0 <= max_noise <= 1.0:
        raise ConfigError(f"max_noise is a fraction of cells between 0 and 1; got {max_noise}.")
    if select not in SELECT_RULES:
        raise ConfigError(f"Unknown HDBSCAN selection rule {select!r}; use one of {', '.join(SELECT_RULES)}.")
    extra = [_matrix(e, "extra_points", allow_sparse=False) for e in extra_points]
    for e in extra:
        if e.shape[0] != n:
            raise ConfigError(f"Every extra layout needs one row per cell ({n}); got {e.shape[0]} rows.")

    all_labels, dbcv = _run_grid(pts, sizes, samples, validity=select == "dbcv")
    runs: list[dict[str, Any]] = []
    scores: dict[bytes, float | None] = {}  # grid points often agree; score each labeling once
    pairs = [(a, b) for a in sizes for b in samples]
    for r, (size, ms) in enumerate(pairs):
        labels = all_labels[r]
        key = labels.tobytes()
        if key not in scores:
            scores[key] = silhouette(pts, labels, sample=silhouette_sample, seed=seed)
        noise = int((labels == NOISE).sum())
        n_clusters = int(len(np.unique(labels[labels != NOISE])))
        runs.append(
            {
                "min_cluster_size": int(size),
                "min_samples": int(ms),
                "n_clusters": n_clusters,
                "noise": noise,
                "noise_fraction": noise / n,
                "silhouette": scores[key],
                "eligible": noise / n <= max_noise and n_clusters >= 2,
                "consensus": None,
                "dbcv": dbcv[r],
            }
        )

    def eligible_rows(labels: np.ndarray) -> list[int]:
        out = []
        for r, row in enumerate(labels):
            k = len(np.unique(row[row != NOISE]))
            if (row == NOISE).sum() / n <= max_noise and k >= 2:
                out.append(r)
        return out

    n_voters = 0
    if select == "consensus":
        cand = [i for i, run in enumerate(runs) if run["eligible"]]
        voters = [all_labels[i] for i in cand]
        for e in extra:
            more, _ = _run_grid(e, sizes, samples, validity=False)
            voters.extend(more[i] for i in eligible_rows(more))
        n_voters = len(voters)
        if cand and n_voters > 1:
            found = consensus_scores(all_labels[cand], voters, self_index=list(range(len(cand))))
            for i, value in zip(cand, found.tolist(), strict=True):
                runs[i]["consensus"] = value
        elif cand:
            runs[cand[0]]["consensus"] = 1.0  # the only eligible run agrees with itself
    chosen, rule = _choose(runs, max_noise, select)
    return GridResult(
        runs=runs,
        labels=all_labels,
        chosen=chosen,
        rule=rule,
        max_noise=max_noise,
        select=select,
        n_layouts=1 + len(extra),
        n_voters=n_voters,
    )


def best_with_labels(grid: GridResult, labels_true: Any) -> int:
    """Index of the grid run with the highest ARI against ``labels_true`` (uses the cell types!).

    This is the "best-of" choice of CellVGAE's paper. Report it only beside ``grid.chosen``, the choice
    made without labels, never alone. Noise counts as one group and cells without a label are left out,
    as in :func:`scgraph_core.metrics.clustering_metrics`.
    """
    from .metrics import clustering_metrics

    if len(labels_true) != grid.labels.shape[1]:
        raise ConfigError(
            f"labels_true has {len(labels_true)} entries but the grid clustered {grid.labels.shape[1]} cells."
        )
    aris = [clustering_metrics(labels_true, row)["ari"] for row in grid.labels]
    if all(a is None for a in aris):
        raise ConfigError("No cell has a true label, so no run can be chosen by ARI.")
    return int(np.argmax([-np.inf if a is None else a for a in aris]))


# ---------------------------------------------------------------------------------------------------
# Small-cluster post-processing


def _nearest_labelled(space: Any, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each noise row of ``space``: the labels of its k nearest non-noise rows, nearest first."""
    from sklearn.neighbors import NearestNeighbors

    noise = np.flatnonzero(labels == NOISE)
    clustered = np.flatnonzero(labels != NOISE)
    nn = NearestNeighbors(n_neighbors=min(k, len(clustered))).fit(space[clustered])
    _, idx = nn.kneighbors(space[noise])
    return noise, labels[clustered][idx]


def _majority(votes: np.ndarray) -> np.ndarray:
    """Most frequent label in each row; a tie goes to the label met first (the nearest neighbour)."""
    winners = np.empty(len(votes), dtype=np.int64)
    for r, row in enumerate(votes):
        values, counts = np.unique(row, return_counts=True)
        tied = set(values[counts == counts.max()].tolist())
        winners[r] = next(v for v in row if v in tied)
    return winners


def refine_clusters(
    points: Any,
    labels: Any,
    *,
    large_fraction: float = 0.25,
    min_cluster_size: int = 10,
    min_samples: int | None = None,
    min_silhouette: float | None = None,
    assign_noise: bool = False,
    latent: Any = None,
    k: int = 15,
    seed: int | None = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """CellVGAE's small-cluster post-processing (Supplementary SK; an engine option, off by default).

    1. Every cluster holding more than ``large_fraction`` of all cells is clustered again with HDBSCAN
       on its own ``points`` (``min_cluster_size``, ``min_samples``; None means equal to
       min_cluster_size). When that finds at least two sub-clusters the cluster is split: the largest
       sub-cluster keeps the old id, the others get new ids. Cells the inner run calls noise join the
       sub-cluster of their nearest sub-clustered neighbour, because they were clustered before and
       splitting should not create noise. On a UMAP, HDBSCAN finds sub-clusters inside almost any large
       blob; ``min_silhouette`` (an addition, None = the paper's behaviour) keeps only splits whose
       sub-clusters reach that silhouette on ``points`` (subsampled with ``seed`` above 5,000 cells).
    2. With ``assign_noise``, every noise cell takes the majority label of its ``k`` nearest clustered
       cells in ``latent`` (the model's embedding; ``points`` when None), ties going to the nearest.

    Returns the new labels and an info dict: ``splits`` (one entry per split cluster, with the
    sub-clusters' silhouette), ``rejected`` (splits below ``min_silhouette``), ``checked`` (ids of the
    large clusters examined), ``noise_before``, ``noise_assigned``, ``noise`` (noise cells left,
    always reported) and ``n_clusters``.
    """
    import hdbscan

    pts = _matrix(points, "The points to cluster", allow_sparse=False)
    n = pts.shape[0]
    out = _int_labels(labels, n).copy()
    if not 0.0 < large_fraction <= 1.0:
        raise ConfigError(f"large_fraction is a share of cells in (0, 1]; got {large_fraction}.")
    if min_cluster_size < 2:
        raise ConfigError(f"min_cluster_size must be at least 2; got {min_cluster_size}.")
    if k < 1:
        raise ConfigError(f"k (neighbours voting for a noise cell) must be at least 1; got {k}.")

    original = out.copy()
    next_id = int(out.max()) + 1 if (out != NOISE).any() else 0
    ids, counts = np.unique(original[original != NOISE], return_counts=True)
    checked, splits, rejected = [], [], []
    for cid, size in zip(ids.tolist(), counts.tolist(), strict=True):
        # Two sub-clusters need 2 * min_cluster_size cells, and HDBSCAN more than min_samples.
        if size <= large_fraction * n or size < max(2 * min_cluster_size, (min_samples or 0) + 1):
            continue
        checked.append(cid)
        members = np.flatnonzero(original == cid)
        sub = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples).fit_predict(
            pts[members]
        )
        found, found_sizes = np.unique(sub[sub != NOISE], return_counts=True)
        if len(found) < 2:
            continue
        if (sub == NOISE).any():
            lost, votes = _nearest_labelled(pts[members], sub, 1)
            sub[lost] = votes[:, 0]
            found, found_sizes = np.unique(sub, return_counts=True)
        score = silhouette(pts[members], sub, seed=seed)
        if min_silhouette is not None and (score is None or score < min_silhouette):
            rejected.append({"cluster": cid, "size": size, "parts": len(found), "silhouette": score})
            continue
        order = found[np.argsort(-found_sizes, kind="stable")]
        new_ids = [cid] + list(range(next_id, next_id + len(order) - 1))
        next_id += len(order) - 1
        for old, new in zip(order.tolist(), new_ids, strict=True):
            out[members[sub == old]] = new
        splits.append(
            {
                "cluster": cid,
                "size": size,
                "into": new_ids,
                "sizes": [int((sub == old).sum()) for old in order.tolist()],
                "silhouette": score,
            }
        )

    noise_before = int((out == NOISE).sum())
    assigned = 0
    if assign_noise and 0 < noise_before < n:
        space = pts if latent is None else _matrix(latent, "The latent embedding")
        if space.shape[0] != n:
            raise ConfigError(
                f"latent has {space.shape[0]} rows but there are {n} cells; give one row per cell."
            )
        noise_rows, votes = _nearest_labelled(space, out, k)
        out[noise_rows] = _majority(votes)
        assigned = len(noise_rows)
    info = {
        "large_fraction": large_fraction,
        "min_cluster_size": min_cluster_size,
        "checked": checked,
        "splits": splits,
        "rejected": rejected,
        "noise_before": noise_before,
        "noise_assigned": assigned,
        "noise": int((out == NOISE).sum()),
        "n_clusters": int(len(np.unique(out[out != NOISE]))),
    }
    return out, info


# ---------------------------------------------------------------------------------------------------
# Leiden, k-means and the scanpy baseline


def _is_graph(X: Any) -> bool:
    import igraph

    return isinstance(X, igraph.Graph) or (sp.issparse(X) and X.shape[0] == X.shape[1])


def leiden(
    X_or_graph: Any,
    *,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
    n_iterations: int = 2,
    metric: str = "euclidean",
    graph: bool | None = None,
) -> np.ndarray:
    """Leiden communities (modularity with ``resolution``, igraph's implementation through scanpy).

    ``X_or_graph`` is either a cells x features matrix, from which scanpy builds its kNN graph
    (``n_neighbors`` including the cell itself, UMAP connectivities as weights; exact neighbours up to
    50,000 cells, pynndescent above), or a cell graph: an ``igraph.Graph`` (edge attribute "weight" if
    present) or a square sparse adjacency matrix. ``graph=None`` treats a square sparse matrix as a graph;
    set ``graph=False`` for a sparse feature matrix that happens to be square. Directed input is used as
    undirected. ``n_iterations=2`` is scanpy's default (-1 iterates until no cell moves). Labels are
    0..C-1, 0 the largest community.
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    if resolution <= 0:
        raise ConfigError(f"The Leiden resolution must be positive; got {resolution}.")
    as_graph = _is_graph(X_or_graph) if graph is None else graph
    if as_graph:
        adjacency = _adjacency(X_or_graph)
        adata = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(adjacency.shape[0])]))
    else:
        X = _matrix(X_or_graph, "The embedding")
        n = X.shape[0]
        _min_cells(n, 3, "Leiden on a kNN graph")
        if n_neighbors < 2:
            raise ConfigError(f"n_neighbors must be at least 2; got {n_neighbors}.")
        adata = ad.AnnData(X=X)
        sc.pp.neighbors(
            adata,
            n_neighbors=min(n_neighbors, n - 1),
            use_rep="X",
            metric=metric,
            random_state=seed,
            transformer="sklearn" if n <= EXACT_KNN_MAX_CELLS else "pynndescent",
        )
        adjacency = adata.obsp["connectivities"]
    sc.tl.leiden(
        adata,
        resolution=resolution,
        adjacency=adjacency,
        random_state=seed,
        flavor="igraph",
        n_iterations=n_iterations,
        directed=False,
    )
    return adata.obs["leiden"].astype(int).to_numpy()


def _adjacency(g: Any) -> sp.csr_matrix:
    """A cell graph as a sparse weighted adjacency matrix."""
    import igraph

    if isinstance(g, igraph.Graph):
        weighted = "weight" in g.es.attributes()
        adjacency = g.get_adjacency_sparse(attribute="weight" if weighted else None)
    else:
        adjacency = sp.csr_matrix(g)
        if adjacency.shape[0] != adjacency.shape[1]:
            raise ConfigError(
                f"A cell graph must be a square cells x cells matrix; got shape {adjacency.shape}."
            )
    adjacency = sp.csr_matrix(adjacency, dtype=np.float64)
    if adjacency.shape[0] < 2:
        raise ConfigError("The cell graph needs at least 2 cells.")
    if adjacency.nnz and (not np.isfinite(adjacency.data).all() or adjacency.data.min() < 0):
        raise ConfigError("Edge weights must be finite and non-negative for Leiden.")
    return adjacency


def kmeans(X: Any, k: int, *, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means labels (scikit-learn, Lloyd, k-means++ starts, the best of ``n_init`` runs)."""
    from sklearn.cluster import KMeans

    X = _matrix(X, "The embedding")
    n = X.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= number of cells ({n}); got k={k}.")
    if n_init < 1:
        raise ConfigError(f"n_init must be at least 1; got {n_init}.")
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(X).astype(np.int64)


def _whole_numbers(X: Any) -> bool:
    values = X.data if sp.issparse(X) else np.asarray(X)
    return bool(np.all(values >= 0) and np.all(np.mod(values, 1) == 0))


def scanpy_baseline(
    adata_or_X: Any,
    *,
    resolution: float = 0.5,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    seed: int = 0,
    layer: str | None = None,
    counts: bool | None = None,
) -> np.ndarray:
    """The reference scanpy pipeline: log-normalised values -> PCA -> kNN -> Leiden.

    Input is an AnnData (``X`` or ``layer``) or a cells x genes matrix. ``counts=True`` says it holds raw
    counts, which are normalised to 10,000 per cell and log1p-transformed first; ``False`` says it is
    already log-normalised; ``None`` decides by whether every value is a non-negative whole number.
    Genes are not scaled. PCA keeps min(n_pcs, min(cells, genes) - 1) components; then
    :func:`leiden` with ``n_neighbors`` and ``resolution``. The user's data is never modified.
    On the CellVGAE PBMC3k data this gives ARI 0.874 against the Seurat labels (MODELS.md 1.8: 0.871).
    """
    import anndata as ad
    import scanpy as sc

    if isinstance(adata_or_X, ad.AnnData):
        if layer is not None and layer not in adata_or_X.layers:
            known = ", ".join(adata_or_X.layers.keys()) or "none"
            raise ConfigError(f"The data has no layer {layer!r}; available layers: {known}.")
        X = adata_or_X.layers[layer] if layer is not None else adata_or_X.X
    else:
        X = adata_or_X
    X = _matrix(X, "The expression matrix")
    n_cells, n_genes = X.shape
    _min_cells(min(n_cells, n_genes), 2, "PCA (cells and genes)")
    is_counts = _whole_numbers(X) if counts is None else counts
    work = ad.AnnData(X=X.astype(np.float32, copy=True))
    if is_counts:
        values = work.X.data if sp.issparse(work.X) else work.X
        if values.size and values.min() < 0:
            raise ConfigError(
                "counts=True but the matrix has negative values; give raw counts or set counts=False."
            )
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    n_comps = min(n_pcs, n_cells - 1, n_genes - 1)
    sc.pp.pca(work, n_comps=n_comps, random_state=seed)
    return leiden(work.obsm["X_pca"], resolution=resolution, n_neighbors=n_neighbors, seed=seed)


# ---------------------------------------------------------------------------------------------------
# One entry point


@dataclass(frozen=True)
class ClusterParams:
    """How to cluster an embedding: the schema behind :func:`cluster_embedding`'s options."""

    method: str = param(
        "hdbscan",
        "Clustering method: HDBSCAN grid on the UMAP (CellVGAE), Leiden on a kNN graph, or k-means",
        choices=("hdbscan", "leiden", "kmeans"),
    )
    space: str = param(
        "umap",
        "Where HDBSCAN runs: a UMAP of the embedding (cluster_umap_dims; the paper: 2-D) or the embedding itself",
        choices=("umap", "embedding"),
        advanced=True,
    )
    hdbscan_select: str = param(
        "consensus",
        "How the HDBSCAN run is chosen without labels: consensus (agrees best with the other runs), "
        "silhouette (the paper's best silhouette) or dbcv (HDBSCAN's relative validity)",
        choices=SELECT_RULES,
    )
    cluster_umap_dims: int = param(
        10,
        "Dimensions of the UMAP that HDBSCAN clusters (2 = cluster the drawn 2-D UMAP, as in the paper); "
        "the drawn UMAP stays 2-D",
        min=2,
        max=100,
        advanced=True,
    )
    cluster_umap_min_dist: float = param(
        0.0,
        "min_dist of the UMAP that HDBSCAN clusters (0 packs each group tightly; the drawing keeps umap_min_dist)",
        min=0.0,
        advanced=True,
    )
    umap_repeats: int = param(
        3,
        "Consensus choice: UMAP layouts (seeds seed, seed+1, ...) whose HDBSCAN runs vote; each extra one "
        "costs a UMAP and a grid",
        min=1,
        max=20,
        advanced=True,
    )
    min_cluster_sizes: tuple[int, ...] = param(
        (10, 25, 50, 100), "HDBSCAN grid: smallest cluster sizes to try", min=2, label="min cluster sizes"
    )
    min_samples: tuple[int, ...] = param((5, 10, 25, 50), "HDBSCAN grid: min_samples values to try", min=1)
    max_noise: float = param(
        0.05, "Automatic choice: largest share of noise cells a run may have", min=0.0, max=1.0
    )
    refine: bool = param(False, "Split clusters holding more than large_fraction of the cells (HDBSCAN)")
    large_fraction: float = param(
        0.25,
        "Refinement: clusters above this share of cells are re-clustered",
        min=0.01,
        max=1.0,
        advanced=True,
    )
    refine_min_cluster_size: int = param(
        10, "Refinement: min_cluster_size inside a large cluster", min=2, advanced=True
    )
    assign_noise: bool = param(
        False, "Give noise cells the majority cluster of their neighbours in the embedding"
    )
    refine_min_silhouette: float | None = param(
        None,
        "Refinement: keep a split only if its sub-clusters reach this silhouette (empty: always split)",
        min=-1.0,
        max=1.0,
        advanced=True,
    )
    noise_k: int = param(15, "Neighbours that vote when assigning a noise cell", min=1, advanced=True)
    n_neighbors: int = param(15, "Neighbours for the UMAP (HDBSCAN) or the kNN graph (Leiden)", min=2)
    umap_min_dist: float = param(0.1, "UMAP min_dist", min=0.0, advanced=True)
    umap_n_epochs: int | None = param(
        None, "UMAP epochs (empty: umap-learn's default); fewer is faster", min=1, advanced=True
    )
    resolution: float = param(1.0, "Leiden resolution: higher gives more clusters", min=0.0)
    k: int | None = param(None, "k-means: number of clusters", min=1)
    n_init: int = param(10, "k-means: restarts, the best is kept", min=1, advanced=True)
    silhouette_sample: int = param(
        5000, "Cells sampled to compute a silhouette (its cost grows with the square)", min=100, advanced=True
    )

    def check(self) -> None:
        """Checks that involve several parameters."""
        if self.method == "kmeans" and self.k is None:
            raise ConfigError("k-means needs the number of clusters: set k.")
        if self.method == "leiden" and self.resolution <= 0:
            raise ConfigError("The Leiden resolution must be positive.")


@dataclass
class ClusterResult:
    """Labels (noise -1) and how they were obtained.

    ``params`` holds the resolved :class:`ClusterParams` plus the seed. ``info`` is JSON-ready:
    n_clusters, noise, and for HDBSCAN the grid ``runs``, ``chosen``, ``rule`` (the full sentence:
    space, grid and choice), ``select``, ``space`` (what was clustered) and ``n_layouts`` (and
    ``refine`` when post-processing ran). ``coords`` are the points HDBSCAN clustered (a UMAP of
    ``cluster_umap_dims`` dimensions, the given ``umap_coords``, or None when it ran on the embedding),
    ``grid`` the full :class:`GridResult` with all labelings.
    """

    labels: np.ndarray
    method: str
    params: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    coords: np.ndarray | None = None
    grid: GridResult | None = None


def cluster_embedding(
    embedding: Any,
    *,
    method: str = "hdbscan",
    umap_coords: Any = None,
    seed: int = 0,
    params: ClusterParams | None = None,
    umap_label: str | None = None,
    **options: Any,
) -> ClusterResult:
    """Cluster a cells x dims embedding with one of the methods; ``options`` are :class:`ClusterParams`.

    Pass either ``method`` and ``options`` (validated here) or an already validated ``params``. For
    HDBSCAN on a UMAP, ``umap_coords`` (computed earlier) are clustered as given when passed; else a
    UMAP with ``cluster_umap_dims`` dimensions and ``cluster_umap_min_dist`` is computed here with
    ``seed``. With the consensus choice, a grid of more than one point and ``umap_repeats`` > 1, the
    extra layouts are UMAPs of the same dimensions as the clustered points with seeds seed+1, seed+2,
    ... (``cluster_umap_min_dist``); ``umap_label`` names the given ``umap_coords`` in the rule
    sentence. Other methods ignore all of this. Unknown or invalid options raise
    :class:`ConfigError`.

    The defaults (10-D UMAP, min_dist 0, consensus over 3 layouts) differ from the paper's recipe
    (HDBSCAN on the drawn 2-D UMAP, best silhouette): on a 2-D layout HDBSCAN merges or fragments cell
    types depending on the layout's seed, and the silhouette prefers well-separated fragments
    (README, CellVGAE fidelity). ``cluster_umap_dims=2, cluster_umap_min_dist=umap_min_dist,
    hdbscan_select="silhouette"`` is the paper's recipe.
    """
    if params is None:
        params = from_dict(ClusterParams, {"method": method, **options}, where="Clustering: ")
    elif options:
        raise ConfigError(f"Give either params or options, not both (got {', '.join(sorted(options))}).")
    X = _matrix(embedding, "The embedding")
    n = X.shape[0]
    info: dict[str, Any] = {}
    coords = grid = None
    if params.method == "hdbscan":
        n_points = len(params.min_cluster_sizes) * len(params.min_samples)
        vote = params.hdbscan_select == "consensus" and params.umap_repeats > 1 and n_points > 1
        extra: list[np.ndarray] = []
        if params.space == "umap":
            if umap_coords is not None:
                coords = _matrix(umap_coords, "umap_coords", allow_sparse=False)
                if coords.shape[0] != n:
                    raise ConfigError(f"umap_coords has {coords.shape[0]} rows but the embedding has {n}.")
                where = umap_label or f"the given {coords.shape[1]}-D layout"
            else:
                coords = umap_embedding(
                    X,
                    n_neighbors=params.n_neighbors,
                    min_dist=params.cluster_umap_min_dist,
                    n_components=params.cluster_umap_dims,
                    n_epochs=params.umap_n_epochs,
                    seed=seed,
                )
                where = (
                    f"a {params.cluster_umap_dims}-D UMAP of the embedding "
                    f"(min_dist {params.cluster_umap_min_dist:g}, seed {seed})"
                )
            if vote:
                extra = [
                    umap_embedding(
                        X,
                        n_neighbors=params.n_neighbors,
                        min_dist=params.cluster_umap_min_dist,
                        n_components=coords.shape[1],
                        n_epochs=params.umap_n_epochs,
                        seed=seed + r,
                    )
                    for r in range(1, params.umap_repeats)
                ]
            points = coords
        else:
            points = X.toarray() if sp.issparse(X) else X
            where = "the embedding itself"
        grid = hdbscan_grid(
            points,
            min_cluster_sizes=params.min_cluster_sizes,
            min_samples=params.min_samples,
            max_noise=params.max_noise,
            silhouette_sample=params.silhouette_sample,
            seed=seed,
            select=params.hdbscan_select,
            extra_points=extra,
        )
        labels = grid.chosen_labels.copy()
        layouts = ""
        if params.hdbscan_select == "consensus" and extra:
            layouts = f"; {grid.n_voters} runs voted from {grid.n_layouts} UMAP layouts (seeds {seed}-{seed + len(extra)})"
        rule = f"HDBSCAN on {where}, {n_points}-point grid; chosen: {grid.rule}{layouts}"
        info.update(
            runs=grid.runs,
            chosen=grid.chosen,
            rule=rule,
            select=params.hdbscan_select,
            space=where,
            n_layouts=grid.n_layouts,
        )
        if params.refine or params.assign_noise:
            labels, info["refine"] = refine_clusters(
                points,
                labels,
                large_fraction=params.large_fraction if params.refine else 1.0,  # 1.0: nothing is split
                min_cluster_size=params.refine_min_cluster_size,
                min_silhouette=params.refine_min_silhouette,
                assign_noise=params.assign_noise,
                latent=X,
                k=params.noise_k,
                seed=seed,
            )
    elif params.method == "leiden":
        labels = leiden(X, resolution=params.resolution, n_neighbors=params.n_neighbors, seed=seed)
    else:
        labels = kmeans(X, params.k, seed=seed, n_init=params.n_init)
    info["n_clusters"] = int(len(np.unique(labels[labels != NOISE])))
    info["noise"] = int((labels == NOISE).sum())
    resolved = {**to_dict(params), "seed": seed}
    return ClusterResult(
        labels=labels, method=params.method, params=resolved, info=info, coords=coords, grid=grid
    )
