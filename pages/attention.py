"""Attention: which neighbours each cell listened to. UMAP overlay, interactive cell graph, edge table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from scgraph_app import cache, ui
from scgraph_core import interpret, plots

ui.header(
    "Attention",
    "How much each cell relied on each neighbour when the model described it.",
    "attention",
)

run, adata, views = ui.active_result(key="att")
ui.need_view(
    views,
    "attention",
    "This run stores no attention maps (a GCN encoder has none, and attention export can be switched "
    "off). Train CellVGAE with its GAT encoder, or choose another run.",
    empty_key="att-none",
)
path, stamp = str(run.path), cache.result_stamp(run)
maps = views["attention"]
order = [n for n in (views.get("attention_layers") or []) if n in maps] + sorted(
    n for n in maps if n not in (views.get("attention_layers") or [])
)
label_key = (run.config or {}).get("label_key")
label_key = label_key if label_key in adata.obs else None

HEAD_WORDS = {"mean": "mean over heads", "std": "std over heads (disagreement)"}
NODE_MODES = {
    "touching": "attention on every edge touching the cell (the paper's figure)",
    "incoming_mean": "mean attention the cell pays to its neighbours",
    "outgoing": "attention the cell's neighbours pay to it",
}

ready = False
with ui.guard("the attention controls"):
    c = st.columns([2, 2, 2])
    name = c[0].selectbox(
        "Attention map",
        order,
        format_func=lambda n: (
            f"{n} ({maps[n].get('kind', 'graph')}, {maps[n].get('heads', 1)} head{'s' if int(maps[n].get('heads', 1)) != 1 else ''})"
        ),
        key="att_layer",
        help="One map per attention layer. For CellVGAE: the hidden layers, then the mu and log-sigma layers "
        "('mean'/'std' in the paper's files name these layers, not statistics over heads).",
    )
    amap = cache.attention(run, name)
    heads = amap.alpha.shape[1] if amap.per_head else 1
    stats = ["mean", "std", *[str(h) for h in range(heads)]] if amap.per_head and heads > 1 else ["mean"]
    if not amap.per_head and maps[name].get("obsp_std"):
        stats = ["mean", "std"]
    statistic = c[1].selectbox(
        "Heads",
        stats,
        format_func=lambda s: HEAD_WORDS[s] if s in HEAD_WORDS else f"head {int(s) + 1}",
        key=f"att_stat:{name}",
        help="Mean: what the heads agree on. Std: where they disagree. Or one head on its own.",
    )
    group_options = [k for k in (label_key, views.get("clusters")) if k and k in adata.obs]
    group_key = c[2].selectbox(
        "Colour and filter cells by",
        group_options or [None],
        format_func=lambda k: (
            "nothing" if k is None else ("known cell types" if k == label_key else "clusters") + f" ({k})"
        ),
        key="att_group",
        help="The cell types (or clusters) that colour the graph and that the filters below use.",
    )
    groups = adata.obs[group_key].astype(str).to_numpy() if group_key else None
    head_stat = int(statistic) if statistic.isdigit() else statistic
    weights = amap.weights(head_stat)
    kind = maps[name].get("kind", "graph")
    if kind == "fusion":
        scope = maps[name].get("scope")
        whom = {
            "all cells": "every cell",
            "graph neighbours": "its neighbours in the cell graph (attention = graph, the default for large data)",
        }.get(scope, "other cells")
        st.info(
            f"Fusion attention: each cell attends to {whom} (AttentionAE-sc). Only the strongest pairs per "
            "cell were stored, so the map is a selection of the full attention.",
            icon=":material/info:",
        )
        hubs, half, targets = interpret.attention_hubs(amap.edge_index, adata.n_obs, labels=groups, top=10)
        if half:
            # Few cells take half the pairs, or few cells are attended to at all.
            concentrated = half <= max(5, 0.02 * adata.n_obs) or targets <= 0.1 * adata.n_obs
            st.caption(
                f"Half of the stored pairs between different cells point to {half:,} of the {targets:,} cells "
                f"attended to ({adata.n_obs:,} cells in all)."
                + (
                    " Attention concentrates on a few shared reference cells: a cell that many cells attend "
                    "to is a landmark of the model's key space, not necessarily a biological partner of "
                    "each of them. 'Relative to an even split' below shows how strong each pair is."
                    if concentrated
                    else ""
                )
            )
            with st.expander("Most attended cells"):
                shown = hubs.assign(cell=adata.obs_names.to_numpy()[hubs["cell"].to_numpy()])
                st.dataframe(
                    shown.rename(columns={"label": "cell type" if group_key == label_key else "cluster"}),
                    hide_index=True,
                    width="stretch",
                    column_config={
                        "listeners": st.column_config.NumberColumn(
                            "cells attending", help="Other cells whose strongest pairs include this cell"
                        ),
                        "share": st.column_config.NumberColumn("share of pairs", format="percent"),
                    },
                )
    ready = True
if not ready:
    st.stop()

with ui.guard("the attention overlay"):
    st.subheader("Attention on the UMAP")
    node_obs = maps[name].get("node_obs")
    modes = list(NODE_MODES)
    if kind == "fusion" and node_obs in adata.obs:
        modes.insert(0, "stored")
    mode = st.radio(
        "Per-cell score",
        modes,
        format_func=lambda m: (
            "attention each cell received from all cells (stored by the model)"
            if m == "stored"
            else NODE_MODES[m]
        ),
        horizontal=True,
        key="att_mode",
        help="Summing over every edge touching a cell is aggregation (b) of the CellVGAE notebooks; "
        "because a cell's incoming attention sums to 1, it equals 1 plus what its neighbours pay to it.",
    )
    if mode == "stored" or (
        kind == "graph" and mode == "touching" and statistic == "mean" and node_obs in adata.obs
    ):
        score = adata.obs[node_obs].to_numpy(dtype=float)
    else:
        score = cache.node_scores(path, stamp, name, statistic, mode)
    coords = cache.layout(run, adata)
    left, right = st.columns([3, 2])
    with left:
        ui.chart(
            st,
            plots.embedding_scatter(
                coords,
                score,
                name="attention",
                categorical=False,
                colorscale=plots.ATTENTION_COLORSCALE,
                height=460,
            ),
            width="stretch",
            key=f"att_umap:{name}:{statistic}:{mode}",
        )
    with right:
        if groups is not None:
            table = (
                pd.DataFrame({"group": groups, "score": score})
                .groupby("group", observed=True)["score"]
                .agg(["mean", "median", "count"])
                .sort_values("mean", ascending=False)
                .reset_index()
            )
            st.markdown("**Score by group**")
            st.dataframe(
                table,
                hide_index=True,
                width="stretch",
                column_config={
                    "group": st.column_config.TextColumn(
                        "cell type" if group_key == label_key else "cluster"
                    ),
                    "mean": st.column_config.NumberColumn("mean score", format="%.3f"),
                    "median": st.column_config.NumberColumn("median", format="%.3f"),
                    "count": st.column_config.NumberColumn("cells"),
                },
            )

with ui.guard("the attention graph"):
    st.subheader("The strongest attention edges as a cell graph")
    categories = sorted(pd.unique(groups), key=plots.natural_key) if groups is not None else []
    c = st.columns([2, 2, 1])
    include = c[0].multiselect(
        "Only these cell types",
        categories,
        key=f"att_inc:{group_key}",
        help="Keep edges between cells of these types (empty: all types).",
    )
    exclude = c[1].multiselect(
        "Leave out these cell types",
        categories,
        key=f"att_exc:{group_key}",
        help="Drop every edge that touches a cell of these types.",
    )
    match = c[2].radio(
        "Edges with",
        ["both", "either"],
        format_func={"both": "both cells", "either": "either cell"}.get,
        key="att_match",
        help="With 'Only these cell types' or a selection: both ends of an edge must be among those cells, or at "
        "least one.",
    )
    kept = st.session_state.get(f"selections:{run.id}", {}) or {}
    selection = st.selectbox(
        "Cells",
        ["all cells", *kept],
        key="att_selection",
        help="Only the edges among the cells of a selection kept on the Embedding page (lasso there, then "
        "'Keep this selection'): on a large run, the graph of one region.",
    )
    selected_cells = np.asarray(kept[selection], dtype=np.int64) if selection in kept else None
    if not kept:
        st.caption("Keep a lasso selection on the Embedding page to draw the graph of those cells only.")
    relative = False
    if amap.keys is not None and statistic != "std":
        relative = (
            st.radio(
                "Edge weight",
                ["attention", "relative"],
                format_func={
                    "attention": "attention",
                    "relative": "relative to an even split (attention x keys)",
                }.get,
                horizontal=True,
                key="att_scale",
                help="Relative: the attention times the number of cells the listening cell could attend to. "
                "1 means no preference for that cell; 20 means twenty times its even share. It makes pairs "
                "comparable between cells with few and many neighbours, and across dense maps of any size.",
            )
            == "relative"
        )
    if relative:
        weights = amap.relative(head_stat)
    finite = weights[np.isfinite(weights)]
    lo_all, hi_all = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    c = st.columns([2, 2, 1, 1])
    top_n = c[0].slider(
        "Edges to draw",
        10,
        600,
        120,
        10,
        key="att_topn",
        help="The strongest edges left after the filters (the paper's figure draws 80 to 120).",
    )
    if hi_all > lo_all:
        weight_range = c[1].slider(
            "Weight range",
            lo_all,
            hi_all,
            (lo_all, hi_all),
            key=f"att_range:{name}:{statistic}" + (":relative" if relative else ""),
            help="Keep only edges whose weight lies in this range.",
            format="%.3f",
        )
    else:
        weight_range = (lo_all, hi_all)
        c[1].caption(f"All weights are {lo_all:.3f}.")
    self_loops = c[2].toggle(
        "Self loops", value=False, key="att_self", help="Include each cell's attention to itself."
    )
    show_labels = c[3].toggle(
        "Labels", value=False, key="att_labels", help="Write each cell's type next to it."
    )
    edges = interpret.attention_edges(
        amap.edge_index,
        weights,
        labels=groups,
        include=include or None,
        exclude=exclude or None,
        match=match,
        weight_range=weight_range,
        top_n=top_n,
        drop_self_loops=not self_loops,
        cells=selected_cells,
    )
    if edges.empty:
        st.info(
            "No edge passes these filters: widen the weight range or change the cell types.",
            icon=":material/filter_alt_off:",
        )
    else:
        names = adata.obs_names.to_numpy()
        stat_word = {"mean": "mean attention", "std": "std of attention"}.get(
            statistic
        ) or f"head {int(statistic) + 1}"
        if relative:
            stat_word += " x keys"
        html = plots.attention_graph_html(
            edges,
            cell_names=names,
            groups=groups,
            colors=plots.obs_colors(adata, group_key) if group_key else None,
            group_name="cell type" if group_key == label_key else "cluster",
            title=f"{name}: {stat_word}",
            height=560,
            show_labels=show_labels,
            weight_name=stat_word,
        )
        st.iframe(html, height=620, alt="Interactive cell graph of the strongest attention edges")
        st.caption(
            "Drag to move, scroll to zoom, hover a cell or an edge for its details. Arrows point from the cell "
            "that was listened to (source) to the cell that listened (target); thicker means stronger."
        )
        table = edges.copy()
        table.insert(0, "source_cell", names[table["source"].to_numpy()])
        table.insert(1, "target_cell", names[table["target"].to_numpy()])
        st.markdown("**Strongest edges**")
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            height=320,
            column_config={"weight": st.column_config.NumberColumn(stat_word, format="%.4f")},
        )
        d = st.columns(3)
        d[0].download_button(
            "Edges (CSV)",
            ui.on_click(lambda: table.to_csv(index=False), "the edge table"),  # built on the click
            file_name=f"{run.id}_{name}_attention_edges.csv",
            mime="text/csv",
            key="dl_edges",
        )
        d[1].download_button(
            "Graph (HTML, opens offline)",
            html,
            file_name=f"{run.id}_{name}_attention_graph.html",
            mime="text/html",
            key="dl_graph",
        )
        d[2].download_button(
            "Per-cell scores (CSV)",
            ui.on_click(
                lambda: pd.DataFrame(
                    {"cell": names, "score": score, **({"group": groups} if groups is not None else {})}
                ).to_csv(index=False),
                "the per-cell scores",
            ),
            file_name=f"{run.id}_{name}_attention_per_cell.csv",
            mime="text/csv",
            key="dl_scores",
        )
