"""The Imputation page: listed only for runs with an imputed layer; observed against imputed values
on the same UMAP, their distribution, and a gene-gene plot before and after."""

from __future__ import annotations

import numpy as np

from tests.app.conftest import assert_clean, needs, open_page, plotly_array, plotly_figures, texts


def listed(app_home, run_id: str) -> bool:
    """What app.py asks to decide whether the Imputation page is in the page list."""
    from scgraph_app import sidebar

    path = app_home.store.open(run_id).file("result.h5ad")
    return sidebar._has_view(str(path), path.stat().st_mtime, "imputed_layer")


def test_the_page_is_listed_only_for_runs_that_impute(app_home):
    assert not listed(app_home, app_home.runs["cellvgae"])
    at = open_page("imputation", active=app_home.runs["cellvgae"])
    assert not at.exception
    assert any("no imputed expression" in m for m in texts(at.info))


def test_scvgae_imputation_views(app_home):
    run_id = needs(app_home, "scvgae")
    at = open_page("imputation", active=run_id)
    assert_clean(at)
    assert listed(app_home, run_id)
    gene = at.selectbox(key="imp_gene").value
    result = app_home.store.open(run_id).read_result()
    figs = plotly_figures(at)
    assert len(figs) == 4  # observed UMAP, imputed UMAP, histogram, gene-gene
    imputed = np.asarray(result.layers["imputed"][:, result.var_names.get_loc(gene)]).reshape(-1)
    drawn = np.sort(plotly_array(figs[1]["data"][-1]["marker"]["color"]))
    np.testing.assert_allclose(drawn, np.sort(np.log1p(np.clip(imputed, 0, None))), rtol=1e-5, atol=1e-6)
    assert {"cells at 0 before", "mean imputed at those zeros", "correlation"} <= {m.label for m in at.metric}
    # The gene-gene plot: a legend entry per cell type, each in that type's colour on every page.
    from scgraph_core import plots

    colours = plots.obs_colors(result, "celltype")
    pair = figs[3]
    assert pair["layout"]["showlegend"] and pair["layout"]["legend"]["title"]["text"] == "celltype"
    shown = [t for t in pair["data"] if t.get("showlegend")]
    assert sorted(t["legendgroup"] for t in shown) == sorted(colours)
    assert all(t["marker"]["color"] == colours[t["legendgroup"]] for t in pair["data"])
    assert pair["layout"]["xaxis"]["title"]["text"].endswith("(log1p)")
    # Raw values instead of log1p, and another pair of genes.
    at.toggle(key="imp_log").set_value(False).run()
    at.selectbox(key="imp_gy").set_value(result.var_names[3]).run()
    assert_clean(at)
    assert "observed" in plotly_figures(at)[3]["layout"]["annotations"][0]["text"]


def test_attentionae_denoised_output_is_an_imputed_layer(app_home):
    run_id = needs(app_home, "attentionae")
    at = open_page("imputation", active=run_id)
    assert_clean(at)
    assert len(plotly_figures(at)) == 4


def test_the_page_opens_on_the_most_variable_imputed_gene(app_home):
    from scgraph_core import interpret

    for model in ("scvgae", "attentionae"):
        if model not in app_home.runs:
            continue
        run_id = app_home.runs[model]
        at = open_page("imputation", active=run_id)
        assert_clean(at)
        result = app_home.store.open(run_id).read_result()
        layer = interpret.result_views(result)["imputed_layer"]
        modelled = next((c for c in result.var.columns if str(c).endswith("_modelled")), None)
        expected = interpret.imputed_start_genes(result, layer, modelled=modelled)
        assert at.selectbox(key="imp_gene").value == expected[0]
        values = result.layers[layer][:, list(result.var_names).index(expected[0])]
        assert not np.isnan(np.asarray(values, dtype=float)).all()
    needs(app_home, "scvgae")
