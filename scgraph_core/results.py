"""What a run hands back and where it lives in the AnnData.

:class:`Result` holds everything a run produced (embeddings, clusters, imputed values, attention, gene
weights, tables, metrics) and writes it into the AnnData in slots scanpy and cellxgene read: ``obsm``
embeddings, ``obs`` clusters, ``layers`` imputed values, ``varm`` gene weights, ``obsp`` attention,
``uns`` everything else. ``uns["scgraph"]["views"]`` (:data:`VIEW_KEYS`) says where each kind of result
lives, so readers show any model's result without knowing the model. :func:`match_input` puts back the
cells and genes that preparation set aside, so a result lines up with the file it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ConfigError

if TYPE_CHECKING:
    import anndata

    from .data import Prepared

# The result manifest: ``adata.uns["scgraph"]["views"]`` says where each kind of result lives, so the
# app and other readers show any model's result without knowing the model. Every key is optional except
# ``model`` and ``embedding`` (filled in by :meth:`Result.write`).
VIEW_KEYS: dict[str, str] = {
    "model": "the model's registry name (also the uns key of its own results: uns[model])",
    "embedding": "obsm key of the latent embedding, e.g. 'X_cellvgae'",
    "umap": "obsm key of the 2-D layout drawn on the embedding pages, e.g. 'X_umap'",
    "clusters": "obs key of the reported (label-free) clustering; categorical strings, 'noise' for noise",
    "other_clusters": "list of obs keys of alternative clusterings (e.g. Leiden)",
    "predictions": "obs key of predicted cell types (supervised models)",
    "probabilities": "obsm key of per-class or per-cluster soft assignments [N, C]",
    "probability_names": "list naming the columns of the probabilities matrix",
    "attention": (
        "dict name -> {'obsp' (sparse N x N, row = target cell, column = source cell, mean over heads), "
        "'obsp_std' (std over heads; optional), 'heads', 'kind' ('graph' for attention over graph edges, "
        "'fusion' for the strongest cell-to-cell attention pairs), 'node_obs' (obs key of the node-level "
        "overlay; optional)}; per-head values live in uns[model]['attention'][name] as "
        "{'edge_index' [2, E] (source, target), 'alpha' [E, heads]}"
    ),
    "attention_layers": "list of the attention names in display order (h5ad does not keep dict order)",
    "gene_weights": "dict {'P_mu': varm key, 'P_sigma': varm key}: genes x latent dims (NaN for non-feature genes)",
    "marker_table": "name of the marker-gene table in uns[model] (columns cluster, gene, appearances, score)",
    "imputed_layer": "layers key of the imputed / denoised expression (same genes and cells as X)",
    "imputed_scale": "what the imputed layer holds, e.g. 'counts' (expected counts) or 'lognorm'",
    "history": "name of the per-epoch training table in uns[model]",
}


@dataclass
class Result:
    """Everything a trained model hands back, ready to be written into an AnnData.

    ``views`` fills the manifest described by :data:`VIEW_KEYS` (``uns["scgraph"]["views"]``).
    """

    model: str
    embedding_key: str
    obs: dict[str, Any] = field(default_factory=dict)
    obsm: dict[str, np.ndarray] = field(default_factory=dict)
    obsp: dict[str, Any] = field(default_factory=dict)
    varm: dict[str, np.ndarray] = field(default_factory=dict)
    var: dict[str, Any] = field(default_factory=dict)  # per-gene columns, aligned with the written genes
    layers: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)  # the trained state_dict (tensors)
    views: dict[str, Any] = field(default_factory=dict)  # where each kind of result lives (see VIEW_KEYS)

    @property
    def embedding(self) -> np.ndarray:
        return self.obsm[self.embedding_key]

    def write(self, adata: anndata.AnnData, *, key_added: str | None = None) -> anndata.AnnData:
        """Write the result into ``adata`` in place and return it.

        ``key_added`` (scanpy's habit) writes every slot under that name instead of the model's: keys
        that start with the model's name (``cellvgae_cluster``, ``X_cellvgae``, ``uns['cellvgae']``)
        take ``key_added`` in its place, and model-neutral keys (``X_umap``, ``P_mu``, ``imputed``) get
        ``_<key_added>`` appended, so two runs can live in one AnnData. The views manifest follows.
        """
        result = self if key_added is None else self.renamed(key_added)
        for key, value in result.obs.items():
            adata.obs[key] = value
        for key, value in result.obsm.items():
            adata.obsm[key] = value
        for key, value in result.obsp.items():
            adata.obsp[key] = value
        for key, value in result.varm.items():
            adata.varm[key] = value
        for key, value in result.var.items():
            adata.var[key] = value
        for key, value in result.layers.items():
            adata.layers[key] = value
        uns = dict(result.uns)
        uns["metrics"] = plain(result.metrics)
        for name, table in result.tables.items():
            uns[name] = h5_safe_table(table)
        name = key_added or result.model
        adata.uns[name] = uns
        scgraph = dict(adata.uns.get("scgraph", {}))
        views = {"model": result.model, "embedding": result.embedding_key, **result.views}
        if key_added is not None:
            views["uns_key"] = key_added
            scgraph.setdefault("views_by_key", {})[key_added] = plain(views)
        else:
            scgraph["views"] = plain(views)
        adata.uns["scgraph"] = scgraph
        return adata

    def renamed(self, key_added: str) -> Result:
        """A copy whose slot keys use ``key_added`` instead of the model's name (see :meth:`write`)."""
        if not key_added or not str(key_added).replace("_", "").isalnum():
            raise ConfigError(f"key_added must be letters, digits and underscores; got {key_added!r}.")
        model = self.model

        def rename(key: str) -> str:
            if key.startswith(f"X_{model}"):
                return f"X_{key_added}{key[len(model) + 2 :]}"
            if key.startswith(model):
                return f"{key_added}{key[len(model) :]}"
            return f"{key}_{key_added}"

        def rename_views(value: Any, slot_keys: set[str]) -> Any:
            if isinstance(value, dict):
                return {k: rename_views(v, slot_keys) for k, v in value.items()}
            if isinstance(value, list):
                return [rename_views(v, slot_keys) for v in value]
            if isinstance(value, str) and value in slot_keys:
                return rename(value)
            return value

        slots = {*self.obs, *self.obsm, *self.obsp, *self.varm, *self.var, *self.layers}
        views = {
            k: (v if k in ("model", "probability_names", "imputed_scale") else rename_views(v, slots))
            for k, v in self.views.items()
        }
        return Result(
            model=self.model,
            embedding_key=rename(self.embedding_key),
            obs={rename(k): v for k, v in self.obs.items()},
            obsm={rename(k): v for k, v in self.obsm.items()},
            obsp={rename(k): v for k, v in self.obsp.items()},
            varm={rename(k): v for k, v in self.varm.items()},
            var={rename(k): v for k, v in self.var.items()},
            layers={rename(k): v for k, v in self.layers.items()},
            uns=dict(self.uns),
            tables=dict(self.tables),
            metrics=dict(self.metrics),
            weights=self.weights,
            views=views,
        )


def h5_safe_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy h5ad can store: list cells become 'a; b' text, other mixed columns become text."""
    out = table.reset_index(drop=True).copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = [
                "; ".join(map(str, v))
                if isinstance(v, (list, tuple, np.ndarray))
                else ("" if v is None else str(v))
                for v in out[col]
            ]
    out.columns = [str(c) for c in out.columns]
    return out


# HDF5 reads "/" in a name as a path: a key such as the cell type "CD4+/CD45RA+" would be written as a
# group "CD4+" holding "CD45RA+". Keys get the look-alike division slash instead (metrics.json keeps "/").
_H5_SLASH = "\u2215"


def plain(obj: Any) -> Any:
    """Make a nested structure writable by h5py (no None, no tuples, numpy scalars to Python, no "/" in
    keys: it becomes the look-alike U+2215, since HDF5 would read it as a path)."""
    if isinstance(obj, dict):
        return {str(k).replace("/", _H5_SLASH): plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# =============================================================================================
# Input order: the written result keeps every input cell and gene
# =============================================================================================


def _reindex_frame(frame: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    out = frame.reindex(index)
    for col in out.columns:
        src = frame[col]
        if src.dtype == bool:
            out[col] = out[col].eq(True)  # cells/genes added back: False
        elif isinstance(src.dtype, pd.CategoricalDtype):
            out[col] = pd.Categorical(out[col], categories=src.cat.categories)
    return out


def _expand_rows(value: Any, rows: np.ndarray, n: int) -> Any:
    """Rows placed at ``rows`` of an n-row array (NaN elsewhere; sparse matrices: empty rows)."""
    if sp.issparse(value):
        value = sp.csr_matrix(value)
        pick = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n, value.shape[0]))
        return (pick @ value).tocsr()
    if isinstance(value, pd.DataFrame):
        full = value.iloc[:0].reindex(range(n))
        full.iloc[rows] = value.to_numpy()
        return full
    value = np.asarray(value)
    dtype = value.dtype if np.issubdtype(value.dtype, np.floating) else np.float64
    full = np.full((n, *value.shape[1:]), np.nan, dtype=dtype)
    full[rows] = value
    return full


def match_input(
    out: anndata.AnnData, source: anndata.AnnData, prepared: Prepared, *, model: str, imputed_layer: str
) -> anndata.AnnData:
    """The result on every input cell and gene, in the input's order (the output contract, issue 5).

    ``data.prepare`` drops cells and genes without counts before training. This puts them back:
    ``layers['counts']`` is the input's raw counts; ``layers[imputed_layer]`` holds the model's values for
    the modelled entries and the observed counts elsewhere (0 for dropped all-zero cells and genes);
    X and ``layers['lognorm']`` are log1p(x · target_sum / total) with the totals ``prepare`` used
    (identical to the prepared values on the modelled entries); obs / var ``<model>_modelled`` mark what
    was modelled; embeddings and other per-cell results are NaN (or missing) for cells that were not.
    """
    import anndata as ad

    if out.n_obs == source.n_obs and out.n_vars == source.n_vars:
        out.obs[f"{model}_modelled"] = True
        out.var[f"{model}_modelled"] = True
        return out
    counts_from = prepared.record.get("counts_source")
    full_counts = source.layers["counts"] if counts_from == "counts layer" else source.X
    full_counts = sp.csr_matrix(full_counts, dtype=np.float32)
    rows = source.obs_names.get_indexer(out.obs_names)
    cols = source.var_names.get_indexer(out.var_names)
    if (rows < 0).any() or (cols < 0).any():  # pragma: no cover - prepare keeps the input's names
        raise RuntimeError("prepared cells or genes are missing from the input")
    n, g = source.shape

    # Log-normalised values everywhere, with the per-cell totals prepare used on the kept cells.
    target = float(prepared.record["spec"].get("target_sum", 1e4))
    totals = np.asarray(full_counts.sum(axis=1)).ravel().astype(np.float64)
    kept_counts = sp.csr_matrix(out.layers["counts"])
    totals[rows] = np.asarray(kept_counts.sum(axis=1)).ravel()
    factor = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
    lognorm = sp.diags(factor.astype(np.float32)) @ full_counts
    lognorm = sp.csr_matrix(lognorm, dtype=np.float32)
    np.log1p(lognorm.data, out=lognorm.data)

    imputed = full_counts.toarray()
    kept = out.layers[imputed_layer]
    imputed[np.ix_(rows, cols)] = kept.toarray() if sp.issparse(kept) else np.asarray(kept)

    obs = _reindex_frame(out.obs, source.obs_names)
    for col in source.obs.columns:
        if col not in obs:
            obs[col] = source.obs[col]
    obs[f"{model}_modelled"] = np.isin(np.arange(n), rows)
    var = _reindex_frame(out.var, source.var_names)
    for col in source.var.columns:
        if col not in var:
            var[col] = source.var[col]
    var[f"{model}_modelled"] = np.isin(np.arange(g), cols)
    full = ad.AnnData(
        X=lognorm.copy(),
        obs=obs,
        var=var,
        layers={"counts": full_counts, "lognorm": lognorm, imputed_layer: imputed.astype(np.float32)},
        obsm={k: _expand_rows(v, rows, n) for k, v in out.obsm.items()},
        varm={k: _expand_rows(v, cols, g) for k, v in out.varm.items()},
        uns=dict(out.uns),
    )
    for key, value in out.layers.items():  # other per-entry results (e.g. the dropout probability): 0 outside
        if key not in full.layers:
            layer = np.zeros((n, g), dtype=np.float32)
            layer[np.ix_(rows, cols)] = value.toarray() if sp.issparse(value) else np.asarray(value)
            full.layers[key] = layer
    for key, value in out.obsp.items():
        m = _expand_rows(value, rows, n)
        full.obsp[key] = _expand_rows(sp.csr_matrix(m).T, rows, n).T.tocsr()
    return full
