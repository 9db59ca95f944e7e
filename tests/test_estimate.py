"""Time and memory estimates: measured on this machine on a subsample, scaled to the data, every stage."""

from __future__ import annotations

import dataclasses

import pytest

from scgraph_core import estimate, pipeline
from scgraph_core.models import base
from tests.helpers import toy_counts

TINY = {
    "model": {"hidden": [16, 16], "heads": [2], "latent": 8, "epochs": 8, "lr": 0.01},
    "prepare": {"n_hvg": 40, "n_graph_genes": 30},
    "cluster": {"min_cluster_sizes": [5, 10], "min_samples": [3, 5]},
    "train": {"eval_every": 2},
}


@pytest.fixture(scope="module")
def measured():
    adata = toy_counts(n_cells=160, n_genes=60)
    config = pipeline.resolve_config("cellvgae", "quick", TINY)
    return adata, config, estimate.calibrate(adata, config, n_cells=120, steps=4)


def hand_made(**changes) -> estimate.Calibration:
    values = dict(
        model="cellvgae",
        device="cpu",
        precision="fp32",
        n_cells=100,
        n_features=40,
        n_edges=1000,
        prepare_seconds=0.1,
        graph_seconds=0.05,
        stages=(("pretrain", 100, 0.02, 0.0, 0.0, 0.0), ("dec", 50, 0.04, 0.0, 0.0, 0.0)),
        analysis_seconds=2.0,
        write_seconds=0.1,
        seconds=5.0,
    )
    values.update(changes)
    return estimate.Calibration(**values)


def test_calibration_runs_the_model_on_a_subsample_and_is_cached(measured):
    adata, config, cal = measured
    assert cal.n_cells == 120 and cal.n_features == 40 and cal.n_edges > 0
    assert [s[0] for s in cal.stages] == ["train"] and cal.stages[0][1] == 8  # the declared epochs
    assert cal.stages[0][2] > 0 and cal.analysis_seconds > 0 and cal.write_seconds > 0
    assert cal.stages[0][4] == pytest.approx(0.5)  # evaluated every 2 epochs
    assert estimate.calibrate(adata, config, n_cells=120, steps=4) is cal
    other = dataclasses.replace(config, graph=dataclasses.replace(config.graph, k=7))
    assert estimate.calibrate(adata, other, n_cells=120, steps=3) is not cal


def test_a_measured_estimate_lists_every_stage_as_a_range(measured):
    adata, config, cal = measured
    est = estimate.estimate(config, adata.n_obs, n_genes=adata.n_vars, calibration=cal)
    assert not est.rough and "measured on this machine" in est.basis
    names = [p.name for p in est.parts]
    assert names == [
        "start-up",
        "preparation",
        "cell graph",
        "training: train",
        "clustering and interpretation",
        "writing the result",
    ]
    assert all(p.low <= p.seconds <= p.high for p in est.parts)
    assert est.low_seconds < est.total_seconds < est.high_seconds
    assert est.total_seconds == pytest.approx(est.train_seconds + est.other_seconds)
    assert est.other_seconds >= estimate.WORKER_STARTUP_S + cal.analysis_seconds


def test_estimates_scale_with_cells_and_epochs():
    config = pipeline.resolve_config("attentionae", "quick") if "attentionae" in base.available() else None
    config = config or pipeline.resolve_config("cellvgae", "quick")
    cal = hand_made()
    small = estimate.estimate(config, 1_000, n_genes=2000, n_edges=10_000, calibration=cal)
    big = estimate.estimate(config, 10_000, n_genes=2000, n_edges=100_000, calibration=cal)
    assert big.train_seconds == pytest.approx(10 * small.train_seconds)
    # Both training stages are counted, each with its own epochs: 10x (100·0.02 + 50·0.04).
    assert small.train_seconds == pytest.approx(10 * (100 * 0.02 + 50 * 0.04))
    assert [p.name for p in small.parts if p.name.startswith("training")] == [
        "training: pretrain",
        "training: dec",
    ]
    longer = hand_made(stages=(("pretrain", 200, 0.02, 0.0, 0.0, 0.0), ("dec", 100, 0.04, 0.0, 0.0, 0.0)))
    twice = estimate.estimate(config, 1_000, n_genes=2000, n_edges=10_000, calibration=longer)
    assert twice.train_seconds == pytest.approx(2 * small.train_seconds)
    assert big.peak_memory_mb > small.peak_memory_mb
    # Far beyond the calibration size the range opens downwards (fixed per-step costs).
    far = next(p for p in big.parts if p.name == "training: dec")
    assert far.low / far.seconds < estimate.LOW


