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

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GATLayer",
    "FusedGATLayer",
    "GCNLayer",
    "GATv2Layer",
    "fast_dropout",
    "GraphStructure",
    "graph_structure",
    "clear_graph_cache",
]

_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------------------------------
# Cached graph structure
# ----------------------------------------------------------------------------------------------------


class _HeadBlocks:
    """Block-diagonal CSR structure of A (and Aᵀ) for K heads on one graph.

    Row r = i·K + k of A holds the incoming edges of node i for head k, in the graph's CSR order; its
    columns are j·K + k. Values are never stored here: α is produced directly in this layout.
    """

    def __init__(self, graph: GraphStructure, heads: int) -> None:
        k = heads
        n, e = graph.num_nodes, graph.num_edges
        dev = graph.src.device
        ar_k = torch.arange(k, device=dev)
        nnz = e * k
        # MKL's CSR kernels want 32-bit indices; the 64-bit path is an order of magnitude slower.
        self.idx_dtype = torch.int32 if nnz < _INT32_MAX and n * k < _INT32_MAX else torch.int64
        self.heads = k
        self.nnz = nnz
        self.size = n * k
        self._export: Tensor | None = None

        pos = self.slot_positions(graph, k)
        col = torch.empty(nnz, dtype=torch.long, device=dev)
        col[pos] = (graph.src.unsqueeze(1) * k + ar_k).reshape(-1)
        self.crow = _row_pointer(graph.in_degree, k).to(self.idx_dtype)
        self.col = col.to(self.idx_dtype)
        # Segment lengths of the softmax: one segment per (target node, head) row.
        self.lengths = graph.in_degree.repeat_interleave(k)

        # Aᵀ: rows j·K + k hold the outgoing edges of j; perm_t maps Aᵀ's value slots to A's.
        out_deg, rowptr_t, order_t = graph.out_degree, graph.rowptr_t, graph.order_t
        src_sorted = graph.src[order_t]
        start_t = rowptr_t[src_sorted]
        pos_t = (start_t * k).unsqueeze(1) + ar_k * out_deg[src_sorted].unsqueeze(1)
        pos_t = (pos_t + (torch.arange(e, device=dev) - start_t).unsqueeze(1)).reshape(-1)
        col_t = torch.empty(nnz, dtype=torch.long, device=dev)
        col_t[pos_t] = (graph.dst[order_t].unsqueeze(1) * k + ar_k).reshape(-1)
        perm_t = torch.empty(nnz, dtype=torch.long, device=dev)
        perm_t[pos_t] = pos.view(e, k)[order_t].reshape(-1)
        self.crow_t = _row_pointer(out_deg, k).to(self.idx_dtype)
        self.col_t = col_t.to(self.idx_dtype)
        self.perm_t = perm_t.to(self.idx_dtype)

    @staticmethod
    def slot_positions(graph: GraphStructure, k: int) -> Tensor:
        """pos[e·K + k]: the slot in A's value array of edge e (CSR order) and head k."""
        e_ar = torch.arange(graph.num_edges, device=graph.src.device)
        start = graph.rowptr[graph.dst]  # first CSR position of each edge's target segment
        deg = graph.in_degree[graph.dst]
        ar_k = torch.arange(k, device=graph.src.device)
        return ((start * k).unsqueeze(1) + ar_k * deg.unsqueeze(1) + (e_ar - start).unsqueeze(1)).reshape(-1)

    def export_map(self, graph: GraphStructure) -> Tensor:
        """A's value slot → flat index into α [E', K] in ``edge_index`` order (built on first export)."""
        if self._export is None:
            k = self.heads
            ar_k = torch.arange(k, device=graph.src.device)
            export = torch.empty(self.nnz, dtype=torch.long, device=graph.src.device)
            export[self.slot_positions(graph, k)] = (graph.csr_to_input.unsqueeze(1) * k + ar_k).reshape(-1)
            self._export = export
        return self._export

    def matrix(self, values: Tensor) -> Tensor:
        """A as a sparse CSR tensor with the given values (in A's slot order)."""
        return _csr(self.crow, self.col, values, self.size)

    def matrix_t(self, values: Tensor) -> Tensor:
        """Aᵀ as a sparse CSR tensor, given A's values (reordered here)."""
        return _csr(self.crow_t, self.col_t, values.index_select(0, self.perm_t), self.size)


