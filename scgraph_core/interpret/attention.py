"""Attention of a graph attention encoder: per-node and per-head summaries, top edges, a result's attention maps.

Attention arrays are edge-indexed: ``edge_index`` [2, E] (row 0 source j, row 1 target i, self loops
included) and ``alpha`` [E, K] (one column per head; a 1-D array is read as one head). The array
helpers follow MODELS.md section 1.6 (CellVGAE: ``CellVGAENet.attention``); :class:`AttentionMap`,
:func:`attention_map`, :func:`attention_edges` and :func:`attention_hubs` read a result AnnData
through its views manifest for the app's explore pages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .genes import top_indices
from .views import result_views

NODE_ATTENTION_MODES = ("touching", "incoming_mean", "neighbourhood", "outgoing")


def _as_2d(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=np.float64)
    return alpha[:, None] if alpha.ndim == 1 else alpha


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
    chosen = idx[top_indices(weight[idx], n)]
    return pd.DataFrame({"source": ei[0, chosen], "target": ei[1, chosen], "weight": weight[chosen]})


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
    cells: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Filter attention edges for display, strongest first (MODELS.md 1.6 aggregation (a), with filters).

    ``weights`` is one value per edge (e.g. :meth:`AttentionMap.weights`). With ``labels`` (one cell type
    or cluster per cell), ``include`` keeps edges whose cells are of those types (``match="both"``: both
    cells, ``"either"``: at least one) and ``exclude`` drops every edge touching one of those types.
    ``cells`` (row numbers, e.g. a selection made on the UMAP) keeps the edges among those cells, with the
    same ``match`` rule.
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
    if cells is not None:
        chosen = np.zeros(int(max(ei.max(initial=-1), np.max(cells, initial=-1))) + 1, dtype=bool)
        chosen[np.asarray(cells, dtype=np.int64)] = True
        ends = chosen[ei[0]], chosen[ei[1]]
        keep &= (ends[0] & ends[1]) if match == "both" else (ends[0] | ends[1])
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
