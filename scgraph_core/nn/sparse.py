"""Sparse kernels the graph layers share: the cached CSR structure of one graph, the per-head block
matrices of a multi-head attention layer, and autograd functions for products with constant or
attention-weighted sparse matrices (MODELS.md 1.3; the layers in :mod:`scgraph_core.nn.layers`).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ..errors import ConfigError

_INT32_MAX = 2**31 - 1

# ----------------------------------------------------------------------------------------------------
# Cached graph structure
# ----------------------------------------------------------------------------------------------------


class HeadBlocks:
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
        self.crow = row_pointer(graph.in_degree, k).to(self.idx_dtype)
        self.col = col.to(self.idx_dtype)
        # Segment lengths of the softmax: one segment per (target node, head) row.
        self.lengths = graph.in_degree.repeat_interleave(k)

        # Aᵀ is only needed by backward passes: built on first use (:meth:`transposed`), so a read-out
        # without gradients never holds it (three more index arrays of nnz entries, and their build).
        self._graph = _TransposeInputs(graph)
        self._transposed: tuple[Tensor, Tensor, Tensor] | None = None

    def transposed(self) -> tuple[Tensor, Tensor, Tensor]:
        """(crow_t, col_t, perm_t) of Aᵀ: rows j·K + k hold the outgoing edges of j; perm_t maps Aᵀ's value
        slots to A's. Built on the first call and kept."""
        if self._transposed is None:
            g, k, e = self._graph, self.heads, self._graph.num_edges
            dev = g.src.device
            ar_k = torch.arange(k, device=dev)
            pos = self.slot_positions(g, k)
            src_sorted = g.src[g.order_t]
            start_t = g.rowptr_t[src_sorted]
            pos_t = (start_t * k).unsqueeze(1) + ar_k * g.out_degree[src_sorted].unsqueeze(1)
            pos_t = (pos_t + (torch.arange(e, device=dev) - start_t).unsqueeze(1)).reshape(-1)
            col_t = torch.empty(self.nnz, dtype=torch.long, device=dev)
            col_t[pos_t] = (g.dst[g.order_t].unsqueeze(1) * k + ar_k).reshape(-1)
            perm_t = torch.empty(self.nnz, dtype=torch.long, device=dev)
            perm_t[pos_t] = pos.view(e, k)[g.order_t].reshape(-1)
            del pos, pos_t
            self._transposed = (
                row_pointer(g.out_degree, k).to(self.idx_dtype),
                col_t.to(self.idx_dtype),
                perm_t.to(self.idx_dtype),
            )
        return self._transposed

    @property
    def crow_t(self) -> Tensor:
        return self.transposed()[0]

    @property
    def col_t(self) -> Tensor:
        return self.transposed()[1]

    @property
    def perm_t(self) -> Tensor:
        return self.transposed()[2]

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
        return csr_tensor(self.crow, self.col, values, self.size)

    def matrix_t(self, values: Tensor) -> Tensor:
        """Aᵀ as a sparse CSR tensor, given A's values (reordered here)."""
        crow_t, col_t, perm_t = self.transposed()
        return csr_tensor(crow_t, col_t, values.index_select(0, perm_t), self.size)


class _TransposeInputs:
    """The parts of a :class:`GraphStructure` that building Aᵀ (and slot positions) reads, held without
    a reference back to the structure (which holds the blocks): no reference cycle keeps them alive."""

    def __init__(self, graph: GraphStructure) -> None:
        self.num_edges = graph.num_edges
        self.src, self.dst = graph.src, graph.dst
        self.rowptr, self.in_degree = graph.rowptr, graph.in_degree
        self.rowptr_t, self.out_degree, self.order_t = graph.rowptr_t, graph.out_degree, graph.order_t


def row_pointer(deg: Tensor, k: int) -> Tensor:
    """CSR row pointer of the block matrix whose row i·K + k has deg[i] entries."""
    lengths = deg.repeat_interleave(k)
    crow = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=deg.device)
    torch.cumsum(lengths, 0, out=crow[1:])
    return crow


def to_accumulate_dtype(h: Tensor) -> Tensor:
    """Half-precision projections (autocast) go up to float32 for the softmax and the sparse sums."""
    return h.float() if h.dtype in (torch.float16, torch.bfloat16) else h


def spmm(sparse: Tensor, dense: Tensor) -> Tensor:
    """sparse (CSR) @ dense. On CPU written straight into fresh memory: ``torch.sparse.mm`` zero-fills a
    result and copies MKL's output into it, which costs more than the product itself at 20k cells."""
    if dense.device.type != "cpu":
        return torch.sparse.mm(sparse, dense)
    out = torch.empty(sparse.size(0), dense.size(1), dtype=dense.dtype, device=dense.device)
    return torch.addmm(out, sparse, dense, beta=0.0, out=out)  # beta = 0: out's contents are ignored


def csr_tensor(crow: Tensor, col: Tensor, values: Tensor, size: int) -> Tensor:
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
        self._blocks: dict[int, HeadBlocks] = {}
        self._gcn: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor] | None = None

    def blocks(self, heads: int) -> HeadBlocks:
        """The block structure for ``heads`` heads, built on first use."""
        if heads not in self._blocks:
            self._blocks[heads] = HeadBlocks(self, heads)
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


