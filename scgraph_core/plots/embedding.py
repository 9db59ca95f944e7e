"""Cells on a 2-D layout: one scatter, many colourings as one figure with subplots, and the cells a selection picked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import style
from .style import (
    LAYOUT,
    MAX_LEGEND,
    MISSING_COLOR,
    NOISE_COLOR,
    PALETTE,
    SVG_MAX_POINTS,
    as_labels,
    category_colors,
    category_order,
    hover_safe,
    is_categorical,
    marker_size,
    title_safe,
)


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
    max_points: int | None = None,
) -> go.Figure:
    """Cells on a 2-D layout (UMAP), coloured by a category or a number, drawn with WebGL.

    Categorical ``values`` get one trace per category (click the legend to hide one); numbers get a
    colour bar. ``customdata`` of every point is its row number in ``coords``.

    Above ``max_points`` cells (default ``style.MAX_DRAWN``, read at each call; 0 = never) a fixed random sample of that many is
    drawn, so a browser opens a million-cell run; legend counts stay those of all cells, ``customdata`` still
    holds rows of ``coords``, and ``fig.layout.meta`` says ``{"drawn": k, "cells": n}`` (see
    :func:`drawn_note`).
    """
    xy = np.asarray(coords, dtype=np.float32)
    n = xy.shape[0]
    limit = style.MAX_DRAWN if max_points is None else int(max_points)
    if 0 < limit < n:
        return _sampled_scatter(
            xy, values, limit, name=name, categorical=categorical, colors=colors, colorscale=colorscale,
            hover=hover, title=title, height=height, point_size=point_size, dragmode=dragmode,
            axis_names=axis_names, cmid=cmid,
        )  # fmt: skip
    size = point_size or marker_size(n)
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
                marker={"size": size, "color": PALETTE[0], "line": marker_line},
                customdata=index,
                text=hover_arr,
                hovertemplate="%{text}<extra></extra>" if hover_arr is not None else None,
                name="cells",
                showlegend=False,
            )
        )
    else:
        if categorical is None:
            categorical = is_categorical(values)
        if categorical:
            series = as_labels(values)
            cats = category_order(series)
            palette = dict(category_colors(cats)) if colors is None else dict(colors)
            if len(cats) > MAX_LEGEND:
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
                                f"{hover_safe(cat)}<br>%{{text}}<extra></extra>" if text is not None else None
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
                    + f"{hover_safe(name)}: %{{marker.color:.3g}}<extra></extra>",
                    name=name,
                    showlegend=False,
                )
            )
    fig.update_layout(
        **LAYOUT,
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


def drawn_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` of ``n`` rows, sorted, the same for the same (n, k, seed): the cells a large figure draws."""
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int32)


def _take(values: Any, rows: np.ndarray) -> Any:
    if isinstance(values, (pd.Series, pd.Categorical, pd.Index)):
        return pd.Series(values).iloc[rows].reset_index(drop=True)
    return np.asarray(values)[rows]


def _sampled_scatter(xy: np.ndarray, values: Any, limit: int, **kw: Any) -> go.Figure:
    n = xy.shape[0]
    keep = drawn_rows(n, limit)
    counts = None
    if values is not None:
        if kw["categorical"] is None:
            kw["categorical"] = is_categorical(values)
        if kw["categorical"]:
            labels = as_labels(values)
            counts = labels.value_counts()
            if kw["colors"] is None:  # the colours of all categories, also those the sample misses
                kw["colors"] = dict(category_colors(category_order(labels)))
        values = _take(values, keep)
    hover = kw.pop("hover")
    fig = embedding_scatter(
        xy[keep], values, hover=None if hover is None else _take(hover, keep), max_points=0, **kw
    )
    for trace in fig.data:
        if trace.customdata is not None:
            trace.customdata = keep[np.asarray(trace.customdata, dtype=np.int64)]
        if counts is not None and trace.showlegend is not False and trace.name and " (" in trace.name:
            cat = trace.name.rsplit(" (", 1)[0]
            if cat in counts.index:
                trace.name = f"{cat} ({int(counts[cat]):,})"
    fig.update_layout(meta={"drawn": int(limit), "cells": int(n)})
    return fig


