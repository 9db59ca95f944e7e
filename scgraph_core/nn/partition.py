"""Partition batches for mini-batch training of graph encoders (CellVGAE ``batch_mode = parts``).

Neighbour sampling (:mod:`scgraph_core.nn.sampling`) gives each batch its cells' L-hop neighbourhoods; on a kNN
graph three hops from a few thousand cells reach most of the graph, so a step costs nearly a full-batch step and
memory grows with the cells. Partition batches, the scheme of Cluster-GCN (Chiang et al., KDD 2019), cut the cells
into many small parts once, and each step trains on the subgraph induced by a few randomly chosen parts: the
encoder sees only edges between the batch's own cells, so a step's cost depends on the parts' size alone.

Cluster-GCN partitions the graph with METIS; here the parts are k-means clusters of the cells (faiss) on the top
principal components of the features the graph was built from, which keeps most kNN edges inside a part (the
share is reported: edges cut are never seen in training). Choosing several parts per step, as Cluster-GCN does,
puts back the edges between the chosen parts and keeps the batches from being one cell type each. A halo
(``halo`` hops) adds every neighbour of the batch's cells as context: the edges leaving the batch are then trained
too (each once a pass) and a cell's messages come from all its neighbours, at the cost of the halo's cells in
every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .halo import IncomingEdges


def kmeans_parts(features: np.ndarray, n_parts: int, *, seed: int, dims: int = 32) -> np.ndarray:
    """A part id per row: k-means (faiss, 10 iterations) on the top ``dims`` principal components, balanced.

    The components are fitted on at most 50,000 rows and the centroids on at most 64 rows per part, so the
    cost is linear in the rows. k-means parts can be very unequal (a whole cell type in one part), so a part
    of more than 1.5 x n / ``n_parts`` rows is cut, along its own first principal direction, into pieces of
    about n / ``n_parts``: a batch's size is then bounded whatever the data. The ids are 0..P-1 with P >=
    ``n_parts`` (P grows by the cuts); every part is non-empty."""
    import faiss

    x = np.asarray(features, dtype=np.float32)
    n = x.shape[0]
    if not 1 <= n_parts <= n:
        raise ConfigError(f"Cannot cut {n:,} cells into {n_parts:,} parts.")
    if n_parts == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit_rows = rng.choice(n, size=min(n, 50_000), replace=False)
    sample = x[fit_rows]
    mean = sample.mean(axis=0)
    d = int(min(dims, x.shape[1], len(fit_rows)))
    basis = _top_directions(sample - mean, d)
    reduced = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        reduced[start : start + 100_000] = (x[start : start + 100_000] - mean) @ basis
    km = faiss.Kmeans(
        d,
        n_parts,
        niter=10,
        seed=int(seed) % (2**31),
        max_points_per_centroid=64,
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(reduced[rng.permutation(n)[: 64 * n_parts]])
    _, assign = km.index.search(reduced, 1)
    parts = assign[:, 0].astype(np.int64)
    target = -(-n // n_parts)
    cap = int(np.ceil(1.5 * n / n_parts))
    counts = np.bincount(parts, minlength=n_parts)
    next_id = n_parts
    for part in np.flatnonzero(counts > cap):
        rows = np.flatnonzero(parts == part)
        sub = reduced[rows] - reduced[rows].mean(axis=0)
        direction = _top_directions(sub[: min(len(rows), 5000)], 1)[:, 0]
        ordered = rows[np.argsort(sub @ direction, kind="stable")]
        pieces = np.array_split(ordered, -(-len(rows) // target))
        for piece in pieces[1:]:
            parts[piece] = next_id
            next_id += 1
    # Number the non-empty parts 0..P-1 (k-means can leave a centroid without rows).
    _, parts = np.unique(parts, return_inverse=True)
    return parts.astype(np.int64)


def _top_directions(centred: np.ndarray, d: int) -> np.ndarray:
    """The ``d`` leading principal directions (columns) of centred rows, from the features x features
    covariance (a small symmetric eigenproblem instead of an SVD of the rows)."""
    c = np.asarray(centred, dtype=np.float64)
    _, vectors = np.linalg.eigh(c.T @ c)
    return np.ascontiguousarray(vectors[:, ::-1][:, :d], dtype=np.float32)


@dataclass
class PartBatch:
    cells: np.ndarray  # global ids of the batch's cells, its own cells first, then its halo
    edge_index: np.ndarray  # [2, E'] message edges among them, local ids, source -> target
    pos: np.ndarray  # [2, P'] training edges from an own cell (local ids)
    n_own: int = -1  # the batch's own cells (the chosen parts): cells[:n_own]; -1 = all of cells

    def __post_init__(self) -> None:
        if self.n_own < 0:
            self.n_own = int(self.cells.size)


class _EdgesByPart:
    """Edges grouped by the part of their source, so a batch gathers only its parts' edges."""

    def __init__(self, edges: np.ndarray, parts: np.ndarray, n_parts: int) -> None:
        src_part = parts[edges[0]]
        order = np.argsort(src_part, kind="stable")
        self.edges = np.ascontiguousarray(edges[:, order])
        self.indptr = np.zeros(n_parts + 1, dtype=np.int64)
        np.cumsum(np.bincount(src_part, minlength=n_parts), out=self.indptr[1:])

    def of(self, chosen: np.ndarray) -> np.ndarray:
        """The edges whose source is in a chosen part (global ids)."""
        idx = np.concatenate([np.arange(self.indptr[c], self.indptr[c + 1]) for c in chosen])
        return self.edges[:, idx]

    def among(self, chosen: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """The edges whose source is in a chosen part and whose target is in the batch (global ids)."""
        e = self.of(chosen)
        return e[:, inside[e[1]]]


class PartitionBatches:
    """Induced subgraphs of a few parts at a time.

    Args:
        parts: the part of each cell (see :func:`kmeans_parts`).
        message: [2, E] the edges the encoder passes messages along (both directions of an undirected graph).
        train_pos: [2, P] the positive training edges.
        halo: hops of neighbours (along ``message``) added around a batch's own cells. 0: the subgraph induced by
            the chosen parts, positives the training edges among them. h > 0: the subgraph induced by the own
            cells and every cell within h hops, own cells first (:meth:`IncomingEdges.group`); positives are the
            training edges whose source is an own cell, so a pass over the parts trains every edge exactly once
            (``train_pos`` must be among the message edges), and an own cell's messages come from all its
            neighbours, whichever part they are in.
    """

    def __init__(self, parts: np.ndarray, message: np.ndarray, train_pos: np.ndarray, halo: int = 0) -> None:
        self.parts = np.asarray(parts, dtype=np.int64)
        self.n_parts = int(self.parts.max()) + 1
        n = self.parts.size
        order = np.argsort(self.parts, kind="stable")
        bounds = np.zeros(self.n_parts + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.parts, minlength=self.n_parts), out=bounds[1:])
        self._members = [order[bounds[i] : bounds[i + 1]] for i in range(self.n_parts)]
        self._message = _EdgesByPart(np.asarray(message, dtype=np.int64), self.parts, self.n_parts)
        self._pos = _EdgesByPart(np.asarray(train_pos, dtype=np.int64), self.parts, self.n_parts)
        self._inside = np.zeros(n, dtype=bool)
        self._local = np.full(n, -1, dtype=np.int64)
        same = self.parts[message[0]] == self.parts[message[1]]
        self.within_share = float(same.mean()) if same.size else 1.0  # message edges inside one part
        self.halo = int(halo)
        self._incoming = IncomingEdges(message, n) if self.halo > 0 else None

    def batch(self, chosen: np.ndarray) -> PartBatch:
        chosen = np.asarray(chosen, dtype=np.int64)
        cells = np.concatenate([self._members[c] for c in chosen])
        if self._incoming is not None:
            group = self._incoming.group(cells, self.halo)
            nodes = group.nodes
            self._local[nodes] = np.arange(nodes.size)
            try:
                pos = self._local[self._pos.of(chosen)]
            finally:
                self._local[nodes] = -1
            if pos.size and int(pos.min()) < 0:
                raise ValueError("a training edge is not among the message edges")
            return PartBatch(nodes, group.edge_index, pos, n_own=int(cells.size))
        self._inside[cells] = True
        self._local[cells] = np.arange(cells.size)
        try:
            message = self._local[self._message.among(chosen, self._inside)]
            pos = self._local[self._pos.among(chosen, self._inside)]
        finally:
            self._inside[cells] = False
            self._local[cells] = -1
        return PartBatch(cells, message, pos)
