"""Which marker genes a result shows: the run's own P_mu table or markers recomputed from its gene weights.

The Markers page asks this module, so the choice of genes (the run's setting for how many genes per latent
dimension, the stored table when it answers the question, the clusters and their order, the genes a
scanpy comparison ranks) is made by the engine, not by the page.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import interpret, params

__all__ = [
    "MARKER_COLUMNS",
    "cluster_markers",
    "cluster_order",
    "genes_per_dimension",
    "reference_genes",
]

#: Columns of every marker table (the stored one and the recomputed one).
MARKER_COLUMNS = ["cluster", "gene", "appearances", "score", "dimensions"]
#: The cluster name clustering gives cells it leaves out (HDBSCAN noise); never a cluster with markers.
NOISE = "noise"


def _natural_key(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text)))


def cluster_order(names: Any) -> list[str]:
    """Cluster names as text in natural order ("2" before "10"), without noise."""
    return sorted({str(n) for n in names} - {NOISE}, key=_natural_key)


def genes_per_dimension(config: Mapping[str, Any] | None, model: str | None = None) -> int:
    """How many top genes per latent dimension the run kept for its marker table: its ``marker_genes``
    setting, else the model's default, else :func:`interpret.top_genes`' own default (a model without the
    setting)."""
    from .errors import ConfigError
    from .models import base

    fallback = int(inspect.signature(interpret.top_genes).parameters["n_genes"].default)
    name = model or (config or {}).get("model")
    if not name:
        return fallback
    try:
        schema = base.get(str(name)).Params
    except ConfigError:  # a model this installation does not have
        return fallback
    if "marker_genes" not in base.fields_of(schema):
        return fallback
    value = ((config or {}).get("model_params") or {}).get("marker_genes")
    return int(value) if value is not None else int(params.info_of(schema, "marker_genes").default)


def cluster_markers(
    adata: Any, which: str = "P_mu", n_genes: int | None = None, *, config: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Marker genes per cluster read off the gene weights ``which`` (P_mu or P_sigma, MODELS.md 1.6), on the
    result's reported clusters.

    The run's stored table answers when it is the same question (P_mu, ``n_genes`` equal to the run's
    ``marker_genes``); otherwise the markers are computed again with :func:`interpret.top_genes`. The
    ``cluster`` column holds text. Empty (with :data:`MARKER_COLUMNS`) when the result has no such weights
    or no clusters.
    """
    views = interpret.result_views(adata)
    kept = genes_per_dimension(config, views.get("model"))
    n = int(n_genes) if n_genes is not None else kept
    stored_name = views.get("marker_table")
    if which == "P_mu" and stored_name and n == kept:
        stored = (adata.uns.get(views.get("model", ""), {}) or {}).get(stored_name)
        if stored is not None:
            table = pd.DataFrame(stored)
            return table.assign(cluster=table["cluster"].astype(str)) if len(table) else table
    found = interpret.gene_weight_matrix(adata, which)
    clusters_key = views.get("clusters")
    if found is None or clusters_key not in adata.obs:
        return pd.DataFrame(columns=MARKER_COLUMNS)
    labels = adata.obs[clusters_key].astype(str).to_numpy()
    names = cluster_order(labels)
    code_of = {name: i for i, name in enumerate(names)}
    codes = np.array([code_of.get(v, -1) for v in labels], dtype=np.int64)
    emb = np.asarray(adata.obsm[views["embedding"]])
    table = interpret.top_genes(found[0], found[1], emb, codes, n_genes=n)
    table["cluster"] = [names[int(c)] for c in table["cluster"]]
    return table


def reference_genes(adata: Any, feature_only: bool) -> list[str] | None:
    """The genes a scanpy ``rank_genes_groups`` comparison ranks: the model's input genes (those with P_mu
    weights) when ``feature_only``, so both lists choose from the same genes; else None (every gene)."""
    if not feature_only:
        return None
    found = interpret.gene_weight_matrix(adata, "P_mu")
    return found[1] if found is not None else None
