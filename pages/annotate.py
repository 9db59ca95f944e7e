"""Annotate: predict cell types from the labels you have (scBiGNN), then check the predictions.

Pick the label column (empty cells are predicted), see how many cells each type has, hide a share of the
known labels to score the model honestly, and train. For a finished scBiGNN run: predictions and
confidence on the UMAP, the confusion matrix on the hidden labels, the cells the model is least sure of,
genes that mark each predicted type, downloads, and how the predicted types meet the clusters of
another run on the same data. Every number comes from ``scgraph_core.annotation``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from scgraph_app import cache, config, state, ui
from scgraph_core import annotation, pipeline, plots
from scgraph_core.errors import ConfigError
from scgraph_core.labels import LabelSpec

MODEL = "scbignn"

ui.header(
    "Annotate",
    "Predict cell types for unlabelled cells from the ones you have labelled (scBiGNN), and check how "
    "sure the model is.",
)

available = config.available_models()
if MODEL not in available:
    st.info("scBiGNN is not installed in this version of scgraph.", icon=":material/info:")
    st.stop()
cls = available[MODEL]

# ---- 1. the labels you have ----------------------------------------------------------------------
st.subheader("1. Your labels")
source = state.dataset_source()
adata = None
with ui.guard("the dataset"):
    adata = cache.dataset(source)
if adata is None:
    st.stop()
columns = config.label_columns(adata)
if not columns:
    ui.empty_state(
        "The loaded dataset has no column of cell labels. Load a file whose cells carry a type for some of "
        "them (the others are predicted).",
        "Go to Data",
        "data",
        key="ann-nolabels",
    )
with ui.guard("the label settings"):
    c = st.columns([2, 2, 1])
    default = config.label_key_for(adata)
    key = c[0].selectbox(
        "Label column",
        columns,
        index=columns.index(default) if default in columns else 0,
        key="ann_label_key",
        help="Cells with a value are the examples the model learns from; empty cells (and the value on the "
        "right) are predicted.",
    )
    unknown = c[1].text_input(
        "Value meaning 'not labelled' (optional)",
        value="",
        key="ann_unknown",
        help="For example 'unknown' or 'unassigned'. Empty cells and NaN always count as unlabelled.",
    )
    holdout = c[2].slider(
        "Hide to score",
        0.0,
        0.5,
        0.2,
        0.05,
        key="ann_holdout",
        help="Share of the known labels hidden from training (the same share of every type, seeded) and "
        "used only to measure accuracy. 0 trains on every known label and reports no accuracy.",
    )
    spec = LabelSpec(key=key, unlabelled=unknown.strip() or None, holdout_fraction=float(holdout))
    table = annotation.label_table(adata.obs, spec)
    m = st.columns(3)
    n_unlabelled = int(table["cells"].iloc[-1])
    m[0].metric("labelled cells", f"{int(table['cells'].iloc[:-1].sum()):,}")
    m[1].metric("types", f"{len(table) - 1:,}")
    m[2].metric("cells to predict", f"{n_unlabelled:,}")
    st.dataframe(table, hide_index=True, height=min(35 * (len(table) + 1) + 3, 320))
    rare = table.iloc[:-1][table["cells"].iloc[:-1] < 5]
    if len(rare):
        st.warning(
            f"{len(rare)} type(s) have fewer than 5 labelled cells ({ui.md(', '.join(rare['type'].head(8)))}): "
            "the model sees very few examples of them; label a few more cells of each if you can.",
            icon=":material/warning:",
        )

with ui.guard("starting the training"):
    c = st.columns([1, 2, 1])
    preset = c[0].radio("Preset", list(cls.presets), index=list(cls.presets).index("quick"), key="ann_preset")
    name = c[1].text_input("Run name (optional)", key="ann_name")
    c[2].write("")
    if c[2].button("Train scBiGNN", type="primary", key="ann_start", icon=":material/play_arrow:"):
        spec.check()
        if len(table) - 1 < 2:
            raise ConfigError("Predicting cell types needs at least two labelled types in the column.")
        resolved = pipeline.resolve_config(MODEL, preset, labels=spec)
        display = name.strip() or f"scBiGNN {preset} on {source.get('name', 'data')} ({key})"[:120]
        ui.start_run(resolved, source, display)

# ---- 2. the predictions of the active run ----------------------------------------------------------
st.divider()
st.subheader("2. Predictions")
run_id = state.active_run_id()
run = state.store().open(run_id) if run_id else None
if run is None or run.meta.get("model") != MODEL:
    st.info(
        "Pick a finished scBiGNN run in the sidebar, or train one above: its predictions appear here.",
        icon=":material/info:",
    )
    st.stop()
run, result, views = ui.active_result(key="ann")
pred_key = views.get("predictions")
if not pred_key or pred_key not in result.obs:
    st.info("This run has no predictions.", icon=":material/info:")
    st.stop()
metrics = json.loads(run.file("metrics.json").read_text()) if run.file("metrics.json").is_file() else {}
confidence_key = f"{pred_key.rsplit('_', 1)[0]}_confidence"
conf = result.obs[confidence_key].to_numpy(dtype=float) if confidence_key in result.obs else None
with ui.guard("the scores"):
    m = st.columns(4)
    if metrics.get("accuracy") is not None:
        m[0].metric("accuracy on hidden labels", f"{metrics['accuracy']:.3f}")
        m[1].metric("macro-F1 on hidden labels", f"{metrics['macro_f1']:.3f}")
    else:
        m[0].metric("accuracy on hidden labels", "none hidden")
    if confidence_key in result.obs:
        m[2].metric("median confidence", f"{float(np.median(conf)):.2f}")
        m[3].metric("cells below 0.5", f"{int((conf < 0.5).sum()):,}")

with ui.guard("the maps"):
    umap = result.obsm[views["umap"]]
    predicted = result.obs[pred_key].astype(str).to_numpy()
    c = st.columns(2)
    ui.chart(
        c[0],
        plots.embedding_scatter(
            umap, predicted, colors=plots.label_colors(predicted), title="predicted type"
        ),
        width="stretch",
        key="ann_pred_map",
    )
    if confidence_key in result.obs:
        ui.chart(
            c[1],
            plots.embedding_scatter(umap, conf, categorical=False, title="confidence (highest probability)"),
            width="stretch",
            key="ann_conf_map",
        )
    role_counts = pd.Series(annotation.roles(result)).value_counts()
    st.caption(
        "Cells: " + ", ".join(f"{int(v):,} {k}" for k, v in role_counts.items()) + ". Labels of held-out and "
        "unlabelled cells never entered training."
    )

with ui.guard("the confusion matrix"):
    table = annotation.confusion(result)
    if table.empty:
        st.caption("No labels were hidden, so there is no confusion matrix; set 'Hide to score' above 0.")
    else:
        st.markdown("**Hidden labels against predictions** (rows: the type you gave; columns: predicted)")
        ui.chart(st, plots.heatmap_figure(table, title=""), width="stretch", key="ann_confusion")

with ui.guard("the least sure cells"):
    st.markdown("**Cells the model is least sure of**")
    st.dataframe(annotation.least_sure(result, 20), hide_index=True)

with ui.guard("the genes"):
    st.markdown("**Genes that mark each predicted type** (among the genes the model attended to most)")
    st.dataframe(annotation.genes_per_type(result), hide_index=True)

with ui.guard("the downloads"):
    c = st.columns(2)
    frame = result.obs[[pred_key, *([confidence_key] if confidence_key in result.obs else [])]].copy()
    frame.insert(0, "cell", result.obs_names)
    c[0].download_button(
        "Predictions (CSV)",
        ui.on_click(lambda: frame.to_csv(index=False).encode(), "the predictions"),  # built on the click
        file_name=f"{run.id}_predictions.csv",
        mime="text/csv",
        key="ann_csv",
    )
    c[1].download_button(
        "result.h5ad",
        ui.on_click(lambda: run.file("result.h5ad").read_bytes(), "result.h5ad"),
        file_name=f"{run.id}.h5ad",
        key="ann_h5ad",
    )

with ui.guard("the comparison with clusters"):
    st.markdown("**Against the clusters of another run** (same data)")
    others = [i for i in state.runs() if i.id != run.id and i.state == "done" and i.model != MODEL]
    if not others:
        st.caption("No other finished run to compare with: train CellVGAE or another model on the same data.")
    else:
        other_labels = ui.run_labels(others, lambda i: f"{i.name} · {i.model}")
        pick = st.selectbox(
            "Run",
            [i.id for i in others],
            format_func=lambda rid: other_labels.get(rid, str(rid)),
            key="ann_other",
        )
        other_run = state.store().open(pick)
        other = cache.result(other_run)
        from scgraph_core import interpret

        other_views = interpret.result_views(other)
        cross, ari, n = annotation.compare_with_clusters(result, other, other_views["clusters"])
        st.caption(f"{n:,} cells in both runs; ARI between predicted types and clusters: {ari:.3f}.")
        ui.chart(st, plots.heatmap_figure(cross, title=""), width="stretch", key="ann_cross")
