"""Cached loaders: datasets, results and the computations the explore pages make on them.

Heavy objects are read once per file version (the cache key holds the file's modification time and
size), so changing a colour, a gene or a page never re-reads or recomputes them. Results are shared
read-only AnnData objects: pages must not modify them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from scgraph_core import data, graphs, interpret, plots, roots, safe_read
from scgraph_core.runs import Run


def source_stamp(source: dict[str, Any]) -> str:
    """Changes whenever the file (or any file of a folder) changes, so the cache reads it again."""
    path = str(source.get("path", ""))
    if path == data.DEMO_PATH:
        return "builtin"
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            stats = _folder_stats(p)
            return f"dir:{len(stats)}:{max((s.st_mtime for s in stats), default=0)}:{sum(s.st_size for s in stats)}"
        s = p.stat()
        return f"{s.st_mtime}:{s.st_size}"
    except OSError:
        return "missing"


def _folder_stats(root: Path, depth: int = 2) -> list[os.stat_result]:
    """Stats of the files the reader's 10x folder search can reach: two levels down, at most
    ``data.MAX_SCAN_ENTRIES`` entries a level, so a path such as /usr is not walked on every rerun."""
    stats: list[os.stat_result] = []
    level = [root]
    for _ in range(depth + 1):
        budget = data.MAX_SCAN_ENTRIES
        deeper: list[Path] = []
        for folder in level:
            if budget <= 0:
                break
            try:
                with os.scandir(folder) as entries:
                    for entry in itertools.islice(entries, budget):
                        budget -= 1
                        if entry.is_dir():
                            deeper.append(Path(entry.path))
                        elif entry.is_file():
                            stats.append(entry.stat())
            except OSError:
                continue
        level = deeper
    return stats


@st.cache_resource(max_entries=3, show_spinner="Reading the dataset...")
def _load_dataset(path: str, orientation: str, fmt: str | None, stamp: str):
    # Files are read in a child process with time and memory limits, so no file can take the
    # server down; the built-in demo is read here.
    return safe_read.read_isolated(path, orientation=orientation, fmt=fmt)


def checked_path(source: dict[str, Any]) -> str:
    """The source's path; a path typed in the browser must still be inside the data roots (it may have
    been replaced by a link since it was typed)."""
    path = str(source["path"])
    if source.get("kind") == "path":
        return str(roots.resolve(path))
    return path


def dataset(source: dict[str, Any]):
    """The AnnData of a dataset source (shared, read-only)."""
    checked_path(source)
    return _load_dataset(
        str(source["path"]), source.get("orientation", "auto"), source.get("format"), source_stamp(source)
    )


@st.cache_data(max_entries=8, show_spinner="Summarising the dataset...")
def _overview(path: str, orientation: str, fmt: str | None, stamp: str) -> dict[str, Any]:
    adata = _load_dataset(path, orientation, fmt, stamp)
    report = data.validate(adata)
    qc, notes = plots.qc_metrics(adata)
    return {
        "summary": data.summarize(adata),
        "errors": list(report.errors),
        "warnings": list(report.warnings),
        "notes": list(report.notes),
        "x_kind": report.x_kind,
        "qc": qc,
        "qc_notes": notes,
        "has_counts": report.x_kind == "counts"
        or ("counts" in adata.layers and data.detect_x_kind(adata.layers["counts"]) == "counts"),
    }


def overview(source: dict[str, Any]) -> dict[str, Any]:
    checked_path(source)
    return _overview(
        str(source["path"]), source.get("orientation", "auto"), source.get("format"), source_stamp(source)
    )


@st.cache_data(max_entries=16, show_spinner="Building the cell graph for these settings...")
def _graph_preview(
    path: str, orientation: str, fmt: str | None, stamp: str, prepare_json: str, graph_json: str
) -> dict[str, Any]:
    from scgraph_core import params

    adata = _load_dataset(path, orientation, fmt, stamp)
    prep_spec = params.from_dict(data.PrepareSpec, json.loads(prepare_json), where="prepare.")
    graph_spec = params.from_dict(graphs.GraphSpec, json.loads(graph_json), where="graph.")
    started = time.perf_counter()
    prepared = data.prepare(adata, prep_spec)
    graph = graphs.build_graph(
        graphs.graph_matrix(prepared, graph_spec), graph_spec, cell_names=list(prepared.adata.obs_names)
    )
    return {
        "stats": graph.stats(),
        "seconds": time.perf_counter() - started,
        "n_cells": int(prepared.adata.n_obs),
        "n_genes": int(prepared.adata.n_vars),
        "n_features": int(prepared.features.shape[1]),
        "n_graph_genes": int(prepared.graph_input.shape[1]),
        "notes": list(prepared.record.get("notes", [])),
        "backend": graph.info.get("backend"),
    }


def graph_preview(source: dict[str, Any], prepare: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    checked_path(source)
    return _graph_preview(
        str(source["path"]),
        source.get("orientation", "auto"),
        source.get("format"),
        source_stamp(source),
        json.dumps(prepare, sort_keys=True, default=list),
        json.dumps(graph, sort_keys=True, default=list),
    )


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


def result_stamp(run: Run) -> float:
    path = run.file("result.h5ad")
    return os.stat(path).st_mtime if path.exists() else 0.0


@st.cache_resource(max_entries=4, show_spinner="Opening the run's results...")
def _load_result(path: str, stamp: float):
    return Run(path).read_result()


def result(run: Run):
    """The run's result AnnData (shared, read-only); raises RunError when there is none yet."""
    return _load_result(str(run.path), result_stamp(run))


