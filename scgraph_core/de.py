"""Differential expression and annotations on a run's result, over all of its genes.

Marker genes of any grouping of the cells (the labels, the model's clusters, Leiden, any obs column, an
annotation saved in the app) and of a selection of cells against the rest or against a second
selection, with scanpy's ``rank_genes_groups`` (Wilcoxon rank-sum by default, Benjamini-Hochberg
adjusted p-values) on the log-normalised values of every gene, not only the model's input genes.

Everything here is AnnData in, tables out; what is saved goes into named slots scanpy reads:
annotations are obs columns (categorical), differential expression results are ``uns`` entries in
``rank_genes_groups``' own layout (``sc.get.rank_genes_groups_df(adata, group, key=...)`` reads them).
Both are listed in ``uns['scgraph']['annotations']`` and ``uns['scgraph']['de_results']``. Writing
them into a run's ``result.h5ad`` is :meth:`scgraph_core.runs.Run.update_result`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ConfigError, DataError

__all__ = [
    "METHODS",
    "DEResult",
    "add_annotation",
    "add_de_result",
    "annotation_from_selections",
    "check_annotation_name",
    "compare_cells",
    "group_expression",
    "groupings",
    "lognorm_matrix",
    "model_input_genes",
    "rank_groups",
    "renamed",
    "save_comparison",
]

METHODS = ("wilcoxon", "t-test", "t-test_overestim_var")
TABLE_COLUMNS = [
    "group",
    "rank",
    "gene",
    "score",
    "logfoldchange",
    "pval",
    "pval_adj",
    "pct_group",
    "pct_rest",
]
MAX_GROUPS = 200  # more groups than this is not a grouping of cells (e.g. a per-cell number)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$")


# ----------------------------------------------------------------------------------------------------
# What to test on
# ----------------------------------------------------------------------------------------------------


def lognorm_matrix(adata) -> tuple[Any, str]:
    """(cells x genes matrix of log-normalised values, where it came from) for every gene of ``adata``.

    A scgraph result holds them in ``layers['lognorm']`` (and X); otherwise X when it looks
    log-normalised, otherwise log1p(counts · 10⁴ / total) from a ``counts`` layer or count-valued X.
    """
    from .data import detect_x_kind

    if "lognorm" in adata.layers:
        return adata.layers["lognorm"], "layers['lognorm']"
    kind = detect_x_kind(adata.X)
    if kind == "lognorm":
        return adata.X, "X"
    counts = None
    if "counts" in adata.layers and detect_x_kind(adata.layers["counts"]) == "counts":
        counts = adata.layers["counts"]
    elif kind == "counts":
        counts = adata.X
    if counts is None:
        raise DataError(
            "This result holds no log-normalised values (no layers['lognorm'], and X holds "
            f"{kind} values) and no raw counts to compute them from, so genes cannot be compared."
        )
    counts = sp.csr_matrix(counts, dtype=np.float32)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    factor = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    scaled = sp.diags(factor.astype(np.float32)) @ counts
    scaled.data = np.log1p(scaled.data)
    return sp.csr_matrix(scaled), "log1p(counts · 10⁴ / total)"


def model_input_genes(adata) -> list[str] | None:
    """The genes the run's model was trained on (its input features), or None when unknown.

    Read from the P_mu rows when the model exposes gene weights, else the model's own record
    (``uns[model]['feature_genes']``), else ``var['<model>_modelled']``, else ``var['hvg']``.
    """
    from .interpret import gene_weight_matrix, result_views

    found = gene_weight_matrix(adata, "P_mu")
    if found is not None:
        return found[1]
    model = str(result_views(adata).get("model", ""))
    own = (adata.uns.get(model, {}) or {}) if model else {}
    if isinstance(own, Mapping) and own.get("feature_genes") is not None:
        return [str(g) for g in np.asarray(own["feature_genes"]).ravel()]
    for col in (f"{model}_modelled", "hvg"):
        if col in adata.var and adata.var[col].dtype == bool:
            return [str(g) for g in adata.var_names[adata.var[col].to_numpy()]]
    return None


def groupings(adata, label_key: str | None = None) -> list[tuple[str, str]]:
    """The obs columns that group cells, as (column, what it is), most useful first.

    The label column, the model's reported clusters, its other clusterings (Leiden, k-means), the
    annotations saved in the app, then every other column with 2 to :data:`MAX_GROUPS` values that is
    text, categorical or boolean.
    """
    from .interpret import result_views

    views = result_views(adata)
    out: list[tuple[str, str]] = []

    def add(key: Any, what: str) -> None:
        if key and key in adata.obs and key not in {k for k, _ in out}:
            out.append((str(key), what))

    add(label_key, "known cell types")
    add(views.get("clusters"), "the model's clusters")
    for key in views.get("other_clusters") or []:
        add(key, "another clustering")
    add(views.get("predictions"), "predicted cell types")
    for key in _listed(adata, "annotations"):
        add(key, "saved annotation")
    for key in adata.obs.columns:
        col = adata.obs[key]
        textual = isinstance(col.dtype, pd.CategoricalDtype) or col.dtype.kind in "OSUb"
        if textual and 2 <= col.nunique() <= MAX_GROUPS:
            add(key, "cell annotation")
    return out


def _listed(adata, name: str) -> list[str]:
    scgraph = adata.uns.get("scgraph", {})
    found = scgraph.get(name) if isinstance(scgraph, Mapping) else None
    return [str(v) for v in np.asarray(found).ravel()] if found is not None else []


# ----------------------------------------------------------------------------------------------------
# Differential expression
# ----------------------------------------------------------------------------------------------------


@dataclass
class DEResult:
    """One ``rank_genes_groups`` computation.

    ``uns``: scanpy's layout (params, names, scores, logfoldchanges, pvals, pvals_adj as record arrays
    with one field per group, ranked best first; pts / pts_rest as genes x groups tables), ready to be
    stored as ``adata.uns[key]``. ``table``: the same as one row per group and gene (columns
    :data:`TABLE_COLUMNS`; pct_* are the percentages of cells expressing the gene). ``groups``: the
    tested groups in order; ``n_cells``: cells per group (and in the reference).
    """

    uns: dict[str, Any]
    table: pd.DataFrame
    groups: list[str]
    n_cells: dict[str, int]
    labels: np.ndarray | None = None  # compare_cells: each cell's side (name, other, or '' for neither)

    def top(self, n: int = 10, *, direction: str = "up") -> pd.DataFrame:
        """The ``n`` best genes of each group: 'up' (highest score, higher in the group) or 'down'."""
        t = self.table
        if direction == "down":
            t = t.sort_values(["group", "score"], ascending=[True, True], kind="stable")
        return t.groupby("group", sort=False, observed=True).head(n).reset_index(drop=True)


def rank_groups(
    adata,
    groupby: str,
    *,
    groups: Sequence[str] | None = None,
    reference: str = "rest",
    method: str = "wilcoxon",
    min_cells: int = 3,
    exclude: Sequence[str] = ("noise",),
) -> DEResult:
    """Marker genes of every group of ``obs[groupby]``: each group against the other cells (``reference``
    'rest') or against one group, on the log-normalised values of all genes (:func:`lognorm_matrix`).

    scanpy ``rank_genes_groups(method=..., corr_method='benjamini-hochberg', pts=True)``; every gene is
    ranked (``n_genes`` = all). Groups in ``exclude`` (HDBSCAN noise) and groups with fewer than
    ``min_cells`` cells are left out, and so are their cells (also from the 'rest'). Raises ConfigError
    when fewer than two groups (or one group and its reference) remain.
    """
    if groupby not in adata.obs:
        raise ConfigError(f"There is no cell annotation called {groupby!r} in this result.")
    if method not in METHODS:
        raise ConfigError(f"Unknown test {method!r}; choose one of {', '.join(METHODS)}.")
    labels = adata.obs[groupby].astype(str).to_numpy()
    names, counts = np.unique(labels, return_counts=True)
    size = dict(zip(names.tolist(), counts.tolist(), strict=True))
    usable = [g for g in names.tolist() if g not in set(map(str, exclude)) and size[g] >= min_cells]
    if reference != "rest" and reference not in usable:
        raise ConfigError(
            f"The reference group {reference!r} has fewer than {min_cells} cells (or none) in {groupby!r}."
        )
    wanted = usable if groups is None else [str(g) for g in groups if str(g) in usable]
    wanted = [g for g in wanted if g != reference]
    if not wanted or (reference == "rest" and len(usable) < 2):
        raise ConfigError(
            f"{groupby!r} has fewer than two groups with at least {min_cells} cells, so there is nothing "
            "to compare. Choose another grouping."
        )
    cells = np.isin(labels, usable)
    return _rank(adata, labels, cells, groupby, wanted, reference, method, size)


def compare_cells(
    adata,
    cells: Sequence[int] | np.ndarray,
    against: Sequence[int] | np.ndarray | None = None,
    *,
    method: str = "wilcoxon",
    name: str = "selected",
    other: str | None = None,
    min_cells: int = 3,
) -> DEResult:
    """Genes that differ between the cells at rows ``cells`` and the rest (or the cells ``against``).

    A selection on the UMAP against every other cell, or against a second selection (cells in both are
    left out of both). One group ``name`` tested against ``other`` (default 'rest', or 'second selection'
    with ``against``); see :func:`rank_groups`.
    """
    other = other or ("rest" if against is None else "second selection")
    n = adata.n_obs
    a = _rows(cells, n)
    b = np.ones(n, dtype=bool) & ~a if against is None else _rows(against, n)
    both = a & b
    a, b = a & ~both, b & ~both
    for count, what in ((a.sum(), "selection"), (b.sum(), "cells it is compared with")):
        if count < min_cells:
            raise ConfigError(
                f"The {what} has {int(count)} cells (without cells in both); at least {min_cells} are "
                "needed to compare expression."
            )
    if name == other:
        raise ConfigError("The two sides of the comparison need different names.")
    labels = np.where(a, name, np.where(b, other, ""))
    size = {name: int(a.sum()), other: int(b.sum())}
    result = _rank(adata, labels, a | b, "selection", [name], other, method, size)
    result.labels = labels
    return result


def _rows(rows: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(rows)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"a boolean mask of {idx.shape} for {n} cells")
        return idx.copy()
    mask = np.zeros(n, dtype=bool)
    mask[idx.astype(np.int64)] = True
    return mask


def _rank(
    adata,
    labels: np.ndarray,
    cells: np.ndarray,
    groupby: str,
    groups: list[str],
    reference: str,
    method: str,
    size: dict[str, int],
) -> DEResult:
    import anndata as ad
    import scanpy as sc

    if method not in METHODS:
        raise ConfigError(f"Unknown test {method!r}; choose one of {', '.join(METHODS)}.")
    X, source = lognorm_matrix(adata)
    X = X[np.flatnonzero(cells)] if not cells.all() else X
    X = sp.csr_matrix(X, dtype=np.float32, copy=True) if sp.issparse(X) else np.array(X, dtype=np.float32)
    order = groups + ([reference] if reference != "rest" else [])
    cats = list(order) + sorted(set(labels[cells]) - set(order))
    if reference == "rest" and len(groups) == 1:
        size = {**size, "rest": int(cells.sum()) - size.get(groups[0], 0)}
    tmp = ad.AnnData(
        X=X,
        obs=pd.DataFrame(
            {groupby: pd.Categorical(labels[cells], categories=cats)}, index=adata.obs_names[cells]
        ),
        var=pd.DataFrame(index=adata.var_names.astype(str)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's notes on ties and on its own defaults
        sc.tl.rank_genes_groups(
            tmp,
            groupby,
            groups=groups,
            reference=reference,
            method=method,
            n_genes=tmp.n_vars,
            corr_method="benjamini-hochberg",
            pts=True,
            use_raw=False,
        )
    uns = dict(tmp.uns["rank_genes_groups"])
    uns["params"] = {**dict(uns["params"]), "groupby": groupby, "values": source}
    table = _tidy(uns)
    n_cells = {g: size.get(g, 0) for g in groups}
    if reference in size:
        n_cells[reference] = size.get(reference, 0)
    return DEResult(uns=uns, table=table, groups=list(groups), n_cells=n_cells)


def _tidy(uns: Mapping[str, Any]) -> pd.DataFrame:
    frames = []
    pts, pts_rest = uns.get("pts"), uns.get("pts_rest")
    for g in uns["names"].dtype.names:
        genes = np.asarray(uns["names"][g]).astype(str)
        part = pd.DataFrame(
            {
                "group": g,
                "rank": np.arange(1, genes.size + 1),
                "gene": genes,
                "score": np.asarray(uns["scores"][g], dtype=np.float64),
                "logfoldchange": np.asarray(uns["logfoldchanges"][g], dtype=np.float64),
                "pval": np.asarray(uns["pvals"][g], dtype=np.float64),
                "pval_adj": np.asarray(uns["pvals_adj"][g], dtype=np.float64),
            }
        )
        part["pct_group"] = 100 * pts[g].reindex(genes).to_numpy() if pts is not None else np.nan
        reference = str(uns["params"].get("reference", "rest"))
        if pts_rest is not None:
            rest = pts_rest[g]
        else:
            rest = pts[reference] if pts is not None and reference in pts else None
        part["pct_rest"] = 100 * rest.reindex(genes).to_numpy() if rest is not None else np.nan
        frames.append(part)
    return pd.concat(frames, ignore_index=True)[TABLE_COLUMNS]


def group_expression(
    adata, groupby: str, genes: Sequence[str], *, groups: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean log-normalised expression, % of cells expressing) of ``genes`` per group: groups x genes.

    What a dot plot draws (dot size: the percentage, colour: the mean) and a group heatmap shows.
    """
    labels = adata.obs[groupby].astype(str).to_numpy()
    order = list(groups) if groups is not None else sorted(set(labels.tolist()))
    cols = adata.var_names.get_indexer([str(g) for g in genes])
    if (cols < 0).any():
        missing = [g for g, c in zip(genes, cols, strict=True) if c < 0]
        raise ConfigError(f"Not in this result: {', '.join(map(str, missing[:5]))}.")
    X, _ = lognorm_matrix(adata)
    sub = X[:, cols]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    sub = np.asarray(sub, dtype=np.float64)
    means, fractions = [], []
    for g in order:
        rows = labels == g
        part = sub[rows]
        means.append(part.mean(axis=0) if rows.any() else np.zeros(len(cols)))
        fractions.append(100 * (part > 0).mean(axis=0) if rows.any() else np.zeros(len(cols)))
    names = [str(g) for g in genes]
    return (
        pd.DataFrame(np.asarray(means), index=order, columns=names),
        pd.DataFrame(np.asarray(fractions), index=order, columns=names),
    )


