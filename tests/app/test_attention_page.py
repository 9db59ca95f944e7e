"""The Attention page: maps from the manifest, head statistics, filters, the pyvis graph with every
label escaped, the strongest-edge table and downloads; fusion maps of AttentionAE-sc."""

from __future__ import annotations

import numpy as np

from scgraph_core import plots
from tests.app.conftest import HOSTILE, assert_clean, needs, open_page, texts


def graph_html(at) -> str:
    frames = at.get("iframe")
    assert len(frames) == 1
    return frames[0].proto.srcdoc


def edge_table(at):
    return next(d.value for d in at.dataframe if "source_cell" in d.value.columns)


def test_graph_escapes_labels_and_matches_the_edge_table(app_home):
    at = open_page("attention", active=app_home.runs["cellvgae"])
    assert_clean(at)
    assert at.selectbox(key="att_layer").options[:2] == [
        "hidden1 (graph, 2 heads)",
        "hidden2 (graph, 2 heads)",
    ]
    html = graph_html(at)
    # The hostile cell type is text: escaped in the legend, unicode-escaped in the embedded data.
    assert HOSTILE not in html and "alert(" in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    data = plots.graph_data_json(html)
    assert any(HOSTILE in n["title"] for n in data["nodes"])
    assert "<script src=" not in html and "<link" not in html  # nothing is fetched from the internet
    table = edge_table(at)
    assert len(table) == len(data["edges"]) == 120
    assert (np.diff(table["weight"].to_numpy()) <= 1e-12).all()  # strongest first
    assert (table["source"] != table["target"]).all()  # self loops left out by default
    labels = {d.label for d in at.get("download_button")}
    assert {"Edges (CSV)", "Graph (HTML, opens offline)", "Per-cell scores (CSV)"} <= labels


def test_filters_heads_and_an_empty_result(app_home):
    at = open_page("attention", active=app_home.runs["cellvgae"])
    at.selectbox(key="att_layer").set_value("mu").run()
    stat = at.selectbox(key="att_stat:mu")
    assert stat.options == ["mean over heads", "std over heads (disagreement)", "head 1", "head 2"]
    stat.set_value("1").run()
    at.multiselect(key="att_inc:celltype").set_value(["type0"]).run()
    assert_clean(at)
    table = edge_table(at)
    assert set(table["source_label"]) == {"type0"} and set(table["target_label"]) == {"type0"}
    # Only type0 cells are drawn now, and they keep the colour type0 has on every page (decided from
    # the whole obs column, not from the types this graph happens to show).
    result = app_home.store.open(app_home.runs["cellvgae"]).read_result()
    colours = plots.obs_colors(result, "celltype")
    assert len(set(colours.values())) == len(colours) > 1
    nodes = plots.graph_data_json(graph_html(at))["nodes"]
    assert nodes and {n["color"] for n in nodes} == {colours["type0"]}
    at.multiselect(key="att_inc:celltype").set_value([]).run()
    at.multiselect(key="att_exc:celltype").set_value([HOSTILE]).run()
    table = edge_table(at)
    assert HOSTILE not in set(table["source_label"]) | set(table["target_label"])
    at.toggle(key="att_self").set_value(True).run()
    assert (edge_table(at)["source"] == edge_table(at)["target"]).any()  # α_ii are the largest here
    _lo, hi = at.slider(key="att_range:mu:1").value
    at.slider(key="att_range:mu:1").set_value((hi, hi)).run()
    at.multiselect(key="att_exc:celltype").set_value(["type0", "type1", HOSTILE]).run()
    assert not at.exception
    assert any("No edge passes these filters" in m for m in texts(at.info))


def test_node_overlay_modes(app_home):
    at = open_page("attention", active=app_home.runs["cellvgae"])
    for mode in ("incoming_mean", "outgoing", "touching"):
        at.radio(key="att_mode").set_value(mode).run()
        assert_clean(at)
    assert any(d.value.columns[0] == "group" for d in at.dataframe)


def test_fusion_attention_of_attentionae(app_home):
    run_id = needs(app_home, "attentionae")
    at = open_page("attention", active=run_id)
    assert_clean(at)
    assert all("fusion" in o for o in at.selectbox(key="att_layer").options)
    assert any("Fusion attention: each cell attends to every cell" in m for m in texts(at.info))
    assert at.radio(key="att_mode").value == "stored"
    data = plots.graph_data_json(graph_html(at))
    assert len(data["edges"]) > 0 and HOSTILE not in graph_html(at)
    assert any("Half of the stored pairs between different cells point to" in c for c in texts(at.caption))
    assert any(d.value.columns[0] == "cell" and "listeners" in d.value.columns for d in at.dataframe)
    raw = edge_table(at)["weight"].to_numpy()
    at.radio(key="att_scale").set_value("relative").run()
    assert_clean(at)
    n_cells = len(set(edge_table(at)["source_cell"]) | set(edge_table(at)["target_cell"]))
    relative = edge_table(at)["weight"].to_numpy()
    # Dense fusion attention: every cell is a key of every cell, so each edge scales by the same N.
    ratio = relative / raw
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert ratio[0] >= n_cells and float(ratio[0]).is_integer()


def test_the_graph_of_a_selection_kept_on_the_embedding_page(app_home):
    run_id = app_home.runs["cellvgae"]
    picked = list(range(0, 150, 3))  # 50 of the toy run's 150 cells
    at = open_page("attention", active=run_id, state={f"selections:{run_id}": {"every third cell": picked}})
    assert_clean(at)
    box = at.selectbox(key="att_selection")
    assert box.options == ["all cells", "every third cell"]
    box.set_value("every third cell").run()
    assert_clean(at)
    table = edge_table(at)
    assert len(table) > 0
    assert set(table["source"]) <= set(picked) and set(table["target"]) <= set(picked)
    assert len(plots.graph_data_json(graph_html(at))["edges"]) == len(table)