class SegmentSoftmax(torch.autograd.Function):
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


class BlockAggregate(torch.autograd.Function):
    """out = A(α) @ h (+ b) for the block-diagonal multi-head attention matrix (see the module docstring).

    Backward: dh = Aᵀ @ dout (SpMM on the cached transposed structure) and dα = <dout_row, h_col> at
    A's non-zeros (``torch.sparse.sampled_addmm``, an SDDMM): nothing of size [E, K, H] is formed.
    An optional bias over the concatenated heads ([K·H]) is added in place here, which saves one
    [N, K·H] temporary per layer.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, alpha: Tensor, h2d: Tensor, blocks: HeadBlocks, bias: Tensor | None
    ) -> Tensor:
        with torch.autocast(h2d.device.type, enabled=False):
            out = spmm(blocks.matrix(alpha), h2d)
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
        blocks: HeadBlocks = ctx.blocks
        grad = grad.contiguous()
        d_alpha = d_h = d_bias = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[1]:
                d_h = spmm(blocks.matrix_t(alpha), grad)
            if ctx.needs_input_grad[0]:
                pattern = blocks.matrix(alpha)
                d_alpha = torch.sparse.sampled_addmm(pattern, grad, h2d.t(), beta=0.0).values()
            if ctx.bias_numel is not None and ctx.needs_input_grad[3]:
                d_bias = grad.view(-1, ctx.bias_numel).sum(dim=0)
        return d_alpha, d_h, None, d_bias


class ConstSpMM(torch.autograd.Function):
    """out = S @ x for a constant sparse S given with its transpose (backward: dx = Sᵀ @ dout)."""

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor, s_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.s_t = s_t
        with torch.autocast(x.device.type, enabled=False):
            return spmm(s, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        with torch.autocast(grad.device.type, enabled=False):
            return spmm(ctx.s_t, grad.contiguous()), None, None


class MaskedScale(torch.autograd.Function):
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
    return MaskedScale.apply(x, mask, 1.0 / (1.0 - p))


def gcn_propagate(h: Tensor, edge_index: Tensor) -> Tensor:
    """Â h with Â = D^-½ (A + I) D^-½ (GCN normalisation, self loops added), as a sparse product in
    float32 (backward: Âᵀ @ grad)."""
    n = h.size(0)
    crow, col, vals, crow_t, col_t, vals_t = graph_structure(edge_index, n, True).gcn_operator()
    s = csr_tensor(crow, col, vals.float(), n)
    s_t = csr_tensor(crow_t, col_t, vals_t.float(), n)
    return ConstSpMM.apply(h.float(), s, s_t)


class Propagation:
    """The constant sparse operator Ã of the GCN layers, applied as Ã @ h (backward: Ãᵀ @ grad).

    ``how="sym"`` (the paper's text): Ã = D^-1/2 (W + I) D^-1/2 with D the weighted degrees of W + I.
    ``how="none"`` (the authors' code): Ã = W + I, the kernel with its unit diagonal, unnormalised.
    """

    def __init__(
        self,
        edge_index: np.ndarray,
        weight: np.ndarray | None,
        n: int,
        *,
        how: str = "sym",
        device: Any = "cpu",
    ) -> None:
        if how not in ("sym", "none"):
            raise ConfigError(f"adjacency normalisation must be 'sym' or 'none'; got {how!r}")
        src, dst = np.asarray(edge_index, dtype=np.int64)
        w = np.ones(src.size, dtype=np.float64) if weight is None else np.asarray(weight, dtype=np.float64)
        keep = src != dst
        ids = np.arange(n, dtype=np.int64)
        rows = np.concatenate([dst[keep], ids])  # row = receiving cell
        cols = np.concatenate([src[keep], ids])
        vals = np.concatenate([w[keep], np.ones(n)])
        mat = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        if how == "sym":
            deg = np.asarray(mat.sum(axis=1)).ravel()
            dinv = 1.0 / np.sqrt(deg)
            mat = sp.csr_matrix(sp.diags(dinv) @ mat @ sp.diags(dinv))
        self.how, self.n = how, n
        self.matrix = mat.astype(np.float32)
        self._s = self._torch(self.matrix, device)
        self._s_t = self._torch(sp.csr_matrix(self.matrix.T), device)

    @staticmethod
    def _torch(mat: sp.csr_matrix, device: Any) -> Tensor:
        mat.sort_indices()
        return csr_tensor(
            torch.from_numpy(mat.indptr.astype(np.int64)).to(device),
            torch.from_numpy(mat.indices.astype(np.int64)).to(device),
            torch.from_numpy(mat.data.astype(np.float32)).to(device),
            mat.shape[0],
        )

    def __call__(self, h: Tensor) -> Tensor:
        h = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
        s, s_t = (
            (self._s, self._s_t) if h.dtype == torch.float32 else (self._s.to(h.dtype), self._s_t.to(h.dtype))
        )
        return ConstSpMM.apply(h.contiguous(), s, s_t)