@st.cache_data(max_entries=16, show_spinner=False)
def learnt_agreement(path: str, stamp: float) -> dict[str, Any]:
    """How far a result's learnt expression follows the measured one (for runs whose metrics lack it)."""
    return interpret.learnt_expression_agreement(_load_result(path, stamp))


@st.cache_data(max_entries=32, show_spinner="Clustering the stored embedding...")
def recluster(path: str, stamp: float, method: str, options_json: str) -> dict[str, Any]:
    """Cluster a run's stored embedding again (HDBSCAN on its UMAP, or Leiden on the embedding)."""
    from scgraph_core import cluster

    adata = _load_result(path, stamp)
    views = interpret.result_views(adata)
    emb = np.asarray(adata.obsm[views["embedding"]])
    options = json.loads(options_json)
    seed = int(options.pop("seed", 0))
    started = time.perf_counter()
    if method == "hdbscan":
        umap_key = views.get("umap")
        coords = np.asarray(adata.obsm[umap_key]) if umap_key in adata.obsm else None
        found = cluster.cluster_embedding(
            emb,
            method="hdbscan",
            umap_coords=coords,
            seed=seed,
            min_cluster_sizes=[int(options["min_cluster_size"])],
            min_samples=[int(options["min_samples"])],
            max_noise=1.0,
        )
        labels = found.labels
    else:
        labels = cluster.leiden(emb, resolution=float(options["resolution"]), seed=seed)
    return {"labels": np.asarray(labels, dtype=np.int64), "seconds": time.perf_counter() - started}


@st.cache_data(max_entries=16, show_spinner="Ranking genes with scanpy (rank_genes_groups)...")
def rank_genes(
    path: str, stamp: float, groupby: str, n_genes: int, method: str, feature_only: bool
) -> pd.DataFrame:
    adata = _load_result(path, stamp)
    interpret.result_views(adata)
    from scgraph_core import markers

    genes = markers.reference_genes(adata, feature_only)
    return interpret.rank_genes_markers(adata, groupby, n_genes=n_genes, method=method, genes=genes)


@st.cache_data(max_entries=16, show_spinner="Reading the top genes of every latent dimension...")
def per_dimension(path: str, stamp: float, which: str, n_genes: int) -> pd.DataFrame:
    adata = _load_result(path, stamp)
    found = interpret.gene_weight_matrix(adata, which)
    if found is None:
        return pd.DataFrame(columns=["dimension", "rank", "gene", "weight"])
    return interpret.top_genes_per_dimension(found[0], found[1], n_genes=n_genes)


@st.cache_data(max_entries=16, show_spinner="Finding marker genes from the gene weights...")
def _cluster_markers(path: str, stamp: float, which: str, n_genes: int, config_json: str) -> pd.DataFrame:
    from scgraph_core import markers

    return markers.cluster_markers(
        _load_result(path, stamp), which, n_genes, config=json.loads(config_json) or None
    )


def cluster_markers(run: Run, which: str, n_genes: int) -> pd.DataFrame:
    """Marker genes per cluster from P_mu or P_sigma (``markers.cluster_markers``: the run's stored table
    when it answers, else computed on the run's reported clusters)."""
    config = {k: (run.config or {}).get(k) for k in ("model", "model_params")}
    return _cluster_markers(
        str(run.path), result_stamp(run), which, int(n_genes), json.dumps(config, sort_keys=True, default=str)
    )


