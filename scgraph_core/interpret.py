"""Reading a trained graph autoencoder: attention summaries, P_mu gene weights, top genes, learnt expression.

Everything here works on NumPy arrays exported from a model (CellVGAE: ``CellVGAENet.attention`` and
``CellVGAENet.gene_weights`` or the projection weights themselves), following MODELS.md section 1.6.
Attention arrays are edge-indexed: ``edge_index`` [2, E] (row 0 source j, row 1 target i, self loops
included) and ``alpha`` [E, K] (one column per head; a 1-D array is read as one head).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "p_matrix",
    "node_attention",
    "head_summary",
    "top_edges",
    "latent_participation",
    "top_genes",
    "top_genes_per_dimension",
    "learnt_expression",
    "NODE_ATTENTION_MODES",
]

NODE_ATTENTION_MODES = ("touching", "incoming_mean", "neighbourhood", "outgoing")


def _as_2d(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=np.float64)
    return alpha[:, None] if alpha.ndim == 1 else alpha


# ----------------------------------------------------------------------------------------------------
# Gene weights
# ----------------------------------------------------------------------------------------------------


def p_matrix(weights: Sequence[np.ndarray], heads_last: int, latent: int) -> np.ndarray:
    """The linear surrogate P of the encoder (MODELS.md 1.6), D × L.

    ``weights`` are the projection matrices in PyG orientation ([heads·out, in]), first layer first:
    W1 (K1H1 × D), W2 (K2H2 × K1H1), …, Wμ (Kμ·L × K_nH_n). Then

        P = W1ᵀ W2ᵀ … Wμᵀ            (D × Kμ·L)

    whose columns are Kμ consecutive blocks of L (head-major: column k·L + l is head k, dimension l),
    averaged over heads as the μ layer averages its heads. Biases, ReLUs and attention are ignored.
    """
    if not weights:
        raise ValueError("p_matrix needs at least one weight matrix")
    mats = [np.asarray(w, dtype=np.float64) for w in weights]
    for prev, cur in zip(mats, mats[1:], strict=False):
        if cur.shape[1] != prev.shape[0]:
            raise ValueError(
                f"weights do not chain: {prev.shape} then {cur.shape} (PyG orientation [out, in])"
            )
    if mats[-1].shape[0] != heads_last * latent:
        raise ValueError(
            f"last weight has {mats[-1].shape[0]} rows, expected heads_last·latent = {heads_last * latent}"
        )
    p = mats[0].T
    for w in mats[1:]:
        p = p @ w.T
    return p.reshape(p.shape[0], heads_last, latent).mean(axis=1)


def learnt_expression(embedding: np.ndarray, p_mu: np.ndarray, gene_index: int | Sequence[int]) -> np.ndarray:
    """Learnt expression of gene(s) g per cell: E · P_μ[g, :] (MODELS.md 1.6), for use as a colour.

    Returns [N] for one gene index, [N, G] for a sequence of them.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    rows = np.asarray(p_mu, dtype=np.float64)[gene_index]
    return emb @ rows.T if rows.ndim == 2 else emb @ rows


def top_genes_per_dimension(p_mu: np.ndarray, gene_names: Sequence[str], n_genes: int = 15) -> pd.DataFrame:
    """For every latent dimension, the ``n_genes`` genes with the largest signed P_μ value.

    Columns: dimension, rank (1 = largest), gene, weight (the P_μ value).
    """
    p = np.asarray(p_mu, dtype=np.float64)
    names = np.asarray(gene_names, dtype=object)
    records = []
    for dim in range(p.shape[1]):
        for rank, g in enumerate(_top_indices(p[:, dim], n_genes), start=1):
            records.append((dim, rank, names[g], p[g, dim]))
    return pd.DataFrame.from_records(records, columns=["dimension", "rank", "gene", "weight"])


def _top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values, largest first (argpartition, then a stable sort of those n)."""
    n = min(n, values.size)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-values, n - 1)[:n]
    return part[np.argsort(-values[part], kind="stable")]


# ----------------------------------------------------------------------------------------------------
# Latent dimensions and clusters
# ----------------------------------------------------------------------------------------------------


def latent_participation(
    embedding: np.ndarray, clusters: Sequence[int] | np.ndarray, *, include_noise: bool = False
) -> pd.DataFrame:
    """Which clusters drive each latent dimension (MODELS.md 1.6), an L × C table of percentages.

    For dimension l, the cells beyond mean_l ± 1 std_l (|e_il − mean_l| > std_l, over all cells) are
    taken, and the table holds the percentage of those cells in each cluster (rows sum to 100, or 0
    when no cell is beyond). HDBSCAN noise (label −1) is dropped from the selected cells by default, so
    percentages are over clustered cells; ``include_noise=True`` keeps it as its own column ``-1``.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(clusters)
    if labels.shape[0] != emb.shape[0]:
        raise ValueError(f"{labels.shape[0]} cluster labels for {emb.shape[0]} cells")
    columns = np.unique(labels)
    if not include_noise:
        columns = columns[columns != -1]
    beyond = np.abs(emb - emb.mean(axis=0)) > emb.std(axis=0)  # [N, L]
    keep = np.isin(labels, columns)
    onehot = (labels[keep, None] == columns[None, :]).astype(np.float64)  # [N', C]
    counts = beyond[keep].T.astype(np.float64) @ onehot  # [L, C]
    totals = counts.sum(axis=1, keepdims=True)
    pct = np.divide(100.0 * counts, totals, out=np.zeros_like(counts), where=totals > 0)
    table = pd.DataFrame(pct, columns=list(columns))
    table.index.name = "dimension"
    table.columns.name = "cluster"
    return table


