"""scBiGNN (MODELS.md 2): masks and padding, shapes, the E/M steps on a tiny set, the label-leak test, the
command-line contract and the messages for labels a model cannot learn from."""

from __future__ import annotations

import json
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scgraph_core import pipeline
from scgraph_core.__main__ import flag_of, main
from scgraph_core.errors import ConfigError, DataError
from scgraph_core.labels import LabelSpec
from scgraph_core.models.scbignn import CellNet, GeneNet, GeneSequences, ScBiGNN
from scgraph_core.models.scbignn.model import row_normalised
from scgraph_core.train import Trainer
from tests.helpers import toy_counts

SMOKE = ScBiGNN.smoke


def _config(labels: LabelSpec | None, **model):
    overrides = {**SMOKE, "model": {**SMOKE["model"], **model}}
    return pipeline.resolve_config("scbignn", "quick", overrides, labels=labels)


def _train(adata, labels, **model) -> ScBiGNN:
    config = _config(labels, **model)
    net = ScBiGNN()
    prepared = net.preprocess(adata, config.prepare)
    net.train(prepared, None, config.params, Trainer(config.train), labels=labels)
    return net


# --- the gene-level network ---------------------------------------------------------------------------
def _net(**kw) -> GeneNet:
    torch.manual_seed(0)
    return GeneNet(10, 3, width=8, layers=2, heads=2, **kw).eval()


