"""scVGAE: the ZINB term trains, the imputed layer keeps the input's cells and genes, raw counts are
required, the memory guard refuses the all-pairs graph, the CLI round trip and the views manifest."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scgraph_core import data, memory, pipeline
from scgraph_core.__main__ import main
from scgraph_core.errors import ConfigError, DataError, MemoryGuardError
from scgraph_core.models import scvgae as sv
from scgraph_core.nn.counts import CountTarget, zinb_nll
from scgraph_core.nn.norm import GraphNorm
from scgraph_core.runs import Run
from scgraph_core.train import Trainer, TrainSpec
from tests.helpers import toy_counts

TINY = {"hidden": 16, "decoder_hidden": 32, "epochs": 25, "lr": 5e-3}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one thread. On a busy 2-core machine each multi-threaded kernel launch of these
    toy-sized operations costs more than the work itself."""
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


def _toy_with_gaps() -> ad.AnnData:
    """Toy counts with an all-zero gene and an all-zero cell, names out of alphabetical order."""
    adata = toy_counts(n_cells=120, n_genes=40, seed=1)
    X = adata.X.toarray()
    X[:, 7] = 0  # a gene no cell expresses
    X[5, :] = 0  # a cell with no counts
    adata.X = sp.csr_matrix(X)
    rng = np.random.default_rng(0)
    adata.obs_names = [f"c{v}" for v in rng.permutation(adata.n_obs)]
    adata.var_names = [f"g{v}" for v in rng.permutation(adata.n_vars)]
    return adata


