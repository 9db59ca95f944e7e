"""Loss and validation curves of a run (Training page)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
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


# A stage repeated per round or per cluster: scGNN's cluster_r2_14 and em_r2, scBiGNN's e_step_3.
_REPEAT = re.compile(r"(_r\d+(_\d+)?|_\d+)$")


def stage_family(stage: object) -> str:
    """The family of a training stage: its name without the round / cluster suffix (``cluster_r1_0`` ->
    ``cluster``, ``em_r3`` -> ``em``, ``e_step_2`` -> ``e_step``; ``feature_ae`` stays)."""
    name = str(stage)
    family = _REPEAT.sub("", name)
    return family or name


def loss_figure(history: pd.DataFrame, *, log_y: bool = False, height: int = 320) -> go.Figure:
    """One small panel per loss term against the epoch (terms have very different scales).

    Stages of one family (the per-round and per-cluster stages of scGNN, the E- and M-steps of scBiGNN)
    share one colour, one legend entry and one line per term, broken between stages; hovering a point
    names its stage."""
    terms = loss_terms(history) if not history.empty else []
    fig = go.Figure(_loss_panels(tuple(terms), log_y, height))
    traces = []
    stages = list(dict.fromkeys(history["stage"].astype(str))) if "stage" in history else []
    families: dict[str, list[str]] = {}
    for stage in stages:
        families.setdefault(stage_family(stage), []).append(stage)
    stage_of = history["stage"].astype(str).to_numpy() if stages else None
    epochs = (
        history["epoch"].to_numpy(dtype=float) if "epoch" in history else np.arange(1.0, len(history) + 1)
    )
    for i, term in enumerate(terms, start=1):
        values = pd.to_numeric(history[term], errors="coerce").to_numpy(dtype=float)
        finite = ~np.isnan(values)
        for j, (family, members) in enumerate(families.items() or [(term, [])]):
            # numpy arrays, not lists: plotly validates a list value by value (most of a live redraw's time).
            pieces: list[tuple[np.ndarray, np.ndarray, str]] = []
            for stage in members or [None]:
                keep = finite if stage is None else (stage_of == stage) & finite
                if keep.any():
                    pieces.append((epochs[keep], values[keep], stage or term))
            gap = (np.array([np.nan]), np.array([np.nan]), "")  # the next stage's epochs start again at 1
            joined = [p for k, piece in enumerate(pieces) for p in ((gap, piece) if k else (piece,))]
            xs = np.concatenate([x for x, _, _ in joined]) if joined else np.array([])
            ys = np.concatenate([y for _, y, _ in joined]) if joined else np.array([])
            lengths = [len(x) for x, _, _ in joined]
            names = np.repeat(np.array([n for _, _, n in joined], dtype=object), lengths)
            # A stage of one epoch (the first epoch of a live run, a run stopped at once) has no line
            # to draw: its point is shown as a dot, or the panel would look empty.
            sizes = np.repeat([6 if len(x) == 1 and n else 0 for x, _, n in joined], lengths)
            label = family if len(members) <= 1 else f"{family} ({len(members)} stages)"
            colour = PALETTE[j % len(PALETTE)]
            lone = bool(sizes.any())
            traces.append(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers" if lone else "lines",
                    marker={"size": sizes, "color": colour} if lone else None,
                    connectgaps=False,
                    line={"color": colour, "width": 2 if len(members) <= 1 else 1.5},
                    name=label,
                    legendgroup=family,
                    customdata=names,
                    hovertemplate="%{customdata}<br>epoch %{x}<br>%{y:.4g}<extra></extra>",
                    showlegend=i == 1 and len(families) > 1,
                    xaxis="x" if i == 1 else f"x{i}",
                    yaxis="y" if i == 1 else f"y{i}",
                )
            )
    fig.add_traces(traces)
    return fig


@functools.lru_cache(maxsize=32)
def _loss_panels(terms: tuple[str, ...], log_y: bool, height: int) -> go.Figure:
    """The empty panels of :func:`loss_figure` (titles, axes, style): made once per set of terms, as the
    live view redraws the curves every second or two and laying out the panels is half of that work."""
    n = max(1, len(terms))
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(terms) or ["loss"], horizontal_spacing=0.06)
    fig.update_xaxes(title_text="epoch")
    if log_y:
        fig.update_yaxes(type="log")
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


# ------------------------------------------------------------------------------------------------
# Rounds of an iterative model (scGNN's refinement loop, scBiGNN's EM)
# ------------------------------------------------------------------------------------------------

# Numbers of a round record drawn as scores (0 to 1) and as counts; the rest (losses, edges) stay in tables.
_SCORE = re.compile(r"(^|_)(accuracy|f1|ari|nmi|auc|homophily)(_|$)", re.IGNORECASE)
_COUNTS = ("n_clusters", "leiden_communities")
ROUND_WORDS = {
    "ari_previous": "ARI with the previous round",
    "n_clusters": "clusters",
    "leiden_communities": "Leiden communities",
    "q_accuracy": "held-out accuracy (q)",
    "p_accuracy": "held-out accuracy (p)",
    "q_macro_f1": "held-out macro-F1 (q)",
    "p_macro_f1": "held-out macro-F1 (p)",
    "homophily_h": "graph homophily",
}


def round_table(rounds: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The round records of one loop (the last one named in ``rounds``), one row per round, in order;
    a round recorded twice keeps its last record."""
    records = [r for r in rounds if isinstance(r, dict) and isinstance(r.get("round"), (int, float))]
    if not records:
        return pd.DataFrame()
    loop = records[-1].get("loop")
    records = [r for r in records if r.get("loop") == loop]
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("kind", "time")} for r in records])
    return table.drop_duplicates("round", keep="last").sort_values("round").reset_index(drop=True)


