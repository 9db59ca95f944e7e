"""Clustering on small synthetic blobs, plus the scanpy baseline on the real PBMC3k data."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from scgraph_core.cluster import (
    ClusterParams,
    best_with_labels,
    cluster_embedding,
    consensus_scores,
    hdbscan_grid,
    kmeans,
    leiden,
    pair_agreement,
    refine_clusters,
    scanpy_baseline,
    umap_embedding,
)
from scgraph_core.errors import ConfigError
from scgraph_core.metrics import clustering_metrics
from scgraph_core.params import describe, from_dict


@pytest.fixture(scope="module")
def blobs2d() -> tuple[np.ndarray, np.ndarray]:
    """400 points in four 2-D blobs plus 8 far, scattered outliers (true label -1)."""
    points, labels = make_blobs(n_samples=400, centers=4, n_features=2, cluster_std=0.6, random_state=1)
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    outliers = 60 * np.c_[np.cos(angles), np.sin(angles)]
    return np.vstack([points, outliers]), np.r_[labels, -np.ones(8, dtype=int)]


@pytest.fixture(scope="module")
def blobs10d() -> tuple[np.ndarray, np.ndarray]:
    return make_blobs(n_samples=300, centers=3, n_features=10, cluster_std=1.0, random_state=0)


# --- HDBSCAN grid --------------------------------------------------------------------------------------


def test_grid_has_every_run_and_the_choice_obeys_the_rule(blobs2d):
    points, _ = blobs2d
    grid = hdbscan_grid(points)
    assert len(grid.runs) == 16
    assert grid.labels.shape == (16, len(points)) and grid.labels.dtype.kind == "i"
    pairs = [(r["min_cluster_size"], r["min_samples"]) for r in grid.runs]
    assert pairs == [(a, b) for a in (10, 25, 50, 100) for b in (5, 10, 25, 50)]
    for run, labels in zip(grid.runs, grid.labels, strict=True):
        assert run["noise"] == int((labels == -1).sum())
        assert run["n_clusters"] == len(set(labels.tolist()) - {-1})
    eligible = [i for i, r in enumerate(grid.runs) if r["noise_fraction"] <= 0.05 and r["n_clusters"] >= 2]
    assert eligible and grid.chosen in eligible
    assert grid.runs[grid.chosen]["silhouette"] == max(grid.runs[i]["silhouette"] for i in eligible)
    assert "best silhouette" in grid.rule
    assert np.array_equal(grid.chosen_labels, grid.labels[grid.chosen])


def test_grid_runs_equal_plain_hdbscan_runs_and_leave_no_cache(blobs2d, monkeypatch, tmp_path):
    import hdbscan

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # read TMPDIR again
    try:
        points, _ = blobs2d
        grid = hdbscan_grid(points, min_cluster_sizes=(10, 40), min_samples=(5, 20))
    finally:
        tempfile.tempdir = None
    for run, labels in zip(grid.runs, grid.labels, strict=True):
        plain = hdbscan.HDBSCAN(min_cluster_size=run["min_cluster_size"], min_samples=run["min_samples"])
        assert np.array_equal(labels, plain.fit_predict(points))
    assert list(tmp_path.iterdir()) == []  # the shared trees' cache is removed
    # No writable temporary folder: the same labels, each run with its own tree.
    monkeypatch.setattr(
        tempfile, "mkdtemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError("read-only"))
    )
    again = hdbscan_grid(points, min_cluster_sizes=(10, 40), min_samples=(5, 20))
    assert np.array_equal(again.labels, grid.labels)


def test_noise_is_minus_one(blobs2d):
    points, truth = blobs2d
    grid = hdbscan_grid(points, min_cluster_sizes=(10, 25), min_samples=(5, 10))
    for labels in grid.labels:
        clusters = set(labels.tolist()) - {-1}
        assert clusters == set(range(len(clusters)))  # ids 0..C-1, noise only ever -1
    chosen = grid.chosen_labels
    # HDBSCAN may attach an outlier to the cluster whose branch it leaves, but most are noise.
    assert (chosen[truth == -1] == -1).mean() >= 0.6
    assert adjusted_rand_score(truth[truth >= 0], chosen[truth >= 0]) > 0.95


def test_grid_falls_back_to_lowest_noise_and_says_so():
    uniform = np.random.default_rng(0).uniform(size=(300, 2))  # no structure: every run leaves noise
    grid = hdbscan_grid(uniform, max_noise=0.0)
    assert not any(r["eligible"] for r in grid.runs)
    several = [r for r in grid.runs if r["n_clusters"] >= 2]
    assert grid.runs[grid.chosen]["noise_fraction"] == min(r["noise_fraction"] for r in several)
    assert "fell back" in grid.rule


def test_pair_agreement_is_the_adjusted_rand_index():
    rng = np.random.default_rng(0)
    for n, ka, kb in ((50, 2, 3), (500, 8, 5), (3000, 12, 12)):
        a = rng.integers(-1, ka, n)  # -1 (noise) is one more group
        b = np.where(rng.random(n) < 0.7, a, rng.integers(-1, kb, n))
        assert pair_agreement(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    same = rng.integers(0, 4, 100)
    assert pair_agreement(same, same + 7) == pytest.approx(1.0)  # names do not matter
    assert pair_agreement(np.zeros(10, int), np.zeros(10, int)) == 1.0  # both one group
    with pytest.raises(ConfigError, match="one label per cell"):
        pair_agreement(np.zeros(3, int), np.zeros(4, int))


def test_consensus_scores_are_mean_agreement_without_self():
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1, 2], 40)
    runs = [truth.copy() for _ in range(3)]
    runs[1][:10] = 1  # a little disagreement
    runs[2][:30] = 1
    runs.append(rng.integers(0, 6, 120))  # an outlier labeling
    cand = np.stack(runs)
    scores = consensus_scores(cand, runs, self_index=range(4))
    for c in range(4):
        others = [adjusted_rand_score(cand[c], runs[j]) for j in range(4) if j != c]
        assert scores[c] == pytest.approx(np.mean(others), abs=1e-12)
    # The medoid is the middle labeling (close to both the exact and the coarser one); the random one is last.
    assert int(np.argmax(scores)) == 1 and int(np.argmin(scores)) == 3
    # Without self_index every voter counts, the candidate itself included (ARI 1 with itself).
    with_self = consensus_scores(cand[:1], runs)
    assert with_self[0] == pytest.approx((1.0 + 3 * scores[0]) / 4)


def _three_blobs(gap: float, seed: int) -> np.ndarray:
    """Blob A far away; blobs B and C ``gap`` apart, joined by a thin bridge of cells when gap is small."""
    rng = np.random.default_rng(seed)
    a = rng.normal([-30.0, 0.0], 1.0, (150, 2))
    b = rng.normal([0.0, 0.0], 1.0, (150, 2))
    c = rng.normal([gap, 0.0], 1.0, (150, 2))
    bridge = np.c_[np.linspace(0.0, gap, 30), rng.normal(0.0, 0.3, 30)]
    return np.vstack([a, b, c, bridge])


def test_consensus_choice_follows_the_other_layouts():
    """One layout nearly joins B and C (half its grid merges them); two layouts keep them apart.

    The consensus picks, among the first layout's own runs, one that splits B from C, where the
    silhouette on that layout alone prefers the merge. Labels stay one of the first layout's runs.
    """
    truth = np.r_[np.repeat([0, 1, 2], 150), np.where(np.arange(30) < 15, 1, 2)]
    joined = _three_blobs(5.0, 0)
    apart = [_three_blobs(40.0, 1), _three_blobs(40.0, 2)]
    alone = hdbscan_grid(joined, select="silhouette")
    voted = hdbscan_grid(joined, select="consensus", extra_points=apart)
    assert adjusted_rand_score(truth, alone.chosen_labels) < 0.7  # B and C merged
    assert adjusted_rand_score(truth, voted.chosen_labels) > 0.9
    assert voted.n_layouts == 3 and voted.n_voters > len([r for r in voted.runs if r["eligible"]])
    assert any(np.array_equal(voted.chosen_labels, row) for row in voted.labels)
    eligible = [r for r in voted.runs if r["eligible"]]
    assert voted.chosen_run["consensus"] == max(r["consensus"] for r in eligible)
    assert all(r["consensus"] is None for r in voted.runs if not r["eligible"])
    assert "agrees best" in voted.rule


def test_dbcv_choice_and_unknown_rules(blobs2d):
    points, _ = blobs2d
    grid = hdbscan_grid(points, min_cluster_sizes=(10, 25), min_samples=(5, 10), select="dbcv")
    eligible = [r for r in grid.runs if r["eligible"]]
    assert all(r["dbcv"] is not None for r in eligible)
    assert grid.chosen_run["dbcv"] == max(r["dbcv"] for r in eligible) and "DBCV" in grid.rule
    with pytest.raises(ConfigError, match="selection rule"):
        hdbscan_grid(points, select="best-ari")
    with pytest.raises(ConfigError, match="one row per cell"):
        hdbscan_grid(points, select="consensus", extra_points=[points[:10]])


def test_best_with_labels_is_the_best_ari(blobs2d):
    points, truth = blobs2d
    grid = hdbscan_grid(points)
    aris = [clustering_metrics(truth, row)["ari"] for row in grid.labels]
    assert best_with_labels(grid, truth) == int(np.argmax(aris))


def test_grid_rejects_impossible_settings(blobs2d):
    points, _ = blobs2d
    with pytest.raises(ConfigError, match="min_samples"):
        hdbscan_grid(points[:30])
    with pytest.raises(ConfigError, match="at least 2"):
        hdbscan_grid(points, min_cluster_sizes=(1,))
    with pytest.raises(ConfigError, match="NaN"):
        hdbscan_grid(np.full((100, 2), np.nan))


# --- small-cluster post-processing -------------------------------------------------------------------


def test_refine_splits_a_large_cluster_of_two_sub_blobs():
    centres = [(0, 0), (5, 0), (30, 30), (-30, 30)]
    points, truth = make_blobs(
        n_samples=[120, 120, 40, 40], centers=centres, n_features=2, cluster_std=0.5, random_state=0
    )
    merged = np.where(truth == 1, 0, truth)  # the two close sub-blobs as one big cluster
    labels, info = refine_clusters(points, merged, large_fraction=0.25, min_cluster_size=10)
    assert info["checked"] == [0] and len(info["splits"]) == 1
    assert info["splits"][0]["cluster"] == 0 and len(info["splits"][0]["into"]) == 2
    assert adjusted_rand_score(truth, labels) > 0.98
    assert info["noise"] == 0 and (labels >= 0).all()  # splitting adds no noise
    # The small clusters keep their ids; the new one gets the next id after the largest.
    assert set(labels.tolist()) == {0, 2, 3, 4}
    assert (labels[truth == 2] == 2).all() and (labels[truth == 3] == 3).all()
    assert info["splits"][0]["silhouette"] > 0.5


def test_refine_can_refuse_weak_splits(blobs10d):
    points, truth = blobs10d
    coords = umap_embedding(points, seed=0, n_epochs=100)
    # On a UMAP, HDBSCAN finds sub-clusters inside a single Gaussian blob ...
    _, info = refine_clusters(coords, truth, min_cluster_size=10)
    split = [s["cluster"] for s in info["splits"]]
    assert split and info["n_clusters"] > 3
    assert max(s["silhouette"] for s in info["splits"]) < 0.5  # two real sub-blobs score > 0.5 (above)
    # ... which a silhouette threshold rejects.
    labels, info = refine_clusters(coords, truth, min_cluster_size=10, min_silhouette=0.5)
    assert info["splits"] == [] and [r["cluster"] for r in info["rejected"]] == split
    assert np.array_equal(labels, truth)


def test_noise_assignment_leaves_no_noise(blobs10d):
    points, truth = blobs10d
    labels = truth.copy()
    labels[np.random.default_rng(0).choice(len(labels), 30, replace=False)] = -1
    coords = points[:, :2]  # a poor 2-D view; the vote uses the full latent space
    out, info = refine_clusters(coords, labels, large_fraction=1.0, assign_noise=True, latent=points, k=10)
    assert (out != -1).all() and info["noise"] == 0
    assert info["noise_before"] == 30 and info["noise_assigned"] == 30 and info["splits"] == []
    assert adjusted_rand_score(truth, out) == pytest.approx(1.0)
    # Without assignment the noise count is still reported.
    _, info = refine_clusters(coords, labels)
    assert info["noise"] == 30


# --- Leiden, k-means, UMAP -------------------------------------------------------------------------


def test_leiden_finds_blobs_and_is_seeded(blobs10d):
    points, truth = blobs10d
    labels = leiden(points, resolution=0.5, seed=0)
    assert adjusted_rand_score(truth, labels) > 0.9
    assert np.array_equal(labels, leiden(points, resolution=0.5, seed=0))


def test_leiden_on_a_graph(blobs10d):
    import igraph
    from sklearn.neighbors import kneighbors_graph

    points, truth = blobs10d
    adjacency = kneighbors_graph(points, 10, mode="connectivity")
    assert adjusted_rand_score(truth, leiden(adjacency, resolution=0.5)) > 0.9
    coo = sp.triu(adjacency + adjacency.T).tocoo()
    g = igraph.Graph(n=len(points), edges=list(zip(coo.row.tolist(), coo.col.tolist(), strict=True)))
    assert adjusted_rand_score(truth, leiden(g, resolution=0.5)) > 0.9


def test_leiden_on_5000_cells():
    points, truth = make_blobs(n_samples=5000, centers=5, n_features=10, cluster_std=1.0, random_state=0)
    assert adjusted_rand_score(truth, leiden(points, resolution=0.5)) > 0.9


def test_kmeans_finds_blobs_and_is_seeded(blobs10d):
    points, truth = blobs10d
    labels = kmeans(points, 3, seed=1)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
    assert np.array_equal(labels, kmeans(points, 3, seed=1))
    with pytest.raises(ConfigError):
        kmeans(points, 0)


def test_umap_is_seeded_and_float32(blobs10d):
    points, _ = blobs10d
    a = umap_embedding(points, seed=0, n_epochs=100)
    assert a.shape == (len(points), 2) and a.dtype == np.float32
    assert np.array_equal(a, umap_embedding(points, seed=0, n_epochs=100))
    with pytest.raises(ConfigError, match="metric"):
        umap_embedding(points, metric="no-such-metric")


def test_umap_is_seeded_when_the_graph_falls_apart():
    # Five far-apart blobs: umap-learn places the pieces by a spectral embedding of their centroids,
    # which differs from call to call here even when seeded; init="auto" switches to PCA.
    points, _ = make_blobs(n_samples=300, centers=5, n_features=10, center_box=(-100, 100), random_state=2)
    a = umap_embedding(points, seed=0, n_epochs=50)
    assert np.array_equal(a, umap_embedding(points, seed=0, n_epochs=50))


def test_umap_starts_from_pca_above_the_spectral_limit(blobs10d, monkeypatch):
    """Large inputs skip the spectral start (its eigenproblem stalled at 1,000,000 cells): "auto" is "pca"."""
    from scgraph_core.cluster import layout

    points, _ = blobs10d
    spectral = umap_embedding(points, seed=0, n_epochs=30, init="spectral")
    pca = umap_embedding(points, seed=0, n_epochs=30, init="pca")
    assert not np.allclose(spectral, pca)
    assert np.array_equal(umap_embedding(points, seed=0, n_epochs=30), spectral)  # below the limit
    monkeypatch.setattr(layout, "SPECTRAL_MAX_CELLS", len(points) - 1)
    assert np.array_equal(umap_embedding(points, seed=0, n_epochs=30), pca)


def test_drawn_layout_of_a_sample_places_the_other_cells_in_their_clouds():
    """Above ``sample`` cells the 2-D layout is one of a random sample; the others sit among their neighbours."""
    from scgraph_core.cluster import drawn_layout, extend
    from scgraph_core.errors import ConfigError

    points, truth = make_blobs(n_samples=2000, centers=5, n_features=10, cluster_std=1.5, random_state=3)
    whole, info = drawn_layout(points, sample=None, seed=0, n_epochs=40)
    assert info is None and np.array_equal(whole, umap_embedding(points, seed=0, n_epochs=40))
    assert drawn_layout(points, sample=2000, seed=0, n_epochs=40)[1] is None  # not above the sample size
    xy, info = drawn_layout(points, sample=600, seed=0, n_epochs=40)
    assert xy.shape == (2000, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    assert info == {"cells": 600, "of": 2000, "k": 10}
    sampled = extend.sample_rows(2000, 600, 0)
    assert np.array_equal(xy[sampled], umap_embedding(points[sampled], seed=0, n_epochs=40))
    rest = np.setdiff1d(np.arange(2000), sampled)
    # Each placed cell's nearest laid-out cell in the picture is of its own blob.
    d = ((xy[rest, None, :] - xy[None, sampled, :]) ** 2).sum(-1)
    assert (truth[sampled][d.argmin(1)] == truth[rest]).mean() > 0.98
    assert np.array_equal(xy, drawn_layout(points, sample=600, seed=0, n_epochs=40)[0])  # seeded
    with pytest.raises(ConfigError, match="sample"):
        drawn_layout(points, sample=10, seed=0)


# --- the dispatcher ----------------------------------------------------------------------------------


def test_cluster_embedding_hdbscan_on_umap(blobs10d):
    points, truth = blobs10d
    # The default: a 10-D UMAP with min_dist 0, the run with the best silhouette on it (one layout).
    result = cluster_embedding(points, seed=0, umap_n_epochs=100)
    assert result.method == "hdbscan" and result.coords.shape == (len(points), 10)
    assert len(result.info["runs"]) == 16 and result.info["select"] == "silhouette"
    assert "10-D UMAP" in result.info["rule"] and "silhouette" in result.info["rule"]
    eligible = [r for r in result.info["runs"] if r["eligible"]]
    assert result.grid.chosen_run["silhouette"] == max(r["silhouette"] for r in eligible)
    assert result.grid.n_layouts == 1 and result.grid.labels.shape == (16, len(points))
    # The consensus over 3 seeded layouts, on request.
    voted = cluster_embedding(points, seed=0, umap_n_epochs=100, hdbscan_select="consensus")
    assert "3 UMAP layouts (seeds 0-2)" in voted.info["rule"] and voted.grid.n_layouts == 3
    assert adjusted_rand_score(truth, voted.labels) > 0.9
    assert result.params["seed"] == 0
    assert adjusted_rand_score(truth, result.labels) > 0.9
    # The clustered layout's epochs can differ from the drawing's (cluster_umap_n_epochs).
    shorter = cluster_embedding(points, seed=0, umap_n_epochs=100, cluster_umap_n_epochs=30)
    direct = umap_embedding(points, n_components=10, min_dist=0.0, n_epochs=30, seed=0)
    assert np.allclose(shorter.coords, direct) and not np.allclose(shorter.coords, result.coords)
    assert shorter.params["cluster_umap_n_epochs"] == 30
    # The paper's recipe: the 2-D UMAP, best silhouette.
    paper = cluster_embedding(
        points,
        seed=0,
        umap_n_epochs=100,
        cluster_umap_dims=2,
        cluster_umap_min_dist=0.1,
        hdbscan_select="silhouette",
    )
    assert paper.coords.shape == (len(points), 2) and "best silhouette" in paper.info["rule"]
    assert paper.grid.n_layouts == 1 and adjusted_rand_score(truth, paper.labels) > 0.9
    # Given coordinates are reused (no new UMAP); post-processing is recorded in info.
    refined = cluster_embedding(points, umap_coords=result.coords, refine=True, assign_noise=True)
    assert refined.params["refine"] is True and refined.info["refine"]["checked"] == [0, 1, 2]
    assert refined.info["noise"] == 0 and (refined.labels >= 0).all()


def test_cluster_embedding_other_methods(blobs10d):
    points, truth = blobs10d
    assert adjusted_rand_score(truth, cluster_embedding(points, method="leiden", resolution=0.5).labels) > 0.9
    km = cluster_embedding(points, method="kmeans", k=3)
    assert km.info["n_clusters"] == 3 and km.info["noise"] == 0
    grid = cluster_embedding(points, space="embedding", min_cluster_sizes=[10, 25], min_samples="5,10")
    assert len(grid.info["runs"]) == 4 and grid.coords is None
    # A validated schema (as a run's config holds it) can be passed as is.
    params = from_dict(ClusterParams, {"method": "kmeans", "k": 3})
    assert np.array_equal(cluster_embedding(points, params=params).labels, km.labels)
    with pytest.raises(ConfigError, match="either"):
        cluster_embedding(points, params=params, k=4)


@pytest.mark.parametrize(
    "options",
    [{"method": "kmeans"}, {"method": "spectral"}, {"no_such_option": 1}, {"max_noise": 2.0}],
)
def test_cluster_embedding_rejects_bad_options(blobs10d, options):
    with pytest.raises(ConfigError):
        cluster_embedding(blobs10d[0], **options)


def test_cluster_params_schema_describes_every_option():
    names = [p.name for p in describe(ClusterParams)]
    assert names[0] == "method" and "min_cluster_sizes" in names and "umap_n_epochs" in names


# --- the scanpy baseline -------------------------------------------------------------------------------


def test_scanpy_baseline_normalises_counts():
    rng = np.random.default_rng(0)
    rates = rng.gamma(1.0, 2.0, size=(3, 60))
    truth = np.repeat([0, 1, 2], 100)
    counts = rng.poisson(rates[truth] * rng.uniform(0.5, 2.0, size=(300, 1)))  # varying depth per cell
    labels = scanpy_baseline(sp.csr_matrix(counts), resolution=0.3, n_pcs=10)
    assert adjusted_rand_score(truth, labels) > 0.9


def test_scanpy_baseline_on_pbmc3k(pbmc3k_path):
    import anndata as ad

    adata = ad.read_h5ad(pbmc3k_path)
    before = adata.X.copy()
    labels = scanpy_baseline(adata, resolution=0.5, seed=0)
    ari = clustering_metrics(adata.obs["celltype"], labels)["ari"]
    print(f"scanpy baseline ARI on pbmc3k: {ari:.4f}")  # 0.874 (MODELS.md 1.8 quotes 0.871)
    assert ari > 0.8
    assert (before != adata.X).nnz == 0  # the user's data is untouched


def test_hdbscan_grid_sizes_grow_with_the_number_of_cells_above_the_reference():
    from scgraph_core.cluster import ClusterParams, scaled_grid

    p = ClusterParams()
    assert scaled_grid(p, 5_685) == (p.min_cluster_sizes, p.min_samples, "")  # the suite's sets: unchanged
    sizes, samples, phrase = scaled_grid(p, 100_000)
    assert sizes == tuple(10 * v for v in p.min_cluster_sizes) and samples == tuple(
        10 * v for v in p.min_samples
    )
    assert "x10.0" in phrase and "100,000 cells" in phrase
    never = ClusterParams(grid_reference_cells=None)
    assert scaled_grid(never, 1_000_000)[0] == p.min_cluster_sizes
    # The chosen rule names the scaled grid.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.2, size=(150, 2)) for c in (0, 5, 10)])
    found = cluster_embedding(
        X, space="embedding", min_cluster_sizes=(5, 10), min_samples=(3,), grid_reference_cells=100, seed=0
    )
    assert "sizes x4.5" in found.info["rule"] and found.info["n_clusters"] == 3


def test_majority_vote_ties_go_to_the_nearest_and_noise_can_win():
    from scgraph_core.cluster.extend import majority

    votes = np.array(
        [
            [2, 1, 1, 2],  # 2 and 1 tie: the nearest (first) vote is 2
            [1, 2, 2, 1],  # ... and here 1
            [-1, -1, 3, 0],  # noise holds the most votes
            [4, 0, 0, 5],  # a clear majority
        ]
    )
    assert majority(votes).tolist() == [2, 1, -1, 0]
    # Blocks of rows give the same answer as one pass (the vote is row by row).
    rng = np.random.default_rng(0)
    many = rng.integers(-1, 6, size=(20_000, 15))
    once = majority(many)
    assert once.shape == (20_000,)
    counts = [(row == once[i]).sum() for i, row in enumerate(many[:200])]
    assert all(c == np.bincount(row + 1).max() for c, row in zip(counts, many[:200], strict=True))


@pytest.mark.parametrize("space", ["embedding", "umap"])
def test_a_large_embedding_is_clustered_on_a_sample_and_every_cell_gets_a_label(space):
    points, truth = make_blobs(n_samples=3000, centers=4, n_features=8, cluster_std=1.0, random_state=3)
    options = dict(
        space=space,
        cluster_umap_dims=2,
        umap_repeats=2,
        min_cluster_sizes=(15, 40),
        min_samples=(5, 10),
        umap_n_epochs=100,
    )
    found = cluster_embedding(points, seed=0, cluster_sample=1000, **options)
    assert found.labels.shape == (3000,) and found.info["sample"] == {"cells": 1000, "of": 3000, "k": 15}
    assert "random sample of 1,000 of the 3,000 cells" in found.info["rule"]
    assert found.grid.labels.shape == (4, 3000)  # every grid run covers every cell
    assert np.array_equal(found.grid.chosen_labels, found.labels)
    assert adjusted_rand_score(truth, found.labels) > 0.95
    whole = cluster_embedding(points, seed=0, cluster_sample=None, **options)
    assert "sample" not in whole.info and adjusted_rand_score(whole.labels, found.labels) > 0.95
    if space == "umap":
        assert found.coords.shape == (3000, 2) and np.isfinite(found.coords).all()
    else:
        assert found.coords is None
    # At or below the threshold nothing is sampled.
    small = cluster_embedding(points[:900], seed=0, cluster_sample=1000, **options)
    assert "sample" not in small.info


def test_one_neighbour_search_serves_the_umap_and_leiden_on_large_data(monkeypatch):
    from sklearn.neighbors import NearestNeighbors

    from scgraph_core.cluster import layout, leiden, shared_neighbours, umap_embedding

    points, truth = make_blobs(n_samples=900, centers=4, n_features=8, cluster_std=1.0, random_state=5)
    points = points.astype(np.float32)
    assert shared_neighbours(points, 15) is None  # small data: each step searches exactly on its own
    monkeypatch.setattr(layout, "EXACT_KNN_MAX_CELLS", 500)  # as if 900 cells were many
    idx, dist = shared_neighbours(points, 15, seed=0)
    assert idx.shape == dist.shape == (900, 15)
    assert (idx[:, 0] == np.arange(900)).all() and (dist[:, 0] == 0).all()
    assert (np.diff(dist, axis=1) >= -1e-5).all()  # nearest first
    exact = NearestNeighbors(n_neighbors=15).fit(points).kneighbors(points, return_distance=False)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(idx, exact, strict=True)])
    assert recall > 0.95
    xy = umap_embedding(points, n_neighbors=15, n_epochs=50, seed=0, knn=(idx, dist))
    assert xy.shape == (900, 2) and np.isfinite(xy).all()
    shared = leiden(points, resolution=0.5, n_neighbors=15, seed=0, knn=(idx, dist))
    own = leiden(points, resolution=0.5, n_neighbors=15, seed=0)
    assert adjusted_rand_score(own, shared) > 0.95 and adjusted_rand_score(truth, shared) > 0.9
    with pytest.raises(ConfigError, match="do not fit"):
        umap_embedding(points[:800], n_neighbors=15, knn=(idx, dist))
