"""Everything after training, the same for every model: the drawn UMAP, the clusters, their scores, the
attention and gene-weight export, imputed layers, predictions and the views manifest.

A model answers questions (:class:`scgraph_core.models.base.Model`: ``embed``, ``clusters``,
``attention``, ``gene_weights``, ...); :func:`analyse` asks them in one order and builds the
:class:`~scgraph_core.results.Result` the pipeline writes. What only one model knows comes back from its
``report`` hook and is added last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import interpret, metrics
from .params import to_dict
from .results import Result

if TYPE_CHECKING:
    from .cluster import ClusterParams
    from .data import Prepared
    from .models.base import Embedding, Model


@dataclass
class Analysis:
    """What the shared analysis found, handed to the model's ``report`` hook."""

    prepared: Prepared
    cluster: ClusterParams
    seed: int
    embedding: Embedding
    labels: np.ndarray  # the reported clustering, -1 = noise
    method: str
    truth: np.ndarray | None
    umap: np.ndarray
    obs: dict[str, Any] = field(default_factory=dict)
    obsm: dict[str, Any] = field(default_factory=dict)
    obsp: dict[str, Any] = field(default_factory=dict)
    varm: dict[str, Any] = field(default_factory=dict)
    var: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)


def cluster_categories(labels: np.ndarray) -> pd.Categorical:
    """Cluster labels as obs categories: '0', '1', ... in numeric order, 'noise' (label -1) last."""
    labels = np.asarray(labels)
    found = sorted(int(v) for v in np.unique(labels) if v >= 0)
    names = [str(v) for v in found] + (["noise"] if (labels < 0).any() else [])
    return pd.Categorical([("noise" if v < 0 else str(int(v))) for v in labels], categories=names)


