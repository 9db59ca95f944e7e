"""The cross-attention fusion block of AttentionAE-sc (Li et al., PLoS Comput Biol 2023; MODELS.md 5.3).

Queries come from one branch (the graph autoencoder), keys and values from the other (the denoising
autoencoder); each of the K heads has its own full-width projections (e → e, no bias):

    q_i^k = W_Q^k x_q,i,   k_j^k = W_K^k x_kv,j,   v_j^k = W_V^k x_kv,j
    α_ij^k = softmax_j( q_i^k · k_j^k / √e )                 over the keys j allowed for query i
    out_i = W_O [ ‖_k Σ_j α_ij^k v_j^k ] + b_O + x_kv,i       (heads concatenated, then a residual)

Dropout acts on the queries while training. Two ways to choose the keys of a query cell:

* ``"dense"`` — every cell (the paper): [K, N, N] logits. Only for small N; the memory guard checks the
  allocation first.
* ``"graph"`` — the cell itself and its neighbours in the cell graph: α lives on the graph's edges
  ([E + N, K] values), so memory is O(E·K) and time O(E·K·e). The logits are an SDDMM and the weighted
  sums a sparse × dense product on the block-diagonal K-head layout of
  :mod:`scgraph_core.nn.layers`; no [E, K, e] tensor is ever formed.

Both modes give rows that sum to one per head (softmax before dropout; dropout never touches α).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..memory import check_dense
from .sparse import BlockAggregate, HeadBlocks, SegmentSoftmax, graph_structure, spmm

MODES = ("dense", "graph")


def _full(t: Tensor) -> Tensor:
    """Half precision (autocast) up to float32; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _EdgeDot(torch.autograd.Function):
    """Per-head dot products q_i^k · k_j^k at the non-zeros of the block-diagonal K-head pattern (SDDMM).

    ``q2d`` and ``k2d`` are [N·K, e] (row i·K + k = head k of cell i); the result is in the pattern's
    slot order. Backward: dq = A(g) @ k2d and dk = A(g)ᵀ @ q2d (two SpMMs); only q2d and k2d are saved.
    """

    @staticmethod
    def forward(ctx, q2d: Tensor, k2d: Tensor, blocks: HeadBlocks) -> Tensor:  # type: ignore[override]
        pattern = blocks.matrix(torch.zeros(blocks.nnz, dtype=q2d.dtype, device=q2d.device))
        values = torch.sparse.sampled_addmm(pattern, q2d, k2d.t(), beta=0.0).values()
        ctx.blocks = blocks
        ctx.save_for_backward(q2d, k2d)
        return values

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        q2d, k2d = ctx.saved_tensors
        blocks: HeadBlocks = ctx.blocks
        grad = grad.contiguous()
        dq = spmm(blocks.matrix(grad), k2d) if ctx.needs_input_grad[0] else None
        dk = spmm(blocks.matrix_t(grad), q2d) if ctx.needs_input_grad[1] else None
        return dq, dk, None


class FusionAttention(nn.Module):
    """Multi-head cross-attention with a residual on the key/value input (see the module docstring).

    Args:
        dim: width e of the query and key/value inputs and of the output.
        heads: number of heads K (8 in the paper).
        query_dropout: dropout on the projected queries while training (0.2 in the paper).
    """

    def __init__(self, dim: int, heads: int = 8, query_dropout: float = 0.2) -> None:
        super().__init__()
        if dim < 1 or heads < 1:
            raise ConfigError(f"The attention width and heads must be positive; got {dim} and {heads}.")
        self.dim, self.heads = int(dim), int(heads)
        self.query_dropout = float(query_dropout)
        self.w_q = nn.Linear(dim, heads * dim, bias=False)
        self.w_k = nn.Linear(dim, heads * dim, bias=False)
        self.w_v = nn.Linear(dim, heads * dim, bias=False)
        self.w_o = nn.Linear(heads * dim, dim)

    def forward(
        self,
        query: Tensor,
        kv: Tensor,
        *,
        mode: str = "graph",
        edge_index: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor] | Tensor]:
        """Output [N, e]. With ``return_attention`` also the attention (softmax, before any dropout):

        * dense: α [K, N, N] (row = query cell, column = key cell);
        * graph: (edge_index' [2, E + N] with self loops, row 0 = key cell, row 1 = query cell; α [E + N, K]).
        """
        if mode not in MODES:
            raise ConfigError(f"attention mode must be one of {MODES}; got {mode!r}")
        n, k, e = query.size(0), self.heads, self.dim
        scale = 1.0 / math.sqrt(e)
        q = self.w_q(query)
        if self.training and self.query_dropout > 0:
            q = F.dropout(q, self.query_dropout)
        keys, values = self.w_k(kv), self.w_v(kv)
        # Logits, softmax and weighted sums in float32 even under autocast.
        with torch.autocast(query.device.type, enabled=False):
            q, keys, values = _full(q), _full(keys), _full(values)
            if mode == "dense":
                check_dense(
                    n,
                    n,
                    what=f"Dense fusion attention ({k} heads x {n:,} x {n:,} cells)",
                    copies=3 * k,
                    device=query.device,
                    advice="Use attention = graph (keys restricted to each cell's graph neighbours).",
                )
                qh = q.view(n, k, e).transpose(0, 1)  # [K, N, e]
                kh = keys.view(n, k, e).transpose(0, 1)
                vh = values.view(n, k, e).transpose(0, 1)
                alpha = torch.softmax(torch.bmm(qh, kh.transpose(1, 2)) * scale, dim=-1)  # [K, N, N]
                mixed = torch.bmm(alpha, vh).transpose(0, 1).reshape(n, k * e)
                attention: tuple[Tensor, Tensor] | Tensor = alpha
            else:
                if edge_index is None:
                    raise ConfigError("attention mode 'graph' needs the cell graph's edge_index")
                graph = graph_structure(edge_index, n, add_self_loops=True)
                blocks = graph.blocks(k)
                logits = _EdgeDot.apply(q.reshape(n * k, e), keys.reshape(n * k, e), blocks) * scale
                alpha = SegmentSoftmax.apply(logits, blocks.lengths)
                mixed = BlockAggregate.apply(alpha, values.reshape(n * k, e), blocks, None).view(n, k * e)
                attention = (graph.edge_index, alpha)
        out = self.w_o(mixed) + kv
        if not return_attention:
            return out
        if mode == "graph":
            ei, a = attention
            with torch.no_grad():
                attention = (ei, graph.alpha_to_input_order(a.detach(), k))
        else:
            attention = attention.detach()
        return out, attention

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, query_dropout={self.query_dropout}"


