"""scGNN (Wang et al., Nat. Commun. 12:1882, 2021), the user-facing model: the data recipe, the iterative
training, imputation and what the trained model exposes (MODELS.md section 3). The networks are in
``module.py``; LTMG is in ``ltmg.py``.

Training, as the paper describes it, with the published code's bugs fixed (MODELS.md 3.6):

1. The feature autoencoder learns X = log1p(raw counts) of the 2,000 genes of largest count variance; its loss
   is 0.1·Σ(X − X̂)² + 0.9·Σ[(X − X̂)² ∘ TRS] + 1.0·Σ|w| (TRS: the LTMG regulatory states, optional).
2. A kNN graph (k = 10) on its 128-d embedding Z, pruned (a neighbour farther than the mean + 1 sd of the
   cell's k distances is dropped) and symmetrised; optionally a graph autoencoder on it turns Z into a 16-d
   embedding. Leiden on the graph gives a cluster count; k-means on the embedding with that count scaled
   by 0.8 (under 2,000 cells) or 0.5 gives the clusters.
3. Each cluster's cells get their own autoencoder (a copy of the feature autoencoder trained on their
   reconstructed rows); the feature autoencoder is retrained on the cluster autoencoders' output, and step 2
   runs again, keeping the first round's cluster count (``recount = first``; the code recounts every round,
   ``recount = every``, which with its loader bug fixed splits the data further each round). Rounds repeat
   until two rounds' clusters agree (ARI > 0.99) or 10 rounds have run
   (:func:`scgraph_core.loops.refine_until_stable`).
4. Imputation: the autoencoder restarts from its initial weights and learns X with each cell's error weighted
   by 0.3·(its degree in the final graph) + 0.1·(the size of its cluster). That is the paper's graph and
   cell-type regularisers Σ_ij A_ij‖x_j − x̂_j‖² and Σ_ij B_ij‖x_j − x̂_j‖² (B_ij = 1 when i and j share a
   cluster), computed in O(N) (:func:`imputation_weights`). The imputed matrix is expm1(X̂): expected counts.

Nothing is N x N: graphs are kNN edge lists, the graph autoencoder samples its negative pairs, and the
regularisers are per-cell weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ...errors import DataError
from ...nn.losses import edge_reconstruction_loss
from ...nn.sparse import Propagation
from ...params import param
from ...train import Stage, StageOutcome, Trainer
from ..base import Embedding, Imputed, Model, Partition, Report, register
from .module import FeatureAE, GraphAE

if TYPE_CHECKING:
    import anndata

    from ...data import Prepared, PrepareSpec
    from ...graphs import Graph


@dataclass(frozen=True)
class ScGNNParams:
    """scGNN settings (Wang et al. 2021; MODELS.md section 3)."""

    ltmg: bool = param(
        True,
        "weight the first autoencoder's error by each entry's LTMG regulatory state (a per-gene mixture of "
        "expression states; the paper's benchmarks use it)",
    )
    ltmg_weight: float = param(
        0.9, "weight of the LTMG-weighted error in the first autoencoder", min=0.0, shown_if={"ltmg": True}
    )
    mse_weight: float = param(0.1, "weight of the plain reconstruction error", min=0.0)
    l1_weight: float = param(
        1.0, "weight of the L1 penalty on every weight (the code's 1.0; its help text says 0.001)", min=0.0
    )
    cluster_l1: str = param(
        "full",
        "L1 penalty of each cluster's autoencoder: scaled = l1_weight times the cluster's share of the cells, so "
        "the balance of fit and penalty is the whole-data autoencoder's (with the full penalty a small "
        "cluster's model is mostly penalty); full = l1_weight as is (the code)",
        choices=("scaled", "full"),
    )
    hidden: int = param(512, "width of the autoencoders' hidden layers", min=2, max=16384)
    latent: int = param(128, "size of the autoencoder embedding Z", min=2, max=4096)
    output: str = param(
        "relu",
        "last activation of the decoder: relu (the code) or sigmoid (the paper's text; only for data in [0, 1])",
        choices=("relu", "sigmoid"),
    )
    lr: float = param(1e-3, "Adam learning rate of the autoencoders", min=1e-7, max=1.0)
    batch_size: int = param(
        12800, "cells per optimisation step (full batch below this; no shuffling, as the code)", min=16
    )
    feature_epochs: int = param(500, "epochs of the first feature autoencoder", min=1, max=100000)
    cluster_epochs: int = param(200, "epochs of each cluster's autoencoder per round", min=0, max=100000)
    em_epochs: int = param(200, "epochs of the feature autoencoder per round", min=1, max=100000)
    imputation_epochs: int = param(200, "epochs of the imputation autoencoder", min=1, max=100000)
    knn_k: int = param(10, "neighbours per cell of the graph on the embedding", min=1, max=200)
    prune: str = param(
        "std",
        "std: drop a neighbour farther than the mean + 1 sd of the cell's k distances (the code's default); "
        "none: keep all k",
        choices=("std", "none"),
    )
    gae: bool = param(True, "train the graph autoencoder and cluster its embedding (the paper's benchmarks)")
    gae_epochs: int = param(200, "epochs of the graph autoencoder per round", min=1, shown_if={"gae": True})
    gae_lr: float = param(
        0.01, "learning rate of the graph autoencoder (the code's; the paper says 0.001)", min=1e-7, max=1.0
    )
    gae_hidden: int = param(32, "hidden width of the graph autoencoder", min=2, advanced=True)
    gae_latent: int = param(16, "embedding size of the graph autoencoder", min=2, advanced=True)
    leiden_resolution: float = param(1.0, "Leiden resolution that sets the cluster count", min=0.01, max=50.0)
    cluster_ratio: float | None = param(
        None,
        "k-means uses this share of the Leiden cluster count (empty = 0.8 under 2,000 cells, else 0.5)",
        min=0.05,
        max=5.0,
    )
    recount: str = param(
        "first",
        "when Leiden sets the number of clusters: first = on the first graph only, the refinement rounds keep "
        "that number and move cells between the clusters (chosen on the dataset suite: with the code's loader "
        "bug fixed, recounting every round split the data further each round, 12 -> 27 clusters for 5 types); "
        "every = on each round's graph (the code)",
        choices=("first", "every"),
    )
    max_rounds: int = param(10, "iterations of the cluster-refinement loop at most", min=0, max=100)
    stop_ari: float = param(0.99, "stop when two rounds' clusters agree above this ARI", min=0.0, max=1.0)
    graph_weight: float = param(0.3, "imputation: weight of the cell-graph regulariser", min=0.0)
    celltype_weight: float = param(0.1, "imputation: weight of the cell-type regulariser", min=0.0)
    legacy_loader_bug: bool = param(
        False,
        "reproduce the published code's data-loader bug (cluster autoencoders learn all cells and the "
        "per-round retraining never sees the reconstruction); only to compare with published numbers",
        advanced=True,
    )


PREPARE = {
    "normalize": "auto",
    "n_hvg": 2000,
    "n_graph_genes": 2000,
    "hvg_flavor": "count_variance",
    "scale": "none",
}
PAPER = {
    "prepare": PREPARE,
    "graph": {"kind": "knn", "k": 10, "metric": "euclidean"},
    "model": {},
    "train": {"eval_every": 0, "patience": 0, "restore_best": False},
}
QUICK = {
    **PAPER,
    "model": {
        "feature_epochs": 100,
        "cluster_epochs": 30,
        "em_epochs": 30,
        "imputation_epochs": 60,
        "gae_epochs": 100,
        "max_rounds": 3,
    },
}
MIN_CLUSTER_FOR_AE = 5  # clusters smaller than this share one catch-all autoencoder (MODELS.md 3.5)


# =============================================================================================
# Preparation: the paper's recipe on the raw counts
# =============================================================================================


def raw_counts(adata: anndata.AnnData) -> Any:
    """The raw counts: a ``counts`` layer of whole numbers, else X when it holds counts; else a DataError."""
    from ...data.qc import detect_x_kind

    if "counts" in adata.layers and detect_x_kind(adata.layers["counts"]) == "counts":
        return adata.layers["counts"]
    if detect_x_kind(adata.X) == "counts":
        return adata.X
    raise DataError(
        "scGNN learns log1p of the raw counts, but this file has none: X is not whole numbers and there is no "
        "'counts' layer. Load the raw counts (a 10x folder, an h5ad with counts in X or in layers['counts'])."
    )


def percent_filters(adata: anndata.AnnData, fraction: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The paper's filters (MODELS.md 3.1): genes non-zero in at least ``fraction`` of the cells, then cells
    non-zero in at least ``fraction`` of the remaining genes. Returns (cell mask, gene mask)."""
    from ...data.qc import nonzero_per

    counts = raw_counts(adata)
    n_cells, _n_genes = counts.shape
    genes = nonzero_per(counts, axis=0) >= fraction * n_cells
    if not genes.any():
        raise DataError(
            f"No gene is non-zero in {fraction:.0%} of the {n_cells:,} cells; scGNN has nothing to learn."
        )
    kept = counts[:, np.flatnonzero(genes)]
    cells = nonzero_per(kept, axis=1) >= max(1.0, fraction * int(genes.sum()))
    if not cells.any():
        raise DataError(f"No cell expresses {fraction:.0%} of the {int(genes.sum()):,} kept genes.")
    return np.asarray(cells, dtype=bool), np.asarray(genes, dtype=bool)


