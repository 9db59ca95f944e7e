"""scGNN (MODELS.md section 3): the O(N) regularisers against the dense N x N loss, the sampled graph-autoencoder
loss against the dense one, the graph, the cluster count rule, the stopping rule, and the code bugs of
MODELS.md 3.6 each with a check that the buggy behaviour would fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from scgraph_core import pipeline
from scgraph_core.data import PrepareSpec, prepare
from scgraph_core.models import base
from scgraph_core.models.scgnn import model as scgnn
from scgraph_core.models.scgnn.model import (
    CellGraph,
    cluster_count,
    gae_loss,
    imputation_weights,
    kmeans_k,
    knn_graph,
)
from tests.helpers import toy_counts


def _random_graph(n: int, k: int, rng: np.random.Generator) -> CellGraph:
    src = np.repeat(np.arange(n), k)
    dst = rng.integers(0, n, size=n * k)
    keep = src != dst
    keys = np.unique(np.concatenate([src[keep] * n + dst[keep], dst[keep] * n + src[keep]]))
    return CellGraph(np.vstack([keys // n, keys % n]), n, 0)


def test_per_cell_weights_equal_the_dense_regularisers_on_500_cells():
    rng = np.random.default_rng(0)
    n, g = 500, 40
    graph = _random_graph(n, 6, rng)
    labels = rng.integers(0, 7, size=n)
    x = rng.normal(size=(n, g))
    xhat = x + rng.normal(scale=0.3, size=(n, g))
    err = ((x - xhat) ** 2).sum(axis=1)  # ||x_j - x̂_j||²
    A = graph.adjacency().toarray().astype(np.float64)
    B = (labels[:, None] == labels[None, :]).astype(np.float64)  # i = j included
    dense = 0.3 * (A * err[None, :]).sum() + 0.1 * (B * err[None, :]).sum()
    w = imputation_weights(graph, labels, 0.3, 0.1).astype(np.float64)
    assert np.isclose((w * err).sum(), dense, rtol=1e-5, atol=1e-5)
    assert w.shape == (n,)


def test_sampled_graph_loss_estimates_the_dense_weighted_bce():
    torch.manual_seed(0)
    n = 40
    rng = np.random.default_rng(1)
    graph = _random_graph(n, 3, rng)
    loops = np.arange(n)
    pos = np.hstack([graph.edge_index, np.vstack([loops, loops])])
    z = torch.randn(n, 4) * 0.7
    mu, log_sigma = torch.zeros(n, 4), torch.zeros(n, 4)
    # The paper's dense loss: norm · mean over N² of BCE-with-logits with positive weight.
    target = torch.zeros(n, n)
    target[pos[0], pos[1]] = 1.0
    p = float(target.sum())
    pos_weight = torch.tensor((n * n - p) / p)
    norm = n * n / (2 * (n * n - p))
    logits = z @ z.T
    dense = norm * F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    gen = torch.Generator().manual_seed(3)
    draws = [float(gae_loss(z, mu, log_sigma, torch.from_numpy(pos), generator=gen)[0]) for _ in range(400)]
    assert abs(np.mean(draws) - float(dense)) < 0.01 * float(dense)


def test_gae_kl_term_is_the_codes_formula():
    mu, log_sigma = torch.randn(10, 3), torch.randn(10, 3) * 0.2
    _, kl = gae_loss(torch.randn(10, 3), mu, log_sigma, torch.tensor([[0, 1], [1, 0]]))
    expected = -(0.5 / 10) * torch.mean(torch.sum(1 + 2 * log_sigma - mu**2 - torch.exp(log_sigma) ** 2, 1))
    assert torch.isclose(kl, expected)


def test_knn_graph_prunes_far_neighbours_and_is_symmetric_without_self_loops():
    rng = np.random.default_rng(0)
    # Two tight groups of 6 far apart: with k = 6 every cell's list holds its 5 group mates and one far cell.
    z = np.vstack([rng.normal(scale=0.01, size=(6, 2)), rng.normal(scale=0.01, size=(6, 2)) + 30.0])
    g = knn_graph(z.astype(np.float32), 6, "std")
    src, dst = g.edge_index
    assert (src != dst).all()
    keys = set(zip(src.tolist(), dst.tolist(), strict=True))
    assert all((j, i) in keys for i, j in keys)
    assert g.pruned == 12  # the one far neighbour of each cell
    assert not ((src < 6) & (dst >= 6)).any() and not ((src >= 6) & (dst < 6)).any()
    unpruned = knn_graph(z.astype(np.float32), 6, "none")
    assert ((unpruned.edge_index[0] < 6) & (unpruned.edge_index[1] >= 6)).any()
    assert np.all(g.degree == 5)


def test_cluster_count_reads_the_graph_with_its_own_node_order():
    # MODELS.md 3.6 item 4: two cliques listed in scrambled order must give two communities matching them.
    n = 20
    order = np.random.default_rng(0).permutation(n)
    group = (order < 10).astype(int)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and group[i] == group[j]]
    ei = np.array(pairs).T
    assert cluster_count(CellGraph(ei, n, 0), resolution=1.0, seed=0) == 2


@pytest.mark.parametrize(
    ("communities", "n_cells", "ratio", "expected"),
    [(10, 1000, None, 8), (10, 5000, None, 5), (3, 1000, None, 2), (5, 5000, None, 2), (9, 100, 1.0, 9)],
)
def test_kmeans_k_rule(communities, n_cells, ratio, expected):
    assert kmeans_k(communities, n_cells, ratio) == expected


def test_count_variance_picks_the_genes_of_largest_raw_count_variance():
    adata = toy_counts(n_cells=120, n_genes=50)
    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    expected = set(np.argsort(-counts.var(axis=0), kind="stable")[:10])
    prep = prepare(adata, PrepareSpec(n_hvg=10, n_graph_genes=10, hvg_flavor="count_variance", scale="none"))
    chosen = {int(adata.var_names.get_loc(g)) for g in prep.feature_genes}
    assert chosen == expected


@pytest.fixture(scope="module")
def toy():
    return toy_counts(n_cells=150, n_genes=60)


def _train(toy, monkeypatch, **model):
    """A smoke run that records every autoencoder stage: (name, network id, rows it learns)."""
    calls = []
    real = scgnn.ScGNN._stage

    def spy(name, net, optimizer, inputs, epochs, p, **kw):
        calls.append(
            (
                name,
                id(net),
                int(inputs.shape[0]),
                {k: v.detach().clone() for k, v in net.state_dict().items()},
                kw.get("l1"),
            )
        )
        return real(name, net, optimizer, inputs, epochs, p, **kw)

    monkeypatch.setattr(scgnn.ScGNN, "_stage", staticmethod(spy))
    smoke = base.get("scgnn").smoke
    params = {**smoke["model"], "max_rounds": 1, **model}
    config = pipeline.resolve_config("scgnn", "quick", {**smoke, "model": params}, label_key="celltype")
    out, result = pipeline.execute(toy.copy(), config)
    return calls, out, result


def test_cluster_autoencoders_learn_their_own_cells_from_the_current_feature_model(toy, monkeypatch):
    calls, out, _result = _train(toy, monkeypatch)
    n = out.n_obs
    feature = next(c for c in calls if c[0] == "feature_ae")
    clusters = [c for c in calls if c[0].startswith("cluster_r1_")]
    assert clusters
    # MODELS.md 3.6 item 1: each cluster autoencoder sees its own cells (not the loader of all cells) ...
    assert sum(c[2] for c in clusters) == n
    assert all(c[2] < n for c in clusters) or len(clusters) == 1
    # ... item 2: each is its own copy, not the shared feature model, and all start from the same weights
    # (the feature model after its last training), not from the previous cluster's.
    assert all(c[1] != feature[1] for c in clusters)
    first = clusters[0][3]
    for c in clusters[1:]:
        assert all(torch.equal(first[k], c[3][k]) for k in first)
    em = next(c for c in calls if c[0] == "em_r1")
    assert em[1] == feature[1]  # the feature model goes on learning, on the cluster models' output


def test_scaled_cluster_penalty_follows_the_share_of_cells(toy, monkeypatch):
    calls, out, _ = _train(toy, monkeypatch, cluster_l1="scaled", l1_weight=2.0)
    clusters = [c for c in calls if c[0].startswith("cluster_r1_")]
    assert clusters
    for c in clusters:
        assert c[4] == pytest.approx(2.0 * c[2] / out.n_obs)
    full, _, _ = _train(toy, monkeypatch, l1_weight=2.0)
    assert all(c[4] == 2.0 for c in full if c[0].startswith("cluster_r1_"))


def test_legacy_loader_bug_reproduces_the_published_behaviour(toy, monkeypatch):
    calls, out, _ = _train(toy, monkeypatch, legacy_loader_bug=True)
    clusters = [c for c in calls if c[0].startswith("cluster_r1_")]
    assert clusters and all(c[2] == out.n_obs for c in clusters)


def test_without_the_graph_autoencoder_the_graph_is_still_built_and_imputation_runs(toy, monkeypatch):
    # MODELS.md 3.6 item 3: early convergence without the GAE left adj = None and imputation crashed.
    _, out, _result = _train(toy, monkeypatch, gae=False, max_rounds=0)
    assert "scgnn_graph" in out.obsp and out.obsp["scgnn_graph"].nnz > 0
    assert out.layers["imputed"].shape == out.shape
    assert out.obsm["X_scgnn"].shape[1] == base.get("scgnn").smoke["model"]["latent"]


def test_outputs_follow_the_contract(toy, monkeypatch):
    _, out, result = _train(toy, monkeypatch)
    assert out.shape == toy.shape  # every input cell and gene, in the input's order
    assert list(out.obs_names) == list(toy.obs_names) and list(out.var_names) == list(toy.var_names)
    imputed = np.asarray(out.layers["imputed"])
    assert np.isfinite(imputed).all() and (imputed >= 0).all()
    modelled = out.var["scgnn_modelled"].to_numpy(dtype=bool)
    assert 0 < modelled.sum() <= base.get("scgnn").smoke["prepare"]["n_hvg"]
    counts = toy.X.toarray() if hasattr(toy.X, "toarray") else np.asarray(toy.X)
    # Genes the model did not read keep their observed counts.
    np.testing.assert_allclose(imputed[:, ~modelled], counts[:, ~modelled])
    assert "scgnn_cluster" in out.obs and out.obsm["X_scgnn"].shape[0] == out.n_obs
    assert {"ari", "nmi", "rounds", "converged", "round_ari"} <= set(result.metrics)
    rounds = result.tables["scgnn_rounds"]
    assert list(rounds["round"]) == list(range(1, len(rounds) + 1))
    assert {"n_clusters", "ari_previous", "leiden_communities", "kmeans_k"} <= set(rounds.columns)
    ltmg = out.layers["scgnn_ltmg"]
    assert ltmg.shape == out.shape


def test_refinement_stops_when_the_clusters_stop_changing(toy, monkeypatch):
    _, _, result = _train(toy, monkeypatch, max_rounds=6, stop_ari=0.0)
    # Any agreement above 0 ends the loop after the first refinement round.
    assert result.metrics["rounds"] == 2 and result.metrics["converged"]


def test_recount_first_keeps_the_first_cluster_count_through_the_rounds(toy, monkeypatch):
    counted: list[int] = []
    import scgraph_core.models.scgnn.model as scgnn_model

    real = scgnn_model.cluster_count

    def spy(*args, **kwargs):
        counted.append(real(*args, **kwargs))
        return counted[-1]

    monkeypatch.setattr(scgnn_model, "cluster_count", spy)
    _, _, result = _train(toy, monkeypatch, max_rounds=2, stop_ari=1.0)  # the default
    rounds = result.tables["scgnn_rounds"]
    assert len(rounds) == 3 and len(counted) == 1  # Leiden ran on the first graph only
    assert rounds["kmeans_k"].nunique() == 1 and set(rounds["leiden_communities"]) == {counted[0]}
    counted.clear()
    _, _, result = _train(toy, monkeypatch, max_rounds=2, stop_ari=1.0, recount="every")
    assert len(counted) == 3  # the code's rule: every round's graph