def strongest_pairs(
    attention: tuple[Tensor, Tensor] | Tensor, n_cells: int, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` keys with the largest head-mean attention for every query cell.

    ``attention`` is what :meth:`FusionAttention.forward` returns with ``return_attention``. Returns
    (edge_index int64 [2, M] with row 0 = key cell, row 1 = query cell; α float32 [M, K] per head), sorted
    by query cell then by decreasing mean attention. The dense map is read in row blocks.
    """
    if top < 1:
        raise ConfigError(f"top must be at least 1; got {top}")
    if isinstance(attention, tuple):
        ei, alpha = attention
        ei = ei.detach().cpu().numpy().astype(np.int64)
        alpha = alpha.detach().float().cpu().numpy()
        key, query = ei
        mean = alpha.mean(axis=1)
        # Sort by query, then by decreasing mean; keep the first ``top`` of each query.
        order = np.lexsort((-mean, query))
        q_sorted = query[order]
        start = np.searchsorted(q_sorted, np.arange(n_cells))
        rank = np.arange(order.size) - start[q_sorted]
        keep = order[rank < top]
        return np.vstack([key[keep], query[keep]]), alpha[keep].astype(np.float32)
    alpha = attention.detach().float()  # [K, N, N]
    k_heads, n, _ = alpha.shape
    top = min(top, n)
    keys, vals = [], []
    step = max(1, (1 << 24) // max(1, n * k_heads))
    for a in range(0, n, step):
        block = alpha[:, a : a + step]  # [K, B, N]
        idx = block.mean(dim=0).topk(top, dim=1).indices  # [B, top]
        keys.append(idx)
        vals.append(torch.gather(block, 2, idx.unsqueeze(0).expand(k_heads, -1, -1)).permute(1, 2, 0))
    key = torch.cat(keys).cpu().numpy().astype(np.int64).reshape(-1)
    per_head = torch.cat(vals).cpu().numpy().reshape(-1, k_heads).astype(np.float32)
    query = np.repeat(np.arange(n, dtype=np.int64), top)
    return np.vstack([key, query]), per_head


def keys_per_query(attention: tuple[Tensor, Tensor] | Tensor, n_cells: int) -> np.ndarray:
    """How many key cells each query cell spread its attention over (int32 [N]): every cell for a dense map,
    the cell itself and its graph neighbours for a graph map. α × this count is the attention relative to
    an even split (1 = no preference)."""
    if isinstance(attention, tuple):
        query = attention[0][1].detach().cpu().numpy()
        return np.bincount(query, minlength=n_cells).astype(np.int32)
    return np.full(n_cells, attention.shape[-1], dtype=np.int32)


def received_attention(attention: tuple[Tensor, Tensor] | Tensor, n_cells: int) -> np.ndarray:
    """Per cell, the head-mean attention it receives as a key, summed over all query cells (its influence)."""
    if isinstance(attention, tuple):
        ei, alpha = attention
        mean = alpha.detach().float().mean(dim=1).cpu().numpy()
        return np.bincount(ei[0].cpu().numpy(), weights=mean, minlength=n_cells).astype(np.float32)
    return attention.detach().float().mean(dim=0).sum(dim=0).cpu().numpy().astype(np.float32)
