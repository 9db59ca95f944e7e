"""Differential expression in the app: markers of any grouping over all genes (Markers page) and of
lasso selections (Embedding page), and annotations saved into the run's result.h5ad."""

from __future__ import annotations

import numpy as np

from scgraph_core import de
from tests.app.conftest import HOSTILE, assert_clean, needs, open_page, plotly_figures, texts

# toy_counts(n_genes=60, n_types=3): type t over-expresses genes 20t .. 20t+19 (gene0 is "<b>GENE0</b>").
BLOCK = {
    f"type{t}": {"<b>GENE0</b>" if j == 0 else f"gene{j}" for j in range(20 * t, 20 * (t + 1))}
    for t in range(3)
}
BLOCK[HOSTILE] = BLOCK.pop("type2")


def _markers(at, groupby: str = "celltype"):
    at.selectbox(key="de_groupby").set_value(groupby).run()
    at.button(key="de_go").click().run()
    assert_clean(at)
    return next(d.value for d in at.dataframe if "pval_adj" in d.value.columns)


def test_markers_of_the_labels_over_all_genes(app_home):
    at = open_page("markers", active=app_home.runs["cellvgae"])
    assert_clean(at)
    assert at.selectbox(key="de_groupby").options[0].startswith("celltype")
    top = _markers(at)
    assert set(top["group"]) == set(BLOCK)
    for group, part in top.groupby("group"):
        assert set(part["gene"].head(5)) <= BLOCK[group], group
    assert (top["pval_adj"] < 0.05).all() and (top["logfoldchange"] > 0).all()
    figs = plotly_figures(at)
    kinds = [f["data"][0]["type"] for f in figs]
    assert "scatter" in kinds and "heatmap" in kinds  # the dot plot and the heatmap
    dot = next(f for f in figs if f["data"][0]["type"] == "scatter")
    assert not any("<script>" in str(y) for y in dot["data"][0]["y"])  # group names drawn as text
    # The P_mu views are still there below.
    assert any("appearances" in d.value.columns for d in at.dataframe)


