"""Graph layers shared by the models: a lean multi-head GAT, a GCN and a GATv2 wrapper.

The GAT follows Veličković et al. (ICLR 2018) exactly as PyTorch Geometric's ``GATConv`` computes it, so
weights move between the two and the paper's P_mu recipe (MODELS.md 1.6) reads the same matrices:

    h_j = W x_j                                   W: [K·H, D], no bias, split into K heads of width H
    e_ij^k = LeakyReLU(a_src^k · h_j^k + a_dst^k · h_i^k)      for every edge j → i and the self loop i → i
    α_ij^k = softmax_j(e_ij^k)                    over the incoming edges of i, per head
    out_i = ‖_k Σ_j α_ij^k h_j^k   (concat)   or   1/K Σ_k Σ_j α_ij^k h_j^k   (mean),   then + b

What differs from ``GATConv`` is how the sum over j is done. ``GATConv`` materialises one message per
edge and head ([E, K, H]: about 4.6 GB per layer at 100k cells, 8 edges per cell, 10 × 128) and keeps it
for backward. Here each head's neighbourhood sum is a sparse × dense product: the K heads form one
block-diagonal sparse matrix A (rows i·K+k, columns j·K+k, values α_ij^k) of size NK × NK and

    out.view(N·K, H) = A @ h.view(N·K, H)                      (forward)
    dh = Aᵀ @ dout,    dα_ij^k = <dout_i^k, h_j^k>              (backward: SpMM and SDDMM)

so no per-edge feature tensor is ever stored; only α ([E+N]·K values) is. The row/column structure of
A and Aᵀ depends only on the graph, and is cached per ``edge_index`` tensor (edge_index is fixed while
a model trains). Under ``torch.autocast`` the projections run in the low-precision dtype while the
softmax and the aggregation run in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sparse import (
    BlockAggregate,
    ConstSpMM,
    GraphStructure,
    HeadBlocks,
    MaskedScale,
    SegmentSoftmax,
    clear_graph_cache,
    csr_tensor,
    fast_dropout,
    graph_structure,
    to_accumulate_dtype,
)

__all__ = [
    "FusedGATLayer",
    "GATLayer",
    "GATv2Layer",
    "GCNLayer",
    "GraphStructure",
    "clear_graph_cache",
    "fast_dropout",
    "graph_structure",
]


# ----------------------------------------------------------------------------------------------------
# GAT
# ----------------------------------------------------------------------------------------------------


def _branch_tuple(value: object, n: int, name: str) -> tuple:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} branches")
        return tuple(value)
    return (value,) * n


class FusedGATLayer(nn.Module):
    """Several GAT layers that share their input and graph, computed as one (MODELS.md 1.3).

    CellVGAE's μ and log-σ layers read the same hidden features over the same graph, so their
    projections are one matrix ``weight`` of shape [Σ_b K_b·H, D] (branch b's rows are
    ``branch_weight(b)``, PyG orientation) and their attention and neighbourhood sums run as one
    (Σ_b K_b)-head layer. Each branch keeps its own attention vectors, bias, head count, head
    combination (concat or mean) and attention dropout. All branches have output width H.

    Args:
        in_dim: input width D.
        out_dim: width H of each head.
        heads: heads K_b per branch.
        concat: per branch (or one for all): concatenate the heads (width K_b·H) or average them (H).
        attn_dropout: per branch (or one for all): dropout on α while training.
        negative_slope: LeakyReLU slope of the attention logits (0.2 in GAT).
        bias: add a learnable bias per branch after combining heads.
        add_self_loops: every node attends to itself, as GATConv does.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: Sequence[int],
        concat: bool | Sequence[bool] = False,
        attn_dropout: float | Sequence[float] = 0.0,
        negative_slope: float = 0.2,
        bias: bool = True,
        add_self_loops: bool = True,
    ) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)
        self.heads = tuple(int(k) for k in heads)
        if not self.heads or min(self.heads) < 1:
            raise ValueError(f"heads must be positive, got {heads}")
        n = len(self.heads)
        self.concat = tuple(bool(c) for c in _branch_tuple(concat, n, "concat"))
        self.attn_dropout = tuple(float(p) for p in _branch_tuple(attn_dropout, n, "attn_dropout"))
        self.negative_slope = float(negative_slope)
        self.add_self_loops = bool(add_self_loops)
        self.total_heads = sum(self.heads)
        self.weight = nn.Parameter(torch.empty(self.total_heads * self.out_dim, self.in_dim))
        self.att_src = nn.Parameter(torch.empty(self.total_heads, self.out_dim))
        self.att_dst = nn.Parameter(torch.empty(self.total_heads, self.out_dim))
        if bias:
            self.bias = nn.ParameterList(
                nn.Parameter(torch.zeros(k * self.out_dim if c else self.out_dim))
                for k, c in zip(self.heads, self.concat, strict=True)
            )
        else:
            self.bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform W and attention vectors, zero bias (GATConv's initialisation)."""
        nn.init.xavier_uniform_(self.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        if self.bias is not None:
            for b in self.bias:
                nn.init.zeros_(b)

    def branch_weight(self, branch: int) -> Tensor:
        """Projection rows of one branch, [K_b·H, D] (a view of ``weight``)."""
        start = sum(self.heads[:branch]) * self.out_dim
        return self.weight[start : start + self.heads[branch] * self.out_dim]

    def _attention(self, x: Tensor, blocks: HeadBlocks) -> Tensor:
        """α in A's slot order: softmax over each (target, head) row of LeakyReLU(a_src·h_j + a_dst·h_i).

        a^k·(W^k x) = (W^kᵀ a^k)·x, so the per-node logits come from x and two folded vectors per head
        ([2K, D]): one small float32 matmul instead of passes over the [N, K·H] projection, and exact
        even when the projection itself runs in bf16. Per-edge work is then a gather of K numbers.
        """
        k = self.total_heads
        w3 = self.weight.view(k, self.out_dim, self.in_dim)
        att = torch.stack([self.att_src, self.att_dst]).unsqueeze(-1)  # [2, K, H, 1]
        folded = (w3 * att).sum(dim=2).reshape(2 * k, self.in_dim)  # [2K, D]
        logits_node = F.linear(to_accumulate_dtype(x), folded)  # [N, 2K]
        a_src = logits_node[:, :k].reshape(-1)
        a_dst = logits_node[:, k:].reshape(-1)
        logits = a_src[blocks.col] + a_dst.repeat_interleave(blocks.lengths, output_size=blocks.nnz)
        logits = F.leaky_relu(logits, self.negative_slope)
        return SegmentSoftmax.apply(logits, blocks.lengths)

    def _dropout(self, alpha: Tensor, blocks: HeadBlocks) -> Tensor:
        if not self.training or max(self.attn_dropout) == 0.0:
            return alpha
        if len(set(self.attn_dropout)) == 1:
            return fast_dropout(alpha, self.attn_dropout[0])
        # Different rates per branch: each slot's rate from its head (row % K_total).
        rate_per_head = torch.tensor(
            [p for p, k in zip(self.attn_dropout, self.heads, strict=True) for _ in range(k)],
            dtype=alpha.dtype,
            device=alpha.device,
        )
        row_head = torch.arange(blocks.size, device=alpha.device) % self.total_heads
        rate = rate_per_head[row_head].repeat_interleave(blocks.lengths, output_size=blocks.nnz)
        keep = torch.rand_like(alpha) >= rate
        return MaskedScale.apply(alpha, keep, 1.0 / (1.0 - rate).clamp_min(1e-12))

    def forward(
        self, x: Tensor, edge_index: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, ...] | tuple[tuple[Tensor, ...], list[tuple[Tensor, Tensor]]]:
        """One output per branch; with ``return_attention`` also (edge_index', α_b) per branch.

        edge_index' ([2, E+N]) includes the self loops; α_b ([E+N, K_b]) is the softmax before
        attention dropout, so Σ_{j→i} α_ij^k = 1 for every node and head in train and eval mode.
        """
        n = x.size(0)
        graph = graph_structure(edge_index, n, self.add_self_loops)
        blocks = graph.blocks(self.total_heads)
        # The projection is the big matmul: under autocast it runs in bf16/fp16; the rest is fp32.
        h = to_accumulate_dtype(F.linear(x, self.weight))
        # A single concatenating branch (the hidden layers) gets its bias inside the aggregation.
        fused_bias = self.bias[0] if self.bias is not None and self.concat == (True,) else None
        # Attention logits, softmax and neighbourhood sums in float32 even under autocast.
        with torch.autocast(h.device.type, enabled=False):
            alpha = self._attention(x, blocks)
            agg = BlockAggregate.apply(
                self._dropout(alpha, blocks), h.view(-1, self.out_dim), blocks, fused_bias
            )
        if fused_bias is not None:
            outputs = [agg.view(n, self.total_heads * self.out_dim)]
        else:
            agg = agg.view(n, self.total_heads, self.out_dim)
            outputs = []
            start = 0
            for b, (k, concat) in enumerate(zip(self.heads, self.concat, strict=True)):
                part = agg[:, start : start + k]
                out = part.reshape(n, k * self.out_dim) if concat else part.mean(dim=1)
                if self.bias is not None:
                    out = out + self.bias[b]
                outputs.append(out)
                start += k
        if not return_attention:
            return tuple(outputs)
        with torch.no_grad():
            full = graph.alpha_to_input_order(alpha.detach(), self.total_heads)
        attention = []
        start = 0
        for k in self.heads:
            attention.append((graph.edge_index, full[:, start : start + k]))
            start += k
        return tuple(outputs), attention

    def extra_repr(self) -> str:
        return (
            f"{self.in_dim}, {self.out_dim}, heads={self.heads}, concat={self.concat}, "
            f"attn_dropout={self.attn_dropout}"
        )


class GATLayer(FusedGATLayer):
    """Multi-head graph attention layer (Veličković et al. 2018), numerically equal to PyG ``GATConv``.

    out_i = ‖_k or mean_k Σ_{j ∈ N(i) ∪ {i}} α_ij^k W^k x_j + b, with
    α_ij^k = softmax_j LeakyReLU(a_src^k·W^k x_j + a_dst^k·W^k x_i) (see the module docstring for how the
    sum is computed without per-edge messages).

    Parameters map one to one onto ``GATConv``'s: ``weight`` ([K·H, D]) = ``lin.weight``,
    ``att_src``/``att_dst`` ([K, H]) = ``att_src``/``att_dst`` ([1, K, H]), ``bias`` = ``bias``.

    Args:
        in_dim: input width D.
        out_dim: width H per head.
        heads: number of heads K.
        concat: concatenate heads (output K·H) or average them (output H).
        attn_dropout: dropout probability on α while training.
        negative_slope: LeakyReLU slope (0.2).
        bias: learnable output bias.
        add_self_loops: every node attends to itself.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int = 1,
        concat: bool = True,
        attn_dropout: float = 0.0,
        negative_slope: float = 0.2,
        bias: bool = True,
        add_self_loops: bool = True,
    ) -> None:
        super().__init__(
            in_dim,
            out_dim,
            heads=(heads,),
            concat=concat,
            attn_dropout=attn_dropout,
            negative_slope=negative_slope,
            bias=bias,
            add_self_loops=add_self_loops,
        )

    @property
    def num_heads(self) -> int:
        return self.heads[0]

    @property
    def bias_vector(self) -> Tensor | None:
        """The output bias ([K·H] when concatenating, else [H]), or None."""
        return None if self.bias is None else self.bias[0]

    def forward(  # type: ignore[override]
        self, x: Tensor, edge_index: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Output [N, K·H] or [N, H]; with ``return_attention`` also (edge_index' [2, E+N], α [E+N, K])."""
        if return_attention:
            (out,), (att,) = super().forward(x, edge_index, return_attention=True)
            return out, att
        return super().forward(x, edge_index)[0]


# ----------------------------------------------------------------------------------------------------
# GCN and GATv2
# ----------------------------------------------------------------------------------------------------


class GCNLayer(nn.Module):
    """Graph convolution of Kipf & Welling (2017): out = D^-1/2 (A + I) D^-1/2 X Wᵀ + b.

    Equal to PyG ``GCNConv`` with default settings on an unweighted graph (degrees counted on the
    target side, self loops added). The normalised adjacency is a cached sparse CSR matrix and the
    product is a sparse × dense multiply. ``weight`` is [out, in] (PyG orientation).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, add_self_loops: bool = True) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.add_self_loops = bool(add_self_loops)
        self.weight = nn.Parameter(torch.empty(self.out_dim, self.in_dim))
        self.bias = nn.Parameter(torch.zeros(self.out_dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weight, zero bias (GCNConv's initialisation)."""
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, edge_index: Tensor, return_attention: bool = False) -> Tensor:
        """Output [N, out]. GCN has no attention: ``return_attention`` must be False."""
        if return_attention:
            raise ValueError("GCNLayer has no attention weights to return")
        graph = graph_structure(edge_index, x.size(0), self.add_self_loops)
        crow, col, vals, crow_t, col_t, vals_t = graph.gcn_operator()
        n = x.size(0)
        h = to_accumulate_dtype(F.linear(x, self.weight))
        s = csr_tensor(crow, col, vals.to(h.dtype), n)
        s_t = csr_tensor(crow_t, col_t, vals_t.to(h.dtype), n)
        out = ConstSpMM.apply(h, s, s_t)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}"


