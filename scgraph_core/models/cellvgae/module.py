"""CellVGAE (Buterez et al., Bioinformatics 38(5):1277, 2022): a variational graph autoencoder whose
encoder is a graph attention network over a cell kNN graph (MODELS.md section 1).

This file is the pure module: tensors in, tensors out (the user-facing model is in ``model.py``).

    h⁽¹⁾ = ReLU(GAT₁(x)),  h⁽²⁾ = ReLU(GAT₂(h⁽¹⁾)) [, h⁽³⁾ = ReLU(GAT₃(h⁽²⁾))]   hidden heads concatenated
    h = Dropout_0.4(h⁽ᴸᵃˢᵗ⁾)
    μ = GAT_μ(h),  s = min(GAT_σ(h), 10)                                          latent heads averaged
    z = μ + ε·σ(s) while training, z = μ at evaluation
    p(A_ij = 1 | z) = σ(z_iᵀ z_j)                                                 inner-product decoder

The μ and log-σ layers share their input and graph, so for ``conv="gat"`` they run as one fused layer
(:class:`~scgraph_core.nn.layers.FusedGATLayer`); their weights stay separately readable.

Training sees the training edges only (``val_fraction`` of the edges is held out to score link
prediction); the reported embedding, clusters and attention are read over every edge
(``embed_edges = all``; the authors' code reads them over the training edges: README, CellVGAE fidelity).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.layers import FusedGATLayer, GATLayer, GATv2Layer, GCNLayer, fast_dropout
from ...nn.losses import PARAMETERIZATIONS, reparameterize

CONV_CHOICES = ("gat", "gatv2", "gcn")


class CellVGAENet(nn.Module):
    """The CellVGAE encoder, edge decoder and optional expression decoder (MODELS.md 1.3).

    Args:
        in_dim: number of input genes D.
        conv: "gat" (the paper's; lean implementation), "gatv2" (PyG GATv2Conv, slower) or "gcn".
        hidden: widths per head of the 2 or 3 hidden layers (128, 128 in the paper).
        heads: heads of each hidden layer, then of the μ layer, then of the σ layer (len(hidden) + 2
            values). Hidden heads are concatenated, μ/σ heads averaged. Ignored by "gcn".
        attn_dropout: attention dropout per layer, in the same order as ``heads`` (the authors' code
            hard-codes 0.2 for μ/σ; all are exposed here, MODELS.md 1.7 pitfall 4). Ignored by "gcn".
        feature_dropout: dropout on the last hidden layer's output (hard-coded 0.4 by the authors).
        latent: latent size L.
        sigma_clamp: upper clamp of the log-σ layer's output s (10 in the authors' code).
        variance: "logvar" (fixed: s = log σ², σ = exp(s/2)) or "legacy" (σ = exp(s), as published).
        expr_decoder_hidden: width h of the optional expression decoder L → h → BN → ReLU → Dropout 0.4
            → D; None leaves it out.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        conv: str = "gat",
        hidden: Sequence[int] = (128, 128),
        heads: Sequence[int] = (10, 10, 10, 10),
        attn_dropout: Sequence[float] = (0.4, 0.4, 0.2, 0.2),
        feature_dropout: float = 0.4,
        latent: int = 50,
        sigma_clamp: float = 10.0,
        variance: str = "logvar",
        expr_decoder_hidden: int | None = None,
    ) -> None:
        super().__init__()
        hidden, heads, attn_dropout = tuple(hidden), tuple(heads), tuple(attn_dropout)
        if conv not in CONV_CHOICES:
            raise ConfigError(f"conv must be one of {CONV_CHOICES}, got {conv!r}")
        if len(hidden) not in (2, 3):
            raise ConfigError(f"CellVGAE has 2 or 3 hidden layers; got hidden={hidden}")
        n_layers = len(hidden) + 2
        if len(heads) != n_layers or len(attn_dropout) != n_layers:
            raise ConfigError(
                f"heads and attn_dropout need {n_layers} values (one per hidden layer, then μ, then σ); "
                f"got heads={heads}, attn_dropout={attn_dropout}"
            )
        if variance not in PARAMETERIZATIONS:
            raise ConfigError(f"variance must be one of {PARAMETERIZATIONS}, got {variance!r}")
        if min(hidden) < 1 or latent < 1 or min(heads) < 1:
            raise ConfigError("hidden widths, heads and the latent size must be positive")
        self.in_dim, self.conv, self.latent = int(in_dim), conv, int(latent)
        self.hidden, self.variance = hidden, variance
        self.heads = heads if conv != "gcn" else (1,) * n_layers
        self.attn_dropout = attn_dropout
        self.feature_dropout = float(feature_dropout)
        self.sigma_clamp = float(sigma_clamp)

        layers: list[nn.Module] = []
        width = self.in_dim
        for i, h in enumerate(hidden):
            if conv == "gat":
                layers.append(GATLayer(width, h, heads[i], concat=True, attn_dropout=attn_dropout[i]))
            elif conv == "gatv2":
                layers.append(GATv2Layer(width, h, heads[i], concat=True, attn_dropout=attn_dropout[i]))
            else:
                layers.append(GCNLayer(width, h))
            width = h * self.heads[i]
        self.hidden_layers = nn.ModuleList(layers)

        self.latent_layer: FusedGATLayer | None = None
        self.mu_layer: nn.Module | None = None
        self.sigma_layer: nn.Module | None = None
        if conv == "gat":
            self.latent_layer = FusedGATLayer(
                width, self.latent, heads=heads[-2:], concat=False, attn_dropout=attn_dropout[-2:]
            )
        elif conv == "gatv2":
            self.mu_layer = GATv2Layer(
                width, self.latent, heads[-2], concat=False, attn_dropout=attn_dropout[-2]
            )
            self.sigma_layer = GATv2Layer(
                width, self.latent, heads[-1], concat=False, attn_dropout=attn_dropout[-1]
            )
        else:
            self.mu_layer = GCNLayer(width, self.latent)
            self.sigma_layer = GCNLayer(width, self.latent)

        self.expr_decoder: nn.Sequential | None = None
        if expr_decoder_hidden is not None:
            self.expr_decoder = nn.Sequential(
                nn.Linear(self.latent, expr_decoder_hidden),
                nn.BatchNorm1d(expr_decoder_hidden),
                nn.ReLU(),
                nn.Dropout(0.4),
                nn.Linear(expr_decoder_hidden, self.in_dim),
            )

    # ------------------------------------------------------------------------------------------------

    def receptive_hops(self) -> int:
        """How many hops along incoming edges a cell's (μ, s) depends on (:mod:`scgraph_core.nn.halo`): one per
        message-passing layer, and one more for GCN, whose weight on an edge also uses the sender's degree."""
        return len(self.hidden_layers) + 1 + (self.conv == "gcn")

    def layer_names(self) -> list[str]:
        """Names of the attention layers, in order: hidden1, hidden2[, hidden3], mu, sigma."""
        return [f"hidden{i + 1}" for i in range(len(self.hidden))] + ["mu", "sigma"]

    def _encode(
        self, x: Tensor, edge_index: Tensor, attention: dict[str, tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, Tensor]:
        want = attention is not None
        h = x
        for i, layer in enumerate(self.hidden_layers):
            if want:
                h, att = layer(h, edge_index, return_attention=True)
                attention[f"hidden{i + 1}"] = att
            else:
                h = layer(h, edge_index)
            # After every hidden layer, the third included (MODELS.md 1.7 pitfall 3). In place: the layer's
            # output is a fresh tensor that nothing saved, so this spares an [N, K·H] copy.
            h = F.relu(h, inplace=True)
        h = fast_dropout(h, self.feature_dropout, self.training)
        if self.latent_layer is not None:
            if want:
                (mu, s), (att_mu, att_s) = self.latent_layer(h, edge_index, return_attention=True)
                attention["mu"], attention["sigma"] = att_mu, att_s
            else:
                mu, s = self.latent_layer(h, edge_index)
        elif want:
            mu, attention["mu"] = self.mu_layer(h, edge_index, return_attention=True)
            s, attention["sigma"] = self.sigma_layer(h, edge_index, return_attention=True)
        else:
            mu, s = self.mu_layer(h, edge_index), self.sigma_layer(h, edge_index)
        return mu, s.clamp(max=self.sigma_clamp)

    def encode(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, s), both [N, L]; s is log σ² ("logvar") or log σ ("legacy"), clamped at ``sigma_clamp``."""
        return self._encode(x, edge_index)

    def forward(
        self, x: Tensor, edge_index: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(z, μ, s): z is reparameterised while training (MODELS.md 1.3) and equals μ in eval mode."""
        mu, s = self._encode(x, edge_index)
        z = reparameterize(mu, s, self.variance, generator=generator) if self.training else mu
        return z, mu, s

    @staticmethod
    def decode_edges(z: Tensor, edge_index: Tensor) -> Tensor:
        """Edge logits z_iᵀ z_j for each queried edge (apply σ for probabilities)."""
        return (z[edge_index[0]] * z[edge_index[1]]).sum(dim=-1)

    def decode_expression(self, z: Tensor) -> Tensor:
        """Reconstructed features [N, D] from the optional expression decoder."""
        if self.expr_decoder is None:
            raise ConfigError("this model has no expression decoder (set expr_decoder_hidden)")
        return self.expr_decoder(z)

    def attention(self, x: Tensor, edge_index: Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Attention of every layer, from an eval-mode pass without gradients (MODELS.md 1.6, 1.7 pitfall 9).

        Returns {name: (edge_index with self loops, int64 [2, E+N]; α, float32 [E+N, K])} for the names of
        :meth:`layer_names`; Σ_{j→i} α_ij = 1 for every node and head. The module's training flag is
        restored afterwards. GCN has no attention: the dict is empty.
        """
        if self.conv == "gcn":
            return {}
        was_training = self.training
        self.eval()
        collected: dict[str, tuple[Tensor, Tensor]] = {}
        try:
            with torch.no_grad():
                self._encode(x, edge_index, collected)
        finally:
            self.train(was_training)
        return {
            name: (ei.detach().cpu().numpy().astype(np.int64), a.detach().float().cpu().numpy())
            for name, (ei, a) in ((n, collected[n]) for n in self.layer_names())
        }

    def projection_weights(self) -> tuple[list[Tensor], Tensor, Tensor]:
        """Hidden projections [W1, W2(, W3)] and W_μ, W_σ, PyG orientation ([heads·out, in]).

        For GATv2 these are the source-side weights (``lin_l``), as P_mu uses (MODELS.md 1.6).
        """
        hidden = [layer.weight for layer in self.hidden_layers]
        if self.latent_layer is not None:
            return hidden, self.latent_layer.branch_weight(0), self.latent_layer.branch_weight(1)
        return hidden, self.mu_layer.weight, self.sigma_layer.weight

    def gene_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(P_μ, P_σ), each D × L: the linear surrogate of MODELS.md 1.6.

        P = W1ᵀ W2ᵀ … W_μᵀ (D × K_μ·L); its columns are K_μ consecutive L-blocks, one per head, averaged.
        Biases, ReLUs and attention are ignored. Computed in float64. Same result as
        :func:`scgraph_core.interpret.p_matrix`.
        """
        hidden, w_mu, w_sigma = self.projection_weights()
        with torch.no_grad():
            chain = hidden[0].detach().to("cpu", torch.float64).t()
            for w in hidden[1:]:
                chain = chain @ w.detach().to("cpu", torch.float64).t()
            out = []
            for w, k in ((w_mu, self.heads[-2]), (w_sigma, self.heads[-1])):
                p = chain @ w.detach().to("cpu", torch.float64).t()
                out.append(p.reshape(self.in_dim, k, self.latent).mean(dim=1).numpy())
        return out[0], out[1]
