"""The Expression page: observed and learnt expression of the chosen genes on the same UMAP."""

from __future__ import annotations

import numpy as np

from scgraph_core import interpret
from tests.app.conftest import assert_clean, needs, open_page, plotly_array, plotly_figures, texts

WEBGL = {"scattergl", "scatter3d", "heatmapgl", "pointcloud", "splom", "parcoords", "scattermapbox"}


def webgl_figures(figs: list[dict]) -> int:
    """How many of the page's figures need a WebGL context (one per figure with any WebGL trace)."""
    return sum(any(t.get("type") in WEBGL for t in fig["data"]) for fig in figs)


def test_observed_and_learnt_expression_side_by_side(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("expression", active=run_id)
    assert_clean(at)
    genes = at.multiselect(key="ex_genes")
    chosen = [g for g in genes.options if g.startswith("gene")][:2]
    genes.set_value(chosen).run()
    assert_clean(at)
    figs = plotly_figures(at)
    assert len(figs) == 1  # every gene's observed and learnt panels in one figure
    traces = {t["name"]: t for t in figs[0]["data"]}
    assert set(traces) == {
        f"{g}: {w}" for g in chosen for w in ("observed (log-normalised)", "learnt (embedding x P_mu row)")
    }
    # The learnt panel holds E · P_mu[g] for every cell (sorted by value for drawing).
    adata = app_home.store.open(run_id).read_result()
    weights, names = interpret.gene_weight_matrix(adata, "P_mu")
    expected = interpret.learnt_expression(
        np.asarray(adata.obsm["X_cellvgae"]), weights, names.index(chosen[0])
    )
    learnt = traces[f"{chosen[0]}: learnt (embedding x P_mu row)"]
    drawn = np.sort(plotly_array(learnt["marker"]["color"]))
    np.testing.assert_allclose(drawn, np.sort(expected), rtol=1e-5, atol=1e-6)
    # Each gene's panels sit on their own axes, so the genes do not overlap in one plot.
    axes = {(t.get("xaxis", "x"), t.get("yaxis", "y")) for t in figs[0]["data"]}
    assert len(axes) == 4
    assert sum("Correlation of learnt and observed" in c for c in texts(at.caption)) == 2
    assert "Observed and learnt expression (CSV)" in {d.label for d in at.get("download_button")}


def test_six_genes_draw_in_one_figure_without_webgl(app_home):
    """Twelve WebGL plots went blank in browsers (a page gets few WebGL contexts): one SVG figure now."""
    at = open_page("expression", active=app_home.runs["cellvgae"])
    genes = at.multiselect(key="ex_genes")
    chosen = [g for g in genes.options if g.startswith("gene")][:6]
    assert len(chosen) == 6
    genes.set_value(chosen).run()
    assert_clean(at)
    figs = plotly_figures(at)
    assert len(figs) == 1
    assert webgl_figures(figs) == 0  # 150 cells x 12 panels: SVG markers, no WebGL context at all
    assert len(figs[0]["data"]) == 12
    assert {t["type"] for t in figs[0]["data"]} == {"scatter"}
    # Every colour bar sits beside its own panel, not on top of another one.
    bars = {
        (round(t["marker"]["colorbar"]["x"], 3), round(t["marker"]["colorbar"]["y"], 3))
        for t in figs[0]["data"]
    }
    assert len(bars) == 12


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


def test_panels_of_a_large_run_draw_one_sample_of_cells_and_say_so(app_home, monkeypatch):
    from scgraph_core.plots import style

    monkeypatch.setattr(style, "MAX_DRAWN", 200)  # 4 panels of the 150-cell toy run: 600 points
    at = open_page("expression", active=app_home.runs["cellvgae"])
    genes = at.multiselect(key="ex_genes")
    genes.set_value([g for g in genes.options if g.startswith("gene")][:2]).run()
    assert_clean(at)
    fig = plotly_figures(at)[0]
    cells = [sorted(plotly_array(t["customdata"]).astype(int).tolist()) for t in fig["data"]]
    assert len(cells) == 4 and all(c == cells[0] for c in cells)  # the same 50 cells in every panel
    assert len(cells[0]) == 50 and len(set(cells[0])) == 50 and max(cells[0]) < 150
    assert any("a fixed random 50 of the 150 cells" in c for c in texts(at.caption))


def _with_agreement(app_home, name: str, agreement: dict | None, kl_weight: float) -> str:
    """A copy of the CellVGAE run whose metrics.json says ``agreement`` (None: the key is absent, as in runs
    written before it was recorded)."""
    import json

    run_id = app_home.copy_run("cellvgae", name)
    path = app_home.store.open(run_id).path / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.pop("learnt_expression", None)
    if agreement is not None:
        metrics["learnt_expression"] = agreement
    metrics["kl_weight"] = kl_weight
    path.write_text(json.dumps(metrics))
    return run_id


def _learnt_warnings(at) -> list[str]:
    return [w for w in texts(at.warning) if "This run's learnt expression" in w]


def test_learnt_expression_that_does_not_follow_the_data_is_said_on_the_gene_pages(app_home):
    poor = {
        "n_genes": 40,
        "median_r": -0.02,
        "share_positive": 0.45,
        "share_above_0_3": 0.05,
        "top1_share": 0.9,
    }
    run_id = _with_agreement(app_home, "poor genes", poor, 3.0)
    at = open_page("expression", active=run_id)
    assert_clean(at)
    (warning,) = _learnt_warnings(at)
    assert "45% of its 40 genes" in warning and "90% of it lies along one direction" in warning
    assert "KL weight (3)" in warning
    at = open_page("markers", active=run_id)
    assert_clean(at)
    assert len(_learnt_warnings(at)) == 1

    good = {**poor, "median_r": 0.3, "share_positive": 0.95, "top1_share": 0.4}
    at = open_page("expression", active=_with_agreement(app_home, "good genes", good, 0.001))
    assert_clean(at)
    assert _learnt_warnings(at) == []
    one_picture = {**good, "share_positive": 0.8, "top1_share": 0.95}
    at = open_page("expression", active=_with_agreement(app_home, "one picture", one_picture, 0.3))
    assert "nearly one picture for every gene" in _learnt_warnings(at)[0]

    # A run whose metrics lack the check is measured from its result file, as the engine would have.
    older = _with_agreement(app_home, "older run", None, 0.001)
    measured = interpret.learnt_expression_agreement(app_home.store.open(older).read_result())
    at = open_page("expression", active=older)
    assert_clean(at)
    flagged = measured["share_positive"] < 0.75 or measured["top1_share"] >= 0.8
    assert len(_learnt_warnings(at)) == int(flagged)