# ----------------------------------------------------------------------------------------------------
# Annotations and saved results
# ----------------------------------------------------------------------------------------------------


def check_annotation_name(adata, name: str, *, overwrite: bool = False) -> str:
    """A usable name for a new obs column (or uns entry): letters, digits, '_', '-', '.', spaces, at most 64
    characters, starting with a letter or digit; an existing column may be replaced only when it is an
    annotation saved in the app and ``overwrite`` is set."""
    name = str(name).strip()
    if not _NAME.match(name):
        raise ConfigError(
            "An annotation name is 1 to 64 letters, digits, spaces, '_', '-' or '.', starting with a "
            "letter or digit (e.g. 'my_cell_types')."
        )
    if name in adata.obs:
        if name not in _listed(adata, "annotations"):
            raise ConfigError(
                f"The result already has a cell annotation called {name!r} that was not saved in the app; "
                "choose another name."
            )
        if not overwrite:
            raise ConfigError(
                f"An annotation called {name!r} is already saved; choose another name or replace it."
            )
    return name


def annotation_from_selections(
    n_obs: int, selections: Mapping[str, Sequence[int] | np.ndarray], *, rest: str = "other"
) -> pd.Categorical:
    """One label per cell from named selections of rows: the selection's name, ``rest`` for cells in
    none. A cell in several selections takes the last one's name."""
    if not selections:
        raise ConfigError("Keep at least one selection of cells first.")
    if rest in selections:
        raise ConfigError(f"A selection is called {rest!r}, the name given to the cells in none.")
    values = np.full(n_obs, rest, dtype=object)
    for name, rows in selections.items():
        values[_rows(rows, n_obs)] = str(name)
    order = [str(n) for n in selections] + ([rest] if (values == rest).any() else [])
    return pd.Categorical(values, categories=order)