def _prepared(adata: ad.AnnData, preset: str = "paper", **model):
    config = pipeline.resolve_config("scvgae", preset, {"model": {**TINY, **model}})
    prepared = data.prepare(adata, config.prepare)
    graph = sv.build_graph(sv.model_inputs(prepared).x, config.graph, config.params)
    return config, prepared, graph


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One CLI training run on the toy data with gaps (shared by the output tests)."""
    root = tmp_path_factory.mktemp("scvgae")
    adata = _toy_with_gaps()
    path = root / "toy.h5ad"
    adata.write_h5ad(path)
    out = root / "run"
    argv = ["train", "--model", "scvgae", "--input", str(path), "--out", str(out), "--label-key", "celltype"]
    argv += [
        "--seed",
        "3",
        "--threads",
        "1",
        "--quiet",
        "--epochs",
        "20",
        "--hidden",
        "16",
        "--decoder-hidden",
        "32",
        "--k",
        "3",
    ]
    code = main(argv)
    return code, adata, out


def test_count_target_equals_the_shared_zinb_nll():
    rng = np.random.default_rng(0)
    counts = torch.from_numpy(rng.poisson(rng.gamma(0.5, 2.0, size=(30, 20))).astype(np.float32))
    mu = torch.rand(30, 20, dtype=torch.float32).mul(4).add(0.05).requires_grad_()
    theta = torch.rand(30, 20).mul(3).add(0.1).requires_grad_()
    logit = torch.randn(30, 20).requires_grad_()
    ours = CountTarget(counts).nll(mu, theta, logit)
    ours.backward()
    grads = [t.grad.clone() for t in (mu, theta, logit)]
    for t in (mu, theta, logit):
        t.grad = None
    ref = zinb_nll(counts, mu, theta, pi_logit=logit)
    ref.backward()
    assert torch.allclose(ours, ref, rtol=1e-5)
    for g, t in zip(grads, (mu, theta, logit), strict=True):
        assert torch.allclose(g, t.grad, rtol=1e-4, atol=1e-7)


def test_graph_norm_equals_pytorch_geometric():
    from torch_geometric.nn import GraphNorm as PyGGraphNorm

    x = torch.randn(50, 8) * 3 + 1
    ours, ref = GraphNorm(8), PyGGraphNorm(8)
    with torch.no_grad():
        for norm in (ours, ref):
            norm.weight.copy_(torch.linspace(0.5, 2, 8))
            norm.bias.copy_(torch.linspace(-1, 1, 8))
            norm.mean_scale.copy_(torch.linspace(0, 1.5, 8))
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_zinb_term_receives_gradient_and_decreases():
    config, prepared, graph = _prepared(toy_counts(n_cells=100, n_genes=30))
    model = sv.ScVGAE()
    net_probe = sv.ScVGAENet(30, 100, hidden=8, decoder_hidden=8)
    inputs = model.inputs(prepared)
    x = torch.from_numpy(inputs.x)
    out = net_probe(x, torch.from_numpy(graph.edge_index))
    loss = CountTarget(torch.from_numpy(inputs.counts)).nll(
        out.mean * torch.from_numpy(inputs.size_factors)[:, None], out.theta, out.pi_logit
    )
    loss.backward()
    grad = net_probe.heads.weight.grad
    for name, rows in net_probe.head_slices().items():
        assert grad[rows].abs().sum() > 0, f"the {name} head gets no gradient from the ZINB term"

    trained = model.train_net(prepared, graph, config.params, Trainer(TrainSpec(seed=0)))
    zinb = [e["losses"]["zinb"] for e in trained.outcome.history]
    assert zinb[-1] < 0.9 * zinb[0]
    before, after = trained.initial_state["heads.weight"], trained.net.state_dict()["heads.weight"]
    for name, rows in trained.net.head_slices().items():
        assert not torch.equal(before[rows], after[rows]), f"the {name} head did not train"


def test_legacy_loss_leaves_the_dispersion_and_dropout_heads_untrained():
    config, prepared, graph = _prepared(toy_counts(n_cells=100, n_genes=30), preset="legacy")
    assert (config.params.loss, config.params.output) == ("legacy", "reconstruction")
    trained = sv.ScVGAE().train_net(prepared, graph, config.params, Trainer(TrainSpec(seed=0)))
    before, after = trained.initial_state["heads.weight"], trained.net.state_dict()["heads.weight"]
    rows = trained.net.head_slices()
    assert torch.equal(before[rows["theta"]], after[rows["theta"]])
    assert torch.equal(before[rows["pi"]], after[rows["pi"]])
    assert not torch.equal(before[rows["mean"]], after[rows["mean"]])  # the decoder reads M


def test_presets_and_parameter_checks():
    p = pipeline.resolve_config("scvgae", "paper")
    assert (p.params.alpha, p.params.loss, p.params.hidden, p.params.decoder_hidden) == (
        0.05,
        "fixed",
        128,
        1024,
    )
    assert (p.graph.kind, p.graph.percentile, p.params.kernel) == ("linear", 85.0, "centred")
    legacy = pipeline.resolve_config("scvgae", "legacy").params
    assert (legacy.loss, legacy.kernel, legacy.val_fraction, legacy.lr, legacy.epochs) == (
        "legacy",
        "raw",
        0.0,
        1e-4,
        100,
    )
    with pytest.raises(ConfigError, match="output = reconstruction"):
        pipeline.resolve_config("scvgae", "paper", {"model": {"loss": "legacy"}})


def test_missing_raw_counts_are_refused_before_training(tmp_path):
    adata = toy_counts(n_cells=60, n_genes=20)
    lognorm = data.prepare(adata).adata.X  # log-normalised values, no counts layer
    only_log = ad.AnnData(X=lognorm, obs=adata.obs.copy(), var=adata.var.copy())
    run = Run.create_at(tmp_path / "run", model="scvgae")
    config = pipeline.resolve_config("scvgae", "paper", {"model": TINY})
    with pytest.raises(DataError, match="raw counts") as info:
        pipeline.execute(only_log, config, run=run)
    assert "'counts'" in str(info.value) or "`counts`" in str(info.value)
    assert run.state == "failed"
    events = [json.loads(line) for line in (run.path / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e.get("kind") == "epoch"]
    assert not (run.path / "result.h5ad").exists()


def test_raw_counts_kept_in_raw_are_pointed_out():
    adata = toy_counts(n_cells=60, n_genes=20)
    adata.raw = adata.copy()
    adata.X = data.prepare(adata).adata.X
    report = data.validate(adata, require_counts=True)
    assert any(".raw" in e and "layers['counts']" in e for e in report.errors)


def test_validation_entries_are_hidden_and_choose_the_epoch():
    counts = toy_counts(n_cells=100, n_genes=30)
    config, prepared, graph = _prepared(counts, val_fraction=0.1)
    trainer = Trainer(TrainSpec(seed=0, eval_every=5, restore_best=True))
    trained = sv.ScVGAE().train_net(prepared, graph, config.params, trainer)
    val = trained.validation
    n_nonzero = int((prepared.adata.layers["counts"] > 0).sum())
    assert val.rows.size == round(0.1 * n_nonzero) and (val.values > 0).all()
    errors = [e["validation"]["val_log_error"] for e in trained.outcome.history if e.get("validation")]
    assert len(errors) == 5 and np.isfinite(errors).all()
    assert trained.outcome.best_epoch == 5 * (int(np.argmin(errors)) + 1)


def test_memory_guard_refuses_the_all_pairs_graph_or_switches_to_knn(monkeypatch):
    adata = toy_counts(n_cells=80, n_genes=30)
    monkeypatch.setitem(memory.DENSE_MAX_CELLS, "cpu", 50)
    with pytest.raises(MemoryGuardError, match="large_graph = knn"):
        _prepared(adata, large_graph="refuse")
    _, _, graph = _prepared(adata, fallback_k=7)
    assert graph.spec.kind == "knn" and graph.spec.k == 7
    assert any("kNN graph instead" in d for d in graph.info["deviations"])


def _types_under_shared_genes(seed: int) -> ad.AnnData:
    """Three cell types that differ 3-fold in 12 genes each, under 4 genes every cell expresses highly."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, 150)
    profiles = np.ones((3, 40))
    profiles[:, :4] = 60.0
    for t in range(3):
        profiles[t, 4 + 12 * t : 16 + 12 * t] *= 3.0
    library = rng.uniform(0.5, 2.0, 150)[:, None]
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(profiles[types] * library).astype(np.float32)))
    adata.obs_names = [f"cell{i}" for i in range(150)]
    adata.var_names = [f"gene{j}" for j in range(40)]
    adata.obs["celltype"] = types.astype(str)
    return adata


