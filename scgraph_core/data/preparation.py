"""Preparing the matrices the graphs and models use: the :class:`PrepareSpec` recipe and :func:`prepare`.

:func:`prepare` applies filters, normalisation, HVG and KHVG selection and per-gene scaling and
returns a :class:`Prepared` bundle: a new ``AnnData`` with ``counts`` / ``lognorm`` layers plus the
dense model features and graph input.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ConfigError, DataError
from ..params import from_dict, param, to_dict
from .io import as_float32, short
from .qc import KIND_WORDS, detect_x_kind, nonzero_per, validate


@dataclass(frozen=True)
class PrepareSpec:
    """Preprocessing recipe: filters, normalisation, gene selection and feature scaling.

    Defaults follow CellVGAE (MODELS.md 1.1): log-normalised matrix, 1000 HVGs as min-max scaled
    node features and a separate set of 250 KHVGs (unscaled log values) for building the graph.
    """

    min_genes_per_cell: int = param(
        0, "Drop cells with fewer expressed genes than this", min=0, advanced=True
    )
    min_cells_per_gene: int = param(0, "Drop genes expressed in fewer cells than this", min=0, advanced=True)
    normalize: str = param(
        "auto",
        "auto: library-size normalise + log1p when X holds counts, else use X as is; "
        "library_log1p; log1p only; none",
        choices=("auto", "library_log1p", "log1p", "none"),
    )
    target_sum: float = param(1e4, "Total per cell after library-size normalisation", min=1.0, advanced=True)
    n_hvg: int = param(1000, "Highly variable genes used as model features (0 = all)", min=0)
    n_graph_genes: int = param(
        250, "Highly variable genes used to build the cell graph, KHVG (0 = all)", min=0
    )
    hvg_flavor: str = param(
        "seurat",
        "how highly variable genes are ranked: scanpy's seurat or cell_ranger on the log values, seurat_v3 "
        "on raw counts (needs scikit-misc), or count_variance: the variance of the raw counts (scGNN)",
        choices=("seurat", "cell_ranger", "seurat_v3", "count_variance"),
        advanced=True,
    )
    scale: str = param(
        "minmax",
        "Per-gene feature scaling: min-max to [0, 1], z-score, or none",
        choices=("minmax", "zscore", "none"),
    )
    max_value: float | None = param(
        None, "Clip z-scores to [-max_value, max_value] (zscore only)", min=0.0, advanced=True
    )

    def check(self) -> None:
        """Cross-field rules (called by ``from_dict``)."""
        if self.max_value is not None and self.scale != "zscore":
            raise ConfigError(
                f"max_value clips z-scores, but scale is {self.scale!r}: set scale='zscore' or "
                "leave max_value empty."
            )
        if self.max_value is not None and self.max_value <= 0:
            raise ConfigError(f"max_value must be positive; got {self.max_value}.")


@dataclass
class Prepared:
    """Output of :func:`prepare`.

    ``adata``: new AnnData of the kept cells x kept genes, X = layers["lognorm"] (a copy),
    layers ``counts`` (when raw counts exist) and ``lognorm``, var ``hvg`` / ``graph_genes``,
    obs ``size_factor`` (with counts), ``uns["scgraph"]["prepare"]`` = ``record``.
    ``features``: float32 N x D, the HVG columns of lognorm scaled per gene.
    ``graph_input``: float32 N x KHVG, lognorm restricted to the graph genes, unscaled.
    """

    adata: ad.AnnData
    features: np.ndarray
    feature_genes: list[str]
    graph_input: np.ndarray
    graph_genes: list[str]
    record: dict[str, Any]


def _take(X: np.ndarray | sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> Any:
    """A copy of X restricted to the given rows and columns."""
    all_rows = rows.size == X.shape[0]
    all_cols = cols.size == X.shape[1]
    if sp.issparse(X):
        out = sp.csr_matrix(X)
        out = out if all_rows else out[rows]
        out = out if all_cols else out[:, cols]
        return sp.csr_matrix(out, dtype=np.float32, copy=True)
    arr = np.asarray(X, dtype=np.float32)
    if all_cols:
        return arr[rows] if not all_rows else arr.copy()
    return arr[np.ix_(rows, cols)]


def _row_sums(X: np.ndarray | sp.csr_matrix) -> np.ndarray:
    return np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()


def _scale_rows_log1p(X: Any, factor: np.ndarray | None) -> Any:
    """In place on X (a private copy): multiply row i by factor[i], then log1p."""
    if sp.issparse(X):
        if factor is not None:
            X.data *= np.repeat(factor, np.diff(X.indptr)).astype(np.float32)
        np.log1p(X.data, out=X.data)
        return X
    if factor is not None:
        X *= factor[:, None].astype(np.float32)
    np.log1p(X, out=X)
    return X


def _dense_columns(X: Any, cols: np.ndarray) -> np.ndarray:
    part = X[:, cols]
    part = part.toarray() if sp.issparse(part) else np.array(part)
    return np.ascontiguousarray(part, dtype=np.float32)


def _scale_features(F: np.ndarray, how: str, max_value: float | None) -> np.ndarray:
    """Per-gene scaling in place. Min-max maps constant genes to 0; z-score uses ddof=1."""
    if how == "minmax":
        lo = F.min(axis=0)
        span = F.max(axis=0) - lo
        F -= lo
        F /= np.where(span > 0, span, 1.0).astype(np.float32)
    elif how == "zscore":
        mean = F.mean(axis=0, dtype=np.float64)
        std = F.std(axis=0, dtype=np.float64, ddof=1 if F.shape[0] > 1 else 0)
        F -= mean.astype(np.float32)
        F /= np.where(std > 0, std, 1.0).astype(np.float32)
        if max_value is not None:
            np.clip(F, -max_value, max_value, out=F)
    return F


def _per_gene_scaled(matrix: Any) -> bool:
    """True when the columns look z-scored (``sc.pp.scale``): centred, and 90 % of them with a standard
    deviation within a third of 1 (clipping at max_value and subsetting cells spread it a little)."""
    n = matrix.shape[0]
    if n < 3:
        return False
    total = np.zeros(matrix.shape[1])
    squares = np.zeros(matrix.shape[1])
    for start in range(0, n, 4096):  # row blocks: no float64 copy of a large dense X
        block = matrix[start : start + 4096]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float64)
        total += block.sum(axis=0)
        squares += (block * block).sum(axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    inside = (std > 0.75) & (std < 1.0 / 0.75)
    return bool(np.median(np.abs(mean)) < 0.1 and inside.mean() >= 0.9)


def _select_hvg(
    matrix: Any,
    var_names: pd.Index,
    n_top: int,
    flavor: str,
    what: str,
    notes: list[str],
) -> np.ndarray:
    """Boolean mask of the top ``n_top`` genes by scanpy's HVG ranking (all genes if too few)."""
    n_cells, n_genes = matrix.shape
    if n_top == 0 or n_top >= n_genes:
        if n_top > n_genes:
            notes.append(f"{what}={n_top} asks for more genes than the {n_genes} kept; all genes are used.")
        return np.ones(n_genes, dtype=bool)
    if flavor == "count_variance":
        return _top_variance(matrix, n_top)
    import scanpy as sc

    tmp = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame(index=pd.RangeIndex(n_cells).astype(str)),
        var=pd.DataFrame(index=var_names),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            table = sc.pp.highly_variable_genes(tmp, flavor=flavor, n_top_genes=n_top, inplace=False)
    except ImportError as exc:
        raise DataError(
            f"hvg_flavor={flavor!r} needs a package that is not installed ({short(exc)}). "
            "Install it (pip install scikit-misc) or choose hvg_flavor='seurat'."
        ) from exc
    except Exception as exc:  # scanpy fails on tiny or degenerate data
        raise DataError(
            f"Selecting {n_top} highly variable genes ({what}, flavor {flavor!r}) failed on "
            f"{n_cells} cells x {n_genes} genes: {short(exc)}. With very few cells or genes set "
            f"{what}=0 to use all genes, or try another hvg_flavor."
        ) from exc
    if not table.index.equals(var_names) and var_names.is_unique:
        table = table.reindex(var_names)
    mask = table["highly_variable"].to_numpy(dtype=bool)
    if mask.sum() > n_top:
        # scanpy keeps every gene tied at the cut-off (common on tiny data, where single-gene
        # bins all get the same score); keep exactly n_top, best score first, then gene order.
        if flavor == "seurat_v3":
            score = -table["highly_variable_rank"].to_numpy(dtype=float)
        else:
            score = table["dispersions_norm"].to_numpy(dtype=float)
        score = np.where(np.isfinite(score), score, -np.inf)
        chosen = np.flatnonzero(mask)
        chosen = chosen[np.argsort(-score[chosen], kind="stable")[:n_top]]
        notes.append(
            f"scanpy marked {int(mask.sum())} genes for {what}={n_top} (ties at the cut-off); "
            f"the {n_top} with the highest score were kept."
        )
        mask = np.zeros_like(mask)
        mask[chosen] = True
    if not mask.any():
        raise DataError(
            f"No highly variable genes were found for {what}={n_top}: the genes barely vary "
            f"across these {n_cells} cells. Set {what}=0 to use all genes."
        )
    return mask


