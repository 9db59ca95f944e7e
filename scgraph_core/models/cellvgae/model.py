"""CellVGAE (Buterez et al., Bioinformatics 38(5):1277, 2022), the user-facing model: parameters,
presets, the data recipe, training, and what the trained network exposes (embedding, attention, gene
weights). The network itself is :class:`~scgraph_core.models.cellvgae.module.CellVGAENet`.

Training sees the training edges only (``val_fraction`` of the edges is held out to score link
prediction); the reported embedding, clusters and attention are read over every edge
(``embed_edges = all``; the authors' code reads them over the training edges: MODELS.md 1.5).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...errors import ConfigError
from ...nn.losses import edge_reconstruction_loss, kl_divergence, mmd_loss
from ...nn.sparse import clear_graph_cache
from ...params import param
from ...train import Stage, StageOutcome, Trainer
from ..base import AttentionMap, Embedding, GeneWeights, Model, register
from .module import CellVGAENet

# =============================================================================================
# The user-facing model: parameter schema, presets, training, clustering, interpretation.
# =============================================================================================


@dataclass(frozen=True)
class CellVGAEParams:
    """CellVGAE settings (Buterez et al. 2022; MODELS.md section 1)."""

    conv: str = param(
        "gat", "graph layer of the encoder: GAT (paper), GATv2 or GCN", choices=("gat", "gatv2", "gcn")
    )
    hidden: tuple[int, ...] = param(
        (128, 128), "sizes of the hidden graph layers (2 or 3 layers)", min=1, max=4096
    )
    heads: tuple[int, ...] = param(
        (10, 10, 10, 10),
        "attention heads per layer: each hidden layer, then the mu and log-sigma layers (one number = all layers)",
        min=1,
        max=64,
    )
    attn_dropout: tuple[float, ...] = param(
        (0.4, 0.4, 0.2, 0.2),
        "attention dropout per layer, same order as heads (one number = all layers)",
        min=0.0,
        max=0.95,
    )
    feature_dropout: float = param(
        0.4, "dropout on the features after the last hidden layer", min=0.0, max=0.95
    )
    latent: int = param(50, "size of the latent space (L)", min=2, max=1024)
    regularizer: str = param(
        "kl", "prior term: KL divergence (paper default) or maximum mean discrepancy", choices=("kl", "mmd")
    )
    kl_weight: float | None = param(
        None,
        "how strongly the latent space is pulled towards a plain Gaussian (empty = kl_factor / number of cells; "
        "the paper: 1 / number of cells); higher gives smoother, less separated clusters",
        min=0.0,
        shown_if={"regularizer": "kl"},
    )
    kl_factor: float = param(
        1.0,
        "with kl_weight empty the KL weight is this divided by the number of cells (the paper, and both presets: 1). "
        "A fixed weight does not carry across sizes (on cells drawn from pbmc3k a fixed 3 gave ARI 0.88 at 2,638 "
        "cells but 0.74 at 100,000), and a large one (3) leaves the encoder weights, so the learnt expression and "
        "the P_mu markers, meaningless; above 20,000 cells the quick preset's weight rises to 2,100 / cells at 100,000",
        min=0.0,
        advanced=True,
        shown_if={"regularizer": "kl"},
    )
    variance: str = param(
        "logvar",
        "a technical fix, not a biological choice: logvar reads the encoder's uncertainty the same way in "
        "sampling and in the KL term; legacy reproduces the published code's mismatch for comparison",
        choices=("logvar", "legacy"),
    )
    expr_decoder: int = param(
        0, "hidden size of the optional expression decoder (0 = no decoder)", min=0, max=8192
    )
    expr_weight: float = param(
        10.0,
        "how much rebuilding each cell's expression counts against rebuilding its neighbours",
        min=0.0,
        shown_if={"expr_decoder": True},
    )
    lr: float = param(1e-4, "Adam learning rate", min=1e-7, max=1.0)
    epochs: int = param(200, "training epochs (passes over every cell)", min=1, max=100000)
    batch_size: int = param(
        0,
        "training edges per step, drawn as batch_mode says (for data too large for one step; epochs then count "
        "passes over the edges and the progress counts steps); 0 = the whole graph in every step (full batch, "
        "the paper)",
        min=0,
        max=10_000_000,
    )
    batch_mode: str = param(
        "parts",
        "mini-batch training: how a batch's graph is drawn: the subgraph among a few k-means parts of the cells "
        "(Cluster-GCN-style; a step's memory and time depend on the parts' size alone; edges between parts not "
        "chosen together are not trained on unless halo is set) or each cell's sampled neighbourhood (GraphSAGE-style; on a kNN "
        "graph a step reaches most cells, so a pass costs about one full-batch epoch per step)",
        choices=("parts", "neighbours"),
        advanced=True,
        shown_if={"batch_size": True},
    )
    parts_per_batch: int = param(
        4,
        "mini-batch training with batch_mode parts: parts per step (the cells are cut into about this many parts "
        "per batch_size training edges)",
        min=1,
        max=1000,
        advanced=True,
        shown_if={"batch_size": True, "batch_mode": "parts"},
    )
    negatives: str = param(
        "auto",
        "mini-batch training with batch_mode parts: where a negative pair's second cell comes from: any cell "
        "(all: cells outside the batch enter with their latent sample from the last step that encoded them, "
        "without a gradient; as in full batch, most pairs then join different cell types), the batch's own "
        "cells (batch: a batch of a few k-means parts holds few types, so about half its pairs join cells of "
        "one type), or auto: all up to 16 steps a pass, batch above (at 100,000 cells, over 200 steps a pass, "
        "negatives from the bank left held-out link prediction at chance, AUC 0.46-0.50 against 0.79-0.86, "
        "with clusters level within noise)",
        choices=("auto", "all", "batch"),
        advanced=True,
        shown_if={"batch_size": True, "batch_mode": "parts"},
    )
    halo: int = param(
        0,
        "mini-batch training with batch_mode parts: hops of neighbours added around a batch's cells as context "
        "(0 = the chosen parts alone: edges to other parts are trained only when both parts share a batch, and a "
        "cell's neighbours in other parts send it no messages; 1 = every neighbour of a batch cell joins the "
        "step, every edge is trained once a pass, a step costs about as many more cells as the halo holds; on pbmc3k, "
        "paper preset, batches of 4,096 edges, three seeds: held-out AUC 0.85 against 0.81 without, but label-free "
        "ARI median 0.82 against 0.86 and 2.9 x the training time)",
        min=0,
        max=3,
        advanced=True,
        shown_if={"batch_size": True, "batch_mode": "parts"},
    )
    fanout: int = param(
        15,
        "mini-batch training with batch_mode neighbours: incoming edges sampled per cell at each graph layer "
        "(-1 = all of them)",
        min=-1,
        max=1000,
        advanced=True,
        shown_if={"batch_size": True, "batch_mode": "neighbours"},
    )
    scale_lr: bool = param(
        True,
        "mini-batch training: divide the learning rate by the steps in a pass over the edges, so a pass moves "
        "the weights about as far as one full-batch step (off = the learning rate per step as given: at 100,000 "
        "cells, 211 steps a pass, that collapsed the latent, held-out AUC 0.53 against 0.94 on; on pbmc3k, 3 "
        "steps, neither matched full batch over three seeds)",
        advanced=True,
        shown_if={"batch_size": True},
    )
    readout_cells: int = param(
        0,
        "mini-batch training: read the embedding and attention in groups of about this many cells, each on its "
        "neighbourhood as far as the encoder reaches (the same numbers as one pass over the whole graph); 0 = one "
        "pass over the whole graph. Saves memory only where those neighbourhoods are much smaller than the graph: "
        "at 100,000 cells (paper preset, groups of 20,000) they were nearly the whole graph and the read-out took "
        "more memory (7.6 against 5.3 GB) and 2.6x the time",
        min=0,
        advanced=True,
        shown_if={"batch_size": True},
    )
    val_fraction: float = param(0.1, "share of edges held out to monitor link prediction", min=0.0, max=0.5)
    test_fraction: float = param(
        0.0, "share of edges held out as a final link-prediction test", min=0.0, max=0.5
    )
    embed_edges: str = param(
        "all",
        "graph the final embedding and attention are read from: every edge (the held-out ones only "
        "monitor link prediction while training) or the training edges alone (the authors' code)",
        choices=("all", "train"),
        advanced=True,
    )
    attention: bool = param(True, "export attention coefficients of every layer after training")
    marker_genes: int = param(
        15, "genes kept per latent dimension for the marker-gene table", min=1, max=1000
    )
    recipe: str = param(
        "fixed",
        "auto: for an input of more than 1,000 genes use 1,000 HVGs as features and build the graph on 50 "
        "principal components of 2,000 HVGs with k = 15 (chosen on the dataset suite; settings you changed "
        "are kept; both presets); fixed: the preparation and graph settings exactly as set",
        choices=("auto", "fixed"),
    )

    def __post_init__(self) -> None:
        n_layers = len(self.hidden) + 2
        for name in ("heads", "attn_dropout"):
            value = getattr(self, name)
            if len(value) == 1:
                object.__setattr__(self, name, tuple(value) * n_layers)

    def check(self) -> None:
        if len(self.hidden) not in (2, 3):
            raise ConfigError(f"hidden must list 2 or 3 layer sizes; got {len(self.hidden)}.")
        n_layers = len(self.hidden) + 2
        for name in ("heads", "attn_dropout"):
            if len(getattr(self, name)) != n_layers:
                raise ConfigError(
                    f"{name} needs {n_layers} values (one per hidden layer, then mu, then log-sigma) "
                    f"or a single value; got {len(getattr(self, name))}."
                )
        if self.val_fraction + self.test_fraction >= 0.6:
            raise ConfigError(
                "val_fraction + test_fraction must stay below 0.6 so the encoder keeps most edges."
            )


@dataclass
class Trained:
    net: CellVGAENet
    x: torch.Tensor
    split: EdgeSplit
    message: torch.Tensor
    outcome: StageOutcome
    steps_per_epoch: int = 0  # mini-batch training: steps (batches) per pass over the edges, per process
    ranks: dict | None = None  # distributed training: the number of processes and whether they agree
    lr_per_step: float | None = None  # mini-batch training: the learning rate each step used
    batch_info: dict | None = None  # partition batches: the number of parts, the share of edges inside one
    parts: np.ndarray | None = None  # partition batches: each cell's part (read-out groups are made of parts)


@dataclass
class EdgeSplit:
    """Undirected edges split for link prediction (the role of PyG's RandomLinkSplit)."""

    train_pos: torch.Tensor  # [2, E_train], each undirected edge once
    message: torch.Tensor  # [2, 2 E_train], both directions: the graph the encoder sees
    val_pos: torch.Tensor
    val_neg: torch.Tensor
    test_pos: torch.Tensor
    test_neg: torch.Tensor

    def every_edge(self) -> torch.Tensor:
        """[2, 2 E]: the training and held-out edges in both directions (the whole graph)."""
        edges = torch.cat([self.train_pos, self.val_pos, self.test_pos], dim=1)
        return torch.cat([edges, edges.flip(0)], dim=1)


def split_edges(edge_index: np.ndarray, n_nodes: int, *, val: float, test: float, seed: int) -> EdgeSplit:
    """Hold out ``val`` and ``test`` shares of the undirected edges, with as many sampled non-edges."""
    rng = np.random.default_rng(seed)
    src, dst = edge_index
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    keep = lo != hi
    pairs = np.unique(lo[keep].astype(np.int64) * n_nodes + hi[keep])
    pairs = pairs[rng.permutation(len(pairs))]
    n_val, n_test = int(len(pairs) * val), int(len(pairs) * test)
    if len(pairs) - n_val - n_test < 1:
        raise ConfigError("The graph has too few edges to hold some out; lower val_fraction/test_fraction.")
    val_pairs, test_pairs, train_pairs = pairs[:n_val], pairs[n_val : n_val + n_test], pairs[n_val + n_test :]
    known = np.sort(pairs)

    def non_edges(count: int) -> np.ndarray:
        out = np.empty(0, dtype=np.int64)
        while len(out) < count:
            a = rng.integers(0, n_nodes, size=2 * (count - len(out)) + 16)
            b = rng.integers(0, n_nodes, size=len(a))
            key = np.minimum(a, b) * n_nodes + np.maximum(a, b)
            pos = np.clip(np.searchsorted(known, key), 0, max(len(known) - 1, 0))
            ok = (a != b) & (known[pos] != key if len(known) else True)
            out = np.unique(np.concatenate([out, key[ok]]))
        return rng.permutation(out)[:count]

    def as_tensor(keys: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([keys // n_nodes, keys % n_nodes]).astype(np.int64))

    train = as_tensor(np.sort(train_pairs))
    return EdgeSplit(
        train_pos=train,
        message=torch.cat([train, train.flip(0)], dim=1),
        val_pos=as_tensor(val_pairs),
        val_neg=as_tensor(non_edges(n_val)),
        test_pos=as_tensor(test_pairs),
        test_neg=as_tensor(non_edges(n_test)),
    )


def link_scores(z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
    """AUROC and average precision of σ(z_iᵀz_j) on held-out edges against non-edges."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if pos.shape[1] == 0 or neg.shape[1] == 0:
        return {}
    with torch.no_grad():
        logits = (
            torch.cat([(z[pos[0]] * z[pos[1]]).sum(-1), (z[neg[0]] * z[neg[1]]).sum(-1)])
            .float()
            .cpu()
            .numpy()
        )
    truth = np.concatenate([np.ones(pos.shape[1]), np.zeros(neg.shape[1])])
    return {"auc": float(roc_auc_score(truth, logits)), "ap": float(average_precision_score(truth, logits))}


# The quick preset (#21, benchmarks/NOTES.md 2026-12-05): a small network (2 x 64 hidden, 3 heads, latent 16, lr 5e-3,
# 60 epochs) on a graph of 50 PCs of the graph genes with k = 10, drawn with scanpy's min_dist (0.5). Its KL weight
# is the paper's, 1 / cells (session 47): a fixed 3 (a beta-VAE, chosen in #21 to draw populations round rather than
# as strings) left the encoder weights meaningless: learnt expression (embedding x P_mu row) correlated positively
# with the observed expression for 33-82 % of the genes (chance is half) and lay 88-98 % along one direction, on
# every suite set; with 1 / cells 84-98 % and 37-67 %, ARI median over the seven sets 0.485 -> 0.509 (worst level).
# Above KL_RAMP[0] cells its weight rises towards LARGE_KL_FACTOR / cells (quick_kl_weight, CellVGAE.adapt). Its
# recipe adapts to many genes as the paper preset's does (session 48, seven sets x two seeds): ARI median 0.509 ->
# 0.625, worst 0.071 -> 0.314 (worm_neuron 0.07 -> 0.46 with 10-13 clusters instead of 73-182); learnt expression
# positive for a median 92 % of the genes (95 % before), paul15's 72 % the worst (95 % before: 1,000 genes hold more
# weak ones than 250).
QUICK = {
    "prepare": {"n_hvg": 250, "n_graph_genes": 250, "scale": "minmax"},
    "graph": {"kind": "knn", "k": 10, "metric": "euclidean", "use": "pca", "n_pcs": 50},
    "model": {
        "hidden": (64, 64),
        "heads": (3,),
        "attn_dropout": (0.2,),
        "feature_dropout": 0.2,
        "latent": 16,
        "lr": 5e-3,
        "epochs": 60,
        "recipe": "auto",
    },
    "train": {"eval_every": 10},
    "cluster": {"umap_min_dist": 0.5},
}
PAPER = {
    "prepare": {"n_hvg": 250, "n_graph_genes": 250, "scale": "minmax", "normalize": "auto"},
    "graph": {"kind": "knn", "k": 5, "metric": "euclidean", "use": "graph_genes", "symmetrize": "union"},
    "model": {
        "recipe": "auto",
        "conv": "gat",
        "hidden": (128, 128),
        "heads": (10,),
        "attn_dropout": (0.4, 0.4, 0.2, 0.2),
        "latent": 50,
        "regularizer": "kl",
        "lr": 1e-4,
        "epochs": 200,
    },
    "train": {"eval_every": 20},
}


# The recipe CellVGAE's presets adapt to an input of many genes. The paper trained on curated tables of
# 250 HVGs with a kNN graph (k = 5) built by scran on 10 principal components (MODELS.md 1.1); given a whole
# transcriptome, 250 HVGs and a graph on their raw values fail (worm_neuron, 13,488 sparse genes: ARI 0.04 with
# 167 clusters). On the seven-set suite (benchmarks/NOTES.md, seeds 0 and 1) this recipe raised the median ARI
# over sets from 0.51 to 0.64 and the worst set from 0.04 to 0.23. k = 15 instead of 10 (three seeds of the six
# sets this recipe applies to, 2026-12-05): worst set 0.29 -> 0.37 (paul15), mean over the seven sets 0.61 -> 0.63,
# median level (0.614 -> 0.609).
RECIPE_MIN_GENES = 1000
ADAPTED_RECIPE: dict[str, dict[str, Any]] = {
    "prepare": {"n_hvg": 1000, "n_graph_genes": 2000},
    "graph": {"use": "pca", "n_pcs": 50, "k": 15},
}


# The quick preset's KL weight, unless changed, is the paper's 1 / cells up to KL_RAMP[0] cells and
# LARGE_KL_FACTOR / cells from KL_RAMP[1]; in between it moves from one to the other on a log scale (quick_kl_weight),
# so it never jumps with the number of cells (until session 48 it jumped from 5e-5 to 0.105 above 20,000). Cells drawn
# from pbmc3k, quick, ARI [clusters] (benchmarks/NOTES.md, sessions 47-48): at 20,000 cells 1e-4 0.887 [9] against
# 0.105 (the former rule) 0.820 [7] (from pbmc4k 0.635 and 0.626); at 50,000, seeds 0 / 1, 1.5e-3 (this rule)
# 0.717 [4] / 0.826 [10], 0.042 (the former rule) 0.833 [8] / 0.810 [9], 1e-4 0.834 [6] / -; at 100,000 1e-5
# (1 / cells) 0.756 [5], 1e-4 0.757 [5], 0.021 (both rules) 0.851 [9]. The learnt expression followed the data at
# every one of these weights (84-97 % of genes positive).
KL_RAMP = (20_000, 100_000)
LARGE_KL_FACTOR = 2100.0
LARGE_KL_PRESETS = ("quick",)


def quick_kl_weight(n_cells: int) -> float:
    """The quick preset's KL weight for ``n_cells`` cells: 1 / cells up to ``KL_RAMP[0]``, ``LARGE_KL_FACTOR`` /
    cells from ``KL_RAMP[1]``, log-linear in the number of cells between the two."""
    low, high = KL_RAMP
    n = max(int(n_cells), 1)
    if n <= low:
        return 1.0 / n
    if n >= high:
        return LARGE_KL_FACTOR / n
    t = math.log(n / low) / math.log(high / low)
    return math.exp((1 - t) * math.log(1.0 / low) + t * math.log(LARGE_KL_FACTOR / high))


def kl_beta(p: CellVGAEParams, n_cells: int) -> float:
    """The KL term's weight: ``kl_weight`` when set, else ``kl_factor`` / the number of cells."""
    return float(p.kl_weight) if p.kl_weight is not None else p.kl_factor / max(n_cells, 1)


#: ``negatives = auto`` draws negatives from the bank (all cells) up to this many steps a pass, above from the
#: batch. Measured: 4-9 steps a pass (pbmc3k, scvgae_sample, paul15, bladder) the bank's clusters level or
#: better; 211-224 steps (100,000 cells drawn from pbmc3k, pbmc4k and kidney, 5 runs) the bank left held-out link
#: prediction at chance (AUC 0.46-0.50; in-batch 0.79-0.86) and the clusters did not tell the two apart (median ARI
#: 0.44 bank, 0.57 in-batch; the winner changed with the seed). Nothing measured between 9 and 211 steps.
BANK_MAX_STEPS = 16


def bank_or_batch(negatives: str, steps_per_pass: int) -> str:
    """What ``negatives`` means for a run with this many steps a pass: "all" or "batch"."""
    if negatives != "auto":
        return negatives
    return "all" if steps_per_pass <= BANK_MAX_STEPS else "batch"


class LatentBank:
    """Every cell's latent sample from the last training step that encoded it (no gradient), so a partition
    batch can draw negatives over all cells: a pair (u, v) takes u from the batch and v from every cell; v in
    the batch enters fresh, v outside it from the bank (a cell not yet encoded is swapped for a random batch
    cell). A fresh cell gets gradient from both ends of its in-batch pairs but from one end of a bank pair, so
    bank pairs count twice: each batch cell's share of the negative gradient is then what it is in full batch.
    With several processes each keeps its own bank (its own batches' cells)."""

    def __init__(self, n_cells: int, dim: int, device: torch.device) -> None:
        self.z = torch.zeros(n_cells, dim, device=device)
        self.seen = torch.zeros(n_cells, dtype=torch.bool, device=device)
        self.local = torch.full((n_cells,), -1, dtype=torch.long, device=device)

    def negative_loss(
        self, z: torch.Tensor, cells: torch.Tensor, n_neg: int, rng: np.random.Generator
    ) -> torch.Tensor | None:
        """The negative term for the batch whose cells ``cells`` (global ids) are z's first rows; then the
        bank takes those cells' samples."""
        import torch.nn.functional as F

        m, device = cells.numel(), z.device
        self.local[cells] = torch.arange(m, device=device)
        u = torch.from_numpy(rng.integers(0, m, n_neg)).to(device)
        v = torch.from_numpy(rng.integers(0, self.z.shape[0], n_neg)).to(device)
        local_v = self.local[v]
        stale = (local_v < 0) & self.seen[v]
        unseen = (local_v < 0) & ~self.seen[v]
        local_v = torch.where(unseen, torch.from_numpy(rng.integers(0, m, n_neg)).to(device), local_v)
        keep = stale | (local_v != u)  # no cell paired with itself
        fresh_v = z[local_v.clamp(min=0)]
        z_v = torch.where(stale[:, None], self.z[v].to(z.dtype), fresh_v)
        weight = (1.0 + stale.to(z.dtype)) * keep.to(z.dtype)
        self.local[cells] = -1
        with torch.no_grad():
            self.z[cells] = z[:m].detach().to(self.z.dtype)
            self.seen[cells] = True
        if not bool(keep.any()):
            return None
        return -(weight * F.logsigmoid(-(z[u] * z_v).sum(-1))).sum() / keep.sum()


def _batch_terms(
    net: CellVGAENet,
    trainer: Trainer,
    p: CellVGAEParams,
    beta: float,
    encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    pos: torch.Tensor,
    m: int,
    neg_ratio: float,
    rng: np.random.Generator,
    batch_x: torch.Tensor | None,
    bank: tuple[LatentBank, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A mini-batch step's loss terms. The batch's own cells are the first ``m`` rows of the encoded
    subgraph (sampled neighbours follow them); ``pos`` are its positive edges in those rows. Negatives are
    random pairs of the batch's cells, as many per positive as the full loss draws (``neg_ratio``), self
    pairs left out, or with ``bank`` (the bank and the batch cells' global ids) pairs of a batch cell and any
    cell (:class:`LatentBank`); the prior term averages over the batch's cells with the full loss's weight
    ``beta``; ``batch_x`` is the expression decoder's target for those cells."""
    import torch.nn.functional as F

    z, mu, s = encoded
    device = z.device
    n_neg = max(1, int(round(pos.shape[1] * neg_ratio)))
    recon = z.sum() * 0.0  # a batch without training edges (a tiny part) still gives a finite loss
    if bank is not None:
        term = bank[0].negative_loss(z, bank[1], n_neg, rng)
        if term is not None:
            recon = recon + term
    else:
        neg = torch.from_numpy(rng.integers(0, m, (2, n_neg))).to(device)
        neg = neg[:, neg[0] != neg[1]]
        if neg.shape[1]:
            recon = recon - F.logsigmoid(-(z[neg[0]] * z[neg[1]]).sum(-1)).mean()
    if pos.shape[1]:
        recon = recon - F.logsigmoid((z[pos[0]] * z[pos[1]]).sum(-1)).mean()
    terms = {"reconstruction": recon}
    own = slice(0, m)
    if p.regularizer == "kl":
        terms["kl"] = beta * kl_divergence(mu[own], s[own], parameterization=p.variance)
    else:
        terms["mmd"] = mmd_loss(z[own])
    if p.expr_decoder:
        with trainer.autocast():
            rebuilt = net.decode_expression(z[own])
        terms["expression"] = p.expr_weight * F.mse_loss(rebuilt.float(), batch_x)
    return terms


def _batch_plan(
    net: CellVGAENet, optimizer: torch.optim.Optimizer, p: CellVGAEParams, trainer: Trainer, n_batches: int
) -> tuple[int, int, np.random.Generator, np.random.Generator, Any, int]:
    """This process's rank and the world size; the batch order's generator (the same on every rank: each
    takes its share of the batches) and this rank's own generator for the draws inside a batch; the network
    as DistributedDataParallel wraps it; the steps per pass on this rank. With ``scale_lr`` the learning
    rate is divided by those steps (the paper's is per full-batch step, i.e. per pass)."""
    from ... import distributed

    rank, world = distributed.rank(), distributed.world_size()
    order_rng = np.random.default_rng(trainer.spec.seed)
    rng = np.random.default_rng([trainer.spec.seed, rank])
    steps = -(-n_batches // world)
    if p.scale_lr:
        for group in optimizer.param_groups:
            group["lr"] = p.lr / steps
    return rank, world, order_rng, rng, distributed.wrap(net), steps


def _batch_stage(
    net: CellVGAENet,
    optimizer: torch.optim.Optimizer,
    step: Any,
    evaluate: Any,
    p: CellVGAEParams,
    trainer: Trainer,
    steps: int,
    extra: dict[str, Any] | None = None,
) -> Stage:
    """The mini-batch training stage: one stage epoch per step, ``eval_every`` counted in passes."""
    every = trainer.spec.eval_every
    return Stage(
        "train",
        net,
        optimizer,
        step,
        p.epochs * steps,
        evaluate=evaluate,
        score="val_auc" if evaluate is not None else None,
        eval_every=every * steps if every else every,
        extra={"steps_per_epoch": steps, "lr_per_step": optimizer.param_groups[0]["lr"], **(extra or {})},
    )


@register
class CellVGAE(Model):
    name = "cellvgae"
    title = "CellVGAE"
    summary = (
        "Learns a cell embedding with a graph attention autoencoder, then finds clusters and reads marker "
        "genes off the encoder weights; no labels needed."
    )
    paper = "Buterez et al., Bioinformatics 38(5):1277, 2022"
    Params = CellVGAEParams
    presets = {"paper": PAPER, "quick": QUICK}
    smoke = {
        "model": {"hidden": [16, 16], "heads": [2], "latent": 8, "epochs": 8, "lr": 0.01},
        "prepare": {"n_hvg": 40, "n_graph_genes": 30},
        "cluster": {"min_cluster_sizes": [5, 10], "min_samples": [3, 5]},
        "train": {"eval_every": 2},
    }

    @classmethod
    def adapt(cls, config: Any, adata: Any) -> tuple[Any, str | None]:
        """The data recipe for many genes (:meth:`_adapt_recipe`), then the KL weight for many cells
        (:meth:`_adapt_kl`); returns the config and why (None when nothing changed)."""
        config, why_recipe = cls._adapt_recipe(config, adata)
        config, why_kl = cls._adapt_kl(config, adata)
        why = " ".join(w for w in (why_recipe, why_kl) if w)
        return config, why or None

    @classmethod
    def _adapt_kl(cls, config: Any, adata: Any) -> tuple[Any, str | None]:
        """Above ``KL_RAMP[0]`` cells the quick preset's 1 / cells, when not changed, becomes
        :func:`quick_kl_weight`."""
        p = config.params
        n = adata.n_obs
        unchanged = p.kl_weight is None and p.kl_factor == 1.0 and p.regularizer == "kl"
        if config.preset not in LARGE_KL_PRESETS or not unchanged or n <= KL_RAMP[0]:
            return config, None
        weight = quick_kl_weight(n)
        params = dataclasses.replace(p, kl_weight=weight)
        low, high = KL_RAMP
        why = (
            f"The input holds {n:,} cells (more than {low:,}), so the KL weight is {weight:.2g} instead of 1 / cells "
            f"= {1 / n:.1e}: the quick preset's weight rises from 1 / cells at {low:,} cells to "
            f"{LARGE_KL_FACTOR:,.0f} / cells at {high:,} (and stays so above), where it clustered 100,000 cells drawn "
            "from pbmc3k better (ARI 0.85 against 0.76). --kl-weight or --kl-factor keeps another weight."
        )
        return dataclasses.replace(config, params=params), why

    @classmethod
    def _adapt_recipe(cls, config: Any, adata: Any) -> tuple[Any, str | None]:
        """With ``recipe = auto`` and more than :data:`RECIPE_MIN_GENES` genes, the :data:`ADAPTED_RECIPE`
        for every preparation and graph setting still at its preset value; returns the config and why."""
        if config.params.recipe != "auto" or adata.n_vars <= RECIPE_MIN_GENES:
            return config, None
        preset = cls.presets.get(config.preset, {})
        changed: dict[str, dict[str, Any]] = {}
        for section, values in ADAPTED_RECIPE.items():
            current = getattr(config, section)
            defaults = {f.name: f.default for f in dataclasses.fields(current)}
            for name, value in values.items():
                untouched = getattr(current, name) == preset.get(section, {}).get(name, defaults[name])
                if untouched and getattr(current, name) != value:
                    changed.setdefault(section, {})[name] = value
        if not changed:
            return config, None
        config = dataclasses.replace(
            config,
            **{section: dataclasses.replace(getattr(config, section), **v) for section, v in changed.items()},
        )
        settings = ", ".join(f"{k} = {v}" for v in changed.values() for k, v in v.items())
        why = (
            f"The input holds {adata.n_vars:,} genes (more than {RECIPE_MIN_GENES:,}), so the recipe adapted to "
            f"it: {settings}. This was chosen on the seven-set dataset suite, where 250 HVGs and a graph on their "
            "values failed on whole transcriptomes; --recipe fixed keeps the preset's settings exactly."
        )
        return config, why

    def train_net(self, prepared, graph, params: CellVGAEParams, trainer: Trainer) -> Trained:
        """Build the network and run the training stage (no clustering or interpretation).

        With 0 < ``batch_size`` < the number of training edges, each step trains on a batch of them: the
        positives are the batch's edges, the negatives random pairs of the batch's cells (as many per positive
        as the full loss draws), and the encoder runs on the sampled neighbourhoods of those cells
        (:mod:`scgraph_core.nn.sampling`). The KL term averages over the batch's cells with the same weight,
        so a step's loss has the full-batch loss's scale."""
        p = params
        device = trainer.device
        seed = trainer.spec.seed
        x = torch.from_numpy(np.ascontiguousarray(prepared.features, dtype=np.float32)).to(device)
        n_cells, n_genes = x.shape
        split = split_edges(graph.edge_index, n_cells, val=p.val_fraction, test=p.test_fraction, seed=seed)
        message = split.message.to(device)
        train_pos = split.train_pos.to(device)
        net = CellVGAENet(
            n_genes,
            conv=p.conv,
            hidden=p.hidden,
            heads=p.heads,
            attn_dropout=p.attn_dropout,
            feature_dropout=p.feature_dropout,
            latent=p.latent,
            variance=p.variance,
            expr_decoder_hidden=p.expr_decoder or None,
        ).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=p.lr)
        beta = kl_beta(p, n_cells)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        from ... import distributed

        if distributed.active() and not 0 < p.batch_size < split.train_pos.shape[1]:
            raise ConfigError(
                f"Training on several processes needs batches smaller than the graph's "
                f"{split.train_pos.shape[1]:,} training edges: lower --batch-size."
            )
        if 0 < p.batch_size < split.train_pos.shape[1]:
            make = self._partition_stage if p.batch_mode == "parts" else self._minibatch_stage
            stage = make(net, optimizer, x, split, p, trainer, beta)
            outcome = trainer.run_stage(stage)
            trained = Trained(
                net,
                x,
                split,
                message,
                outcome,
                steps_per_epoch=stage.extra["steps_per_epoch"],
                lr_per_step=stage.extra["lr_per_step"],
                batch_info={
                    k: v for k, v in stage.extra.items() if k.startswith("parts") or k == "negatives"
                },
                parts=stage.extra.get("cell_parts"),
            )
            if distributed.active():
                trained.ranks = {"world_size": distributed.world_size(), "in_sync": distributed.in_sync(net)}
            return trained

        def step(epoch: int) -> dict[str, torch.Tensor]:
            with trainer.autocast():
                z, mu, s = net(x, message)
            z, mu, s = z.float(), mu.float(), s.float()
            terms = {"reconstruction": edge_reconstruction_loss(z, train_pos, n_cells, generator=gen)}
            if p.regularizer == "kl":
                terms["kl"] = beta * kl_divergence(mu, s, parameterization=p.variance)
            else:
                terms["mmd"] = mmd_loss(z, generator=gen)
            if p.expr_decoder:
                with trainer.autocast():
                    recon = net.decode_expression(z)
                terms["expression"] = p.expr_weight * torch.nn.functional.mse_loss(recon.float(), x)
            return terms

        def evaluate() -> dict[str, float]:
            net.eval()
            with torch.no_grad(), trainer.autocast():
                mu, _ = net.encode(x, message)
            scores = link_scores(mu.float(), split.val_pos.to(device), split.val_neg.to(device))
            return {f"val_{k}": v for k, v in scores.items()}

        has_val = split.val_pos.shape[1] > 0
        stage = Stage(
            "train",
            net,
            optimizer,
            step,
            p.epochs,
            evaluate=evaluate if has_val else None,
            score="val_auc" if has_val else None,
        )
        outcome = trainer.run_stage(stage)
        return Trained(net=net, x=x, split=split, message=message, outcome=outcome)

    @staticmethod
    def _minibatch_stage(
        net: CellVGAENet,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        split: EdgeSplit,
        p: CellVGAEParams,
        trainer: Trainer,
        beta: float,
    ) -> Stage:
        """The training stage on sampled subgraphs: one stage epoch is one batch of cells."""

        from ...nn.sampling import NeighbourSampler

        device = x.device
        n_cells = x.shape[0]
        hops = len(p.hidden) + 1  # the hidden layers, then the fused mu / log-sigma layer
        sampler = NeighbourSampler(split.message.numpy(), n_cells, [p.fanout] * hops)
        train_pos = split.train_pos.numpy()
        n_edges = train_pos.shape[1]
        rank, world, order_rng, rng, forward, steps = _batch_plan(
            net, optimizer, p, trainer, -(-n_edges // p.batch_size)
        )
        # The full loss draws E + N negatives for E positives: the same ratio per batch.
        neg_ratio = 1.0 + n_cells / max(n_edges, 1)
        batches: list[np.ndarray] = []

        def encode(cells: np.ndarray, draw: np.random.Generator) -> tuple[torch.Tensor, ...]:
            sub = sampler.sample(cells, draw)
            nodes = torch.from_numpy(sub.nodes).to(device)
            edges = torch.from_numpy(sub.edge_index).to(device)
            with trainer.autocast():
                z, mu, s = (forward if net.training else net)(x[nodes], edges)
            return z.float(), mu.float(), s.float(), torch.from_numpy(sub.seed_local).to(device), sub.n_seeds

        def step(epoch: int) -> dict[str, torch.Tensor]:
            if not batches:
                perm = order_rng.permutation(n_edges)
                every = [perm[i : i + p.batch_size] for i in range(0, n_edges, p.batch_size)]
                every += every[: steps * world - len(every)]  # the same number of steps on every rank
                batches.extend(every[rank::world])
            pos = train_pos[:, batches.pop(0)]
            z, mu, s, where, n_seeds = encode(pos.ravel(), rng)
            pos_l = where.reshape(2, -1)
            flat = pos.ravel()
            first = np.sort(np.unique(flat, return_index=True)[1])  # the seeds' order in the subgraph
            seeds_x = x[torch.from_numpy(flat[first]).to(device)] if p.expr_decoder else None
            return _batch_terms(net, trainer, p, beta, (z, mu, s), pos_l, n_seeds, neg_ratio, rng, seeds_x)

        # Link prediction scored on up to 5,000 held-out edges and as many non-edges, each time with the same
        # sampled neighbourhoods, so the scores are comparable between evaluations.
        pick = np.random.default_rng(trainer.spec.seed + 1)
        val_pos, val_neg = split.val_pos.numpy(), split.val_neg.numpy()
        val_pos = val_pos[:, pick.permutation(val_pos.shape[1])[:5000]]
        val_neg = val_neg[:, pick.permutation(val_neg.shape[1])[:5000]]

        def evaluate() -> dict[str, float]:
            net.eval()
            cells = np.concatenate([val_pos.ravel(), val_neg.ravel()])
            with torch.no_grad():
                _, mu, _, where, _ = encode(cells, np.random.default_rng(trainer.spec.seed + 2))
            n_pos = val_pos.size
            local_pos = where[:n_pos].reshape(2, -1)
            local_neg = where[n_pos:].reshape(2, -1)
            return {f"val_{k}": v for k, v in link_scores(mu, local_pos, local_neg).items()}

        has_val = split.val_pos.shape[1] > 0
        return _batch_stage(net, optimizer, step, evaluate if has_val else None, p, trainer, steps)

    @staticmethod
    def _partition_stage(
        net: CellVGAENet,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        split: EdgeSplit,
        p: CellVGAEParams,
        trainer: Trainer,
        beta: float,
    ) -> Stage:
        """The training stage on partition batches (:mod:`scgraph_core.nn.partition`): the cells are cut once
        into k-means parts; one stage epoch (one step) trains on the subgraph induced by ``parts_per_batch``
        parts, a pass visits every part once. Positives are the training edges among the batch's cells,
        negatives pairs of a batch cell and any cell (``negatives = all``, :class:`LatentBank`) or of two batch
        cells (as many per positive as the full loss draws), the KL term averages over the batch's cells with
        the full loss's weight."""

        from ...nn.partition import PartitionBatches, kmeans_parts

        device = x.device
        n_cells = x.shape[0]
        seed = trainer.spec.seed
        train_pos = split.train_pos.numpy()
        n_edges = train_pos.shape[1]
        q = p.parts_per_batch
        asked = int(min(n_cells, max(q, round(q * n_edges / p.batch_size))))
        # Every rank computes the same parts: the same seed on the same features.
        parts = kmeans_parts(x.detach().cpu().numpy(), asked, seed=seed)
        batches_of = PartitionBatches(parts, split.message.numpy(), train_pos, halo=p.halo)
        n_parts = batches_of.n_parts  # the balancing may have cut large parts
        rank, world, order_rng, rng, forward, steps = _batch_plan(
            net, optimizer, p, trainer, -(-n_parts // q)
        )
        neg_ratio = 1.0 + n_cells / max(n_edges, 1)
        negatives = bank_or_batch(p.negatives, steps)  # this rank's steps a pass (metrics: steps_per_epoch)
        bank = LatentBank(n_cells, p.latent, device) if negatives == "all" else None
        queue: list[np.ndarray] = []

        def encode(batch) -> tuple[torch.Tensor, ...]:
            cells = torch.from_numpy(batch.cells).to(device)
            edges = torch.from_numpy(batch.edge_index).to(device)
            with trainer.autocast():
                z, mu, s = (forward if net.training else net)(x[cells], edges)
            return z.float(), mu.float(), s.float()

        def step(epoch: int) -> dict[str, torch.Tensor]:
            if not queue:
                perm = order_rng.permutation(n_parts)
                every = [perm[i : i + q] for i in range(0, n_parts, q)]
                every += every[: steps * world - len(every)]  # the same number of steps on every rank
                queue.extend(every[rank::world])
            batch = batches_of.batch(queue.pop(0))
            pos = torch.from_numpy(batch.pos).to(device)
            cells = torch.from_numpy(batch.cells[: batch.n_own]).to(device)  # the halo is context only
            cells_x = x[cells] if p.expr_decoder else None
            with_bank = (bank, cells) if bank is not None else None
            return _batch_terms(
                net,
                trainer,
                p,
                beta,
                encode(batch),
                pos,
                batch.n_own,
                neg_ratio,
                rng,
                cells_x,
                with_bank,
            )

        # Link prediction on the held-out edges inside a fixed set of parts (the first batch of a fixed
        # order), encoded on their induced subgraph every time, so scores are comparable between evaluations.
        val_pos, val_neg = split.val_pos.numpy(), split.val_neg.numpy()
        fixed = np.random.default_rng(seed + 1).permutation(n_parts)[: max(q, 1)]
        val_batch = batches_of.batch(fixed)
        local = np.full(n_cells, -1, dtype=np.int64)
        local[val_batch.cells[: val_batch.n_own]] = np.arange(val_batch.n_own)  # scored on own cells alone

        def inside(e: np.ndarray) -> torch.Tensor:
            e = local[e]
            return torch.from_numpy(e[:, (e >= 0).all(axis=0)][:, :5000]).to(device)

        val_pos_l, val_neg_l = inside(val_pos), inside(val_neg)

        def evaluate() -> dict[str, float]:
            net.eval()
            with torch.no_grad():
                _, mu, _ = encode(val_batch)
            return {f"val_{k}": v for k, v in link_scores(mu, val_pos_l, val_neg_l).items()}

        has_val = split.val_pos.shape[1] > 0 and val_pos_l.shape[1] > 0 and val_neg_l.shape[1] > 0
        extra = {
            "parts": n_parts,
            "parts_edges_within": round(batches_of.within_share, 4),
            "cell_parts": parts,
            "negatives": negatives,
        }
        return _batch_stage(net, optimizer, step, evaluate if has_val else None, p, trainer, steps, extra)

    def train(
        self,
        prepared,
        graph,
        params: CellVGAEParams,
        trainer: Trainer,
        *,
        cluster: Any = None,
        labels: Any = None,
    ) -> None:
        self.read_out(self.train_net(prepared, graph, params, trainer), prepared, params, trainer)

    def read_out(self, trained: Trained, prepared: Any, params: CellVGAEParams, trainer: Trainer) -> None:
        """After training: the embedding of every cell, link-prediction scores and the metrics; the attention
        is read later by :meth:`attention`. After mini-batch training of more than ``readout_cells`` cells,
        group by group (:mod:`scgraph_core.nn.halo`)."""
        p = params
        device = trainer.device
        net, x, split, message = trained.net, trained.x, trained.split, trained.message
        # Link prediction is scored on an eval-mode pass over the training edges (the held-out edges
        # unseen); the embedding is read over every edge unless embed_edges = train (MODELS.md 1.5: the
        # authors' code reads it over the training edges, which drops 10 % of a k = 5 graph's edges).
        net.eval()
        self._groups = self._readout_groups(trained, p, trainer.spec.seed)
        self._read_maps = None
        if self._groups is not None:  # group by group: the attention is read in the same pass
            want = p.attention and p.conv != "gcn"
            mu_t, s_t, self._read_maps = self._read_groups(net, x, message, want and p.embed_edges != "all")
            mu_link = mu_t
            if p.embed_edges == "all":
                message = split.every_edge().to(device)
                mu_t, s_t, self._read_maps = self._read_groups(net, x, message, want)
        else:
            # One pass reads the embedding and the attention together; the cached graph structures are
            # dropped after each pass (analysis does not need them, and at 1,000,000 cells they are GBs).
            want = p.attention and p.conv != "gcn"
            with torch.no_grad():
                if p.embed_edges == "all":
                    mu_link, _ = net.encode(x, message)
                    clear_graph_cache()
                    message = split.every_edge().to(device)  # also the graph the attention is read over
                collected: dict[str, tuple] | None = {} if want else None
                mu_t, s_t = net._encode(x, message, collected)
                if p.embed_edges != "all":
                    mu_link = mu_t
            clear_graph_cache()
            if collected is not None:
                self._read_maps = {
                    name: (
                        _np(collected[name][0]).astype(np.int64, copy=False),
                        _np(collected[name][1].float()),
                    )
                    for name in net.layer_names()
                }
                del collected
        n_cells, n_genes = x.shape
        outcome = trained.outcome
        scores: dict[str, Any] = {
            "epochs_run": outcome.epochs_run,
            "stopped": outcome.stopped,
            "best_epoch": outcome.best_epoch,
            "seconds_per_epoch": outcome.seconds_per_epoch,
            "n_cells": n_cells,
            "n_features": n_genes,
            "n_train_edges": int(split.train_pos.shape[1]),
        }
        if p.regularizer == "kl":
            scores["kl_weight"] = kl_beta(p, n_cells)
        if trained.steps_per_epoch:
            scores["steps_per_epoch"] = trained.steps_per_epoch
            scores["lr_per_step"] = trained.lr_per_step
            scores["scale_lr"] = bool(p.scale_lr)
        scores.update(trained.batch_info or {})
        if trained.batch_info:
            scores["halo"] = p.halo
        if self._groups is not None:
            scores["readout_groups"] = len(self._groups)
        if trained.ranks:
            scores["processes"] = trained.ranks["world_size"]
            scores["processes_in_sync"] = trained.ranks["in_sync"]
        for name, pos, neg in (
            ("val", split.val_pos, split.val_neg),
            ("test", split.test_pos, split.test_neg),
        ):
            for k, v in link_scores(mu_link.float(), pos.to(device), neg.to(device)).items():
                scores[f"{name}_{k}"] = v
        self._trained = trained
        self._params = p
        self._message = message
        self._mu = mu_t.float().cpu().numpy()
        self._log_sigma = s_t.float().cpu().numpy()
        self._scores = scores
        self._feature_genes = list(prepared.feature_genes)

    @staticmethod
    def _readout_groups(trained: Trained, p: CellVGAEParams, seed: int) -> list[np.ndarray] | None:
        """Groups of cells the embedding and attention are read in (:mod:`scgraph_core.nn.halo`), or None for
        one pass over the whole graph: full-batch training held the whole graph anyway, and a graph of at most
        ``readout_cells`` cells is one group."""
        from ...nn.halo import cores
        from ...nn.partition import kmeans_parts

        n_cells = trained.x.shape[0]
        if not trained.steps_per_epoch or not p.readout_cells or n_cells <= p.readout_cells:
            return None
        parts = trained.parts
        if parts is None:  # sampled neighbourhoods: parts of neighbouring cells for the read-out only
            want = max(2, -(-n_cells // max(p.readout_cells // 8, 1)))
            parts = kmeans_parts(trained.x.detach().cpu().numpy(), min(want, n_cells), seed=seed)
        return cores(parts, p.readout_cells)

    def _read_groups(
        self, net: CellVGAENet, x: torch.Tensor, edge_index: torch.Tensor, attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple] | None]:
        """(mu, s) of every cell and, with ``attention``, :meth:`CellVGAENet.attention` of the whole graph, read
        group by group on each group's neighbourhood (:mod:`scgraph_core.nn.halo`): the same numbers as one pass.
        Every edge points into one cell, whose group reads its attention; the edges come back in the order one
        pass reports them. ``net`` must be in eval mode."""
        from ...nn.halo import halo_groups, self_loop_order

        ei = edge_index.cpu().numpy().astype(np.int64)
        n_cells = x.shape[0]
        where = self_loop_order(ei)
        kept = ei[:, where >= 0]
        n_kept = kept.shape[1]
        mu = s = None
        out: dict[str, np.ndarray] = {}
        for g in halo_groups(ei, n_cells, self._groups, net.receptive_hops()):
            sub = g.edge_index
            collected: dict[str, tuple] | None = {} if attention else None
            with torch.no_grad():
                m, v = net._encode(
                    x[torch.from_numpy(g.nodes).to(x.device)], torch.from_numpy(sub).to(x.device), collected
                )
            c = g.core.size
            if mu is None:
                mu = torch.empty((n_cells, m.shape[1]), dtype=m.dtype, device=m.device)
                s = torch.empty_like(mu)
            core = torch.from_numpy(g.core).to(x.device)
            mu[core], s[core] = m[:c], v[:c]
            if collected is None:
                continue
            sub_keep = sub[0] != sub[1]
            ids = g.edge_ids[sub_keep]
            into_core = sub[1, sub_keep] < c
            n_sub = int(sub_keep.sum())
            for name in net.layer_names():
                alpha = collected[name][1].detach().float().cpu().numpy()
                if name not in out:
                    out[name] = np.empty((n_kept + n_cells, alpha.shape[1]), dtype=np.float32)
                out[name][where[ids[into_core]]] = alpha[:n_sub][into_core]
                out[name][n_kept + g.core] = alpha[n_sub : n_sub + c]
        if not attention:
            return mu, s, None
        full_ei = np.concatenate([kept, np.stack([np.arange(n_cells)] * 2)], axis=1)
        return mu, s, {name: (full_ei, alpha) for name, alpha in out.items()}

    def embed(self) -> Embedding:
        return Embedding("X_cellvgae", self._mu, extra={"X_cellvgae_log_sigma": self._log_sigma})

    def training_metrics(self) -> dict[str, Any]:
        return dict(self._scores)

    def attention(self) -> list[AttentionMap]:
        p = self._params
        if not p.attention or p.conv == "gcn":
            return []
        from ... import interpret

        x = self._trained.x
        maps = []
        # Every layer's attention is read with the embedding (read_out); read again only if it was not.
        read = getattr(self, "_read_maps", None)
        if read is None:
            read = self._trained.net.attention(x, self._message)
        for layer, (ei, alpha) in read.items():
            ei = _np(ei).astype(np.int64, copy=False)
            alpha = _np(alpha).astype(np.float32, copy=False)
            n_cells = x.shape[0]
            node = {
                "": interpret.node_attention(ei, alpha, n_cells, mode="touching"),
                "_neighbourhood": interpret.node_attention(ei, alpha, n_cells, mode="incoming_mean"),
            }
            maps.append(AttentionMap(layer, ei, alpha, kind="graph", node_values=node, top_edges=120))
        return maps

    def gene_weights(self) -> GeneWeights:
        p_mu, p_sigma = self._trained.net.gene_weights()
        return GeneWeights(p_mu, p_sigma, self._feature_genes, n_markers=self._params.marker_genes)

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"epoch": e["epoch"], "loss": e["loss"], **e["losses"], **(e.get("validation") or {})}
                for e in self._trained.outcome.history
            ]
        )

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self._trained.net.state_dict().items()}


def _np(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