def _row_pointer(deg: Tensor, k: int) -> Tensor:
    """CSR row pointer of the block matrix whose row i·K + k has deg[i] entries."""
    lengths = deg.repeat_interleave(k)
    crow = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=deg.device)
    torch.cumsum(lengths, 0, out=crow[1:])
    return crow


def _to_accumulate_dtype(h: Tensor) -> Tensor:
    """Half-precision projections (autocast) go up to float32 for the softmax and the sparse sums."""
    return h.float() if h.dtype in (torch.float16, torch.bfloat16) else h


def _spmm(sparse: Tensor, dense: Tensor) -> Tensor:
    """sparse (CSR) @ dense. On CPU written straight into fresh memory: ``torch.sparse.mm`` zero-fills a
    result and copies MKL's output into it, which costs more than the product itself at 20k cells."""
    if dense.device.type != "cpu":
        return torch.sparse.mm(sparse, dense)
    out = torch.empty(sparse.size(0), dense.size(1), dtype=dense.dtype, device=dense.device)
    return torch.addmm(out, sparse, dense, beta=0.0, out=out)  # beta = 0: out's contents are ignored


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: int) -> Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR support is in beta": said once per process, not actionable here.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, (size, size), check_invariants=False)


class GraphStructure:
    """Everything about one graph that the layers reuse across calls.

    Self loops (when asked) follow PyG's convention: existing self loops are removed, then one loop
    per node is appended after the remaining edges, so ``edge_index`` here equals the one
    ``GATConv(return_attention_weights=True)`` reports. Internally edges are kept sorted by target
    (CSR order); ``csr_to_input`` maps back.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, add_self_loops: bool = True) -> None:
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
        ei = edge_index.long()
        dev = ei.device
        if add_self_loops:
            ei = ei[:, ei[0] != ei[1]]
            loops = torch.arange(num_nodes, device=dev)
            ei = torch.cat([ei, torch.stack([loops, loops])], dim=1)
        self.num_nodes = num_nodes
        self.edge_index = ei  # [2, E'] in the order attention is reported
        self.num_edges = ei.size(1)
        order = torch.sort(ei[1], stable=True).indices
        self.csr_to_input = order
        self.src = ei[0, order].contiguous()
        self.dst = ei[1, order].contiguous()
        self.in_degree = torch.bincount(self.dst, minlength=num_nodes)
        self.rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=dev)
        torch.cumsum(self.in_degree, 0, out=self.rowptr[1:])
        # Source-sorted order (positions in CSR order), for the transposed products.
        self.order_t = torch.sort(self.src, stable=True).indices
        self.out_degree = torch.bincount(self.src, minlength=num_nodes)
        self.rowptr_t = torch.zeros(num_nodes + 1, dtype=torch.long, device=dev)
        torch.cumsum(self.out_degree, 0, out=self.rowptr_t[1:])
        self._blocks: dict[int, _HeadBlocks] = {}
        self._gcn: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor] | None = None

    def blocks(self, heads: int) -> _HeadBlocks:
        """The block structure for ``heads`` heads, built on first use."""
        if heads not in self._blocks:
            self._blocks[heads] = _HeadBlocks(self, heads)
        return self._blocks[heads]

    def gcn_operator(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(crow, col, values, crow_t, col_t, values_t) of D^-1/2 (A+I) D^-1/2 and its transpose."""
        if self._gcn is None:
            deg = self.in_degree.to(torch.float64)  # cast to the features' dtype per call
            dinv = deg.pow(-0.5).masked_fill_(deg == 0, 0.0)
            vals = dinv[self.src] * dinv[self.dst]
            idx = torch.int32 if self.num_edges < _INT32_MAX else torch.long
            crow, col = self.rowptr.to(idx), self.src.to(idx)
            crow_t, col_t = self.rowptr_t.to(idx), self.dst[self.order_t].to(idx)
            self._gcn = (crow, col, vals, crow_t, col_t, vals[self.order_t])
        return self._gcn

    def alpha_to_input_order(self, alpha_blk: Tensor, heads: int) -> Tensor:
        """α from A's slot order to [E', K] in ``edge_index`` order."""
        out = torch.empty(self.num_edges * heads, dtype=alpha_blk.dtype, device=alpha_blk.device)
        out[self.blocks(heads).export_map(self)] = alpha_blk
        return out.view(self.num_edges, heads)


