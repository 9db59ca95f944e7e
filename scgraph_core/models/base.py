"""What every model provides, and the result object that every model returns.

A model is a subclass of :class:`Model` registered with :func:`register`. It declares its parameter
schema (``Params``), named presets covering preprocessing, graph, model and training settings, and
``fit()``, which trains with the shared :class:`~scgraph_core.train.Trainer` and returns a
:class:`Result`. The result is written into the AnnData (``Result.write``) in slots scanpy and
cellxgene read: ``obsm`` embeddings, ``obs`` clusters, ``layers`` imputed values, ``varm`` gene
weights, ``obsp`` attention, ``uns`` everything else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError

if TYPE_CHECKING:
    import anndata

    from ..data import Prepared
    from ..graphs import Graph
    from ..train import Trainer


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
    layers: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)  # the trained state_dict (tensors)
    views: dict[str, Any] = field(default_factory=dict)  # where each kind of result lives (see VIEW_KEYS)

    @property
    def embedding(self) -> np.ndarray:
        return self.obsm[self.embedding_key]

    def write(self, adata: anndata.AnnData) -> anndata.AnnData:
        """Write the result into ``adata`` in place and return it."""
        for key, value in self.obs.items():
            adata.obs[key] = value
        for key, value in self.obsm.items():
            adata.obsm[key] = value
        for key, value in self.obsp.items():
            adata.obsp[key] = value
        for key, value in self.varm.items():
            adata.varm[key] = value
        for key, value in self.layers.items():
            adata.layers[key] = value
        uns = dict(self.uns)
        uns["metrics"] = plain(self.metrics)
        for name, table in self.tables.items():
            uns[name] = h5_safe_table(table)
        adata.uns[self.model] = uns
        scgraph = dict(adata.uns.get("scgraph", {}))
        scgraph["views"] = plain({"model": self.model, "embedding": self.embedding_key, **self.views})
        adata.uns["scgraph"] = scgraph
        return adata


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


def plain(obj: Any) -> Any:
    """Make a nested structure writable by h5py (no None, no tuples, numpy scalars to Python)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class Model:
    """Base class: subclasses set the class attributes and implement ``fit``."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]  # one plain-language line for the model picker
    paper: ClassVar[str]
    Params: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]]  # preset -> section -> values
    requires_counts: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = False

    @classmethod
    def adapt(cls, config: Any, adata: anndata.AnnData) -> tuple[Any, str | None]:
        """The run configuration adapted to the input (e.g. the data recipe for its number of genes), and a
        sentence saying what changed and why; (config, None) when nothing changes. The default changes nothing."""
        return config, None

    def fit(
        self,
        prepared: Prepared,
        graph: Graph,
        params: Any,
        trainer: Trainer,
        *,
        cluster: Any,
        label_key: str | None = None,
    ) -> Result:
        raise NotImplementedError


_REGISTRY: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    _REGISTRY[cls.name] = cls
    return cls


# Model modules, in the order the app lists them. A module that is not written yet is skipped, so a new
# model is one new file plus its name here.
MODEL_MODULES = ("cellvgae", "scvgae", "attentionae", "scgnn", "scbignn")


def available() -> dict[str, type[Model]]:
    import importlib

    for module in MODEL_MODULES:
        try:
            importlib.import_module(f"{__package__}.{module}")  # registers itself
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise
    return dict(_REGISTRY)


def get(name: str) -> type[Model]:
    models = available()
    if name not in models:
        raise ConfigError(f"Unknown model {name!r}; available models: {', '.join(sorted(models))}.")
    return models[name]


def fields_of(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}