def renamed(values: Sequence[Any] | np.ndarray, mapping: Mapping[str, str]) -> pd.Categorical:
    """Labels with groups renamed (two old names given one new name merge them); unnamed groups keep
    their name. New names must not be empty."""
    clean = {str(k): str(v).strip() for k, v in mapping.items()}
    empty = [k for k, v in clean.items() if not v]
    if empty:
        raise ConfigError(f"Give every group a name (empty for {', '.join(empty[:5])}).")
    old = np.asarray([str(v) for v in values], dtype=object)
    new = np.asarray([clean.get(v, v) for v in old], dtype=object)
    order = list(dict.fromkeys(clean.get(v, v) for v in pd.unique(old)))
    return pd.Categorical(new, categories=order)


def add_annotation(
    adata, name: str, values: Sequence[Any] | np.ndarray, *, source: str = "", overwrite: bool = False
) -> str:
    """Write ``values`` (one label per cell) as the categorical obs column ``name`` and list it in
    ``uns['scgraph']['annotations']`` (with ``source``: how it was made). Returns the name."""
    name = check_annotation_name(adata, name, overwrite=overwrite)
    if len(values) != adata.n_obs:
        raise ConfigError(f"{len(values)} labels for {adata.n_obs} cells.")
    cat = values if isinstance(values, pd.Categorical) else pd.Categorical([str(v) for v in values])
    adata.obs[name] = pd.Categorical(
        [str(v) for v in np.asarray(cat)], categories=[str(c) for c in cat.categories]
    )
    _record(adata, "annotations", name, source)
    return name


