"""scBiGNN (Yang et al. 2023, "scBiGNN: Bilevel Graph Representation Learning for Cell Type
Classification"): the two networks, as pure modules (tensors in, tensors out; MODELS.md 2.3). The user-facing
model, the EM training and the exports are in ``model.py``.

Gene level, q_φ (:class:`GeneNet`): each cell is a sequence of its T_i expressed genes; gene j of cell i is
the token

    f⁽⁰⁾_ij = e_j + MLP(x̃_ij)                                   e_j a learnt gene embedding, d = 32

and each layer is self-attention over the cell's own tokens (a learnt dense gene graph per cell), heads
concatenated, with one projection shared by query, key and value:

    P = F·W_k                       [T_i, d/K] per head k
    R = softmax(P·Pᵀ · s)           row softmax over the cell's genes (padding keys masked), s = 1/√(d/K)
                                    or 1 (the paper states no scale)
    F′ = MLP(concat_k R·P)          [T_i, d]

    h_i = Σ_j α_j·f_ij              read-out with a learnt scalar α_j per gene (or the plain mean)
    q_φ(y | x_i) = softmax(MLP(h_i))

Cell level, p_θ (:class:`CellNet`) on a kNN graph of the h_i with Â = D⁻¹A (row-normalised, no self loops):

    z⁽⁰⁾ = concat(h_i, MLP(x̃_i))                                64 dims
    Z⁽ˡ⁾ = MLP(Â·Z⁽ˡ⁻¹⁾·W⁽ˡ⁾), l = 1..3                           32 dims each
    p_θ(y | x_i, graph) = softmax(MLP(concat(z⁽⁰⁾, …, z⁽³⁾)))    jumping knowledge, 160 dims

Every MLP has one hidden layer of 32 units with ReLU (MODELS.md 2.3; widths the paper leaves open are ours).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.sparse import ConstSpMM

READOUTS = ("weights", "mean")


def mlp(in_dim: int, out_dim: int, hidden: int = 32) -> nn.Sequential:
    """Linear(in, hidden) → ReLU → Linear(hidden, out): every MLP of scBiGNN (MODELS.md 2.3)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class GeneAttentionLayer(nn.Module):
    """One gene-level layer: F′ = MLP(concat_k softmax(P_k P_kᵀ · s) P_k), P_k = F·W_k.

    Args:
        width: token width d (input and output).
        heads: K; each head projects to d/K dims, the heads are concatenated back to d.
        scale: "sqrt" multiplies the scores by 1/√(d/K) (the transformer habit); "none" uses P·Pᵀ as the
            paper writes it.
        hidden: hidden width of the MLP.
        residual: return F + MLP(R·P) instead of MLP(R·P) (the paper writes no residual connection).

    Shapes: ``tokens`` [B, L, d], ``key_mask`` [B, L] (True = a real gene; False = padding, never attended
    to) → [B, L, d]. Padded positions produce values that the read-out ignores.
    """

    def __init__(
        self,
        width: int = 32,
        heads: int = 1,
        *,
        scale: str = "sqrt",
        hidden: int = 32,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.head_dim, self.residual = heads, width // heads, residual
        self.proj = nn.Linear(width, width, bias=False)  # W_k of every head, side by side
        self.scale = 1.0 / math.sqrt(self.head_dim) if scale == "sqrt" else 1.0
        self.mlp = mlp(width, width, hidden)

    def _heads(self, tokens: Tensor) -> Tensor:
        b, n, _ = tokens.shape
        return self.proj(tokens).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, K, L, d/K]

    def forward(self, tokens: Tensor, key_mask: Tensor) -> Tensor:
        p = self._heads(tokens)
        mask = key_mask[:, None, None, :]  # [B, 1, 1, L]: which keys each query may attend to
        out = F.scaled_dot_product_attention(p, p, p, attn_mask=mask, scale=self.scale)
        b, _, n, _ = out.shape
        new = self.mlp(out.transpose(1, 2).reshape(b, n, -1))
        return tokens + new if self.residual else new

    def attention(self, tokens: Tensor, key_mask: Tensor) -> Tensor:
        """R = softmax(P·Pᵀ · s) per head [B, K, L, L] (rows of padded queries are meaningless)."""
        p = self._heads(tokens)
        scores = (p @ p.transpose(-1, -2)) * self.scale
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.float().softmax(dim=-1)


