"""What every model provides.

A model is a subclass of :class:`Model` registered with :func:`register`, in its own folder
``scgraph_core/models/<name>/`` (``module.py``: the pure ``nn.Module``, tensors in and tensors out;
``model.py``: parameters, presets, training, and what the trained model exposes). A model only trains
and answers questions about what it learnt; :mod:`scgraph_core.analyse` does everything after training
the same way for every model (layout, clusters, metrics, attention and gene-weight export, the views
manifest), and :mod:`scgraph_core.results` writes it.

The pipeline calls, in order: :meth:`Model.adapt`, :meth:`Model.preprocess`, :meth:`Model.build_graph`,
:meth:`Model.train`, then the analysis reads :meth:`Model.embed` and the optional answers
(:meth:`Model.clusters`, :meth:`Model.impute`, :meth:`Model.predict_proba`, :meth:`Model.attention`,
:meth:`Model.gene_weights`) and adds :meth:`Model.report`. Every hook is declared here with its
default, so nothing is looked up by ``getattr``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..results import VIEW_KEYS, Result, h5_safe_table, plain

if TYPE_CHECKING:
    import anndata

    from ..cluster import ClusterParams
    from ..data import Prepared, PrepareSpec
    from ..graphs import Graph
    from ..labels import LabelSpec
    from ..train import Trainer

__all__ = [
    "VIEW_KEYS",
    "AttentionMap",
    "Embedding",
    "GeneWeights",
    "Imputed",
    "Model",
    "Partition",
    "Probabilities",
    "Report",
    "Result",
    "available",
    "get",
    "h5_safe_table",
    "plain",
    "register",
]


@dataclass
class Embedding:
    """The trained model's cell embedding.

    ``space`` is what the analysis lays out and clusters when that is not the embedding itself (scVGAE:
    principal components of the imputed matrix), written to ``obsm[space_key]``; ``extra`` holds more
    per-cell matrices to keep (e.g. CellVGAE's log-σ).
    """

    key: str
    values: np.ndarray
    space: np.ndarray | None = None
    space_key: str | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def analysed(self) -> np.ndarray:
        return self.values if self.space is None else self.space


@dataclass
class Partition:
    """A model's own clustering (e.g. AttentionAE-sc's DEC): labels 0..C-1 (-1 noise), soft assignments."""

    labels: np.ndarray
    method: str
    probabilities: np.ndarray | None = None
    probability_key: str | None = None


@dataclass
class Probabilities:
    """Per-class probabilities of a supervised model [N, C] with the class names."""

    values: np.ndarray
    classes: list[str]
    key: str


@dataclass
class AttentionMap:
    """One attention layer: ``edge_index`` [2, E] (source, target) and ``alpha`` [E, heads].

    ``kind`` is "graph" (attention over the cell graph's edges) or "fusion" (the strongest cell-to-cell
    pairs of a dense attention). ``node_values`` maps an obs-key suffix to a per-cell summary (the suffix
    "" is the node overlay); ``uns_extra`` and ``view_extra`` are stored beside the layer; ``top_edges``
    > 0 adds that many strongest edges to the ``attention_top_edges`` table.
    """

    name: str
    edge_index: np.ndarray
    alpha: np.ndarray
    kind: str = "graph"
    node_values: dict[str, np.ndarray] = field(default_factory=dict)
    uns_extra: dict[str, Any] = field(default_factory=dict)
    view_extra: dict[str, Any] = field(default_factory=dict)
    top_edges: int = 0


@dataclass
class GeneWeights:
    """Genes x latent-dimension weights (P_mu, P_sigma; MODELS.md 1.6) over the model's feature genes."""

    p_mu: np.ndarray
    p_sigma: np.ndarray | None
    feature_genes: list[str]
    n_markers: int = 15


@dataclass
class Imputed:
    """Imputed or denoised expression for the prepared cells and genes."""

    values: np.ndarray
    layer: str
    scale: str
    extra_layers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """What only this model knows, added to the shared analysis (any slot may be empty)."""

    obs: dict[str, Any] = field(default_factory=dict)
    obsm: dict[str, Any] = field(default_factory=dict)
    obsp: dict[str, Any] = field(default_factory=dict)
    var: dict[str, pd.Series] = field(default_factory=dict)  # per gene, indexed by gene name (others: NaN)
    uns: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    other_clusters: list[str] = field(default_factory=list)