def test_a_mini_batch_run_says_its_estimate_counts_full_batch_passes():
    cal = hand_made()
    full = pipeline.resolve_config("cellvgae", "quick")
    batched = pipeline.resolve_config("cellvgae", "quick", {"model": {"batch_size": 4096}})
    said = estimate.estimate(batched, 1_000, n_genes=2000, n_edges=10_000, calibration=cal).notes
    assert any("Mini-batch" in note for note in said)
    assert not any(
        "Mini-batch" in note
        for note in estimate.estimate(full, 1_000, n_genes=2000, n_edges=10_000, calibration=cal).notes
    )
    parts = pipeline.resolve_config(
        "cellvgae", "quick", {"model": {"batch_size": 4096, "batch_mode": "parts"}}
    )
    said = estimate.estimate(parts, 1_000, n_genes=2000, n_edges=10_000, calibration=cal).notes
    assert any("partition batches" in note for note in said)
    assert not any("sampled neighbourhoods" in note for note in said)


def test_a_dense_kernel_graph_grows_with_cells_squared():
    if "scvgae" not in base.available():
        pytest.skip("scVGAE is not registered")
    config = pipeline.resolve_config("scvgae", "quick")
    cal = hand_made(model="scvgae", stages=(("train", 300, 0.05, 0.0, 0.0, 0.0),))
    est = estimate.estimate(config, 1_000, n_genes=22_000, n_features=22_000, calibration=cal)
    graph = next(p for p in est.parts if p.name == "cell graph")
    assert graph.seconds == pytest.approx(0.05 * 10**2)


def test_only_a_model_that_builds_its_own_graph_is_scaled_as_a_dense_kernel():
    # Every model class has build_graph (the base returns None): CellVGAE's kNN graph scales with the cells.
    config = pipeline.resolve_config("cellvgae", "quick")
    est = estimate.estimate(config, 1_000, n_genes=2000, n_edges=10_000, calibration=hand_made())
    graph = next(p for p in est.parts if p.name == "cell graph")
    assert graph.seconds == pytest.approx(0.05 * 10) and "cells²" not in graph.detail
    if "scgnn" not in base.available():
        return
    # scGNN's pipeline graph is empty: its graphs are built in every round, inside the training time.
    cal = hand_made(model="scgnn", n_edges=0, stages=(("feature_ae", 100, 0.01, 0.0, 0.0, 0.0),))
    est = estimate.estimate(pipeline.resolve_config("scgnn", "quick"), 1_000, n_genes=2000, calibration=cal)
    graph = next(p for p in est.parts if p.name == "cell graph")
    assert "built while training" in graph.detail and graph.seconds == pytest.approx(0.05 * 10)


def test_a_refinement_loop_is_estimated_for_all_its_rounds_not_those_the_calibration_ran():
    if "scgnn" not in base.available():
        pytest.skip("scGNN is not installed in this build")
    # The calibration's subsample settled after two rounds (r0: first clustering, r1: one retraining).
    stages = (
        ("feature_ae", 100, 0.01, 0.0, 0.0, 0.0),
        ("gae_r0", 10, 0.01, 0.0, 0.0, 0.0),
        ("cluster_r1_0", 10, 0.02, 0.0, 0.0, 0.0),
        ("cluster_r1_1", 10, 0.02, 0.0, 0.0, 0.0),
        ("em_r1", 10, 0.01, 0.0, 0.0, 0.0),
        ("gae_r1", 10, 0.01, 0.0, 0.0, 0.0),
    )
    cal = hand_made(model="scgnn", n_edges=0, n_cells=100, stages=stages)
    config = pipeline.resolve_config("scgnn", "paper")
    rounds = config.params.max_rounds
    est = estimate.estimate(config, 100, n_genes=2000, calibration=cal)
    loop = next(p for p in est.parts if p.name == "training: refinement rounds")
    each = 10 * (0.02 + 0.02 + 0.01 + 0.01)
    assert loop.seconds == pytest.approx(10 * 0.01 + rounds * each)  # every round the settings allow
    assert loop.low < (10 * 0.01 + each) * 1.01  # ... down to one retraining round
    assert f"up to {rounds}" in loop.detail and any("refinement rounds" in n.lower() for n in est.notes)
    assert not any(p.name.startswith("training: em_r") for p in est.parts)
    assert est.train_seconds == pytest.approx(100 * 0.01 + loop.seconds)
    fewer = estimate.estimate(
        pipeline.resolve_config("scgnn", "paper", {"model": {"max_rounds": 2}}),
        100,
        n_genes=2000,
        calibration=cal,
    )
    assert fewer.train_seconds < est.train_seconds