def drawn_note(fig: go.Figure) -> str | None:
    """ "Drawn: a random k of n cells ..." when the figure shows a sample of the cells, else None."""
    meta = fig.layout.meta
    if not isinstance(meta, dict) or "drawn" not in meta:
        return None
    return (
        f"Drawn: a fixed random {meta['drawn']:,} of the {meta['cells']:,} cells (a browser stays responsive); "
        "colours, legend counts and statistics use every cell, a lasso selects among the drawn ones."
    )


class Panel(NamedTuple):
    """One colouring of the cells in :func:`embedding_panels`: a number per cell and its labels."""

    title: str
    values: Any
    name: str = ""
    colorscale: str = "Viridis"
    # (low, high) of the colour bar; None = the values' own range. A sampled figure sets it from every cell.
    color_range: tuple[float, float] | None = None


def embedding_panels(
    coords: np.ndarray,
    panels: Sequence[Panel],
    *,
    columns: int = 2,
    panel_height: int = 380,
    axis_names: tuple[str, str] = ("UMAP 1", "UMAP 2"),
    webgl: bool | None = None,
    max_points: int | None = None,
) -> go.Figure:
    """Several numeric colourings of the same cells in ONE figure: a subplot per panel, row by row,
    each with its own colour bar (highest values on top, missing values grey).

    One figure holds at most one WebGL context however many panels it has; ``webgl=None`` draws SVG
    markers (none at all) when ``len(coords) * len(panels) <= SVG_MAX_POINTS``. ``customdata`` of
    every point is its row number in ``coords``. Above ``max_points`` points in all panels together
    (default ``style.MAX_DRAWN``; 0 = never) every panel draws the same fixed random sample of the cells,
    and ``fig.layout.meta`` says so as :func:`embedding_scatter`'s does (colour ranges still span every cell).
    """
    xy = np.asarray(coords, dtype=np.float32)
    n = xy.shape[0]
    limit = style.MAX_DRAWN if max_points is None else int(max_points)
    if panels and 0 < limit < n * len(panels):
        keep = drawn_rows(n, max(limit // len(panels), 1))
        drawn = []
        for p in panels:
            values = _values(p)
            drawn.append(p._replace(values=values[keep], color_range=p.color_range or _range(values)))
        fig = embedding_panels(
            xy[keep], drawn,
            columns=columns, panel_height=panel_height, axis_names=axis_names, webgl=webgl, max_points=0,
        )  # fmt: skip
        for trace in fig.data:
            trace.customdata = keep[np.asarray(trace.customdata, dtype=np.int64)]
        fig.update_layout(meta={"drawn": int(keep.size), "cells": int(n)})
        return fig
    columns = max(1, min(columns, len(panels) or 1))
    n_rows = max(1, math.ceil(len(panels) / columns))
    use_gl = n * len(panels) > SVG_MAX_POINTS if webgl is None else webgl
    trace = go.Scattergl if use_gl else go.Scatter
    size = marker_size(n) if use_gl else min(marker_size(n), 5.0)
    fig = make_subplots(
        rows=n_rows,
        cols=columns,
        subplot_titles=[title_safe(p.title) for p in panels] or None,
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
                    **(
                        {"cmin": panel.color_range[0], "cmax": panel.color_range[1]}
                        if panel.color_range
                        else {}
                    ),
                    "showscale": True,
                    "colorbar": {
                        "title": {"text": title_safe(panel.name)},
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
                hovertemplate=f"{hover_safe(panel.name)}: %{{marker.color:.3g}}<extra></extra>",
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
    fig.update_layout(**LAYOUT, height=panel_height * n_rows, uirevision="keep")
    return fig


def _values(panel: Panel) -> np.ndarray:
    return np.asarray(panel.values, dtype=np.float64).reshape(-1)


def _range(values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


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