def _numeric(column: pd.Series) -> pd.Series | None:
    if column.dtype == bool:
        return None
    values = pd.to_numeric(column, errors="coerce")
    return values if values.notna().any() else None


def round_series(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The score columns (ARI with the previous round first, then accuracies, F1, homophily: numbers in
    [-1, 1]) and the count columns (clusters, Leiden communities) of a :func:`round_table`."""
    scores, counts = [], []
    ordered = ["ari_previous"] + [c for c in table.columns if c != "ari_previous"]
    for col in ordered:
        if col not in table.columns or col in ("round", "loop"):
            continue
        values = _numeric(table[col])
        if values is None:
            continue
        if col in _COUNTS:
            counts.append(col)
        elif _SCORE.search(str(col)) and "loss" not in str(col) and values.dropna().abs().le(1).all():
            scores.append(col)
    return scores, [c for c in _COUNTS if c in counts]


def rounds_figure(
    rounds: Sequence[dict[str, Any]], *, stop_ari: float | None = 0.99, height: int = 380
) -> go.Figure | None:
    """Convergence of an iterative model, one point per round: the scores of each round on top (for
    scGNN the ARI between this round's clusters and the previous round's, with the stop threshold
    ``stop_ari`` as a dashed line; for scBiGNN the held-out accuracies), the cluster count below.
    ``rounds`` are the run's ``round`` events (or the rows of its rounds table). None when no round
    holds a number to draw."""
    table = round_table(rounds)
    if table.empty:
        return None
    scores, counts = round_series(table)
    panels = [p for p in (("score", scores), ("count", counts)) if p[1]]
    if not panels:
        return None
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.62, 0.38] if len(panels) == 2 else [1.0],
    )
    x = table["round"].astype(int).tolist()
    colour = 0
    for row, (kind, cols) in enumerate(panels, start=1):
        for col in cols:
            y = [None if pd.isna(v) else float(v) for v in pd.to_numeric(table[col], errors="coerce")]
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    connectgaps=False,
                    name=ROUND_WORDS.get(col, col.replace("_", " ")),
                    line={
                        "color": PALETTE[colour % len(PALETTE)],
                        "dash": "dot" if col == "leiden_communities" else "solid",
                    },
                    hovertemplate="round %{x}<br>%{y:.4g}<extra>" + ROUND_WORDS.get(col, col) + "</extra>",
                ),
                row=row,
                col=1,
            )
            colour += 1
        if kind == "score":
            values = pd.concat([pd.to_numeric(table[c], errors="coerce") for c in cols]).dropna()
            low = min(0.0, float(values.min())) if not values.empty else 0.0
            title = "ARI" if cols == ["ari_previous"] else "score"
            fig.update_yaxes(title_text=title, range=[low - 0.03, 1.05], row=row, col=1)
            if "ari_previous" in cols and stop_ari is not None:
                fig.add_hline(
                    y=float(stop_ari),
                    line={"dash": "dash", "color": "#7f7f7f", "width": 1.5},
                    annotation_text=f"stops above {float(stop_ari):g}",
                    annotation_position="bottom right",
                    row=row,
                    col=1,
                )
        else:
            fig.update_yaxes(title_text="clusters", rangemode="tozero", row=row, col=1)
    fig.update_xaxes(dtick=1, row=len(panels), col=1, title_text="round")
    fig.update_xaxes(dtick=1)
    fig.update_layout(**LAYOUT, height=height, legend={"orientation": "h", "y": -0.2})
    return fig
