"""scBiGNN (Yang et al. 2023), the user-facing model: cell-type annotation from partial labels (MODELS.md 2).

The networks are in :mod:`.module`: q_φ (:class:`~.module.GeneNet`, self-attention over each cell's expressed
genes) and p_θ (:class:`~.module.CellNet`, propagation over a kNN graph of q_φ's cell embeddings). Training:

1. pre-train q_φ on the labelled cells (cross-entropy, mini-batches);
2. up to 3 EM rounds (:func:`scgraph_core.loops.alternate`), each
   - kNN (k = 5, union, no self loops) on q_φ's embeddings h, rebuilt every round, Â = D⁻¹A;
   - M-step: p_θ, full batch, on CE(labelled) + CE(unlabelled vs ŷ ~ q_φ), early-stopped on a 10 % labelled
     validation split;
   - E-step: q_φ on mini-batches of CE(unlabelled vs ŷ ~ p_θ) + β·CE(labelled).

Labels reach the model only through :meth:`LabelSpec.training_labels` (what the losses may see) and
:meth:`LabelSpec.split` (which cells are held out, scored but never in a loss). Widths, schedules and
optimiser settings the paper does not report are parameters below, marked "ours" in their help.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ...errors import ConfigError, DataError
from ...nn.sparse import csr_tensor
from ...params import param
from ...train import Stage, Trainer
from ..base import Embedding, Model, Partition, Probabilities, Report, register
from .module import READOUTS, CellNet, GeneNet

if TYPE_CHECKING:
    from ...data import Prepared
    from ...labels import LabelSpec


@dataclass(frozen=True)
class ScBiGNNParams:
    """scBiGNN settings (Yang et al. 2023; MODELS.md section 2). "ours": not reported in the paper."""

    n_genes: int = param(1000, "T: genes the model reads, those of highest variance (MODELS.md 2.1)", min=2)
    gene_ranking: str = param(
        "variance",
        "how the T genes are ranked: variance of log(1 + 10^6 x / sum) (the paper) or the preparation's "
        "highly variable genes",
        choices=("variance", "hvg"),
    )
    max_tokens: int = param(
        1000,
        "most genes one cell's sequence holds; a cell expressing more keeps its highest values (memory bound)",
        min=1,
        advanced=True,
    )
    keep_tokens: str = param(
        "highest",
        "which genes a cell keeps when it expresses more than max_tokens: its highest values, or its most "
        "distinctive (expression relative to the gene's mean and spread over cells, so housekeeping genes give "
        "way to markers; it lowered q_phi on one of two benchmark sets). Ours: the paper reads every expressed gene",
        choices=("highest", "distinctive"),
        advanced=True,
    )
    width: int = param(32, "width of gene tokens and cell embeddings h (paper: 32)", min=2, max=1024)
    gene_layers: int = param(2, "gene-level attention layers (paper: 2, or 1 on BaronMouse)", min=1, max=8)
    heads: int = param(
        1, "attention heads per layer, concatenated (paper: 1, or 4 on BaronMouse)", min=1, max=16
    )
    readout: str = param(
        "weights", "cell read-out: a learnt weight per gene (paper) or the plain mean", choices=READOUTS
    )
    attention_scale: str = param(
        "sqrt",
        "scale of the attention scores: 1/sqrt(head width) (ours) or none (as the paper writes P·Pᵀ)",
        choices=("sqrt", "none"),
        advanced=True,
    )
    residual: bool = param(
        True,
        "add each gene-level layer's input to its output, F' = F + MLP(R·P) (ours: the paper writes F' = "
        "MLP(R·P); without it q_phi learns far more slowly, 0.75-0.85 held-out accuracy where a linear model "
        "reaches 0.92-0.98; off = the formula as written)",
        advanced=True,
    )
    cell_layers: int = param(3, "propagation layers of the cell-level network (paper: 3)", min=1, max=8)
    k: int = param(5, "neighbours per cell in the kNN graph on h (paper: 5)", min=1, max=100)
    em_rounds: int = param(3, "EM rounds after pre-training (paper: at most 3)", min=1, max=10)
    pretrain_epochs: int = param(
        20, "epochs of q_phi pre-training on labelled cells (ours)", min=0, max=10000
    )
    min_pretrain_steps: int = param(
        0,
        "fewest optimisation steps of the pre-training, however few cells are labelled (ours; 0 = epochs only: "
        "with 27 labelled cells, 20 epochs are 20 steps)",
        min=0,
        max=100000,
    )
    pretrain_patience: int = param(
        0,
        "evaluations of q_phi's accuracy on the validation labels without improvement before the pre-training "
        "stops, keeping its best weights (ours; 0 = run every epoch). Makes pretrain_epochs a ceiling",
        min=0,
        max=10000,
        advanced=True,
    )
    estep_epochs: int = param(10, "epochs of q_phi per E-step (ours)", min=1, max=10000)
    estep_patience: int = param(
        0,
        "evaluations of q_phi's validation accuracy without improvement before an E-step stops, keeping its "
        "best weights (ours; 0 = run every epoch)",
        min=0,
        max=10000,
        advanced=True,
    )
    mstep_epochs: int = param(200, "most full-batch epochs of p_theta per M-step (ours)", min=1, max=100000)
    mstep_patience: int = param(
        5, "evaluations without a better validation accuracy before an M-step stops (ours)", min=1, max=1000
    )
    val_fraction: float = param(
        0.1, "share of the training labels kept aside to early-stop the M-step (ours)", min=0.0, max=0.5
    )
    lr: float = param(1e-3, "Adam learning rate of both networks (ours)", min=1e-7, max=1.0)
    weight_decay: float = param(5e-4, "Adam weight decay (ours)", min=0.0, max=1.0)
    batch_labelled: int = param(256, "labelled cells per q_phi mini-batch (ours)", min=1, max=100000)
    batch_unlabelled: int = param(256, "unlabelled cells per q_phi mini-batch (ours)", min=1, max=100000)
    beta: float = param(1.0, "weight of the labelled cross-entropy in the E-step (paper: 1)", min=0.0)
    soft_targets: bool = param(
        False, "train on the other network's probabilities instead of sampled pseudo-labels (lower variance)"
    )
    importance_cells: int = param(
        2000, "cells whose attention maps are averaged into gene importance (0 = none)", min=0, advanced=True
    )
    top_genes: int = param(50, "genes listed as the most important (MODELS.md 2.5)", min=1, max=10000)

    def check(self) -> None:
        if self.width % self.heads:
            raise ConfigError(
                f"width ({self.width}) must be divisible by heads ({self.heads}): each head gets width/heads dims."
            )


QUICK = {
    "prepare": {"normalize": "auto", "target_sum": 1e6, "n_hvg": 500, "n_graph_genes": 500, "scale": "none"},
    "graph": {"kind": "knn", "k": 5, "use": "pca", "n_pcs": 30},
    "model": {
        "n_genes": 500,
        "max_tokens": 256,
        "em_rounds": 2,
        "pretrain_epochs": 10,
        "estep_epochs": 3,
        "mstep_epochs": 100,
        "importance_cells": 500,
    },
    "train": {"eval_every": 5},
}
PAPER = {
    "prepare": {
        "normalize": "auto",
        "target_sum": 1e6,
        "n_hvg": 1000,
        "n_graph_genes": 1000,
        "scale": "none",
    },
    "graph": {"kind": "knn", "k": 5, "use": "pca", "n_pcs": 50},
    "model": {},
    "train": {"eval_every": 5},
}


# =============================================================================================
# Cells as gene sequences
# =============================================================================================


# q_phi's mini-batches run as groups of at most this many cells of similar length (GeneSequences.by_length)
LENGTH_GROUP = 32
# Sequence widths are rounded up to a multiple of this. Under bfloat16 autocast on the CPU every new input shape
# gets its own oneDNN kernel and scratch memory, kept in a cache: with one width per length group the resident
# memory of a 2,000-cell run grew by 1 GB over the first 40 pre-training steps (float32: flat). Masked padding
# changes no output.
PAD_TO = 16


class GeneSequences:
    """Each cell's expressed genes among the T model genes, as padded mini-batches (MODELS.md 2.2).

    ``matrix`` is cells x T (log values). A cell expressing more than ``max_tokens`` genes keeps those with
    the highest ``keep`` score: "highest" the value itself, "distinctive" the value standardised per gene
    ((x_ij - mean_j) / sd_j over all cells, zeros included), so a marker outranks a gene every cell expresses; a cell expressing none gets one "no expressed gene" token (index T, value 0), so no sequence is
    empty. A batch is padded to its own longest cell, so memory depends on the batch, not on N.
    """

    def __init__(self, matrix: sp.csr_matrix, max_tokens: int, keep: str = "highest") -> None:
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        m.eliminate_zeros()
        m.sort_indices()
        self.n_genes = m.shape[1]
        if keep not in ("highest", "distinctive"):
            raise ConfigError(f"keep must be 'highest' or 'distinctive'; got {keep!r}.")
        rank = m.data
        if keep == "distinctive":
            n = max(m.shape[0], 1)
            mean = np.asarray(m.sum(axis=0), dtype=np.float64).ravel() / n
            sq = np.asarray(m.multiply(m).sum(axis=0), dtype=np.float64).ravel() / n
            sd = np.sqrt(np.maximum(sq - mean**2, 0.0))
            sd[sd == 0] = 1.0
            rank = ((m.data - mean[m.indices]) / sd[m.indices]).astype(np.float32)
        lengths = np.diff(m.indptr)
        self.truncated = int((lengths > max_tokens).sum())
        if self.truncated:
            rows, cols, vals = [], [], []
            for i in range(m.shape[0]):
                s, e = m.indptr[i], m.indptr[i + 1]
                idx, v = m.indices[s:e], m.data[s:e]
                if e - s > max_tokens:
                    kept = np.sort(np.argsort(-rank[s:e], kind="stable")[:max_tokens])
                    idx, v = idx[kept], v[kept]
                rows.append(np.full(idx.size, i))
                cols.append(idx)
                vals.append(v)
            m = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape
            )
            m.sort_indices()
        self.indptr, self.indices, self.data = m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data
        self.lengths = np.diff(self.indptr)

    def batch(self, cells: np.ndarray, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(genes [B, L] long, values [B, L] float, mask [B, L] bool) for ``cells``, L = the longest, rounded up
        to a multiple of ``pad_to`` (masked padding: the same outputs, fewer distinct shapes)."""
        cells = np.asarray(cells, dtype=np.int64)
        lens = self.lengths[cells]
        width = max(int(lens.max(initial=0)), 1)
        width = -(-width // pad_to) * pad_to
        genes = np.full((cells.size, width), self.n_genes, dtype=np.int64)
        values = np.zeros((cells.size, width), dtype=np.float32)
        slots = np.arange(width)[None, :] < lens[:, None]
        offsets = np.repeat(self.indptr[cells] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        flat = np.arange(int(lens.sum())) + offsets
        genes[slots] = self.indices[flat]
        values[slots] = self.data[flat]
        slots[lens == 0, 0] = True  # the "no expressed gene" token
        return torch.from_numpy(genes), torch.from_numpy(values), torch.from_numpy(slots)

    def by_length(self, cells: np.ndarray, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``cells`` cut into groups of at most ``chunk`` cells of similar length: [(positions in ``cells``,
        cells)], shortest first. A batch padded to its longest cell wastes most of its attention on padding
        (a random batch of 256 is padded to 2-10x the mean length); cells do not interact in q_phi, so
        running the groups one after the other and putting the outputs back in order gives the same numbers
        (and, with the losses summed over the groups, the same gradients) at a fraction of the cost."""
        cells = np.asarray(cells, dtype=np.int64)
        order = np.argsort(self.lengths[cells], kind="stable")
        return [(order[s : s + chunk], cells[order[s : s + chunk]]) for s in range(0, cells.size, chunk)]


def forward_by_length(
    net: GeneNet,
    seqs: GeneSequences,
    cells: np.ndarray,
    chunk: int,
    device: torch.device,
    autocast: Any = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q_φ's (logits [B, C], h [B, d]) for ``cells``, in their order, computed in groups of at most ``chunk``
    cells of similar length (:meth:`GeneSequences.by_length`); differentiable like one padded batch."""
    positions, logits, hs = [], [], []
    for where, group in seqs.by_length(cells, chunk):
        genes, values, mask = (t.to(device) for t in seqs.batch(group, PAD_TO))
        with autocast():
            out, h = net(genes, values, mask)
        positions.append(torch.from_numpy(where))
        logits.append(out.float())
        hs.append(h.float())
    inverse = torch.argsort(torch.cat(positions)).to(device)
    return torch.cat(logits)[inverse], torch.cat(hs)[inverse]


class Batches:
    """An endless stream of shuffled mini-batches of ``cells``: a new permutation at each pass."""

    def __init__(self, cells: np.ndarray, size: int, rng: np.random.Generator) -> None:
        self.cells, self.size, self.rng = np.asarray(cells, dtype=np.int64), size, rng
        self._order, self._pos = np.empty(0, dtype=np.int64), 0

    def __len__(self) -> int:
        return int(np.ceil(self.cells.size / self.size)) if self.cells.size else 0

    def next(self) -> np.ndarray:
        if self._pos >= self._order.size:
            self._order, self._pos = self.rng.permutation(self.cells), 0
        out = self._order[self._pos : self._pos + self.size]
        self._pos += self.size
        return out


def select_genes(lognorm: Any, n_genes: int, ranking: str, hvg: np.ndarray | None) -> np.ndarray:
    """Column indices (ascending) of the model's T genes: the highest variance of the log values (MODELS.md
    2.1) or the preparation's highly variable genes (the first T of them by variance)."""
    m = sp.csr_matrix(lognorm, dtype=np.float64)
    n = m.shape[0]
    mean = np.asarray(m.sum(axis=0)).ravel() / n
    var = np.asarray(m.multiply(m).sum(axis=0)).ravel() / n - mean**2
    pool = np.arange(m.shape[1]) if ranking == "variance" or hvg is None else np.flatnonzero(hvg)
    order = pool[np.argsort(-var[pool], kind="stable")]
    return np.sort(order[: min(n_genes, order.size)])


def row_normalised(edge_index: np.ndarray, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Â = D⁻¹A (row = receiving cell, self loops dropped) and Âᵀ as sparse CSR tensors."""
    src, dst = np.asarray(edge_index, dtype=np.int64)
    keep = src != dst
    a = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (dst[keep], src[keep])), shape=(n, n))
    deg = np.asarray(a.sum(axis=1)).ravel()
    a = sp.csr_matrix(sp.diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0).astype(np.float32)) @ a)

    def tensor(mat: sp.csr_matrix) -> torch.Tensor:
        mat = sp.csr_matrix(mat, dtype=np.float32)
        mat.sort_indices()
        return csr_tensor(
            torch.from_numpy(mat.indptr.astype(np.int64)).to(device),
            torch.from_numpy(mat.indices.astype(np.int64)).to(device),
            torch.from_numpy(mat.data).to(device),
            n,
        )

    return tensor(a), tensor(a.T)


def homophily(edge_index: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of edges between two cells of the same known label (None without such edges)."""
    src, dst = np.asarray(edge_index)
    known = pd.notna(labels[src]) & pd.notna(labels[dst]) & (src != dst)
    if not known.any():
        return None
    return float(np.mean(labels[src[known]] == labels[dst[known]]))


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (over the types in either) of ``predicted`` against ``truth`` (text labels)."""
    from sklearn.metrics import f1_score

    truth, predicted = np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)
    if truth.size == 0:
        return {}
    return {
        "accuracy": float(np.mean(truth == predicted)),
        "macro_f1": float(
            f1_score(truth.astype(str), predicted.astype(str), average="macro", zero_division=0)
        ),
    }


# =============================================================================================
# The model
# =============================================================================================


@register
class ScBiGNN(Model):
    name = "scbignn"
    title = "scBiGNN"
    summary = (
        "Names cell types from a few labelled cells: attention over each cell's genes plus a graph of similar "
        "cells, trained in turns on each other's guesses."
    )
    paper = 'Yang et al., "scBiGNN: Bilevel Graph Representation Learning for Cell Type Classification", 2023'
    Params = ScBiGNNParams
    presets = {"paper": PAPER, "quick": QUICK}
    uses_labels = True
    smoke = {
        "prepare": {"n_hvg": 40, "n_graph_genes": 40},
        "graph": {"n_pcs": 10},
        "model": {
            "n_genes": 40,
            "max_tokens": 40,
            "width": 16,
            "em_rounds": 2,
            "pretrain_epochs": 5,
            "estep_epochs": 2,
            "mstep_epochs": 20,
            "batch_labelled": 64,
            "batch_unlabelled": 64,
            "importance_cells": 60,
            "top_genes": 10,
        },
        "train": {"eval_every": 2},
    }

    # --- training ----------------------------------------------------------------------------------
    def train(
        self,
        prepared: Prepared,
        graph: Any,
        params: ScBiGNNParams,
        trainer: Trainer,
        *,
        cluster: Any = None,
        labels: LabelSpec | None = None,
    ) -> None:
        from ... import graphs
        from ...labels import LabelSpec
        from ...loops import alternate

        p = params
        if labels is None:
            raise ConfigError("scBiGNN learns from labels: give the label column (--label-key COL).")
        started = time.perf_counter()
        device, seed = trainer.device, trainer.spec.seed
        obs = prepared.adata.obs
        train_labels = labels.training_labels(obs)  # the only labels any loss sees
        _, held_mask = labels.split(obs)
        notes: list[str] = []

        # Classes: those with a training label, in sorted order.
        known = pd.Series(train_labels).dropna()
        if known.empty:
            raise DataError(
                f"No cell has a usable label in column {labels.key!r} (all empty, NaN or the 'unlabelled' value"
                f"{'' if labels.unlabelled is None else f' {labels.unlabelled!r}'}, or all held out). Label some "
                "cells of at least two types."
            )
        counts = known.value_counts().sort_index()
        classes = [str(c) for c in counts.index]
        if len(classes) < 2:
            raise ConfigError(
                f"Only one cell type ({classes[0]!r}) has labelled cells in {labels.key!r}; a classifier needs "
                "at least two. Label cells of another type, or choose another label column."
            )
        rare = [c for c, n in counts.items() if n < 2]
        if rare:
            notes.append(
                f"{len(rare)} cell type(s) have a single labelled cell to learn from ({', '.join(map(str, rare[:10]))}"
                f"{', ...' if len(rare) > 10 else ''}); they were trained on, but their predictions are unreliable. "
                "Label a few more cells of those types."
            )
        code = {c: i for i, c in enumerate(classes)}
        y = np.array([code[str(v)] if v is not None else -1 for v in train_labels], dtype=np.int64)
        n_cells, n_classes = y.size, len(classes)

        # Labelled cells split once more: a stratified validation share that early-stops the M-step.
        fit_mask, val_mask = y >= 0, np.zeros(n_cells, dtype=bool)
        if p.val_fraction > 0 and fit_mask.sum() >= 2 * n_classes:
            inner = LabelSpec(key="y", holdout_fraction=p.val_fraction, seed=seed)
            fit_mask, val_mask = inner.split(pd.DataFrame({"y": pd.Series(train_labels, dtype=object)}))
        lab_cells, val_cells = np.flatnonzero(fit_mask), np.flatnonzero(val_mask)
        unl_cells = np.flatnonzero(y < 0)  # held-out and unlabelled cells: pseudo-labels only
        if unl_cells.size == 0:
            notes.append(
                "Every cell is labelled and none is held out: the model predicts nothing beyond the labelled "
                "cells. Leave some cells unlabelled, or hide some labels (--holdout-fraction) to score it."
            )
        truth = labels.values(obs).to_numpy(dtype=object)  # scoring only: held-out accuracy, homophily
        held_cells = np.flatnonzero(held_mask)
        if held_cells.size:
            unseen = sorted(set(truth[held_cells]) - set(classes))
            if unseen:
                notes.append(
                    f"Held-out cells include type(s) with no training label ({', '.join(map(str, unseen[:10]))}); "
                    "the model cannot predict them and they count as errors."
                )

        # Inputs: the T genes of highest variance of log(1 + 10^6 x / sum) (MODELS.md 2.1).
        lognorm = prepared.adata.layers.get("lognorm", prepared.adata.X)
        hvg = prepared.adata.var["hvg"].to_numpy(dtype=bool) if "hvg" in prepared.adata.var else None
        gene_idx = select_genes(lognorm, p.n_genes, p.gene_ranking, hvg)
        model_matrix = sp.csr_matrix(lognorm, dtype=np.float32)[:, gene_idx]
        seqs = GeneSequences(model_matrix, p.max_tokens, p.keep_tokens)
        x = torch.from_numpy(np.asarray(model_matrix.todense(), dtype=np.float32)).to(device)
        n_genes = gene_idx.size
        if seqs.truncated:
            notes.append(
                f"{seqs.truncated} cell(s) express more than max_tokens = {p.max_tokens} of the model's genes; "
                + (
                    "each kept its most distinctive ones."
                    if p.keep_tokens == "distinctive"
                    else "each kept its highest values."
                )
            )

        gen = torch.Generator(device="cpu").manual_seed(seed)
        rng = np.random.default_rng(seed)
        mean_tokens = float(np.maximum(seqs.lengths, 1).mean())
        q = GeneNet(
            n_genes,
            n_classes,
            width=p.width,
            layers=p.gene_layers,
            heads=p.heads,
            readout=p.readout,
            alpha_init=1.0 / mean_tokens,
            scale=p.attention_scale,
            residual=p.residual,
        ).to(device)
        p_net = CellNet(n_genes, p.width, n_classes, width=32, layers=p.cell_layers).to(device)
        q_opt = torch.optim.Adam(q.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        p_opt = torch.optim.Adam(p_net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        y_t = torch.from_numpy(y).to(device)
        lab_stream = Batches(lab_cells, p.batch_labelled, rng)
        unl_stream = Batches(unl_cells, p.batch_unlabelled, rng)

        def q_run(cells: np.ndarray, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
            return forward_by_length(q, seqs, cells, chunk, device, trainer.autocast)

        def q_logits(cells: np.ndarray) -> torch.Tensor:
            return q_run(cells, LENGTH_GROUP)[0]

        def q_outputs() -> tuple[np.ndarray, np.ndarray]:
            """q_φ's class probabilities [N, C] and embeddings h [N, d], in eval mode."""
            q.eval()
            probs, hs = [], []
            size = max(p.batch_labelled + p.batch_unlabelled, 1)
            with torch.no_grad():
                for start in range(0, n_cells, 8 * size):
                    logits, h = q_run(np.arange(start, min(start + 8 * size, n_cells)), size)
                    probs.append(logits.softmax(-1).cpu())
                    hs.append(h.cpu())
            return torch.cat(probs).numpy(), torch.cat(hs).numpy()

        def targets_loss(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
            """CE against pseudo-labels ŷ ~ probs, or against probs themselves (soft targets)."""
            if p.soft_targets:
                return -(probs * logits.log_softmax(-1)).sum(-1).mean()
            sampled = torch.multinomial(probs.cpu().clamp_min(1e-12), 1, generator=gen).squeeze(1)
            return F.cross_entropy(logits, sampled.to(logits.device))

        stages: list[dict[str, Any]] = []

        def record(name: str, outcome: Any) -> None:
            for event in outcome.history:
                stages.append(
                    {"stage": name, "step": event["epoch"], "loss": event["loss"], **event["losses"]}
                )

        # 1. Pre-training of q_φ on the labelled cells.
        steps = len(lab_stream) * p.pretrain_epochs
        if p.pretrain_epochs:
            steps = max(steps, p.min_pretrain_steps)

        def pretrain_step(step: int) -> dict[str, torch.Tensor]:
            cells = lab_stream.next()
            return {"labelled": F.cross_entropy(q_logits(cells), y_t[cells])}

        def q_validation() -> dict[str, float]:
            q.eval()
            with torch.no_grad():
                right = sum(
                    int((q_logits(val_cells[i : i + 512]).argmax(-1) == y_t[val_cells[i : i + 512]]).sum())
                    for i in range(0, val_cells.size, 512)
                )
            return {"val_accuracy": right / val_cells.size}

        def q_stage(name: str, step: Any, n_steps: int, patience: int) -> Stage:
            """A stage of q_phi; with patience (and validation labels) it stops once its validation accuracy
            stops rising and keeps its best weights."""
            early = patience > 0 and val_cells.size > 0
            return Stage(
                name,
                q,
                q_opt,
                step,
                n_steps,
                evaluate=q_validation if early else None,
                score="val_accuracy" if early else None,
                patience=patience if early else 0,
                restore_best=early,
            )

        self._pretrain_steps = 0
        if steps:
            outcome = trainer.run_stage(q_stage("pretrain_q", pretrain_step, steps, p.pretrain_patience))
            record("pretrain", outcome)
            self._pretrain_steps = outcome.epochs_run
        q_probs, h = q_outputs()
        rounds_extra: list[dict[str, Any]] = []
        first = {"round": 0, **self._held_scores(truth, held_cells, q_probs, None, classes)}
        state: dict[str, Any] = {"h": h}

        def m_step(r: int, q_out: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            probs_q, h_now = q_out
            knn = graphs.build_graph(
                h_now, graphs.GraphSpec(kind="knn", k=min(p.k, n_cells - 1), symmetrize="union", seed=seed)
            )
            adj, adj_t = row_normalised(knn.edge_index, n_cells, device)
            h_t = torch.from_numpy(h_now).to(device)
            q_t = torch.from_numpy(probs_q).to(device)
            lab_t = torch.from_numpy(lab_cells).to(device)
            unl_t = torch.from_numpy(unl_cells).to(device)
            val_t = torch.from_numpy(val_cells).to(device)

            def step(epoch: int) -> dict[str, torch.Tensor]:
                with trainer.autocast():
                    logits, _ = p_net(h_t, x, adj, adj_t)
                logits = logits.float()
                terms = {"labelled": F.cross_entropy(logits[lab_t], y_t[lab_t])}
                if unl_cells.size:
                    terms["pseudo"] = targets_loss(logits[unl_t], q_t[unl_t])
                return terms

            def evaluate() -> dict[str, float]:
                p_net.eval()
                with torch.no_grad(), trainer.autocast():
                    logits, _ = p_net(h_t, x, adj, adj_t)
                return {"val_accuracy": float((logits[val_t].argmax(-1) == y_t[val_t]).float().mean())}

            has_val = val_cells.size > 0
            stage = Stage(
                f"m_step_{r + 1}",
                p_net,
                p_opt,
                step,
                p.mstep_epochs,
                evaluate=evaluate if has_val else None,
                score="val_accuracy" if has_val else None,
                patience=p.mstep_patience if has_val else 0,
                restore_best=has_val,
            )
            outcome = trainer.run_stage(stage)
            record(stage.name, outcome)
            p_net.eval()
            with torch.no_grad(), trainer.autocast():
                logits, jk = p_net(h_t, x, adj, adj_t)
            state.update(jk=jk.float().cpu().numpy(), graph=knn.edge_index, h=h_now)
            rounds_extra.append(
                {
                    "round": r + 1,
                    "mstep_epochs_run": outcome.epochs_run,
                    "mstep_best_epoch": outcome.best_epoch,
                    "homophily_h": homophily(knn.edge_index, truth),
                }
            )
            return logits.float().softmax(-1).cpu().numpy()

        def e_step(r: int, probs_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p_t = torch.from_numpy(probs_p)
            n_steps = max(len(unl_stream), len(lab_stream)) * p.estep_epochs

            def step(epoch: int) -> dict[str, torch.Tensor]:
                terms: dict[str, torch.Tensor] = {}
                if unl_cells.size:
                    cells = unl_stream.next()
                    terms["pseudo"] = targets_loss(q_logits(cells), p_t[cells].to(device))
                if lab_cells.size and p.beta > 0:
                    cells = lab_stream.next()
                    terms["labelled"] = p.beta * F.cross_entropy(q_logits(cells), y_t[cells])
                return terms

            stage = q_stage(f"e_step_{r + 1}", step, n_steps, p.estep_patience)
            record(stage.name, trainer.run_stage(stage))
            return q_outputs()

        def score(r: int, q_out: tuple[np.ndarray, np.ndarray], p_out: np.ndarray) -> dict[str, Any]:
            return {**self._held_scores(truth, held_cells, q_out[0], p_out, classes), **rounds_extra[-1]}

        loop = alternate(
            m_step, e_step, rounds=p.em_rounds, start=(q_probs, h), score=score, emit=trainer.emit
        )
        q_probs, h_q = loop.last[0]
        p_probs = loop.last[1]

        self._params, self._classes, self._notes = p, classes, notes
        self._q, self._p, self._seqs = q, p_net, seqs
        self._device, self._seed = device, seed
        self._genes = [str(g) for g in prepared.adata.var_names[gene_idx]]
        self._q_probs, self._h_q, self._p_probs, self._jk = q_probs, h_q, p_probs, state["jk"]
        self._rounds = [first, *loop.history]
        self._stages = stages
        self._truth, self._held = truth, held_cells
        self._label_summary = labels.summary(obs)
        self._label_counts = {str(k): int(v) for k, v in counts.items()}
        self._input_homophily = homophily(graph.edge_index, truth) if graph is not None else None
        self._seconds = time.perf_counter() - started
        self._sizes = {
            "n_cells": int(n_cells),
            "n_genes_model": int(n_genes),
            "n_classes": int(n_classes),
            "n_labelled_fit": int(lab_cells.size),
            "n_labelled_validation": int(val_cells.size),
            "n_pseudo_labelled": int(unl_cells.size),
            "mean_genes_per_cell": mean_tokens,
        }

    def _held_scores(
        self,
        truth: np.ndarray,
        held: np.ndarray,
        q_probs: np.ndarray,
        p_probs: np.ndarray | None,
        classes: list,
    ) -> dict[str, Any]:
        """Held-out accuracy and macro-F1 of q_φ (and p_θ): the held-out labels are read only here."""
        if held.size == 0:
            return {}
        names = np.asarray(classes, dtype=object)
        out = {f"q_{k}": v for k, v in scores(truth[held], names[q_probs[held].argmax(1)]).items()}
        if p_probs is not None:
            out.update({f"p_{k}": v for k, v in scores(truth[held], names[p_probs[held].argmax(1)]).items()})
        return out

    # --- what the trained model exposes ------------------------------------------------------------
    def embed(self) -> Embedding:
        return Embedding("X_scbignn", self._jk, extra={"X_scbignn_q": self._h_q.astype(np.float32)})

    def clusters(self) -> Partition:
        return Partition(labels=self._p_probs.argmax(1), method="prediction")

    def predict_proba(self) -> Probabilities:
        return Probabilities(self._p_probs.astype(np.float32), list(self._classes), key="scbignn_proba")

    def training_metrics(self) -> dict[str, Any]:
        return {
            **self._sizes,
            "seconds_training": self._seconds,
            "em_rounds_run": len(self._rounds) - 1,
            "label_counts": self._label_counts,
        }

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self._stages)

    def state_dict(self) -> dict[str, Any]:
        out = {f"q.{k}": v.detach().cpu() for k, v in self._q.state_dict().items()}
        out.update({f"p.{k}": v.detach().cpu() for k, v in self._p.state_dict().items()})
        return out

    def gene_importance(self) -> pd.DataFrame:
        """Attention received per gene (MODELS.md 2.5): every cell's attention (mean over layers and heads)
        mapped onto the T genes, each (g, g′) entry averaged over the cells expressing both, Ã; then
        s_j = Σ_i Ã_ij. With the read-out weights α_j and how many cells express each gene."""
        p, seqs, q = self._params, self._seqs, self._q
        n_cells, t = seqs.lengths.size, seqs.n_genes
        total = torch.zeros(t * t, dtype=torch.float64)
        seen = torch.zeros(t * t, dtype=torch.float64)
        if p.importance_cells:
            rng = np.random.default_rng(self._seed)
            cells = np.sort(rng.permutation(n_cells)[: p.importance_cells])
            cells = cells[seqs.lengths[cells] > 0]
            q.eval()
            with torch.no_grad():
                for _, group in seqs.by_length(cells, 16):
                    genes, values, mask = seqs.batch(group)
                    maps = q.attention(genes.to(self._device), values.to(self._device), mask.to(self._device))
                    att = torch.stack([m.mean(1) for m in maps]).mean(0).cpu().double()  # [B, L, L]
                    pair = mask[:, :, None] & mask[:, None, :]
                    flat = (genes[:, :, None] * t + genes[:, None, :])[pair]
                    total.index_add_(0, flat, att[pair])
                    seen.index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float64))
        a = (total / seen.clamp_min(1.0)).view(t, t).numpy()
        importance = a.sum(axis=0)
        alpha = q.alpha.detach().cpu().numpy()[:t] if p.readout == "weights" else np.full(t, np.nan)
        table = pd.DataFrame(
            {
                "gene": self._genes,
                "importance": importance,
                "alpha": alpha,
                "n_cells_expressed": np.bincount(seqs.indices, minlength=t)[:t],
            }
        )
        table = table.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        return table

    def report(self, analysis: Any) -> Report:
        classes = np.asarray(self._classes, dtype=object)
        p_pred, q_pred = self._p_probs.argmax(1), self._q_probs.argmax(1)
        obs = {  # p_theta's prediction and confidence are written by the analysis (predict_proba)
            "scbignn_q_prediction": pd.Categorical(classes[q_pred], categories=list(self._classes)),
            "scbignn_q_confidence": self._q_probs.max(1).astype(np.float32),
        }
        metrics: dict[str, Any] = {"labels": self._label_summary}
        if self._held.size:
            truth = self._truth[self._held]
            metrics.update(scores(truth, classes[p_pred[self._held]]))
            metrics.update({f"q_{k}": v for k, v in scores(truth, classes[q_pred[self._held]]).items()})
        rounds = pd.DataFrame(self._rounds)
        # Per-round held-out accuracy (q from round 0, after pre-training; p from round 1); the whole record
        # of each round is the em_rounds table.
        for col in ("p_accuracy", "q_accuracy"):
            if col in rounds:
                metrics[f"{col}_per_round"] = [float(v) for v in rounds[col].dropna()]
        for key, value in (
            ("homophily_input_graph", self._input_homophily),
            ("homophily_h", self._rounds[-1].get("homophily_h")),
        ):
            if value is not None:
                metrics[key] = value
        tables = {"em_rounds": rounds}
        uns: dict[str, Any] = {"classes": list(self._classes)}
        importance = self.gene_importance()
        tables["gene_importance"] = importance
        uns["top_genes"] = importance["gene"].head(self._params.top_genes).tolist()
        if self._notes:
            uns["label_notes"] = list(self._notes)
        by_gene = importance.set_index("gene")
        var = {
            "scbignn_importance": by_gene["importance"].astype(float),
            "scbignn_readout_weight": by_gene["alpha"].astype(float),
        }
        return Report(obs=obs, var=var, uns=uns, tables=tables, metrics=metrics, notes=list(self._notes))
