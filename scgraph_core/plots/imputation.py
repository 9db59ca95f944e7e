"""Observed against imputed expression (Imputation page)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import (
    LAYOUT,
    NOISE_COLOR,
    PALETTE,
    as_labels,
    category_colors,
    category_order,
    hover_safe,
    title_safe,
)

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
    fig.add_trace(go.Histogram(x=obs, name="observed", opacity=0.6, nbinsx=60, marker_color=PALETTE[7]))
    fig.add_trace(go.Histogram(x=imp, name="imputed", opacity=0.6, nbinsx=60, marker_color=PALETTE[0]))
    zero_share = float(np.mean(obs == 0)) if obs.size else 0.0
    fig.update_layout(
        **LAYOUT,
        barmode="overlay",
        height=320,
        title={"text": f"{hover_safe(gene)}: {zero_share:.0%} of cells are 0 before imputation"},
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
    label_arr = None if labels is None else as_labels(list(labels)).to_numpy()
    if label_arr is not None:
        cats = category_order(label_arr)
        palette = dict(colors) if colors is not None else category_colors(cats)
        groups = [(cat, np.flatnonzero(label_arr == cat), palette.get(cat, NOISE_COLOR)) for cat in cats]
    for i, (x, y) in enumerate((before, after), start=1):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if label_arr is None:
            parts = [("cells", np.arange(x.size), PALETTE[i - 1])]
        else:
            parts = groups
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
        unit = f" ({hover_safe(value_name)})" if value_name else ""
        fig.update_xaxes(title_text=hover_safe(genes[0]) + unit, row=1, col=i)
        fig.update_yaxes(title_text=hover_safe(genes[1]) + unit, row=1, col=i)
    legend = {"title": {"text": title_safe(label_name)}} if label_name else {}
    fig.update_layout(**LAYOUT, height=380, showlegend=label_arr is not None, legend=legend)
    return fig


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])
