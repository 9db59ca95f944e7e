"""Markers: differential expression over all genes for any grouping of the cells (every model), and for
models that expose them, genes read off the encoder weights (P_mu, P_sigma) per cluster and per latent
dimension, a gene search, and the overlap with scanpy's rank_genes_groups markers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from scgraph_app import cache, ui
from scgraph_core import data, de, interpret, params, plots
from scgraph_core import markers as mk

ui.header(
    "Markers",
    "Which genes set each group of cells apart (all genes), and which drive the model's latent dimensions.",
    "markers",
)

run, adata, views = ui.active_result(key="mk")


def gene_weight_section() -> None:
    """The P_mu / P_sigma views (CellVGAE): markers read off the encoder weights."""
    model = views.get("model", "")
    clusters_key = views.get("clusters")
    available = [k for k in ("P_mu", "P_sigma") if interpret.gene_weight_matrix(adata, k) is not None]
    kept = mk.genes_per_dimension(run.config, model)
    with ui.guard("the check of the learnt expression"):
        ui.learnt_expression_note(run, adata)

    with ui.guard("the marker settings"):
        c = st.columns([1, 1, 2])
        which = c[0].radio(
            "Gene weights",
            available,
            horizontal=True,
            key="mk_which",
            help="P_mu links genes to the latent means; P_sigma to the layer that sets each dimension's spread.",
        )
        n_genes = c[1].number_input(
            "Genes per dimension",
            5,
            100,
            kept,
            key="mk_n",
            help=f"Top genes kept per latent dimension ({kept} in this run's settings).",
        )
        weights, genes = interpret.gene_weight_matrix(adata, which)
        c[2].caption(
            f"{which}: {weights.shape[0]:,} genes x {weights.shape[1]} latent dimensions (the model's input genes)."
        )

    tab_cluster, tab_dim, tab_search, tab_overlap = st.tabs(
        [
            ":material/bubble_chart: Per cluster",
            ":material/view_column: Per latent dimension",
            ":material/search: Gene search",
            ":material/compare_arrows: Overlap with scanpy",
        ]
    )

    markers = cache.cluster_markers(run, which, int(n_genes))

    with tab_cluster, ui.guard("the marker table"):
        if markers.empty:
            st.info("No cluster drives a latent dimension strongly enough to name markers for it.")
        else:
            clusters = mk.cluster_order(markers["cluster"])
            sizes = (
                adata.obs[clusters_key].astype(str).value_counts()
                if clusters_key in adata.obs
                else pd.Series(dtype=int)
            )
            pick = st.multiselect(
                "Clusters",
                clusters,
                default=clusters,
                format_func=lambda k: f"{k} ({sizes.get(k, 0)} cells)",
                key="mk_clusters",
                help="Marker genes of the chosen clusters: genes with the largest signed weight on the latent "
                "dimensions the cluster drives; 'appearances' counts those dimensions.",
            )
            shown = markers[markers["cluster"].isin(pick)]
            st.dataframe(
                shown,
                hide_index=True,
                width="stretch",
                height=420,
                column_config={
                    "appearances": st.column_config.ProgressColumn(
                        "appearances",
                        format="%d",
                        min_value=0,
                        max_value=int(max(1, markers["appearances"].max())),
                    ),
                    "score": st.column_config.NumberColumn("summed weight", format="%.3f"),
                    "dimensions": st.column_config.TextColumn("latent dimensions"),
                },
            )
            st.download_button(
                "Marker genes (CSV)",
                shown.to_csv(index=False),
                file_name=f"{run.id}_{which}_markers.csv",
                mime="text/csv",
                key="dl_markers",
            )
            part = (adata.uns.get(model, {}) or {}).get("latent_participation")
            if part is not None:
                table = pd.DataFrame(part).set_index("dimension")
                table.columns = [str(c) for c in table.columns]
                with st.expander("Which clusters drive each latent dimension", expanded=False):
                    ui.chart(
                        st,
                        plots.heatmap_figure(
                            table,
                            x_title="cluster",
                            y_title="dimension",
                            title="% of a dimension's extreme cells in each cluster",
                        ),
                        width="stretch",
                        key="mk_participation",
                    )

    per_dim = cache.per_dimension(path, stamp, which, int(n_genes))
    with tab_dim, ui.guard("the per-dimension table"):
        dims = sorted(per_dim["dimension"].unique())
        c = st.columns([1, 3])
        dim = c[0].selectbox(
            "Latent dimension", dims, key="mk_dim", help="The genes with the largest signed weight on it."
        )
        with c[0]:
            st.dataframe(
                per_dim[per_dim["dimension"] == dim][["rank", "gene", "weight"]],
                hide_index=True,
                width="stretch",
                height=420,
                column_config={"weight": st.column_config.NumberColumn(which, format="%.4f")},
            )
        with c[1]:
            counts = interpret.dimension_appearances(per_dim)
            st.markdown(f"**Genes that appear among the top {int(n_genes)} of several dimensions**")
            st.dataframe(
                counts,
                hide_index=True,
                width="stretch",
                height=420,
                column_config={
                    "appearances": st.column_config.ProgressColumn(
                        "appearances",
                        format="%d",
                        min_value=0,
                        max_value=int(max(1, counts["appearances"].max() if len(counts) else 1)),
                    ),
                    "mean_weight": st.column_config.NumberColumn("mean weight", format="%.4f"),
                },
            )
        d = st.columns(2)
        d[0].download_button(
            "Top genes per dimension (CSV)",
            per_dim.to_csv(index=False),
            file_name=f"{run.id}_{which}_per_dimension.csv",
            mime="text/csv",
            key="dl_perdim",
        )
        d[1].download_button(
            "Appearance counts (CSV)",
            counts.to_csv(index=False),
            file_name=f"{run.id}_{which}_appearances.csv",
            mime="text/csv",
            key="dl_counts",
        )

    with tab_search, ui.guard("the gene search"):
        gene = st.selectbox(
            "Gene (type to search)",
            genes,
            index=None,
            placeholder="type a gene name, e.g. NKG7",
            key="mk_gene",
            help="Only the model's input genes have weights; the gene search above covers every gene.",
        )
        if gene is None:
            st.caption(f"{len(genes):,} genes have {which} weights.")
        else:
            row = weights[genes.index(gene)]
            ui.chart(
                st, plots.gene_weight_figure(row, gene, matrix=which), width="stretch", key="mk_gene_fig"
            )
            in_markers = markers[markers["gene"] == gene] if not markers.empty else markers
            in_dims = per_dim[per_dim["gene"] == gene]
            c = st.columns(2)
            c[0].markdown("**Marker of clusters**")
            if in_markers.empty:
                c[0].caption("Not among the marker genes of any cluster.")
            else:
                c[0].dataframe(in_markers[["cluster", "appearances", "score", "dimensions"]], hide_index=True)
            c[1].markdown(f"**Among the top {int(n_genes)} of dimensions**")
            if in_dims.empty:
                c[1].caption("Not among the top genes of any dimension.")
            else:
                c[1].dataframe(in_dims[["dimension", "rank", "weight"]], hide_index=True)

    with tab_overlap, ui.guard("the comparison with scanpy"):
        if clusters_key not in adata.obs or markers.empty:
            st.info("There are no clusters with marker genes to compare.")
        else:
            c = st.columns(3)
            method = c[0].selectbox(
                "scanpy test",
                ["wilcoxon", "t-test", "logreg"],
                key="mk_method",
                help="rank_genes_groups: each cluster against all other cells, on the log-normalised values.",
            )
            n_top = c[1].number_input(
                "Top genes compared",
                5,
                100,
                int(n_genes),
                key="mk_ntop",
                help="How many genes of each list are compared.",
            )
            feature_only = c[2].toggle(
                "Same genes as the model",
                value=True,
                key="mk_feat",
                help="Rank only the model's input genes, so both lists choose from the same genes.",
            )
            if (
                st.button(
                    "Compare with rank_genes_groups",
                    type="primary",
                    key="mk_compare",
                    icon=":material/compare_arrows:",
                )
                or st.session_state.get("mk_compared") == run.id
            ):
                st.session_state["mk_compared"] = run.id
                reference = cache.rank_genes(
                    path, stamp, clusters_key, max(int(n_top), 25), method, feature_only
                )
                overlap = interpret.marker_overlap(markers, reference, n_top=int(n_top))
                mean_j = overlap["jaccard"].mean() if len(overlap) else 0.0
                st.metric(
                    "mean overlap (Jaccard)",
                    f"{mean_j:.2f}",
                    help="Shared genes / genes in either list, averaged over clusters.",
                )
                st.dataframe(
                    overlap,
                    hide_index=True,
                    width="stretch",
                    column_config={
                        "model_genes": st.column_config.NumberColumn(f"{which} markers"),
                        "reference_genes": st.column_config.NumberColumn("scanpy markers"),
                        "shared": st.column_config.NumberColumn("shared"),
                        "jaccard": st.column_config.ProgressColumn(
                            "Jaccard", format="%.2f", min_value=0.0, max_value=1.0
                        ),
                        "shared_genes": st.column_config.TextColumn("genes in both"),
                    },
                )
                with st.expander("scanpy's markers per cluster"):
                    st.dataframe(reference, hide_index=True, width="stretch", height=360)
                d = st.columns(2)
                d[0].download_button(
                    "Overlap (CSV)",
                    overlap.to_csv(index=False),
                    file_name=f"{run.id}_marker_overlap.csv",
                    mime="text/csv",
                    key="dl_overlap",
                )
                d[1].download_button(
                    "scanpy markers (CSV)",
                    reference.to_csv(index=False),
                    file_name=f"{run.id}_rank_genes_groups.csv",
                    mime="text/csv",
                    key="dl_rgg",
                )


path, stamp = str(run.path), cache.result_stamp(run)
label_key = (run.config or {}).get("label_key")
input_genes = de.model_input_genes(adata)
if "_mk_message" in st.session_state:
    st.toast(st.session_state.pop("_mk_message"), icon=":material/save:")


def de_section() -> None:
    """rank_genes_groups on every gene, for a grouping the user chooses; any model."""
    st.subheader("Marker genes of any grouping (all genes)")
    options = dict(de.groupings(adata, label_key))
    if not options:
        st.info(
            "This result has no grouping of the cells to compare (no clusters, labels or annotations). "
            "Re-cluster or save an annotation on the Embedding page.",
            icon=":material/info:",
        )
        return
    c = st.columns([2, 1, 1])
    groupby = c[0].selectbox(
        "Group cells by",
        list(options),
        format_func=lambda k: f"{k} ({options[k]})",
        key="de_groupby",
        help="The known cell types, the model's clusters, other clusterings (Leiden), annotations saved in "
        "the app, or any other column of the cell table.",
    )
    method = c[1].selectbox(
        "Test",
        list(de.METHODS),
        key="de_method",
        help="Wilcoxon rank-sum (scanpy's recommended default) or Welch's t-test; each group against all "
        "other cells, p-values adjusted for the number of genes (Benjamini-Hochberg).",
    )
    n_top = int(
        c[2].number_input(
            "Genes per group", 1, 100, 10, key="de_n", help="Top genes of each group in the table and plots."
        )
    )
    done = st.session_state.setdefault("de_done", [])
    ask = [run.id, groupby, method]
    if st.button("Find marker genes", type="primary", key="de_go", icon=":material/science:"):
        done.append(ask)
    if ask not in done:
        st.caption(
            f"Ranks all {adata.n_vars:,} genes of this result (not only the model's input genes) in every "
            "group of the chosen column."
        )
        return
    result = cache.de_groups(run, groupby, method)
    values = result.uns["params"].get("values", "log-normalised values")
    st.caption(
        f"{method} on {values} of all {adata.n_vars:,} genes; {len(result.groups)} groups, each against the "
        "other cells (HDBSCAN noise and groups under 3 cells left out); adjusted p: Benjamini-Hochberg."
    )
    top = result.top(n_top)
    genes = list(dict.fromkeys(top["gene"]))
    tab_table, tab_dot, tab_heat, tab_search = st.tabs(
        [
            ":material/table: Top genes",
            ":material/scatter_plot: Dot plot",
            ":material/grid_on: Heatmap",
            ":material/search: Gene search",
        ]
    )
    columns = {
        "score": st.column_config.NumberColumn("score", format="%.2f", help="The test statistic (z-score)."),
        "logfoldchange": st.column_config.NumberColumn(
            "log2 fold change", format="%.2f", help="Group mean over the other cells' mean, log2."
        ),
        "pval": st.column_config.NumberColumn("p-value", format="%.2e"),
        "pval_adj": st.column_config.NumberColumn("adjusted p", format="%.2e"),
        "pct_group": st.column_config.NumberColumn("% in group", format="%.0f"),
        "pct_rest": st.column_config.NumberColumn("% in others", format="%.0f"),
    }
    with tab_table:
        st.dataframe(top, hide_index=True, width="stretch", height=420, column_config=columns)
        d = st.columns(2)
        d[0].download_button(
            "Top genes (CSV)",
            top.to_csv(index=False),
            file_name=f"{run.id}_{groupby}_top_genes.csv",
            mime="text/csv",
            key="dl_de_top",
        )
        d[1].download_button(
            "Every gene (CSV)",
            result.table.to_csv(index=False),
            file_name=f"{run.id}_{groupby}_rank_genes_groups.csv",
            mime="text/csv",
            key="dl_de_all",
        )
    means, fractions = de.group_expression(adata, groupby, genes, groups=result.groups)
    with tab_dot:
        ui.chart(
            st,
            plots.dot_plot_figure(means, fractions, title=f"Top {n_top} genes per group"),
            width="stretch",
            key="de_dot",
        )
    with tab_heat:
        ui.chart(
            st,
            plots.group_heatmap_figure(means, title="Mean expression per group, each gene scaled 0-1"),
            width="stretch",
            key="de_heat",
        )
    with tab_search:
        gene_search(result, groupby)
    with st.expander("Save these marker genes into the run", expanded=False):
        name = st.text_input(
            "Name in the result file",
            f"rank_genes_groups_{groupby}"[:100],
            key="de_save_name",
            help="Stored as uns[name] in scanpy's rank_genes_groups layout: "
            "sc.get.rank_genes_groups_df(adata, group, key=name) reads it.",
        )
        if st.button("Save into the run", key="de_save", icon=":material/save:"):
            cache.update_result(run, lambda a: de.add_de_result(a, name, result))
            st.session_state["_mk_message"] = f"Saved as uns['{name}'] in the run's result.h5ad."
            st.rerun()


def gene_search(result: de.DEResult, groupby: str) -> None:
    all_genes = [str(g) for g in adata.var_names]
    gene = st.selectbox(
        "Gene (type to search)",
        all_genes,
        index=None,
        placeholder="type a gene name, e.g. GFAP",
        key="de_gene",
        help="Every gene of the result; genes expressed in too few cells were dropped before training.",
    )
    if gene is None:
        st.caption(f"{len(all_genes):,} genes can be searched.")
        return
    rows = result.table[result.table["gene"] == gene].drop(columns=["gene"])
    st.markdown(f"**{ui.md(gene)}** in each group of {ui.md(groupby)}")
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "pval": st.column_config.NumberColumn("p-value", format="%.2e"),
            "pval_adj": st.column_config.NumberColumn("adjusted p", format="%.2e"),
            "logfoldchange": st.column_config.NumberColumn("log2 fold change", format="%.2f"),
            "score": st.column_config.NumberColumn("score", format="%.2f"),
        },
    )
    means, fractions = de.group_expression(adata, groupby, [gene], groups=result.groups)
    ui.chart(st, plots.dot_plot_figure(means, fractions), width="stretch", key="de_gene_dot")
    if input_genes is not None and gene not in set(input_genes):
        hvg = params.info_of(data.PrepareSpec, "n_hvg")
        st.info(
            f"**{ui.md(gene)}** is not among the model's {len(input_genes):,} input genes (the highly variable "
            "genes chosen before training), so the model never saw it and it has no gene weights (P_mu). "
            "Its differential expression here uses all genes. To include it in the model, train a new run "
            f"with more highly variable genes: raise **{ui.md(hvg.label[0].upper() + hvg.label[1:])}** "
            f"({hvg.name}, command line `{hvg.flag}`; Model & graph page, Cell graph tab) until it is selected, "
            "or set it to 0 to use "
            "every gene.",
            icon=":material/info:",
        )
    elif input_genes is not None and views.get("gene_weights"):
        found = interpret.gene_weight_matrix(adata, "P_mu")
        if found is not None and gene in found[1]:
            ui.chart(
                st,
                plots.gene_weight_figure(found[0][found[1].index(gene)], gene, matrix="P_mu"),
                width="stretch",
                key="de_gene_pmu",
            )


with ui.guard("the differential expression"):
    de_section()

st.subheader("Marker genes from the model's weights (P_mu)")
if views.get("gene_weights"):
    gene_weight_section()
else:
    st.info(
        f"This run's model ({ui.md(views.get('model', '?'))}) exposes no gene weights (P_mu): marker genes "
        "read off the encoder weights exist for CellVGAE. The differential expression above works for "
        "every model.",
        icon=":material/info:",
    )
