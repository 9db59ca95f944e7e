"""Time and memory estimates: CellVGAE's come from the benchmark file, other models' are rough."""

from __future__ import annotations

import json

import pytest

from scgraph_core import estimate, pipeline
from scgraph_core.models import base


def test_the_fit_reproduces_the_benchmark_rows():
    rows = json.loads(estimate.BENCHMARK.read_text())["rows"]
    rows = [r for r in rows if r["impl"] == "scgraph"]
    assert rows
    for r in rows:
        config = pipeline.resolve_config("cellvgae", r["preset"])
        est = estimate.estimate(
            config, r["n_cells"], n_genes=250, n_edges=r["n_edges"], precision=r["precision"]
        )
        assert not est.rough
        assert 0.6 < est.seconds_per_epoch / r["seconds_per_epoch"] < 1.5, r
        assert 0.7 < est.peak_memory_mb / r["peak_rss_mb"] < 1.4, r


def test_estimates_grow_with_cells_heads_and_epochs():
    quick = pipeline.resolve_config("cellvgae", "quick")
    paper = pipeline.resolve_config("cellvgae", "paper")
    small = estimate.estimate(quick, 5_000, n_genes=2000)
    big = estimate.estimate(quick, 50_000, n_genes=2000)
    heavy = estimate.estimate(paper, 50_000, n_genes=2000)
    assert big.seconds_per_epoch > 5 * small.seconds_per_epoch
    assert heavy.seconds_per_epoch > 5 * big.seconds_per_epoch
    assert heavy.train_seconds == pytest.approx(heavy.seconds_per_epoch * 200)
    assert heavy.peak_memory_mb > big.peak_memory_mb > small.peak_memory_mb
    assert heavy.total_seconds > heavy.train_seconds


def test_gpu_and_models_without_numbers_are_labelled_rough():
    quick = pipeline.resolve_config("cellvgae", "quick")
    gpu = estimate.estimate(quick, 20_000, n_genes=2000, device="cuda")
    assert gpu.rough and any("No GPU benchmark" in n for n in gpu.notes)
    others = [m for m in base.available() if m != "cellvgae"]
    if not others:
        pytest.skip("only CellVGAE is registered")
    config = pipeline.resolve_config(others[0], "quick")
    est = estimate.estimate(config, 3_000, n_genes=2000)
    assert est.rough and "rough" in est.basis and est.train_seconds > 0


def test_a_missing_benchmark_file_falls_back(tmp_path):
    fit = estimate.cellvgae_fit(str(tmp_path / "absent.json"))
    assert fit["bf16"]["a"] > 0 and fit["memory"]["m0"] > 0


def test_format_seconds():
    assert estimate.format_seconds(42) == "42 s"
    assert estimate.format_seconds(200) == "3 min 20 s"
    assert estimate.format_seconds(7500) == "2 h 05 min"
    assert estimate.format_seconds(None) == "unknown"
