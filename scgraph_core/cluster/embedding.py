"""One entry point: :func:`cluster_embedding`, driven by the :class:`ClusterParams` schema."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from ..params import from_dict, param, to_dict
from .common import NOISE, matrix
from .grid import SELECT_RULES, GridResult, hdbscan_grid
from .layout import umap_embedding
from .partition import kmeans, leiden
from .refine import refine_clusters


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
        "silhouette",
        "How the HDBSCAN run is chosen without labels: silhouette (the paper's rule: the best silhouette, "
        "here on the clustered UMAP), consensus (agrees best with the runs on umap_repeats layouts) or "
        "dbcv (HDBSCAN's relative validity)",
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
    cluster_umap_n_epochs: int | None = param(
        None,
        "Epochs of the UMAP that HDBSCAN clusters when it is not the drawn one (empty: as umap_n_epochs); "
        "fewer is faster, but 200 instead of 500 helped three of the seven test sets and hurt four",
        min=1,
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
    grid_reference_cells: int | None = param(
        10_000,
        "HDBSCAN grid sizes are meant for up to this many cells; with more cells both grids grow in "
        "proportion, so a cluster is as large a share of the data at 100k cells as at 10k (empty: never)",
        min=100,
        advanced=True,
    )
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
    umap_sample: int | None = param(
        100_000,
        "Above this many cells the drawn 2-D UMAP lays out a random sample of this many cells and puts "
        "every other cell at the mean position of its 10 nearest sampled cells (empty: always all cells)",
        min=100,
        advanced=True,
    )
    resolution: float = param(1.0, "Leiden resolution: higher gives more clusters", min=0.0)
    k: int | None = param(None, "k-means: number of clusters", min=1)
    n_init: int = param(10, "k-means: restarts, the best is kept", min=1, advanced=True)
    silhouette_sample: int = param(
        5000, "Cells sampled to compute a silhouette (its cost grows with the square)", min=100, advanced=True
    )
    cluster_sample: int | None = param(
        20_000,
        "Above this many cells, HDBSCAN's layouts, grid and choice run on a random sample of this many "
        "cells, and every other cell takes the cluster most of its nearest sampled cells hold (empty: "
        "always all cells)",
        min=1000,
        advanced=True,
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
    knn: tuple[np.ndarray, np.ndarray] | None = None,
    **options: Any,
) -> ClusterResult:
    """Cluster a cells x dims embedding with one of the methods; ``options`` are :class:`ClusterParams`.

    Pass either ``method`` and ``options`` (validated here) or an already validated ``params``. For
    HDBSCAN on a UMAP, ``umap_coords`` (computed earlier) are clustered as given when passed; else a
    UMAP with ``cluster_umap_dims`` dimensions and ``cluster_umap_min_dist`` is computed here with
    ``seed``. With the consensus choice, a grid of more than one point and ``umap_repeats`` > 1, the
    extra layouts are UMAPs of the same dimensions as the clustered points with seeds seed+1, seed+2,
    ... (``cluster_umap_min_dist``); ``umap_label`` names the given ``umap_coords`` in the rule
    sentence; ``knn`` (from :func:`~scgraph_core.cluster.layout.shared_neighbours`) spares every layout
    of all cells its own neighbour search. Other methods ignore all of this. Unknown or invalid options raise
    :class:`ConfigError`.

    The defaults (a 10-D UMAP with min_dist 0, the best silhouette on it) differ from the paper's recipe
    (HDBSCAN on the drawn 2-D UMAP, best silhouette there): on a 2-D layout HDBSCAN merges or fragments
    cell types depending on the layout's seed. On the seven-set suite (benchmarks/NOTES.md, 21 saved
    embeddings) the silhouette on the 10-D UMAP and the consensus over 3 layouts were level (median over
    sets 0.61 against 0.60, worst set 0.29 against 0.25); the silhouette needs one layout, not three.
    ``cluster_umap_dims=2, cluster_umap_min_dist=umap_min_dist`` is the paper's recipe.
    """
    if params is None:
        params = from_dict(ClusterParams, {"method": method, **options}, where="Clustering: ")
    elif options:
        raise ConfigError(f"Give either params or options, not both (got {', '.join(sorted(options))}).")
    X = matrix(embedding, "The embedding")
    n = X.shape[0]
    info: dict[str, Any] = {}
    coords = grid = None
    if (
        params.method == "hdbscan"
        and umap_coords is None
        and params.cluster_sample
        and n > params.cluster_sample
    ):
        return _on_a_sample(X, params, seed)
    if params.method == "hdbscan":
        n_points = len(params.min_cluster_sizes) * len(params.min_samples)
        vote = params.hdbscan_select == "consensus" and params.umap_repeats > 1 and n_points > 1
        extra: list[np.ndarray] = []
        if params.space == "umap":
            if umap_coords is not None:
                coords = matrix(umap_coords, "umap_coords", allow_sparse=False)
                if coords.shape[0] != n:
                    raise ConfigError(f"umap_coords has {coords.shape[0]} rows but the embedding has {n}.")
                where = umap_label or f"the given {coords.shape[1]}-D layout"
            else:
                coords = umap_embedding(
                    X,
                    n_neighbors=params.n_neighbors,
                    min_dist=params.cluster_umap_min_dist,
                    n_components=params.cluster_umap_dims,
                    n_epochs=params.cluster_umap_n_epochs or params.umap_n_epochs,
                    seed=seed,
                    knn=knn,
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
                        n_epochs=params.cluster_umap_n_epochs or params.umap_n_epochs,
                        seed=seed + r,
                        knn=knn,
                    )
                    for r in range(1, params.umap_repeats)
                ]
            points = coords
        else:
            points = X.toarray() if sp.issparse(X) else X
            where = "the embedding itself"
        sizes, samples, scaled = scaled_grid(params, n)
        grid = hdbscan_grid(
            points,
            min_cluster_sizes=sizes,
            min_samples=samples,
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
        rule = f"HDBSCAN on {where}, {n_points}-point grid{scaled}; chosen: {grid.rule}{layouts}"
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
    info["n_clusters"] = len(np.unique(labels[labels != NOISE]))
    info["noise"] = int((labels == NOISE).sum())
    resolved = {**to_dict(params), "seed": seed}
    return ClusterResult(
        labels=labels, method=params.method, params=resolved, info=info, coords=coords, grid=grid
    )


def _on_a_sample(X: Any, params: ClusterParams, seed: int) -> ClusterResult:
    """HDBSCAN's whole recipe on ``cluster_sample`` random cells, extended to the others by a kNN vote in
    the embedding (every grid run, so the grid table and its labelings cover all cells)."""
    from . import extend

    n = X.shape[0]
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    sampled = extend.sample_rows(n, params.cluster_sample, seed)
    rest = np.setdiff1d(np.arange(n), sampled, assume_unique=True)
    part = cluster_embedding(dense[sampled], seed=seed, params=replace(params, cluster_sample=None))
    neighbours = extend.nearest_sampled(dense, sampled, rest, params.noise_k)
    # The sample's final labels (after any post-processing), and every grid run for the grid views.
    labels = extend.extend_labels(part.labels, neighbours, sampled, rest, n)
    grid = part.grid
    if grid is not None:
        rows = [extend.extend_labels(row, neighbours, sampled, rest, n) for row in grid.labels]
        grid = replace(grid, labels=np.stack(rows) if rows else np.empty((0, n), dtype=np.int64))
    coords = None
    if part.coords is not None:
        coords = extend.extend_coords(part.coords, neighbours, sampled, rest, n)
    info = dict(part.info)
    info["rule"] = info.get("rule", "HDBSCAN") + extend.describe(n, len(sampled), neighbours.shape[1])
    info["sample"] = {"cells": int(len(sampled)), "of": int(n), "k": int(neighbours.shape[1])}
    info["n_clusters"] = len(np.unique(labels[labels != NOISE]))
    info["noise"] = int((labels == NOISE).sum())
    resolved = {**to_dict(params), "seed": seed}
    return ClusterResult(
        labels=labels, method="hdbscan", params=resolved, info=info, coords=coords, grid=grid
    )


def scaled_grid(params: ClusterParams, n_cells: int) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """The HDBSCAN grid for ``n_cells``: as given up to ``grid_reference_cells``, above it both the cluster
    sizes and min_samples multiplied by n_cells / grid_reference_cells (rounded), and a phrase saying so."""
    ref = params.grid_reference_cells
    if ref is None or n_cells <= ref:
        return tuple(params.min_cluster_sizes), tuple(params.min_samples), ""
    factor = n_cells / ref
    sizes = tuple(max(2, round(v * factor)) for v in params.min_cluster_sizes)
    samples = tuple(max(1, round(v * factor)) for v in params.min_samples)
    phrase = f" (sizes x{factor:.1f} for {n_cells:,} cells: {', '.join(map(str, sizes))})"
    return sizes, samples, phrase
