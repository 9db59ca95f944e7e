"""scgraph app entry point (Streamlit). UI only: every computation is a call into scgraph_core.

This first version loads and describes the built-in demo dataset; the full multipage workbench
(load, configure, train live, explore) replaces it.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from scgraph_core import data
from scgraph_core.errors import ScgraphError

st.set_page_config(page_title="scgraph", page_icon="assets/logo.svg", layout="wide")


@st.cache_resource(show_spinner="Loading the built-in PBMC demo...")
def demo():
    return data.load_demo()


st.image("assets/logo.svg", width=64)
st.title("scgraph")
st.caption(
    "Graph neural networks on single-cell RNA-seq data: CellVGAE, scVGAE, AttentionAE-sc, scGNN, scBiGNN."
)

try:
    adata = demo()
    report = data.validate(adata)
    summary = data.summarize(adata)
except ScgraphError as exc:
    st.error(str(exc))
    st.stop()

st.subheader("Built-in demo: PBMC 68k (reduced)")
c1, c2, c3 = st.columns(3)
c1.metric("cells", f"{summary['n_cells']:,}")
c2.metric("genes", f"{summary['n_genes']:,}")
c3.metric(
    "values in X",
    {"counts": "raw counts", "lognorm": "log-normalised", "scaled": "scaled"}[summary["x_kind"]],
)
st.write("Cell annotations (obs columns):")
st.dataframe(
    pd.DataFrame(
        [
            {"column": name, "type": desc.get("dtype", ""), "distinct values": desc.get("n_unique")}
            for name, desc in summary["obs_columns"].items()
        ]
    ),
    hide_index=True,
    use_container_width=True,
)
for warning in report.warnings:
    st.warning(warning)
st.info(
    "Training from the browser is coming next. Meanwhile the command line trains CellVGAE on this "
    "dataset: `python -m scgraph_core train --model cellvgae --input demo --preset quick`."
)
