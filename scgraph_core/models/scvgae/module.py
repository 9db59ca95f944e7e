"""The scVGAE network (Inoue, 2024; MODELS.md 4.3): tensors in, tensors out. The user-facing model is in
``model.py``.

With X the model input (X_ij = √(x_ij / s_i)) and Â = D^-½ (A + I) D^-½:

    h = Dropout_0.2(ReLU(GraphNorm(Â X W₀ᵀ + b₀)))                       encoder, h ∈ R^{N×128}
    M = exp(Â h W_Mᵀ + b_M),  Θ = exp(Â h W_Θᵀ + b_Θ),  Π = σ(Â h W_Πᵀ + b_Π)  GCN heads, each N×G
    X̂ = decoder(√M) + BN_G(X) + BN_N(Xᵀ)ᵀ                                  expression decoder + skip terms
    decoder = Linear(G→1024) → BN → ReLU → Dropout_0.4 → Linear(1024→G) → ReLU

BN_G standardises each gene across cells; BN_N standardises each cell across genes (N affine pairs, so
the model is transductive). The three heads are graph convolutions; Â (h Wᵀ) = (Â h) Wᵀ, so they share
one propagation of h (N×128) instead of three of an N×G matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.layers import GCNLayer
from ...nn.norm import GraphNorm
from ...nn.sparse import gcn_propagate


class ScVGAEOutput(NamedTuple):
    """One forward pass. ``mean`` is M (normalised scale: multiply by the size factors for counts)."""

    embedding: Tensor  # h, [N, hidden]
    mean: Tensor  # M, [N, G]
    theta: Tensor  # Θ, [N, G]
    pi_logit: Tensor  # logit of Π, [N, G]
    reconstruction: Tensor  # X̂, [N, G]


class ScVGAENet(nn.Module):
    """The scVGAE network (MODELS.md 4.3, fixed).

    Args:
        n_genes: G, the number of genes (no HVG step: all genes are modelled).
        n_cells: N; needed by BN_N, the per-cell normalisation skip term.
        hidden: width of the GCN encoder (128 in the paper).
        decoder_hidden: width of the expression decoder (1024).
        dropout: dropout after the encoder (0.2). decoder_dropout: inside the decoder (0.4).
        max_log: clamp of the log-mean and log-dispersion pre-activations to [−max_log, max_log] (the
            paper-era heads are unclamped and can overflow).
        theta_max: largest inverse dispersion (NB → Poisson beyond; keeps lgamma accurate in float32).
    """

    def __init__(
        self,
        n_genes: int,
        n_cells: int,
        *,
        hidden: int = 128,
        decoder_hidden: int = 1024,
        dropout: float = 0.2,
        decoder_dropout: float = 0.4,
        max_log: float = 15.0,
        theta_max: float = 1e4,
    ) -> None:
        super().__init__()
        if min(n_genes, n_cells, hidden, decoder_hidden) < 1:
            raise ConfigError("scVGAE needs at least one gene, one cell and positive layer widths.")
        self.n_genes, self.n_cells, self.hidden = int(n_genes), int(n_cells), int(hidden)
        self.dropout = float(dropout)
        self.max_log = float(max_log)
        self.log_theta_max = float(np.log(theta_max))
        self.encoder = GCNLayer(self.n_genes, self.hidden)
        self.graph_norm = GraphNorm(self.hidden)
        # The three GCN heads (mean, dispersion, dropout) after one shared propagation: rows [0, G) are
        # the mean head, [G, 2G) the dispersion head, [2G, 3G) the dropout head.
        self.heads = nn.Linear(self.hidden, 3 * self.n_genes)
        self.decoder = nn.Sequential(
            nn.Linear(self.n_genes, decoder_hidden),
            nn.BatchNorm1d(decoder_hidden),
            nn.ReLU(),
            nn.Dropout(decoder_dropout),
            nn.Linear(decoder_hidden, self.n_genes),
            nn.ReLU(),
        )
        self.gene_norm = nn.BatchNorm1d(self.n_genes)  # BN_G: each gene across cells
        self.cell_norm = nn.BatchNorm1d(self.n_cells)  # BN_N: each cell across genes

    def head_slices(self) -> dict[str, slice]:
        g = self.n_genes
        return {"mean": slice(0, g), "theta": slice(g, 2 * g), "pi": slice(2 * g, 3 * g)}

    @torch.no_grad()
    def init_mean_bias(self, gene_log_mean: Tensor) -> None:
        """Start the mean head at each gene's mean normalised count (log scale), so training learns the
        cell-to-cell deviations instead of first walking every bias from 0 to log(mean)."""
        self.heads.bias[self.head_slices()["mean"]] = gene_log_mean.to(self.heads.bias)

    def encode(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """h = Dropout(ReLU(GraphNorm(GCN(x)))), [N, hidden]."""
        h = self.graph_norm(self.encoder(x, edge_index).float())
        return F.dropout(F.relu(h), self.dropout, self.training)

    def forward(self, x: Tensor, edge_index: Tensor) -> ScVGAEOutput:
        if x.shape != (self.n_cells, self.n_genes):
            raise ConfigError(
                f"scVGAE was built for {self.n_cells} cells x {self.n_genes} genes; got input {tuple(x.shape)}."
            )
        h = self.encode(x, edge_index)
        raw = self.heads(gcn_propagate(h, edge_index)).float()
        sl = self.head_slices()
        mean = torch.exp(raw[:, sl["mean"]].clamp(-self.max_log, self.max_log))
        theta = torch.exp(raw[:, sl["theta"]].clamp(-self.max_log, self.log_theta_max))
        pi_logit = raw[:, sl["pi"]]
        # The decoder reads √M: M is on the normalised-count scale, √M on the scale of X (the paper-era
        # code fitted ZINB to X itself, so its M was on X's scale too).
        decoded = self.decoder(torch.sqrt(mean)).float()
        skip = self.gene_norm(x) + self.cell_norm(x.t()).t()
        return ScVGAEOutput(h, mean, theta, pi_logit, decoded + skip)
