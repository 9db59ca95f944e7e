"""The verdict rules on hand-made metrics and tiny AnnData objects."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from scgraph_core import verdict
from scgraph_core.verdict import RunScore, assess


def result(clusters, labels=None, *, prepare=None, model="cellvgae"):
    """A tiny result AnnData with a views manifest naming ``obs['clusters']``."""
    n = len(clusters)
    obs = pd.DataFrame(
        {"clusters": pd.Categorical([str(c) for c in clusters])}, index=[f"c{i}" for i in range(n)]
    )
    if labels is not None:
        obs["celltype"] = pd.Categorical(labels)
    a = ad.AnnData(np.zeros((n, 3), dtype=np.float32), obs=obs)
    a.uns["scgraph"] = {"views": {"model": model, "clusters": "clusters"}, "prepare": prepare or {}}
    return a


def kinds(v):
    return [s.kind for s in v.next_steps]


def test_two_clusters_for_eight_types_says_the_clustering_merges_types():
    labels = [f"t{i % 8}" for i in range(80)]
    a = result([i % 2 for i in range(80)], labels)
    v = assess({"ari": 0.2, "nmi": 0.4, "n_clusters": 2}, a, label_key="celltype")
    assert "2 clusters for 8 annotated types: the clustering merges types" in v.headline
    assert "ARI 0.20" in v.headline
    assert v.level == "poor"
    assert kinds(v)[0] == "recluster"
    assert "smaller min cluster size" in v.next_steps[0].text


def test_many_clusters_for_few_types_says_it_splits_and_a_close_count_says_neither():
    labels = ["a", "b"] * 20
    split = assess(
        {"ari": 0.5, "n_clusters": 5}, result([i % 5 for i in range(40)], labels), label_key="celltype"
    )
    assert "splits types" in split.headline and "larger min cluster size" in split.next_steps[0].text
    close = assess(
        {"ari": 0.9, "n_clusters": 2}, result([i % 2 for i in range(40)], labels), label_key="celltype"
    )
    assert "merges" not in close.headline and "splits" not in close.headline
    assert close.level == "good"
    assert close.next_steps == []


def test_a_better_other_clustering_is_named_and_suggested_first():
    metrics = {
        "ari": 0.3,
        "nmi": 0.5,
        "n_clusters": 4,
        "leiden": {"ari": 0.62, "nmi": 0.7, "n_clusters": 6},
        "hdbscan_best_with_labels": {
            "ari": 0.5,
            "nmi": 0.6,
            "n_clusters": 5,
            "min_cluster_size": 5,
            "min_samples": 3,
        },
        "agreement_with_observed": {"ari": 0.9, "nmi": 0.9},  # not a score against the labels
    }
    v = assess(metrics, result(list(range(4)) * 10, ["a", "b", "c", "d", "e"] * 8), label_key="celltype")
    others = [s for s in v.scores if not s.chosen]
    assert [s.name.split(" (")[0] for s in others] == [
        "Leiden on the embedding",
        "the HDBSCAN grid run that best matches the labels",
    ]
    assert "min cluster size 5, min samples 3" in others[1].name
    assert v.next_steps[0].kind == "recluster" and "Leiden" in v.next_steps[0].text
    assert "0.62" in v.next_steps[0].text and v.next_steps[0].page == "embedding"


def test_an_other_clustering_only_slightly_better_is_not_suggested():
    metrics = {"ari": 0.8, "n_clusters": 3, "leiden": {"ari": 0.82, "nmi": 0.8, "n_clusters": 3}}
    v = assess(metrics, result([0, 1, 2] * 10, ["a", "b", "c"] * 10), label_key="celltype")
    assert "recluster" not in kinds(v)


def test_the_best_grid_run_equal_to_the_chosen_one_is_not_listed_twice():
    metrics = {
        "ari": 0.5,
        "n_clusters": 3,
        "hdbscan_best_with_labels": {"ari": 0.5, "nmi": 0.5, "n_clusters": 3},
    }
    v = assess(metrics, result([0, 1, 2] * 10, ["a", "b", "c"] * 10), label_key="celltype")
    assert [s.chosen for s in v.scores] == [True]


def test_without_labels_a_dominant_cluster_and_its_step_are_reported():
    clusters = [0] * 80 + [1] * 10 + [2] * 10
    v = assess({"silhouette": 0.4, "n_clusters": 3}, result(clusters))
    assert "One cluster holds 80% of the cells." in v.findings
    assert "no label column" in v.headline and "silhouette 0.40" in v.headline
    assert v.level == "fair"
    assert kinds(v) == ["recluster"] and "split the large cluster" in v.next_steps[0].text


def test_without_labels_many_tiny_clusters_and_noise_are_reported():
    clusters = [0] * 500 + [1] * 400 + ["noise"] * 150 + [2, 3, 4, 5] * 2
    v = assess({"silhouette": 0.3}, result(clusters))
    assert any("4 of the 6 clusters are tiny" in f for f in v.findings)
    assert any(f.startswith("14% of the cells are noise") for f in v.findings)
    assert "join the tiny clusters" in v.next_steps[0].text


def test_without_labels_clean_well_separated_clusters_are_good_with_no_steps():
    v = assess({"silhouette": 0.6}, result([0, 1, 2, 3] * 30))
    assert v.level == "good" and v.findings == [] and v.next_steps == []
    assert "4 clusters, well separated" in v.headline


def test_more_genes_when_few_of_many_genes_were_read_and_the_result_is_not_good():
    prepare = {"n_hvg_used": 500, "n_genes": 20000, "x_kind": "lognorm"}
    a = result([0, 1] * 20, ["a", "b"] * 20, prepare=prepare)
    v = assess({"ari": 0.5, "n_clusters": 2}, a, label_key="celltype")
    step = next(s for s in v.next_steps if s.kind == "more_genes")
    assert "500 of 20,000 genes" in step.text and "n_hvg 2,000" in step.text
    good = assess({"ari": 0.9, "n_clusters": 2}, a, label_key="celltype")
    assert "more_genes" not in kinds(good)
    most = result([0, 1] * 20, ["a", "b"] * 20, prepare={"n_hvg_used": 2000, "n_genes": 3000})
    assert "more_genes" not in kinds(assess({"ari": 0.5, "n_clusters": 2}, most, label_key="celltype"))


def test_a_count_model_is_suggested_for_poor_results_on_raw_counts_only():
    counts = result([0, 1] * 20, ["a", "b"] * 20, prepare={"x_kind": "counts"})
    assert "count_model" in kinds(assess({"ari": 0.1, "n_clusters": 2}, counts, label_key="celltype"))
    lognorm = result([0, 1] * 20, ["a", "b"] * 20, prepare={"x_kind": "lognorm"})
    assert "count_model" not in kinds(assess({"ari": 0.1, "n_clusters": 2}, lognorm, label_key="celltype"))
    already = result([0, 1] * 20, ["a", "b"] * 20, prepare={"x_kind": "counts"}, model="attentionae")
    assert "count_model" not in kinds(assess({"ari": 0.1, "n_clusters": 2}, already, label_key="celltype"))


def _score(id, model="cellvgae", state="done", ari=0.3, dataset="pbmc", label_key="celltype"):
    return RunScore(id, f"run {id}", model, dataset, state, label_key, ari)


def test_a_stopped_run_that_scored_better_and_another_model_are_suggested():
    this = _score("me", ari=0.3)
    others = [
        _score("early", state="stopped", ari=0.6),
        _score("aae", model="attentionae", ari=0.7),
        _score("other-data", model="scvgae", ari=0.9, dataset="brain"),
        _score("other-labels", model="scvgae", ari=0.9, label_key="cluster"),
    ]
    a = result([0, 1, 2] * 10, ["a", "b", "c"] * 10)
    v = assess({"ari": 0.3, "n_clusters": 3}, a, label_key="celltype", others=others, this=this)
    stopped = next(s for s in v.next_steps if s.kind == "stopped_better")
    assert "run early" in stopped.text and "0.60" in stopped.text
    rival = next(s for s in v.next_steps if s.kind == "other_model")
    assert "AttentionAE-sc" in rival.text and "run aae" in rival.text  # not the better runs of other data


def test_no_comparison_step_when_no_other_run_is_better_by_the_margin():
    this = _score("me", ari=0.7)
    others = [_score("early", state="stopped", ari=0.72), _score("aae", model="attentionae", ari=0.5)]
    a = result([0, 1, 2] * 10, ["a", "b", "c"] * 10)
    v = assess({"ari": 0.7, "n_clusters": 3}, a, label_key="celltype", others=others, this=this)
    assert not {"stopped_better", "other_model"} & set(kinds(v))


def test_lines_hold_the_headline_and_every_step():
    v = assess(
        {"ari": 0.2, "n_clusters": 2},
        result([0, 1] * 40, [f"t{i % 8}" for i in range(80)]),
        label_key="celltype",
    )
    lines = v.lines()
    assert lines[0].startswith("verdict (poor): 2 clusters for 8 annotated types")
    assert sum(line.startswith("next: ") for line in lines) == len(v.next_steps) >= 1


def test_assess_run_reads_the_folder_and_compares_runs_of_the_same_data(tmp_path):
    from scgraph_core.runs import RunStore

    store = RunStore(tmp_path)
    a = result([0, 1] * 40, [f"t{i % 8}" for i in range(80)])
    runs = {}
    for name, model, ari, state in (("mine", "cellvgae", 0.2, "done"), ("rival", "attentionae", 0.6, "done")):
        run = store.create(model=model, name=name, dataset="toy", config={"label_key": "celltype"})
        run.write_json("metrics.json", {"ari": ari, "nmi": 0.3, "n_clusters": 2})
        run.write_result(a)
        run.set_status(state)
        runs[name] = run
    broken = store.create(model="scvgae", name="broken", dataset="toy", config={"label_key": "celltype"})
    broken.file("metrics.json").write_text("{not json")
    v = verdict.assess_run(runs["mine"], store)
    assert "2 clusters for 8 annotated types" in v.headline
    assert any(s.kind == "other_model" and "'rival'" in s.text for s in v.next_steps)
    alone = verdict.assess_run(runs["mine"])
    assert "other_model" not in kinds(alone)


def test_a_label_learning_run_is_judged_on_its_hidden_labels():
    from scgraph_core import verdict

    metrics = {
        "accuracy": 0.93,
        "macro_f1": 0.71,
        "labels": {"key": "celltype", "n_train": 500, "n_held_out": 120, "n_unlabelled": 80},
    }
    v = verdict.assess(metrics)
    assert v.level == "good" and "93% of 120 hidden labels" in v.headline and "200 cells" in v.headline
    assert any("rare" in f for f in v.findings)  # macro-F1 well below accuracy
    assert [s.kind for s in v.next_steps] == ["more_labels", "annotate"]
    assert verdict.assess({**metrics, "accuracy": 0.6, "macro_f1": 0.55}).level == "poor"
    none_hidden = verdict.assess({"labels": {"n_train": 600, "n_held_out": 0, "n_unlabelled": 100}})
    assert none_hidden.level == "unknown" and "no accuracy" in none_hidden.headline
    assert none_hidden.next_steps[0].kind == "holdout" and none_hidden.next_steps[0].page == "annotate"


def test_a_latent_at_chance_says_so_and_asks_for_training_again_not_reclustering():
    labels = [f"t{i % 8}" for i in range(80)]
    a = result([i % 40 for i in range(80)], labels)
    metrics = {"ari": 0.0, "n_clusters": 40, "val_auc": 0.5, "steps_per_epoch": 220}
    metrics["other_clusterings"] = {"leiden": {"ari": 0.2, "nmi": 0.3, "n_clusters": 9}}
    v = assess(metrics, a, label_key="celltype")
    assert v.level == "poor" and "learnt no structure" in v.findings[0] and "AUC 0.50" in v.findings[0]
    assert kinds(v)[0] == "retrain" and "recluster" not in kinds(v)
    assert "220 steps" in v.next_steps[0].text and "scale_lr" in v.next_steps[0].text
    scaled = assess({**metrics, "scale_lr": True}, a, label_key="celltype").next_steps[0].text
    assert "turn on scale_lr" not in scaled and "already divided" in scaled
    # full batch: the step only asks for a lower rate; a healthy AUC changes nothing
    assert (
        "steps"
        not in assess({**metrics, "steps_per_epoch": None}, a, label_key="celltype").next_steps[0].text
    )
    healthy = assess({**metrics, "val_auc": 0.93}, a, label_key="celltype")
    assert "retrain" not in kinds(healthy) and not any("no structure" in f for f in healthy.findings)
    # Chance link scores, yet clusters that match the types (a mini-batch run's mean embedding): the decoder
    # failed, the embedding did not; said without calling the run noise.
    agreeing = result([i % 8 for i in range(80)], labels)
    decoder_only = assess({**metrics, "ari": 0.74, "n_clusters": 8}, agreeing, label_key="celltype")
    assert not any("no structure" in f for f in decoder_only.findings)
    assert any("edge decoder does not predict links" in f for f in decoder_only.findings)
    assert "retrain" not in kinds(decoder_only)


def test_learnt_expression_that_does_not_follow_the_data_is_a_finding_with_a_smaller_kl_weight_next():
    labels = [f"t{i % 4}" for i in range(80)]
    a = result([i % 4 for i in range(80)], labels)
    poor = {
        "n_genes": 250,
        "median_r": -0.06,
        "share_positive": 0.45,
        "share_above_0_3": 0.18,
        "top1_share": 0.9,
    }
    metrics = {"ari": 0.9, "nmi": 0.9, "n_clusters": 4, "learnt_expression": poor, "kl_weight": 3.0}
    v = assess({**metrics, "n_cells": 700}, a, label_key="celltype")
    (finding,) = [f for f in v.findings if "learnt expression" in f]
    assert "45% of its 250 genes" in finding and "median r -0.06" in finding and "90%" in finding
    assert kinds(v) == ["lower_kl"] and "1.4e-03 here" in v.next_steps[0].text
    assert v.next_steps[0].page == "model"
    # The paper's weight (1 / cells) is not blamed, though the finding stays.
    v = assess({**metrics, "kl_weight": 1 / 700}, a, label_key="celltype")
    assert any("learnt expression" in f for f in v.findings) and "lower_kl" not in kinds(v)
    # Genes that correlate positively but share one picture: said too.
    v = assess({**metrics, "learnt_expression": {**poor, "share_positive": 0.8, "top1_share": 0.95}}, a)
    (finding,) = [f for f in v.findings if "learnt expression" in f]
    assert "nearly one picture for every gene: 95%" in finding and "80% of its 250 genes" in finding
    # Genes that follow the data, or a run without the check (older runs, models without P_mu): nothing.
    for agreement in ({**poor, "share_positive": 0.9, "top1_share": 0.6}, None):
        v = assess({**metrics, "learnt_expression": agreement}, a, label_key="celltype")
        assert not any("learnt expression" in f for f in v.findings) and kinds(v) == []
