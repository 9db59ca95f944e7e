"""Colours, category order and the shared figure layout: one colour per label across every figure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# The attention graph's HTML template: package data (scgraph_core/assets), read by resources.asset_text.
ATTENTION_TEMPLATE = "attention_graph.html"
NOISE_COLOR = "#c7c7c7"
MISSING_COLOR = "#e0e0e0"
# Enough distinct colours for the cell types of a typical dataset (plotly's qualitative sets).
PALETTE = [
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
MAX_LEGEND = 60  # more categories than this are drawn as one trace coloured by code
NOISE_NAMES = {"noise", "-1", "nan", "none", ""}
LAYOUT = {"template": "plotly_white", "margin": {"l": 10, "r": 10, "t": 40, "b": 10}}
# Attention scores: a sequential scale whose lightness rises monotonically from low to high (dark to
# light), so low and high never look alike (tests check the relative luminance of its stops).
ATTENTION_COLORSCALE = "Viridis"
# A figure with at most this many points in all draws SVG markers (no WebGL context); above it, WebGL.
SVG_MAX_POINTS = 30_000
MAX_DRAWN = 200_000  # cells a scatter draws at most; above, a fixed random sample (a note says so)


def natural_key(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text)))


def category_colors(categories: Sequence[Any], given: Sequence[str] | None = None) -> dict[str, str]:
    """A colour per category: ``given`` (e.g. ``adata.uns['celltype_colors']``) when it fits, else the
    built-in palette; noise and missing values are grey."""
    names = [str(c) for c in categories]
    out: dict[str, str] = {}
    usable = list(given) if given is not None and len(given) >= len(names) else None
    i = 0
    for j, name in enumerate(names):
        if name.lower() in NOISE_NAMES:
            out[name] = NOISE_COLOR
        elif usable is not None:
            out[name] = str(usable[j])
        else:
            out[name] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def category_sort_key(name: str) -> tuple:
    return (name.lower() in NOISE_NAMES, natural_key(name))


def as_labels(values: Any) -> pd.Series:
    # Labels as text, missing values as "nan" (the name every figure uses for them).
    series = pd.Series(values).astype("object")
    return series.where(pd.notna(series), "nan").astype(str)


def category_order(values: Any) -> list[str]:
    """The distinct labels of ``values`` as text, in natural order (A2 before A10), noise last."""
    return sorted(set(as_labels(values)), key=category_sort_key)


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
        names = sorted(set(declared) | set(as_labels(series)), key=category_sort_key)
        if given is not None and len(given) >= len(declared):
            out = category_colors(names)  # grey for noise and missing values
            for name, colour in zip(declared, given, strict=False):
                if name.lower() not in NOISE_NAMES:
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


def marker_size(n: int) -> float:
    return 7.0 if n <= 2_000 else 5.0 if n <= 20_000 else 3.5 if n <= 100_000 else 2.5


def is_categorical(values: Any) -> bool:
    if isinstance(values, pd.Series):
        dtype = values.dtype
        return isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "OSUb"
    arr = np.asarray(values)
    return arr.dtype.kind in "OSUb"


def title_safe(text: Any) -> str:
    # Titles and colour-bar titles are rendered as (limited) HTML.
    import html

    return html.escape(str(text))


def hover_safe(text: Any) -> str:
    # Plotly renders hover templates as (limited) HTML: show category names as text.
    import html

    return html.escape(str(text)).replace("%", "%%").replace("{", "&#123;").replace("}", "&#125;")


def label_safe(text: Any) -> str:
    # Plotly draws tick labels and annotations as (limited) HTML: show gene and group names as text.
    import html

    return html.escape(str(text))
