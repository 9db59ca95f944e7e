"""AttentionAE-sc (Li et al., PLoS Comput Biol 19(12):e1011641, 2023): a ZINB denoising autoencoder and
a GCN graph autoencoder fused by multi-head cross-attention, pre-trained, then fine-tuned by deep embedded
clustering (DEC) started from Leiden, so the number of clusters is never asked for (MODELS.md section 5).

The pure module (tensors in, tensors out; the user-facing model is in ``model.py``), with x the z-scored HVG expression, Ã the cell graph's
propagation matrix and ε ~ N(0, 1) a fresh multiplicative noise while training (none in eval mode):

    ñ(h) = h + 0.1·ε ⊙ h̄                              (h̄: h detached; before enc_1, enc_2 and z_layer)
    E1 = BN(ReLU(W_1 ñ(x)))                           shared first layer, D → 256
    H1 = tanh(Ã E1 W_g1),  H2 = tanh(Ã H1 W_g2)       graph autoencoder, 256 → 64 → 16
    E2 = BN(ReLU(W_2 ñ(E1)))                          256 → 64
    R1 = Attn(query = H1, key/value = E2) + E2        fusion block 1 (:mod:`.fusion`)
    z₀ = W_z ñ(R1)                                    64 → 16, no activation
    Z  = Attn(query = H2, key/value = z₀) + z₀        fusion block 2: the embedding
    D  = ReLU(W_d2 ReLU(W_d1 Z))                      decoder 16 → 64 → 256
    μ = clamp(exp(W_μ D), 1e-5, 1e4),  θ = clamp(softplus(W_θ D), 1e-4, 1e3),  π = σ(W_π D)
    Â_ij = σ(H2_i · H2_j)                             inner-product graph decoder
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.fusion import FusionAttention
from ...nn.sparse import Propagation

_LOG_MU_MIN, _LOG_MU_MAX = math.log(1e-5), math.log(1e4)


@dataclass
class Encoded:
    z: Tensor  # [N, L] the embedding
    h2: Tensor  # [N, L] the graph branch's output (inner-product decoder)
    attention: dict[str, Any] | None = None


class AttentionAENet(nn.Module):
    """The AttentionAE-sc network (module docstring; MODELS.md 5.3).

    Args:
        in_dim: model-input genes D.
        hidden: widths of the two encoder layers (256, 64); the GCN layers map 256 → 64 → latent and the
            decoder mirrors the encoder.
        latent: embedding size L (16).
        heads: attention heads K per fusion block (8).
        query_dropout: dropout on the attention queries while training (0.2).
        noise: multiplicative Gaussian noise scale while training (0.1; 0 = none).
    """

    def __init__(
        self,
        in_dim: int,
        *,
        hidden: tuple[int, int] = (256, 64),
        latent: int = 16,
        heads: int = 8,
        query_dropout: float = 0.2,
        noise: float = 0.1,
    ) -> None:
        super().__init__()
        if len(hidden) != 2 or min(hidden) < 1 or latent < 1 or in_dim < 1:
            raise ConfigError(f"AttentionAE-sc needs two positive hidden widths; got hidden={tuple(hidden)}")
        h1, h2 = (int(h) for h in hidden)
        self.in_dim, self.hidden, self.latent, self.noise = int(in_dim), (h1, h2), int(latent), float(noise)
        self.enc_1, self.bn_1 = nn.Linear(in_dim, h1), nn.BatchNorm1d(h1)
        self.enc_2, self.bn_2 = nn.Linear(h1, h2), nn.BatchNorm1d(h2)
        self.z_layer = nn.Linear(h2, latent)
        self.gcn_1 = nn.Linear(h1, h2, bias=False)
        self.gcn_2 = nn.Linear(h2, latent, bias=False)
        self.attn_1 = FusionAttention(h2, heads, query_dropout)
        self.attn_2 = FusionAttention(latent, heads, query_dropout)
        self.dec_1, self.dec_2 = nn.Linear(latent, h2), nn.Linear(h2, h1)
        self.mu_head = nn.Linear(h1, in_dim)
        self.theta_head = nn.Linear(h1, in_dim)
        self.pi_head = nn.Linear(h1, in_dim)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """What DEC fine-tunes: both encoder layers (with their batch norms), the GCN layers, z_layer and
        both attention blocks; the decoder stays frozen (MODELS.md 5.5)."""
        parts = (self.enc_1, self.bn_1, self.enc_2, self.bn_2, self.gcn_1, self.gcn_2, self.z_layer)
        parts += (self.attn_1, self.attn_2)
        return [p for m in parts for p in m.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        parts = (self.dec_1, self.dec_2, self.mu_head, self.theta_head, self.pi_head)
        return [p for m in parts for p in m.parameters()]

    def _noisy(self, h: Tensor) -> Tensor:
        if not self.training or self.noise == 0.0:
            return h
        return h + torch.randn_like(h) * (self.noise * h.detach())

    def encode(
        self,
        x: Tensor,
        propagate: Propagation,
        *,
        mode: str = "graph",
        edge_index: Tensor | None = None,
        return_attention: bool = False,
    ) -> Encoded:
        """Z and H2 for every cell; with ``return_attention`` also both fusion maps (see :mod:`.fusion`)."""
        e1 = self.bn_1(F.relu(self.enc_1(self._noisy(x))))
        h1 = torch.tanh(propagate(self.gcn_1(e1)))
        h2 = torch.tanh(propagate(self.gcn_2(h1)))
        e2 = self.bn_2(F.relu(self.enc_2(self._noisy(e1))))
        kw = {"mode": mode, "edge_index": edge_index, "return_attention": return_attention}
        attention: dict[str, Any] | None = None
        if return_attention:
            r1, a1 = self.attn_1(h1, e2, **kw)
            z, a2 = self.attn_2(h2, self.z_layer(self._noisy(r1)), **kw)
            attention = {"fusion1": a1, "fusion2": a2}
        else:
            r1 = self.attn_1(h1, e2, **kw)
            z = self.attn_2(h2, self.z_layer(self._noisy(r1)), **kw)
        return Encoded(z=z, h2=h2, attention=attention)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(μ, θ, π logit), each [n, D], float32; μ is the normalised mean (multiply by s_i)."""
        d = F.relu(self.dec_2(F.relu(self.dec_1(z))))
        log_mu = self.mu_head(d).float().clamp(_LOG_MU_MIN, _LOG_MU_MAX)
        theta = F.softplus(self.theta_head(d).float()).clamp(1e-4, 1e3)
        return log_mu.exp(), theta, self.pi_head(d).float()
