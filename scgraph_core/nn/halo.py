"""Reading a trained graph encoder part by part, with the same numbers as one pass over the whole graph.

After mini-batch training (:mod:`scgraph_core.nn.partition`) the embedding and the attention of every cell are
still needed. One full-graph pass holds every layer's activations for every cell at once (at 1,000,000 cells the
paper preset's 1,280-wide hidden layer alone is 5 GB). Here the cells can be read in groups ("cores") instead: an
encoder of L message-passing layers gives a cell an output that depends only on the cells within L hops along
incoming edges, so each core is run on the subgraph induced by itself and its L-hop halo, and only the core's
outputs are kept. Halo cells near the edge of the
subgraph miss some of their own neighbours and get wrong values, but a wrong value travels one hop per layer and
never reaches the core: the core's outputs, and the attention on every edge into a core cell, are exactly those
of the full pass. Every edge points into exactly one cell, so the attention of the whole graph is put back
together edge by edge, in the order the full pass reports it.

Memory per group is (core + halo) x layer width, so this pays only where the halos are much smaller than the
graph: cores made of neighbouring parts help, but on a kNN graph three hops spread far (at 100,000 cells, cores of
20,000 had halos of nearly the whole graph, and reading by groups took more memory than one pass; benchmarks/NOTES.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class HaloGroup:
    """One core and the subgraph it is read on. ``nodes`` starts with the core (local ids 0..len(core)-1);
    ``edge_index`` ([2, e], local ids) are the edges among ``nodes`` that point into a node, and ``edge_ids``
    their column in the input edge_index."""

    core: np.ndarray
    nodes: np.ndarray
    edge_index: np.ndarray
    edge_ids: np.ndarray


class IncomingEdges:
    """The edges into each node (CSR by target), for halo searches. ``edge_index`` is [2, E] (source, target)."""

    def __init__(self, edge_index: np.ndarray, n_nodes: int) -> None:
        ei = np.asarray(edge_index, dtype=np.int64)
        self.n = int(n_nodes)
        self.order = np.argsort(ei[1], kind="stable")  # edge ids sorted by target
        self.src = ei[0, self.order]
        counts = np.bincount(ei[1], minlength=self.n)
        self.indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])

    def positions(self, nodes: np.ndarray) -> np.ndarray:
        """Positions (in target order) of every edge into ``nodes``."""
        starts, ends = self.indptr[nodes], self.indptr[nodes + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64)
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        return np.arange(total, dtype=np.int64) + offsets

    def group(self, core: np.ndarray, hops: int) -> HaloGroup:
        core = np.asarray(core, dtype=np.int64)
        seen = np.zeros(self.n, dtype=bool)
        seen[core] = True
        frontier, ring = core, []
        for _ in range(hops):
            sources = self.src[self.positions(frontier)]
            new = np.unique(sources[~seen[sources]])
            if new.size == 0:
                break
            seen[new] = True
            ring.append(new)
            frontier = new
        nodes = np.concatenate([core, *ring]) if ring else core
        local = np.full(self.n, -1, dtype=np.int64)
        local[nodes] = np.arange(nodes.size)
        pos = self.positions(nodes)
        src = self.src[pos]
        inside = seen[src]
        pos, src = pos[inside], src[inside]
        ids = self.order[pos]
        # targets: the node each position belongs to
        lens = self.indptr[nodes + 1] - self.indptr[nodes]
        dst = np.repeat(nodes, lens)[inside]
        return HaloGroup(core, nodes, np.stack([local[src], local[dst]]), ids)


def cores(parts: np.ndarray, max_cells: int) -> list[np.ndarray]:
    """Whole parts put together, in part order, into cores of at most ``max_cells`` cells (a part larger than
    that is a core of its own)."""
    parts = np.asarray(parts, dtype=np.int64)
    order = np.argsort(parts, kind="stable")
    sizes = np.bincount(parts)
    out, start, count = [], 0, 0
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for p in range(sizes.size):
        if count and count + sizes[p] > max_cells:
            out.append(order[bounds[start] : bounds[p]])
            start, count = p, 0
        count += sizes[p]
    if count:
        out.append(order[bounds[start] :])
    return [np.sort(c) for c in out if c.size]


def halo_groups(
    edge_index: np.ndarray, n_nodes: int, groups: list[np.ndarray], hops: int
) -> Iterator[HaloGroup]:
    """The :class:`HaloGroup` of each core in ``groups`` (cores must not overlap)."""
    incoming = IncomingEdges(edge_index, n_nodes)
    for core in groups:
        yield incoming.group(core, hops)


def self_loop_order(edge_index: np.ndarray) -> np.ndarray:
    """Column of each input edge in the attention a layer reports: self loops are dropped and one loop per node
    appended (:class:`scgraph_core.nn.sparse.GraphStructure`), so input edge e sits at its rank among the
    non-loop edges, and -1 marks an input self loop."""
    ei = np.asarray(edge_index)
    keep = ei[0] != ei[1]
    where = np.full(ei.shape[1], -1, dtype=np.int64)
    where[keep] = np.arange(int(keep.sum()))
    return where
