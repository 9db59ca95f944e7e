"""Training on several processes (torchrun + DistributedDataParallel, gloo on the CPU): two processes give
the result one process gives, the weights stay identical on both, and only rank 0 writes the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scgraph_core.__main__ import main
from tests.helpers import toy_counts

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--model", "cellvgae", "--preset", "quick", "--batch-size", "150", "--epochs", "20"]
ARGS += ["--label-key", "celltype", "--seed", "0"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "toy.h5ad"
    toy_counts().write_h5ad(path)
    return path


def _train(cmd: list[str], out: Path) -> dict:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("mode", ["neighbours", "parts"])
def test_two_gloo_processes_train_like_one_and_only_rank_0_writes(toy_file, tmp_path, mode):
    args = [*ARGS, "--batch-mode", mode]
    # The single process runs in this one (its libraries are loaded already); the two below are launched.
    assert main(["train", "--input", str(toy_file), *args, "--out", str(tmp_path / "one"), "--quiet"]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    runs = tmp_path / "runs"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = _train([*launcher, "-m", "scgraph_core", "train", "--input", str(toy_file), *args,
                  "--out", str(runs / "two")], runs / "two")  # fmt: skip
    if mode == "parts":  # both processes cut the cells into the same parts
        assert two["parts"] == one["parts"] and two["parts_edges_within"] == one["parts_edges_within"]
    assert two["processes"] == 2 and two["processes_in_sync"] is True  # gradients averaged every step
    assert "processes" not in one
    # Each process takes half of every epoch's batches (rounded up).
    assert two["steps_per_epoch"] == -(-one["steps_per_epoch"] // 2)
    assert two["epochs_run"] == 20 * two["steps_per_epoch"]
    assert abs(two["ari"] - one["ari"]) <= 0.1 and two["ari"] > 0.8
    # Rank 0 alone wrote: one folder, and one process's events (not one stream per rank).
    assert [p.name for p in runs.iterdir()] == ["two"]
    events = [json.loads(line) for line in (runs / "two" / "events.jsonl").read_text().splitlines()]
    assert len([e for e in events if e.get("kind") == "stage_start"]) == 1
    assert len([e for e in events if e.get("kind") == "epoch"]) == two["epochs_run"]


def test_several_processes_need_a_model_that_trains_on_batches(toy_file, tmp_path, monkeypatch, capsys):
    # What torchrun sets for each process; the refusal comes before any process group is joined.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cmd = ["train", "--input", str(toy_file), "--model", "cellvgae", "--preset", "quick"]
    assert main([*cmd, "--out", str(tmp_path / "full")]) != 0
    err = capsys.readouterr().err
    assert "--batch-size" in err and "Traceback" not in err
    assert not (tmp_path / "full").exists()
