"""The Model & graph page: models from the registry, presets, forms from the schemas, graph statistics
before training, device and estimate; invalid settings are explained."""

from __future__ import annotations

from scgraph_core.models import base
from tests.app.conftest import assert_clean, open_page, texts


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_models_presets_graph_statistics_and_estimate_are_shown():
    at = open_page("model")
    assert_clean(at)
    model_radio = at.radio(key="model_pick")
    assert model_radio.value == "cellvgae"
    assert set(model_radio.options) == {cls.title for cls in base.available().values()}
    assert at.radio(key="preset_pick:cellvgae").value == "quick"
    # The form is the schema's: quick preset values, help text on every control.
    epochs = next(n for n in at.number_input if n.label == "Epochs")
    assert epochs.value == 60 and epochs.help
    assert all(w.help for w in at.number_input) and all(w.help for w in at.selectbox)
    # The demo's kNN graph (k = 5 on 250 genes) before training.
    assert metric(at, "cells") == "700"
    assert int(metric(at, "mean degree").split(".")[0]) >= 5
    assert metric(at, "isolated cells") == "0"
    assert any("measured basis" in c and "measured on this machine" in c for c in texts(at.caption))
    assert metric(at, "training").endswith("s")
    # The whole run is a range, and the breakdown names every stage (clustering included).
    low, high = metric(at, "whole run").split(" - ")
    assert low.endswith("s") and high.endswith("s") and low != high
    parts = next(d.value for d in at.dataframe if "step" in d.value.columns)
    steps = list(parts["step"])
    assert {"start-up", "training: train", "clustering and interpretation", "writing the result"} <= set(
        steps
    )
    assert any("CPU" in c or "GPU" in c for c in texts(at.caption))


def test_changing_k_rebuilds_the_graph_statistics():
    at = open_page("model")
    before = int(metric(at, "edges").replace(",", ""))
    k = next(n for n in at.number_input if n.label == "Neighbours (k)")
    assert k.value == 10  # the quick preset's graph
    k.set_value(30).run()
    assert_clean(at)
    assert at.session_state["config"]["overrides"]["graph"] == {"k": 30}
    assert int(metric(at, "edges").replace(",", "")) > 2 * before


def test_the_paper_preset_replaces_the_quick_values():
    at = open_page("model")
    at.radio(key="preset_pick:cellvgae").set_value("paper").run()
    assert_clean(at)
    assert at.session_state["config"]["preset"] == "paper"
    assert next(n for n in at.number_input if n.label == "Epochs").value == 200
    assert next(t for t in at.text_input if t.label == "Attention heads").value == "10"


def test_an_invalid_combination_is_a_readable_message():
    at = open_page("model")
    heads = next(t for t in at.text_input if t.label == "Attention heads")
    heads.set_value("2, 2").run()
    assert not at.exception
    messages = texts(at.error)
    assert messages and "heads needs 4 values" in messages[0]
    # Fixing it clears the message.
    next(t for t in at.text_input if t.label == "Attention heads").set_value("3").run()
    assert_clean(at)


def test_a_count_model_on_the_demo_warns_that_raw_counts_are_needed():
    models = base.available()
    counting = [name for name, cls in models.items() if cls.requires_counts]
    if not counting:
        import pytest

        pytest.skip("no registered model needs raw counts yet")
    at = open_page("model")
    at.radio(key="model_pick").set_value(models[counting[0]].title).run()
    assert not at.exception
    assert any("needs raw counts" in w for w in texts(at.warning))


def test_settings_worth_changing_come_first_and_switched_off_parts_are_hidden():
    at = open_page("model")
    assert_clean(at)
    expanders = [e.label for e in at.expander]
    assert "Usually leave alone" in expanders
    labels = {w.label for w in [*at.number_input, *at.selectbox, *at.text_input, *at.toggle]}
    # The quick preset has no expression decoder and uses the KL prior: the decoder's weight is hidden,
    # the KL weight is shown.
    assert "Expression weight" not in labels and not any("expr_weight" in str(w.key) for w in at.number_input)
    assert any(w.key.endswith(":model:kl_weight") for w in at.text_input)
    decoder = next(n for n in at.number_input if n.key.endswith(":model:expr_decoder"))
    decoder.set_value(64).run()
    assert_clean(at)
    assert any(n.key.endswith(":model:expr_weight") for n in at.number_input)
    regularizer = next(s for s in at.selectbox if s.key.endswith(":model:regularizer"))
    regularizer.set_value("mmd").run()
    assert not any(w.key.endswith(":model:kl_weight") for w in at.text_input)


def test_figures_download_in_the_format_chosen_in_the_sidebar():
    import streamlit as st

    from scgraph_app import ui

    at = open_page("data")
    assert_clean(at)
    picker = at.sidebar.radio(key="figure_format")
    assert set(picker.options) == set(ui.FIGURE_FORMATS)
    # Every figure on the page carries the download settings (no plotly logo).
    assert at.get("plotly_chart")
    # The chosen format reaches the toolbar's download button.
    st.session_state["figure_format"] = "SVG (for papers; editable)"
    assert ui.chart_config()["toImageButtonOptions"]["format"] == "svg"
    st.session_state["figure_format"] = "PNG (for slides)"
    options = ui.chart_config({"scrollZoom": True})
    assert options["toImageButtonOptions"] == {"format": "png", "filename": "scgraph-figure", "scale": 2}
    assert options["scrollZoom"] and options["displaylogo"] is False


def test_the_graph_preview_is_the_one_the_run_builds_on_many_genes(tmp_path):
    """On an input of more than 1,000 genes the quick preset's recipe adapts (graph on 50 PCs of 2,000 genes, k
    15): the preview builds that graph and says why, instead of the preset's graph the run would not use."""
    from tests.helpers import toy_counts

    path = tmp_path / "wide.h5ad"
    toy_counts(n_cells=200, n_genes=1200).write_h5ad(path)
    dataset = {"path": str(path), "orientation": "auto", "format": None, "name": "wide.h5ad", "kind": "path"}
    at = open_page("model", state={"dataset": dataset})
    assert_clean(at)
    assert (
        next(n for n in at.number_input if n.label == "Neighbours (k)").value == 10
    )  # the preset as written
    captions = texts(at.caption)
    assert any("1,200 genes" in c and "k = 15" in c for c in captions), captions
    built = next(c for c in captions if c.startswith("Built in"))
    assert (
        "on 1200 graph genes" in built and "reads 1000 genes" in built
    )  # the preset as written: 250 and 250
    # Neighbours: with k = 15 and a symmetric union every cell has at least 15.
    assert float(metric(at, "mean degree")) >= 15
