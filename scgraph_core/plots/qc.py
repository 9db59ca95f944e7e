"""Quality-control measures of a dataset and their figure (Data page)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import scipy.sparse as sp
from plotly.subplots import make_subplots

from .style import LAYOUT, PALETTE

# ------------------------------------------------------------------------------------------------
# Data page: quality control
# ------------------------------------------------------------------------------------------------

_TOTAL_COLS = ("total_counts", "n_counts", "nCount_RNA")
_GENES_COLS = ("n_genes_by_counts", "n_genes", "nFeature_RNA")
_MITO_COLS = ("pct_counts_mt", "percent_mito", "percent.mt", "pct_mito")


def _mito_mask(var_names: pd.Index) -> np.ndarray:
    names = pd.Index(var_names).astype(str)
    return np.asarray(names.str.match(r"^(MT|mt|Mt)[-_.:]"), dtype=bool)


def qc_metrics(adata: Any) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-cell quality numbers and what each one was computed from.

    Columns: ``total`` (counts per cell), ``genes`` (expressed genes per cell) and, when gene names
    mark mitochondrial genes (``MT-``, ``mt-``) or the file has such a column, ``mito_pct`` (share of
    the counts on mitochondrial genes, in %). Raw counts are used when they exist (a ``counts`` layer
    or X); otherwise existing QC columns of ``obs`` are reused, or the numbers are computed on X and
    labelled so (a total of log values is not a count).
    """
    from ..data import detect_x_kind

    n = adata.n_obs
    counts = None
    source = ""
    if "counts" in adata.layers and detect_x_kind(adata.layers["counts"]) == "counts":
        counts, source = adata.layers["counts"], "the counts layer"
    elif adata.X is not None and detect_x_kind(adata.X) == "counts":
        counts, source = adata.X, "the raw counts in X"
    table = pd.DataFrame(index=adata.obs_names)
    notes: dict[str, str] = {}
    obs = adata.obs
    mito = _mito_mask(adata.var_names)

    def col(candidates: tuple[str, ...]) -> str | None:
        return next((c for c in candidates if c in obs and pd.api.types.is_numeric_dtype(obs[c])), None)

    if counts is not None:
        M = sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts)
        total = np.asarray(M.sum(axis=1)).reshape(-1)
        genes = np.asarray((M > 0).sum(axis=1)).reshape(-1)
        table["total"], table["genes"] = total, genes
        notes["total"] = f"counts per cell (from {source})"
        notes["genes"] = f"genes with at least one count (from {source})"
        if mito.any():
            mt = np.asarray(M[:, mito].sum(axis=1)).reshape(-1)
            table["mito_pct"] = np.divide(100.0 * mt, total, out=np.zeros(n), where=total > 0)
            notes["mito_pct"] = f"% of counts on the {int(mito.sum())} mitochondrial genes (MT-)"
        return table, notes
    total_col, genes_col, mito_col = col(_TOTAL_COLS), col(_GENES_COLS), col(_MITO_COLS)
    X = adata.X
    if total_col:
        table["total"] = obs[total_col].to_numpy(dtype=float)
        notes["total"] = f"counts per cell (the file's '{total_col}' column; no raw counts are loaded)"
    else:
        table["total"] = np.asarray(X.sum(axis=1)).reshape(-1)
        notes["total"] = "sum of the values in X per cell (X holds no raw counts, so this is not a count)"
    if genes_col:
        table["genes"] = obs[genes_col].to_numpy(dtype=float)
        notes["genes"] = f"expressed genes per cell (the file's '{genes_col}' column)"
    else:
        table["genes"] = np.asarray((X != 0).sum(axis=1)).reshape(-1)
        notes["genes"] = "genes with a non-zero value in X"
    if mito_col:
        values = obs[mito_col].to_numpy(dtype=float)
        # Files store the share either as a fraction (0-1) or in percent.
        table["mito_pct"] = values * 100.0 if np.nanmax(values) <= 1.0 else values
        notes["mito_pct"] = f"% of counts on mitochondrial genes (the file's '{mito_col}' column)"
    return table, notes


def qc_figure(qc: pd.DataFrame, notes: Mapping[str, str] | None = None) -> go.Figure:
    """Histograms of the per-cell QC numbers (:func:`qc_metrics`), one panel each, median dotted.

    ``notes`` (what each number was computed from) go in the hover text of each panel.
    """
    titles = {"total": "Counts per cell", "genes": "Genes per cell", "mito_pct": "Mitochondrial share (%)"}
    cols = [c for c in ("total", "genes", "mito_pct") if c in qc]
    fig = make_subplots(rows=1, cols=max(1, len(cols)), subplot_titles=[titles[c] for c in cols])
    for i, c in enumerate(cols, start=1):
        values = qc[c].to_numpy(dtype=float)
        fig.add_trace(
            go.Histogram(
                x=values[np.isfinite(values)], nbinsx=50, marker_color=PALETTE[i - 1], name=titles[c]
            ),
            row=1,
            col=i,
        )
        median = float(np.nanmedian(values)) if values.size else math.nan
        if math.isfinite(median):
            fig.add_vline(x=median, line_dash="dot", line_color="#444", row=1, col=i)
        fig.update_yaxes(title_text="cells" if i == 1 else None, row=1, col=i)
    fig.update_layout(**LAYOUT, height=300, showlegend=False, bargap=0.05)
    return fig