def _top_variance(matrix: Any, n_top: int) -> np.ndarray:
    """Boolean mask of the ``n_top`` genes of largest variance (ties: the earlier gene first)."""
    if sp.issparse(matrix):
        m = sp.csr_matrix(matrix, dtype=np.float64)
        mean = np.asarray(m.mean(axis=0)).ravel()
        var = np.asarray(m.multiply(m).mean(axis=0)).ravel() - mean**2
    else:
        var = np.asarray(matrix, dtype=np.float64).var(axis=0)
    mask = np.zeros(var.size, dtype=bool)
    mask[np.argsort(-var, kind="stable")[:n_top]] = True
    return mask


def prepare(adata: ad.AnnData, spec: PrepareSpec | None = None) -> Prepared:
    """Filter, normalise, select genes and scale; returns new objects, never changes ``adata``.

    Steps:

    1. Drop cells with fewer than ``max(1, min_genes_per_cell)`` expressed genes, then genes
       expressed in fewer than ``max(1, min_cells_per_gene)`` of the kept cells, then cells left
       without any expressed gene. "Expressed" is read from the raw counts when there are any,
       else from X.
    2. Raw counts come from a ``counts`` layer holding whole numbers, else from X when X holds
       counts. ``lognorm`` is, per ``normalize``: ``library_log1p``:
       log1p(x_ij * target_sum / sum_j x_ij) on the counts (or on non-log normalised X);
       ``log1p``: log1p(X); ``none``: X as is; ``auto``: ``library_log1p`` when X holds counts
       (or CPM/TPM-like values), otherwise ``none`` (X already log-normalised, as in the
       CellVGAE paper pipeline). Log-transforming scaled data (negatives) is refused.
    3. HVGs (``n_hvg``) and the separate graph genes / KHVG (``n_graph_genes``) are each the
       scanpy ``highly_variable_genes(flavor=hvg_flavor, n_top_genes=n)`` selection on lognorm
       (``seurat_v3`` ranks the counts). 0, or more than the kept genes, means all genes.
    4. ``features`` = the HVG columns of lognorm (original gene order) scaled per gene;
       ``graph_input`` = the KHVG columns of lognorm, unscaled. ``size_factor`` = total counts
       / median total counts of the kept cells.
    """
    spec = PrepareSpec() if spec is None else from_dict(PrepareSpec, to_dict(spec))
    report = validate(adata, min_cells=1)
    report.raise_if_errors()
    x_kind = report.x_kind
    X = as_float32(adata.X)
    notes: list[str] = []

    counts = None
    counts_from = None
    if "counts" in adata.layers and detect_x_kind(adata.layers["counts"]) == "counts":
        counts, counts_from = as_float32(adata.layers["counts"]), "counts layer"
    elif x_kind == "counts":
        counts, counts_from = X, "X"

    method = spec.normalize
    if method == "auto":
        method = "library_log1p" if x_kind in ("counts", "normalized") else "none"
    if method == "library_log1p":
        if counts is not None:
            source, source_name = counts, counts_from
        elif x_kind == "normalized":
            source, source_name = X, "X"
        elif x_kind == "scaled":
            raise DataError(
                "normalize='library_log1p' would log-transform X, but X holds negative values: "
                "it is already scaled. Use normalize='none' to keep it, or load raw counts or "
                "log-normalised data instead."
            )
        else:
            raise DataError(
                "normalize='library_log1p' needs raw counts, but X holds log-normalised values "
                "and there is no `counts` layer. Use normalize='auto' or 'none' to keep X as "
                "it is, or load a file with raw counts."
            )
    elif method == "log1p":
        if x_kind == "scaled":
            raise DataError(
                "normalize='log1p' would log-transform X, but X holds negative values: it is "
                "already scaled. Use normalize='none', or load raw counts or log-normalised data."
            )
        if x_kind == "lognorm":
            notes.append("normalize='log1p' applied to X that already looked log-normalised.")
        source, source_name = X, "X"
    else:
        source, source_name = X, "X"
        if x_kind == "scaled":
            notes.append("X holds scaled values (negatives); it is used as is.")
    if spec.hvg_flavor in ("seurat_v3", "count_variance") and counts is None:
        raise DataError(
            f"hvg_flavor={spec.hvg_flavor!r} ranks genes on raw counts, but this data has none (X is "
            f"{KIND_WORDS[x_kind]} and there is no `counts` layer). Use hvg_flavor='seurat', "
            "or load a file with raw counts."
        )

    # 1. Filters, judged on the counts when present (X may be scaled and dense).
    base = counts if counts is not None else X
    n_cells, n_genes = adata.shape
    cell_keep = nonzero_per(base, axis=1) >= max(1, spec.min_genes_per_cell)
    cells = np.flatnonzero(cell_keep)
    if cells.size == 0:
        raise DataError(
            f"No cell has at least {max(1, spec.min_genes_per_cell)} expressed genes. Lower "
            "min_genes_per_cell."
        )
    gene_counts = nonzero_per(_take(base, cells, np.arange(n_genes)), axis=0)
    genes = np.flatnonzero(gene_counts >= max(1, spec.min_cells_per_gene))
    if genes.size == 0:
        raise DataError(
            f"No gene is expressed in at least {max(1, spec.min_cells_per_gene)} of the "
            f"{cells.size} kept cells. Lower min_cells_per_gene."
        )
    base_kept = _take(base, cells, genes)
    still_expressed = nonzero_per(base_kept, axis=1) > 0
    if not still_expressed.all():  # their only genes were filtered out
        cells = cells[still_expressed]
        base_kept = base_kept[still_expressed]

    # 2. Normalisation on private copies.
    counts_kept = base_kept if counts is not None else None
    totals = None
    if counts_kept is not None:
        totals = _row_sums(counts_kept)
    if method == "library_log1p":
        lognorm = _take(source, cells, genes)
        src_totals = totals if source is counts and totals is not None else _row_sums(lognorm)
        factor = np.divide(spec.target_sum, src_totals, out=np.zeros_like(src_totals), where=src_totals > 0)
        lognorm = _scale_rows_log1p(lognorm, factor)
    elif method == "log1p":
        lognorm = _scale_rows_log1p(_take(source, cells, genes), None)
    else:
        lognorm = _take(source, cells, genes)

    var_names = adata.var_names[genes]
    # 3. Gene selection (scanpy reads its own copy; lognorm is not touched).
    hvg_input = counts_kept if spec.hvg_flavor in ("seurat_v3", "count_variance") else lognorm
    n_hvg, n_graph_genes = spec.n_hvg, spec.n_graph_genes
    if x_kind == "scaled" and method == "none" and hvg_input is lognorm and _per_gene_scaled(lognorm):
        # Per-gene scaled X: every gene has about unit variance, so a dispersion ranking picks noise.
        asked = [
            f"{name}={n}"
            for name, n in (("n_hvg", n_hvg), ("n_graph_genes", n_graph_genes))
            if 0 < n < genes.size
        ]
        if asked:
            notes.append(
                f"X holds scaled values, in which every gene has about the same variance, so highly "
                f"variable genes cannot be ranked: all {genes.size} genes are used ({', '.join(asked)} "
                "ignored). Load log-normalised data or raw counts to select genes."
            )
        n_hvg = n_graph_genes = 0
    hvg = _select_hvg(hvg_input, var_names, n_hvg, spec.hvg_flavor, "n_hvg", notes)
    if n_graph_genes == n_hvg:
        graph = hvg.copy()
    else:
        graph = _select_hvg(hvg_input, var_names, n_graph_genes, spec.hvg_flavor, "n_graph_genes", notes)
    hvg_idx = np.flatnonzero(hvg)
    graph_idx = np.flatnonzero(graph)

    # 4. Dense outputs.
    features = _scale_features(_dense_columns(lognorm, hvg_idx), spec.scale, spec.max_value)
    graph_input = _dense_columns(lognorm, graph_idx)

    record: dict[str, Any] = {
        "spec": to_dict(spec),
        "x_kind": x_kind,
        "normalization_applied": method,
        "normalization_source": source_name,
        "counts_source": counts_from,
        "n_hvg_used": int(hvg_idx.size),
        "n_graph_genes_used": int(graph_idx.size),
        "cells_removed": int(n_cells - cells.size),
        "genes_removed": int(n_genes - genes.size),
        "n_cells": int(cells.size),
        "n_genes": int(genes.size),
        "notes": notes,
    }
    out = _new_adata(adata, cells, genes, lognorm, counts_kept, totals)
    out.var["hvg"] = hvg
    out.var["graph_genes"] = graph
    out.uns.setdefault("scgraph", {})["prepare"] = copy.deepcopy(record)
    return Prepared(
        adata=out,
        features=features,
        feature_genes=[str(g) for g in var_names[hvg_idx]],
        graph_input=graph_input,
        graph_genes=[str(g) for g in var_names[graph_idx]],
        record=record,
    )


