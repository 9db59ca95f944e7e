from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

from scgraph_core.errors import RunError
from scgraph_core.runs import Run, RunStore, atomic_write_json, default_home


def test_default_home_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path))
    assert default_home() == tmp_path
    assert RunStore().root == tmp_path / "runs"


def test_create_list_rename_delete(tmp_path):
    store = RunStore(tmp_path)
    a = store.create(model="cellvgae", name="first", dataset="pbmc", config={"seed": 1})
    b = store.create(model="cellvgae", name="second")
    assert {i.id for i in store.list()} == {a.id, b.id}
    assert store.open(a.id).config == {"seed": 1}
    store.rename(a.id, "renamed run")
    assert store.open(a.id).meta["name"] == "renamed run"
    store.delete(b.id)
    assert [i.id for i in store.list()] == [a.id]
    with pytest.raises(RunError, match="no run"):
        store.open(b.id)


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "", "x" * 101, "/abs", ".hidden"])
def test_unsafe_run_ids_are_refused(tmp_path, bad):
    store = RunStore(tmp_path)
    with pytest.raises(RunError, match="not a valid run id"):
        store.open(bad)


def test_bad_display_names(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    for bad in ["", "  ", "a\nb", "x" * 200]:
        with pytest.raises(RunError):
            store.rename(run.id, bad)


def test_listing_skips_foreign_and_damaged_folders(tmp_path):
    store = RunStore(tmp_path)
    good = store.create(model="m", name="good")
    (store.root / "not-a-run").mkdir()
    damaged = store.create(model="m", name="damaged")
    (damaged.path / "meta.json").write_text("{ half written")
    with pytest.warns(UserWarning):
        infos = store.list()
    assert [i.id for i in infos] == [good.id]


def test_interrupted_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"v": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left behind


def test_events_skip_torn_lines(tmp_path):
    run = Run.create_at(tmp_path / "r")
    run.append_event({"kind": "epoch", "epoch": 1})
    with open(run.file("events.jsonl"), "a") as fh:
        fh.write('{"kind": "epoch", "ep')  # a crash mid-line
    assert [e["epoch"] for e in run.events("epoch")] == [1]


def test_stop_is_idempotent_and_status(tmp_path):
    run = Run.create_at(tmp_path / "r")
    assert run.state == "queued" and not run.stop_requested()
    run.request_stop()
    run.request_stop()
    assert run.stop_requested()
    run.set_status("done", "finished")
    assert run.status["message"] == "finished"


def test_dead_worker_reads_as_failed(tmp_path):
    run = Run.create_at(tmp_path / "r")
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(proc.stdout)
    run.set_status("running", pid=dead_pid)
    assert run.state == "failed"
    assert "ended without finishing" in run.status["message"]


def test_create_at_refuses_existing_run(tmp_path):
    Run.create_at(tmp_path / "r")
    with pytest.raises(RunError, match="already holds a run"):
        Run.create_at(tmp_path / "r")


def test_weights_are_tensors_only(tmp_path):
    run = Run.create_at(tmp_path / "r")
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    run.save_weights("best", state)
    assert torch.equal(run.load_weights("best")["w"], state["w"])
    # A pickle carrying arbitrary objects is refused by the weights-only loader.
    torch.save({"w": object()}, run.file("checkpoints/evil.pt"))
    with pytest.raises(RunError, match="cannot be read as tensors"):
        run.load_weights("evil")


def test_result_roundtrip(tmp_path):
    run = Run.create_at(tmp_path / "r")
    with pytest.raises(RunError, match="no result"):
        run.read_result()
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    adata.obsm["X_latent"] = np.zeros((3, 4), dtype=np.float32)
    run.write_result(adata)
    back = run.read_result()
    assert back.obsm["X_latent"].shape == (3, 4)


def test_delete_refuses_running(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    run.set_status("running")  # this process is alive, so the run is live
    with pytest.raises(RunError, match="stop it first"):
        store.delete(run.id)
