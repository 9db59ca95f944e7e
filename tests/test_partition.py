"""Partition batches (Cluster-GCN-style) for mini-batch training: parts, induced subgraphs, bounded size."""

from __future__ import annotations

import numpy as np
import pytest

from scgraph_core.errors import ConfigError
from scgraph_core.nn.partition import PartitionBatches, kmeans_parts


def _blobs(n_per: int = 150, n_blobs: int = 4, dim: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (n_blobs, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(n_blobs), n_per)
    return x, truth


def _knn_edges(x: np.ndarray, k: int = 5) -> np.ndarray:
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nbr = np.argsort(d, axis=1)[:, :k]
    src = np.repeat(np.arange(x.shape[0]), k)
    dst = nbr.ravel()
    return np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])])


def test_kmeans_parts_follow_the_data():
    x, truth = _blobs()
    parts = kmeans_parts(x, 4, seed=0)
    assert parts.shape == (600,) and 4 <= parts.max() + 1 <= 6
    # well separated blobs: each part lies within one blob
    for p in range(parts.max() + 1):
        assert len(set(truth[parts == p])) == 1
    assert (kmeans_parts(x, 4, seed=0) == parts).all()  # seeded


def test_kmeans_parts_are_numbered_without_gaps_and_refuses_impossible_counts():
    x, _ = _blobs(n_per=10, n_blobs=2)
    parts = kmeans_parts(x, 15, seed=3)  # more parts than natural groups
    assert parts.max() + 1 >= 15 and np.bincount(parts).min() >= 1
    with pytest.raises(ConfigError, match="parts"):
        kmeans_parts(x, 21, seed=0)


def test_a_batch_is_the_subgraph_induced_by_its_parts():
    x, _ = _blobs()
    edges = _knn_edges(x)
    parts = kmeans_parts(x, 12, seed=0)
    pos = edges[:, edges[0] < edges[1]]
    batches = PartitionBatches(parts, edges, pos)
    assert 0.5 < batches.within_share <= 1.0
    chosen = np.array([3, 7])
    b = batches.batch(chosen)
    assert set(parts[b.cells]) == {3, 7}
    assert len(b.cells) == int(np.isin(parts, chosen).sum())
    # every message edge among the batch's cells, none leaving it, in local ids
    inside = np.isin(edges, b.cells).all(axis=0)
    want = {tuple(e) for e in edges[:, inside].T}
    got = {tuple(e) for e in b.cells[b.edge_index].T}
    assert got == want
    want_pos = {tuple(e) for e in pos[:, np.isin(pos, b.cells).all(axis=0)].T}
    assert {tuple(e) for e in b.cells[b.pos].T} == want_pos
    # the scratch maps are reset: a second batch is not polluted by the first
    b2 = batches.batch(np.array([0]))
    assert set(parts[b2.cells]) == {0} and (b2.edge_index < len(b2.cells)).all()


def test_batch_size_does_not_grow_with_the_cells():
    """The point of partition batches: with parts of a fixed size, a batch's cells stay the same as N grows."""
    sizes = []
    for n_blobs in (4, 16):
        x, _ = _blobs(n_per=100, n_blobs=n_blobs, seed=n_blobs)
        edges = _knn_edges(x)
        parts = kmeans_parts(x, n_blobs * 2, seed=0)  # about 50 cells per part
        assert np.bincount(parts).max() <= 75  # k-means alone may give a whole blob of 100 to one part
        batches = PartitionBatches(parts, edges, edges)
        sizes.append(max(len(batches.batch(np.array([a, a + 1])).cells) for a in range(parts.max())))
    assert max(sizes) <= 150


def test_a_halo_adds_every_neighbour_and_a_pass_trains_every_edge_once():
    x, _ = _blobs()
    edges = _knn_edges(x)
    parts = kmeans_parts(x, 12, seed=0)
    pos = edges[:, edges[0] < edges[1]]
    pos = np.unique(pos, axis=1)
    batches = PartitionBatches(parts, edges, pos, halo=1)
    chosen = np.array([3, 7])
    b = batches.batch(chosen)
    own = np.flatnonzero(np.isin(parts, chosen))
    assert b.n_own == own.size and set(b.cells[: b.n_own]) == set(own)
    # the halo: every cell with an edge into an own cell, and nothing else
    sources = set(edges[0, np.isin(edges[1], own)]) - set(own)
    assert set(b.cells[b.n_own :]) == sources
    # message edges: all those among the batch's cells (own and halo), local ids
    inside = np.isin(edges, b.cells).all(axis=0)
    assert {tuple(e) for e in b.cells[b.edge_index].T} == {tuple(e) for e in edges[:, inside].T}
    # positives: the training edges whose source is an own cell, whichever part their target is in
    assert {tuple(e) for e in b.cells[b.pos].T} == {tuple(e) for e in pos[:, np.isin(pos[0], own)].T}
    assert not np.isin(pos[:, np.isin(pos[0], own)], own).all()  # some cross into other parts
    # one pass over the parts trains each training edge exactly once
    seen = []
    for part in range(batches.n_parts):
        bb = batches.batch(np.array([part]))
        seen += [tuple(e) for e in bb.cells[bb.pos].T]
    assert sorted(seen) == sorted(tuple(e) for e in pos.T)
    # without a halo, the edges leaving the chosen parts are missing
    plain = PartitionBatches(parts, edges, pos).batch(chosen)
    assert plain.n_own == plain.cells.size and plain.pos.shape[1] < b.pos.shape[1]
