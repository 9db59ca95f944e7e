"""scGNN in the app: its refinement rounds on the Training page (finished and live), its own graph on the
Model & graph page, and the Embedding and Imputation pages on its result."""

from __future__ import annotations

import numpy as np
import pytest

from scgraph_core import jobs
from tests.app.conftest import assert_clean, needs, open_page, plotly_array, plotly_figures, texts


def figure_with(at, trace_name: str) -> dict:
    """The page's plotly figure (as sent to the browser) that has a trace called ``trace_name``."""
    found = [f for f in plotly_figures(at) if any(t.get("name") == trace_name for t in f["data"])]
    assert len(found) == 1, [[t.get("name") for t in f["data"]] for f in plotly_figures(at)]
    return found[0]


def trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t.get("name") == name)


def numbers(values) -> list[float | None]:
    return [None if v is None else float(v) for v in plotly_array(values).tolist()]


def threshold(fig: dict) -> float:
    (line,) = [s for s in fig["layout"].get("shapes", []) if s.get("y0") == s.get("y1")]
    return float(line["y0"])


def test_a_finished_scgnn_run_shows_its_rounds_against_the_stop_threshold(app_home):
    run = app_home.store.open(needs(app_home, "scgnn"))
    metrics = run.read_json("metrics.json")
    at = open_page("training", active=run.id)
    assert_clean(at)
    assert any(s == "Finished." for s in texts(at.success))
    fig = figure_with(at, "ARI with the previous round")
    n = metrics["rounds"]
    ari = trace(fig, "ARI with the previous round")
    assert numbers(ari["x"]) == list(range(1, n + 1))
    # Round 1 has nothing to agree with; each later point is that round against the one before.
    shown = numbers(ari["y"])
    assert shown[0] is None
    np.testing.assert_allclose(shown[1:], metrics["round_ari"], rtol=1e-6)
    assert numbers(trace(fig, "clusters")["y"]) == [float(c) for c in metrics["round_clusters"]]
    assert threshold(fig) == pytest.approx(run.config["model_params"]["stop_ari"])
    caption = " ".join(texts(at.caption))
    word = "Settled after" if metrics["converged"] else "Still changing after"
    assert f"{word} {n} round" in caption
    assert "Imputation" in {p.proto.label for p in at.get("page_link")}  # scGNN imputes
    # The dozens of per-cluster stages are one legend entry per family, not one per stage.
    loss = next(f for f in plotly_figures(at) if any(t.get("name") == "feature_ae" for t in f["data"]))
    legend = {t["name"] for t in loss["data"] if t.get("showlegend")}
    stages = set(jobs.progress(run).history["stage"])
    assert not any("_r" in name.split(" ")[0] for name in legend), legend
    assert {"feature_ae", "imputation_ae"} <= legend
    assert any(name.startswith("cluster (") for name in legend), legend
    assert len(legend) <= 5 < len(stages)


def test_the_threshold_is_the_runs_own_stop_ari(app_home):
    run_id = app_home.copy_run("scgnn", "scGNN with a low threshold")
    run = app_home.store.open(run_id)
    config = run.config
    config["model_params"]["stop_ari"] = 0.42
    run.write_json("config.json", config)
    at = open_page("training", active=run_id)
    assert_clean(at)
    assert threshold(figure_with(at, "ARI with the previous round")) == pytest.approx(0.42)
    assert any("agree above ARI 0.42" in c for c in texts(at.caption))


@pytest.fixture
def scgnn_training(tmp_path, monkeypatch):
    """An scGNN run that reads as training (its status names this test process) in a home of its own,
    two refinement rounds into its loop."""
    from scgraph_core.runs import RunStore

    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path))
    config = {"model": "scgnn", "preset": "quick", "model_params": {"stop_ari": 0.9, "max_rounds": 3}}
    run = RunStore(tmp_path / "runs").create(
        model="scgnn", name="scGNN training", dataset="toy", config=config
    )
    run.set_status("running", "training")
    run.append_event({"kind": "pipeline", "step": "train", "device": "cpu", "precision": "float32"})
    epoch = 0
    for stage in ["feature_ae"] + [f"cluster_r1_{i}" for i in range(12)] + ["em_r1", "gae_r1"]:
        run.append_event({"kind": "stage_start", "stage": stage, "epochs": 3})
        for epoch in (1, 2, 3):
            run.append_event(
                {
                    "kind": "epoch",
                    "stage": stage,
                    "epoch": epoch,
                    "epochs": 3,
                    "loss": 1.0 / epoch,
                    "seconds": 0.1,
                }
            )
    for record in (
        {"round": 1, "n_clusters": 9, "ari_previous": None, "leiden_communities": 12},
        {"round": 2, "n_clusters": 7, "ari_previous": 0.61, "leiden_communities": 9},
    ):
        run.append_event({"kind": "round", "loop": "refine", **record})
    return run