def _rows_of(value: Any, rows: np.ndarray) -> Any:
    if isinstance(value, pd.DataFrame):
        return value.iloc[rows].copy()
    if sp.issparse(value):
        return sp.csr_matrix(value)[rows]
    return np.asarray(value)[rows].copy()


def _new_adata(
    adata: ad.AnnData,
    cells: np.ndarray,
    genes: np.ndarray,
    lognorm: Any,
    counts: Any,
    totals: np.ndarray | None,
) -> ad.AnnData:
    """The prepared AnnData: kept cells x kept genes, annotations copied, graphs dropped."""
    obs = adata.obs.iloc[cells].copy()
    var = adata.var.iloc[genes].copy()
    layers: dict[str, Any] = {"lognorm": lognorm}
    if counts is not None:
        layers["counts"] = counts
    if totals is not None:
        median = float(np.median(totals))
        obs["size_factor"] = (totals / median if median > 0 else np.ones_like(totals)).astype(np.float32)
    uns = copy.deepcopy(dict(adata.uns))
    uns.pop("neighbors", None)  # refers to obsp graphs, which are not carried over
    return ad.AnnData(
        X=lognorm.copy(),
        obs=obs,
        var=var,
        layers=layers,
        obsm={k: _rows_of(v, cells) for k, v in adata.obsm.items()},
        varm={k: _rows_of(v, genes) for k, v in adata.varm.items()},
        uns=uns,
    )