def analyse(
    model: Model,
    prepared: Prepared,
    cluster: ClusterParams,
    *,
    seed: int,
    label_key: str | None = None,
    emit: Callable[[dict], None] = lambda event: None,
) -> Result:
    """The result of a trained ``model``: layout, clusters, scores, interpretation, views."""
    from . import cluster as clustering

    started = time.perf_counter()
    emb = model.embed()
    space = emb.analysed
    truth = prepared.adata.obs[label_key].to_numpy() if label_key is not None else None
    emit({"kind": "pipeline", "step": "cluster"})

    parts: dict[str, float] = {}  # seconds of each step, for the benchmarks (metrics "analysis_parts")
    tick = time.perf_counter()
    # Above 50,000 cells one neighbour search serves the drawn UMAP, the layouts and Leiden (else None).
    knn = clustering.shared_neighbours(space, cluster.n_neighbors, seed=seed)
    if knn is not None:
        parts["neighbours"] = time.perf_counter() - tick
    own = model.clusters()
    # HDBSCAN on the drawn UMAP itself when asked for a 2-D UMAP with the drawing's min_dist (the paper's
    # recipe) needs the drawing first; otherwise the label-free clusters (their own UMAP) and the Leiden
    # comparison do not, and run in a second thread while this one draws (see _overlap).
    on_drawing = (
        cluster.cluster_umap_dims == 2
        and cluster.cluster_umap_min_dist == cluster.umap_min_dist
        and cluster.method == "hdbscan"
    )
    umap_xy, layout_sample, chosen, parts["layout"], overlapped = draw_and_choose(
        space, cluster, seed, knn, choose=own is None, on_drawing=on_drawing
    )
    a = Analysis(
        prepared=prepared,
        cluster=cluster,
        seed=seed,
        embedding=emb,
        labels=np.empty(0, dtype=np.int64),
        method="",
        truth=truth,
        umap=umap_xy,
    )
    a.metrics.update(model.training_metrics())
    a.obsm[emb.key] = np.asarray(emb.values, dtype=np.float32)
    a.obsm.update(emb.extra)
    if emb.space is not None and emb.space_key:
        a.obsm[emb.space_key] = emb.space
    a.obsm["X_umap"] = umap_xy
    if layout_sample is not None:
        a.uns["umap_sample"] = layout_sample
        a.metrics["notes"] = [
            *a.metrics.get("notes", []),
            f"The drawn UMAP laid out a random sample of {layout_sample['cells']:,} of the "
            f"{layout_sample['of']:,} cells; every other cell sits at the mean position of its "
            f"{layout_sample['k']} nearest sampled cells in the embedding.",
        ]
    a.views.update(umap="X_umap", other_clusters=[])

    scored_on = space  # where silhouettes are computed
    others: dict[str, np.ndarray] = {}
    if own is not None:
        labels, method = np.asarray(own.labels, dtype=np.int64), own.method
        if own.probabilities is not None:
            key = own.probability_key or f"{model.name}_q"
            a.obsm[key] = own.probabilities
            a.views["probabilities"] = key
            a.views["probability_names"] = [str(c) for c in range(own.probabilities.shape[1])]
    else:
        assert chosen is not None
        found, leiden_labels, seconds = chosen
        parts.update(seconds)
        labels, method = np.asarray(found.labels, dtype=np.int64), found.method
        grid = found.grid
        if found.coords is not None:
            scored_on = umap_xy  # silhouettes on the drawn UMAP when HDBSCAN ran on a UMAP (as the paper)
        a.uns["cluster_method"] = method
        a.uns["cluster_rule"] = found.info.get("rule", method)
        a.metrics["cluster_rule"] = a.uns["cluster_rule"]
        if grid is not None:
            a.tables["hdbscan_grid"] = pd.DataFrame(grid.runs)
            a.uns["hdbscan_chosen"] = int(grid.chosen)
            a.uns["hdbscan_select"] = grid.select
            # What HDBSCAN clustered (obsm key), so the grid's labelings can be reproduced or redrawn.
            if found.coords is None:
                a.uns["cluster_space"] = emb.key
            else:
                a.uns["cluster_space"] = "X_umap" if on_drawing else "X_umap_cluster"
                if not on_drawing:
                    a.obsm["X_umap_cluster"] = np.asarray(found.coords, dtype=np.float32)
            a.obsm[f"{model.name}_hdbscan_grid"] = grid.labels.T.astype(np.int32)
            a.metrics["hdbscan_chosen"] = dict(grid.chosen_run)
            if truth is not None:
                best = clustering.best_with_labels(grid, truth)
                best_scores = metrics.clustering_metrics(
                    truth, grid.labels[best], embedding=scored_on, seed=seed
                )
                # Picked with the labels: reported only next to the label-free choice.
                a.metrics["hdbscan_best_with_labels"] = {
                    "ari": best_scores["ari"],
                    "nmi": best_scores["nmi"],
                    **grid.runs[best],
                }
        if leiden_labels is not None:
            others["leiden"] = leiden_labels
    a.labels, a.method = labels, method
    main_key = model.cluster_key(method)
    a.obs[main_key] = cluster_categories(labels)
    a.views["clusters"] = main_key
    for name, other in others.items():
        key = f"{model.name}_{name}"
        a.obs[key] = cluster_categories(other)
        a.views["other_clusters"].append(key)
    a.metrics.update(
        metrics.clustering_metrics(
            truth, labels, embedding=scored_on, silhouette_sample=cluster.silhouette_sample, seed=seed
        )
    )
    a.metrics["cluster_method"] = method
    if truth is not None:
        for name, lab in {method: labels, **others}.items():
            m = metrics.clustering_metrics(truth, lab, embedding=None, seed=seed)
            a.metrics[name] = {k: m[k] for k in ("ari", "nmi", "n_clusters")}

    emit({"kind": "pipeline", "step": "interpret"})
    tick = time.perf_counter()
    _attention(model, prepared, a)
    _gene_weights(model, prepared, a)
    imputed = model.impute()
    if imputed is not None:
        a.layers[imputed.layer] = imputed.values
        a.layers.update(imputed.extra_layers)
        a.views["imputed_layer"] = imputed.layer
        a.views["imputed_scale"] = imputed.scale
    proba = model.predict_proba()
    if proba is not None:
        a.obsm[proba.key] = proba.values
        a.views["probabilities"] = proba.key
        a.views["probability_names"] = list(proba.classes)
        # A supervised model's predicted type (for every cell) and its probability, next to the clusters.
        names = np.asarray(proba.classes, dtype=object)
        predicted = f"{model.name}_prediction"
        a.obs[predicted] = pd.Categorical(names[proba.values.argmax(1)], categories=list(proba.classes))
        a.obs[f"{model.name}_confidence"] = proba.values.max(1).astype(np.float32)
        a.views["predictions"] = predicted
    history = model.history()
    if history is not None:
        a.tables["history"] = history
        a.views["history"] = "history"

    report = model.report(a)
    a.obs.update(report.obs)
    a.obsm.update(report.obsm)
    a.obsp.update(report.obsp)
    for key, values in report.var.items():  # per-gene values on the prepared genes, NaN where absent
        a.var[key] = pd.Series(values).reindex(prepared.adata.var_names).to_numpy()
    a.uns.update(report.uns)
    a.tables.update(report.tables)
    a.metrics.update(report.metrics)
    a.views["other_clusters"] = [*report.other_clusters, *a.views["other_clusters"]]
    notes = [*report.notes, *a.metrics.get("notes", [])]
    if notes:
        a.metrics["notes"] = notes
    parts["interpret"] = time.perf_counter() - tick
    seconds = time.perf_counter() - started
    a.metrics["seconds_analysis"] = seconds
    a.metrics["analysis_parts"] = parts
    # True: "clusters" and "leiden" ran in a second thread beside "layout", so the parts overlap in time.
    a.metrics["analysis_overlapped"] = overlapped
    a.metrics["seconds_export"] = seconds  # the name earlier runs used
    return Result(
        model=model.name,
        embedding_key=emb.key,
        obs=a.obs,
        obsm=a.obsm,
        obsp=a.obsp,
        varm=a.varm,
        var=a.var,
        layers=a.layers,
        uns=a.uns,
        tables=a.tables,
        metrics=a.metrics,
        weights=model.state_dict(),
        views=a.views,
    )


