"""Data: choose the demo, upload a file or give a server path; summary, QC, preprocessing, labels."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from scgraph_app import cache, config, forms, state, ui
from scgraph_core import data, jobs, plots, roots
from scgraph_core.errors import DataError

ui.header(
    "Data",
    "Load a cells x genes matrix, check its quality and choose how it is prepared for the model.",
    "data",
)

SOURCES = {
    "demo": "Built-in demo (PBMC 68k reduced)",
    "upload": "Upload a file",
    "path": "File or folder on this server",
}
UPLOAD_TYPES = ["h5ad", "h5", "hdf5", "loom", "csv", "tsv", "txt", "tab", "gz", "zip"]
ORIENTATIONS = {
    "auto": "detect from the names",
    "cells_x_genes": "cells are rows",
    "genes_x_cells": "genes are rows",
}
KIND_WORDS = {
    "counts": "raw counts",
    "lognorm": "log-normalised",
    "normalized": "normalised (not log)",
    "scaled": "scaled (z-scores)",
    "empty": "empty",
}


def _source_kind(source: dict) -> str:
    if state.is_demo(source):
        return "demo"
    return source.get("kind", "path")


with ui.guard("choosing the dataset"):
    source = state.dataset_source()
    options = list(SOURCES)
    picked = st.radio(
        "Where do the cells come from?",
        options,
        index=options.index(_source_kind(source)),
        format_func=SOURCES.get,
        horizontal=True,
        key="data_source_kind",
        help="The demo is scanpy's bundled pbmc68k_reduced (700 blood cells, 765 genes, no download). "
        "Upload a file up to the server's upload limit, or give the path of a larger file or a 10x "
        "matrix folder on this machine.",
    )
    if picked == "demo" and not state.is_demo(source):
        if st.button("Use the built-in demo", type="primary", key="use_demo"):
            state.set_dataset_source(dict(state.DEMO_SOURCE))
            st.rerun()
    elif picked == "upload":
        cols = st.columns([3, 1])
        uploaded = cols[0].file_uploader(
            "Expression file",
            type=UPLOAD_TYPES,
            key="data_upload",
            help="AnnData .h5ad, 10x .h5, .loom, a .zip of a 10x matrix folder, or a .csv/.tsv/.txt table "
            "(optionally .gz). The file is kept in the scgraph home folder so training can read it.",
        )
        orientation = cols[1].selectbox(
            "Table orientation",
            list(ORIENTATIONS),
            format_func=ORIENTATIONS.get,
            key="upload_orientation",
            help="Only for text tables: which way round the matrix is. Auto reads it from the row and "
            "column names (barcodes, gene symbols) and says what it decided.",
        )
        if uploaded is not None:
            wanted = (uploaded.file_id, orientation)
            if st.session_state.get("_saved_upload") != wanted or source.get("kind") != "upload":
                path = jobs.save_upload(uploaded.name, uploaded.getvalue())
                state.set_dataset_source(
                    {
                        "path": str(path),
                        "orientation": orientation,
                        "format": None,
                        "name": uploaded.name,
                        "kind": "upload",
                    }
                )
                st.session_state["_saved_upload"] = wanted
                st.rerun()
    elif picked == "path":
        cols = st.columns([3, 1, 1])
        typed = cols[0].text_input(
            "Path on the server",
            value="" if state.is_demo(source) else str(source.get("path", "")),
            placeholder="/data/experiment/filtered_feature_bc_matrix",
            key="data_path",
            help="A file (.h5ad, .h5, .loom, .csv, .tsv, .zip, .mtx) or a 10x matrix folder inside the server's "
            "data folders (listed below; set by SCGRAPH_DATA_ROOTS); a relative path starts at the first one. "
            "Use this for files larger than the upload limit.",
        )
        orientation = cols[1].selectbox(
            "Table orientation",
            list(ORIENTATIONS),
            format_func=ORIENTATIONS.get,
            key="path_orientation",
            help="Only for text tables (csv/tsv): which way round the matrix is.",
        )
        fmt = cols[2].selectbox(
            "Format",
            [None, *data.FORMATS],
            format_func=lambda f: "detect from the name" if f is None else f"{f}: {data.FORMATS[f]}",
            key="path_format",
            help="Override the format guessed from the file name.",
        )
        st.caption(f"Data folders this server reads from: {ui.md(roots.describe_roots())}.")
        if st.button("Load this file", type="primary", key="load_path", disabled=not typed.strip()):
            try:
                found = roots.resolve(typed)
            except DataError as exc:
                st.error(ui.md(str(exc)), icon=":material/error:")
            else:
                state.set_dataset_source(
                    {
                        "path": str(found),
                        "orientation": orientation,
                        "format": fmt,
                        "name": typed.strip().rstrip("/").rsplit("/", 1)[-1],
                        "kind": "path",
                    }
                )
                st.rerun()

source = state.dataset_source()
loaded = None
with ui.guard("reading the dataset"):
    adata = cache.dataset(source)
    info = cache.overview(source)
    loaded = adata

if loaded is not None:
    with ui.guard("the dataset summary"):
        summary = info["summary"]
        st.subheader(f"{ui.md(source.get('name', 'dataset'))}")
        note = (summary.get("source") or {}).get("orientation_reason")
        if note:
            st.caption(f"Orientation: {ui.md(note)}")
        c = st.columns(4)
        c[0].metric("cells", f"{summary['n_cells']:,}", help="Rows of the matrix (observations).")
        c[1].metric("genes", f"{summary['n_genes']:,}", help="Columns of the matrix (variables).")
        c[2].metric(
            "raw counts",
            "yes" if info["has_counts"] else "no",
            help="Count models (scVGAE, AttentionAE-sc) need raw counts in X or in a 'counts' layer.",
        )
        c[3].metric(
            "cell annotations", f"{len(summary['obs_columns'])}", help="Columns of the cell table (obs)."
        )
        st.caption(
            f"X holds {KIND_WORDS.get(summary['x_kind'], summary['x_kind'])} values (read from the values: whole "
            f"numbers are raw counts, negative numbers mean scaled data), stored "
            f"{'sparse' if summary['sparse'] else 'dense'} with {summary['density']:.0%} non-zero entries"
            + (f"; layers: {', '.join(map(ui.md, summary['layers']))}" if summary.get("layers") else "")
            + "."
        )
        for message in info["errors"]:
            st.error(ui.md(message), icon=":material/error:")
        for message in info["warnings"]:
            st.warning(ui.md(message), icon=":material/warning:")
        for message in info.get("notes", []):
            st.info(ui.md(message), icon=":material/info:")
        if state.is_demo(source):
            st.caption(
                "The demo holds log-normalised values (scanpy's bundled copy has no raw counts), so count "
                "models cannot train on it; CellVGAE can."
            )

        left, right = st.columns([2, 3])
        with left:
            st.markdown("**Cell annotations** (obs columns)")
            rows = []
            for name, desc in summary["obs_columns"].items():
                values = loaded.obs[name]
                examples = ", ".join(map(str, pd.unique(values.astype(str))[:4]))
                rows.append(
                    {
                        "column": name,
                        "type": desc.get("dtype", ""),
                        "distinct": (
                            f"{desc['n_unique']:,} (numeric)"
                            if desc.get("numeric")
                            else f"{desc.get('n_unique', 0):,}"
                        ),
                        "examples": examples,
                    }
                )
            if rows:
                st.dataframe(
                    pd.DataFrame(rows), hide_index=True, width="stretch", height=min(35 * len(rows) + 38, 320)
                )
            else:
                st.caption("This file has no cell annotations.")
        with right:
            st.markdown("**Quality control**")
            ui.chart(
                st,
                plots.qc_figure(info["qc"], info["qc_notes"]),
                width="stretch",
                key="qc_plot",
                config={"displaylogo": False},
            )
            for key in ("total", "genes", "mito_pct"):
                if key in info["qc_notes"]:
                    st.caption(f"{ui.md(key.replace('_pct', ''))}: {ui.md(info['qc_notes'][key])}")
            if "mito_pct" not in info["qc"]:
                st.caption(
                    "No mitochondrial share: no gene name starts with MT- (or mt-) and no such column."
                )

    with ui.guard("the label column"):
        st.subheader("Labels for colouring and scoring")
        choices = config.label_columns(loaded)
        current = config.label_key_for(loaded)
        options = [None, *choices]
        cfg = state.config_state()
        picked_label = st.selectbox(
            "Known cell types (optional)",
            options,
            index=options.index(current) if current in options else 0,
            format_func=lambda v: "none: no labels" if v is None else v,
            key=f"label_key:{source.get('path')}",
            help="An obs column with known cell types. It colours the plots and scores the clusters "
            "(ARI, NMI); unsupervised models never see it while training.",
        )
        cfg["label_key"], cfg["label_key_set"] = picked_label, True
        if picked_label is not None:
            counts = loaded.obs[picked_label].astype(str).value_counts()
            st.caption(
                f"{len(counts)} types: "
                + ", ".join(f"{ui.md(k)} ({v})" for k, v in counts.head(12).items())
                + (" ..." if len(counts) > 12 else "")
            )

    with ui.guard("the preprocessing settings"):
        st.subheader("Preparation")
        cfg = state.config_state()
        st.caption(
            f"Defaults come from the {ui.md(cfg['preset'])} preset of the chosen model "
            f"({ui.md(cfg['model'])}); the number of genes for the model and for the graph is set on the "
            "Model & graph page."
        )
        forms.schema_form(
            data.PrepareSpec,
            "prepare",
            config.base_values(cfg["model"], cfg["preset"])["prepare"],
            key=f"{cfg['model']}:{cfg['preset']}",
            exclude=("n_hvg", "n_graph_genes"),
            columns=3,
        )
        ui.go_button("Next: model & graph", "model", key="data_next", icon=":material/arrow_forward:")
