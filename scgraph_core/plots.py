"""Figures for the app (and notebooks): plotly figures and a pyvis cell-graph page. No Streamlit here.

Every builder takes arrays or tables and returns a ``plotly.graph_objects.Figure`` (or, for the
attention graph, a self-contained HTML string): the caller decides where it goes. Scatter plots of
cells use WebGL (``Scattergl``), which stays responsive with 100,000 cells. Each point carries its
cell's row number in ``customdata`` so a selection on the plot maps back to cells
(:func:`selected_cells`). Browsers give a page only a few WebGL contexts (each WebGL figure takes its
own, and the oldest go blank past the limit), so many colourings of the same cells are drawn as one
figure with subplots (:func:`embedding_panels`), with SVG markers when there are few points in all.

The attention graph (:func:`attention_graph_html`) is built with pyvis and rendered through this
package's own template (package data, ``scgraph_core/assets/attention_graph.html``): the vis-network
library is inlined from the pyvis package (nothing is fetched from the internet), the node and edge
data are embedded with Jinja's ``tojson`` (which escapes ``<``, ``>``, ``&`` and quotes), the legend
is HTML-escaped, and vis-network draws labels on a canvas and tooltips with ``innerText``. A cell type
called ``<script>`` therefore appears as text and never runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import scipy.sparse as sp
from plotly.subplots import make_subplots

__all__ = [
    "ATTENTION_COLORSCALE",
    "Panel",
    "attention_graph_html",
    "category_colors",
    "category_order",
    "composition_figure",
    "dot_plot_figure",
    "embedding_panels",
    "embedding_scatter",
    "gene_gene_figure",
    "gene_weight_figure",
    "group_heatmap_figure",
    "heatmap_figure",
    "imputation_histogram",
    "label_colors",
    "loss_figure",
    "obs_colors",
    "qc_figure",
    "qc_metrics",
    "selected_cells",
    "validation_figure",
    "volcano_figure",
]

# The attention graph's HTML template: package data (scgraph_core/assets), read by resources.asset_text.
ATTENTION_TEMPLATE = "attention_graph.html"
NOISE_COLOR = "#c7c7c7"
MISSING_COLOR = "#e0e0e0"
# Enough distinct colours for the cell types of a typical dataset (plotly's qualitative sets).
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#e6550d",
    "#31a354",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#fd8d3c",
    "#74c476",
    "#ad494a",
    "#a55194",
    "#6baed6",
    "#fdae6b",
    "#a1d99b",
    "#d6616b",
    "#ce6dbd",
    "#9ecae1",
    "#fdd0a2",
    "#c7e9c0",
    "#e7969c",
    "#de9ed6",
]
_MAX_LEGEND = 60  # more categories than this are drawn as one trace coloured by code
_NOISE_NAMES = {"noise", "-1", "nan", "none", ""}
_LAYOUT = {"template": "plotly_white", "margin": {"l": 10, "r": 10, "t": 40, "b": 10}}
# Attention scores: a sequential scale whose lightness rises monotonically from low to high (dark to
# light), so low and high never look alike (tests check the relative luminance of its stops).
ATTENTION_COLORSCALE = "Viridis"
# A figure with at most this many points in all draws SVG markers (no WebGL context); above it, WebGL.
SVG_MAX_POINTS = 30_000


def _natural_key(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text)))


def category_colors(categories: Sequence[Any], given: Sequence[str] | None = None) -> dict[str, str]:
    """A colour per category: ``given`` (e.g. ``adata.uns['celltype_colors']``) when it fits, else the
    built-in palette; noise and missing values are grey."""
    names = [str(c) for c in categories]
    out: dict[str, str] = {}
    usable = list(given) if given is not None and len(given) >= len(names) else None
    i = 0
    for j, name in enumerate(names):
        if name.lower() in _NOISE_NAMES:
            out[name] = NOISE_COLOR
        elif usable is not None:
            out[name] = str(usable[j])
        else:
            out[name] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return out


def _category_sort_key(name: str) -> tuple:
    return (name.lower() in _NOISE_NAMES, _natural_key(name))


def _as_labels(values: Any) -> pd.Series:
    # Labels as text, missing values as "nan" (the name every figure uses for them).
    series = pd.Series(values).astype("object")
    return series.where(pd.notna(series), "nan").astype(str)


def category_order(values: Any) -> list[str]:
    """The distinct labels of ``values`` as text, in natural order (A2 before A10), noise last."""
    return sorted(set(_as_labels(values)), key=_category_sort_key)


def label_colors(column: Any, given: Sequence[str] | None = None) -> dict[str, str]:
    """THE colour of every label of a whole obs column, so a label keeps its colour in every figure and
    every page, whatever subset of cells a figure shows: pass the full column, never a subset.

    Colours come from the built-in palette in :func:`category_order` of the column's labels (for a
    categorical column, all its declared categories count, used or not). ``given`` colours (scanpy's
    ``uns['<key>_colors']``, one per declared category in declaration order) win when there are enough.
    Noise and missing values are grey.
    """
    series = column if isinstance(column, pd.Series) else pd.Series(column)
    if isinstance(series.dtype, pd.CategoricalDtype):
        declared = [str(c) for c in series.cat.categories]
        names = sorted(set(declared) | set(_as_labels(series)), key=_category_sort_key)
        if given is not None and len(given) >= len(declared):
            out = category_colors(names)  # grey for noise and missing values
            for name, colour in zip(declared, given, strict=False):
                if name.lower() not in _NOISE_NAMES:
                    out[name] = str(colour)
            return out
        return category_colors(names)
    names = category_order(series)
    return category_colors(names, given if given is not None and len(given) >= len(names) else None)


def obs_colors(adata: Any, key: str) -> dict[str, str]:
    """:func:`label_colors` of ``adata.obs[key]``, with the colours scanpy stored in
    ``adata.uns[key + '_colors']`` when there are enough of them."""
    given = adata.uns.get(f"{key}_colors") if hasattr(adata, "uns") else None
    return label_colors(adata.obs[key], None if given is None else [str(c) for c in given])


def _point_size(n: int) -> float:
    return 7.0 if n <= 2_000 else 5.0 if n <= 20_000 else 3.5 if n <= 100_000 else 2.5


def _is_categorical(values: Any) -> bool:
    if isinstance(values, pd.Series):
        dtype = values.dtype
        return isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "OSUb"
    arr = np.asarray(values)
    return arr.dtype.kind in "OSUb"


def embedding_scatter(
    coords: np.ndarray,
    values: Any = None,
    *,
    name: str = "",
    categorical: bool | None = None,
    colors: Mapping[str, str] | None = None,
    colorscale: str = "Viridis",
    hover: Sequence[str] | None = None,
    title: str | None = None,
    height: int = 520,
    point_size: float | None = None,
    dragmode: str | None = None,
    axis_names: tuple[str, str] = ("UMAP 1", "UMAP 2"),
    cmid: float | None = None,
) -> go.Figure:
    """Cells on a 2-D layout (UMAP), coloured by a category or a number, drawn with WebGL.

    Categorical ``values`` get one trace per category (click the legend to hide one); numbers get a
    colour bar. ``customdata`` of every point is its row number in ``coords``.
    """
    xy = np.asarray(coords, dtype=np.float32)
    n = xy.shape[0]
    size = point_size or _point_size(n)
    fig = go.Figure()
    index = np.arange(n, dtype=np.int32)  # int32 and float32 keep the page small at 100k cells
    hover_arr = None if hover is None else np.asarray(hover, dtype=object)
    marker_line = {"width": 0}
    if values is None:
        fig.add_trace(
            go.Scattergl(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers",
                marker={"size": size, "color": _PALETTE[0], "line": marker_line},
                customdata=index,
                text=hover_arr,
                hovertemplate="%{text}<extra></extra>" if hover_arr is not None else None,
                name="cells",
                showlegend=False,
            )
        )
    else:
        if categorical is None:
            categorical = _is_categorical(values)
        if categorical:
            series = _as_labels(values)
            cats = category_order(series)
            palette = dict(category_colors(cats)) if colors is None else dict(colors)
            if len(cats) > _MAX_LEGEND:
                codes = pd.Categorical(series, categories=cats).codes
                fig.add_trace(
                    go.Scattergl(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        mode="markers",
                        marker={"size": size, "color": codes, "colorscale": "Turbo", "line": marker_line},
                        customdata=index,
                        text=series.to_numpy() if hover_arr is None else hover_arr,
                        hovertemplate="%{text}<extra></extra>",
                        name=name,
                        showlegend=False,
                    )
                )
            else:
                arr = series.to_numpy()
                for cat in cats:
                    rows = np.flatnonzero(arr == cat).astype(np.int32)
                    text = hover_arr[rows] if hover_arr is not None else None
                    fig.add_trace(
                        go.Scattergl(
                            x=xy[rows, 0],
                            y=xy[rows, 1],
                            mode="markers",
                            marker={
                                "size": size,
                                "color": palette.get(cat, NOISE_COLOR),
                                "line": marker_line,
                            },
                            customdata=rows,
                            text=text,
                            hovertemplate=(
                                f"{_hover_safe(cat)}<br>%{{text}}<extra></extra>"
                                if text is not None
                                else None
                            ),
                            name=f"{cat} ({rows.size:,})",
                        )
                    )
        else:
            vals = np.asarray(values, dtype=np.float64)
            finite = np.isfinite(vals)
            if (~finite).any():
                rows = np.flatnonzero(~finite).astype(np.int32)
                fig.add_trace(
                    go.Scattergl(
                        x=xy[rows, 0],
                        y=xy[rows, 1],
                        mode="markers",
                        marker={"size": size, "color": MISSING_COLOR, "line": marker_line},
                        customdata=rows,
                        hoverinfo="skip",
                        name="no value",
                    )
                )
            # Highest values on top, so a gene's expressing cells are not hidden under the others.
            rows = np.flatnonzero(finite)
            rows = rows[np.argsort(vals[rows], kind="stable")].astype(np.int32)
            text = hover_arr[rows] if hover_arr is not None else None
            marker: dict[str, Any] = {
                "size": size,
                "color": vals[rows].astype(np.float32),
                "colorscale": colorscale,
                "showscale": True,
                "colorbar": {"title": {"text": name}, "thickness": 14},
                "line": marker_line,
            }
            if cmid is not None:
                marker["cmid"] = cmid
            fig.add_trace(
                go.Scattergl(
                    x=xy[rows, 0],
                    y=xy[rows, 1],
                    mode="markers",
                    marker=marker,
                    customdata=rows,
                    text=text,
                    hovertemplate=("%{text}<br>" if text is not None else "")
                    + f"{_hover_safe(name)}: %{{marker.color:.3g}}<extra></extra>",
                    name=name,
                    showlegend=False,
                )
            )
    fig.update_layout(
        **_LAYOUT,
        height=height,
        title={"text": title} if title else None,
        legend={"itemsizing": "constant", "title": {"text": name}},
        dragmode=dragmode,
        uirevision="keep",  # keep zoom and legend clicks when the colour changes
    )
    fig.update_xaxes(title=axis_names[0], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(
        title=axis_names[1], showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x"
    )
    return fig


class Panel(NamedTuple):
    """One colouring of the cells in :func:`embedding_panels`: a number per cell and its labels."""

    title: str
    values: Any
    name: str = ""
    colorscale: str = "Viridis"


def embedding_panels(
    coords: np.ndarray,
    panels: Sequence[Panel],
    *,
    columns: int = 2,
    panel_height: int = 380,
    axis_names: tuple[str, str] = ("UMAP 1", "UMAP 2"),
    webgl: bool | None = None,
) -> go.Figure:
    """Several numeric colourings of the same cells in ONE figure: a subplot per panel, row by row,
    each with its own colour bar (highest values on top, missing values grey).

    One figure holds at most one WebGL context however many panels it has; ``webgl=None`` draws SVG
    markers (none at all) when ``len(coords) * len(panels) <= SVG_MAX_POINTS``. ``customdata`` of
    every point is its row number in ``coords``.
    """
    xy = np.asarray(coords, dtype=np.float32)
    n = xy.shape[0]
    columns = max(1, min(columns, len(panels) or 1))
    n_rows = max(1, math.ceil(len(panels) / columns))
    use_gl = n * len(panels) > SVG_MAX_POINTS if webgl is None else webgl
    trace = go.Scattergl if use_gl else go.Scatter
    size = _point_size(n) if use_gl else min(_point_size(n), 5.0)
    fig = make_subplots(
        rows=n_rows,
        cols=columns,
        subplot_titles=[_title_safe(p.title) for p in panels] or None,
        horizontal_spacing=0.14 if columns > 1 else 0.02,
        vertical_spacing=min(0.08, 0.4 / n_rows),
    )
    for i, panel in enumerate(panels):
        row, col = divmod(i, columns)
        row, col = row + 1, col + 1
        vals = np.asarray(panel.values, dtype=np.float64).reshape(-1)
        finite = np.isfinite(vals)
        if (~finite).any():
            rows = np.flatnonzero(~finite).astype(np.int32)
            fig.add_trace(
                trace(
                    x=xy[rows, 0],
                    y=xy[rows, 1],
                    mode="markers",
                    marker={"size": size, "color": MISSING_COLOR, "line": {"width": 0}},
                    customdata=rows,
                    hoverinfo="skip",
                    name=f"{panel.title}: no value",
                    showlegend=False,
                ),
                row=row,
                col=col,
            )
        rows = np.flatnonzero(finite)
        rows = rows[np.argsort(vals[rows], kind="stable")].astype(np.int32)
        sub = fig.get_subplot(row, col)
        _x0, x1 = sub.xaxis.domain
        y0, y1 = sub.yaxis.domain
        fig.add_trace(
            trace(
                x=xy[rows, 0],
                y=xy[rows, 1],
                mode="markers",
                marker={
                    "size": size,
                    "color": vals[rows].astype(np.float32),
                    "colorscale": panel.colorscale,
                    "showscale": True,
                    "colorbar": {
                        "title": {"text": _title_safe(panel.name)},
                        "thickness": 12,
                        "x": x1 + 0.005,
                        "xanchor": "left",
                        "y": (y0 + y1) / 2,
                        "yanchor": "middle",
                        "len": y1 - y0,
                    },
                    "line": {"width": 0},
                },
                customdata=rows,
                hovertemplate=f"{_hover_safe(panel.name)}: %{{marker.color:.3g}}<extra></extra>",
                name=panel.title,
                showlegend=False,
            ),
            row=row,
            col=col,
        )
        fig.update_xaxes(title_text=axis_names[0], row=row, col=col)
        fig.update_yaxes(
            title_text=axis_names[1], scaleanchor="x" if i == 0 else f"x{i + 1}", row=row, col=col
        )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(**_LAYOUT, height=panel_height * n_rows, uirevision="keep")
    return fig


def _title_safe(text: Any) -> str:
    # Titles and colour-bar titles are rendered as (limited) HTML.
    import html

    return html.escape(str(text))


def _hover_safe(text: Any) -> str:
    # Plotly renders hover templates as (limited) HTML: show category names as text.
    import html

    return html.escape(str(text)).replace("%", "%%").replace("{", "&#123;").replace("}", "&#125;")


def selected_cells(fig: go.Figure, selection: Mapping[str, Any] | None) -> np.ndarray:
    """Row numbers of the cells selected on ``fig`` (Streamlit's plotly selection state)."""
    if not selection:
        return np.empty(0, dtype=np.int64)
    points = selection.get("points") or []
    out = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None:
            out.append(int(cd))
            continue
        curve, idx = p.get("curve_number"), p.get("point_index", p.get("point_number"))
        if curve is None or idx is None or curve >= len(fig.data):
            continue
        data = fig.data[curve].customdata
        if data is not None and idx < len(data):
            out.append(int(np.asarray(data).reshape(-1)[idx]))
    return np.unique(np.asarray(out, dtype=np.int64))


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
    from .data import detect_x_kind

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
                x=values[np.isfinite(values)], nbinsx=50, marker_color=_PALETTE[i - 1], name=titles[c]
            ),
            row=1,
            col=i,
        )
        median = float(np.nanmedian(values)) if values.size else math.nan
        if math.isfinite(median):
            fig.add_vline(x=median, line_dash="dot", line_color="#444", row=1, col=i)
        fig.update_yaxes(title_text="cells" if i == 1 else None, row=1, col=i)
    fig.update_layout(**_LAYOUT, height=300, showlegend=False, bargap=0.05)
    return fig