def draw_and_choose(
    space: np.ndarray, cluster: ClusterParams, seed: int, knn: Any, *, choose: bool, on_drawing: bool
) -> tuple[np.ndarray, dict | None, Any, float, bool]:
    """The drawn 2-D UMAP of ``space`` and, with ``choose``, the label-free clusters and Leiden
    (:func:`_choose_clusters`; ``on_drawing``: on that drawing, the paper's recipe). Returns the layout, its
    sample note, the clusters (or None), the layout's seconds and whether the clusters ran in a second thread
    while the layout was drawn (when :func:`_overlap` allows; the same numbers as one after the other)."""
    from . import cluster as clustering

    # One BLAS thread for the layouts, so their numbers do not depend on cores or timing (_one_blas_thread).
    with _one_blas_thread(space.shape[0]):
        background = None
        pool = None
        if choose and not on_drawing and _overlap(space.shape[0]):
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scgraph-clusters")
            background = pool.submit(_choose_clusters, space, cluster, seed, knn, None)
        try:
            tick = time.perf_counter()
            # A 2-D UMAP of what is analysed, to draw (of a sample above cluster.umap_sample cells).
            umap_xy, layout_sample = clustering.drawn_layout(
                space,
                sample=cluster.umap_sample,
                n_neighbors=cluster.n_neighbors,
                min_dist=cluster.umap_min_dist,
                n_epochs=cluster.umap_n_epochs,
                seed=seed,
                knn=knn,
            )
            seconds_layout = time.perf_counter() - tick
            chosen = None
            if background is not None:
                chosen = background.result()
            elif choose:
                chosen = _choose_clusters(space, cluster, seed, knn, umap_xy if on_drawing else None)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # an error in the drawing waits for the thread before it is raised
    return umap_xy, layout_sample, chosen, seconds_layout, background is not None


#: Up to this many cells the drawn UMAP and the label-free cluster choice run in two threads (see _overlap).
OVERLAP_MAX_CELLS = 100_000


def _overlap(n_cells: int) -> bool:
    """Whether the drawn UMAP and the cluster choice (with its own UMAP) may run side by side.

    umap-learn's seeded layout runs on one thread; with its optimiser compiled to release the GIL
    (:func:`scgraph_core.numba_cache.nogil_layout`) two layouts in two threads use two cores and give the
    same numbers as one after the other. Up to :data:`OVERLAP_MAX_CELLS` cells, on a machine with at least
    two cores, unless ``SCGRAPH_OVERLAP=0`` (for comparisons). On 2 vCPUs the gain shrinks with size, as two
    layouts then share the memory bandwidth: 44 % at 50,000 cells, 23 % at 100,000; larger sizes were not
    measured (benchmarks/NOTES.md).
    """
    import os

    from .numba_cache import nogil_layout

    if os.environ.get("SCGRAPH_OVERLAP", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores >= 2 and n_cells <= OVERLAP_MAX_CELLS and nogil_layout()


def _one_blas_thread(n_cells: int) -> Any:
    """A context in which BLAS runs on one thread, up to :data:`OVERLAP_MAX_CELLS` cells (else nothing).

    OpenBLAS splits a dot product over more than 10,000 numbers across its threads and adds the partial
    sums, so the result's last bits depend on how many threads took part. umap-learn's spectral start
    (ARPACK) makes such products, and a layout amplifies a last-bit difference into a different picture:
    at 50,000 cells two layouts at once gave different clusters from one run to the next (ARI 0.77 and
    0.88), one after the other they did not. With one BLAS thread the layouts are the same side by side or
    not, on any number of cores. Above the limit (one after the other anyway) BLAS keeps its threads.
    """
    import contextlib

    if n_cells > OVERLAP_MAX_CELLS:
        return contextlib.nullcontext()
    import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS must be loaded to be limited)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _choose_clusters(
    space: Any, cluster: ClusterParams, seed: int, knn: Any, drawn: np.ndarray | None
) -> tuple[Any, np.ndarray | None, dict[str, float]]:
    """The label-free clusters of ``space`` (``drawn``: cluster that 2-D UMAP, the paper's recipe) and,
    when they are not Leiden's, Leiden's communities beside them; with the seconds of each."""
    from . import cluster as clustering

    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    found = clustering.cluster_embedding(
        space,
        umap_coords=drawn,
        umap_label=f"the drawn 2-D UMAP (min_dist {cluster.umap_min_dist:g}, seed {seed})",
        seed=seed,
        knn=knn,
        **to_dict(cluster),
    )
    seconds["clusters"], tick = time.perf_counter() - tick, time.perf_counter()
    leiden = None
    if found.method != "leiden":  # Leiden on the same space, always at hand for comparison
        leiden = clustering.leiden(
            space, resolution=cluster.resolution, n_neighbors=cluster.n_neighbors, seed=seed, knn=knn
        )
        seconds["leiden"] = time.perf_counter() - tick
    return found, leiden, seconds


