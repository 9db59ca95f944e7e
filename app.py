"""scgraph: the Streamlit workbench (UI only; every computation is a call into scgraph_core).

``streamlit run app.py`` (or ``make run``) opens it on the built-in demo dataset. This file sets up the
page, the sidebar (dataset, active run, device) and the navigation; each step a user takes is one page
in ``pages/``. The address keeps the dataset, model, preset and active run, so a reload restores them
(``scgraph_app/url.py``).
"""

from __future__ import annotations

import gc

import streamlit as st

from scgraph_app import sidebar, ui, url

st.set_page_config(
    page_title="scgraph",
    page_icon="assets/logo.svg",
    layout="wide",
    initial_sidebar_state="expanded",
    menu_items={"About": "scgraph: graph neural networks on single-cell RNA-seq data, in the browser."},
)
st.logo("assets/logo.svg", size="large")

with ui.guard("the link"):
    url.restore()  # a new session (a reload, a shared link) starts from the address's choices

with ui.guard("the sidebar"):
    sidebar.draw()
    url.show_notes()

imputation_visible = False
with ui.guard("the page list"):
    imputation_visible = sidebar.active_run_has("imputed_layer")

pages = {
    "Set up": [
        st.Page(ui.PAGES["data"], title="Data", icon=":material/dataset:", default=True),
        st.Page(ui.PAGES["model"], title="Model & graph", icon=":material/hub:"),
        st.Page(ui.PAGES["training"], title="Training", icon=":material/model_training:"),
    ],
    "Explore": [
        st.Page(ui.PAGES["embedding"], title="Embedding", icon=":material/scatter_plot:"),
        st.Page(ui.PAGES["attention"], title="Attention", icon=":material/share:"),
        st.Page(ui.PAGES["markers"], title="Markers", icon=":material/format_list_numbered:"),
        st.Page(ui.PAGES["annotate"], title="Annotate", icon=":material/label:"),
        st.Page(ui.PAGES["expression"], title="Expression", icon=":material/gradient:"),
        st.Page(
            ui.PAGES["imputation"],
            title="Imputation",
            icon=":material/auto_fix_high:",
            visibility="visible" if imputation_visible else "hidden",
        ),
    ],
    "Manage": [st.Page(ui.PAGES["runs"], title="Runs", icon=":material/inventory_2:")],
}
page = st.navigation(pages, position="sidebar", expanded=True)
try:
    ui.open_deep_link()
    page.run()
finally:
    # Also when the page stops or reruns: the address always holds the latest choices.
    with ui.guard("the link"):
        url.sync()
    # After a whole-page run only (Streamlit's own collection after every run, the live view's included, is
    # off in .streamlit/config.toml): what a page dropped is freed before the next one.
    gc.collect()
