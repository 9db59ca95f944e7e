"""Which marker genes a result shows (scgraph_core.markers): the run's table or recomputed ones."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from scgraph_core import interpret, markers, params
from scgraph_core.models import base


def _result(n_cells: int = 60, n_genes: int = 12, latent: int = 4, *, stored: bool = True) -> ad.AnnData:
    rng = np.random.default_rng(0)
    clusters = np.array(["0", "1", "10", "noise"])[np.arange(n_cells) % 4]
    emb = rng.normal(size=(n_cells, latent))
    for i, name in enumerate(("0", "1", "10")):  # each cluster drives its own dimension
        emb[clusters == name, i] += 6.0
    adata = ad.AnnData(rng.random((n_cells, n_genes)).astype(np.float32))
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs["clusters"] = pd.Categorical(clusters)
    adata.obsm["X_model"] = emb
    p_mu = rng.normal(size=(n_genes, latent))
    p_mu[-1] = np.nan  # a gene that was not a model input
    adata.varm["P_mu"] = p_mu
    views = {
        "model": "cellvgae",
        "embedding": "X_model",
        "clusters": "clusters",
        "gene_weights": {"P_mu": "P_mu"},
    }
    if stored:
        views["marker_table"] = "marker_genes"
        table = pd.DataFrame(
            {"cluster": [1], "gene": ["STORED"], "appearances": [1], "score": [1.0], "dimensions": ["0"]}
        )
        adata.uns["cellvgae"] = {"marker_genes": table.to_dict(orient="list")}
    adata.uns["scgraph"] = {"views": views}
    return adata


def test_cluster_order_is_natural_and_leaves_noise_out():
    assert markers.cluster_order(["10", "2", "noise", "1", 2]) == ["1", "2", "10"]


def test_genes_per_dimension_reads_the_run_else_the_models_default():
    default = params.info_of(base.get("cellvgae").Params, "marker_genes").default
    assert markers.genes_per_dimension({"model": "cellvgae", "model_params": {"marker_genes": 9}}) == 9
    assert markers.genes_per_dimension({"model": "cellvgae"}) == default
    assert markers.genes_per_dimension(None, "cellvgae") == default
    assert markers.genes_per_dimension({"model": "no-such-model"}) == default  # interpret.top_genes' default


def test_the_stored_table_answers_the_same_question_only():
    adata = _result()
    config = {"model": "cellvgae", "model_params": {"marker_genes": 5}}
    table = markers.cluster_markers(adata, "P_mu", 5, config=config)
    assert list(table["gene"]) == ["STORED"] and table["cluster"].tolist() == ["1"]  # text clusters
    again = markers.cluster_markers(adata, "P_mu", 6, config=config)  # another count: recomputed
    assert "STORED" not in set(again["gene"]) and list(again.columns) == markers.MARKER_COLUMNS
    assert set(again["cluster"]) <= {"0", "1", "10"}
    weights, genes = interpret.gene_weight_matrix(adata, "P_mu")
    codes = np.array([{"0": 0, "1": 1, "10": 2}.get(c, -1) for c in adata.obs["clusters"].astype(str)])
    expected = interpret.top_genes(weights, genes, adata.obsm["X_model"], codes, n_genes=6)
    assert list(again["gene"]) == list(expected["gene"])


def test_without_weights_or_clusters_the_table_is_empty():
    adata = _result(stored=False)
    del adata.obs["clusters"]
    table = markers.cluster_markers(adata, "P_mu", 5)
    assert table.empty and list(table.columns) == markers.MARKER_COLUMNS
    assert markers.cluster_markers(_result(stored=False), "P_sigma", 5).empty


def test_reference_genes_are_the_model_inputs_when_asked():
    adata = _result()
    assert markers.reference_genes(adata, False) is None
    assert markers.reference_genes(adata, True) == [f"G{i}" for i in range(11)]  # G11 has no weights