def _attention(model: Model, prepared: Prepared, a: Analysis) -> None:
    """Each attention layer as obsp (mean and std over heads; row = target, column = source), per-head
    values in uns, per-cell overlays in obs and the strongest edges in a table."""
    maps = model.attention()
    if not maps:
        return
    n = prepared.adata.n_obs
    names = prepared.adata.obs_names.to_numpy()
    a.uns["attention"], a.views["attention"] = {}, {}
    top: list[pd.DataFrame] = []
    for att in maps:
        ei = np.asarray(att.edge_index, dtype=np.int64)
        alpha = np.asarray(att.alpha, dtype=np.float32)
        if alpha.ndim == 1:
            alpha = alpha[:, None]
        # Computed in float64, stored in float32 (α itself is float32): half the file's largest arrays.
        mean, std = (v.astype(np.float32) for v in interpret.head_summary(alpha))
        key = f"{model.name}_attention_{att.name}"
        a.obsp[key] = sp.csr_matrix((mean, (ei[1], ei[0])), shape=(n, n))
        a.obsp[f"{key}_std"] = sp.csr_matrix((std, (ei[1], ei[0])), shape=(n, n))
        a.uns["attention"][att.name] = {"edge_index": ei.astype(np.int32), "alpha": alpha, **att.uns_extra}
        for suffix, values in att.node_values.items():
            a.obs[f"{key}{suffix}"] = values
        a.views["attention"][att.name] = {
            "obsp": key,
            "obsp_std": f"{key}_std",
            "heads": int(alpha.shape[1]),
            "kind": att.kind,
            **({"node_obs": key} if "" in att.node_values else {}),
            **att.view_extra,
        }
        if att.top_edges:
            edges = interpret.top_edges(ei, alpha, n=att.top_edges)
            edges.insert(0, "layer", att.name)
            edges["source_cell"], edges["target_cell"] = names[edges["source"]], names[edges["target"]]
            top.append(edges)
    a.views["attention_layers"] = [att.name for att in maps]
    if top:
        a.tables["attention_top_edges"] = pd.concat(top, ignore_index=True)


def _gene_weights(model: Model, prepared: Prepared, a: Analysis) -> None:
    """P_mu / P_sigma over all prepared genes (NaN for genes the model did not read), the marker table
    per cluster, the top genes per latent dimension and how clusters use each dimension."""
    weights = model.gene_weights()
    if weights is None:
        return
    genes = list(weights.feature_genes)
    pos = prepared.adata.var_names.get_indexer(genes)
    latent = weights.p_mu.shape[1]
    slots = {"P_mu": weights.p_mu, "P_sigma": weights.p_sigma}
    for key, matrix in slots.items():
        if matrix is None:
            continue
        full = np.full((prepared.adata.n_vars, latent), np.nan, dtype=np.float32)
        full[pos] = matrix
        a.varm[key] = full
    a.views["gene_weights"] = {k: k for k, v in slots.items() if v is not None}
    emb = a.embedding.values
    a.tables["marker_genes"] = interpret.top_genes(
        weights.p_mu, genes, emb, a.labels, n_genes=weights.n_markers
    )
    a.tables["top_genes_per_dimension"] = interpret.top_genes_per_dimension(
        weights.p_mu, genes, n_genes=weights.n_markers
    )
    a.tables["latent_participation"] = interpret.latent_participation(emb, a.labels).reset_index()
    # Whether the learnt expression (and so the P_mu markers) follows what was measured: the Expression and
    # Markers pages warn when it does not.
    cells = interpret.genes.agreement_cells(len(emb), interpret.genes.AGREEMENT_MAX_CELLS, 0)
    agreement = interpret.expression_agreement(emb[cells], weights.p_mu, prepared.adata.X[cells][:, pos])
    if agreement:
        a.metrics["learnt_expression"] = agreement
    a.uns["feature_genes"] = np.asarray(genes, dtype=object)
    a.views["marker_table"] = "marker_genes"
