"""Normalisation layers for one graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GraphNorm(nn.Module):
    """GraphNorm (Cai et al., ICML 2021) for one graph: per feature, over the N nodes,

        out = γ ⊙ (x − α ⊙ mean(x)) / √(mean((x − α ⊙ mean(x))²) + ε) + β

    with learnable γ (1), β (0) and mean scale α (1). Equal to PyG's ``GraphNorm`` without a batch
    vector; written here so that training does not import PyTorch Geometric.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mean_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - self.mean_scale * x.mean(dim=0, keepdim=True)
        std = torch.sqrt(centred.pow(2).mean(dim=0, keepdim=True) + self.eps)
        return self.weight * centred / std + self.bias
