"""scGNN's networks (Wang et al., Nat. Commun. 12:1882, 2021; MODELS.md 3.3): tensors in, tensors out.

:class:`FeatureAE` is the feature autoencoder that the cluster and imputation autoencoders share:

    z = ReLU(W₂ ReLU(W₁ x + b₁) + b₂)            G -> 512 -> 128, z is the cell embedding
    x̂ = act(W₄ ReLU(W₃ z + b₃) + b₄)             128 -> 512 -> G, act = ReLU (the code) or sigmoid (the text)

:class:`GraphAE` is the variational graph autoencoder on the cell graph (GCN 128 -> 32, then linear GCN heads
32 -> 16 for μ and log σ), read with an inner-product decoder; its embedding is μ.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...nn.sparse import Propagation


class FeatureAE(nn.Module):
    """G -> hidden -> latent -> hidden -> G with ReLU between layers (MODELS.md 3.3)."""

    def __init__(self, n_genes: int, hidden: int = 512, latent: int = 128, output: str = "relu") -> None:
        super().__init__()
        if output not in ("relu", "sigmoid", "linear"):
            raise ValueError(f"output must be relu, sigmoid or linear; got {output!r}")
        self.output = output
        self.enc1 = nn.Linear(n_genes, hidden)
        self.enc2 = nn.Linear(hidden, latent)
        self.dec1 = nn.Linear(latent, hidden)
        self.dec2 = nn.Linear(hidden, n_genes)

    def encode(self, x: Tensor) -> Tensor:
        return F.relu(self.enc2(F.relu(self.enc1(x))))

    def decode(self, z: Tensor) -> Tensor:
        out = self.dec2(F.relu(self.dec1(z)))
        if self.output == "relu":
            return F.relu(out)
        if self.output == "sigmoid":
            return torch.sigmoid(out)
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode(x)
        return z, self.decode(z)

    def l1(self) -> Tensor:
        """Σ|w| over every parameter, biases included (the code's regulariser)."""
        return sum(p.abs().sum() for p in self.parameters())


class GraphAEOutput(NamedTuple):
    mu: Tensor
    log_sigma: Tensor
    z: Tensor


class GraphAE(nn.Module):
    """GCN-VAE: h = ReLU(Â x W₁), μ = Â h W_μ, log σ = Â h W_σ with Â = D^-½ (A + I) D^-½ (MODELS.md 3.3).

    The operator Â is handed in (:class:`~scgraph_core.nn.sparse.Propagation`), so one network can be
    trained on a graph that is rebuilt between rounds. Weights have no bias, as in the GCN of the paper.
    """

    def __init__(self, in_dim: int, hidden: int = 32, latent: int = 16) -> None:
        super().__init__()
        self.w1 = nn.Linear(in_dim, hidden, bias=False)
        self.w_mu = nn.Linear(hidden, latent, bias=False)
        self.w_sigma = nn.Linear(hidden, latent, bias=False)
        for layer in (self.w1, self.w_mu, self.w_sigma):
            nn.init.xavier_uniform_(layer.weight)

    def forward(
        self, x: Tensor, adj: Propagation, *, generator: torch.Generator | None = None
    ) -> GraphAEOutput:
        h = F.relu(adj(self.w1(x)))
        mu, log_sigma = adj(self.w_mu(h)), adj(self.w_sigma(h))
        if self.training:
            gen_device = generator.device if generator is not None else mu.device
            eps = torch.randn(mu.shape, generator=generator, device=gen_device, dtype=mu.dtype).to(mu.device)
            z = mu + eps * torch.exp(log_sigma)
        else:
            z = mu
        return GraphAEOutput(mu, log_sigma, z)
