"""The optional small-cluster post-processing: split large clusters, assign noise by a kNN vote."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..metrics import silhouette
from .common import NOISE, matrix
from .extend import majority


def _int_labels(labels: Any, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ConfigError(f"labels must hold one integer per cell ({n}); got shape {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ConfigError("labels must be integer cluster ids with -1 for noise (as HDBSCAN writes them).")
    return lab.astype(np.int64)


def _nearest_labelled(space: Any, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each noise row of ``space``: the labels of its k nearest non-noise rows, nearest first."""
    from sklearn.neighbors import NearestNeighbors

    noise = np.flatnonzero(labels == NOISE)
    clustered = np.flatnonzero(labels != NOISE)
    nn = NearestNeighbors(n_neighbors=min(k, len(clustered))).fit(space[clustered])
    _, idx = nn.kneighbors(space[noise])
    return noise, labels[clustered][idx]


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

    pts = matrix(points, "The points to cluster", allow_sparse=False)
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
        new_ids = [cid, *list(range(next_id, next_id + len(order) - 1))]
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
        space = pts if latent is None else matrix(latent, "The latent embedding")
        if space.shape[0] != n:
            raise ConfigError(
                f"latent has {space.shape[0]} rows but there are {n} cells; give one row per cell."
            )
        noise_rows, votes = _nearest_labelled(space, out, k)
        out[noise_rows] = majority(votes)
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
        "n_clusters": len(np.unique(out[out != NOISE])),
    }
    return out, info