@st.cache_data(max_entries=64, show_spinner=False)
def scores(path: str, stamp: float, labels_json: str, label_key: str | None, space: str) -> dict[str, Any]:
    """ARI / NMI against ``label_key`` and the silhouette on ``space`` ("embedding" or "umap") of one
    clustering: an obs column name, or a re-clustering's options (``labels_json``)."""
    from scgraph_core import metrics

    adata = _load_result(path, stamp)
    views = interpret.result_views(adata)
    spec = json.loads(labels_json)
    if "obs" in spec:
        labels = adata.obs[spec["obs"]].astype(str).to_numpy()
        noise = "noise"
    else:
        labels = recluster(path, stamp, spec["method"], json.dumps(spec["options"], sort_keys=True))["labels"]
        noise = -1
    key = views.get("umap") if space == "umap" else views.get("embedding")
    emb = np.asarray(adata.obsm[key]) if key in adata.obsm else None
    truth = adata.obs[label_key].to_numpy() if label_key and label_key in adata.obs else None
    return metrics.clustering_metrics(truth, labels, embedding=emb, noise_label=noise)


@st.cache_data(max_entries=8, show_spinner="Computing a UMAP of the embedding...")
def umap_of(path: str, stamp: float) -> np.ndarray:
    """A 2-D layout for results that did not store one (seeded, as the models do)."""
    from scgraph_core import cluster

    adata = _load_result(path, stamp)
    emb = np.asarray(adata.obsm[interpret.result_views(adata)["embedding"]])
    return emb[:, :2].astype(np.float32) if emb.shape[1] == 2 else cluster.umap_embedding(emb, seed=0)


def layout(run: Run, adata) -> np.ndarray:
    """The 2-D coordinates the explore pages draw: the manifest's UMAP, else one computed here."""
    key = interpret.result_views(adata).get("umap")
    if key and key in adata.obsm:
        return np.asarray(adata.obsm[key])[:, :2]
    return umap_of(str(run.path), result_stamp(run))


def expression(adata, gene: str, layer: str | None = None) -> np.ndarray:
    """One gene's values in X (or a layer) as a dense vector."""
    import scipy.sparse as sp

    j = adata.var_names.get_loc(gene)
    M = adata.X if layer is None else adata.layers[layer]
    col = M[:, j]
    col = col.toarray() if sp.issparse(col) else np.asarray(col)
    return np.asarray(col, dtype=np.float64).reshape(-1)


@st.cache_resource(max_entries=8, show_spinner="Reading the attention coefficients...")
def _attention(path: str, stamp: float, name: str):
    return interpret.attention_map(_load_result(path, stamp), name)


def attention(run: Run, name: str):
    """One attention map of the run's result (shared, read-only)."""
    return _attention(str(run.path), result_stamp(run), name)


@st.cache_data(max_entries=32, show_spinner=False)
def node_scores(path: str, stamp: float, name: str, statistic: str, mode: str) -> np.ndarray:
    """Per-cell attention score of one map for one head statistic (MODELS.md 1.6 aggregation (b))."""
    amap = _attention(path, stamp, name)
    stat: str | int = int(statistic) if statistic.isdigit() else statistic
    if stat == "mean" and amap.per_head:
        alpha = amap.alpha  # node_attention averages the heads' scores itself
    else:
        alpha = amap.weights(stat)
    n = _load_result(path, stamp).n_obs
    return interpret.node_attention(amap.edge_index, alpha, n, mode=mode)


# ------------------------------------------------------------------------------------------------
# Differential expression and annotations
# ------------------------------------------------------------------------------------------------


@st.cache_resource(max_entries=8, show_spinner="Ranking every gene in every group (rank_genes_groups)...")
def _de_groups(path: str, stamp: float, groupby: str, method: str):
    from scgraph_core import de

    return de.rank_groups(_load_result(path, stamp), groupby, method=method)


def de_groups(run: Run, groupby: str, method: str):
    """Marker genes of every group of ``obs[groupby]`` over all genes (shared, read-only DEResult)."""
    return _de_groups(str(run.path), result_stamp(run), groupby, method)


@st.cache_resource(max_entries=8, show_spinner="Comparing the selected cells (rank_genes_groups)...")
def _de_cells(
    path: str,
    stamp: float,
    cells: tuple[int, ...],
    against: tuple[int, ...] | None,
    method: str,
    name: str,
    other: str,
):
    from scgraph_core import de

    adata = _load_result(path, stamp)
    return de.compare_cells(
        adata, list(cells), None if against is None else list(against), method=method, name=name, other=other
    )


def de_cells(run: Run, cells, against, method: str, name: str, other: str):
    """Genes that differ between the cells at rows ``cells`` and the rest or ``against`` (shared DEResult)."""
    return _de_cells(
        str(run.path),
        result_stamp(run),
        tuple(int(i) for i in cells),
        None if against is None else tuple(int(i) for i in against),
        method,
        name,
        other,
    )


def update_result(run: Run, edit) -> None:
    """Save a change into the run's result.h5ad (atomically, see Run.update_result) and drop the cached
    copies, so every page reads the new file."""
    run.update_result(edit)
    _load_result.clear()
    _de_groups.clear()
    _de_cells.clear()
