"""Tables drawn as figures: compositions, heatmaps, dot plots, volcano plots, gene weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import (
    LAYOUT,
    NOISE_COLOR,
    PALETTE,
    as_labels,
    category_colors,
    category_order,
    hover_safe,
    label_safe,
)

# ------------------------------------------------------------------------------------------------
# Tables as figures
# ------------------------------------------------------------------------------------------------


def composition_figure(
    labels: Sequence[Any], *, title: str = "", colors: Mapping[str, str] | None = None
) -> go.Figure:
    """Horizontal bars: how many of the given cells carry each label. Pass ``colors`` from
    :func:`label_colors` of the whole column so each bar has its label's colour on every page."""
    counts = as_labels(list(labels)).value_counts()
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
        **LAYOUT, height=max(220, 26 * len(counts) + 80), title={"text": title} if title else None
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
            hovertemplate=f"{hover_safe(y_title)} %{{y}}<br>{hover_safe(x_title)} %{{x}}<br>%{{z:.3g}}<extra></extra>",
        )
    )
    fig.update_layout(
        **LAYOUT, height=max(300, 14 * len(table) + 100), title={"text": title} if title else None
    )
    fig.update_xaxes(title=x_title, type="category")
    fig.update_yaxes(title=y_title, type="category", autorange="reversed")
    return fig


def dot_plot_figure(
    means: pd.DataFrame, fractions: pd.DataFrame, *, title: str = "", max_size: float = 22.0
) -> go.Figure:
    """scanpy-style dot plot: groups (rows) x genes (columns); a dot's size is the % of the group's cells
    expressing the gene, its colour the mean log-normalised expression in the group."""
    groups = [label_safe(g) for g in means.index]
    genes = [label_safe(g) for g in means.columns]
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
        **LAYOUT,
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
        index=[label_safe(g) for g in means.index],
        columns=[label_safe(g) for g in means.columns],
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
    genes = np.asarray([hover_safe(g) for g in table["gene"]], dtype=object)
    up = (lf >= lfc) & (p < alpha)
    down = (lf <= -lfc) & (p < alpha)
    fig = go.Figure()
    for mask, name, color in (
        (~(up | down), "not significant", NOISE_COLOR),
        (up, "higher in the group", PALETTE[3]),
        (down, "lower in the group", PALETTE[0]),
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
            text=label_safe(table["gene"].iloc[i]),
            showarrow=False,
            yshift=9,
            font={"size": 10},
        )
    fig.add_hline(y=-np.log10(alpha), line={"dash": "dot", "color": "#999", "width": 1})
    for x in (-lfc, lfc):
        fig.add_vline(x=x, line={"dash": "dot", "color": "#999", "width": 1})
    fig.update_layout(**LAYOUT, height=460, title={"text": title} if title else None)
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
            marker_color=np.where(w >= 0, PALETTE[0], PALETTE[3]),
            hovertemplate="dimension %{x}: %{y:.3g}<extra></extra>",
        )
    )
    fig.update_layout(**LAYOUT, height=280, title={"text": f"{hover_safe(gene)}: {matrix} weights"})
    fig.update_xaxes(title="latent dimension", dtick=max(1, w.size // 25))
    fig.update_yaxes(title="weight")
    return fig
