"""What the Annotate page shows about labels and a label-learning run (scBiGNN), computed here so the page
holds no science: labelled cells per type, which cells were trained on / held out / unlabelled, the
confusion matrix on held-out cells, the cells the model is least sure of, the genes that mark each
predicted type, and how the predicted types meet another run's clusters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError
from .labels import LabelSpec
from .metrics import clustering_metrics

ROLES = ("trained on", "held out", "unlabelled")


def label_table(obs: pd.DataFrame, spec: LabelSpec) -> pd.DataFrame:
    """Labelled cells per type (most first), with a last row counting the unlabelled cells."""
    values = spec.values(obs)
    counts = values.value_counts(dropna=True)
    table = pd.DataFrame({"type": counts.index.astype(str), "cells": counts.to_numpy(dtype=int)})
    unlabelled = int(values.isna().sum())
    return pd.concat(
        [table, pd.DataFrame({"type": ["(unlabelled)"], "cells": [unlabelled]})], ignore_index=True
    )


def label_spec_of(adata: Any) -> LabelSpec:
    """The LabelSpec a run trained with, from the configuration stored in its result."""
    from .params import from_dict

    labels = (adata.uns.get("scgraph", {}).get("config", {}) or {}).get("labels")
    if not labels:
        raise ConfigError("This run did not learn from labels (no label settings in its configuration).")
    return from_dict(LabelSpec, dict(labels), where="labels.")


def roles(adata: Any) -> np.ndarray:
    """Per cell: 'trained on', 'held out' or 'unlabelled' (the split the run used, recomputed: it is seeded)."""
    spec = label_spec_of(adata)
    train, held = spec.split(adata.obs)
    out = np.full(adata.n_obs, ROLES[2], dtype=object)
    out[train] = ROLES[0]
    out[held] = ROLES[1]
    return out


def _prediction_key(adata: Any) -> str:
    views = adata.uns.get("scgraph", {}).get("views", {})
    key = views.get("predictions")
    if not key or key not in adata.obs:
        raise ConfigError("This run has no predictions (train a label-learning model such as scBiGNN).")
    return str(key)


def confusion(adata: Any) -> pd.DataFrame:
    """Held-out cells: rows the known type, columns the predicted type (counts); empty without a hold-out."""
    spec = label_spec_of(adata)
    held = roles(adata) == ROLES[1]
    truth = spec.values(adata.obs).to_numpy(dtype=object)[held]
    pred = adata.obs[_prediction_key(adata)].astype(str).to_numpy()[held]
    if not held.any():
        return pd.DataFrame()
    table = pd.crosstab(pd.Series(truth, name="known type"), pd.Series(pred, name="predicted type"))
    names = sorted(set(table.index) | set(table.columns), key=str)
    return table.reindex(index=[n for n in names if n in table.index], columns=names, fill_value=0)


def least_sure(adata: Any, n: int = 20) -> pd.DataFrame:
    """The ``n`` cells with the lowest confidence: prediction, confidence, the runner-up type and its
    probability, and the cell's role."""
    views = adata.uns.get("scgraph", {}).get("views", {})
    key = _prediction_key(adata)
    proba = np.asarray(adata.obsm[views["probabilities"]], dtype=np.float64)
    names = np.asarray(views["probability_names"], dtype=object)
    order = np.argsort(-proba, axis=1)
    top, second = proba[np.arange(len(proba)), order[:, 0]], proba[np.arange(len(proba)), order[:, 1]]
    pick = np.argsort(top, kind="stable")[: int(n)]
    return pd.DataFrame(
        {
            "cell": adata.obs_names.to_numpy()[pick],
            "predicted": adata.obs[key].astype(str).to_numpy()[pick],
            "confidence": top[pick],
            "runner-up": names[order[pick, 1]],
            "runner-up probability": second[pick],
            "role": roles(adata)[pick],
        }
    )


def genes_per_type(adata: Any, *, n_genes: int = 5, pool: int = 50, layer: str | None = None) -> pd.DataFrame:
    """For each predicted type, the genes among the run's ``pool`` most important (gene importance table)
    that are most raised in that type against the other cells (mean of the values in X or ``layer``)."""
    import scipy.sparse as sp

    uns = adata.uns.get("scbignn", {})
    importance = uns.get("gene_importance")
    if importance is None or len(importance) == 0:
        raise ConfigError("This run has no gene importance table.")
    genes = [g for g in pd.DataFrame(importance)["gene"].astype(str).head(pool) if g in adata.var_names]
    if not genes:
        return pd.DataFrame(columns=["type", "gene", "difference"])
    cols = adata.var_names.get_indexer(genes)
    X = adata.layers[layer] if layer else adata.X
    X = X[:, cols]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    pred = adata.obs[_prediction_key(adata)].astype(str).to_numpy()
    rows = []
    for t in sorted(pd.unique(pred), key=str):
        inside = pred == t
        if inside.all() or not inside.any():
            continue
        diff = X[inside].mean(axis=0) - X[~inside].mean(axis=0)
        for j in np.argsort(-diff)[:n_genes]:
            rows.append({"type": t, "gene": genes[j], "difference": float(diff[j])})
    return pd.DataFrame(rows)


def compare_with_clusters(adata: Any, other: Any, cluster_key: str) -> tuple[pd.DataFrame, float, int]:
    """Cells per (predicted type, cluster of ``other``) over the cells both runs hold (matched by name),
    the ARI between the two partitions, and the number of cells compared."""
    pred = adata.obs[_prediction_key(adata)].astype(str)
    if cluster_key not in other.obs:
        raise ConfigError(f"The other run has no column {cluster_key!r}.")
    common = pred.index.intersection(other.obs_names)
    if len(common) < 2:
        raise ConfigError("The two runs share no cells; compare runs made on the same data.")
    p = pred.loc[common].rename("predicted type")
    c = other.obs.loc[common, cluster_key].astype(str).rename("cluster")
    ari = clustering_metrics(p.to_numpy(), c.to_numpy())["ari"]
    return pd.crosstab(p, c), float(ari), len(common)
