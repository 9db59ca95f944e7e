"""The Annotate page: labels per type before training, a scBiGNN run started with the chosen labels, and
the predictions of a finished run (scores on hidden labels, maps, confusion, least sure cells, genes,
downloads, comparison with another run's clusters)."""

from __future__ import annotations

import json

from scgraph_core import jobs
from scgraph_core.runs import RunStore
from tests.app.conftest import assert_clean, needs, open_page, plotly_figures, texts


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_labels_are_counted_and_a_non_scbignn_run_points_to_training(app_home):
    at = open_page("annotate", active=needs(app_home, "cellvgae"))
    assert_clean(at)
    # The loaded dataset's label column, every type counted, the unlabelled cells last.
    key = at.selectbox(key="ann_label_key").value
    assert key in at.selectbox(key="ann_label_key").options
    table = next(d.value for d in at.dataframe if "type" in d.value.columns)
    assert table["type"].iloc[-1] == "(unlabelled)"
    labelled = int(metric(at, "labelled cells").replace(",", ""))
    assert table["cells"].iloc[:-1].sum() == labelled and int(metric(at, "types")) == len(table) - 1
    assert int(metric(at, "cells to predict").replace(",", "")) == table["cells"].iloc[-1]
    # A value that means "not labelled" moves its cells to the cells to predict.
    first = str(table["type"].iloc[0])
    at.text_input(key="ann_unknown").set_value(first).run()
    assert_clean(at)
    assert int(metric(at, "cells to predict").replace(",", "")) == int(table["cells"].iloc[0]) + int(
        table["cells"].iloc[-1]
    )
    assert any("Pick a finished scBiGNN run" in str(i.value) for i in at.info)


def test_a_finished_scbignn_run_shows_scores_maps_confusion_and_least_sure_cells(app_home):
    run_id = needs(app_home, "scbignn")
    at = open_page("annotate", active=run_id)
    assert_clean(at)
    accuracy = float(metric(at, "accuracy on hidden labels"))
    recorded = json.loads((app_home.store.open(run_id).file("metrics.json")).read_text())
    assert abs(accuracy - recorded["accuracy"]) < 1e-3
    titles = [str(f.get("layout", {}).get("title", {}).get("text", "")) for f in plotly_figures(at)]
    assert any("predicted type" in t for t in titles) and any("confidence" in t for t in titles)
    assert len(plotly_figures(at)) >= 3  # the two maps and the confusion matrix
    least = next(d.value for d in at.dataframe if "runner-up" in d.value.columns)
    assert len(least) == 20 and (least["confidence"].diff().dropna() >= 0).all()
    assert set(least["role"]) <= {"trained on", "held out", "unlabelled"}
    assert any("never entered training" in c for c in texts(at.caption))
    # Compared with the CellVGAE run on the same toy cells: an ARI is given.
    assert any("ARI between predicted types and clusters" in c for c in texts(at.caption))
    assert {b.label for b in at.get("download_button")} >= {"Predictions (CSV)", "result.h5ad"}


def test_train_starts_a_scbignn_run_with_the_chosen_labels(app_home):
    at = open_page("annotate", active=needs(app_home, "cellvgae"))
    store = RunStore(app_home.path / "runs")
    before = {i.id for i in store.list()}
    at.slider(key="ann_holdout").set_value(0.3).run()
    at.button(key="ann_start").click().run()
    assert_clean(at)
    new = [i for i in store.list() if i.id not in before]
    assert len(new) == 1 and new[0].model == "scbignn"
    run = store.open(new[0].id)
    try:
        labels = run.config["labels"]
        assert labels["key"] == at.selectbox(key="ann_label_key").value
        assert abs(labels["holdout_fraction"] - 0.3) < 1e-9
        assert run.config.get("label_key") is None  # the training labels never double as scoring labels
    finally:
        jobs.stop(run)
