"""A function run in a forked child beside the caller's work (the analysis overlaps its two layouts)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from scgraph_core import background, pipeline
from scgraph_core.background import Background
from tests.helpers import toy_counts

PARENT = os.getpid()


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def _fails(message: str) -> None:
    raise ValueError(message)


def _dies_in_a_child(x: int) -> int:
    if os.getpid() != PARENT:
        os._exit(9)  # as if killed for memory
    return x + 1


def test_the_value_comes_from_a_child_where_it_can_fork():
    job = Background(_pid_and_square, 7)
    pid, value = job.result()
    assert value == 49 and job.result() == (pid, 49)  # asked twice: the same value, one run
    assert job.forked == background.can_fork() and (pid != PARENT) == job.forked
    assert job.seconds >= 0.0


def test_a_failing_child_is_run_again_in_the_caller_and_its_error_raised_there():
    with pytest.raises(ValueError, match="bad input"):
        Background(_fails, "bad input").result()
    job = Background(_dies_in_a_child, 1)
    assert job.result() == 2 and not job.forked  # the child died; the caller computed it


def test_serial_when_asked(monkeypatch):
    monkeypatch.setenv("SCGRAPH_SERIAL_ANALYSIS", "1")
    assert not background.can_fork()
    job = Background(_pid_and_square, 3)
    assert job.result() == (PARENT, 9) and not job.forked


TINY = {
    "model": {"hidden": [16, 16], "heads": [2], "latent": 8, "epochs": 6, "lr": 0.01},
    "prepare": {"n_hvg": 40, "n_graph_genes": 30},
    "cluster": {"min_cluster_sizes": [5, 10], "min_samples": [3, 5]},
}


def test_the_overlapped_analysis_gives_the_serial_result(monkeypatch):
    """The label-free choice made in a child beside the drawn UMAP: the same clusters, grid and scores."""
    adata = toy_counts(n_cells=300)
    config = pipeline.resolve_config("cellvgae", "quick", TINY, label_key="celltype")
    out, result = pipeline.execute(adata.copy(), config)
    monkeypatch.setenv("SCGRAPH_SERIAL_ANALYSIS", "1")
    out_serial, serial = pipeline.execute(adata.copy(), config)
    assert result.metrics["analysis_overlapped"] is background.can_fork()
    assert serial.metrics["analysis_overlapped"] is False
    key = "cellvgae_cluster"
    assert (out.obs[key].astype(str) == out_serial.obs[key].astype(str)).all()
    assert np.array_equal(out.obsm["X_umap_cluster"], out_serial.obsm["X_umap_cluster"])
    assert np.array_equal(out.obsm["cellvgae_hdbscan_grid"], out_serial.obsm["cellvgae_hdbscan_grid"])
    for name in ("ari", "nmi", "n_clusters", "silhouette", "cluster_rule"):
        assert result.metrics.get(name) == serial.metrics.get(name), name
    assert {"layout", "clusters", "leiden"} <= set(result.metrics["analysis_parts"])


def _sleeps() -> int:
    import time

    time.sleep(60)
    return 0


def test_a_result_never_asked_for_ends_the_child():
    job = Background(_sleeps)
    if not job.forked:
        pytest.skip("this machine cannot fork a child here (one core or not Linux)")
    pid = job._pid
    del job  # the caller failed before asking: the child is killed and reaped, not left running
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_serial_analysis_parts_add_up(monkeypatch):
    monkeypatch.setenv("SCGRAPH_SERIAL_ANALYSIS", "1")
    adata = toy_counts(n_cells=200)
    config = pipeline.resolve_config("cellvgae", "quick", TINY, label_key="celltype")
    _, result = pipeline.execute(adata, config)
    parts = result.metrics["analysis_parts"]
    assert set(parts) == {"layout", "clusters", "leiden", "interpret"}
    assert sum(parts.values()) <= result.metrics["seconds_analysis"] + 1e-6
