"""Imputation: observed against imputed expression (same UMAP), the value distribution, gene-gene plots.

Shown in the page list for runs whose views manifest names an ``imputed_layer`` (scVGAE, AttentionAE-sc,
scGNN).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from scgraph_app import cache, ui
from scgraph_core import imputation, interpret, plots

ui.header(
    "Imputation",
    "Values the model filled in for the zeros of the data, next to what was measured.",
    "imputation",
)

run, adata, views = ui.active_result(key="imp")
ui.need_view(
    views,
    "imputed_layer",
    "This run has no imputed expression. Models that impute (scVGAE, scGNN, AttentionAE-sc with its denoised "
    "output) add this page for their runs.",
    empty_key="imp-none",
)
layer = views["imputed_layer"]
scale = str(views.get("imputed_scale") or "")
if layer not in adata.layers:
    st.error(
        f"The result lists the imputed layer {ui.md(layer)} but the file does not hold it. Train the run again."
    )
    st.stop()
# Compare like with like: expected counts against the raw counts, other scales against X.
observed_layer, observed_name = imputation.observed_layer(adata, scale)
label_key = (run.config or {}).get("label_key")
label_key = label_key if label_key in adata.obs else None


@st.cache_data(max_entries=8, show_spinner=False)
def default_genes(path: str, stamp: float, layer: str) -> list[str]:
    result = cache._load_result(path, stamp)
    modelled = next((c for c in result.var.columns if str(c).endswith("_modelled")), None)
    return interpret.imputed_start_genes(result, layer, modelled=modelled)


with ui.guard("the gene choice"):
    genes = [str(g) for g in adata.var_names]
    suggested = default_genes(str(run.path), cache.result_stamp(run), layer) or genes
    c = st.columns([3, 1, 1])
    gene = c[0].selectbox(
        "Gene (type to search)",
        genes,
        index=genes.index(suggested[0]),
        key="imp_gene",
        help="Any gene of the result: observed values on the left, imputed on the right.",
    )
    log_view = c[1].toggle(
        "log1p for display",
        value=scale == "counts",
        key="imp_log",
        help="Counts are heavy-tailed; log1p makes both plots readable. The downloads hold the raw values.",
    )
    same = c[2].toggle(
        "Same colour range", value=True, key="imp_same", help="Use one colour range for both plots."
    )
    observed = cache.expression(adata, gene, observed_layer)
    imputed = cache.expression(adata, gene, layer)
    show_obs, show_imp = (
        (np.log1p(np.clip(observed, 0, None)), np.log1p(np.clip(imputed, 0, None)))
        if log_view
        else (observed, imputed)
    )

with ui.guard("the observed and imputed plots"):
    coords = cache.layout(run, adata)
    stats = imputation.imputation_stats(observed, imputed)
    k = st.columns(4)
    k[0].metric(
        "cells at 0 before",
        f"{stats.zero_fraction:.0%}",
        help=f"Share of cells where the {observed_name} value is 0.",
    )
    k[1].metric(
        "mean imputed at those zeros",
        f"{stats.mean_at_zeros:.3g}" if np.isfinite(stats.mean_at_zeros) else "-",
        help=f"The model's average value ({scale or 'its scale'}) in the cells where nothing was measured.",
    )
    k[2].metric(
        "mean imputed elsewhere", f"{stats.mean_elsewhere:.3g}" if np.isfinite(stats.mean_elsewhere) else "-"
    )
    k[3].metric(
        "correlation",
        f"{stats.correlation:.2f}" if np.isfinite(stats.correlation) else "-",
        help="Pearson r of observed and imputed values across cells.",
    )
    lo = float(min(show_obs.min(), show_imp.min())) if same else None
    hi = float(max(show_obs.max(), show_imp.max())) if same else None
    c = st.columns(2)
    for col, values, title, key in (
        (c[0], show_obs, f"observed ({observed_name})", "imp_obs"),
        (c[1], show_imp, f"imputed ({scale or layer})", "imp_imp"),
    ):
        fig = plots.embedding_scatter(
            coords, values, name="log1p" if log_view else "value", categorical=False, title=title, height=430
        )
        if same:
            fig.update_traces(
                marker={"cmin": lo, "cmax": hi}, selector={"name": "log1p" if log_view else "value"}
            )
        ui.chart(col, fig, width="stretch", key=f"{key}:{gene}")

with ui.guard("the value distribution"):
    ui.chart(
        st,
        plots.imputation_histogram(
            show_obs, show_imp, gene=gene, scale=("log1p " if log_view else "") + (scale or "")
        ),
        width="stretch",
        key=f"imp_hist:{gene}",
    )

with ui.guard("the gene-gene plot"):
    st.subheader("Two genes, before and after imputation")
    c = st.columns(2)
    second = [g for g in suggested if g != gene] or [g for g in genes if g != gene]
    gx = c[0].selectbox(
        "First gene", genes, index=genes.index(gene), key="imp_gx", help="Drawn on the x axis of both plots."
    )
    gy = c[1].selectbox(
        "Second gene",
        genes,
        index=genes.index(second[0]),
        key="imp_gy",
        help="Drawn on the y axis of both plots.",
    )
    tx = (lambda v: np.log1p(np.clip(v, 0, None))) if log_view else (lambda v: v)
    labels = adata.obs[label_key].to_numpy() if label_key else None
    colours = plots.obs_colors(adata, label_key) if label_key else None
    ui.chart(
        st,
        plots.gene_gene_figure(
            (
                tx(cache.expression(adata, gx, observed_layer)),
                tx(cache.expression(adata, gy, observed_layer)),
            ),
            (tx(cache.expression(adata, gx, layer)), tx(cache.expression(adata, gy, layer))),
            (gx, gy),
            labels=labels,
            colors=colours,
            label_name=label_key or "",
            value_name="log1p" if log_view else "",
        ),
        width="stretch",
        key=f"imp_gg:{gx}:{gy}",
    )
    st.caption(
        "A correlation that appears only after imputation can be biology the dropouts hid, or smoothing the "
        "model added: check it in the cell types where both genes are expected."
        + (f" Points are coloured by {ui.md(label_key)}." if label_key else "")
    )
    table = pd.DataFrame({"cell": adata.obs_names})
    for g in dict.fromkeys([gene, gx, gy]):
        table[f"{g}_observed"] = cache.expression(adata, g, observed_layer)
        table[f"{g}_imputed"] = cache.expression(adata, g, layer)
    st.download_button(
        "Observed and imputed values of these genes (CSV)",
        ui.on_click(lambda: table.to_csv(index=False), "the imputed values"),  # built on the click
        file_name=f"{run.id}_imputed_genes.csv",
        mime="text/csv",
        key="dl_imputed",
    )