# ------------------------------------------------------------------------------------------------
# Training page
# ------------------------------------------------------------------------------------------------

_NOT_TERMS = {"stage", "epoch"}


def loss_terms(history: pd.DataFrame) -> list[str]:
    """The loss columns of a training history: 'loss' and each term (validation scores excluded)."""
    return [
        c
        for c in history.columns
        if c not in _NOT_TERMS and not str(c).startswith(("val_", "test_")) and history[c].notna().any()
    ]


def loss_figure(history: pd.DataFrame, *, log_y: bool = False, height: int = 320) -> go.Figure:
    """One small panel per loss term against the epoch (terms have very different scales)."""
    terms = loss_terms(history) if not history.empty else []
    n = max(1, len(terms))
    fig = make_subplots(rows=1, cols=n, subplot_titles=terms or ["loss"], horizontal_spacing=0.06)
    stages = list(dict.fromkeys(history["stage"])) if "stage" in history else [None]
    for i, term in enumerate(terms, start=1):
        for j, stage in enumerate(stages):
            part = history if stage is None else history[history["stage"] == stage]
            part = part[part[term].notna()]
            fig.add_trace(
                go.Scatter(
                    x=part["epoch"],
                    y=part[term],
                    mode="lines",
                    line={"color": _PALETTE[j % len(_PALETTE)], "width": 2},
                    name=str(stage or term),
                    legendgroup=str(stage),
                    showlegend=i == 1 and len(stages) > 1,
                ),
                row=1,
                col=i,
            )
        fig.update_xaxes(title_text="epoch", row=1, col=i)
        if log_y:
            fig.update_yaxes(type="log", row=1, col=i)
    fig.update_layout(**_LAYOUT, height=height)
    return fig