@pytest.mark.parametrize("readout", ["weights", "mean"])
def test_a_padded_token_changes_nothing(readout):
    net = _net(readout=readout)
    genes = torch.tensor([[1, 4, 7]])
    values = torch.tensor([[0.5, 2.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    logits, h = net(genes, values, mask)
    # The same cell with two padding slots holding arbitrary genes and values, masked out.
    padded = net(
        torch.tensor([[1, 4, 7, 2, 9]]),
        torch.tensor([[0.5, 2.0, 1.0, 5.0, -3.0]]),
        torch.tensor([[True, True, True, False, False]]),
    )
    torch.testing.assert_close(padded[0], logits)
    torch.testing.assert_close(padded[1], h)


def test_a_cell_is_the_same_alone_or_batched_with_a_longer_one():
    net = _net()
    seqs = GeneSequences(
        sp.csr_matrix(np.array([[0, 1.0, 0, 2.0, 0, 0], [3.0, 1.0, 2.0, 2.0, 1.0, 4.0]])), 10
    )
    alone = net(*seqs.batch(np.array([0])))
    together = net(*seqs.batch(np.array([0, 1])))
    torch.testing.assert_close(together[0][:1], alone[0])
    torch.testing.assert_close(together[1][:1], alone[1])


def test_widths_rounded_up_to_a_multiple_change_no_output():
    rng = np.random.default_rng(1)
    seqs = GeneSequences(sp.csr_matrix(rng.poisson(0.6, size=(9, 10)).astype(np.float32)), 10)
    cells = np.arange(9)
    exact, rounded = seqs.batch(cells), seqs.batch(cells, pad_to=16)
    assert rounded[0].shape == (9, 16) and exact[0].shape[1] < 16
    assert (rounded[2][:, : exact[2].shape[1]] == exact[2]).all() and not rounded[2][
        :, exact[2].shape[1] :
    ].any()
    net = _net()
    for a, b in zip(net(*exact), net(*rounded), strict=True):
        torch.testing.assert_close(b, a)


def test_groups_of_similar_length_give_the_padded_batchs_outputs_and_gradients():
    from scgraph_core.models.scbignn.model import forward_by_length

    rng = np.random.default_rng(0)
    dense = rng.poisson(0.4, size=(23, 10)).astype(np.float32)
    dense[:3] = rng.poisson(3.0, size=(3, 10))  # a few long cells among short ones
    dense[5] = 0  # and an empty one
    seqs = GeneSequences(sp.csr_matrix(dense), 10)
    cells = rng.permutation(23)[:19]
    groups = seqs.by_length(cells, 4)
    assert sorted(np.concatenate([g for _, g in groups]).tolist()) == sorted(cells.tolist())
    assert all(len(g) <= 4 for _, g in groups) and len(groups) == 5
    widths = [int(seqs.lengths[g].max()) for _, g in groups]
    assert (
        widths == sorted(widths) and widths[0] < widths[-1]
    )  # short cells are no longer padded to the longest

    net = _net()
    target = torch.from_numpy(rng.integers(0, 3, cells.size))
    logits, h = net(*seqs.batch(cells))
    torch.nn.functional.cross_entropy(logits, target).backward()
    padded_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    grouped, grouped_h = forward_by_length(net, seqs, cells, 4, torch.device("cpu"))
    torch.testing.assert_close(grouped, logits)
    torch.testing.assert_close(grouped_h, h)
    torch.nn.functional.cross_entropy(grouped, target).backward()
    for a, b in zip(padded_grads, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(b, a)


def test_attention_rows_sum_to_one_over_the_real_genes_only():
    net = _net()
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    genes = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    values = torch.rand(2, 4)
    with torch.no_grad():
        maps = net.attention(genes, values, mask)
    for att in maps:
        assert att.shape == (2, 2, 4, 4)
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 2, 4))
        assert float(att[0, :, :, 3].abs().max()) == 0.0 and float(att[1, :, :, 2:].abs().max()) == 0.0


def test_residual_layers_add_their_input_to_the_papers_output():
    from scgraph_core.models.scbignn.module import GeneAttentionLayer

    torch.manual_seed(0)
    plain = GeneAttentionLayer(8, 2)
    residual = GeneAttentionLayer(8, 2, residual=True)
    residual.load_state_dict(plain.state_dict())
    tokens, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        torch.testing.assert_close(residual(tokens, mask), tokens + plain(tokens, mask))


def test_gene_sequences_pad_truncate_and_give_an_empty_cell_one_token():
    m = sp.csr_matrix(np.array([[0, 5.0, 1.0, 3.0], [0, 0, 0, 0], [2.0, 0, 0, 0]], dtype=np.float32))
    seqs = GeneSequences(m, max_tokens=2)
    genes, values, mask = seqs.batch(np.array([0, 1, 2]))
    assert genes.shape == values.shape == mask.shape == (3, 2)
    assert genes[0].tolist() == [1, 3] and values[0].tolist() == [5.0, 3.0]  # the highest two kept
    assert seqs.truncated == 1
    assert genes[1].tolist() == [4, 4] and mask[1].tolist() == [True, False]  # the "no gene" token, T = 4
    assert genes[2, 0] == 0 and mask[2].tolist() == [True, False]


def test_a_long_cell_keeps_its_markers_over_genes_every_cell_expresses():
    # Genes 0 and 1 are high in every cell (housekeeping); gene 2 is a marker of cell 0 only, at a lower value.
    dense = np.array([[6.0, 5.0, 2.0, 0.0], [6.0, 5.0, 0.0, 1.0], [6.2, 4.8, 0.0, 0.0], [5.8, 5.2, 0.0, 0.0]])
    m = sp.csr_matrix(dense.astype(np.float32))
    highest = GeneSequences(m, max_tokens=2, keep="highest").batch(np.array([0]))[0]
    distinctive = GeneSequences(m, max_tokens=2, keep="distinctive").batch(np.array([0]))[0]
    assert highest[0].tolist() == [0, 1]  # the marker is lost
    assert 2 in distinctive[0].tolist()  # the marker is kept, in gene order with the other survivor
    assert distinctive[0].tolist() == sorted(distinctive[0].tolist())
    # A cell within the limit is read whole either way.
    assert GeneSequences(m, max_tokens=3, keep="distinctive").batch(np.array([0]))[0][0].tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="keep must be"):
        GeneSequences(m, max_tokens=2, keep="random")


def test_forward_shapes_of_both_networks():
    q = GeneNet(20, 4)
    logits, h = q(torch.randint(0, 20, (5, 7)), torch.rand(5, 7), torch.ones(5, 7, dtype=torch.bool))
    assert logits.shape == (5, 4) and h.shape == (5, 32)
    p = CellNet(20, 32, 4)
    edges = np.array([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])
    adj, adj_t = row_normalised(edges, 5, torch.device("cpu"))
    logits, jk = p(h.detach(), torch.rand(5, 20), adj, adj_t)
    assert logits.shape == (5, 4) and jk.shape == (5, 160)  # 64 + 3 x 32, MODELS.md 2.3


def test_propagation_is_row_normalised_without_self_loops():
    edges = np.array([[0, 1, 2, 2, 0], [1, 0, 0, 1, 0]])  # (0, 0) is a self loop, dropped
    adj, _ = row_normalised(edges, 3, torch.device("cpu"))
    dense = adj.to_dense()
    torch.testing.assert_close(dense.sum(1), torch.tensor([1.0, 1.0, 0.0]))
    assert float(dense[0, 0]) == 0.0 and float(dense[0, 1]) == 0.5 and float(dense[0, 2]) == 0.5


# --- training -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedSplit(LabelSpec):
    """A LabelSpec whose train / held-out cells are fixed, whatever the labels say (for the leak test)."""

    train_cells: tuple = ()
    held_cells: tuple = ()

    def split(self, obs):
        n = len(obs)
        train, held = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        train[list(self.train_cells)], held[list(self.held_cells)] = True, True
        return train, held


def test_held_out_and_unlabelled_labels_never_reach_a_loss():
    """Same seed, garbage in every label the model must not learn from: bit-identical weights."""
    adata = toy_counts(n_cells=150, n_genes=60)
    adata.obs["celltype"] = adata.obs["celltype"].astype(object)
    adata.obs.loc[adata.obs_names[:20], "celltype"] = np.nan  # unlabelled
    spec = LabelSpec(key="celltype", holdout_fraction=0.25, seed=3)
    train, held = spec.split(adata.obs)
    assert held.sum() > 0 and (~train & ~held).sum() == 20
    fixed = FixedSplit(
        key="celltype", train_cells=tuple(np.flatnonzero(train)), held_cells=tuple(np.flatnonzero(held))
    )
    first = _train(adata.copy(), fixed)
    garbage = adata.copy()
    hidden = ~train
    garbage.obs.loc[hidden, "celltype"] = [f"garbage{i}" for i in range(int(hidden.sum()))]
    second = _train(garbage, fixed)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    np.testing.assert_array_equal(first._p_probs, second._p_probs)
    # The held-out labels did score: the first run's are real, the second's are garbage.
    assert first._rounds[-1]["p_accuracy"] > 0.5 and second._rounds[-1]["p_accuracy"] == 0.0


def test_em_on_well_separated_types_beats_chance_and_records_each_round():
    adata = toy_counts(n_cells=240, n_genes=60, seed=1)
    labels = LabelSpec(key="celltype", holdout_fraction=0.3, seed=0)
    net = _train(adata, labels, pretrain_epochs=30, estep_epochs=5, lr=1e-2, em_rounds=2)
    rounds = net._rounds
    assert [r["round"] for r in rounds] == [0, 1, 2]
    last = rounds[-1]
    assert last["p_accuracy"] > 0.8 and last["q_accuracy"] > 0.6, rounds  # chance is 1/3
    assert {"mstep_epochs_run", "homophily_h"} <= set(last)
    stages = set(net.history()["stage"])
    assert {"pretrain", "m_step_1", "e_step_1", "m_step_2", "e_step_2"} <= stages


def test_patience_stops_q_phi_once_its_validation_accuracy_stops_rising():
    adata = toy_counts(n_cells=240, n_genes=60, seed=1)
    labels = LabelSpec(key="celltype", holdout_fraction=0.3, seed=0)
    common = {"pretrain_epochs": 100, "estep_epochs": 40, "lr": 1e-2, "em_rounds": 1, "val_fraction": 0.2}
    fixed = _train(adata.copy(), labels, **common)
    early = _train(adata.copy(), labels, **common, pretrain_patience=10, estep_patience=10)
    steps = (
        {name: (fixed.history()["stage"] == name).sum() for name in ("pretrain", "e_step_1")},
        {name: (early.history()["stage"] == name).sum() for name in ("pretrain", "e_step_1")},
    )
    # Without patience every step runs (100 and 40 epochs of mini-batches); with it, separable types reach
    # their best validation accuracy long before.
    assert steps[0]["pretrain"] % 100 == 0 and steps[0]["e_step_1"] % 40 == 0, steps
    assert steps[1]["pretrain"] < steps[0]["pretrain"] / 2 and steps[1]["e_step_1"] < steps[0]["e_step_1"], (
        steps
    )
    assert early._pretrain_steps == steps[1]["pretrain"]
    assert early._rounds[-1]["q_accuracy"] > 0.8 and early._rounds[-1]["p_accuracy"] > 0.8


def test_messages_for_labels_a_classifier_cannot_learn_from():
    adata = toy_counts(n_cells=60, n_genes=30)
    with pytest.raises(ConfigError, match="label column"):
        pipeline.execute(adata.copy(), _config(None))
    with pytest.raises(DataError, match="'nope' is not in the data"):
        pipeline.execute(adata.copy(), _config(LabelSpec(key="nope")))
    single = adata.copy()
    single.obs["celltype"] = "T cell"
    with pytest.raises(ConfigError, match="at least two"):
        pipeline.execute(single, _config(LabelSpec(key="celltype")))
    empty = adata.copy()
    empty.obs["celltype"] = "?"
    with pytest.raises(DataError, match="No cell has a usable label"):
        pipeline.execute(empty, _config(LabelSpec(key="celltype", unlabelled="?")))


def test_rare_types_and_an_all_labelled_set_train_with_notes():
    adata = toy_counts(n_cells=90, n_genes=30)
    adata.obs["celltype"] = adata.obs["celltype"].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("celltype")] = "lonely"
    net = _train(adata, LabelSpec(key="celltype"), em_rounds=1, mstep_epochs=4)
    notes = " ".join(net._notes)
    assert "single labelled cell" in notes and "lonely" in notes
    assert "Every cell is labelled" in notes


