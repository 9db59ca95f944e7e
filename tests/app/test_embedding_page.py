"""The Embedding page: the UMAP from the manifest, colour choices, re-clustering on the stored
embedding, the scores table, two runs side by side, and the empty state."""

from __future__ import annotations

import json

from tests.app.conftest import assert_clean, open_page, plotly_array, plotly_figures, texts


def test_umap_coloured_by_clusters_then_by_a_gene(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("embedding", active=run_id)
    assert_clean(at)
    fig = plotly_figures(at)[0]
    assert {t["type"] for t in fig["data"]} == {"scattergl"}
    assert sum(len(plotly_array(t["x"])) for t in fig["data"]) == 150
    # One trace per cluster, and the hostile cell type never reaches a legend as HTML.
    names = [t["name"] for t in fig["data"]]
    assert any(n.startswith("noise") or n[0].isdigit() for n in names)
    at.selectbox(key="emb:kind").set_value("labels").run()
    fig = plotly_figures(at)[0]
    assert any(t["name"].startswith('<script>alert("x")</script>') for t in fig["data"])
    for t in fig["data"]:
        assert "<script>" not in t.get("hovertemplate", "")  # escaped in the hover text
    at.selectbox(key="emb:kind").set_value("gene").run()
    at.selectbox(key="emb:gene").set_value("gene5").run()
    assert_clean(at)
    fig = plotly_figures(at)[0]
    assert fig["data"][-1]["marker"]["showscale"] is True


def test_scores_match_the_run_and_reclustering_adds_a_row(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("embedding", active=run_id)
    table = at.dataframe[0].value
    metrics = json.loads((app_home.store.open(run_id).file("metrics.json")).read_text())
    first = table.iloc[0]
    assert first["clustering"] == "cellvgae_cluster"
    assert abs(first["ari"] - metrics["ari"]) < 1e-9 and first["n_clusters"] == metrics["n_clusters"]
    at.radio(key="rc_method").set_value("leiden").run()
    at.slider(key="rc_res").set_value(0.5).run()
    at.button(key="rc_go").click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert table.iloc[-1]["clustering"].startswith("re-clustered (leiden")
    assert table.iloc[-1]["noise"] == 0
    # The new clustering can colour the UMAP.
    at.selectbox(key="emb:clusters").set_value("re-clustered here").run()
    assert_clean(at)


def test_two_runs_side_by_side(app_home):
    other = app_home.copy_run("cellvgae", "a copy to compare")
    at = open_page("embedding", active=app_home.runs["cellvgae"])
    at.toggle(key="compare_on").set_value(True).run()
    at.selectbox(key="compare_run").set_value(other).run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 3  # the main UMAP, then one per run
    assert "a copy to compare" in " ".join(texts(at.markdown))
    app_home.store.delete(other)


def test_without_runs_the_page_points_to_training(tmp_path, monkeypatch):
    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path))
    at = open_page("embedding")
    assert not at.exception
    assert "train a model first" in texts(at.info)[0]
    at.button(key="emb-train").click().run()
    assert at.title[0].value == "Training"


def test_the_verdict_on_the_active_run_opens_the_page(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("embedding", active=run_id)
    assert_clean(at)
    shown = texts(at.markdown)
    first = next(i for i, t in enumerate(shown) if "How good is it?" in t)
    metrics = json.loads((app_home.store.open(run_id).file("metrics.json")).read_text())
    assert f"(ARI {metrics['ari']:.2f}" in shown[first]
    assert "for 3 annotated types" in shown[first] and "with 'celltype'" in shown[first]


def test_a_run_larger_than_the_drawing_limit_draws_a_sample_and_says_so(app_home, monkeypatch):
    from scgraph_core.plots import style

    monkeypatch.setattr(style, "MAX_DRAWN", 100)  # the toy run has 150 cells
    at = open_page("embedding", active=app_home.runs["cellvgae"])
    assert_clean(at)
    fig = plotly_figures(at)[0]
    assert sum(len(plotly_array(t["x"])) for t in fig["data"]) == 100
    assert any("a fixed random 100 of the 150 cells" in c for c in texts(at.caption))
