"""The Expression page: observed and learnt expression of the chosen genes on the same UMAP."""

from __future__ import annotations

import numpy as np

from scgraph_core import interpret
from tests.app.conftest import assert_clean, needs, open_page, plotly_array, plotly_figures, texts


def test_observed_and_learnt_expression_side_by_side(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("expression", active=run_id)
    assert_clean(at)
    genes = at.multiselect(key="ex_genes")
    chosen = [g for g in genes.options if g.startswith("gene")][:2]
    genes.set_value(chosen).run()
    assert_clean(at)
    figs = plotly_figures(at)
    assert len(figs) == 4  # observed + learnt per gene
    # The learnt panel holds E · P_mu[g] for every cell (sorted by value for drawing).
    adata = app_home.store.open(run_id).read_result()
    weights, names = interpret.gene_weight_matrix(adata, "P_mu")
    expected = interpret.learnt_expression(
        np.asarray(adata.obsm["X_cellvgae"]), weights, names.index(chosen[0])
    )
    drawn = np.sort(plotly_array(figs[1]["data"][-1]["marker"]["color"]))
    np.testing.assert_allclose(drawn, np.sort(expected), rtol=1e-5, atol=1e-6)
    assert any("Correlation of learnt and observed" in c for c in texts(at.caption))
    assert "Observed and learnt expression (CSV)" in {d.label for d in at.get("download_button")}


def test_no_genes_chosen_is_an_empty_state(app_home):
    at = open_page("expression", active=app_home.runs["cellvgae"])
    at.multiselect(key="ex_genes").set_value([]).run()
    assert not at.exception
    assert any("Pick one or more genes" in m for m in texts(at.info))


def test_a_model_without_gene_weights_points_elsewhere(app_home):
    run_id = needs(app_home, "scvgae")
    at = open_page("expression", active=run_id)
    assert not at.exception
    assert any("Imputation page" in m for m in texts(at.info))
