"""Reading a trained graph autoencoder: attention summaries, P_mu gene weights, top genes, learnt expression.

* :mod:`.attention`: attention arrays (edge-indexed: ``edge_index`` [2, E], row 0 source j, row 1
  target i, self loops included, and ``alpha`` [E, K], one column per head) summarised per node, per
  head and as top edges; a result's attention maps, edges and hubs for the app's explore pages.
* :mod:`.genes`: the linear surrogate P (:func:`p_matrix`), top genes per latent dimension and per
  cluster, learnt expression; a result's gene-weight matrix, marker rankings and their overlap, and
  the genes an imputation view opens on.
* :mod:`.views`: a result's views manifest (``uns["scgraph"]["views"]``) as a plain dict.

The array helpers work on NumPy arrays exported from a model (CellVGAE: ``CellVGAENet.attention`` and
``CellVGAENet.gene_weights`` or the projection weights themselves), following MODELS.md section 1.6.
The names below are re-exported here, so ``from scgraph_core.interpret import p_matrix`` works as
before the split.
"""

from __future__ import annotations

from .attention import (
    NODE_ATTENTION_MODES,
    AttentionMap,
    attention_edges,
    attention_hubs,
    attention_map,
    attention_statistic,
    head_summary,
    node_attention,
    top_edges,
)
from .genes import (
    dimension_appearances,
    expression_agreement,
    gene_weight_matrix,
    imputed_start_genes,
    latent_participation,
    learnt_expression,
    learnt_expression_agreement,
    marker_overlap,
    p_matrix,
    rank_genes_markers,
    top_genes,
    top_genes_per_dimension,
)
from .views import result_views

__all__ = [
    "NODE_ATTENTION_MODES",
    # Reading a result through its views manifest (the app's explore pages)
    "AttentionMap",
    "attention_edges",
    "attention_hubs",
    "attention_map",
    "attention_statistic",
    "dimension_appearances",
    "expression_agreement",
    "gene_weight_matrix",
    "head_summary",
    "imputed_start_genes",
    "latent_participation",
    "learnt_expression",
    "learnt_expression_agreement",
    "marker_overlap",
    "node_attention",
    "p_matrix",
    "rank_genes_markers",
    "result_views",
    "top_edges",
    "top_genes",
    "top_genes_per_dimension",
]