def test_a_model_reading_all_genes_is_warned_about():
    config = pipeline.resolve_config("cellvgae", "quick", {"prepare": {"n_hvg": 0}})
    est = estimate.estimate(config, 420, n_genes=22_000, calibration=hand_made(n_features=22_000))
    assert est.n_features == 22_000
    assert est.warnings and "22,000 genes" in est.warnings[0] and "2000" in est.warnings[0]
    few = estimate.estimate(pipeline.resolve_config("cellvgae", "quick"), 420, n_genes=22_000, n_features=250)
    assert not few.warnings


def test_without_a_measurement_the_estimate_is_rough_but_complete():
    config = pipeline.resolve_config("cellvgae", "quick")
    est = estimate.estimate(config, 3_000, n_genes=2000)
    assert est.rough and "rough" in est.basis
    assert {"start-up", "training", "clustering and interpretation"} <= {p.name for p in est.parts}
    assert est.high_seconds > 2 * est.total_seconds


def test_the_engine_reads_no_repository_files():
    assert not hasattr(estimate, "BENCHMARK")
    source = estimate.__file__
    assert "benchmarks" not in open(source, encoding="utf-8").read()


def test_format_seconds():
    assert estimate.format_seconds(42) == "42 s"
    assert estimate.format_seconds(200) == "3 min 20 s"
    assert estimate.format_seconds(7500) == "2 h 05 min"
    assert estimate.format_seconds(None) == "unknown"


def test_device_and_precision_default_to_what_the_run_will_use():
    """The Model page shows the estimate's precision: the trainer's own choice (train.precision_name)."""
    from scgraph_core import train

    for precision in ("auto", "fp32", "bf16"):
        config = pipeline.resolve_config(
            "cellvgae", "quick", {"train": {"device": "cpu", "precision": precision}}
        )
        est = estimate.estimate(config, 500, n_genes=2000)
        assert est.device == "cpu"
        assert (
            est.precision
            == train.precision_name(precision, "cpu")
            == train.Trainer(config.train).precision_name
        )
    cal = hand_made()
    est = estimate.estimate(pipeline.resolve_config("cellvgae", "quick"), 500, calibration=cal)
    assert (est.device, est.precision) == (cal.device, cal.precision)  # a measurement says what it ran on


def test_the_gene_advice_names_the_setting_by_its_label():
    from scgraph_core import data, params

    config = pipeline.resolve_config("cellvgae", "quick", {"prepare": {"n_hvg": 0}})
    est = estimate.estimate(config, 420, n_genes=22_000, calibration=hand_made(n_features=22_000))
    label = params.info_of(data.PrepareSpec, "n_hvg").label
    assert label.lower() in est.warnings[0].lower()


def test_epochs_come_from_the_resolved_preset_of_every_model():
    """No preset value is repeated in the estimate: it reads the resolved configuration."""
    for name, cls in base.available().items():
        for preset in cls.presets:
            config = pipeline.resolve_config(name, preset)
            declared = [
                v
                for f, v in dataclasses.asdict(config.params).items()
                if (f == "epochs" or f.endswith("_epochs")) and "min" not in f and isinstance(v, int)
            ]
            est = estimate.estimate(config, 300, n_genes=500)
            assert est.epochs == max(sum(declared), 1), (name, preset)
