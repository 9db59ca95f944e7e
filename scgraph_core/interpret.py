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
    # Reading a result through its views manifest (the app's explore pages)
    "AttentionMap",
    "result_views",
    "attention_map",
    "attention_edges",
    "attention_statistic",
    "gene_weight_matrix",
    "dimension_appearances",
    "rank_genes_markers",
    "marker_overlap",
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
       where its share is ≥ t = min(``share_factor`` × u, u + (100 − u) / 2), u = 100/C the uniform share;
       the ``max_dims`` highest. The second term matters only for few clusters: 2 × u alone is 100 % at
       C = 2 (every extreme cell in one cluster) and 67 % at C = 3, which real clusters rarely reach, so a
       two- or three-cluster result got no markers; the threshold is at most halfway from u to 100 %
       (75 % at C = 2). A cluster with no dimension above t takes its one highest-share dimension when
       that share is above u.
    2. Per selected dimension, the ``n_genes`` genes with the largest **signed** P_μ value.
    3. ``appearances`` = in how many of the cluster's selected dimensions the gene is in that list.
       Genes appearing at least twice are kept; genes appearing once are kept when they are among
       the ``global_top`` genes of P_μ (ranked by their largest signed value over all dimensions), or
       when the cluster has a single selected dimension (no gene can appear twice there).
    4. ``score`` = the sum of the gene's signed P_μ values over the dimensions where it appeared.

    Returns columns cluster, gene, appearances, score, dimensions (the selected dimensions it appeared
    in, as text such as "3,17" so the table stores in h5ad); within each cluster the most important
    first (appearances, then score, descending). With two or more clusters the table is never empty.
    """
    p = np.asarray(p_mu, dtype=np.float64)
    names = np.asarray(gene_names, dtype=object)
    if p.shape[0] != names.shape[0]:
        raise ValueError(f"P_mu has {p.shape[0]} genes but {names.shape[0]} gene names were given")
    part = latent_participation(embedding, clusters)
    n_clusters = part.shape[1]
    global_set = set(_top_indices(p.max(axis=1), global_top).tolist())
    uniform = 100.0 / max(n_clusters, 1)
    threshold = min(share_factor * uniform, uniform + (100.0 - uniform) / 2)
    records = []
    for cluster in part.columns:
        share = part[cluster].to_numpy()
        dims = np.flatnonzero(share >= threshold)
        dims = dims[np.argsort(-share[dims], kind="stable")][:max_dims]
        if dims.size == 0 and share.size and share.max() > uniform:
            dims = np.array([int(np.argmax(share))])
        found: dict[int, list[int]] = {}
        for dim in dims:
            for g in _top_indices(p[:, dim], n_genes):
                found.setdefault(int(g), []).append(int(dim))
        rows = []
        for g, where in found.items():
            if len(where) >= 2 or g in global_set or dims.size == 1:
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


# ----------------------------------------------------------------------------------------------------
# Reading a result through its views manifest (uns["scgraph"]["views"], see models/base.py VIEW_KEYS)
# ----------------------------------------------------------------------------------------------------


def result_views(adata) -> dict:
    """The views manifest of a result AnnData as a plain dict ({} when the file has none)."""
    scgraph = adata.uns.get("scgraph", {}) if hasattr(adata, "uns") else {}
    views = scgraph.get("views", {}) if isinstance(scgraph, dict) else {}
    return _plain_views(views) if isinstance(views, dict) else {}


def _plain_views(value):
    # h5ad hands lists back as numpy arrays and numbers as numpy scalars.
    if isinstance(value, dict):
        return {str(k): _plain_views(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain_views(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain_views(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _ordered_names(views: dict, key: str, order_key: str) -> list[str]:
    maps = views.get(key) or {}
    order = [str(n) for n in (views.get(order_key) or []) if str(n) in maps]
    return order + sorted(str(n) for n in maps if str(n) not in order)


class AttentionMap:
    """One attention map of a result: edge-indexed coefficients with a heads axis.

    ``edge_index`` [2, E] (row 0 source j, row 1 target i) and ``alpha`` [E, K] come from
    ``uns[model]['attention'][name]`` when the model stored its heads, else from the manifest's ``obsp``
    matrix (row = target, column = source; one "head": the mean over heads). ``kind`` is 'graph'
    (attention over graph edges, incoming weights of a cell sum to 1) or 'fusion' (the strongest
    cell-to-cell pairs of an all-cell attention). ``keys`` [N], where known: how many cells each target
    cell spread its attention over (its graph in-degree, or every cell for dense fusion attention).
    """

    def __init__(
        self,
        name: str,
        edge_index: np.ndarray,
        alpha: np.ndarray,
        *,
        kind: str,
        heads: int,
        per_head: bool,
        std: np.ndarray | None = None,
        node_obs: str | None = None,
        keys: np.ndarray | None = None,
    ):
        self.name = name
        self.edge_index = np.asarray(edge_index, dtype=np.int64)
        self.alpha = _as_2d(alpha)
        self.kind = kind
        self.heads = int(heads)
        self.per_head = bool(per_head)
        self._std = None if std is None else np.asarray(std, dtype=np.float64)
        self.node_obs = node_obs
        self.keys = None if keys is None else np.asarray(keys, dtype=np.float64).reshape(-1)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def weights(self, statistic: str | int = "mean") -> np.ndarray:
        """Per edge: the mean over heads, the std over heads, or one head's α (``statistic`` = head)."""
        return attention_statistic(self.alpha, statistic, std=self._std)

    def relative(self, statistic: str | int = "mean") -> np.ndarray:
        """Per edge: :meth:`weights` times the number of keys its target cell attended over, i.e. the
        attention relative to an even split (1 = no preference for that key; 50 = fifty times the even
        share). Needs ``keys`` (see :attr:`keys`)."""
        if self.keys is None:
            raise ValueError(f"attention map {self.name!r} does not record how many keys each cell had")
        return self.weights(statistic) * self.keys[self.edge_index[1]]