def validation_figure(history: pd.DataFrame, *, height: int = 300) -> go.Figure | None:
    """Validation scores (columns starting with ``val_``) against the epoch; None when there are none."""
    cols = [c for c in history.columns if str(c).startswith("val_") and history[c].notna().any()]
    if not cols:
        return None
    fig = go.Figure()
    for i, c in enumerate(cols):
        part = history[history[c].notna()]
        fig.add_trace(
            go.Scatter(
                x=part["epoch"],
                y=part[c],
                mode="lines+markers",
                name=str(c).removeprefix("val_").upper(),
                line={"color": _PALETTE[i % len(_PALETTE)]},
            )
        )
    fig.update_layout(
        **_LAYOUT,
        height=height,
        yaxis={"title": "score on held-out edges"},
        xaxis={"title": "epoch"},
    )
    return fig


# ------------------------------------------------------------------------------------------------
# Tables as figures
# ------------------------------------------------------------------------------------------------


def composition_figure(
    labels: Sequence[Any], *, title: str = "", colors: Mapping[str, str] | None = None
) -> go.Figure:
    """Horizontal bars: how many of the given cells carry each label. Pass ``colors`` from
    :func:`label_colors` of the whole column so each bar has its label's colour on every page."""
    counts = _as_labels(list(labels)).value_counts()
    counts = counts.iloc[::-1]  # largest on top
    palette = dict(colors) if colors is not None else category_colors(category_order(counts.index))
    fig = go.Figure(
        go.Bar(
            x=counts.to_numpy(),
            y=[str(c) for c in counts.index],
            orientation="h",
            marker_color=[palette.get(c, NOISE_COLOR) for c in counts.index],
            text=[f"{v:,} ({v / counts.sum():.0%})" for v in counts.to_numpy()],
            textposition="auto",
        )
    )
    fig.update_layout(
        **_LAYOUT, height=max(220, 26 * len(counts) + 80), title={"text": title} if title else None
    )
    fig.update_xaxes(title="cells")
    return fig


