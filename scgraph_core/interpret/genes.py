"""A model's genes: P_mu gene weights, top genes per latent dimension and per cluster, learnt expression.

The array helpers follow MODELS.md section 1.6 and work on NumPy arrays exported from a model
(CellVGAE: ``CellVGAENet.gene_weights`` or the projection weights themselves). The result helpers
read a result AnnData: its gene-weight matrix through the views manifest, marker rankings and their
overlap with the model's top genes, and the genes an imputation view opens on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .views import result_views

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
    for prev, cur in itertools.pairwise(mats):
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


AGREEMENT_MAX_CELLS = 20_000


def learnt_expression_agreement(adata, max_cells: int = AGREEMENT_MAX_CELLS, seed: int = 0) -> dict:
    """How far a result's learnt expression follows the measured expression (see :func:`expression_agreement`),
    read from a result AnnData: its embedding, its P_mu rows and its ``X`` (what the Expression page draws
    side by side). An empty dict when the result has no gene weights or embedding."""
    found = gene_weight_matrix(adata, "P_mu")
    key = result_views(adata).get("embedding")
    if found is None or key is None or key not in adata.obsm:
        return {}
    weights, genes = found
    cells = agreement_cells(adata.n_obs, max_cells, seed)
    observed = adata.X[cells][:, adata.var_names.get_indexer(genes)]
    return expression_agreement(np.asarray(adata.obsm[key])[cells], weights, observed)


def agreement_cells(n: int, max_cells: int, seed: int) -> np.ndarray:
    if n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))


def expression_agreement(embedding: np.ndarray, p_mu: np.ndarray, observed) -> dict:
    """For every gene (a P_mu row and a column of ``observed``, cells x genes, dense or sparse): Pearson's r
    across cells between its learnt expression (embedding x P_mu row) and its observed values.

    Returns ``n_genes`` (genes that vary both ways), ``median_r``, ``share_positive`` (r > 0),
    ``share_above_0_3`` and ``top1_share``: the share of the learnt expression's variance (cells x genes,
    centred) along its first principal direction; near 1, every gene's learnt map is one picture up to sign
    and scale. An empty dict when no gene varies or a value is not finite.
    """
    import scipy.sparse as sp

    learnt = np.asarray(embedding, dtype=np.float64) @ np.asarray(p_mu, dtype=np.float64).T
    observed = observed.toarray() if sp.issparse(observed) else np.asarray(observed)
    observed = np.asarray(observed, dtype=np.float64)
    if observed.shape != learnt.shape:
        raise ValueError(f"observed is {observed.shape}, the learnt expression {learnt.shape}")
    if not (np.isfinite(learnt).all() and np.isfinite(observed).all()):
        return {}  # a diverged model or missing values: no reading rather than a failed run
    lc = learnt - learnt.mean(axis=0)
    oc = observed - observed.mean(axis=0)
    norm = np.sqrt((lc**2).sum(axis=0) * (oc**2).sum(axis=0))
    varying = norm > 0
    if not varying.any():
        return {}
    r = (lc * oc).sum(axis=0)[varying] / norm[varying]
    singular = np.linalg.svd(lc, compute_uv=False)
    total = float((singular**2).sum())
    return {
        "n_genes": int(varying.sum()),
        "median_r": float(np.median(r)),
        "share_positive": float(np.mean(r > 0)),
        "share_above_0_3": float(np.mean(r > 0.3)),
        "top1_share": float(singular[0] ** 2 / total) if total > 0 else float("nan"),
    }


def top_genes_per_dimension(p_mu: np.ndarray, gene_names: Sequence[str], n_genes: int = 15) -> pd.DataFrame:
    """For every latent dimension, the ``n_genes`` genes with the largest signed P_μ value.

    Columns: dimension, rank (1 = largest), gene, weight (the P_μ value).
    """
    p = np.asarray(p_mu, dtype=np.float64)
    names = np.asarray(gene_names, dtype=object)
    records = []
    for dim in range(p.shape[1]):
        for rank, g in enumerate(top_indices(p[:, dim], n_genes), start=1):
            records.append((dim, rank, names[g], p[g, dim]))
    return pd.DataFrame.from_records(records, columns=["dimension", "rank", "gene", "weight"])


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
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
    global_set = set(top_indices(p.max(axis=1), global_top).tolist())
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
            for g in top_indices(p[:, dim], n_genes):
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
# A result's gene weights and markers (read through its views manifest)
# ----------------------------------------------------------------------------------------------------


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