def test_centred_linear_kernel_joins_cells_of_the_same_type():
    adata = _types_under_shared_genes(seed=0)
    labels = adata.obs["celltype"].to_numpy()
    same = {}
    for kernel in ("raw", "centred"):
        _, _, graph = _prepared(adata, kernel=kernel)
        src, dst = graph.edge_index
        same[kernel] = (labels[src] == labels[dst]).mean()
        assert graph.stats()["mean_degree"] == pytest.approx(0.15 * 150, rel=0.1)  # the paper's density
    assert same["centred"] > 0.97 and same["centred"] > same["raw"] + 0.03


def test_linear_graph_leaves_no_cell_without_partners():
    adata = toy_counts(n_cells=90, n_genes=30)
    _, _, bare = _prepared(adata, min_neighbors=0, kernel="raw")
    _, _, fixed = _prepared(adata, min_neighbors=3, kernel="raw")
    assert fixed.stats()["n_isolated"] == 0
    assert fixed.stats()["min_degree"] >= 3
    bare_keys = set(map(tuple, bare.edge_index.T))
    assert bare_keys <= set(map(tuple, fixed.edge_index.T))  # the percentile graph is kept whole


def test_cli_help_lists_the_model_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "scvgae", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--alpha",
        "--kernel",
        "--val-fraction",
        "--output",
        "--large-graph",
        "--label-key",
        "--seed",
    ):
        assert flag in text


def test_cli_round_trip_writes_result_and_metrics(cli_run):
    code, _, out = cli_run
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("ari", "nmi", "n_clusters", "seconds_per_epoch", "best_epoch"):
        assert metrics[key] is not None
    # The paper preset trains on every count (no hidden validation entries, no validation score).
    assert metrics["n_validation_entries"] == 0 and metrics["val_log_error"] is None
    assert metrics["epochs_run"] == 20
    config = json.loads((out / "config.json").read_text())
    # --seed is the training seed; the graph keeps its own (--graph-seed), as in Python and the app.
    assert config["train"]["seed"] == 3
    assert config["graph"]["seed"] == pipeline.resolve_config("scvgae", "quick").graph.seed