# --- the command line ------------------------------------------------------------------------------------
def test_command_line_contract(tmp_path):
    adata = toy_counts(n_cells=150, n_genes=60)
    adata.obs["celltype"] = adata.obs["celltype"].astype(object)
    adata.obs.iloc[:15, adata.obs.columns.get_loc("celltype")] = np.nan  # to predict
    adata.obs.iloc[15:20, adata.obs.columns.get_loc("celltype")] = ""
    path = tmp_path / "cells.h5ad"
    adata.obs["celltype"] = adata.obs["celltype"].astype(str).replace("nan", np.nan)
    adata.write_h5ad(path)
    out = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "scbignn",
        "--preset",
        "quick",
        "--input",
        str(path),
        "--label-key",
        "celltype",
    ]
    argv += ["--out", str(out), "--seed", "1", "--holdout-fraction", "0.2", "--quiet"]
    for section, values in SMOKE.items():
        for name, value in values.items():
            argv += [flag_of("scbignn", section, name), str(value)]
    assert main(argv) == 0
    back = ad.read_h5ad(out / "result.h5ad")
    views = back.uns["scgraph"]["views"]
    assert views["predictions"] == "scbignn_prediction" and views["probabilities"] == "scbignn_proba"
    names = list(views["probability_names"])
    assert names == ["type0", "type1", "type2"]
    assert back.obs["scbignn_prediction"].notna().all() and set(back.obs["scbignn_prediction"]) <= set(names)
    assert back.obsm["scbignn_proba"].shape == (back.n_obs, 3)
    conf = back.obs["scbignn_confidence"].to_numpy()
    np.testing.assert_allclose(conf, back.obsm["scbignn_proba"].max(1), rtol=1e-6)
    assert "X_scbignn" in back.obsm and "X_scbignn_q" in back.obsm
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "q_accuracy", "q_macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["labels"]["n_unlabelled"] == 20 and metrics["labels"]["n_held_out"] > 0
    assert metrics.get("ari") is None  # the training labels are not a score
    config = json.loads((out / "config.json").read_text())
    assert config["label_key"] is None and config["labels"]["holdout_fraction"] == 0.2
    assert (out / "gene_importance.csv").is_file() and (out / "em_rounds.csv").is_file()
    # Gene importance and read-out weights also sit in var, one value per modelled gene.
    table = pd.read_csv(out / "gene_importance.csv")
    importance = back.var["scbignn_importance"]
    np.testing.assert_allclose(
        importance.loc[table["gene"].astype(str)].to_numpy(), table["importance"].to_numpy(), rtol=1e-6
    )
    assert "scbignn_readout_weight" in back.var


def test_the_command_line_of_a_run_keeps_its_labels():
    import shlex

    from scgraph_core.__main__ import build_parser, command_line

    labels = LabelSpec(key="cell type", holdout_fraction=0.2, unlabelled="?")
    original = pipeline.resolve_config("scbignn", "quick", {"model": {"k": 7}}, labels=labels)
    record = {**original.to_dict(), "input": {"path": "cells.h5ad", "orientation": "auto"}}
    words = shlex.split(command_line(record))
    args = build_parser(words[3:]).parse_args(words[3:])
    assert (args.label_key, args.holdout_fraction, args.unlabelled) == ("cell type", 0.2, "?")
    flag = flag_of("scbignn", "model", "k")
    assert words[words.index(flag) + 1] == "7"