def attention_statistic(
    alpha: np.ndarray, statistic: str | int = "mean", *, std: np.ndarray | None = None
) -> np.ndarray:
    """Reduce [E, K] attention over heads: "mean", "std" (population, as :func:`head_summary`) or a head."""
    a = _as_2d(alpha)
    if statistic == "mean":
        return a.mean(axis=1)
    if statistic == "std":
        if a.shape[1] == 1 and std is not None:
            return np.asarray(std, dtype=np.float64)
        return a.std(axis=1)
    head = int(statistic)
    if not 0 <= head < a.shape[1]:
        raise ValueError(f"head {head} does not exist: this map has {a.shape[1]} head(s)")
    return a[:, head]


def attention_map(adata, name: str) -> AttentionMap:
    """Read attention map ``name`` of a result (see :class:`AttentionMap`)."""
    import scipy.sparse as sp

    views = result_views(adata)
    maps = views.get("attention") or {}
    if name not in maps:
        known = ", ".join(_ordered_names(views, "attention", "attention_layers")) or "none"
        raise KeyError(f"no attention map {name!r} in this result (maps: {known})")
    entry = dict(maps[name])
    model = views.get("model", "")
    stored = (adata.uns.get(model, {}) or {}).get("attention", {}) if model else {}
    stored = stored.get(name) if isinstance(stored, dict) else None
    kind = str(entry.get("kind", "graph"))
    heads = int(entry.get("heads", 1) or 1)
    n = adata.n_obs

    def keys(ei: np.ndarray) -> np.ndarray | None:
        if isinstance(stored, dict) and "keys" in stored:
            return np.asarray(stored["keys"])
        if kind == "graph":  # every edge is stored: a cell's keys are its incoming edges
            return np.bincount(np.asarray(ei[1], dtype=np.int64), minlength=n)
        if entry.get("scope") == "all cells":
            return np.full(n, n)
        return None

    if isinstance(stored, dict) and "edge_index" in stored and "alpha" in stored:
        return AttentionMap(
            name,
            stored["edge_index"],
            stored["alpha"],
            kind=kind,
            heads=heads,
            per_head=True,
            node_obs=entry.get("node_obs"),
            keys=keys(stored["edge_index"]),
        )
    key = entry.get("obsp")
    if key is None or key not in adata.obsp:
        raise KeyError(f"attention map {name!r} lists no readable obsp matrix")
    mean = sp.coo_matrix(adata.obsp[key])
    std = None
    std_key = entry.get("obsp_std")
    if std_key and std_key in adata.obsp:
        # Same sparsity pattern as the mean: read it at the mean's (row, column) pairs.
        std = np.asarray(sp.csr_matrix(adata.obsp[std_key])[mean.row, mean.col]).reshape(-1)
    ei = np.stack([mean.col, mean.row]).astype(np.int64)  # row = target, column = source
    return AttentionMap(
        name,
        ei,
        mean.data,
        kind=kind,
        heads=heads,
        per_head=False,
        std=std,
        node_obs=entry.get("node_obs"),
        keys=keys(ei),
    )