class GeneNet(nn.Module):
    """q_φ: self-attention over each cell's expressed genes, read-out, classifier (MODELS.md 2.3).

    Args:
        n_genes: T, the model's genes; index T is reserved for the "no expressed gene" token a cell gets when
            none of the T genes is expressed in it.
        n_classes: C.
        width: token and cell-embedding width d (32).
        layers, heads: depth and heads per layer (paper: 2 × 1, or 1 × 4 on BaronMouse).
        readout: "weights" (h_i = Σ_j α_j f_ij, a learnt scalar per gene) or "mean" (plain mean over the cell's
            genes, the paper's choice on Zheng68K).
        alpha_init: starting value of every α_j (1 / the mean number of genes per cell keeps h on the scale of
            the mean read-out).
        scale: attention score scale, see :class:`GeneAttentionLayer`.
        residual: add each layer's input to its output (F′ = F + MLP(R·P); ours, the paper writes none).

    ``forward(genes [B, L] long, values [B, L] float, mask [B, L] bool)`` → (logits [B, C], h [B, d]).
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        *,
        width: int = 32,
        layers: int = 2,
        heads: int = 1,
        readout: str = "weights",
        alpha_init: float = 1.0,
        scale: str = "sqrt",
        hidden: int = 32,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}; got {readout!r}")
        self.n_genes, self.readout = n_genes, readout
        self.gene_embedding = nn.Embedding(n_genes + 1, width)
        self.value_mlp = mlp(1, width, hidden)
        self.layers = nn.ModuleList(
            GeneAttentionLayer(width, heads, scale=scale, hidden=hidden, residual=residual)
            for _ in range(layers)
        )
        self.alpha = nn.Parameter(torch.full((n_genes + 1,), float(alpha_init)))
        self.classifier = mlp(width, n_classes, hidden)

    def tokens(self, genes: Tensor, values: Tensor) -> Tensor:
        """f⁽⁰⁾ = e_j + MLP(x̃_ij) [B, L, d]."""
        return self.gene_embedding(genes) + self.value_mlp(values.unsqueeze(-1))

    def encode(self, genes: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """The cell embeddings h [B, d]."""
        f = self.tokens(genes, values)
        for layer in self.layers:
            f = layer(f, mask)
        keep = mask.unsqueeze(-1).to(f.dtype)
        if self.readout == "mean":
            return (f * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        weights = self.alpha[genes].unsqueeze(-1).to(f.dtype) * keep
        return (f * weights).sum(1)

    def forward(self, genes: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encode(genes, values, mask)
        return self.classifier(h), h

    def attention(self, genes: Tensor, values: Tensor, mask: Tensor) -> list[Tensor]:
        """Each layer's attention [B, K, L, L] (row = the attending gene, column = the attended gene)."""
        f = self.tokens(genes, values)
        maps = []
        for layer in self.layers:
            maps.append(layer.attention(f, mask))
            f = layer(f, mask)
        return maps


class CellNet(nn.Module):
    """p_θ: propagation over the kNN graph of the h_i with jumping knowledge (MODELS.md 2.3).

    Args:
        n_genes: T (the width of x̃_i).
        h_dim: width of q_φ's embeddings h (32).
        n_classes: C.
        width: width of z⁽⁰⁾'s expression half and of every propagation layer (32; z⁽⁰⁾ is h_dim + width).
        layers: propagation layers (3).

    ``forward(h [N, h_dim], x [N, T], adj, adj_t)`` → (logits [N, C], jk [N, h_dim + width·(layers + 1)]),
    where ``adj`` is Â = D⁻¹A as a sparse CSR tensor (row = receiving cell) and ``adj_t`` its transpose.
    """

    def __init__(
        self, n_genes: int, h_dim: int, n_classes: int, *, width: int = 32, layers: int = 3, hidden: int = 32
    ) -> None:
        super().__init__()
        self.expression = mlp(n_genes, width, hidden)
        dims = [h_dim + width] + [width] * layers
        self.weights = nn.ModuleList(nn.Linear(dims[i], width, bias=False) for i in range(layers))
        self.mlps = nn.ModuleList(mlp(width, width, hidden) for _ in range(layers))
        self.classifier = mlp(sum(dims), n_classes, hidden)

    def forward(self, h: Tensor, x: Tensor, adj: Tensor, adj_t: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.cat([h, self.expression(x)], dim=1)
        kept = [z]
        for w, f in zip(self.weights, self.mlps, strict=True):
            z = f(ConstSpMM.apply(w(z).float().contiguous(), adj, adj_t))  # MLP(Â·Z·W)
            kept.append(z)
        jk = torch.cat(kept, dim=1)
        return self.classifier(jk), jk
