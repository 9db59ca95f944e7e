"""The Markers page: P_mu / P_sigma tables per cluster and per latent dimension, the gene search, and
the overlap with scanpy's rank_genes_groups; CSV downloads."""

from __future__ import annotations

import pandas as pd

from tests.app.conftest import assert_clean, needs, open_page, texts


def test_per_cluster_markers_are_the_runs_table(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("markers", active=run_id)
    assert_clean(at)
    stored = pd.read_csv(app_home.store.open(run_id).file("marker_genes.csv"))
    shown = at.dataframe[0].value
    assert list(shown["gene"]) == list(stored["gene"])
    assert {"cluster", "gene", "appearances", "score", "dimensions"} <= set(shown.columns)
    assert "Marker genes (CSV)" in {d.label for d in at.get("download_button")}


def test_p_sigma_per_dimension_and_appearances(app_home):
    at = open_page("markers", active=app_home.runs["cellvgae"])
    at.radio(key="mk_which").set_value("P_sigma").run()
    at.number_input(key="mk_n").set_value(5).run()
    assert_clean(at)
    tables = {tuple(d.value.columns): d.value for d in at.dataframe}
    per_dim = tables[("rank", "gene", "weight")]
    assert len(per_dim) == 5 and list(per_dim["rank"]) == [1, 2, 3, 4, 5]
    counts = tables[("gene", "appearances", "dimensions", "mean_weight")]
    assert counts["appearances"].is_monotonic_decreasing and counts["appearances"].max() >= 1


def test_gene_search_shows_the_genes_weights(app_home):
    at = open_page("markers", active=app_home.runs["cellvgae"])
    options = at.selectbox(key="mk_gene").options
    assert "<b>GENE0</b>" in options or len(options) == 40  # the HTML-named gene is a plain option
    at.selectbox(key="mk_gene").set_value(options[0]).run()
    assert_clean(at)
    assert any(len(fig.proto.spec) for fig in at.get("plotly_chart"))


def test_overlap_with_rank_genes_groups(app_home):
    at = open_page("markers", active=app_home.runs["cellvgae"])
    at.selectbox(key="mk_method").set_value("t-test").run()
    at.button(key="mk_compare").click().run()
    assert_clean(at)
    jaccard = next(m for m in at.metric if m.label.startswith("mean overlap"))
    assert 0.0 <= float(jaccard.value) <= 1.0
    overlap = next(d.value for d in at.dataframe if "jaccard" in d.value.columns)
    assert set(overlap["shared"]) <= set(range(0, 101))
    assert (overlap["jaccard"] >= 0).all() and (overlap["jaccard"] <= 1).all()
    # The comparison stays while other settings change.
    at.toggle(key="mk_feat").set_value(False).run()
    assert any("jaccard" in d.value.columns for d in at.dataframe)


def test_a_model_without_gene_weights_gets_an_empty_state(app_home):
    run_id = needs(app_home, "attentionae")
    at = open_page("markers", active=run_id)
    assert not at.exception
    assert any("no gene weights" in m for m in texts(at.info))