def test_the_rounds_are_drawn_while_scgnn_trains(scgnn_training):
    at = open_page("training", active=scgnn_training.id)
    assert_clean(at)
    fig = figure_with(at, "ARI with the previous round")
    assert numbers(trace(fig, "ARI with the previous round")["y"]) == [None, 0.61]
    assert numbers(trace(fig, "clusters")["y"]) == [9.0, 7.0]
    assert threshold(fig) == pytest.approx(0.9)
    assert any("Round 2 done (at most 4)" in c for c in texts(at.caption))
    # The next round's event shows up on the next redraw.
    scgnn_training.append_event(
        {"kind": "round", "loop": "refine", "round": 3, "n_clusters": 7, "ari_previous": 0.95}
    )
    at.run()
    assert_clean(at)
    assert numbers(trace(figure_with(at, "ARI with the previous round"), "clusters")["y"]) == [9.0, 7.0, 7.0]
    loss = figure_with(at, "feature_ae")
    legend = [t["name"] for t in loss["data"] if t.get("showlegend")]
    assert legend == ["feature_ae", "cluster (12 stages)", "em", "gae"]


def test_a_run_without_rounds_has_no_rounds_chart(app_home):
    at = open_page("training", active=app_home.runs["cellvgae"])
    assert_clean(at)
    assert not any("Refinement rounds" in m for m in texts(at.markdown))
    assert "Imputation" not in {p.proto.label for p in at.get("page_link")}  # CellVGAE does not impute
    assert not any(
        t.get("name") == "ARI with the previous round" for f in plotly_figures(at) for t in f["data"]
    )


def test_scbignn_rounds_show_the_held_out_accuracy(app_home):
    run = app_home.store.open(needs(app_home, "scbignn"))
    rounds = run.events("round")
    assert rounds and all(r["loop"] == "em" for r in rounds)
    at = open_page("training", active=run.id)
    assert_clean(at)
    assert any(m == "**EM rounds**" for m in texts(at.markdown))
    fig = figure_with(at, "held-out accuracy (q)")
    np.testing.assert_allclose(
        numbers(trace(fig, "held-out accuracy (q)")["y"]), [r["q_accuracy"] for r in rounds], rtol=1e-6
    )
    assert not fig["layout"].get("shapes")  # no ARI stop threshold for an EM loop


def test_the_model_page_lists_scgnn_and_says_it_builds_its_own_graph():
    at = open_page("model")
    at.radio(key="model_pick").set_value("scGNN").run()
    assert not at.exception
    assert set(at.radio(key="preset_pick:scgnn").options) == {"quick", "paper"}
    labels = {n.label for n in at.number_input}
    assert {"Knn k", "Max rounds", "Stop ari"} <= labels
    sentence = "scGNN builds its cell graph on its own embedding in every round (k = 10, pruned)."
    assert sum(sentence in i for i in texts(at.info)) == 2  # the Cell graph tab and the graph section
    # No statistics of a kNN graph it never trains on, and no graph settings it does not read.
    assert not {"edges", "mean degree", "isolated cells"} & {m.label for m in at.metric}
    assert "Neighbours (k)" not in labels
    next(n for n in at.number_input if n.label == "Knn k").set_value(7).run()
    assert not at.exception
    assert any("(k = 7, pruned)" in i for i in texts(at.info))
    # Back on CellVGAE the kNN statistics return, without the own-graph note.
    at.radio(key="model_pick").set_value("CellVGAE").run()
    assert_clean(at)
    assert "mean degree" in {m.label for m in at.metric}
    assert not any("builds its" in i for i in texts(at.info))


def test_embedding_page_on_a_scgnn_run(app_home):
    run_id = needs(app_home, "scgnn")
    result = app_home.store.open(run_id).read_result()
    at = open_page("embedding", active=run_id)
    assert_clean(at)
    fig = plotly_figures(at)[0]
    assert sum(len(plotly_array(t["x"])) for t in fig["data"]) == result.n_obs
    clusters = {str(c) for c in result.obs["scgnn_cluster"].unique()}
    assert {str(t["name"]).split(" ")[0] for t in fig["data"]} <= clusters | {"noise"}


def test_imputation_page_on_a_scgnn_run(app_home):
    run_id = needs(app_home, "scgnn")
    result = app_home.store.open(run_id).read_result()
    at = open_page("imputation", active=run_id)
    assert_clean(at)
    gene = at.selectbox(key="imp_gene").value
    figs = plotly_figures(at)
    assert len(figs) == 4  # observed UMAP, imputed UMAP, histogram, gene-gene
    imputed = np.asarray(result.layers["imputed"][:, result.var_names.get_loc(gene)]).reshape(-1)
    drawn = np.sort(plotly_array(figs[1]["data"][-1]["marker"]["color"]))
    np.testing.assert_allclose(drawn, np.sort(np.log1p(np.clip(imputed, 0, None))), rtol=1e-5, atol=1e-6)
