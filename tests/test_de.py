"""Differential expression over all genes, annotations, and saving both into a run (scgraph_core.de)."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

from scgraph_core import de, plots
from scgraph_core.errors import ConfigError, RunError
from scgraph_core.runs import RunStore
from tests.helpers import toy_counts

# toy_counts(n_genes=60, n_types=3): type t over-expresses genes 20t .. 20t+19.
BLOCK = {f"type{t}": {f"gene{j}" for j in range(20 * t, 20 * (t + 1))} for t in range(3)}


@pytest.fixture(scope="module")
def toy():
    adata = toy_counts(n_cells=150, n_genes=60, n_types=3, seed=1)
    adata.layers["counts"] = adata.X.copy()
    return adata


def test_lognorm_matrix_prefers_the_layer_then_computes_from_counts(toy):
    X, where = de.lognorm_matrix(toy)
    assert where.startswith("log1p")
    row = np.asarray(toy.X[0].todense()).ravel()
    assert np.allclose(np.asarray(X[0].todense()).ravel(), np.log1p(row * 1e4 / row.sum()), atol=1e-4)
    other = toy.copy()
    other.layers["lognorm"] = X * 2
    assert de.lognorm_matrix(other)[1] == "layers['lognorm']"


def test_planted_markers_come_out_on_top(toy):
    result = de.rank_groups(toy, "celltype")
    assert result.groups == ["type0", "type1", "type2"]
    top = result.top(8)
    for group, part in top.groupby("group"):
        assert set(part["gene"]) <= BLOCK[group], group
        assert (part["logfoldchange"] > 1).all() and (part["pval_adj"] < 1e-5).all()
    # every gene is ranked in every group, adjusted p-values are no smaller than raw ones
    assert len(result.table) == 3 * toy.n_vars
    assert (result.table["pval_adj"] >= result.table["pval"] - 1e-15).all()
    assert set(result.table.columns) == set(de.TABLE_COLUMNS)


def test_noise_and_tiny_groups_are_left_out(toy):
    adata = toy.copy()
    labels = adata.obs["celltype"].astype(str).to_numpy().copy()
    labels[:10] = "noise"
    labels[10:12] = "tiny"
    adata.obs["clusters"] = labels
    result = de.rank_groups(adata, "clusters")
    assert "noise" not in result.groups and "tiny" not in result.groups
    adata.obs["one"] = "a"
    with pytest.raises(ConfigError, match="fewer than two groups"):
        de.rank_groups(adata, "one")
    with pytest.raises(ConfigError, match="no cell annotation"):
        de.rank_groups(adata, "missing")


def test_selection_against_rest_and_against_a_second_selection(toy):
    types = toy.obs["celltype"].astype(str).to_numpy()
    a, b = np.flatnonzero(types == "type1"), np.flatnonzero(types == "type2")
    vs_rest = de.compare_cells(toy, a)
    assert vs_rest.n_cells == {"selected": a.size, "rest": toy.n_obs - a.size}
    assert set(vs_rest.top(10)["gene"]) <= BLOCK["type1"]
    down = vs_rest.top(5, direction="down")
    assert (down["logfoldchange"] < 0).all()
    vs_b = de.compare_cells(toy, a, b, name="B cells", other="NK")
    assert vs_b.n_cells == {"B cells": a.size, "NK": b.size}
    assert set(vs_b.top(5, direction="down")["gene"]) <= BLOCK["type2"]
    assert (vs_b.labels[a] == "B cells").all() and (vs_b.labels[b] == "NK").all()
    assert (vs_b.labels[types == "type0"] == "").all()
    with pytest.raises(ConfigError, match="at least 3"):
        de.compare_cells(toy, a[:2])
    with pytest.raises(ConfigError, match="without cells in both"):
        de.compare_cells(toy, a, a)


def test_group_expression_is_mean_and_share_of_expressing_cells(toy):
    means, pct = de.group_expression(toy, "celltype", ["gene0", "gene45"])
    X, _ = de.lognorm_matrix(toy)
    rows = toy.obs["celltype"].to_numpy() == "type0"
    col = np.asarray(X[rows][:, 0].todense()).ravel()
    assert means.loc["type0", "gene0"] == pytest.approx(col.mean())
    assert pct.loc["type0", "gene0"] == pytest.approx(100 * (col > 0).mean())
    assert means.loc["type2", "gene45"] > means.loc["type0", "gene45"]
    with pytest.raises(ConfigError, match="Not in this result"):
        de.group_expression(toy, "celltype", ["GFAP"])


def test_annotations_from_selections_and_renamed_groups(toy):
    labels = de.annotation_from_selections(5, {"A": [0, 1], "B": [1, 3]})
    assert list(labels) == ["A", "B", "other", "B", "other"] and list(labels.categories) == [
        "A",
        "B",
        "other",
    ]
    merged = de.renamed(["0", "1", "2", "1"], {"0": "T cells", "1": "B cells", "2": "T cells"})
    assert list(merged) == ["T cells", "B cells", "T cells", "B cells"]
    with pytest.raises(ConfigError, match="name"):
        de.renamed(["0"], {"0": " "})
    adata = toy.copy()
    de.add_annotation(adata, "my types", de.renamed(adata.obs["celltype"], {"type0": "x"}), source="test")
    assert adata.obs["my types"].dtype == "category" and "x" in set(adata.obs["my types"])
    assert "my types" in adata.uns["scgraph"]["annotations"]
    with pytest.raises(ConfigError, match="already saved"):
        de.add_annotation(adata, "my types", adata.obs["celltype"])
    de.add_annotation(adata, "my types", adata.obs["celltype"], overwrite=True)
    with pytest.raises(ConfigError, match="not saved in the app"):
        de.add_annotation(adata, "celltype", adata.obs["celltype"], overwrite=True)
    with pytest.raises(ConfigError, match="letters"):
        de.add_annotation(adata, "a/b", adata.obs["celltype"])


def test_groupings_list_labels_clusters_then_annotations(toy):
    adata = toy.copy()
    adata.obs["cellvgae_cluster"] = adata.obs["celltype"].astype(str)
    adata.obs["leiden"] = adata.obs["celltype"].astype(str)
    adata.obs["size_factor"] = 1.0
    adata.uns["scgraph"] = {"views": {"clusters": "cellvgae_cluster", "other_clusters": ["leiden"]}}
    de.add_annotation(adata, "mine", adata.obs["celltype"])
    keys = [k for k, _ in de.groupings(adata, "celltype")]
    assert keys == ["celltype", "cellvgae_cluster", "leiden", "mine"]


def test_saved_results_round_trip_through_a_run_and_scanpy(tmp_path, toy):
    store = RunStore(tmp_path)
    run = store.create(model="cellvgae", name="toy", dataset="toy", config={})
    run.write_result(toy)
    run.set_status("done", "finished")
    result = de.rank_groups(toy, "celltype")
    types = toy.obs["celltype"].astype(str).to_numpy()
    sel = de.compare_cells(toy, np.flatnonzero(types == "type0"), name="picked")

    def edit(adata):
        de.add_de_result(adata, "rank_genes_groups_celltype", result)
        de.save_comparison(adata, "picked", sel)

    reread = run.update_result(edit)
    assert not list(run.path.glob(".result*.h5ad"))  # no temporary file left
    df = sc.get.rank_genes_groups_df(reread, "type2", key="rank_genes_groups_celltype")
    assert list(df["names"][:5]) == list(result.top(5).query("group == 'type2'")["gene"])
    assert reread.uns["rank_genes_groups_picked"]["params"]["groupby"] == "picked"
    assert set(reread.obs["picked"]) == {"picked", "rest"}
    assert (reread.obs["picked"].to_numpy() == "picked").sum() == (types == "type0").sum()
    picked = sc.get.rank_genes_groups_df(reread, "picked", key="rank_genes_groups_picked")
    assert set(picked["names"][:5]) <= BLOCK["type0"]
    assert reread.uns["scgraph"]["de_results"].tolist() == [
        "rank_genes_groups_celltype",
        "rank_genes_groups_picked",
    ]

    # An edit that fails leaves the file as it was; a running run is refused.
    before = run.file("result.h5ad").stat().st_mtime_ns
    with pytest.raises(ConfigError):
        run.update_result(lambda a: de.add_annotation(a, "celltype", a.obs["celltype"]))
    assert run.file("result.h5ad").stat().st_mtime_ns == before
    run.set_status("running", "training")
    with pytest.raises(RunError, match="still running"):
        run.update_result(lambda a: None)


def test_figures_escape_names_and_mark_significant_genes(toy):
    result = de.compare_cells(toy, np.flatnonzero(toy.obs["celltype"].to_numpy() == "type0"))
    table = result.table.copy()
    table.loc[0, "gene"] = "<b>G</b>"
    fig = plots.volcano_figure(table, lfc=1.0, n_labels=5)
    up = next(t for t in fig.data if t.name.startswith("higher"))
    assert len(up.x) >= 10 and (np.asarray(up.x) >= 1).all()
    assert all("<b>" not in a.text for a in fig.layout.annotations)
    means, pct = de.group_expression(toy, "celltype", ["gene0", "gene1"])
    means.index = ["<i>x</i>", "b", "c"]
    dot = plots.dot_plot_figure(means, pct)
    assert "<i>" not in "".join(dot.data[0].y) and len(dot.data[0].x) == 6
    heat = plots.group_heatmap_figure(means)
    z = np.asarray(heat.data[0].z)
    assert z.min() == 0.0 and z.max() == 1.0