_CACHE: OrderedDict[tuple, tuple[Tensor, GraphStructure]] = OrderedDict()
_CACHE_SIZE = 8
_CACHE_LOCK = threading.Lock()


def graph_structure(edge_index: Tensor, num_nodes: int, add_self_loops: bool = True) -> GraphStructure:
    """The cached :class:`GraphStructure` of ``edge_index``.

    The key is the tensor's storage address, shape, stride, device and version counter; the entry holds
    a reference to the tensor so its memory cannot be reused by another graph while cached, and an
    in-place edit bumps the version and so misses the cache. Least recently used entries are dropped.
    """
    key = (
        edge_index.data_ptr(),
        tuple(edge_index.shape),
        tuple(edge_index.stride()),
        str(edge_index.device),
        edge_index._version,
        int(num_nodes),
        bool(add_self_loops),
    )
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit[1]
    with torch.no_grad():
        graph = GraphStructure(edge_index.detach(), num_nodes, add_self_loops)
    with _CACHE_LOCK:
        _CACHE[key] = (edge_index, graph)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return graph


def clear_graph_cache() -> None:
    """Forget every cached graph structure (frees its index memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------------------------------
# Autograd functions
# ----------------------------------------------------------------------------------------------------


class _SegmentSoftmax(torch.autograd.Function):
    """Softmax over consecutive segments of a flat vector (one segment per target node and head).

    Forward: α = exp(e − max_seg e) / Σ_seg exp(e − max_seg e). Backward: de = α ⊙ (dα − Σ_seg α dα).
    Only α is saved.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, lengths: Tensor) -> Tensor:  # type: ignore[override]
        total = logits.numel()
        seg_max = torch.segment_reduce(logits, "max", lengths=lengths, unsafe=True)
        alpha = (logits - seg_max.repeat_interleave(lengths, output_size=total)).exp_()
        seg_sum = torch.segment_reduce(alpha, "sum", lengths=lengths, unsafe=True)
        alpha.div_(seg_sum.repeat_interleave(lengths, output_size=total))
        ctx.save_for_backward(alpha, lengths)
        return alpha

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        alpha, lengths = ctx.saved_tensors
        prod = alpha * grad
        dot = torch.segment_reduce(prod, "sum", lengths=lengths, unsafe=True)
        prod.sub_(alpha * dot.repeat_interleave(lengths, output_size=alpha.numel()))
        return prod, None