def attention_hubs(
    edge_index: np.ndarray, n_cells: int, *, labels: Sequence | np.ndarray | None = None, top: int = 10
) -> tuple[pd.DataFrame, int, int]:
    """The cells most often among other cells' stored attention pairs (self pairs left out).

    Returns (table, half, targets): ``table`` has one row per hub, most attended first, with columns cell
    (index), listeners (how many other cells' stored pairs point to it), share (of all stored pairs) and
    label (with ``labels``); ``half`` is the fewest cells that together take half of the stored pairs, and
    ``targets`` how many distinct cells are attended to at all. A small ``half`` means attention
    concentrates on a few shared reference cells.
    """
    ei = np.asarray(edge_index, dtype=np.int64)
    src = ei[0][ei[0] != ei[1]]
    counts = np.bincount(src, minlength=n_cells)
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")
    if total == 0:
        return pd.DataFrame(columns=["cell", "listeners", "share"]), 0, 0
    cumulative = np.cumsum(counts[order])
    half = int(np.searchsorted(cumulative, total / 2.0) + 1)
    hubs = order[: min(top, int((counts > 0).sum()))]
    table = pd.DataFrame({"cell": hubs, "listeners": counts[hubs], "share": counts[hubs] / total})
    if labels is not None:
        table["label"] = np.asarray(labels)[hubs]
    return table, half, int((counts > 0).sum())


