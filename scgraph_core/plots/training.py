"""Loss and validation curves of a run (Training page)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import LAYOUT, PALETTE

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
                    line={"color": PALETTE[j % len(PALETTE)], "width": 2},
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
    fig.update_layout(**LAYOUT, height=height)
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
                line={"color": PALETTE[i % len(PALETTE)]},
            )
        )
    fig.update_layout(
        **LAYOUT,
        height=height,
        yaxis={"title": "score on held-out edges"},
        xaxis={"title": "epoch"},
    )
    return fig
