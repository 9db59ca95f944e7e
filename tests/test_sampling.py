"""Neighbour sampling for mini-batch training: the subgraph holds what the encoder's layers need."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from scgraph_core.nn.sampling import NeighbourSampler


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    n = 600
    src, dst = rng.integers(0, n, 4000), rng.integers(0, n, 4000)
    return np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]), n


def _global_edges(sub):
    return sub.nodes[sub.edge_index]


def test_all_neighbours_when_the_fanout_is_unlimited(graph):
    edges, n = graph
    sampler = NeighbourSampler(edges, n, [-1, -1])
    seeds = np.array([5, 7, 5, 9])
    sub = sampler.sample(seeds, np.random.default_rng(1))
    assert list(sub.nodes[:3]) == [5, 7, 9] and sub.n_seeds == 3  # distinct seeds first, in order
    assert list(sub.seed_local) == [0, 1, 0, 2]
    got = _global_edges(sub)
    existing = set(zip(edges[0].tolist(), edges[1].tolist(), strict=True))
    assert all(pair in existing for pair in zip(got[0].tolist(), got[1].tolist(), strict=True))
    for seed in (5, 7, 9):  # every incoming edge of a seed, once per listing in the graph
        assert sorted(got[0][got[1] == seed]) == sorted(edges[0][edges[1] == seed])
    # Two hops: each seed's neighbours have their own incoming edges too.
    first_hop = set(got[0][np.isin(got[1], [5, 7, 9])].tolist()) - {5, 7, 9}
    some = next(iter(first_hop))
    assert sorted(got[0][got[1] == some]) == sorted(edges[0][edges[1] == some])
    # Nothing beyond two hops: a node with in-edges in the subgraph is a seed or a first-hop neighbour.
    assert set(got[1].tolist()) <= first_hop | {5, 7, 9}


def test_the_fanout_caps_each_nodes_incoming_edges(graph):
    edges, n = graph
    sampler = NeighbourSampler(edges, n, [3, 2, 4])
    sub = sampler.sample(np.arange(20), np.random.default_rng(2))
    counts = collections.Counter(_global_edges(sub)[1].tolist())
    assert max(counts.values()) <= 4 and all(counts[s] == 3 for s in range(20))
    assert len(set(sub.nodes.tolist())) == sub.nodes.size  # no node twice
    again = sampler.sample(np.arange(20), np.random.default_rng(2))
    np.testing.assert_array_equal(again.nodes, sub.nodes)  # the same draw from the same seed
    other = sampler.sample(np.arange(20), np.random.default_rng(3))
    assert not np.array_equal(other.edge_index, sub.edge_index)
    # The scratch map is reset: a second sample sees a clean state.
    assert (sampler._local == -1).all()