class GATv2Layer(nn.Module):
    """GATv2 (Brody et al., ICLR 2022) through PyG ``GATv2Conv``: the slow, memory-hungry path.

    e_ij^k = a^k · LeakyReLU(W_s^k x_j + W_t^k x_i); α and the output are formed as in GAT from the
    source-side messages W_s x_j. PyG materialises [E, K, H] messages here, so this layer does not
    scale like :class:`GATLayer`. ``weight`` is PyG's ``lin_l.weight`` ([K·H, D]), the source-side
    projection that P_mu uses (MODELS.md 1.6).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int = 1,
        concat: bool = True,
        attn_dropout: float = 0.0,
        negative_slope: float = 0.2,
        bias: bool = True,
        add_self_loops: bool = True,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import GATv2Conv  # imported here: only this layer needs PyG

        self.conv = GATv2Conv(
            in_dim,
            out_dim,
            heads=heads,
            concat=concat,
            negative_slope=negative_slope,
            dropout=attn_dropout,
            add_self_loops=add_self_loops,
            bias=bias,
        )
        self.in_dim, self.out_dim, self.num_heads, self.concat = in_dim, out_dim, heads, concat

    @property
    def weight(self) -> Tensor:
        """Source-side projection W_s = ``lin_l.weight`` ([K·H, D])."""
        return self.conv.lin_l.weight

    def forward(
        self, x: Tensor, edge_index: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Output [N, K·H] or [N, H]; with ``return_attention`` also (edge_index' [2, E+N], α [E+N, K]).

        PyG reports α after attention dropout in training mode; export attention in eval mode.
        """
        if return_attention:
            out, (ei, alpha) = self.conv(x, edge_index, return_attention_weights=True)
            return out, (ei, alpha)
        return self.conv(x, edge_index)