def test_gene_search_over_all_genes_says_when_the_model_never_saw_a_gene(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("markers", active=run_id)
    _markers(at)
    result = app_home.store.open(run_id).read_result()
    inputs = set(de.model_input_genes(result))
    outside = next(g for g in result.var_names if g not in inputs)
    inside = next(g for g in result.var_names if g in inputs)
    assert len(at.selectbox(key="de_gene").options) == result.n_vars  # every gene, not only the 40 inputs
    at.selectbox(key="de_gene").set_value(outside).run()
    assert_clean(at)
    note = " ".join(texts(at.info))
    assert f"**{outside}** is not among the model's {len(inputs)} input genes" in note and "n_hvg" in note
    rows = next(d.value for d in at.dataframe if "group" in d.value.columns and "gene" not in d.value.columns)
    assert len(rows) == 3
    at.selectbox(key="de_gene").set_value(inside).run()
    assert "n_hvg" not in " ".join(texts(at.info))


def test_markers_for_a_model_without_gene_weights(app_home):
    run_id = needs(app_home, "attentionae")
    at = open_page("markers", active=run_id)
    assert any("no gene weights" in m for m in texts(at.info))
    clusters = at.selectbox(key="de_groupby").options[1].split(" (")[0]
    top = _markers(at, clusters)
    assert len(top) > 0 and top["pval_adj"].between(0, 1).all()


def test_saving_markers_writes_scanpy_layout_into_the_run(app_home):
    import scanpy as sc

    run_id = app_home.copy_run("cellvgae", "markers saved")
    try:
        at = open_page("markers", active=run_id)
        top = _markers(at)
        at.text_input(key="de_save_name").set_value("rgg_celltype").run()
        at.button(key="de_save").click().run()
        assert_clean(at)
        saved = app_home.store.open(run_id).read_result()
        df = sc.get.rank_genes_groups_df(saved, "type0", key="rgg_celltype")
        assert list(df["names"][:3]) == list(top[top["group"] == "type0"]["gene"][:3])
        assert "rgg_celltype" in list(saved.uns["scgraph"]["de_results"])
    finally:
        app_home.store.delete(run_id)


def _selections(app_home, run_id):
    result = app_home.store.open(run_id).read_result()
    types = result.obs["celltype"].astype(str).to_numpy()
    return {
        f"selections:{run_id}": {
            "picked": np.flatnonzero(types == "type0").tolist(),
            "second": np.flatnonzero(types == "type1").tolist(),
        }
    }, types


def test_lasso_selection_against_the_rest_and_against_a_second_selection(app_home):
    run_id = app_home.runs["cellvgae"]
    state, types = _selections(app_home, run_id)
    at = open_page("embedding", active=run_id, state=state)
    assert_clean(at)
    at.selectbox(key="sel_a").set_value("picked").run()
    at.button(key="sel_go").click().run()
    assert_clean(at)
    # The volcano plot: the figure whose traces are the DE groups (the UMAP's traces are clusters).
    volcanoes = [
        f
        for f in plotly_figures(at)
        if any(str(t.get("name", "")).startswith("higher in the group") for t in f["data"])
    ]
    assert len(volcanoes) == 1 and volcanoes[0]["data"][0]["type"] == "scattergl"
    up = next(d.value for d in at.dataframe if "gene" in d.value.columns)
    assert set(up["gene"].head(10)) <= BLOCK["type0"]
    assert (up["logfoldchange"].head(10) > 0).all()
    assert f"({(types == 'type0').sum()} cells)" in " ".join(texts(at.caption))
    at.selectbox(key="sel_b").set_value("second").run()
    at.button(key="sel_go").click().run()
    assert_clean(at)
    tables = [d.value for d in at.dataframe if "gene" in d.value.columns]
    down = tables[1]
    assert set(down["gene"].head(10)) <= BLOCK["type1"]
    assert f"against second ({(types == 'type1').sum()} cells)" in " ".join(texts(at.caption))


def test_saving_a_comparison_and_renamed_clusters_into_the_run(app_home):
    run_id = app_home.copy_run("cellvgae", "annotations saved")
    try:
        state, types = _selections(app_home, run_id)
        at = open_page("embedding", active=run_id, state=state)
        at.button(key="sel_go").click().run()
        at.text_input(key="sel_save_name").set_value("picked_cells").run()
        at.button(key="sel_save").click().run()
        assert_clean(at)
        saved = app_home.store.open(run_id).read_result()
        assert list(saved.obs["picked_cells"].astype(str) == "picked") == list(types == "type0")
        assert saved.uns["rank_genes_groups_picked_cells"]["params"]["groupby"] == "picked_cells"

        # Renamed (merged) groups of the labels, as a new annotation.
        at.radio(key="ann_kind").set_value("rename").run()
        at.selectbox(key="ann_base").set_value("celltype").run()
        at.text_input(key="ann_rn:celltype:type0").set_value("lymphoid").run()
        at.text_input(key="ann_rn:celltype:type1").set_value("lymphoid").run()
        at.text_input(key="ann_name").set_value("coarse").run()
        at.button(key="ann_save").click().run()
        assert_clean(at)
        saved = app_home.store.open(run_id).read_result()
        assert set(saved.obs["coarse"]) == {"lymphoid", HOSTILE}
        assert (saved.obs["coarse"].to_numpy() == "lymphoid").sum() == np.isin(
            types, ["type0", "type1"]
        ).sum()
        # The page reads the new file: the annotation colours the UMAP and groups cells on the Markers page.
        at.selectbox(key="emb:kind").set_value("obs").run()
        assert "coarse" in at.selectbox(key="emb:obs").options
        at.switch_page("pages/markers.py").run()
        assert any(o.startswith("coarse (saved annotation)") for o in at.selectbox(key="de_groupby").options)
        # A name already used by the data is refused with a message, not a traceback.
        at.switch_page("pages/embedding.py").run()
        at.radio(key="ann_kind").set_value("rename").run()
        at.text_input(key="ann_name").set_value("celltype").run()
        at.button(key="ann_save").click().run()
        assert not at.exception
        assert any("not saved in the app" in e for e in texts(at.error))
    finally:
        app_home.store.delete(run_id)
