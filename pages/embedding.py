"""Embedding: the latent space on a UMAP, coloured by anything; re-clustering; scores; two runs side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd
import streamlit as st

from scgraph_app import cache, state, ui
from scgraph_core import de, interpret, params, plots, train

ui.header(
    "Embedding",
    "Each dot is a cell, placed by the model's latent space (UMAP). Colour it, re-cluster it, select cells.",
    "embedding",
)

run, adata, views = ui.active_result(key="emb")
path, stamp = str(run.path), cache.result_stamp(run)
label_key = (run.config or {}).get("label_key")
label_key = label_key if label_key in adata.obs else None
recluster_key = f"recluster:{run.id}"
selections_key = f"selections:{run.id}"  # name -> row numbers of cells kept from the lasso
selections: dict[str, list[int]] = st.session_state.setdefault(selections_key, {})
with ui.guard("the verdict on this run"):
    ui.verdict_box(run, adata)
if "_emb_message" in st.session_state:
    st.toast(st.session_state.pop("_emb_message"), icon=":material/save:")

COLOUR_KINDS = {
    "clusters": "clusters found by the model",
    "labels": "known cell types",
    "obs": "another cell annotation",
    "gene": "a gene's expression",
    "dim": "a latent dimension",
}


def colour_choice(prefix: str, result, result_views: dict, result_label: str | None):
    """Widgets for 'colour by', returning (values, name, categorical)."""
    kinds = list(COLOUR_KINDS)
    if not result_label:
        kinds.remove("labels")
    cols = st.columns([1, 2])
    kind = cols[0].selectbox(
        "Colour cells by",
        kinds,
        format_func=COLOUR_KINDS.get,
        key=f"{prefix}:kind",
        help="Clusters and cell types colour by group; a gene or a latent dimension by value.",
    )
    if kind == "clusters":
        options = [result_views.get("clusters"), *(result_views.get("other_clusters") or [])]
        options = [o for o in options if o and o in result.obs]
        if st.session_state.get(recluster_key) and result is adata:
            options.append("re-clustered here")
        if not options:
            st.info("This result stores no clustering.")
            return None, "", True
        which = cols[1].selectbox(
            "Clustering",
            options,
            key=f"{prefix}:clusters",
            help="The first is the model's reported (label-free) clustering; others are alternatives it "
            "stored, or the one computed below.",
        )
        if which == "re-clustered here":
            spec = st.session_state[recluster_key]
            labels = cache.recluster(
                path, stamp, spec["method"], json.dumps(spec["options"], sort_keys=True)
            )["labels"]
            return np.where(labels < 0, "noise", labels.astype(str)), "re-clustered", True
        return result.obs[which].astype(str).to_numpy(), which, True
    if kind == "labels":
        return result.obs[result_label].astype(str).to_numpy(), result_label, True
    if kind == "obs":
        columns = [str(c) for c in result.obs.columns]
        which = cols[1].selectbox(
            "Annotation", columns, key=f"{prefix}:obs", help="Any column of the cell table."
        )
        col = result.obs[which]
        categorical = not pd.api.types.is_numeric_dtype(col) or col.nunique() <= 12
        values = col.astype(str).to_numpy() if categorical else col.to_numpy(dtype=float)
        return values, which, categorical
    if kind == "gene":
        genes = list(map(str, result.var_names))
        default = next((g for g in ("NKG7", "LYZ", "CD79A", "MS4A1") if g in set(genes)), genes[0])
        gene = cols[1].selectbox(
            "Gene (type to search)",
            genes,
            index=genes.index(default),
            key=f"{prefix}:gene",
            help="Log-normalised expression of the gene in each cell.",
        )
        return cache.expression(result, gene), gene, False
    emb = np.asarray(result.obsm[result_views["embedding"]])
    dim = cols[1].slider(
        "Latent dimension",
        0,
        emb.shape[1] - 1,
        0,
        key=f"{prefix}:dim",
        help="The cell's value on one latent dimension.",
    )
    return emb[:, dim], f"dimension {dim}", False


def colours_for(result, name: str) -> dict[str, str] | None:
    # One colour per label of the whole obs column, the same in every figure of every page.
    return plots.obs_colors(result, name) if name and name in result.obs else None


@st.fragment
def umap_view() -> None:
    """The UMAP and the selection: a colour change or a selection reruns only this part."""
    with ui.guard("the UMAP"):
        coords = cache.layout(run, adata)
        values, name, categorical = colour_choice("emb", adata, views, label_key)
        hover = adata.obs_names.to_numpy() if adata.n_obs <= 50_000 else None
        fig = plots.embedding_scatter(
            coords,
            values,
            name=name,
            categorical=categorical,
            colors=colours_for(adata, name) if categorical else None,
            hover=hover,
            dragmode="lasso",
            height=560,
        )
        event = ui.chart(
            st,
            fig,
            width="stretch",
            key=f"umap:{run.id}",
            on_select="rerun",
            selection_mode=("box", "lasso"),
            config={"displaylogo": False, "scrollZoom": True},
        )
        laid = adata.uns.get("umap_sample")
        laid_note = (
            f" The layout was computed on a random sample of {int(laid['cells']):,} cells; every other cell "
            f"sits at the mean position of its {int(laid['k'])} nearest sampled cells in the embedding."
            if isinstance(laid, Mapping) and {"cells", "k"} <= set(laid)
            else ""
        )
        st.caption(
            f"{adata.n_obs:,} cells. Drag with the lasso (or the box tool) to select cells; double-click to clear. "
            f"Click a legend entry to hide a group.{laid_note}"
        )
        chosen = plots.selected_cells(fig, (event or {}).get("selection") if event else None)
        if chosen.size:
            st.markdown(f"**{chosen.size:,} cells selected**")
            groups = [(views.get("clusters"), "clusters")]
            if label_key:
                groups.insert(0, (label_key, "known cell types"))
            cols = st.columns(len(groups))
            for col, (key, title) in zip(cols, groups, strict=False):
                if key and key in adata.obs:
                    ui.chart(
                        col,
                        plots.composition_figure(
                            adata.obs[key].astype(str).to_numpy()[chosen],
                            title=title,
                            colors=colours_for(adata, key),
                        ),
                        width="stretch",
                        key=f"comp:{key}",
                    )
            k = st.columns([2, 1])
            keep_name = k[0].text_input(
                "Name of this selection",
                f"selection {len(selections) + 1}",
                key="sel_name",
                help="Kept selections can be compared below (differential expression) and saved into the run "
                "as an annotation.",
            )
            if k[1].button("Keep this selection", key="sel_keep", icon=":material/bookmark_add:"):
                name = keep_name.strip()
                if not name:
                    st.warning("Give the selection a name.")
                else:
                    selections[name] = [int(i) for i in chosen]
                    st.session_state["_emb_message"] = f"Kept {chosen.size:,} cells as '{name}'."
                    st.rerun(scope="app")
            table = adata.obs.iloc[chosen][[c for c in (label_key, views.get("clusters")) if c]].copy()
            table.insert(0, "cell", adata.obs_names[chosen])
            st.download_button(
                "Download the selected cells (CSV)",
                ui.on_click(lambda: table.to_csv(index=False), "the cell table"),  # built on the click
                file_name=f"{run.id}_selected_cells.csv",
                mime="text/csv",
                key="dl_selected",
            )


umap_view()


def selection_de() -> None:
    """Differential expression of a kept selection against the other cells or a second selection."""
    st.subheader("Selected cells: which genes set them apart")
    if not selections:
        st.caption(
            "Lasso cells on the UMAP above and press 'Keep this selection' to compare them with the other "
            "cells (or with a second selection) over all genes."
        )
        return
    names = list(selections)
    st.caption(" · ".join(f"{ui.md(n)}: {len(selections[n]):,} cells" for n in names))
    c = st.columns([2, 2, 1])
    first = c[0].selectbox("Cells", names, key="sel_a", help="A selection kept from the UMAP.")
    rest = "all other cells"
    second = c[1].selectbox(
        "Against",
        [rest, *[n for n in names if n != first]],
        key="sel_b",
        help="Every other cell, or a second kept selection (cells in both are left out).",
    )
    method = c[2].selectbox("Test", list(de.METHODS), key="sel_method", help="Wilcoxon rank-sum or t-test.")
    c = st.columns([1, 1, 2])
    lfc = c[0].number_input(
        "log2 fold change at least", 0.0, 10.0, 1.0, 0.25, key="sel_lfc", help="For the volcano's colours."
    )
    n_top = int(c[1].number_input("Top genes", 5, 200, 20, key="sel_n", help="Genes in each table."))
    done = st.session_state.setdefault("sel_done", [])
    ask = [run.id, first, second, method]
    if c[2].button("Compare", type="primary", key="sel_go", icon=":material/science:"):
        done.append(ask)
    if ask not in done:
        return
    against = None if second == rest else selections[second]
    result = cache.de_cells(
        run, selections[first], against, method, first, "rest" if against is None else second
    )
    table = result.table
    other = "the other cells" if against is None else second
    st.caption(
        f"{method} on the log-normalised values of all {adata.n_vars:,} genes: {ui.md(first)} "
        f"({result.n_cells.get(first, 0):,} cells) against {ui.md(other)} "
        f"({result.n_cells.get(result.uns['params']['reference'], 0):,} cells); adjusted p: Benjamini-Hochberg."
    )
    ui.chart(
        st,
        plots.volcano_figure(table, lfc=float(lfc), title=f"{first} against {other}"),
        width="stretch",
        key="sel_volcano",
    )
    columns = {
        "pval": st.column_config.NumberColumn("p-value", format="%.2e"),
        "pval_adj": st.column_config.NumberColumn("adjusted p", format="%.2e"),
        "logfoldchange": st.column_config.NumberColumn("log2 fold change", format="%.2f"),
        "score": st.column_config.NumberColumn("score", format="%.2f"),
        "pct_group": st.column_config.NumberColumn(f"% in {first}", format="%.0f"),
        "pct_rest": st.column_config.NumberColumn("% in others", format="%.0f"),
    }
    shown = ["gene", "score", "logfoldchange", "pval_adj", "pct_group", "pct_rest"]
    t = st.columns(2)
    t[0].markdown(f"**Higher in {ui.md(first)}**")
    t[0].dataframe(result.top(n_top)[shown], hide_index=True, width="stretch", column_config=columns)
    t[1].markdown(f"**Lower in {ui.md(first)}**")
    t[1].dataframe(
        result.top(n_top, direction="down")[shown], hide_index=True, width="stretch", column_config=columns
    )
    d = st.columns([1, 2, 1])
    d[0].download_button(
        "Every gene (CSV)",
        table.to_csv(index=False),
        file_name=f"{run.id}_selection_de.csv",
        mime="text/csv",
        key="dl_sel_de",
    )
    name = d[1].text_input(
        "Save as annotation",
        first.replace(" ", "_"),
        key="sel_save_name",
        help="The cells' sides become an obs column of this name and the genes uns['rank_genes_groups_<name>'], "
        "in scanpy's layout.",
    )
    if d[2].button("Save into the run", key="sel_save", icon=":material/save:"):
        cache.update_result(run, lambda a: de.save_comparison(a, name, result))
        st.session_state["_emb_message"] = (
            f"Saved obs['{name}'] and uns['rank_genes_groups_{name}'] in the run's result.h5ad."
        )
        st.rerun()


def annotation_saver() -> None:
    """Save kept selections, the re-clustering or renamed groups as an obs column of the run."""
    st.subheader("Save an annotation into the run")
    sources = {"rename": "renamed (or merged) groups of a clustering"}
    if selections:
        sources = {"selections": "the kept selections", **sources}
    if st.session_state.get(recluster_key):
        sources["recluster"] = "the re-clustering made on this page"
    kind = st.radio(
        "From",
        list(sources),
        format_func=sources.get,
        horizontal=True,
        key="ann_kind",
        help="What the new cell annotation holds. It is written to the run's result.h5ad as an obs column, "
        "so it can colour the UMAP, group cells on the Markers page, and be read by scanpy.",
    )
    if kind == "selections":
        picked = st.multiselect(
            "Selections",
            list(selections),
            default=list(selections),
            key="ann_sel",
            help="Each becomes a group; a cell in several takes the last one; other cells are 'other'.",
        )
        make = lambda: de.annotation_from_selections(adata.n_obs, {n: selections[n] for n in picked})  # noqa: E731
        source = "cells selected on the UMAP"
    elif kind == "recluster":
        spec = st.session_state[recluster_key]
        labels = cache.recluster(path, stamp, spec["method"], json.dumps(spec["options"], sort_keys=True))[
            "labels"
        ]
        make = lambda: np.where(labels < 0, "noise", labels.astype(str))  # noqa: E731
        source = f"re-clustering ({spec['method']}: {spec['options']})"
    else:
        options = dict(de.groupings(adata, label_key))
        if not options:
            st.caption("This result has no clustering to rename.")
            return
        base = st.selectbox(
            "Clustering",
            list(options),
            format_func=lambda k: f"{k} ({options[k]})",
            key="ann_base",
            help="Give its groups names (e.g. cell types); two groups with the same new name are merged.",
        )
        groups = sorted(adata.obs[base].astype(str).unique(), key=plots.natural_key)
        if len(groups) > 60:
            st.caption(f"{ui.md(base)} has {len(groups)} groups: too many to rename here.")
            return
        cols = st.columns(4)
        mapping = {
            g: cols[i % 4].text_input(
                ui.md(g) if g else "(empty)",
                g,
                key=f"ann_rn:{base}:{g}",
                help="The new name of this group; give two groups the same name to merge them.",
            )
            for i, g in enumerate(groups)
        }
        make = lambda: de.renamed(adata.obs[base].astype(str).to_numpy(), mapping)  # noqa: E731
        source = f"renamed groups of {base}"
    c = st.columns([2, 1, 1])
    name = c[0].text_input("Annotation name", "my_annotation", key="ann_name", help="The obs column's name.")
    replace = c[1].toggle(
        "Replace if saved before", key="ann_replace", help="Overwrite an annotation saved in the app earlier."
    )
    if c[2].button("Save into the run", type="primary", key="ann_save", icon=":material/save:"):
        values = make()
        cache.update_result(
            run, lambda a: de.add_annotation(a, name, values, source=source, overwrite=replace)
        )
        st.session_state["_emb_message"] = (
            f"Saved obs['{name}'] in the run's result.h5ad: colour the UMAP by it ('another cell annotation') "
            "or find its marker genes on the Markers page."
        )
        st.rerun()


with ui.guard("the differential expression of the selection"):
    selection_de()

with ui.guard("re-clustering"):
    st.subheader("Clusters and scores")
    if "_rc_message" in st.session_state:
        st.toast(st.session_state.pop("_rc_message"), icon=":material/bubble_chart:")
    with st.expander("Re-cluster the stored embedding", expanded=False):
        st.caption("Runs on the stored embedding in seconds; the model is not trained again.")
        method = st.radio(
            "Method",
            ["hdbscan", "leiden"],
            format_func={
                "hdbscan": "HDBSCAN on the UMAP (CellVGAE's way)",
                "leiden": "Leiden on the embedding",
            }.get,
            horizontal=True,
            key="rc_method",
            help="HDBSCAN finds dense groups and leaves cells between them as noise; Leiden splits the "
            "cells' neighbour graph into communities (no noise).",
        )
        if method == "hdbscan":
            c = st.columns(2)
            mcs = c[0].slider(
                "Min cluster size",
                2,
                200,
                25,
                key="rc_mcs",
                help="The smallest group HDBSCAN reports as a cluster.",
            )
            ms = c[1].slider(
                "Min samples",
                1,
                100,
                10,
                key="rc_ms",
                help="Higher: more conservative, more cells called noise.",
            )
            options = {"min_cluster_size": mcs, "min_samples": ms}
        else:
            res = st.slider(
                "Resolution",
                0.05,
                3.0,
                1.0,
                0.05,
                key="rc_res",
                help="Higher resolution gives more, smaller clusters.",
            )
            options = {"resolution": res}
        seed = int(
            (run.config.get("train") or {}).get("seed", params.info_of(train.TrainSpec, "seed").default)
        )
        if st.button("Cluster", type="primary", key="rc_go", icon=":material/bubble_chart:"):
            spec = {"method": method, "options": {**options, "seed": seed}}
            found = cache.recluster(path, stamp, method, json.dumps(spec["options"], sort_keys=True))
            st.session_state[recluster_key] = spec
            st.session_state["_rc_message"] = (
                f"Re-clustered in {found['seconds']:.1f} s: choose 're-clustered here' to colour the UMAP by it."
            )
            st.rerun()

    space = (
        "umap"
        if (run.config.get("cluster") or {}).get("space", "umap") == "umap" and views.get("umap")
        else "embedding"
    )
    rows = []
    stored = [views.get("clusters"), *(views.get("other_clusters") or [])]
    for key in [k for k in stored if k and k in adata.obs]:
        s = cache.scores(
            path,
            stamp,
            json.dumps({"obs": key}),
            label_key,
            space if key == views.get("clusters") else "embedding",
        )
        rows.append({"clustering": key, **s})
    if st.session_state.get(recluster_key):
        spec = st.session_state[recluster_key]
        s = cache.scores(
            path,
            stamp,
            json.dumps(spec, sort_keys=True),
            label_key,
            "umap" if spec["method"] == "hdbscan" and views.get("umap") else "embedding",
        )
        desc = ", ".join(f"{k} {v}" for k, v in spec["options"].items() if k != "seed")
        rows.append({"clustering": f"re-clustered ({spec['method']}: {desc})", **s})
    if rows:
        table = pd.DataFrame(rows)[["clustering", "ari", "nmi", "silhouette", "n_clusters", "noise"]]
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={
                "ari": st.column_config.NumberColumn(
                    "ARI",
                    format="%.3f",
                    help="Agreement with the known cell types (1 = identical, 0 = chance).",
                ),
                "nmi": st.column_config.NumberColumn(
                    "NMI", format="%.3f", help="Shared information with the known cell types (0 to 1)."
                ),
                "silhouette": st.column_config.NumberColumn(
                    "silhouette",
                    format="%.3f",
                    help="How well separated the clusters are (-1 to 1), noise excluded.",
                ),
                "n_clusters": st.column_config.NumberColumn("clusters"),
                "noise": st.column_config.NumberColumn(
                    "noise cells", help="Cells HDBSCAN left out of every cluster."
                ),
            },
        )
        if not label_key:
            st.caption("ARI and NMI need known cell types: this run was trained without a label column.")
        rule = (adata.uns.get(views.get("model", ""), {}) or {}).get("cluster_rule")
        if rule:
            st.caption(f"How the model's clustering was chosen: {ui.md(rule)}.")

with ui.guard("the comparison"):
    st.subheader("Two runs side by side")
    others = [i for i in state.runs() if i.id != run.id and (i.path / "result.h5ad").exists()]
    if not others:
        st.caption("Train a second run (another model, preset or seed) to compare it with this one here.")
    elif st.toggle(
        "Compare with another run",
        key="compare_on",
        help="Draw this run and another one next to each other, coloured the same way.",
    ):
        other_id = st.selectbox(
            "Other run",
            [i.id for i in others],
            format_func=lambda rid: next(
                f"{i.name} · {i.model} · {ui.fmt_time(i.created)}" for i in others if i.id == rid
            ),
            key="compare_run",
            help="Any other run with results, e.g. another model, preset or seed on the same cells.",
        )
        other = state.store().open(other_id)
        other_adata = cache.result(other)
        other_views = interpret.result_views(other_adata)
        shared_label = label_key if label_key and label_key in other_adata.obs else None
        how = st.radio(
            "Colour both by",
            ["labels", "clusters"] if shared_label else ["clusters"],
            format_func={
                "labels": f"known cell types ({shared_label})",
                "clusters": "each run's clusters",
            }.get,
            horizontal=True,
            key="compare_colour",
            help="The known cell types show whether both runs separate them; clusters show what each found.",
        )
        cols = st.columns(2)
        for col, (r, a, v) in zip(
            cols, ((run, adata, views), (other, other_adata, other_views)), strict=True
        ):
            key = shared_label if how == "labels" else v.get("clusters")
            vals = a.obs[key].astype(str).to_numpy() if key in a.obs else None
            col.markdown(f"**{ui.md(r.meta.get('name', r.id))}** ({ui.md(v.get('model', ''))})")
            ui.chart(
                col,
                plots.embedding_scatter(
                    cache.layout(r, a),
                    vals,
                    name=key or "",
                    categorical=True,
                    colors=colours_for(a, key) if key else None,
                    height=440,
                ),
                width="stretch",
                key=f"cmp:{r.id}",
            )
            m = r.read_json("metrics.json", {}) or {}
            col.caption(
                " · ".join(
                    f"{k.upper()} {m[k]:.3f}"
                    for k in ("ari", "nmi", "silhouette")
                    if isinstance(m.get(k), float)
                )
                + (f" · {m['n_clusters']} clusters" if m.get("n_clusters") is not None else "")
            )

with ui.guard("saving the annotation"):
    annotation_saver()
