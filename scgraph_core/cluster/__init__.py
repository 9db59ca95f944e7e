"""Clustering of cell embeddings.

* :mod:`.layout` and :mod:`.grid`: CellVGAE's recipe (MODELS.md 1.5). :func:`umap_embedding` lays
  out the embedding; :func:`hdbscan_grid` runs HDBSCAN over min_cluster_size x min_samples, keeps
  all labelings, and chooses one without labels among the runs with at most 5 % noise and at least
  two clusters (pitfall 7), by one of three rules (``select``): "silhouette" (the best silhouette,
  MODELS.md's rule), "consensus" (the run that agrees best with the other runs,
  :func:`consensus_scores`) or "dbcv" (HDBSCAN's relative validity). :func:`cluster_embedding`'s
  default clusters a 10-D UMAP with min_dist 0 and picks the best silhouette on it; the paper's 2-D
  recipe is ``cluster_umap_dims=2``. :func:`best_with_labels` is the "best-of" choice
  that uses the cell types; it is only ever reported next to the automatic one (MODELS.md 6.3).
* :mod:`.refine`: :func:`refine_clusters`, the optional small-cluster post-processing (split large
  clusters, assign noise by a kNN vote in the latent space); off by default.
* :mod:`.partition`: :func:`leiden`, :func:`kmeans` (graph and centroid clustering) and
  :func:`scanpy_baseline`: PCA -> kNN -> Leiden on log-normalised values, the floor every model is
  compared with.
* :mod:`.embedding`: :func:`cluster_embedding`, one entry point driven by the
  :class:`ClusterParams` schema.
* :mod:`.common`: the noise label, the exact-kNN size limit and the input checks they all share.

Every function is seeded and returns integer labels, -1 marking noise (HDBSCAN only). The heavy
libraries (umap, hdbscan, scanpy) are imported inside the functions so that importing this package
stays cheap for the app and the command line. The names below are re-exported here, so
``from scgraph_core.cluster import leiden`` works as before the split.
"""

from __future__ import annotations

from .common import EXACT_KNN_MAX_CELLS, NOISE
from .embedding import ClusterParams, ClusterResult, cluster_embedding, scaled_grid
from .grid import SELECT_RULES, GridResult, best_with_labels, consensus_scores, hdbscan_grid, pair_agreement
from .layout import drawn_layout, shared_neighbours, umap_embedding
from .partition import kmeans, leiden, scanpy_baseline
from .refine import refine_clusters

__all__ = [
    "EXACT_KNN_MAX_CELLS",
    "NOISE",
    "SELECT_RULES",
    "ClusterParams",
    "ClusterResult",
    "GridResult",
    "best_with_labels",
    "cluster_embedding",
    "consensus_scores",
    "drawn_layout",
    "hdbscan_grid",
    "kmeans",
    "leiden",
    "pair_agreement",
    "refine_clusters",
    "scaled_grid",
    "scanpy_baseline",
    "shared_neighbours",
    "umap_embedding",
]