class Model:
    """Base class: subclasses set the class attributes, :meth:`train` and :meth:`embed`; the other hooks
    are optional answers with a default of "none"."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]  # one plain-language line for the model picker
    paper: ClassVar[str]
    Params: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]]  # preset -> section -> values
    requires_counts: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = False  # trains on labels (LabelSpec); scoring labels are separate
    keeps_input: ClassVar[bool] = False  # the written result holds every input cell and gene (match_input)
    # Overrides of the quick preset (section -> values) for a seconds-long run on ~150 toy cells: what the
    # contract test (tests/models/test_contract.py) and the app tests train.
    smoke: ClassVar[dict[str, dict[str, Any]]] = {}

    # --- before training ----------------------------------------------------------------------------
    @classmethod
    def adapt(cls, config: Any, adata: anndata.AnnData) -> tuple[Any, str | None]:
        """The run configuration adapted to the input (e.g. the data recipe for its number of genes), and a
        sentence saying what changed and why; (config, None) when nothing changes. The default changes nothing."""
        return config, None

    def preprocess(self, adata: anndata.AnnData, spec: PrepareSpec) -> Prepared:
        """The prepared data the model trains on; the default is :func:`scgraph_core.data.prepare`."""
        from .. import data

        return data.prepare(adata, spec)

    def build_graph(self, prepared: Prepared, config: Any) -> Graph | None:
        """The cell graph, when the model builds its own; None: the pipeline builds it from config.graph."""
        return None

    # --- training -----------------------------------------------------------------------------------
    def train(
        self,
        prepared: Prepared,
        graph: Graph,
        params: Any,
        trainer: Trainer,
        *,
        cluster: ClusterParams,
        labels: LabelSpec | None = None,
    ) -> None:
        """Train with ``trainer`` (one or more stages) and keep what the answers below need. ``cluster`` is
        the run's clustering settings (a model that clusters while training reads them); ``labels`` says
        which cells' labels a model that learns from labels may see (never the scoring labels)."""
        raise NotImplementedError

    # --- what the trained model exposes -------------------------------------------------------------
    def embed(self) -> Embedding:
        """The cell embedding (required)."""
        raise NotImplementedError

    def clusters(self) -> Partition | None:
        """The model's own clustering; None: the analysis clusters the embedding (config.cluster)."""
        return None

    def cluster_key(self, method: str) -> str:
        """obs key of the reported clustering."""
        return f"{self.name}_cluster"

    def impute(self) -> Imputed | None:
        return None

    def predict_proba(self) -> Probabilities | None:
        return None

    def attention(self) -> list[AttentionMap]:
        return []

    def gene_weights(self) -> GeneWeights | None:
        return None

    def training_metrics(self) -> dict[str, Any]:
        """Numbers about training (epochs run, best epoch, seconds per epoch, validation scores)."""
        return {}

    def history(self) -> pd.DataFrame | None:
        """The per-epoch training table."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The trained weights (tensors) saved with the run."""
        return {}

    def report(self, analysis: Any) -> Report:
        """What only this model adds once the shared analysis (:class:`scgraph_core.analyse.Analysis`) is
        done: extra clusterings, notes, model-specific metrics."""
        return Report()

    def match_input(
        self, out: anndata.AnnData, source: anndata.AnnData, prepared: Prepared
    ) -> anndata.AnnData:
        """The written result lined up with the input file (:attr:`keeps_input` models)."""
        if not self.keeps_input:
            return out
        from ..results import match_input

        views = out.uns.get("scgraph", {}).get("views", {})
        return match_input(
            out, source, prepared, model=self.name, imputed_layer=views.get("imputed_layer", "imputed")
        )


_REGISTRY: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    _REGISTRY[cls.name] = cls
    return cls


# Model packages (scgraph_core/models/<name>/), in the order the app lists them. One that is not written
# yet is skipped, so a new model is its folder plus its name here.
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
