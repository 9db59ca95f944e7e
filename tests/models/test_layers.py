"""Tests of the lean graph layers against PyTorch Geometric and against their own invariants."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv

from scgraph_core.nn.layers import (
    FusedGATLayer,
    GATLayer,
    GATv2Layer,
    GCNLayer,
    clear_graph_cache,
    graph_structure,
)

TOL = dict(rtol=1e-5, atol=1e-5)


def random_graph(n: int = 40, e: int = 160, seed: int = 0) -> torch.Tensor:
    """Random directed edges with a few self loops and duplicates, as real inputs can have."""
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=gen)
    ei[:, :3] = torch.tensor([[0, 1, 2], [0, 1, 2]])  # existing self loops: replaced, as PyG does
    ei[:, 3] = ei[:, 4]  # a duplicated edge is kept twice, as PyG does
    return ei


def copy_from_pyg(ref: GATConv, layer: GATLayer) -> None:
    with torch.no_grad():
        layer.weight.copy_(ref.lin.weight)
        layer.att_src.copy_(ref.att_src[0])
        layer.att_dst.copy_(ref.att_dst[0])
        ref.bias.normal_()  # a non-zero bias, so its handling is tested too
        layer.bias_vector.copy_(ref.bias)


@pytest.mark.parametrize("concat", [True, False])
def test_gat_equals_pyg_outputs_attention_and_gradients(concat: bool) -> None:
    torch.manual_seed(0)
    n, d = 40, 12
    ei = random_graph(n)
    ref = GATConv(d, 5, heads=3, concat=concat, dropout=0.3).eval()
    layer = GATLayer(d, 5, heads=3, concat=concat, attn_dropout=0.3).eval()
    copy_from_pyg(ref, layer)
    x_ref = torch.randn(n, d, requires_grad=True)
    x = x_ref.detach().clone().requires_grad_()

    out_ref, (ei_ref, a_ref) = ref(x_ref, ei, return_attention_weights=True)
    out, (ei_out, a_out) = layer(x, ei, return_attention=True)
    torch.testing.assert_close(out, out_ref, **TOL)
    assert torch.equal(ei_out, ei_ref)
    torch.testing.assert_close(a_out, a_ref, **TOL)

    grad = torch.randn_like(out_ref)
    ref_params = [x_ref, ref.lin.weight, ref.att_src, ref.att_dst, ref.bias]
    params = [x, layer.weight, layer.att_src, layer.att_dst, layer.bias_vector]
    g_ref = torch.autograd.grad(out_ref, ref_params, grad)
    g = torch.autograd.grad(out, params, grad)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b.reshape(a.shape), **TOL)


def test_gat_without_self_loops_equals_pyg() -> None:
    torch.manual_seed(1)
    n, d = 30, 6
    ei = random_graph(n, 50)
    ei = ei[:, ei[0] != ei[1]]  # some nodes now have no incoming edge at all
    ref = GATConv(d, 4, heads=2, add_self_loops=False).eval()
    layer = GATLayer(d, 4, heads=2, add_self_loops=False).eval()
    copy_from_pyg(ref, layer)
    x = torch.randn(n, d)
    torch.testing.assert_close(layer(x, ei), ref(x, ei), **TOL)


def test_attention_sums_to_one_and_has_one_self_loop_per_node() -> None:
    torch.manual_seed(2)
    n = 50
    ei = random_graph(n, 300)
    layer = GATLayer(8, 4, heads=4, attn_dropout=0.5).eval()
    _, (ei_full, alpha) = layer(torch.randn(n, 8), ei, return_attention=True)
    assert alpha.shape == (ei_full.size(1), 4)
    assert ei_full.size(1) == int((ei[0] != ei[1]).sum()) + n
    loops = ei_full[:, ei_full[0] == ei_full[1]]
    assert torch.equal(torch.sort(loops[0]).values, torch.arange(n))
    sums = torch.zeros(n, 4).index_add_(0, ei_full[1], alpha)
    torch.testing.assert_close(sums, torch.ones(n, 4), rtol=0, atol=1e-5)


def test_attention_dropout_only_in_training() -> None:
    torch.manual_seed(3)
    n = 60
    ei = random_graph(n, 400)
    x = torch.randn(n, 8)
    layer = GATLayer(8, 4, heads=3, attn_dropout=0.5)
    no_drop = GATLayer(8, 4, heads=3, attn_dropout=0.0)
    no_drop.load_state_dict(layer.state_dict())
    layer.eval()
    torch.testing.assert_close(layer(x, ei), no_drop.eval()(x, ei))
    torch.testing.assert_close(layer(x, ei), layer(x, ei))
    layer.train()
    out1, (_, alpha) = layer(x, ei, return_attention=True)
    out2 = layer(x, ei)
    assert not torch.allclose(out1, out2)
    # The reported α is the softmax before dropout, so it still sums to 1 in training mode.
    sums = torch.zeros(n, 3).index_add_(0, layer(x, ei, return_attention=True)[1][0][1], alpha)
    torch.testing.assert_close(sums, torch.ones(n, 3), rtol=0, atol=1e-5)


def test_fused_layer_equals_separate_layers() -> None:
    torch.manual_seed(4)
    n, d, h = 45, 16, 6
    ei = random_graph(n, 200)
    fused = FusedGATLayer(d, h, heads=(3, 2), concat=False, attn_dropout=(0.2, 0.2)).eval()
    with torch.no_grad():
        for b in fused.bias:
            b.normal_()
    sep = [GATLayer(d, h, heads=k, concat=False).eval() for k in (3, 2)]
    with torch.no_grad():
        for b, (layer, rows) in enumerate(zip(sep, ((0, 3), (3, 5)), strict=True)):
            layer.weight.copy_(fused.branch_weight(b))
            layer.att_src.copy_(fused.att_src[rows[0] : rows[1]])
            layer.att_dst.copy_(fused.att_dst[rows[0] : rows[1]])
            layer.bias_vector.copy_(fused.bias[b])
    assert fused.branch_weight(0).shape == (3 * h, d) and fused.branch_weight(1).shape == (2 * h, d)
    x = torch.randn(n, d)
    (mu, s), att = fused(x, ei, return_attention=True)
    torch.testing.assert_close(mu, sep[0](x, ei), **TOL)
    torch.testing.assert_close(s, sep[1](x, ei), **TOL)
    torch.testing.assert_close(att[1][1], sep[1](x, ei, return_attention=True)[1][1], **TOL)
    (mu.sum() + (s * s).sum()).backward()
    sep_loss = sep[0](x, ei).sum() + (sep[1](x, ei) ** 2).sum()
    sep_loss.backward()
    torch.testing.assert_close(fused.weight.grad, torch.cat([sep[0].weight.grad, sep[1].weight.grad]), **TOL)


def test_fused_layer_with_different_dropout_per_branch_trains() -> None:
    torch.manual_seed(5)
    fused = FusedGATLayer(8, 4, heads=(2, 3), concat=(True, False), attn_dropout=(0.0, 0.9)).train()
    ei = random_graph(30, 100)
    a, b = fused(torch.randn(30, 8), ei)
    assert a.shape == (30, 8) and b.shape == (30, 4)
    (a.sum() + b.sum()).backward()
    assert fused.weight.grad is not None and torch.isfinite(fused.weight.grad).all()


def test_bf16_autocast_stays_close_to_float32() -> None:
    torch.manual_seed(6)
    n, d = 300, 64
    ei = random_graph(n, 2400)
    layer = GATLayer(d, 32, heads=4, concat=True).eval()
    x = torch.rand(n, d)
    ref = layer(x, ei)
    ref.square().sum().backward()
    g_ref = layer.weight.grad.clone()
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, ei)
    assert out.dtype == torch.float32  # softmax and aggregation stay in float32
    out.square().sum().backward()
    assert _rel(out, ref) < 1e-2
    assert _rel(layer.weight.grad, g_ref) < 5e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_gcn_equals_pyg() -> None:
    torch.manual_seed(7)
    n, d = 40, 10
    ei = random_graph(n)
    ref = GCNConv(d, 6)
    layer = GCNLayer(d, 6)
    with torch.no_grad():
        layer.weight.copy_(ref.lin.weight)
        ref.bias.normal_()
        layer.bias.copy_(ref.bias)
    x_ref = torch.randn(n, d, requires_grad=True)
    x = x_ref.detach().clone().requires_grad_()
    out_ref, out = ref(x_ref, ei), layer(x, ei)
    torch.testing.assert_close(out, out_ref, **TOL)
    grad = torch.randn_like(out)
    g_ref = torch.autograd.grad(out_ref, [x_ref, ref.lin.weight, ref.bias], grad)
    g = torch.autograd.grad(out, [x, layer.weight, layer.bias], grad)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_gatv2_exposes_source_side_weight_and_attention() -> None:
    torch.manual_seed(8)
    layer = GATv2Layer(8, 4, heads=2).eval()
    assert layer.weight is layer.conv.lin_l.weight
    ei = random_graph(25, 80)
    out, (ei_full, alpha) = layer(torch.randn(25, 8), ei, return_attention=True)
    assert out.shape == (25, 8)
    sums = torch.zeros(25, 2).index_add_(0, ei_full[1], alpha)
    torch.testing.assert_close(sums, torch.ones(25, 2), rtol=0, atol=1e-5)


def test_graph_cache_reuses_structure_and_sees_in_place_edits() -> None:
    clear_graph_cache()
    ei = random_graph(20, 60)
    first = graph_structure(ei, 20)
    assert graph_structure(ei, 20) is first
    assert graph_structure(ei.clone(), 20) is not first
    ei[0, 10] = (ei[0, 10] + 1) % 20  # in-place edit bumps the version counter
    assert graph_structure(ei, 20) is not first


def test_transposed_blocks_are_built_by_the_first_backward_only() -> None:
    """A read-out without gradients never builds Aᵀ; training builds it once and gets the same gradients."""
    clear_graph_cache()
    ei = random_graph(30, 120, seed=3)
    torch.manual_seed(0)
    layer = GATLayer(6, 4, heads=3, concat=True)
    x = torch.randn(30, 6)
    with torch.no_grad():
        layer(x, ei)
    blocks = graph_structure(ei, 30).blocks(3)
    assert blocks._transposed is None
    x1 = x.clone().requires_grad_(True)
    layer(x1, ei).square().sum().backward()
    assert blocks._transposed is not None
    crow_t, col_t, perm_t = blocks.transposed()
    assert int(crow_t[-1]) == blocks.nnz == col_t.numel()
    assert sorted(perm_t.tolist()) == list(range(blocks.nnz))
    # The same gradient as from a structure built fresh (cache cleared).
    clear_graph_cache()
    x2 = x.clone().requires_grad_(True)
    layer(x2, ei.clone()).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gat_on_cuda_equals_cpu() -> None:
    torch.manual_seed(9)
    ei = random_graph(50, 300)
    layer = GATLayer(8, 4, heads=3).eval()
    x = torch.randn(50, 8)
    ref = layer(x, ei)
    out = layer.cuda()(x.cuda(), ei.cuda())
    torch.testing.assert_close(out.cpu(), ref, **TOL)
