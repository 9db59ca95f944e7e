"""The attention cell graph as a self-contained HTML page (pyvis; see the package docstring on safety)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .style import ATTENTION_TEMPLATE, NOISE_COLOR, PALETTE, category_colors, category_sort_key

# ------------------------------------------------------------------------------------------------
# Attention page: the cell graph (pyvis)
# ------------------------------------------------------------------------------------------------


def _template_env():
    import jinja2
    import pyvis

    from ..resources import asset_text

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
        present = sorted({group_arr[i] for i in nodes}, key=category_sort_key)
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
            color=palette.get(group, PALETTE[0]),
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