def test_imputed_layer_keeps_the_input_cells_genes_and_count_scale(cli_run):
    _, adata, out = cli_run
    result = ad.read_h5ad(out / "result.h5ad")
    assert list(result.obs_names) == list(adata.obs_names)
    assert list(result.var_names) == list(adata.var_names)
    imputed = np.asarray(result.layers["imputed"])
    assert imputed.shape == adata.shape and np.isfinite(imputed).all() and (imputed >= 0).all()
    np.testing.assert_array_equal(sp.csr_matrix(result.layers["counts"]).toarray(), adata.X.toarray())
    zero_gene = list(adata.var_names).index(adata.var_names[7])
    assert (imputed[:, zero_gene] == 0).all() and (imputed[5] == 0).all()
    assert not result.var["scvgae_modelled"].iloc[7] and not result.obs["scvgae_modelled"].iloc[5]
    assert result.obs["scvgae_modelled"].sum() == adata.n_obs - 1
    # Expected counts: per cell, the imputed library is close to the observed one (size factors apply).
    kept = result.obs["scvgae_modelled"].to_numpy()
    observed = adata.X.toarray()[kept].sum(1)
    ratio = imputed[kept].sum(1) / observed
    assert 0.5 < np.median(ratio) < 2.0
    assert np.corrcoef(np.log(imputed[kept].sum(1)), np.log(observed))[0, 1] > 0.8
    assert (
        np.isnan(result.obsm["X_scvgae"][5]).all()
        and np.isfinite(np.delete(result.obsm["X_scvgae"], 5, 0)).all()
    )


def test_views_manifest_points_at_real_slots(cli_run):
    _, _, out = cli_run
    result = ad.read_h5ad(out / "result.h5ad")
    views = result.uns["scgraph"]["views"]
    assert views["model"] == "scvgae"
    assert views["imputed_layer"] == "imputed" and views["imputed_scale"] == "counts"
    assert views["embedding"] == "X_scvgae" and result.obsm["X_scvgae"].shape == (result.n_obs, 16)
    assert views["umap"] in result.obsm and result.obsm[views["umap"]].shape[1] == 2
    assert views["clusters"] in result.obs
    for key in views.get("other_clusters", []):
        assert key in result.obs
    history = result.uns["scvgae"][views["history"]]
    assert {"epoch", "loss", "mse", "zinb"} <= set(history.columns) and len(history) == 20


def test_observed_counts_are_clustered_the_same_way_and_compared(cli_run):
    _, _, out = cli_run
    result = ad.read_h5ad(out / "result.h5ad")
    metrics = json.loads((out / "metrics.json").read_text())
    views = result.uns["scgraph"]["views"]
    assert "scvgae_observed_leiden" in views["other_clusters"]
    observed = result.obs["scvgae_observed_leiden"].to_numpy()
    imputed = result.obs["scvgae_leiden"].to_numpy()
    kept = result.obs["scvgae_modelled"].to_numpy()
    from sklearn.metrics import adjusted_rand_score

    expected = adjusted_rand_score(observed[kept].astype(str), imputed[kept].astype(str))
    assert metrics["agreement_with_observed"]["ari"] == pytest.approx(expected, abs=1e-9)
    assert metrics["observed_counts"]["n_clusters"] == len(set(observed[kept]))
    assert metrics["observed_counts"]["ari"] is not None  # the run has a label key


def test_weak_agreement_with_the_observed_clusters_is_a_note():
    a = np.repeat(np.arange(4), 10)
    assert sv.observed_clusters_note("leiden", a, a, 1.0) is None
    note = sv.observed_clusters_note("leiden", np.arange(40) % 16, a, 0.31)
    assert "16 clusters" in note and "4 clusters" in note and "0.31" in note
    assert "scvgae_observed_leiden" in note