class _BlockAggregate(torch.autograd.Function):
    """out = A(α) @ h (+ b) for the block-diagonal multi-head attention matrix (see the module docstring).

    Backward: dh = Aᵀ @ dout (SpMM on the cached transposed structure) and dα = <dout_row, h_col> at
    A's non-zeros (``torch.sparse.sampled_addmm``, an SDDMM): nothing of size [E, K, H] is formed.
    An optional bias over the concatenated heads ([K·H]) is added in place here, which saves one
    [N, K·H] temporary per layer.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, alpha: Tensor, h2d: Tensor, blocks: _HeadBlocks, bias: Tensor | None
    ) -> Tensor:
        with torch.autocast(h2d.device.type, enabled=False):
            out = _spmm(blocks.matrix(alpha), h2d)
            if bias is not None:
                out.view(-1, bias.numel()).add_(bias)
        ctx.blocks = blocks
        ctx.bias_numel = None if bias is None else bias.numel()
        ctx.save_for_backward(alpha, h2d)
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, Tensor | None]:
        alpha, h2d = ctx.saved_tensors
        blocks: _HeadBlocks = ctx.blocks
        grad = grad.contiguous()
        d_alpha = d_h = d_bias = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[1]:
                d_h = _spmm(blocks.matrix_t(alpha), grad)
            if ctx.needs_input_grad[0]:
                pattern = blocks.matrix(alpha)
                d_alpha = torch.sparse.sampled_addmm(pattern, grad, h2d.t(), beta=0.0).values()
            if ctx.bias_numel is not None and ctx.needs_input_grad[3]:
                d_bias = grad.view(-1, ctx.bias_numel).sum(dim=0)
        return d_alpha, d_h, None, d_bias


class _ConstSpMM(torch.autograd.Function):
    """out = S @ x for a constant sparse S given with its transpose (backward: dx = Sᵀ @ dout)."""

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor, s_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.s_t = s_t
        with torch.autocast(x.device.type, enabled=False):
            return _spmm(s, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        with torch.autocast(grad.device.type, enabled=False):
            return _spmm(ctx.s_t, grad.contiguous()), None, None


class _MaskedScale(torch.autograd.Function):
    """out = x · mask · scale with a boolean mask; backward applies the same mask and scale."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, scale: Tensor | float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask, scale if isinstance(scale, Tensor) else None)
        ctx.scalar = None if isinstance(scale, Tensor) else scale
        return x.mul(mask).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        mask, scale = ctx.saved_tensors
        return grad.mul(mask).mul_(ctx.scalar if scale is None else scale), None, None


def fast_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout, x · Bernoulli(1 − p) / (1 − p), equal in distribution to ``F.dropout``.

    The mask comes from one uniform draw compared with p, which on CPU is several times faster than
    ``bernoulli_`` (the bulk of ``F.dropout``'s time); a boolean mask (1 byte per element) is kept for
    backward, as ``F.dropout`` does.
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    mask = torch.rand(x.shape, device=x.device) >= p
    return _MaskedScale.apply(x, mask, 1.0 / (1.0 - p))


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

    def _attention(self, x: Tensor, blocks: _HeadBlocks) -> Tensor:
        """α in A's slot order: softmax over each (target, head) row of LeakyReLU(a_src·h_j + a_dst·h_i).

        a^k·(W^k x) = (W^kᵀ a^k)·x, so the per-node logits come from x and two folded vectors per head
        ([2K, D]): one small float32 matmul instead of passes over the [N, K·H] projection, and exact
        even when the projection itself runs in bf16. Per-edge work is then a gather of K numbers.
        """
        k = self.total_heads
        w3 = self.weight.view(k, self.out_dim, self.in_dim)
        att = torch.stack([self.att_src, self.att_dst]).unsqueeze(-1)  # [2, K, H, 1]
        folded = (w3 * att).sum(dim=2).reshape(2 * k, self.in_dim)  # [2K, D]
        logits_node = F.linear(_to_accumulate_dtype(x), folded)  # [N, 2K]
        a_src = logits_node[:, :k].reshape(-1)
        a_dst = logits_node[:, k:].reshape(-1)
        logits = a_src[blocks.col] + a_dst.repeat_interleave(blocks.lengths, output_size=blocks.nnz)
        logits = F.leaky_relu(logits, self.negative_slope)
        return _SegmentSoftmax.apply(logits, blocks.lengths)

    def _dropout(self, alpha: Tensor, blocks: _HeadBlocks) -> Tensor:
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
        return _MaskedScale.apply(alpha, keep, 1.0 / (1.0 - rate).clamp_min(1e-12))

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
        h = _to_accumulate_dtype(F.linear(x, self.weight))
        # A single concatenating branch (the hidden layers) gets its bias inside the aggregation.
        fused_bias = self.bias[0] if self.bias is not None and self.concat == (True,) else None
        # Attention logits, softmax and neighbourhood sums in float32 even under autocast.
        with torch.autocast(h.device.type, enabled=False):
            alpha = self._attention(x, blocks)
            agg = _BlockAggregate.apply(
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
        h = _to_accumulate_dtype(F.linear(x, self.weight))
        s = _csr(crow, col, vals.to(h.dtype), n)
        s_t = _csr(crow_t, col_t, vals_t.to(h.dtype), n)
        out = _ConstSpMM.apply(h, s, s_t)
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
