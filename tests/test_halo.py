"""Reading a graph encoder group by group on each group's L-hop neighbourhood gives the full pass's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scgraph_core.models.cellvgae.model import CellVGAE
from scgraph_core.models.cellvgae.module import CellVGAENet
from scgraph_core.nn.halo import IncomingEdges, cores, halo_groups, self_loop_order
from scgraph_core.nn.partition import kmeans_parts


def _graph(n: int = 400, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 40, n))  # cells along a curve: a kNN graph with local neighbourhoods
    x = np.stack([np.cos(t / 7 + j) * (j + 1) + t * (j % 3) for j in range(12)], axis=1)
    x = (x + rng.normal(0, 0.05, x.shape)).astype(np.float32)
    x = x[rng.permutation(n)]
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nbr = np.argsort(d, axis=1)[:, :k]
    src, dst = nbr.ravel(), np.repeat(np.arange(n), k)  # edges into each cell from its neighbours
    ei = np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])])
    ei = np.unique(ei, axis=1)
    return x, ei[:, rng.permutation(ei.shape[1])]  # an order that is neither by source nor by target


def test_halo_holds_every_cell_within_the_hops_and_the_core_first():
    x, ei = _graph()
    n = x.shape[0]
    core = np.arange(0, n, 37)
    g = IncomingEdges(ei, n).group(core, hops=2)
    assert (g.nodes[: core.size] == core).all() and np.unique(g.nodes).size == g.nodes.size
    # breadth-first search by hand: sources of edges into the core, then into those
    into = {i: set(ei[0, ei[1] == i]) for i in range(n)}
    one = set().union(*(into[c] for c in core)) | set(core)
    two = one.union(*(into[c] for c in one))
    assert set(g.nodes) == two
    # the subgraph's edges: every input edge between its nodes, with the right global id
    glob = g.nodes[g.edge_index]
    assert (glob == ei[:, g.edge_ids]).all()
    inside = np.isin(ei[0], g.nodes) & np.isin(ei[1], g.nodes)
    assert set(g.edge_ids) == set(np.flatnonzero(inside))


def test_cores_are_whole_parts_within_the_size_and_cover_every_cell_once():
    parts = np.array([0, 2, 1, 1, 2, 0, 3, 3, 3, 0, 1, 2])
    out = cores(parts, max_cells=6)
    assert sorted(np.concatenate(out).tolist()) == list(range(parts.size))
    assert all(c.size <= 6 for c in out)
    for c in out:  # each part lies wholly in one core
        for p in np.unique(parts[c]):
            assert set(np.flatnonzero(parts == p)) <= set(c)
    assert len(cores(parts, max_cells=2)) == 4  # a part above the size is a core of its own


def test_self_loop_order_drops_input_loops():
    ei = np.array([[0, 1, 2, 2], [1, 1, 0, 2]])
    assert self_loop_order(ei).tolist() == [0, -1, 1, -1]


@pytest.mark.parametrize("conv", ["gat", "gatv2", "gcn"])
def test_group_by_group_read_out_equals_one_pass(conv):
    torch.manual_seed(0)
    x, ei = _graph()
    n = x.shape[0]
    heads = (3, 2, 2, 2) if conv != "gcn" else (1, 1, 1, 1)
    net = CellVGAENet(12, conv=conv, hidden=(16, 8), heads=heads, latent=5).eval()
    xt, eit = torch.from_numpy(x), torch.from_numpy(ei)
    model = CellVGAE()
    model._groups = cores(kmeans_parts(x, 8, seed=0), max_cells=120)
    assert len(model._groups) >= 3
    sizes = [g.nodes.size for g in halo_groups(ei, n, model._groups, net.receptive_hops())]
    assert max(sizes) < n  # the neighbourhoods really are parts of the graph
    with torch.no_grad():
        mu, s = net.encode(xt, eit)
    for attention in (False, conv != "gcn"):
        mu_g, s_g, grouped = model._read_groups(net, xt, eit, attention)
        torch.testing.assert_close(mu_g, mu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s_g, s, rtol=1e-5, atol=1e-5)
    if conv == "gcn":
        assert grouped is None
        return
    full = net.attention(xt, eit)
    assert full.keys() == grouped.keys()
    for name, (ei_f, a_f) in full.items():
        ei_g, a_g = grouped[name]
        assert (ei_g == ei_f).all()
        np.testing.assert_allclose(a_g, a_f, rtol=1e-5, atol=1e-6)
