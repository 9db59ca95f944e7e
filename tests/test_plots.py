"""Figure builders: WebGL scatter with row numbers, QC numbers, curves, and the escaped pyvis graph."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scgraph_core import plots
from tests.helpers import toy_counts

HOSTILE = "<script>alert(1)</script>"


def test_categorical_scatter_has_one_webgl_trace_per_group_and_maps_selections_back():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(300, 2))
    labels = np.array(["B", "noise", "A10", "A2"] * 75)
    fig = plots.embedding_scatter(xy, labels, name="cluster")
    assert all(t.type == "scattergl" for t in fig.data)
    assert [t.name.split(" ")[0] for t in fig.data] == [
        "A2",
        "A10",
        "B",
        "noise",
    ]  # natural order, noise last
    assert fig.data[-1].marker.color == plots.NOISE_COLOR
    rows = np.concatenate([np.asarray(t.customdata) for t in fig.data])
    assert sorted(rows) == list(range(300))
    # A selection (as Streamlit returns it) maps to cell rows, with or without customdata in the points.
    picked = {"points": [{"curve_number": 2, "point_index": 0}, {"customdata": 7}]}
    assert set(plots.selected_cells(fig, picked)) == {int(fig.data[2].customdata[0]), 7}
    assert plots.selected_cells(fig, None).size == 0


def test_continuous_scatter_puts_high_values_on_top_and_greys_missing():
    xy = np.zeros((5, 2))
    values = np.array([3.0, np.nan, 1.0, 2.0, 0.0])
    fig = plots.embedding_scatter(xy, values, name="NKG7")
    missing, main = fig.data
    assert list(missing.customdata) == [1]
    assert list(main.marker.color) == [0.0, 1.0, 2.0, 3.0]
    assert main.marker.showscale


def test_many_categories_become_one_trace():
    fig = plots.embedding_scatter(np.zeros((200, 2)), [f"c{i}" for i in range(200)])
    assert len(fig.data) == 1


def test_hover_text_escapes_category_names():
    fig = plots.embedding_scatter(np.zeros((2, 2)), [HOSTILE, "B"], hover=["cell0", "cell1"])
    assert all("<script>" not in t.hovertemplate for t in fig.data)


def test_qc_metrics_from_counts_and_from_obs_columns():
    adata = toy_counts(n_cells=50, n_genes=20)
    adata.var_names = [f"MT-{i}" if i < 2 else f"g{i}" for i in range(20)]
    qc, notes = plots.qc_metrics(adata)
    X = adata.X.toarray()
    np.testing.assert_allclose(qc["total"], X.sum(axis=1))
    np.testing.assert_array_equal(qc["genes"], (X > 0).sum(axis=1))
    np.testing.assert_allclose(qc["mito_pct"], 100 * X[:, :2].sum(axis=1) / X.sum(axis=1))
    assert "2 mitochondrial genes" in notes["mito_pct"]
    # Log data without counts: the file's QC columns are used (a fraction becomes a percentage).
    log = ad.AnnData(
        sp.csr_matrix(np.log1p(X)),
        obs=pd.DataFrame({"n_counts": X.sum(1), "percent_mito": 0.02}, index=adata.obs_names),
    )
    qc, notes = plots.qc_metrics(log)
    np.testing.assert_allclose(qc["total"], X.sum(axis=1))
    assert np.allclose(qc["mito_pct"], 2.0) and "'percent_mito'" in notes["mito_pct"]
    assert "non-zero value in X" in notes["genes"]
    fig = plots.qc_figure(qc, notes)
    assert len(fig.data) == 3


def test_loss_and_validation_figures():
    history = pd.DataFrame(
        {
            "stage": "train",
            "epoch": [1, 2, 3],
            "loss": [3.0, 2.0, 1.5],
            "kl": [0.1, 0.2, 0.2],
            "val_auc": [None, 0.7, None],
        }
    )
    assert plots.loss_terms(history) == ["loss", "kl"]
    assert len(plots.loss_figure(history).data) == 2
    val = plots.validation_figure(history)
    assert val is not None and list(val.data[0].y) == [0.7]
    assert plots.validation_figure(history.drop(columns="val_auc")) is None


def test_a_loss_of_one_epoch_is_drawn_as_a_dot():
    """A line needs two points: the first epoch of a live run, or a run stopped after one epoch, would
    leave its panels empty."""
    one = pd.DataFrame({"stage": "train", "epoch": [1], "loss": [3.7], "kl": [0.2]})
    for trace in plots.loss_figure(one).data:
        assert "markers" in trace.mode and list(trace.marker.size) == [6]
    # Longer curves stay plain lines; a one-epoch stage among them gets its dot.
    three = pd.DataFrame({"stage": "train", "epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5]})
    assert [t.mode for t in plots.loss_figure(three).data] == ["lines"]
    mixed = pd.DataFrame(
        {"stage": ["gae_r0", "gae_r0", "gae_r1"], "epoch": [1, 2, 1], "loss": [3.0, 2.0, 1.0]}
    )
    (trace,) = plots.loss_figure(mixed).data
    assert trace.mode == "lines+markers" and list(trace.marker.size) == [0, 0, 0, 6]


def test_repeated_stages_share_one_legend_entry_per_family():
    assert [
        plots.stage_family(s)
        for s in ("cluster_r1_0", "cluster_r12_24", "em_r3", "gae_r0", "e_step_2", "feature_ae", "pretrain_q")
    ] == ["cluster", "cluster", "em", "gae", "e_step", "feature_ae", "pretrain_q"]
    stages = ["feature_ae"] + [f"cluster_r{r}_{i}" for r in (1, 2) for i in range(25)] + ["em_r1", "em_r2"]
    history = pd.DataFrame(
        [{"stage": s, "epoch": e, "loss": 1.0 / e, "mse": 0.5 / e} for s in stages for e in (1, 2, 3)]
    )
    fig = plots.loss_figure(history)
    assert len(fig.data) == 2 * 3  # one line per term and family, not per stage
    assert [t.name for t in fig.data if t.showlegend] == [
        "feature_ae",
        "cluster (50 stages)",
        "em (2 stages)",
    ]
    cluster = next(t for t in fig.data if t.name == "cluster (50 stages)")
    # Each stage's epochs start again at 1: a gap (NaN, which plotly.js does not join) between stages, never
    # a line drawn back to epoch 1.
    x, y = np.asarray(cluster.x, dtype=float), np.asarray(cluster.y, dtype=float)
    assert np.isnan(x).sum() == 49 and np.array_equal(np.isnan(x), np.isnan(y)) and len(x) == 50 * 3 + 49
    assert not cluster.connectgaps
    assert cluster.customdata[0] == "cluster_r1_0" and cluster.customdata[-1] == "cluster_r2_24"
    # The panels are laid out once per set of terms; a figure handed out is the caller's to change.
    fig.update_layout(title_text="changed")
    again = plots.loss_figure(history)
    assert again.layout.title.text is None and len(again.data) == len(fig.data)


def test_rounds_figure_draws_the_ari_against_the_stop_threshold():
    rounds = [
        {"kind": "round", "loop": "refine", "round": 1, "n_clusters": 9, "ari_previous": None, "loss": 5.0},
        {"kind": "round", "loop": "refine", "round": 2, "n_clusters": 7, "ari_previous": 0.6, "loss": 2.0},
        {"kind": "round", "loop": "refine", "round": 3, "n_clusters": 7, "ari_previous": 0.995, "loss": 1.0},
    ]
    fig = plots.rounds_figure(rounds, stop_ari=0.97)
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"ARI with the previous round", "clusters"}  # the loss is not a score
    assert list(by_name["ARI with the previous round"].y) == [None, 0.6, 0.995]
    assert list(by_name["clusters"].x) == [1, 2, 3] and list(by_name["clusters"].y) == [9, 7, 7]
    (line,) = fig.layout.shapes
    assert line.y0 == line.y1 == 0.97
    assert not plots.rounds_figure(rounds, stop_ari=None).layout.shapes
    assert plots.rounds_figure([]) is None
    assert plots.rounds_figure([{"kind": "round", "loop": "em", "round": 1}]) is None


def test_rounds_figure_shows_what_em_rounds_hold():
    rounds = [
        {"loop": "em", "round": r, "q_accuracy": 0.5 + r / 10, "p_accuracy": 0.7, "mstep_epochs_run": 40}
        for r in (1, 2)
    ]
    fig = plots.rounds_figure(rounds)
    assert {t.name for t in fig.data} == {"held-out accuracy (q)", "held-out accuracy (p)"}
    assert list(next(t for t in fig.data if t.name == "held-out accuracy (q)").y) == [0.6, 0.7]
    assert not fig.layout.shapes  # no ARI, no threshold


def test_attention_graph_is_self_contained_and_escapes_every_name():
    edges = pd.DataFrame({"source": [0, 1, 2], "target": [1, 2, 0], "weight": [0.5, 0.25, 0.9]})
    html = plots.attention_graph_html(
        edges,
        cell_names=["<img src=x onerror=alert(2)>", "c1", "c2"],
        groups=[HOSTILE, "B", "B"],
        title="layer <i>mu</i>",
        show_labels=True,
    )
    assert HOSTILE not in html and "<img src=x" not in html and "<i>mu</i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "layer &lt;i&gt;mu&lt;/i&gt;" in html
    assert "<script src=" not in html and "<link" not in html  # vis-network is inlined
    data = plots.graph_data_json(html)
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id[0]["label"] == HOSTILE  # drawn on the canvas as text
    assert by_id[0]["title"].startswith("<img src=x onerror=alert(2)>")  # shown with innerText
    assert len(data["edges"]) == 3
    widths = {(e["from"], e["to"]): e["width"] for e in data["edges"]}
    assert widths[(2, 0)] > widths[(0, 1)] > widths[(1, 2)]


def test_small_figures():
    assert len(plots.composition_figure(["a", "b", "a"]).data[0].y) == 2
    heat = plots.heatmap_figure(pd.DataFrame([[1.0, 2.0]], columns=["0", "1"]))
    assert heat.data[0].z.shape == (1, 2)
    assert len(plots.gene_weight_figure(np.array([0.1, -0.2]), "NKG7").data[0].y) == 2
    assert len(plots.imputation_histogram(np.array([0, 1.0]), np.array([0.5, 1.0])).data) == 2
    fig = plots.gene_gene_figure(
        (np.arange(5.0), np.arange(5.0)), (np.arange(5.0), -np.arange(5.0)), ("a", "b")
    )
    assert "r = 1.00" in fig.layout.annotations[0].text and "r = -1.00" in fig.layout.annotations[1].text


def test_panels_share_one_figure_and_switch_to_webgl_only_for_many_points():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(200, 2))
    values = [rng.random(200) for _ in range(5)]
    values[1][3] = np.nan
    panels = [plots.Panel(f"{HOSTILE} {i}", v, name=f"gene{i}") for i, v in enumerate(values)]
    fig = plots.embedding_panels(xy, panels, columns=2)
    assert {t.type for t in fig.data} == {"scatter"}  # 1,000 points: SVG, no WebGL context
    main = [t for t in fig.data if t.marker.showscale]
    assert len(main) == 5 and len({t.xaxis for t in main}) == 5
    # Highest values drawn last; the missing value is a grey point of its own on panel 1's axes.
    order = np.asarray(main[0].customdata)
    assert list(values[0][order]) == sorted(values[0])
    grey = [t for t in fig.data if not t.marker.showscale]
    assert len(grey) == 1 and list(grey[0].customdata) == [3] and grey[0].xaxis == main[1].xaxis
    # Titles are shown as text.
    assert all("<script>" not in a.text for a in fig.layout.annotations)
    many = [plots.Panel(str(i), rng.random(20_000)) for i in range(2)]
    big = plots.embedding_panels(rng.normal(size=(20_000, 2)), many)
    assert {t.type for t in big.data} == {"scattergl"}  # still one figure: one WebGL context
    assert {t.type for t in plots.embedding_panels(xy, panels[:1], webgl=True).data} == {"scattergl"}


def test_panels_above_the_drawing_limit_draw_one_sample_with_rows_of_all_cells():
    rng = np.random.default_rng(1)
    xy = rng.normal(size=(1_000, 2))
    values = [rng.random(1_000) for _ in range(4)]
    values[2][[7, 8, 9]] = np.nan
    fig = plots.embedding_panels(xy, [plots.Panel(str(i), v) for i, v in enumerate(values)], max_points=800)
    assert fig.layout.meta == {"drawn": 200, "cells": 1_000}
    assert "200 of the 1,000 cells" in plots.drawn_note(fig)
    per_axes: dict[str, set[int]] = {}
    for t in fig.data:
        rows = np.asarray(t.customdata, dtype=np.int64)
        per_axes.setdefault(t.xaxis, set()).update(rows.tolist())
        # each point sits where its cell is and carries its cell's value
        np.testing.assert_allclose(np.asarray(t.x), xy[rows, 0], rtol=1e-6)
        if t.marker.showscale:
            panel = int(t.name)
            np.testing.assert_allclose(np.asarray(t.marker.color), values[panel][rows], rtol=1e-6)
            # the colour bar spans every cell's values, not only the drawn ones' (the note says so)
            assert (t.marker.cmin, t.marker.cmax) == (np.nanmin(values[panel]), np.nanmax(values[panel]))
    assert len(per_axes) == 4 and all(rows == per_axes["x"] for rows in per_axes.values())
    assert plots.embedding_panels(xy, [plots.Panel("0", values[0])], max_points=0).layout.meta is None


def _relative_luminance(colour: str) -> float:
    """WCAG relative luminance of '#rrggbb' or 'rgb(r, g, b)'."""
    colour = colour.strip()
    if colour.startswith("#"):
        channels = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    else:
        channels = [float(v) for v in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]]
    linear = [
        (c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in channels
    ]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _trace_colours(fig) -> dict[str, str]:
    return {t.name.rsplit(" (", 1)[0]: t.marker.color for t in fig.data}


def test_a_label_has_one_colour_in_every_figure_whatever_cells_it_shows():
    column = pd.Series(["T cell", "Astrocyte", "Microglia", "B cell", "noise", "Neuron"] * 20)
    colours = plots.label_colors(column)
    assert len(set(colours.values())) == len(colours)  # distinct labels, distinct colours
    assert colours["noise"] == plots.NOISE_COLOR
    # Three figures, three different subsets of cells: Astrocyte and Microglia keep their colour.
    umap = plots.embedding_scatter(np.zeros((120, 2)), column.to_numpy(), categorical=True, colors=colours)
    lasso = column.to_numpy()[np.isin(column.to_numpy(), ["Astrocyte", "Microglia"])]
    bars = plots.composition_figure(lasso, colors=colours)
    bar_colours = dict(zip(bars.data[0].y, bars.data[0].marker.color, strict=True))
    edges = pd.DataFrame({"source": [1, 2], "target": [2, 1], "weight": [0.3, 0.7]})
    html = plots.attention_graph_html(
        edges, cell_names=[f"c{i}" for i in range(120)], groups=column, colors=colours
    )
    node_colours = {column[n["id"]]: n["color"] for n in plots.graph_data_json(html)["nodes"]}
    for label in ("Astrocyte", "Microglia"):
        assert _trace_colours(umap)[label] == bar_colours[label] == node_colours[label] == colours[label]
    # Deciding from the subset alone would have given Astrocyte another colour (this is the bug fixed).
    assert plots.category_colors(plots.category_order(lasso))["Microglia"] != colours["Microglia"]
    # The colours depend on the set of labels only, not on the order in which cells come.
    assert plots.label_colors(column.sample(frac=1, random_state=0)) == colours


def test_label_colours_use_scanpy_colours_in_declared_category_order():
    column = pd.Series(pd.Categorical(["b", "a", "b"], categories=["b", "a", "unused"]))
    adata = ad.AnnData(
        np.zeros((3, 1), dtype=np.float32),
        obs=pd.DataFrame({"ct": column.array}, index=["x", "y", "z"]),
        uns={"ct_colors": ["#111111", "#222222", "#333333"]},
    )
    colours = plots.obs_colors(adata, "ct")
    assert colours == {"a": "#222222", "b": "#111111", "unused": "#333333"}
    # Too few stored colours: the built-in palette, by natural order of all declared categories.
    adata.uns["ct_colors"] = ["#111111"]
    assert plots.obs_colors(adata, "ct") == plots.category_colors(["a", "b", "unused"])


def test_gene_pair_scatter_has_a_legend_per_label_and_axis_titles():
    labels = np.array(["B", "A", "B", "A", "noise"])
    colours = plots.label_colors(np.array(["C", "B", "A", "noise"]))
    fig = plots.gene_gene_figure(
        (np.arange(5.0), np.arange(5.0)),
        (np.arange(5.0), np.arange(5.0) ** 2),
        ("CD3E", HOSTILE),
        labels=labels,
        colors=colours,
        label_name="cell type",
        value_name="log1p",
    )
    assert fig.layout.showlegend
    shown = [t for t in fig.data if t.showlegend]
    assert [t.name for t in shown] == ["A (2)", "B (2)", "noise (1)"]
    assert all(t.marker.color == colours[t.legendgroup] for t in fig.data)
    # Both panels draw every label; each legend entry governs its label in both.
    assert sorted(t.legendgroup for t in fig.data) == ["A", "A", "B", "B", "noise", "noise"]
    assert list(fig.data[0].x) == [1.0, 3.0]  # label A's cells
    assert fig.layout.xaxis.title.text == "CD3E (log1p)" and fig.layout.xaxis2.title.text == "CD3E (log1p)"
    assert "<script>" not in fig.layout.yaxis.title.text and fig.layout.legend.title.text == "cell type"
    # Without labels: no legend, one trace a panel.
    plain = plots.gene_gene_figure((np.arange(3.0),) * 2, (np.arange(3.0),) * 2, ("a", "b"))
    assert len(plain.data) == 2 and not plain.layout.showlegend


def test_attention_colour_scale_rises_monotonically_in_lightness():
    from plotly.colors import get_colorscale

    stops = get_colorscale(plots.ATTENTION_COLORSCALE)
    luminance = [_relative_luminance(colour) for _, colour in stops]
    assert len(luminance) >= 5
    assert all(b > a for a, b in itertools.pairwise(luminance))
    assert luminance[-1] - luminance[0] > 0.5  # low and high are far apart


def test_a_large_scatter_draws_a_fixed_sample_and_still_maps_back_to_every_cell():
    rng = np.random.default_rng(1)
    n = 1_000
    xy = rng.normal(size=(n, 2))
    labels = np.array(["T", "B", "NK", "rare"])[
        np.r_[np.zeros(600, int), np.ones(300, int), np.full(97, 2), [3] * 3]
    ]
    fig = plots.embedding_scatter(xy, labels, name="type", max_points=200)
    drawn = np.concatenate([np.asarray(t.customdata) for t in fig.data])
    assert drawn.size == 200 and np.unique(drawn).size == 200 and drawn.max() < n
    for t in fig.data:  # every drawn point sits at its own cell and in its own cell's group
        rows = np.asarray(t.customdata)
        assert np.allclose(np.asarray(t.x), xy[rows, 0], atol=1e-6)
        assert set(labels[rows]) == {t.name.split(" (")[0]}
    # Legend counts are those of all cells, not of the sample.
    assert {t.name for t in fig.data} >= {"T (600)", "B (300)", "NK (97)"}
    note = plots.drawn_note(fig)
    assert note is not None and "200" in note and "1,000" in note
    again = plots.embedding_scatter(xy, labels, name="type", max_points=200)
    assert np.array_equal(
        np.sort(drawn), np.sort(np.concatenate([np.asarray(t.customdata) for t in again.data]))
    )
    # A selection on the drawn points comes back as rows of all cells.
    picked = {"points": [{"customdata": int(drawn[0])}, {"customdata": int(drawn[5])}]}
    assert set(plots.selected_cells(fig, picked)) == {int(drawn[0]), int(drawn[5])}
    # Numbers: the colour of each drawn point is its own cell's value; small figures are drawn whole.
    values = rng.normal(size=n)
    fig = plots.embedding_scatter(xy, values, categorical=False, max_points=200)
    rows = np.asarray(fig.data[-1].customdata)
    assert rows.size == 200 and np.allclose(np.asarray(fig.data[-1].marker.color), values[rows], atol=1e-5)
    assert plots.drawn_note(plots.embedding_scatter(xy, labels)) is None  # under the default limit
