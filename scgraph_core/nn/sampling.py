"""Sampled neighbourhoods for mini-batch training of graph encoders (``batch_size`` in CellVGAE).

A graph encoder with L message-passing layers needs, for a batch of cells, their L-hop neighbourhood.
:class:`NeighbourSampler` draws it hop by hop from a CSR index of each cell's incoming edges, keeping
at most ``fanout`` incoming edges per cell and hop (all of them when a cell has fewer): the batch's
memory then depends on the batch size and the fanouts, not on the number of cells. This is the scheme
of GraphSAGE-style neighbour sampling (PyTorch Geometric's ``NeighborLoader`` needs the compiled
``pyg-lib`` or ``torch-sparse``, which have no wheels for every platform; this one is numpy only).

The returned subgraph lists its nodes with the seeds first (in the order of their first appearance),
and its edges in local numbering, source -> target, as the encoder's layers read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Subgraph:
    nodes: np.ndarray  # global ids of the subgraph's nodes; the first ``n_seeds`` are the seeds
    edge_index: np.ndarray  # [2, E'] local ids, source -> target
    seed_local: np.ndarray  # for each seed passed in (duplicates allowed), its local id
    n_seeds: int  # distinct seeds


class NeighbourSampler:
    """Draws L-hop subgraphs around seed nodes of a fixed graph.

    Args:
        edge_index: [2, E] edges source -> target (both directions listed for an undirected graph).
        num_nodes: N.
        fanouts: incoming edges kept per node at each hop, outermost layer last (one per layer of the
            encoder); a value < 0 keeps every incoming edge.
    """

    def __init__(self, edge_index: np.ndarray, num_nodes: int, fanouts: Sequence[int]) -> None:
        src = np.asarray(edge_index[0], dtype=np.int64)
        dst = np.asarray(edge_index[1], dtype=np.int64)
        order = np.argsort(dst, kind="stable")
        self.sources = src[order]
        self.indptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(dst, minlength=num_nodes), out=self.indptr[1:])
        self.num_nodes = int(num_nodes)
        self.fanouts = [int(f) for f in fanouts]
        self._local = np.full(num_nodes, -1, dtype=np.int64)  # global -> local id, reset after each draw

    def sample(self, seeds: np.ndarray, rng: np.random.Generator) -> Subgraph:
        seeds = np.asarray(seeds, dtype=np.int64)
        unique_seeds, first = np.unique(seeds, return_index=True)
        ordered = unique_seeds[np.argsort(first)]  # distinct seeds in order of first appearance
        local = self._local
        local[ordered] = np.arange(ordered.size)
        nodes = [ordered]
        n_nodes = ordered.size
        frontier = ordered
        src_parts: list[np.ndarray] = []
        dst_parts: list[np.ndarray] = []
        try:
            for fanout in self.fanouts:
                if frontier.size == 0:
                    break
                starts = self.indptr[frontier]
                degrees = self.indptr[frontier + 1] - starts
                total = int(degrees.sum())
                if total == 0:
                    break
                owner = np.repeat(np.arange(frontier.size), degrees)
                offsets = np.arange(total) - np.repeat(np.cumsum(degrees) - degrees, degrees)
                position = np.repeat(starts, degrees) + offsets
                if fanout >= 0 and (degrees > fanout).any():
                    # A random order within each node's edges, then its first ``fanout`` of them.
                    order = np.lexsort((rng.random(total), owner))
                    keep = offsets < fanout  # offsets are the ranks within each owner after sorting
                    position, owner = position[order][keep], owner[order][keep]
                sources = self.sources[position]
                targets = frontier[owner]
                new = np.unique(sources[local[sources] < 0])
                local[new] = n_nodes + np.arange(new.size)
                n_nodes += new.size
                nodes.append(new)
                src_parts.append(local[sources])
                dst_parts.append(local[targets])
                frontier = new
            all_nodes = np.concatenate(nodes)
            if src_parts:
                edges = np.stack([np.concatenate(src_parts), np.concatenate(dst_parts)])
            else:
                edges = np.zeros((2, 0), dtype=np.int64)
            seed_local = local[seeds]
        finally:
            local[np.concatenate(nodes)] = -1
        return Subgraph(all_nodes, edges, seed_local, int(ordered.size))