def log_counts(prepared: Prepared) -> np.ndarray:
    """log1p of the raw counts of the prepared cells and genes, dense float32 (the model input)."""
    counts = prepared.adata.layers["counts"]
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    return np.log1p(np.asarray(counts, dtype=np.float32))


# =============================================================================================
# Graph, clusters and the regularisers
# =============================================================================================


@dataclass
class CellGraph:
    """The pruned kNN graph on an embedding: undirected edges listed both ways, binary weights."""

    edge_index: np.ndarray  # [2, E]
    n: int
    pruned: int  # kNN edges dropped by the pruning

    @property
    def degree(self) -> np.ndarray:
        return np.bincount(self.edge_index[0], minlength=self.n).astype(np.float64)

    def adjacency(self) -> sp.csr_matrix:
        src, dst = self.edge_index
        return sp.csr_matrix((np.ones(src.size, dtype=np.float32), (src, dst)), shape=(self.n, self.n))


def knn_graph(z: np.ndarray, k: int, prune: str = "std", *, seed: int = 0) -> CellGraph:
    """The kNN graph on ``z`` (Euclidean), pruned per cell at the mean + 1 sd of its k distances
    (``prune = std``, the code's default), symmetrised by union (an edge kept from either side)."""
    from ... import graphs

    n = z.shape[0]
    k = min(k, n - 1)
    idx, dist, _ = graphs.nearest_neighbors(np.ascontiguousarray(z, dtype=np.float32), k, seed=seed)
    keep = np.ones_like(idx, dtype=bool)
    if prune == "std":
        limit = dist.mean(axis=1) + dist.std(axis=1)
        keep = dist <= limit[:, None]
    src = np.repeat(np.arange(n, dtype=np.int64), k)[keep.ravel()]
    dst = idx.ravel()[keep.ravel()]
    keys = np.unique(np.concatenate([src * n + dst, dst * n + src]))
    return CellGraph(np.vstack([keys // n, keys % n]), n, int((~keep).sum()))


def cluster_count(graph: CellGraph, *, resolution: float, seed: int) -> int:
    """Communities of the graph (Leiden; the paper's Louvain sets only this count)."""
    from ...cluster import leiden

    return int(np.unique(leiden(graph.adjacency(), resolution=resolution, seed=seed, graph=True)).size)


def kmeans_k(n_communities: int, n_cells: int, ratio: float | None) -> int:
    """k = ⌊communities · ratio⌋ with ratio 0.8 under 2,000 cells, else 0.5; 2 when that is below 3."""
    r = (0.8 if n_cells < 2000 else 0.5) if ratio is None else ratio
    k = int(math.floor(n_communities * r))
    return 2 if k < 3 else min(k, n_cells)


def imputation_weights(
    graph: CellGraph, labels: np.ndarray, graph_weight: float, celltype_weight: float
) -> np.ndarray:
    """w_j = graph_weight · deg_j + celltype_weight · |cluster(j)|.

    Σ_ij A_ij ‖x_j − x̂_j‖² = Σ_j (Σ_i A_ij) ‖x_j − x̂_j‖² = Σ_j deg_j ‖x_j − x̂_j‖², and the same with B_ij
    (1 when cells i and j share a cluster, i = j included) gives Σ_i B_ij = |cluster(j)|: the paper's two
    N x N regularisers are one per-cell weight (MODELS.md 3.4)."""
    labels = np.asarray(labels)
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return (graph_weight * graph.degree + celltype_weight * sizes[inverse]).astype(np.float32)


def gae_loss(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    positives: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, KL) of the graph autoencoder, without an N x N matrix.

    The paper's reconstruction term is norm · mean over all N² pairs of BCE-with-logits(z_iᵀz_j, A_ij + I_ij)
    with the positives weighted by pos_weight = (N² − P) / P and norm = N² / (2 (N² − P)), P = the number of
    positive pairs. Summed out, that is ½ (mean BCE over the P positives + mean BCE over the N² − P other
    pairs); the second mean is estimated each call from P uniformly drawn non-edges, so the estimate is
    unbiased (tests/models/test_scgnn.py checks it against the dense loss). ``positives`` lists A + I's
    pairs ([2, P], self pairs included). KL = −(0.5 / N) · mean_i Σ_l (1 + 2 log σ − μ² − σ²), as the code."""
    n = z.shape[0]
    recon = 0.5 * edge_reconstruction_loss(
        z, positives, n, generator=generator, add_self_loops_to_positives=False
    )
    kl = -(0.5 / n) * torch.mean(
        torch.sum(1 + 2 * log_sigma - mu.pow(2) - torch.exp(log_sigma).pow(2), dim=1)
    )
    return recon, kl


def _adam(net: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with the fused update (one kernel for all parameters; about a fifth faster per step on the CPU
    for these 2-million-weight autoencoders), the plain one where fused is not available."""
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(net.parameters(), lr=lr)


def cluster_groups(labels: np.ndarray) -> list[np.ndarray]:
    """The cells of each cluster for the cluster autoencoders; clusters under :data:`MIN_CLUSTER_FOR_AE`
    cells share one catch-all group (MODELS.md 3.5)."""
    groups, small = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        (small if members.size < MIN_CLUSTER_FOR_AE else groups).append(members)
    if small:
        groups.append(np.sort(np.concatenate(small)))
    return groups


# =============================================================================================
# The model
# =============================================================================================


@dataclass
class RoundState:
    """One round's result: the autoencoder embedding and reconstruction, the clustered embedding, graph."""

    z: np.ndarray
    recon: np.ndarray
    embedding: np.ndarray
    graph: CellGraph
    labels: np.ndarray
    communities: int
    k: int  # the k-means cluster count asked for


@dataclass
class Fitted:
    """What training produced."""

    feature: FeatureAE
    imputer: FeatureAE
    gae: GraphAE | None
    final: RoundState
    rounds: list[dict[str, Any]]
    converged: bool
    imputed_log: np.ndarray
    ltmg: Any
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)


@register
class ScGNN(Model):
    name = "scgnn"
    title = "scGNN"
    summary = (
        "Imputes expression and finds cell types by alternating autoencoders with a cell graph rebuilt each "
        "round until the clusters settle; needs raw counts, no labels."
    )
    paper = "Wang et al., scGNN is a novel graph neural network framework for single-cell RNA-Seq analyses, Nat. Commun. 12:1882, 2021"
    Params = ScGNNParams
    presets = {"paper": PAPER, "quick": QUICK}
    smoke = {
        "model": {
            "hidden": 32,
            "latent": 8,
            "feature_epochs": 5,
            "cluster_epochs": 2,
            "em_epochs": 2,
            "imputation_epochs": 3,
            "gae_epochs": 3,
            "gae_hidden": 8,
            "gae_latent": 4,
            "max_rounds": 2,
            "knn_k": 5,
        },
        "prepare": {"n_hvg": 40, "n_graph_genes": 40},
    }
    requires_counts = True
    keeps_input = True

    # --- before training ----------------------------------------------------------------------------
    def preprocess(self, adata: anndata.AnnData, spec: PrepareSpec) -> Prepared:
        """The paper's recipe (MODELS.md 3.1): the 1 % filters, then ``spec`` (the paper preset: the 2,000
        genes of largest raw-count variance); the model reads log1p of their raw counts, not normalised. X
        and ``lognorm`` of the written result stay library-normalised for the app's views."""
        from ... import data

        cells, genes = percent_filters(adata)
        subset = adata if cells.all() and genes.all() else adata[cells, genes].copy()
        prepared = data.prepare(subset, spec)
        if "counts" not in prepared.adata.layers:
            raw_counts(prepared.adata)  # raises the plain message
        modelled = prepared.adata[:, prepared.adata.var["hvg"].to_numpy(dtype=bool)].copy()
        record = dict(prepared.record)
        record["scgnn_filters"] = {
            "cells_removed_1pct": int((~cells).sum()),
            "genes_removed_1pct": int((~genes).sum()),
            "rule": "genes non-zero in >= 1% of cells, then cells non-zero in >= 1% of those genes",
        }
        record["model_input"] = "log1p(raw counts) of the selected genes, no library normalisation (scGNN)"
        modelled.uns.setdefault("scgraph", {})["prepare"] = copy.deepcopy(record)
        features = np.log1p(
            np.asarray(
                modelled.layers["counts"].toarray()
                if sp.issparse(modelled.layers["counts"])
                else modelled.layers["counts"],
                dtype=np.float32,
            )
        )
        genes_used = [str(g) for g in modelled.var_names]
        return dataclasses.replace(
            prepared,
            adata=modelled,
            features=features,
            feature_genes=genes_used,
            graph_input=features,
            graph_genes=genes_used,
            record=record,
        )

    def build_graph(self, prepared: Prepared, config: Any) -> Graph:
        """scGNN builds its graphs on its own embedding while training; the pipeline's graph is empty."""
        from ... import graphs

        return graphs.Graph(
            np.zeros((2, 0), dtype=np.int64),
            None,
            prepared.adata.n_obs,
            config.graph,
            {
                "note": "scGNN builds its cell graph on its autoencoder embedding each round (obsp['scgnn_graph'])"
            },
        )

    # --- training -----------------------------------------------------------------------------------
    def train(
        self,
        prepared: Prepared,
        graph: Graph,
        params: ScGNNParams,
        trainer: Trainer,
        *,
        cluster: Any = None,
        labels: Any = None,
    ) -> None:
        from ... import memory
        from ...loops import refine_until_stable

        p = params
        device = trainer.device
        seed = trainer.spec.seed
        x_np = np.ascontiguousarray(prepared.features, dtype=np.float32)
        n, g = x_np.shape
        memory.check_bytes(
            10 * 4 * n * g,
            what=f"Training scGNN on {n:,} cells x {g:,} genes",
            device=device,
            advice="Use fewer genes (n_hvg) or fewer cells.",
        )
        x = torch.from_numpy(x_np).to(device)
        ltmg_result = None
        trs = None
        if p.ltmg and p.ltmg_weight > 0:
            from .ltmg import fit_ltmg

            trainer.emit({"kind": "pipeline", "step": "ltmg"})
            ltmg_result = fit_ltmg(x_np, seed=seed)
            signal = ltmg_result.signal
            signal = signal.toarray() if sp.issparse(signal) else np.asarray(signal)
            trs = torch.from_numpy(signal.astype(np.float32)).to(device)

        feature = FeatureAE(g, p.hidden, p.latent, p.output).to(device)
        initial = copy.deepcopy(feature.state_dict())
        optimizer = _adam(feature, p.lr)
        outcomes: dict[str, StageOutcome] = {}
        epochs: list[dict[str, Any]] = []

        def fit(
            name: str, net: FeatureAE, opt: Any, inputs: torch.Tensor, n_epochs: int, **kw: Any
        ) -> StageOutcome:
            outcome = trainer.run_stage(self._stage(name, net, opt, inputs, n_epochs, p, **kw))
            outcomes[name] = outcome
            epochs.extend({"stage": name, "epoch": e["epoch"], "loss": e["loss"]} for e in outcome.history)
            return outcome

        fit(
            "feature_ae",
            feature,
            optimizer,
            x,
            p.feature_epochs,
            trs=trs,
            mse=p.mse_weight,
            ltmg=p.ltmg_weight,
        )
        gae_holder: list[GraphAE | None] = [None]

        def one_round(r: int, state: RoundState | None) -> tuple[np.ndarray, RoundState, dict[str, Any]]:
            if state is None:
                z, recon = self._read(feature, x)
            else:
                rebuilt = torch.empty_like(x)
                recon_t = torch.from_numpy(state.recon).to(device)
                for i, members in enumerate(cluster_groups(state.labels)):
                    net = copy.deepcopy(feature)  # each cluster starts from the current feature autoencoder
                    opt = _adam(net, p.lr)
                    rows = torch.from_numpy(members).to(device)
                    if p.legacy_loader_bug:
                        # The published code: the loader of all cells; the first |C| outputs land on C's cells.
                        fit(f"cluster_r{r}_{i}", net, opt, recon_t, p.cluster_epochs, saved=False)
                        rebuilt[rows] = self._read_t(net, recon_t)[1][: members.size]
                    else:
                        inputs = recon_t[rows]
                        share = members.size / n if p.cluster_l1 == "scaled" else 1.0
                        fit(
                            f"cluster_r{r}_{i}",
                            net,
                            opt,
                            inputs,
                            p.cluster_epochs,
                            saved=False,
                            l1=share * p.l1_weight,
                        )
                        rebuilt[rows] = self._read_t(net, inputs)[1]
                # The published code's retraining reads its original loader (X), and so does its new Z.
                em_input = x if p.legacy_loader_bug else rebuilt
                fit(f"em_r{r}", feature, optimizer, em_input, p.em_epochs)
                z, recon = self._read(feature, em_input)
            cell_graph = knn_graph(z, p.knn_k, p.prune, seed=seed)
            embedding = z
            if p.gae:
                gae = GraphAE(z.shape[1], p.gae_hidden, p.gae_latent).to(device)
                embedding = self._train_gae(f"gae_r{r}", gae, z, cell_graph, p, trainer, outcomes)
                gae_holder[0] = gae
            if state is None or p.recount == "every":
                communities = cluster_count(cell_graph, resolution=p.leiden_resolution, seed=seed)
                k = kmeans_k(communities, n, p.cluster_ratio)
            else:
                communities, k = state.communities, state.k
            from ...cluster import kmeans

            found = kmeans(embedding, k, seed=seed, n_init=10)
            state = RoundState(z, recon, embedding, cell_graph, found, communities, k)
            last = outcomes.get(f"em_r{r}") or outcomes["feature_ae"]
            numbers = {
                "leiden_communities": communities,
                "kmeans_k": k,
                "loss": last.history[-1]["loss"] if last.history else float("nan"),
                "graph_edges": int(cell_graph.edge_index.shape[1] // 2),
                "pruned_edges": cell_graph.pruned,
            }
            return found, state, numbers

        rounds = refine_until_stable(
            one_round, max_rounds=p.max_rounds + 1, min_ari=p.stop_ari, emit=trainer.emit
        )
        final: RoundState = rounds.last

        # Imputation: the initial weights and a new optimiser, each cell's error weighted by the regularisers.
        imputer = FeatureAE(g, p.hidden, p.latent, p.output).to(device)
        imputer.load_state_dict(initial)
        weights = imputation_weights(final.graph, final.labels, p.graph_weight, p.celltype_weight)
        fit(
            "imputation_ae",
            imputer,
            _adam(imputer, p.lr),
            x,
            p.imputation_epochs,
            row_weight=torch.from_numpy(weights).to(device),
            mse=0.0,
        )
        imputed_log = self._read(imputer, x)[1]
        self._fitted = Fitted(
            feature,
            imputer,
            gae_holder[0],
            final,
            rounds.history,
            rounds.converged,
            imputed_log,
            ltmg_result,
            outcomes,
            epochs,
        )
        self._params, self._prepared = p, prepared

    @staticmethod
    def _stage(
        name: str,
        net: FeatureAE,
        optimizer: Any,
        inputs: torch.Tensor,
        epochs: int,
        p: ScGNNParams,
        *,
        trs: torch.Tensor | None = None,
        row_weight: torch.Tensor | None = None,
        mse: float | None = None,
        ltmg: float = 0.0,
        l1: float | None = None,
        saved: bool = True,
    ) -> Stage:
        """One autoencoder stage: ``epochs`` passes over ``inputs`` in batches of ``batch_size`` cells in
        order, one Adam step per batch (the trainer's "epoch" is one step). Sum-reduced loss:

            mse·Σ(x − x̂)² + ltmg·Σ[(x − x̂)² ∘ TRS] + Σ_j w_j Σ_g (x_jg − x̂_jg)² + l1·Σ|w|
        """
        n = inputs.shape[0]
        batches = max(1, math.ceil(n / p.batch_size))
        mse = p.mse_weight if mse is None else mse
        l1 = p.l1_weight if l1 is None else l1

        def step(i: int) -> dict[str, torch.Tensor]:
            b = (i - 1) % batches
            rows = slice(b * p.batch_size, min(n, (b + 1) * p.batch_size))
            xb = inputs[rows]
            _, out = net(xb)
            sq = (out - xb).pow(2)
            terms: dict[str, torch.Tensor] = {}
            if mse:
                terms["mse"] = mse * sq.sum()
            if trs is not None and ltmg:
                terms["ltmg"] = ltmg * (sq * trs[rows]).sum()
            if row_weight is not None:
                terms["regularisers"] = (sq.sum(dim=1) * row_weight[rows]).sum()
            if l1:
                terms["l1"] = l1 * net.l1()
            loss = sum(terms.values())
            return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

        return Stage(name, net, optimizer, step, max(1, epochs * batches) if epochs else 0, saved=saved)

    @staticmethod
    def _read_t(net: FeatureAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net.eval()
        with torch.no_grad():
            return net(x)

    def _read(self, net: FeatureAE, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        z, recon = self._read_t(net, x)
        return z.float().cpu().numpy(), recon.float().cpu().numpy()

    @staticmethod
    def _train_gae(
        name: str,
        gae: GraphAE,
        z: np.ndarray,
        graph: CellGraph,
        p: ScGNNParams,
        trainer: Trainer,
        outcomes: dict[str, StageOutcome],
    ) -> np.ndarray:
        """The graph autoencoder on Z binarised per column (1 above the column mean) over the pruned graph.

        The paper's loss is a positive-weighted BCE over all N² entries of A + I (pos_weight = (N² − |A|) / |A|,
        times norm = N² / (2 (N² − |A|))). Divided by N² that is exactly ½ (mean BCE over the positives +
        mean BCE over the non-edges), which is estimated here with as many uniformly drawn non-edges as there
        are positives each epoch; the KL term is −(0.5 / N)·mean_i Σ(1 + 2 log σ − μ² − σ²)."""
        device = trainer.device
        n = z.shape[0]
        binary = torch.from_numpy((z > z.mean(axis=0, keepdims=True)).astype(np.float32)).to(device)
        adj = Propagation(graph.edge_index, None, n, how="sym", device=device)
        loops = np.arange(n, dtype=np.int64)
        positives = torch.from_numpy(np.hstack([graph.edge_index, np.vstack([loops, loops])])).to(device)
        optimizer = _adam(gae, p.gae_lr)
        generator = trainer.generator

        def step(epoch: int) -> dict[str, torch.Tensor]:
            out = gae(binary, adj, generator=generator)
            recon, kl = gae_loss(out.z, out.mu, out.log_sigma, positives, generator=generator)
            return {"loss": recon + kl, "reconstruction": recon.detach(), "kl": kl.detach()}

        outcome = trainer.run_stage(Stage(name, gae, optimizer, step, p.gae_epochs))
        outcomes[name] = outcome
        gae.eval()
        with torch.no_grad():
            return gae(binary, adj).mu.float().cpu().numpy()

    # --- what the trained model exposes -------------------------------------------------------------
    def embed(self) -> Embedding:
        f = self._fitted
        extra = {"X_scgnn_ae": f.final.z} if self._params.gae else {}
        return Embedding("X_scgnn", np.asarray(f.final.embedding, dtype=np.float32), extra=extra)

    def clusters(self) -> Partition:
        return Partition(np.asarray(self._fitted.final.labels, dtype=np.int64), "louvaink")

    def impute(self) -> Imputed:
        f = self._fitted
        counts = np.expm1(np.clip(f.imputed_log, 0.0, None)).astype(np.float32)
        extra: dict[str, Any] = {}
        if f.ltmg is not None:
            signal = f.ltmg.signal
            extra["scgnn_ltmg"] = sp.csr_matrix(signal).astype(np.int8)
        return Imputed(counts, "imputed", "counts", extra_layers=extra)

    def training_metrics(self) -> dict[str, Any]:
        f = self._fitted
        n, g = f.imputed_log.shape
        return {
            "n_cells": n,
            "n_features": g,
            "rounds": len(f.rounds),
            "converged": f.converged,
            "round_ari": [r["ari_previous"] for r in f.rounds[1:]],  # each round against the one before
            "round_clusters": [r["n_clusters"] for r in f.rounds],
            "epochs_run": {
                name: o.epochs_run for name, o in f.outcomes.items() if not name.startswith("cluster_")
            },
            "seconds_per_epoch": {
                name: o.seconds_per_epoch for name, o in f.outcomes.items() if not name.startswith("cluster_")
            },
            "ltmg": None
            if f.ltmg is None
            else {
                "components": {
                    str(k): int(v)
                    for k, v in zip(*np.unique(f.ltmg.n_components, return_counts=True), strict=True)
                }
            },
        }

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self._fitted.epochs)

    def state_dict(self) -> dict[str, Any]:
        f = self._fitted
        out = {f"feature.{k}": v.detach().cpu() for k, v in f.feature.state_dict().items()}
        out.update({f"imputation.{k}": v.detach().cpu() for k, v in f.imputer.state_dict().items()})
        if f.gae is not None:
            out.update({f"gae.{k}": v.detach().cpu() for k, v in f.gae.state_dict().items()})
        return out

    def report(self, analysis: Any) -> Report:
        f = self._fitted
        rounds = pd.DataFrame(f.rounds)
        notes = []
        if not f.converged and self._params.max_rounds > 0:
            notes.append(
                f"The clusters were still changing after {self._params.max_rounds} refinement rounds (ARI between "
                f"the last two rounds {rounds['ari_previous'].iloc[-1]:.3f}, asked > {self._params.stop_ari}); "
                "the last round's clusters are reported. More rounds (max_rounds) may settle them."
            )
        return Report(
            obsp={"scgnn_graph": f.final.graph.adjacency()},
            tables={"scgnn_rounds": rounds},
            uns={"scgnn": {"n_rounds": len(f.rounds), "converged": bool(f.converged)}},
            metrics={
                "graph_final": {
                    "n_edges": int(f.final.graph.edge_index.shape[1] // 2),
                    "pruned": f.final.graph.pruned,
                }
            },
            notes=notes,
        )
