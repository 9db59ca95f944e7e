"""CellVGAE as users run it: configuration, training in a run folder, results, stop and failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scgraph_core import data, graphs, pipeline
from scgraph_core.errors import ConfigError, TrainingError
from scgraph_core.interpret import learnt_expression
from scgraph_core.models import cellvgae as cv
from scgraph_core.runs import Run
from scgraph_core.train import StopSignal
from tests.helpers import toy_counts

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "model": {"hidden": [16, 16], "heads": [2], "latent": 8, "epochs": 6, "lr": 0.01},
    "prepare": {"n_hvg": 40, "n_graph_genes": 30},
    "cluster": {"min_cluster_sizes": [5, 10], "min_samples": [3, 5]},
    "train": {"eval_every": 2},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    adata = toy_counts()
    run = Run.create_at(tmp_path_factory.mktemp("runs") / "tiny", model="cellvgae")
    config = pipeline.resolve_config("cellvgae", "quick", TINY, label_key="celltype")
    out, result = pipeline.execute(adata, config, run=run)
    return run, out, result, config


def test_paper_preset_matches_the_paper_settings():
    config = pipeline.resolve_config("cellvgae", "paper")
    p = config.params
    assert (p.conv, p.hidden, p.heads, p.latent, p.regularizer, p.lr, p.epochs) == (
        "gat",
        (128, 128),
        (10, 10, 10, 10),
        50,
        "kl",
        1e-4,
        200,
    )
    assert (config.graph.kind, config.graph.k) == ("knn", 5)
    assert (config.prepare.n_hvg, config.prepare.n_graph_genes, config.prepare.scale) == (250, 250, "minmax")


def test_invalid_model_settings_are_explained():
    with pytest.raises(ConfigError, match="heads needs 4 values"):
        pipeline.resolve_config("cellvgae", "quick", {"model": {"heads": [2, 2]}})
    with pytest.raises(ConfigError, match="2 or 3 layer sizes"):
        pipeline.resolve_config("cellvgae", "quick", {"model": {"hidden": [8]}})
    with pytest.raises(ConfigError, match="no preset"):
        pipeline.resolve_config("cellvgae", "fancy")


def test_result_slots(tiny_run):
    run, out, result, _config = tiny_run
    n = out.n_obs
    assert out.obsm["X_cellvgae"].shape == (n, 8)
    assert out.obsm["X_umap"].shape == (n, 2)
    assert set(out.obs["cellvgae_cluster"].cat.categories) - {"noise"}
    assert out.varm["P_mu"].shape == (out.n_vars, 8)
    feature_rows = out.var_names.get_indexer(out.uns["cellvgae"]["feature_genes"])
    assert np.isfinite(out.varm["P_mu"][feature_rows]).all()
    assert out.uns["scgraph"]["config"]["model"] == "cellvgae"
    m = result.metrics
    for key in ("ari", "nmi", "silhouette", "n_clusters", "noise", "seconds_per_epoch", "val_auc"):
        assert key in m
    assert m["kl_weight"] == pytest.approx(1 / m["n_cells"])  # the paper's 1 / cells, in both presets
    assert run.state == "done"
    # HDBSCAN ran on its own 10-D UMAP (stored) and the run was chosen by its silhouette, said in the rule.
    uns = out.uns["cellvgae"]
    assert uns["cluster_space"] == "X_umap_cluster" and out.obsm["X_umap_cluster"].shape == (n, 10)
    assert uns["hdbscan_select"] == "silhouette" and "10-D UMAP" in m["cluster_rule"]
    assert "silhouette" in m["cluster_rule"] and m["cluster_rule"] == uns["cluster_rule"]
    grid = out.obsm["cellvgae_hdbscan_grid"]
    chosen = uns["hdbscan_chosen"]
    assert m["hdbscan_chosen"]["min_cluster_size"] == uns["hdbscan_grid"]["min_cluster_size"][chosen]
    codes = out.obs["cellvgae_cluster"].astype(str).to_numpy()
    assert np.array_equal(codes == "noise", grid[:, chosen] == -1)  # the reported clusters are that run


def test_views_manifest_points_at_real_slots(tiny_run):
    run, _, _, _ = tiny_run
    saved = ad.read_h5ad(run.file("result.h5ad"))  # the manifest survives the h5ad round trip
    views = saved.uns["scgraph"]["views"]
    assert views["model"] == "cellvgae"
    assert views["embedding"] in saved.obsm and views["umap"] in saved.obsm
    assert views["clusters"] in saved.obs
    assert all(key in saved.obs for key in views["other_clusters"])
    assert set(views["gene_weights"].values()) <= set(saved.varm)
    assert views["marker_table"] in saved.uns["cellvgae"]
    assert list(views["attention_layers"]) == ["hidden1", "hidden2", "mu", "sigma"]
    for name in views["attention_layers"]:
        entry = views["attention"][name]
        assert entry["obsp"] in saved.obsp and entry["obsp_std"] in saved.obsp
        assert entry["node_obs"] in saved.obs and entry["kind"] == "graph" and entry["heads"] == 2


def test_attention_rows_sum_to_one_per_head(tiny_run):
    _, out, _, _ = tiny_run
    for layer in ("hidden1", "hidden2", "mu", "sigma"):
        att = out.uns["cellvgae"]["attention"][layer]
        ei, alpha = att["edge_index"], att["alpha"]
        assert alpha.shape == (ei.shape[1], 2)
        sums = np.zeros((out.n_obs, alpha.shape[1]))
        np.add.at(sums, ei[1], alpha)
        np.testing.assert_allclose(sums, 1.0, atol=1e-4)
        mean = out.obsp[f"cellvgae_attention_{layer}"]
        np.testing.assert_allclose(np.asarray(mean.sum(axis=1)).ravel(), 1.0, atol=1e-4)
        std = out.obsp[f"cellvgae_attention_{layer}_std"].toarray()
        np.testing.assert_allclose(std[ei[1], ei[0]], alpha.std(axis=1), atol=1e-5)
    top = pd.read_csv(tiny_run[0].file("attention_top_edges.csv"))
    assert set(top["layer"]) == {"hidden1", "hidden2", "mu", "sigma"}
    assert (top.groupby("layer")["weight"].apply(lambda w: w.is_monotonic_decreasing)).all()


def test_learnt_expression_is_embedding_times_p_mu(tiny_run):
    _, out, _, _ = tiny_run
    g = out.var_names.get_loc(out.uns["cellvgae"]["feature_genes"][0])
    expected = out.obsm["X_cellvgae"] @ out.varm["P_mu"][g]
    np.testing.assert_allclose(
        learnt_expression(out.obsm["X_cellvgae"], out.varm["P_mu"], g), expected, rtol=1e-5
    )


def test_checkpoint_reload_gives_the_same_embedding(tiny_run):
    run, out, _, config = tiny_run
    prepared = data.prepare(toy_counts(), config.prepare)
    graph = graphs.build_graph(graphs.graph_matrix(prepared, config.graph), config.graph)
    p = config.params
    net = cv.CellVGAENet(
        prepared.features.shape[1],
        hidden=p.hidden,
        heads=p.heads,
        attn_dropout=p.attn_dropout,
        latent=p.latent,
    )
    net.load_state_dict(run.load_weights("final"))
    net.eval()
    split = cv.split_edges(
        graph.edge_index,
        prepared.features.shape[0],
        val=p.val_fraction,
        test=p.test_fraction,
        seed=config.train.seed,
    )
    x = torch.from_numpy(prepared.features)
    with torch.no_grad():
        mu, _ = net.encode(x, split.every_edge())  # embed_edges = all: the whole graph
        mu_train, _ = net.encode(x, split.message)
    assert split.every_edge().shape[1] > split.message.shape[1]
    np.testing.assert_allclose(mu.numpy(), out.obsm["X_cellvgae"], atol=1e-5)
    assert np.abs(mu_train.numpy() - out.obsm["X_cellvgae"]).max() > 1e-4  # the held-out edges count


def test_run_folder_files(tiny_run):
    run, _, _, _ = tiny_run
    markers = pd.read_csv(run.file("marker_genes.csv"))
    assert list(markers.columns[:4]) == ["cluster", "gene", "appearances", "score"]
    metrics = json.loads(run.file("metrics.json").read_text())
    assert metrics["n_clusters"] >= 1
    parts = metrics["analysis_parts"]  # where the analysis time went (benchmarks/bench_stages.py reads it)
    assert set(parts) == {"layout", "clusters", "leiden", "interpret"}
    assert all(v >= 0 for v in parts.values())
    if metrics["analysis_overlapped"]:  # the cluster choice and Leiden ran beside the drawn layout
        serial = max(parts["layout"], parts["clusters"] + parts["leiden"]) + parts["interpret"]
    else:
        serial = sum(parts.values())
    assert serial <= metrics["seconds_analysis"] + 1e-6
    epochs = run.events("epoch")
    assert len(epochs) == 6 and "reconstruction" in epochs[0]["losses"] and "kl" in epochs[0]["losses"]
    back = ad.read_h5ad(run.file("result.h5ad"))
    assert "X_cellvgae" in back.obsm and "cellvgae" in back.uns


@pytest.mark.parametrize(
    ("stop_at", "says"),
    [(3, "results are from the best checkpoint (epoch 2)"), (1, "before any checkpoint was scored")],
)
def test_stop_request_ends_cleanly_with_results(tmp_path, stop_at, says):
    run = Run.create_at(tmp_path / "stopped", model="cellvgae")
    config = pipeline.resolve_config("cellvgae", "quick", {**TINY, "model": {**TINY["model"], "epochs": 500}})
    stop = StopSignal(run.stop_requested)

    def stop_after(event):
        if event.get("kind") == "epoch" and event["epoch"] == stop_at:
            run.request_stop()  # as the app's Stop button does, from outside the trainer

    out, result = pipeline.execute(toy_counts(), config, run=run, callbacks=[stop_after], stop=stop)
    assert result.metrics["stopped"] and result.metrics["epochs_run"] == stop_at
    assert run.state == "stopped" and run.file("result.h5ad").exists()
    assert "X_cellvgae" in out.obsm
    # validation runs every 2 epochs: a stop at epoch 1 has no scored checkpoint and must not claim one
    message = json.loads(run.file("status.json").read_text())["message"]
    assert says in message and f"after {stop_at} epoch(s)" in message


def test_nan_loss_fails_the_run_with_a_message(tmp_path, monkeypatch):
    run = Run.create_at(tmp_path / "nan", model="cellvgae")
    monkeypatch.setattr(cv.model, "kl_divergence", lambda mu, s, parameterization: torch.tensor(float("nan")))
    config = pipeline.resolve_config("cellvgae", "quick", TINY)
    with pytest.raises(TrainingError, match="learning rate"):
        pipeline.execute(toy_counts(), config, run=run)
    assert run.state == "failed" and "loss became nan" in run.status["message"]
    assert not run.file("result.h5ad").exists()


def test_deterministic_runs_repeat_exactly_and_paper_clustering_uses_the_drawn_umap():
    # Two seeded runs with deterministic=True give the same embedding bit for bit, hence the same UMAP
    # and clusters. The paper's clustering recipe (2-D UMAP, best silhouette) clusters the drawn UMAP.
    # The quick preset draws with min_dist 0.5 (#21); the paper's recipe draws and clusters at 0.1.
    paper = {
        "cluster_umap_dims": 2,
        "cluster_umap_min_dist": 0.1,
        "umap_min_dist": 0.1,
        "hdbscan_select": "silhouette",
    }
    try:
        outs = [
            pipeline.fit(
                toy_counts(),
                "cellvgae",
                preset="quick",
                params=TINY["model"],
                prepare=TINY["prepare"],
                cluster={**TINY["cluster"], **paper},
                train={"seed": 5, "deterministic": True, "eval_every": 0},
            )
            for _ in range(2)
        ]
    finally:
        torch.use_deterministic_algorithms(False)  # the trainer sets it process-wide; not for other tests
    a, b = outs
    assert np.array_equal(a.obsm["X_cellvgae"], b.obsm["X_cellvgae"])
    assert np.array_equal(a.obs["cellvgae_cluster"].to_numpy(), b.obs["cellvgae_cluster"].to_numpy())
    assert a.uns["cellvgae"]["cluster_space"] == "X_umap" and "X_umap_cluster" not in a.obsm
    assert "drawn 2-D UMAP" in a.uns["cellvgae"]["cluster_rule"]
    assert "best silhouette" in a.uns["cellvgae"]["cluster_rule"]


def test_python_api_returns_annotated_copy():
    adata = toy_counts()
    out = pipeline.fit(
        adata,
        "cellvgae",
        preset="quick",
        params=TINY["model"],
        prepare=TINY["prepare"],
        cluster=TINY["cluster"],
    )
    assert "X_cellvgae" in out.obsm and "X_cellvgae" not in adata.obsm


def test_edge_split_holds_out_and_excludes_positives():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 50, 400)
    dst = rng.integers(0, 50, 400)
    ei = np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])])
    split = cv.split_edges(ei, 50, val=0.1, test=0.1, seed=0)
    key = lambda t: set((t[0] * 50 + t[1]).tolist()) | set((t[1] * 50 + t[0]).tolist())  # noqa: E731
    pos = key(split.train_pos.numpy())
    assert not pos & key(split.val_pos.numpy()) and not pos & key(split.test_pos.numpy())
    everything = pos | key(split.val_pos.numpy()) | key(split.test_pos.numpy())
    assert not everything & key(split.val_neg.numpy())
    assert split.val_neg.shape == split.val_pos.shape
    assert split.message.shape[1] == 2 * split.train_pos.shape[1]
    whole = split.every_edge().numpy()
    self_loops = ei[0] == ei[1]
    assert key(whole) == key(ei[:, ~self_loops]) and whole.shape[1] == len(key(whole))


def test_cli_round_trip(tmp_path, capsys):
    path = tmp_path / "toy.h5ad"
    toy_counts().write_h5ad(path)
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scgraph_core",
            "train",
            "--model",
            "cellvgae",
            "--input",
            str(path),
            "--out",
            str(out),
            "--preset",
            "quick",
            "--label-key",
            "celltype",
            "--seed",
            "3",
            "--epochs",
            "4",
            "--hidden",
            "16,16",
            "--heads",
            "2",
            "--latent",
            "8",
            "--n-hvg",
            "40",
            "--n-graph-genes",
            "30",
            "--min-cluster-sizes",
            "5,10",
            "--min-samples",
            "3,5",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("silhouette", "n_clusters", "noise", "seconds_per_epoch", "ari", "nmi"):
        assert key in metrics
    assert metrics["epochs_run"] == 4
    config = json.loads((out / "config.json").read_text())
    # --seed is the training seed; the graph keeps its own (--graph-seed), as in Python and the app.
    assert config["train"]["seed"] == 3
    assert config["graph"]["seed"] == pipeline.resolve_config("cellvgae", "quick").graph.seed
    assert (out / "marker_genes.csv").exists() and (out / "result.h5ad").exists()
    # How far the learnt expression follows the measured one, as the Expression page reads it from the file.
    from scgraph_core import interpret

    agreement = interpret.learnt_expression_agreement(ad.read_h5ad(out / "result.h5ad"))
    assert agreement["n_genes"] > 0
    for key, value in agreement.items():
        assert metrics["learnt_expression"][key] == pytest.approx(value), key
    # The same folder again is refused: an existing run is never overwritten.
    from scgraph_core.__main__ import main

    assert main(["train", "--input", str(path), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_quick_graph_is_built_on_pcs_of_the_demo():
    """The quick preset's graph (#21) is valid on the built-in demo as it ships: k = 10 neighbours on 50 PCs
    of the graph genes, every cell with at least k partners, no setting capped."""
    config = pipeline.resolve_config("cellvgae", "quick")
    prepared = data.prepare(data.load_demo(), config.prepare)
    matrix = graphs.graph_matrix(prepared, config.graph)
    assert matrix.shape == (700, config.graph.n_pcs)
    graph = graphs.build_graph(matrix, config.graph)
    assert graph.info["deviations"] == []
    degrees = np.bincount(graph.edge_index[0], minlength=700)
    assert degrees.min() >= config.graph.k


def test_mini_batch_training_steps_through_every_edge_and_keeps_the_outputs(tmp_path):
    adata = toy_counts()
    model = {**TINY["model"], "batch_size": 200, "batch_mode": "neighbours", "fanout": 4, "epochs": 3}
    model["scale_lr"] = False
    overrides = {**TINY, "model": model}
    config = pipeline.resolve_config("cellvgae", "quick", overrides, label_key="celltype")
    run = Run.create_at(tmp_path / "mb", model="cellvgae")
    out, result = pipeline.execute(adata, config, run=run)
    (start,) = [e for e in run.events("stage_start") if e["stage"] == "train"]
    steps = start["epochs"] // 3
    assert steps > 1 and start["epochs"] == 3 * steps  # one stage epoch per batch of 200 training edges
    epochs = [e for e in run.events("epoch") if e["stage"] == "train"]
    assert len(epochs) == 3 * steps
    assert {"reconstruction", "kl"} <= set(epochs[0]["losses"])
    assert all(np.isfinite(e["loss"]) for e in epochs)
    validated = [e for e in epochs if "validation" in e]
    assert [e["epoch"] for e in validated] == [2 * steps, 3 * steps]  # eval_every counts passes, not steps
    assert 0.0 <= validated[-1]["validation"]["val_auc"] <= 1.0
    z = out.obsm["X_cellvgae"]
    assert z.shape == (adata.n_obs, 8) and np.isfinite(z).all()
    assert "ari" in result.metrics
    assert result.metrics["steps_per_epoch"] == steps
    assert result.metrics["lr_per_step"] == pytest.approx(config.params.lr)  # as given with scale_lr off
    assert result.metrics["scale_lr"] is False


def test_mini_batch_learning_rate_spread_over_the_steps_of_a_pass_by_default():
    adata = toy_counts()
    model = {**TINY["model"], "batch_size": 200, "batch_mode": "neighbours", "fanout": 4, "epochs": 1}
    config = pipeline.resolve_config("cellvgae", "quick", {**TINY, "model": model}, label_key="celltype")
    _, result = pipeline.execute(adata, config)
    steps = result.metrics["steps_per_epoch"]
    assert config.params.scale_lr  # the default
    assert steps > 1 and result.metrics["lr_per_step"] == pytest.approx(config.params.lr / steps)


def test_partition_batches_train_on_induced_subgraphs_of_a_few_parts(tmp_path):
    adata = toy_counts()
    model = {**TINY["model"], "batch_size": 200, "batch_mode": "parts", "parts_per_batch": 2, "epochs": 3}
    config = pipeline.resolve_config("cellvgae", "quick", {**TINY, "model": model}, label_key="celltype")
    run = Run.create_at(tmp_path / "parts", model="cellvgae")
    out, result = pipeline.execute(adata, config, run=run)
    m = result.metrics
    assert m["parts"] >= 2 and 0.0 < m["parts_edges_within"] <= 1.0
    assert m["steps_per_epoch"] == -(-m["parts"] // 2)  # a pass visits every part once
    epochs = [e for e in run.events("epoch") if e["stage"] == "train"]
    assert len(epochs) == 3 * m["steps_per_epoch"] and all(np.isfinite(e["loss"]) for e in epochs)
    assert {"reconstruction", "kl"} <= set(epochs[0]["losses"])
    z = out.obsm["X_cellvgae"]
    assert z.shape == (adata.n_obs, 8) and np.isfinite(z).all()
    assert "ari" in result.metrics
    assert "readout_groups" not in m  # one read-out pass unless readout_cells is set
    assert m["negatives"] == "all"  # auto, few steps a pass: negative pairs reach cells outside the batch


def test_partition_batches_with_a_halo_train_the_edges_leaving_the_batch(monkeypatch):
    from scgraph_core.nn import partition

    seen: list[int] = []
    real = partition.PartitionBatches.batch

    def counting(self, chosen):
        b = real(self, chosen)
        seen.append(b.pos.shape[1])
        assert self.halo == 1 and b.n_own < b.cells.size  # the halo is there, after the own cells
        return b

    monkeypatch.setattr(partition.PartitionBatches, "batch", counting)
    adata = toy_counts()
    model = {**TINY["model"], "batch_size": 200, "batch_mode": "parts", "parts_per_batch": 2, "epochs": 1}
    model["halo"] = 1
    config = pipeline.resolve_config("cellvgae", "quick", {**TINY, "model": model}, label_key="celltype")
    out, result = pipeline.execute(adata, config)
    m = result.metrics
    assert m["halo"] == 1 and np.isfinite(out.obsm["X_cellvgae"]).all()
    steps = m["steps_per_epoch"]
    # the first batch is the fixed validation batch; then one pass: every training edge once
    assert sum(seen[1 : 1 + steps]) == m["n_train_edges"]


def test_kl_weight_is_the_paper_one_over_cells_unless_fixed():
    paper = pipeline.resolve_config("cellvgae", "paper", {}).params
    assert cv.model.kl_beta(paper, 2638) == pytest.approx(1 / 2638)  # the paper's 1 / N
    scaled = pipeline.resolve_config("cellvgae", "paper", {"model": {"kl_factor": 50}}).params
    assert cv.model.kl_beta(scaled, 1000) == pytest.approx(0.05)
    quick = pipeline.resolve_config("cellvgae", "quick", {}).params
    assert cv.model.kl_beta(quick, 700) == pytest.approx(1 / 700)  # the quick preset too
    fixed = pipeline.resolve_config("cellvgae", "quick", {"model": {"kl_weight": 3.0}}).params
    assert cv.model.kl_beta(fixed, 100_000) == 3.0  # a fixed weight is used as given


def test_bank_negatives_over_a_batch_of_every_cell_are_the_in_batch_pairs():
    # When the batch holds every cell no pair needs the bank: the same draws give the in-batch loss exactly.
    import torch.nn.functional as F

    z = torch.randn(12, 4, requires_grad=True)
    bank = cv.model.LatentBank(12, 4, torch.device("cpu"))
    got = bank.negative_loss(z, torch.arange(12), 40, np.random.default_rng(5))
    pairs = torch.from_numpy(np.random.default_rng(5).integers(0, 12, (2, 40)))
    pairs = pairs[:, pairs[0] != pairs[1]]
    want = -F.logsigmoid(-(z[pairs[0]] * z[pairs[1]]).sum(-1)).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert bank.seen.all() and torch.equal(bank.z, z.detach())


def test_bank_negatives_reach_cells_outside_the_batch_without_their_gradient():
    n, dim = 50, 3
    bank = cv.model.LatentBank(n, dim, torch.device("cpu"))
    cells = torch.tensor([7, 8, 9])
    # Before any other cell was encoded, every pair stays in the batch.
    z = torch.randn(3, dim, requires_grad=True)
    bank.negative_loss(z, cells, 30, np.random.default_rng(0))
    assert bank.seen.sum() == 3 and torch.equal(bank.z[cells], z.detach())
    # Every cell seen: pairs reaching outside use the bank's samples, count twice, and leave the bank without
    # a gradient; the value follows the draws.
    bank.z[:] = torch.randn(n, dim)
    bank.seen[:] = True
    stored = bank.z.clone()
    z = torch.randn(3, dim, requires_grad=True)
    loss = bank.negative_loss(z, cells, 400, np.random.default_rng(1))
    draw = np.random.default_rng(1)
    u, v = draw.integers(0, 3, 400), draw.integers(0, n, 400)
    local = {7: 0, 8: 1, 9: 2}
    terms, kept = [], 0
    for a, b in zip(u, v, strict=True):
        if int(b) in local:
            if local[int(b)] == a:
                continue
            other, weight = z[local[int(b)]], 1.0
        else:
            other, weight = stored[b], 2.0
        kept += 1
        terms.append(-weight * torch.nn.functional.logsigmoid(-(z[a] * other).sum()))
    assert sum(int(b) not in local for b in v) > 300  # most pairs reach outside the batch
    assert loss.item() == pytest.approx((torch.stack(terms).sum() / kept).item(), rel=1e-5)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert torch.equal(bank.z[cells], z.detach()) and not bank.z.requires_grad
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[cells] = False
    assert torch.equal(bank.z[untouched], stored[untouched])


def test_after_partition_batches_a_read_out_by_groups_gives_the_whole_graph_pass():
    # Same seed, deterministic training: the embedding and attention read group by group (each group on its
    # neighbourhood) are those of one pass over the whole graph.
    model = {**TINY["model"], "batch_size": 200, "batch_mode": "parts", "parts_per_batch": 2, "epochs": 2}
    outs = []
    for readout in (0, 40):
        config = pipeline.resolve_config(
            "cellvgae",
            "quick",
            {
                **TINY,
                "model": {**model, "readout_cells": readout},
                "train": {"seed": 3, "deterministic": True},
            },
            label_key="celltype",
        )
        outs.append(pipeline.execute(toy_counts(), config))
    (whole, r_whole), (grouped, r_grouped) = outs
    assert "readout_groups" not in r_whole.metrics and r_grouped.metrics["readout_groups"] >= 3
    np.testing.assert_allclose(grouped.obsm["X_cellvgae"], whole.obsm["X_cellvgae"], rtol=1e-5, atol=1e-5)
    for layer in ("hidden1", "mu"):
        a, b = (o.uns["cellvgae"]["attention"][layer] for o in (whole, grouped))
        assert (a["edge_index"] == b["edge_index"]).all()
        np.testing.assert_allclose(b["alpha"], a["alpha"], rtol=1e-5, atol=1e-6)


def test_cluster_choice_beside_the_drawn_layout_gives_the_serial_result(monkeypatch):
    """The label-free clusters (their own 10-D UMAP) and Leiden run in a second thread while the 2-D UMAP
    is drawn; every number is the one the serial order gives."""
    from scgraph_core import analyse

    adata = toy_counts()
    config = pipeline.resolve_config("cellvgae", "quick", TINY, label_key="celltype")
    outs, found = {}, {}
    for overlap in (False, True):
        monkeypatch.setattr(analyse, "_overlap", lambda n, overlap=overlap: overlap)
        outs[overlap], result = pipeline.execute(adata.copy(), config)
        assert result.metrics["analysis_overlapped"] is overlap
        found[overlap] = {k: result.metrics[k] for k in ("cluster_rule", "ari", "silhouette", "leiden")}
    serial, overlapped = outs[False], outs[True]
    for key in ("X_umap", "X_umap_cluster", "cellvgae_hdbscan_grid"):
        np.testing.assert_array_equal(serial.obsm[key], overlapped.obsm[key])
    for key in ("cellvgae_cluster", "cellvgae_leiden"):
        assert serial.obs[key].tolist() == overlapped.obs[key].tolist()
    assert found[False] == found[True]


def test_an_error_in_the_cluster_thread_reaches_the_caller(monkeypatch):
    from scgraph_core import analyse
    from scgraph_core import cluster as clustering

    def fails(*args, **kwargs):
        raise ConfigError("HDBSCAN could not run: a planted failure")

    monkeypatch.setattr(analyse, "_overlap", lambda n: True)
    monkeypatch.setattr(clustering, "cluster_embedding", fails)
    config = pipeline.resolve_config("cellvgae", "quick", TINY, label_key="celltype")
    with pytest.raises(ConfigError, match="planted failure"):
        pipeline.execute(toy_counts(), config)


def test_overlap_rule(monkeypatch):
    from scgraph_core import analyse

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert analyse._overlap(2_638) is True
    assert analyse._overlap(analyse.OVERLAP_MAX_CELLS + 1) is False  # memory-bound there: one after the other
    monkeypatch.setenv("SCGRAPH_OVERLAP", "0")
    assert analyse._overlap(2_638) is False
    monkeypatch.delenv("SCGRAPH_OVERLAP")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert analyse._overlap(2_638) is False  # one core: nothing to gain


def test_layouts_run_with_one_blas_thread_up_to_the_limit(monkeypatch):
    """OpenBLAS's threads split long dot products, so their count would change a layout's last bits and,
    with two layouts at once, make them depend on timing: the layouts run with one BLAS thread."""
    from threadpoolctl import threadpool_info

    from scgraph_core import analyse
    from scgraph_core import cluster as clustering

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    seen: list[set[int]] = []
    real = clustering.drawn_layout

    def drawing(*args, **kwargs):
        seen.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(clustering, "drawn_layout", drawing)
    config = pipeline.resolve_config("cellvgae", "quick", TINY, label_key="celltype")
    pipeline.execute(toy_counts(), config)
    assert seen == [{1}]
    assert blas_threads() == before  # given back after the analysis
    with analyse._one_blas_thread(analyse.OVERLAP_MAX_CELLS + 1):
        assert blas_threads() == before  # above the limit (one layout after the other) BLAS keeps its threads


def test_auto_negatives_use_the_bank_only_with_few_steps_a_pass(monkeypatch):
    """With hundreds of steps a pass the bank's old samples left link prediction at chance (100,000 cells):
    auto draws negatives in the batch there, and from every cell with few steps a pass."""
    from scgraph_core.models.cellvgae import model as cvm

    assert cvm.bank_or_batch("auto", 4) == "all"
    assert cvm.bank_or_batch("auto", cvm.BANK_MAX_STEPS) == "all"
    assert cvm.bank_or_batch("auto", cvm.BANK_MAX_STEPS + 1) == "batch"
    assert cvm.bank_or_batch("all", 1000) == "all" and cvm.bank_or_batch("batch", 2) == "batch"
    banks: list[int] = []
    real = cvm.LatentBank.__init__

    def counted(self, *args, **kwargs):
        banks.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(cvm.LatentBank, "__init__", counted)
    monkeypatch.setattr(cvm, "BANK_MAX_STEPS", 1)  # the toy's few steps a pass count as many here
    model = {**TINY["model"], "batch_size": 200, "batch_mode": "parts", "parts_per_batch": 2, "epochs": 2}
    config = pipeline.resolve_config("cellvgae", "quick", {**TINY, "model": model}, label_key="celltype")
    _, result = pipeline.execute(toy_counts(), config)
    assert result.metrics["steps_per_epoch"] > 1
    assert result.metrics["negatives"] == "batch" and not banks