def heatmap_figure(
    table: pd.DataFrame, *, title: str = "", x_title: str = "", y_title: str = "", colorscale: str = "Blues"
) -> go.Figure:
    """A heatmap of a numeric table (rows on y, columns on x), e.g. latent-dimension participation."""
    fig = go.Figure(
        go.Heatmap(
            z=table.to_numpy(dtype=float),
            x=[str(c) for c in table.columns],
            y=[str(r) for r in table.index],
            colorscale=colorscale,
            colorbar={"thickness": 12},
            hovertemplate=f"{_hover_safe(y_title)} %{{y}}<br>{_hover_safe(x_title)} %{{x}}<br>%{{z:.3g}}<extra></extra>",
        )
    )
    fig.update_layout(
        **_LAYOUT, height=max(300, 14 * len(table) + 100), title={"text": title} if title else None
    )
    fig.update_xaxes(title=x_title, type="category")
    fig.update_yaxes(title=y_title, type="category", autorange="reversed")
    return fig


def _label_safe(text: Any) -> str:
    # Plotly draws tick labels and annotations as (limited) HTML: show gene and group names as text.
    import html

    return html.escape(str(text))


def dot_plot_figure(
    means: pd.DataFrame, fractions: pd.DataFrame, *, title: str = "", max_size: float = 22.0
) -> go.Figure:
    """scanpy-style dot plot: groups (rows) x genes (columns); a dot's size is the % of the group's cells
    expressing the gene, its colour the mean log-normalised expression in the group."""
    groups = [_label_safe(g) for g in means.index]
    genes = [_label_safe(g) for g in means.columns]
    gx, gy = np.meshgrid(np.arange(len(genes)), np.arange(len(groups)))
    pct = fractions.to_numpy(dtype=float)
    mean = means.to_numpy(dtype=float)
    fig = go.Figure(
        go.Scatter(
            x=np.asarray(genes, dtype=object)[gx.ravel()],
            y=np.asarray(groups, dtype=object)[gy.ravel()],
            mode="markers",
            marker={
                "size": np.maximum(2.0, max_size * np.sqrt(pct.ravel() / 100.0)),
                "color": mean.ravel(),
                "colorscale": "Reds",
                "cmin": 0.0,
                "colorbar": {"title": {"text": "mean"}, "thickness": 12},
                "line": {"width": 0.5, "color": "#555"},
            },
            customdata=np.stack([pct.ravel(), mean.ravel()], axis=1),
            hovertemplate="%{y} · %{x}<br>%{customdata[0]:.0f}% of cells express it"
            "<br>mean %{customdata[1]:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        **_LAYOUT,
        height=max(260, 28 * len(groups) + 140),
        title={"text": title} if title else None,
    )
    fig.update_xaxes(title="gene", type="category", tickangle=-60, categoryorder="array", categoryarray=genes)
    fig.update_yaxes(
        title="group", type="category", autorange="reversed", categoryorder="array", categoryarray=groups
    )
    return fig


def group_heatmap_figure(means: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Mean expression per group (rows) of genes (columns), each gene scaled to 0-1 over the groups
    (scanpy's matrixplot with ``standard_scale='var'``), so genes of different levels compare."""
    m = means.to_numpy(dtype=float)
    lo, hi = m.min(axis=0, keepdims=True), m.max(axis=0, keepdims=True)
    scaled = np.divide(m - lo, hi - lo, out=np.zeros_like(m), where=hi > lo)
    table = pd.DataFrame(
        scaled,
        index=[_label_safe(g) for g in means.index],
        columns=[_label_safe(g) for g in means.columns],
    )
    fig = heatmap_figure(table, title=title, x_title="gene", y_title="group", colorscale="Viridis")
    fig.update_xaxes(tickangle=-60)
    return fig


def volcano_figure(
    table: pd.DataFrame,
    *,
    lfc: float = 1.0,
    alpha: float = 0.05,
    n_labels: int = 10,
    title: str = "",
) -> go.Figure:
    """Volcano plot of one comparison: log2 fold change (x) against -log10 adjusted p-value (y).

    ``table`` has columns gene, logfoldchange, pval_adj (one group of :class:`scgraph_core.de.DEResult`'s
    table). Genes with |log fold change| >= ``lfc`` and adjusted p < ``alpha`` are coloured (up: red,
    down: blue); the ``n_labels`` most significant of them are named. p-values of 0 are drawn at the
    smallest positive double.
    """
    lf = table["logfoldchange"].to_numpy(dtype=float)
    lf = np.where(np.isfinite(lf), lf, 0.0)
    p = np.clip(table["pval_adj"].to_numpy(dtype=float), np.finfo(float).tiny, 1.0)
    y = -np.log10(p)
    genes = np.asarray([_hover_safe(g) for g in table["gene"]], dtype=object)
    up = (lf >= lfc) & (p < alpha)
    down = (lf <= -lfc) & (p < alpha)
    fig = go.Figure()
    for mask, name, color in (
        (~(up | down), "not significant", NOISE_COLOR),
        (up, "higher in the group", _PALETTE[3]),
        (down, "lower in the group", _PALETTE[0]),
    ):
        fig.add_trace(
            go.Scattergl(
                x=lf[mask],
                y=y[mask],
                mode="markers",
                name=f"{name} ({int(mask.sum()):,})",
                marker={"size": 6, "color": color},
                text=genes[mask],
                hovertemplate="%{text}<br>log2 fold change %{x:.2f}<br>-log10 adj. p %{y:.1f}<extra></extra>",
            )
        )
    named = np.flatnonzero(up | down)
    named = named[np.argsort(-y[named] - 1e-3 * np.abs(lf[named]), kind="stable")][:n_labels]
    for i in named:
        fig.add_annotation(
            x=lf[i],
            y=y[i],
            text=_label_safe(table["gene"].iloc[i]),
            showarrow=False,
            yshift=9,
            font={"size": 10},
        )
    fig.add_hline(y=-np.log10(alpha), line={"dash": "dot", "color": "#999", "width": 1})
    for x in (-lfc, lfc):
        fig.add_vline(x=x, line={"dash": "dot", "color": "#999", "width": 1})
    fig.update_layout(**_LAYOUT, height=460, title={"text": title} if title else None)
    fig.update_xaxes(title="log2 fold change")
    fig.update_yaxes(title="-log10 adjusted p-value")
    return fig


def gene_weight_figure(weights: np.ndarray, gene: str, *, matrix: str = "P_mu") -> go.Figure:
    """A gene's row of P_mu (or P_sigma): its weight on every latent dimension."""
    w = np.asarray(weights, dtype=float)
    fig = go.Figure(
        go.Bar(
            x=np.arange(w.size),
            y=w,
            marker_color=np.where(w >= 0, _PALETTE[0], _PALETTE[3]),
            hovertemplate="dimension %{x}: %{y:.3g}<extra></extra>",
        )
    )
    fig.update_layout(**_LAYOUT, height=280, title={"text": f"{_hover_safe(gene)}: {matrix} weights"})
    fig.update_xaxes(title="latent dimension", dtick=max(1, w.size // 25))
    fig.update_yaxes(title="weight")
    return fig


# ------------------------------------------------------------------------------------------------
# Imputation page
# ------------------------------------------------------------------------------------------------


def imputation_histogram(
    observed: np.ndarray, imputed: np.ndarray, *, gene: str = "", scale: str = ""
) -> go.Figure:
    """Distribution of a gene's observed and imputed values (overlaid), zeros of the observed counted."""
    obs = np.asarray(observed, dtype=float).reshape(-1)
    imp = np.asarray(imputed, dtype=float).reshape(-1)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=obs, name="observed", opacity=0.6, nbinsx=60, marker_color=_PALETTE[7]))
    fig.add_trace(go.Histogram(x=imp, name="imputed", opacity=0.6, nbinsx=60, marker_color=_PALETTE[0]))
    zero_share = float(np.mean(obs == 0)) if obs.size else 0.0
    fig.update_layout(
        **_LAYOUT,
        barmode="overlay",
        height=320,
        title={"text": f"{_hover_safe(gene)}: {zero_share:.0%} of cells are 0 before imputation"},
    )
    fig.update_xaxes(title=f"value ({scale})" if scale else "value")
    fig.update_yaxes(title="cells")
    return fig


def gene_gene_figure(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    genes: tuple[str, str],
    *,
    labels: Sequence[Any] | None = None,
    colors: Mapping[str, str] | None = None,
    label_name: str = "",
    value_name: str = "",
) -> go.Figure:
    """Two genes against each other, before (observed) and after imputation, with Pearson r.

    With ``labels`` (one per cell) the points are coloured by label, one legend entry per label
    (clicking it hides that label in both panels); ``colors`` should come from :func:`label_colors`
    of the whole column. Axis titles name the gene and, with ``value_name``, the scale of the values.
    """
    titles = []
    for name, (x, y) in (("observed", before), ("imputed", after)):
        r = _pearson(x, y)
        titles.append(f"{name}: r = {r:.2f}" if math.isfinite(r) else name)
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.08)
    label_arr = None if labels is None else _as_labels(list(labels)).to_numpy()
    if label_arr is not None:
        cats = category_order(label_arr)
        palette = dict(colors) if colors is not None else category_colors(cats)
        groups = [(cat, np.flatnonzero(label_arr == cat), palette.get(cat, NOISE_COLOR)) for cat in cats]
    for i, (x, y) in enumerate((before, after), start=1):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        parts = [("cells", np.arange(x.size), _PALETTE[i - 1])] if label_arr is None else groups
        for cat, rows, colour in parts:
            fig.add_trace(
                go.Scattergl(
                    x=x[rows],
                    y=y[rows],
                    mode="markers",
                    marker={"size": 4, "opacity": 0.6, "color": colour},
                    hoverinfo="skip",
                    name=f"{cat} ({rows.size:,})",
                    legendgroup=cat,
                    showlegend=label_arr is not None and i == 1,
                ),
                row=1,
                col=i,
            )
        unit = f" ({_hover_safe(value_name)})" if value_name else ""
        fig.update_xaxes(title_text=_hover_safe(genes[0]) + unit, row=1, col=i)
        fig.update_yaxes(title_text=_hover_safe(genes[1]) + unit, row=1, col=i)
    legend = {"title": {"text": _title_safe(label_name)}} if label_name else {}
    fig.update_layout(**_LAYOUT, height=380, showlegend=label_arr is not None, legend=legend)
    return fig


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


# ------------------------------------------------------------------------------------------------
# Attention page: the cell graph (pyvis)
# ------------------------------------------------------------------------------------------------


def _template_env():
    import jinja2
    import pyvis

    from .resources import asset_text

    # Our template first (package data); the pyvis package's folder so it can inline vis-network (no internet).
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FunctionLoader(lambda name: asset_text(name) if name == ATTENTION_TEMPLATE else None),
            jinja2.FileSystemLoader(str(Path(pyvis.__file__).resolve().parent / "templates")),
        ]
    )
    return jinja2.Environment(loader=loader, autoescape=True)


