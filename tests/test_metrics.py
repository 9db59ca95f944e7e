"""Scores against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scgraph_core.errors import ConfigError
from scgraph_core.metrics import accuracy, clustering_metrics, grid_silhouettes, imputation_errors, silhouette


def test_perfect_labels_score_one_whatever_their_names():
    true = ["T", "T", "B", "B", "NK", "NK"]
    pred = [2, 2, 0, 0, 1, 1]
    m = clustering_metrics(true, pred)
    assert m["ari"] == pytest.approx(1.0)
    assert m["nmi"] == pytest.approx(1.0)
    assert m["n_clusters"] == 3 and m["noise"] == 0 and m["noise_fraction"] == 0.0
    assert m["silhouette"] is None  # no embedding given


def test_ari_by_hand():
    # Contingency [[2, 0], [1, 1]]: sum C(n_ij, 2) = 1, rows C(3,2)+C(1,2) = 3, columns 1+1 = 2, C(4,2) = 6.
    # Expected index 3*2/6 = 1, maximum (3+2)/2 = 2.5, so ARI = (1-1)/(2.5-1) = 0.
    assert clustering_metrics([0, 0, 1, 1], [0, 0, 0, 1])["ari"] == pytest.approx(0.0)


def test_noise_is_one_group_for_ari_and_is_counted():
    m = clustering_metrics(["a", "a", "b", "b", "c"], [0, 0, -1, -1, 1])
    assert m["ari"] == pytest.approx(1.0)  # the two noise cells form the "b" group
    assert m["noise"] == 2 and m["noise_fraction"] == pytest.approx(0.4)
    assert m["n_clusters"] == 2


def test_missing_true_labels_are_left_out():
    true = pd.Categorical(["a", "a", None, "b", "b", np.nan])
    pred = [0, 0, 0, 1, 1, 1]  # wrong only on the two unlabelled cells
    m = clustering_metrics(true, pred)
    assert m["ari"] == pytest.approx(1.0)
    assert m["nmi"] == pytest.approx(1.0)
    assert clustering_metrics([np.nan, None], [0, 1])["ari"] is None
    assert clustering_metrics(None, [0, 1, -1])["ari"] is None


def test_silhouette_by_hand():
    # 1-D points 0, 1 | 10, 11. Cell 0: a=1, b=(10+11)/2 -> 9.5/10.5; cell 1: a=1, b=(9+10)/2 -> 8.5/9.5.
    points = np.array([[0.0], [1.0], [10.0], [11.0]])
    expected = (9.5 / 10.5 + 8.5 / 9.5) / 2
    assert silhouette(points, [0, 0, 1, 1]) == pytest.approx(expected)
    # A noise point far away changes nothing: noise is excluded.
    with_noise = np.vstack([points, [[100.0]]])
    m = clustering_metrics(None, [0, 0, 1, 1, -1], embedding=with_noise)
    assert m["silhouette"] == pytest.approx(expected)


def test_silhouette_is_none_below_two_clusters():
    points = np.random.default_rng(0).normal(size=(20, 2))
    assert silhouette(points, np.zeros(20, dtype=int)) is None
    assert silhouette(points, np.r_[np.zeros(10, dtype=int), -np.ones(10, dtype=int)]) is None
    assert clustering_metrics(np.zeros(20), np.zeros(20, dtype=int), embedding=points)["silhouette"] is None


def test_silhouette_subsample_is_seeded():
    rng = np.random.default_rng(1)
    points = np.vstack([rng.normal(0, 1, (300, 2)), rng.normal(3, 1, (300, 2))])
    labels = np.repeat([0, 1], 300)
    a = silhouette(points, labels, sample=100, seed=3)
    assert a == silhouette(points, labels, sample=100, seed=3)
    assert a != silhouette(points, labels, sample=100, seed=4)
    assert abs(a - silhouette(points, labels, sample=None)) < 0.1


def test_grid_silhouettes_equal_one_silhouette_per_labeling():
    rng = np.random.default_rng(2)
    points = np.vstack([rng.normal(0, 1, (150, 3)), rng.normal(4, 1, (150, 3))]).astype(np.float32)
    rows = rng.integers(-1, 5, size=(6, 300))
    rows[1] = np.repeat([0, 1], 150)  # the true split
    rows[2] = -1  # all noise: undefined
    rows[3] = np.where(rows[3] >= 0, 7, -1)  # one cluster and noise: undefined
    rows[4] = np.arange(300)  # every cell its own cluster: undefined
    rows[5, :3] = [9, 10, 11]  # clusters of one cell score 0, as in scikit-learn
    found = grid_silhouettes(points, rows)
    for row, value in zip(rows, found, strict=True):
        one = silhouette(points, row, sample=None)
        assert (value is None) == (one is None)
        if one is not None:
            assert value == pytest.approx(one, abs=1e-7)
    assert found[1] > 0.5 and found[0] < 0.1
    # Above the sample size each labeling is subsampled exactly as silhouette() does it.
    assert grid_silhouettes(points, rows[:2], sample=100, seed=3) == [
        silhouette(points, row, sample=100, seed=3) for row in rows[:2]
    ]


def test_accuracy_plain_and_matched():
    true = ["a", "a", "b", "b", None]
    assert accuracy(true, ["a", "b", "b", "b", "x"]) == pytest.approx(0.75)
    # Cluster 7 <-> a, cluster 3 <-> b: 3 of 4 labelled cells agree.
    assert accuracy(true, [7, 7, 3, 7, 3], match=True) == pytest.approx(0.75)
    assert accuracy([None, None], [0, 1]) is None


def test_imputation_errors_by_hand():
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    imputed = np.array([1.0, 2.0, 1.0, 5.0])  # errors 0, 0, 2, 1
    e = imputation_errors(truth, imputed)
    assert e["median_l1"] == pytest.approx(0.5)
    assert e["rmse"] == pytest.approx(np.sqrt(5 / 4))
    assert e["cosine"] == pytest.approx(28 / (np.sqrt(30) * np.sqrt(31)))
    assert imputation_errors([1.0, 2.0], [0.0, 0.0])["cosine"] is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: clustering_metrics([0, 1, 2], [0, 1]),
        lambda: clustering_metrics([0, 1], [0, None]),
        lambda: silhouette(np.zeros((3, 2)), [0, 1]),
        lambda: imputation_errors([1.0, 2.0], [1.0]),
        lambda: imputation_errors([], []),
        lambda: imputation_errors([np.nan], [1.0]),
    ],
)
def test_user_errors_are_config_errors(call):
    with pytest.raises(ConfigError):
        call()