def attention_edges(
    edge_index: np.ndarray,
    weights: np.ndarray,
    *,
    labels: Sequence | np.ndarray | None = None,
    include: Sequence | None = None,
    exclude: Sequence | None = None,
    match: str = "both",
    weight_range: tuple[float, float] | None = None,
    top_n: int | None = None,
    drop_self_loops: bool = True,
) -> pd.DataFrame:
    """Filter attention edges for display, strongest first (MODELS.md 1.6 aggregation (a), with filters).

    ``weights`` is one value per edge (e.g. :meth:`AttentionMap.weights`). With ``labels`` (one cell type
    or cluster per cell), ``include`` keeps edges whose cells are of those types (``match="both"``: both
    cells, ``"either"``: at least one) and ``exclude`` drops every edge touching one of those types.
    ``weight_range`` (low, high) keeps weights in that closed range; ``top_n`` then keeps the strongest.
    Columns: source, target, weight (and source_label, target_label with ``labels``).
    """
    if match not in ("both", "either"):
        raise ValueError(f"match must be 'both' or 'either', got {match!r}")
    ei = np.asarray(edge_index, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != ei.shape[1]:
        raise ValueError(f"{w.shape[0]} weights for {ei.shape[1]} edges")
    keep = np.ones(ei.shape[1], dtype=bool)
    if drop_self_loops:
        keep &= ei[0] != ei[1]
    lab = None
    if labels is not None:
        lab = np.asarray([str(v) for v in labels], dtype=object)
        src_lab, dst_lab = lab[ei[0]], lab[ei[1]]
        if include:
            inc = np.isin(src_lab, [str(v) for v in include]), np.isin(dst_lab, [str(v) for v in include])
            keep &= (inc[0] & inc[1]) if match == "both" else (inc[0] | inc[1])
        if exclude:
            exc = [str(v) for v in exclude]
            keep &= ~np.isin(src_lab, exc) & ~np.isin(dst_lab, exc)
    if weight_range is not None:
        lo, hi = weight_range
        keep &= (w >= lo) & (w <= hi)
    idx = np.flatnonzero(keep & np.isfinite(w))
    idx = idx[np.argsort(-w[idx], kind="stable")]
    if top_n is not None:
        idx = idx[: max(0, int(top_n))]
    out = pd.DataFrame({"source": ei[0, idx], "target": ei[1, idx], "weight": w[idx]})
    if lab is not None:
        out["source_label"] = lab[out["source"].to_numpy()]
        out["target_label"] = lab[out["target"].to_numpy()]
    return out


def gene_weight_matrix(adata, which: str = "P_mu") -> tuple[np.ndarray, list[str]] | None:
    """(weights [genes x latent dims], gene names) for the genes that have them, or None.

    Reads ``varm`` through the manifest's ``gene_weights``; rows that are NaN (genes that were not model
    features) are left out.
    """
    gw = result_views(adata).get("gene_weights") or {}
    key = gw.get(which)
    if key is None or key not in adata.varm:
        return None
    full = np.asarray(adata.varm[key], dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(full).all(axis=1))
    return full[rows], [str(g) for g in adata.var_names[rows]]


def dimension_appearances(per_dimension: pd.DataFrame) -> pd.DataFrame:
    """How often each gene is among the top genes of a latent dimension.

    ``per_dimension`` is :func:`top_genes_per_dimension`'s table. Returns gene, appearances, dimensions
    (the dimensions as text "3,17"), mean_weight; most frequent first.
    """
    if per_dimension.empty:
        return pd.DataFrame(columns=["gene", "appearances", "dimensions", "mean_weight"])
    grouped = per_dimension.groupby("gene", sort=False)
    out = pd.DataFrame(
        {
            "appearances": grouped["dimension"].nunique(),
            "dimensions": grouped["dimension"].agg(lambda d: ",".join(map(str, sorted(set(d))))),
            "mean_weight": grouped["weight"].mean(),
        }
    ).reset_index()
    return out.sort_values(
        ["appearances", "mean_weight"], ascending=[False, False], kind="stable"
    ).reset_index(drop=True)


def rank_genes_markers(
    adata,
    groupby: str,
    *,
    n_genes: int = 25,
    method: str = "wilcoxon",
    genes: Sequence[str] | None = None,
    min_cells: int = 3,
    exclude: Sequence[str] = ("noise",),
) -> pd.DataFrame:
    """scanpy ``rank_genes_groups`` markers of the clusters in ``obs[groupby]`` (one group vs the rest).

    Runs on X (log-normalised in a scgraph result), restricted to ``genes`` when given (e.g. the model's
    feature genes, so the comparison with P_mu markers is on the same genes). Groups in ``exclude``
    (HDBSCAN noise) and groups with fewer than ``min_cells`` cells are left out. Returns cluster, rank,
    gene, score, logfoldchange, pval_adj.
    """
    import anndata as ad
    import scanpy as sc

    labels = adata.obs[groupby].astype(str)
    counts = labels.value_counts()
    groups = [g for g in counts.index if g not in set(exclude) and counts[g] >= min_cells]
    columns = ["cluster", "rank", "gene", "score", "logfoldchange", "pval_adj"]
    if len(groups) < 2:
        return pd.DataFrame(columns=columns)
    cells = labels.isin(groups).to_numpy()
    var = (
        adata.var_names if genes is None else adata.var_names.intersection(pd.Index([str(g) for g in genes]))
    )
    X = adata[cells, var].X
    tmp = ad.AnnData(
        X=X.copy(),
        obs=pd.DataFrame({"group": pd.Categorical(labels[cells])}, index=adata.obs_names[cells]),
        var=pd.DataFrame(index=var),
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "group", method=method, n_genes=min(n_genes, len(var)), use_raw=False)
    res = tmp.uns["rank_genes_groups"]
    records = []
    for g in res["names"].dtype.names:
        for rank in range(len(res["names"][g])):
            records.append(
                (
                    g,
                    rank + 1,
                    str(res["names"][g][rank]),
                    float(res["scores"][g][rank]),
                    float(res["logfoldchanges"][g][rank]) if "logfoldchanges" in res else float("nan"),
                    float(res["pvals_adj"][g][rank]) if "pvals_adj" in res else float("nan"),
                )
            )
    return pd.DataFrame.from_records(records, columns=columns)


def marker_overlap(model_markers: pd.DataFrame, reference: pd.DataFrame, *, n_top: int = 15) -> pd.DataFrame:
    """Per cluster, the overlap of the model's top ``n_top`` markers with the reference's top ``n_top``.

    Both tables need columns cluster and gene, most important first within a cluster (as
    :func:`top_genes` and :func:`rank_genes_markers` return them). Returns cluster, model_genes,
    reference_genes, shared (count), jaccard, shared_genes (text), for the clusters in either table.
    """

    def tops(table: pd.DataFrame) -> dict[str, list[str]]:
        if table.empty:
            return {}
        out: dict[str, list[str]] = {}
        for cluster, part in table.groupby(table["cluster"].astype(str), sort=False):
            out[cluster] = [str(g) for g in part["gene"].head(n_top)]
        return out

    mine, ref = tops(model_markers), tops(reference)
    records = []
    for cluster in sorted(
        set(mine) | set(ref),
        key=lambda c: (not c.lstrip("-").isdigit(), int(c) if c.lstrip("-").isdigit() else 0, c),
    ):
        a, b = mine.get(cluster, []), ref.get(cluster, [])
        shared = [g for g in a if g in set(b)]
        union = set(a) | set(b)
        records.append(
            (
                cluster,
                len(a),
                len(b),
                len(shared),
                len(shared) / len(union) if union else 0.0,
                ", ".join(shared),
            )
        )
    return pd.DataFrame.from_records(
        records, columns=["cluster", "model_genes", "reference_genes", "shared", "jaccard", "shared_genes"]
    )


def imputed_start_genes(
    adata, layer: str, *, n: int = 6, sample: int = 2000, seed: int = 0, modelled: str | None = None
) -> list[str]:
    """The genes to open an imputation view on: the most variable (log1p of the imputed values, over a
    ``sample`` of cells) among the genes the model imputed.

    A gene is imputed when its column of ``layers[layer]`` is not all NaN in the sample (AttentionAE-sc
    writes NaN for genes it does not see) and, when ``var[modelled]`` is given, the model marked it
    (scVGAE copies the observed counts into genes it did not model). Known marker names are not used:
    they are zero in most cells of another tissue.
    """
    names = np.asarray([str(g) for g in adata.var_names])
    M = adata.layers[layer]
    rows = np.random.default_rng(seed).choice(adata.n_obs, size=min(sample, adata.n_obs), replace=False)
    part = M[np.sort(rows)]
    part = np.asarray(part.toarray() if hasattr(part, "toarray") else part, dtype=np.float64)
    keep = ~np.isnan(part).all(axis=0)
    if modelled is not None and modelled in adata.var:
        keep &= adata.var[modelled].to_numpy(dtype=bool)
    if not keep.any():
        return []
    with np.errstate(invalid="ignore"):
        spread = np.nanvar(np.log1p(np.clip(part[:, keep], 0, None)), axis=0)
    order = np.argsort(-np.nan_to_num(spread, nan=-1.0), kind="stable")
    return [str(g) for g in names[keep][order[:n]]]
