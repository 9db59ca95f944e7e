"""Reading results through the views manifest: attention maps, edge filters, gene weights, and the
comparison with scanpy markers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scgraph_core import interpret


def _result_with_attention(per_head: bool) -> ad.AnnData:
    n = 4
    ei = np.array([[0, 1, 2, 3, 1, 0], [1, 0, 3, 2, 1, 0]])  # last two: self loops
    alpha = np.array([[0.9, 0.5], [0.8, 0.2], [0.1, 0.3], [0.4, 0.4], [0.2, 0.5], [0.1, 0.5]])
    adata = ad.AnnData(np.zeros((n, 3), dtype=np.float32))
    mean, std = alpha.mean(1), alpha.std(1)
    adata.obsp["m_att"] = sp.csr_matrix((mean, (ei[1], ei[0])), shape=(n, n))
    adata.obsp["m_att_std"] = sp.csr_matrix((std, (ei[1], ei[0])), shape=(n, n))
    adata.uns["m"] = {"attention": {"l1": {"edge_index": ei, "alpha": alpha}}} if per_head else {}
    adata.uns["scgraph"] = {
        "views": {
            "model": "m",
            "embedding": "X_m",
            "attention": {"l1": {"obsp": "m_att", "obsp_std": "m_att_std", "heads": 2, "kind": "graph"}},
            "attention_layers": np.array(["l1"]),
        }
    }
    return adata


@pytest.mark.parametrize("per_head", [True, False])
def test_attention_map_from_heads_or_from_obsp(per_head):
    adata = _result_with_attention(per_head)
    views = interpret.result_views(adata)
    assert views["attention_layers"] == ["l1"]  # arrays from h5ad become lists
    amap = interpret.attention_map(adata, "l1")
    assert amap.per_head is per_head and amap.heads == 2
    order = np.lexsort(amap.edge_index[::-1])
    mean = amap.weights("mean")[order]
    np.testing.assert_allclose(mean, [0.3, 0.7, 0.5, 0.35, 0.2, 0.4])  # sorted by (source, target)
    std = amap.weights("std")[order]
    np.testing.assert_allclose(std[:2], [0.2, 0.2])
    if per_head:
        np.testing.assert_allclose(amap.weights(1)[order][:2], [0.5, 0.5])
        with pytest.raises(ValueError, match="head 2 does not exist"):
            amap.weights(2)
    with pytest.raises(KeyError, match="maps: l1"):
        interpret.attention_map(adata, "nope")
    # Graph attention stores every edge: a cell's keys are its incoming edges (cell 1: from 0 and itself).
    np.testing.assert_array_equal(amap.keys, [2, 2, 1, 1])
    np.testing.assert_allclose(amap.relative("mean"), amap.weights("mean") * amap.keys[amap.edge_index[1]])


def test_fusion_keys_known_only_for_dense_maps_or_when_stored():
    adata = _result_with_attention(per_head=False)
    entry = adata.uns["scgraph"]["views"]["attention"]["l1"]
    entry["kind"] = "fusion"
    amap = interpret.attention_map(adata, "l1")
    assert amap.keys is None  # top pairs only, scope unknown: the even split is unknown
    with pytest.raises(ValueError, match="how many keys"):
        amap.relative()
    entry["scope"] = "all cells"
    np.testing.assert_array_equal(interpret.attention_map(adata, "l1").keys, [4, 4, 4, 4])


def test_attention_hubs_count_other_cells_pointing_to_a_key():
    # Cells 1..5 each keep 2 pairs; all of them point to cell 0, and each also to a different cell.
    query = np.repeat(np.arange(1, 6), 2)
    key = np.array([0, 6, 0, 7, 0, 8, 0, 9, 0, 10])
    ei = np.vstack([np.r_[key, 3], np.r_[query, 3]])  # plus a self pair, which does not count
    labels = np.array(["hub"] + ["x"] * 10)
    table, half, targets = interpret.attention_hubs(ei, 11, labels=labels, top=3)
    assert table["cell"].iloc[0] == 0 and table["listeners"].iloc[0] == 5 and table["label"].iloc[0] == "hub"
    assert table["share"].iloc[0] == pytest.approx(0.5)
    assert half == 1 and targets == 6 and len(table) == 3
    even = interpret.attention_hubs(np.vstack([np.arange(10), (np.arange(10) + 1) % 10]), 10)
    assert even[1] == 5 and even[2] == 10


def test_attention_edges_filters():
    ei = np.array([[0, 1, 2, 3, 1], [1, 0, 3, 2, 1]])
    w = np.array([0.9, 0.8, 0.1, 0.4, 0.99])
    labels = ["T", "T", "B", "NK"]
    out = interpret.attention_edges(ei, w)
    assert list(out["weight"]) == [0.9, 0.8, 0.4, 0.1]  # self loop dropped, strongest first
    assert len(interpret.attention_edges(ei, w, drop_self_loops=False, top_n=1)) == 1
    both = interpret.attention_edges(ei, w, labels=labels, include=["T"])
    assert set(both["source_label"]) == set(both["target_label"]) == {"T"}
    either = interpret.attention_edges(ei, w, labels=labels, include=["B"], match="either")
    assert len(either) == 2
    assert interpret.attention_edges(ei, w, labels=labels, exclude=["NK"])["weight"].tolist() == [0.9, 0.8]
    assert interpret.attention_edges(ei, w, weight_range=(0.3, 0.85))["weight"].tolist() == [0.8, 0.4]
    # A selection of cells: the edges among them, or touching them with match="either".
    among = interpret.attention_edges(ei, w, cells=[0, 1, 3])
    assert among["weight"].tolist() == [0.9, 0.8]
    touching = interpret.attention_edges(ei, w, cells=[3], match="either")
    assert touching["weight"].tolist() == [0.4, 0.1]
    assert interpret.attention_edges(ei, w, cells=[]).empty
    with pytest.raises(ValueError, match="weights for"):
        interpret.attention_edges(ei, w[:2])


def test_gene_weights_leave_out_non_feature_genes():
    adata = ad.AnnData(np.zeros((2, 3), dtype=np.float32))
    adata.var_names = ["a", "b", "c"]
    adata.varm["P_mu"] = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]])
    adata.uns["scgraph"] = {"views": {"model": "m", "embedding": "X", "gene_weights": {"P_mu": "P_mu"}}}
    weights, genes = interpret.gene_weight_matrix(adata, "P_mu")
    assert genes == ["a", "c"] and weights.shape == (2, 2)
    assert interpret.gene_weight_matrix(adata, "P_sigma") is None


def test_dimension_appearances_counts_dimensions():
    per_dim = pd.DataFrame(
        {
            "dimension": [0, 0, 1, 1],
            "rank": [1, 2, 1, 2],
            "gene": ["A", "B", "A", "C"],
            "weight": [0.5, 0.4, 0.3, 0.2],
        }
    )
    out = interpret.dimension_appearances(per_dim)
    assert out.iloc[0].to_dict() == {"gene": "A", "appearances": 2, "dimensions": "0,1", "mean_weight": 0.4}


def test_rank_genes_and_overlap_find_planted_markers():
    rng = np.random.default_rng(0)
    n, g = 120, 30
    X = rng.poisson(1.0, size=(n, g)).astype(np.float32)
    groups = np.repeat(["0", "1", "2"], n // 3)
    for k in range(3):  # genes 3k, 3k+1, 3k+2 mark group k
        X[groups == str(k), 3 * k : 3 * k + 3] += 8
    X = np.log1p(X)
    adata = ad.AnnData(X, obs=pd.DataFrame({"cl": groups}, index=[f"c{i}" for i in range(n)]))
    adata.var_names = [f"g{j}" for j in range(g)]
    adata.obs.loc[adata.obs_names[:2], "cl"] = "noise"
    ref = interpret.rank_genes_markers(adata, "cl", n_genes=3, method="t-test")
    assert set(ref["cluster"]) == {"0", "1", "2"}  # noise left out
    assert set(ref[ref["cluster"] == "1"]["gene"]) == {"g3", "g4", "g5"}
    model = pd.DataFrame({"cluster": [0, 0, 1, 2], "gene": ["g0", "g9", "g3", "g20"]})
    overlap = interpret.marker_overlap(model, ref, n_top=3).set_index("cluster")
    assert overlap.loc["0", "shared"] == 1 and overlap.loc["0", "shared_genes"] == "g0"
    assert overlap.loc["0", "jaccard"] == pytest.approx(1 / 4)
    assert overlap.loc["2", "shared"] == 0
    restricted = interpret.rank_genes_markers(
        adata, "cl", n_genes=3, method="t-test", genes=["g0", "g1", "g3"]
    )
    assert set(restricted["gene"]) <= {"g0", "g1", "g3"}