def add_de_result(adata, key: str, result: DEResult, *, overwrite: bool = True) -> str:
    """Store ``result`` as ``adata.uns[key]`` in scanpy's rank_genes_groups layout and list it in
    ``uns['scgraph']['de_results']``. Returns the key."""
    key = str(key).strip()
    if not _KEY.match(key):
        raise ConfigError("A result name is 1 to 100 letters, digits, spaces, '_', '-' or '.'.")
    if key in adata.uns and (key not in _listed(adata, "de_results") or not overwrite):
        raise ConfigError(f"The result already holds an entry called {key!r}; choose another name.")
    uns = dict(result.uns)
    uns["params"] = {k: v for k, v in dict(uns["params"]).items() if v is not None}
    for k in ("pts", "pts_rest"):
        if k in uns:
            uns[k] = uns[k].copy()
            uns[k].columns = [str(c) for c in uns[k].columns]
    adata.uns[key] = uns
    _record(adata, "de_results", key, str(uns["params"].get("groupby", "")))
    return key


def save_comparison(
    adata, name: str, result: DEResult, *, rest: str = "other", overwrite: bool = False
) -> str:
    """Save a :func:`compare_cells` result: its cells as the annotation ``name`` (the two sides' names;
    ``rest`` for cells on neither side) and the test as ``uns['rank_genes_groups_<name>']`` with
    ``groupby`` = ``name``, so ``sc.pl.rank_genes_groups_dotplot(adata, key=...)`` finds its groups.
    Returns the uns key."""
    if result.labels is None or len(result.labels) != adata.n_obs:
        raise ConfigError("Only a comparison of selected cells of this result can be saved this way.")
    labels = np.asarray(result.labels, dtype=object)
    if rest in set(labels.tolist()) - {""}:
        rest = f"{rest} cells"
    sides = [str(g) for g in pd.unique(labels) if g != ""]
    values = np.where(labels == "", rest, labels)
    cats = sides + ([rest] if (labels == "").any() else [])
    name = add_annotation(
        adata,
        name,
        pd.Categorical(values, categories=cats),
        source="cells selected on the UMAP",
        overwrite=overwrite,
    )
    uns = dict(result.uns)
    uns["params"] = {**dict(uns["params"]), "groupby": name}
    key = add_de_result(adata, f"rank_genes_groups_{name}", DEResult(uns, result.table, result.groups, {}))
    return key


def _record(adata, listing: str, name: str, source: str) -> None:
    scgraph = dict(adata.uns.get("scgraph", {}) or {})
    names = [n for n in _listed(adata, listing) if n != name] + [name]
    scgraph[listing] = names
    sources = dict(scgraph.get(f"{listing}_source", {}) or {})
    sources[name] = source
    scgraph[f"{listing}_source"] = sources
    adata.uns["scgraph"] = scgraph