def attention_graph_html(
    edges: pd.DataFrame,
    *,
    cell_names: Sequence[str],
    groups: Sequence[Any] | None = None,
    colors: Mapping[str, str] | None = None,
    group_name: str = "cell type",
    title: str = "",
    height: int = 620,
    show_labels: bool = False,
    physics: bool = True,
    weight_name: str = "attention",
) -> str:
    """A self-contained HTML page with the interactive attention-weighted cell graph (pyvis/vis-network).

    ``edges`` has columns source, target (cell row numbers) and weight. Nodes are the cells those edges
    touch, coloured by ``groups`` (the cell type or cluster of each cell, indexed by row number); edge
    width grows with the weight; arrows point from the attended (source) cell to the attending
    (target) cell. Every name is shown as text (see the module docstring).
    """
    from pyvis.network import Network

    names = np.asarray(cell_names, dtype=object)
    group_arr = None if groups is None else np.asarray([str(g) for g in groups], dtype=object)
    src = edges["source"].to_numpy(dtype=np.int64) if len(edges) else np.empty(0, dtype=np.int64)
    dst = edges["target"].to_numpy(dtype=np.int64) if len(edges) else np.empty(0, dtype=np.int64)
    weight = edges["weight"].to_numpy(dtype=float) if len(edges) else np.empty(0)
    nodes = np.unique(np.concatenate([src, dst]))
    if group_arr is not None:
        present = sorted({group_arr[i] for i in nodes}, key=_category_sort_key)
        palette = (
            dict(category_colors(present))
            if colors is None
            else {k: colors.get(k, NOISE_COLOR) for k in present}
        )
    else:
        present, palette = [], {}
    net = Network(height=f"{height}px", width="100%", directed=True, cdn_resources="in_line")
    in_weight = pd.Series(weight).groupby(dst).sum() if len(dst) else pd.Series(dtype=float)
    for i in nodes:
        group = group_arr[i] if group_arr is not None else ""
        tooltip = f"{names[i]}" + (f"\n{group_name}: {group}" if group_arr is not None else "")
        tooltip += f"\nattention received in these edges: {in_weight.get(i, 0.0):.3f}"
        net.add_node(
            int(i),
            label=str(group) if show_labels and group else " ",
            title=tooltip,
            color=palette.get(group, _PALETTE[0]),
            size=9,
        )
    w_max = float(weight.max()) if weight.size else 1.0
    for s, t, w in zip(src, dst, weight, strict=True):
        net.add_edge(
            int(s),
            int(t),
            value=float(w),
            width=1.0 + 5.0 * float(w) / (w_max or 1.0),
            title=f"{names[s]} -> {names[t]}\n{weight_name} = {w:.4f}",
            color={"color": "#8a8a8a", "highlight": "#d62728", "opacity": 0.75},
            arrows="to",
        )
    options = {
        "physics": {
            "enabled": bool(physics),
            "solver": "forceAtlas2Based",
            "forceAtlas2Based": {"gravitationalConstant": -40, "springLength": 60},
            "stabilization": {"iterations": 250},
        },
        "interaction": {"hover": True, "tooltipDelay": 120, "navigationButtons": False},
        "edges": {"smooth": False, "arrows": {"to": {"scaleFactor": 0.4}}},
        "nodes": {"shape": "dot", "font": {"size": 12}},
    }
    legend = [{"name": g, "color": palette[g]} for g in present]
    template = _template_env().get_template(ATTENTION_TEMPLATE)
    return template.render(
        nodes=net.nodes,
        edges=net.edges,
        options=options,
        legend=legend,
        group_name=group_name,
        title=title,
        height=height,
        summary=f"{len(nodes)} cells, {len(src)} edges",
    )


def graph_data_json(html: str) -> dict[str, Any]:
    """The nodes and edges embedded in an :func:`attention_graph_html` page (for tests and exports)."""
    out: dict[str, Any] = {}
    for key in ("nodes", "edges"):
        m = re.search(rf"var {key} = new vis\.DataSet\((.*?)\);\n", html, flags=re.S)
        out[key] = json.loads(m.group(1)) if m else []
    return out
