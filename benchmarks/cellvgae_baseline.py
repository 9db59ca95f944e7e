"""The "obvious" CellVGAE in float32 PyTorch Geometric: the baseline the lean implementation is timed against.

Written the way the paper's model is usually written (MODELS.md 1.3): ``GATConv`` layers with the
paper-preset shapes, a separate ``GATConv`` for μ and for log-σ, wrapped in PyG's ``VGAE`` whose
``recon_loss`` (PyG negative sampling, self loops added to the positives) and ``kl_loss`` the authors'
training loop calls. No attention export, no fusion, no mixed precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import VGAE, GATConv


class BaselineEncoder(nn.Module):
    """GAT₁ → ReLU → GAT₂ → ReLU → Dropout 0.4 → (GAT_μ, GAT_σ), hidden heads concatenated, μ/σ averaged."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (128, 128),
        heads: Sequence[int] = (10, 10, 10, 10),
        attn_dropout: Sequence[float] = (0.4, 0.4, 0.2, 0.2),
        latent: int = 50,
    ) -> None:
        super().__init__()
        self.conv1 = GATConv(in_dim, hidden[0], heads=heads[0], concat=True, dropout=attn_dropout[0])
        width = hidden[0] * heads[0]
        self.conv2 = GATConv(width, hidden[1], heads=heads[1], concat=True, dropout=attn_dropout[1])
        width = hidden[1] * heads[1]
        self.conv_mu = GATConv(width, latent, heads=heads[2], concat=False, dropout=attn_dropout[2])
        self.conv_sigma = GATConv(width, latent, heads=heads[3], concat=False, dropout=attn_dropout[3])

    def forward(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.conv1(x, edge_index))
        h = F.relu(self.conv2(h, edge_index))
        h = F.dropout(h, 0.4, training=self.training)
        return self.conv_mu(h, edge_index), self.conv_sigma(h, edge_index)  # VGAE clamps log-σ at 10


def baseline_model(in_dim: int, **kwargs) -> VGAE:
    """PyG ``VGAE`` around :class:`BaselineEncoder` (keyword arguments go to the encoder)."""
    return VGAE(BaselineEncoder(in_dim, **kwargs))


def baseline_loss(model: VGAE, x: Tensor, edge_index: Tensor, pos_edge_index: Tensor) -> Tensor:
    """recon_loss + (1/N)·kl_loss, as the authors' training loop computes it."""
    z = model.encode(x, edge_index)
    return model.recon_loss(z, pos_edge_index) + model.kl_loss() / x.size(0)


def baseline_step(
    model: VGAE, optimizer: torch.optim.Optimizer, x: Tensor, edge_index: Tensor, pos_edge_index: Tensor
) -> float:
    """One full-batch training step; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = baseline_loss(model, x, edge_index, pos_edge_index)
    loss.backward()
    optimizer.step()
    return loss.detach().item()