def top_genes(
    p_mu: np.ndarray,
    gene_names: Sequence[str],
    embedding: np.ndarray,
    clusters: Sequence[int] | np.ndarray,
    *,
    n_genes: int = 15,
    share_factor: float = 2.0,
    max_dims: int = 5,
    global_top: int = 100,
) -> pd.DataFrame:
    """Marker genes per cluster from P_μ and the latent dimensions the cluster drives (MODELS.md 1.6).

    1. Participation (:func:`latent_participation`, noise excluded). A cluster's dimensions are those
       where its share is ≥ ``share_factor`` × the uniform share 100/C; the ``max_dims`` highest.
    2. Per selected dimension, the ``n_genes`` genes with the largest **signed** P_μ value.
    3. ``appearances`` = in how many of the cluster's selected dimensions the gene is in that list.
       Genes appearing at least twice are kept; genes appearing once are kept only if they are among
       the ``global_top`` genes of P_μ (ranked by their largest signed value over all dimensions).
    4. ``score`` = the sum of the gene's signed P_μ values over the dimensions where it appeared.

    Returns columns cluster, gene, appearances, score, dimensions (the selected dimensions it appeared
    in, as text such as "3,17" so the table stores in h5ad); within each cluster the most important
    first (appearances, then score, descending). A cluster with no selected dimension gives no rows.
    """
    p = np.asarray(p_mu, dtype=np.float64)
    names = np.asarray(gene_names, dtype=object)
    if p.shape[0] != names.shape[0]:
        raise ValueError(f"P_mu has {p.shape[0]} genes but {names.shape[0]} gene names were given")
    part = latent_participation(embedding, clusters)
    n_clusters = part.shape[1]
    global_set = set(_top_indices(p.max(axis=1), global_top).tolist())
    threshold = share_factor * 100.0 / max(n_clusters, 1)
    records = []
    for cluster in part.columns:
        share = part[cluster].to_numpy()
        dims = np.flatnonzero(share >= threshold)
        dims = dims[np.argsort(-share[dims], kind="stable")][:max_dims]
        found: dict[int, list[int]] = {}
        for dim in dims:
            for g in _top_indices(p[:, dim], n_genes):
                found.setdefault(int(g), []).append(int(dim))
        rows = []
        for g, where in found.items():
            if len(where) >= 2 or g in global_set:
                rows.append(
                    (
                        cluster,
                        names[g],
                        len(where),
                        float(p[g, where].sum()),
                        ",".join(map(str, sorted(where))),
                    )
                )
        rows.sort(key=lambda r: (-r[2], -r[3]))
        records.extend(rows)
    return pd.DataFrame.from_records(
        records, columns=["cluster", "gene", "appearances", "score", "dimensions"]
    )


# ----------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------


def node_attention(
    edge_index: np.ndarray, alpha: np.ndarray, n_nodes: int, mode: str = "touching"
) -> np.ndarray:
    """A per-cell attention score, averaged over heads (MODELS.md 1.6 aggregation (b) and the paper text).

    Per cell and head, then the mean over heads:

    * ``"touching"``: Σ α over every edge with the cell as source or as target (the notebooks'
      aggregation (b), as a weighted degree: the self loop i→i enters both sums). With eval-mode α the
      incoming part is 1, so this is 1 + the outgoing mass.
    * ``"incoming_mean"`` (alias ``"neighbourhood"``): the mean α over the cell's incoming edges, the
      paper text's "average over the neighbourhood". With eval-mode α this is 1 / in-degree.
    * ``"outgoing"``: Σ α over edges with the cell as source, i.e. how much attention the cell's
      neighbours pay to it.

    Cells with no edge score 0.
    """
    if mode not in NODE_ATTENTION_MODES:
        raise ValueError(f"mode must be one of {NODE_ATTENTION_MODES}, got {mode!r}")
    ei = np.asarray(edge_index, dtype=np.int64)
    a = _as_2d(alpha)
    src, dst = ei[0], ei[1]
    out_sum = _per_node_sum(src, a, n_nodes)
    if mode == "outgoing":
        score = out_sum
    else:
        in_sum = _per_node_sum(dst, a, n_nodes)
        if mode == "touching":
            score = in_sum + out_sum
        else:
            deg = np.bincount(dst, minlength=n_nodes).astype(np.float64)[:, None]
            score = np.divide(in_sum, deg, out=np.zeros_like(in_sum), where=deg > 0)
    return score.mean(axis=1)


def _per_node_sum(node: np.ndarray, values: np.ndarray, n_nodes: int) -> np.ndarray:
    """Σ of each column of ``values`` per node id (one bincount per head: far faster than np.add.at)."""
    return np.stack([np.bincount(node, weights=col, minlength=n_nodes) for col in values.T], axis=1)


def head_summary(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per edge, the mean and the (population, ddof = 0) standard deviation of α over heads."""
    a = _as_2d(alpha)
    return a.mean(axis=1), a.std(axis=1)


def top_edges(
    edge_index: np.ndarray,
    alpha: np.ndarray,
    n: int = 120,
    head: int | None = None,
    drop_self_loops: bool = True,
) -> pd.DataFrame:
    """The ``n`` edges with the largest attention (MODELS.md 1.6 aggregation (a)), largest first.

    The weight is the mean over heads, or head ``head``'s α. Self loops are left out by default (each
    cell's attention to itself is not an edge of the cell graph). Columns: source, target, weight.
    """
    ei = np.asarray(edge_index, dtype=np.int64)
    a = _as_2d(alpha)
    weight = a.mean(axis=1) if head is None else a[:, head]
    idx = np.arange(ei.shape[1])
    if drop_self_loops:
        idx = idx[ei[0] != ei[1]]
    chosen = idx[_top_indices(weight[idx], n)]
    return pd.DataFrame({"source": ei[0, chosen], "target": ei[1, chosen], "weight": weight[chosen]})
