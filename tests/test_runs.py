from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from scgraph_core import runs
from scgraph_core.errors import RunError
from scgraph_core.runs import Run, RunStore, atomic_write_json, default_home, process_start

REPO = Path(__file__).resolve().parents[1]


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


def test_listing_skips_foreign_folders_and_lists_damaged_runs(tmp_path):
    store = RunStore(tmp_path)
    good = store.create(model="m", name="good")
    (store.root / "not-a-run").mkdir()
    damaged = store.create(model="m", name="damaged")
    (damaged.path / "meta.json").write_text("{ half written")
    with pytest.warns(UserWarning, match="not-a-run"):
        infos = {i.id: i for i in store.list()}
    assert set(infos) == {good.id, damaged.id}
    assert not infos[good.id].damaged and infos[good.id].state == "queued"
    assert infos[damaged.id].damaged and infos[damaged.id].state == "damaged"
    assert "meta.json is not valid JSON" in infos[damaged.id].message


# (file, what it holds (None: the file is removed), words the reason must contain)
DAMAGE = [
    ("status.json", "[1, 2]", "status.json does not hold a JSON object (it holds a list)"),
    ("status.json", '"done"', "status.json does not hold a JSON object (it holds the text 'done')"),
    ("status.json", "null", "status.json does not hold a JSON object (it holds null)"),
    ("status.json", "{ torn", "status.json is not valid JSON"),
    ("status.json", b"\xff\xfe\x00garbage", "status.json is not valid JSON"),
    ("status.json", '{"state": "done", "updated": "yesterday"}', "'updated' should be a time"),
    ("status.json", '{"state": "finished"}', "'state' should be one of queued, running"),
    ("status.json", '{"state": ["done"]}', "'state' should be text"),
    ("status.json", '{"message": "hi"}', "status.json names no state"),
    ("status.json", '{"state": "running", "pid": "1234"}', "'pid' should be a process id"),
    ("status.json", '{"state": "running", "pid": -1}', "'pid' should be a process id"),
    ("meta.json", "[1, 2]", "meta.json does not hold a JSON object"),
    ("meta.json", '{"name": "x", "created": "yesterday"}', "'created' should be a time"),
    ("meta.json", '{"name": "x", "created": 1e300}', "'created' should be a time"),
    ("meta.json", '{"name": ["x"], "model": 3}', "'name' should be text"),
    ("meta.json", "{ half", "meta.json is not valid JSON"),
    ("meta.json", None, "meta.json is missing"),
    ("config.json", "[1, 2]", "config.json does not hold a JSON object"),
    ("worker.json", '"12"', "worker.json does not hold a JSON object"),
    ("worker.json", '{"pid": 12, "started": "now"}', "'started' should be a time"),
    ("worker.json", '{"host": "x", "started": 1.0}', "worker.json names no 'pid'"),
]


@pytest.mark.parametrize(("name", "content", "reason"), DAMAGE)
def test_a_damaged_run_is_listed_with_the_reason_and_can_be_deleted(tmp_path, name, content, reason):
    store = RunStore(tmp_path)
    good = store.create(model="cellvgae", name="good")
    run = store.create(model="cellvgae", name="hurt")
    if content is None:
        run.file(name).unlink()
    else:
        data = content if isinstance(content, bytes) else content.encode()
        run.file(name).write_bytes(data)
    infos = {i.id: i for i in store.list()}  # the damaged run breaks nothing
    assert set(infos) == {good.id, run.id}
    hurt = infos[run.id]
    assert hurt.damaged and hurt.state == "damaged" and reason in hurt.message and reason in hurt.damage
    assert not infos[good.id].damaged
    # Every reader of the folder copes with it.
    opened = store.open(run.id)
    assert isinstance(opened.meta, dict) and isinstance(opened.config, dict)
    assert opened.state in ("queued", "damaged") and isinstance(opened.status["message"], str)
    assert reason in " ".join(opened.problems())
    store.delete(run.id)
    assert [i.id for i in store.list()] == [good.id]


def test_a_damaged_run_cannot_be_renamed_but_says_why(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(model="m", name="x")
    run.file("meta.json").write_text('{"name": "x", "created": "yesterday"}')
    with pytest.raises(RunError, match=r"cannot be renamed: meta.json: 'created' should be a time"):
        store.rename(run.id, "new")


def test_a_damaged_status_with_a_live_worker_is_not_deleted(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    me = os.getpid()
    host = socket.gethostname()
    run.write_json("worker.json", {"pid": me, "pid_start": process_start(me), "host": host, "started": 1.0})
    run.file("status.json").write_text("[]")
    assert run.state == "damaged"
    with pytest.raises(RunError, match="stop it first"):
        store.delete(run.id)


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
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "status.json").write_text("{}")  # a damaged run without meta.json
    with pytest.raises(RunError, match="already holds a run"):
        Run.create_at(tmp_path / "half")


def test_create_at_fills_an_existing_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    run = Run.create_at(tmp_path / "out", name="mine", config={"seed": 3})
    assert (run.meta["name"], run.config, run.state) == ("mine", {"seed": 3}, "queued")
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "meta.json", "status.json"]
    with pytest.raises(RunError, match="cannot be made"):
        Run.create_at(tmp_path / "out" / "meta.json" / "x")


# Creates runs at root/r0, root/r1, ... in step with a twin process (the start time comes on stdin).
_RACER = r"""
import sys, time
from pathlib import Path
from scgraph_core.errors import RunError
from scgraph_core.runs import Run

root, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
start = float(sys.stdin.readline())
for i in range(rounds):
    while time.time() < start + 0.05 * i:
        pass
    try:
        Run.create_at(root / f"r{i}", name=me, config={"by": me})
        print(f"won {i}", flush=True)
    except RunError as exc:
        print(f"lost {i} {exc}", flush=True)
"""


def test_two_processes_creating_one_run_folder_exactly_one_wins(tmp_path):
    rounds = 20
    procs = {
        me: subprocess.Popen(
            [sys.executable, "-c", _RACER, str(tmp_path), me, str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for me in ("a", "b")
    }
    for proc in procs.values():
        assert proc.stdout.readline().strip() == "ready"
    start = time.time() + 0.5
    outs = {}
    for proc in procs.values():
        proc.stdin.write(f"{start}\n")
        proc.stdin.flush()
    for me, proc in procs.items():
        outs[me] = proc.communicate(timeout=300)[0].splitlines()
        assert proc.returncode == 0
    for i in range(rounds):
        winners = [me for me, lines in outs.items() if f"won {i}" in lines]
        assert len(winners) == 1, f"round {i}: {winners or 'nobody'} created the run"
        loser = "b" if winners == ["a"] else "a"
        assert any(line.startswith(f"lost {i} ") and "already holds a run" in line for line in outs[loser])
        run = Run(tmp_path / f"r{i}")
        assert (run.meta["name"], run.config, run.state) == (winners[0], {"by": winners[0]}, "queued")
        assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "meta.json", "status.json"]


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


# ---- dead workers: Run.status (and so the list and delete) reports them failed -------------------


@pytest.fixture
def zombie():
    """A real child process that has ended but is not reaped yet (a zombie), like a killed worker
    whose parent has not collected it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    else:
        pytest.fail("the child process did not end")
    os.kill(child.pid, 0)  # a zombie still answers signal 0: that is the trap
    yield child.pid
    child.wait()


def _long_dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to tell a zombie")
def test_a_running_run_whose_worker_is_a_zombie_is_failed_and_can_be_deleted(tmp_path, zombie):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    run.set_status("running", "training", pid=zombie)
    assert run.state == "failed" and "ended without finishing" in run.status["message"]
    assert [i.state for i in store.list()] == ["failed"]
    store.delete(run.id)
    assert store.list() == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to tell a zombie")
def test_a_queued_run_whose_worker_is_a_zombie_is_failed(tmp_path, zombie):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    run.write_json("worker.json", {"pid": zombie, "host": socket.gethostname(), "started": time.time()})
    (run.path / "worker.log").write_text("Killed\n")
    status = run.status
    assert status["state"] == "failed"
    assert "ended before it started training" in status["message"] and "Killed" in status["message"]
    store.delete(run.id)


def test_a_queued_run_whose_worker_died_long_ago_is_failed_and_can_be_deleted(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    run.write_json(
        "worker.json", {"pid": _long_dead_pid(), "host": socket.gethostname(), "started": time.time() - 3600}
    )
    assert run.state == "failed"
    assert [(i.state, i.damaged) for i in store.list()] == [("failed", False)]
    store.delete(run.id)
    assert store.list() == []


def test_a_queued_run_no_worker_was_recorded_for_fails_after_the_grace_period(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    assert run.state == "queued"  # within the grace period: the launcher may still be starting it
    monkeypatch.setattr(runs, "LAUNCH_GRACE_S", 0.01)
    time.sleep(0.05)
    assert run.state == "failed" and "never started" in run.status["message"]
    store.delete(run.id)


def test_a_live_worker_keeps_its_queued_run_undeletable(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    me = os.getpid()
    run.write_json(
        "worker.json",
        {"pid": me, "pid_start": process_start(me), "host": socket.gethostname(), "started": time.time()},
    )
    assert run.state == "queued"
    with pytest.raises(RunError, match="stop it first"):
        store.delete(run.id)


def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path):
    run = Run.create_at(tmp_path / "r")
    me = os.getpid()
    start = process_start(me)
    if start is None:
        pytest.skip("needs /proc for process start times")
    run.set_status("running", pid=me, pid_start=start + 1)  # this pid, but another process's start
    assert run.state == "failed"


def test_a_silent_live_worker_on_this_machine_stays_running(tmp_path):
    run = Run.create_at(tmp_path / "r")
    run.set_status("running", "clustering")
    if run.status.get("pid_start") is None:
        pytest.skip("needs /proc for process start times")
    run.write_json("status.json", {**run.status, "updated": time.time() - 10 * runs.HEARTBEAT_STALE_S})
    assert run.state == "running"  # a long step without events is not a death


def test_a_worker_on_another_machine_is_judged_by_its_heartbeat(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(model="m")
    run.set_status("running", "training", pid=4242, host="node-7", updated=time.time() - 30)
    assert run.state == "running"
    with pytest.raises(RunError, match="stop it first"):
        store.delete(run.id)
    run.set_status(
        "running", "training", pid=4242, host="node-7", updated=time.time() - runs.HEARTBEAT_STALE_S - 5
    )
    assert run.state == "failed" and "no heartbeat" in run.status["message"]
    store.delete(run.id)


def test_heartbeat_refreshes_only_its_own_running_status_and_is_rate_limited(tmp_path):
    run = Run.create_at(tmp_path / "r")
    assert run.heartbeat(every=0) is False  # queued: nothing to refresh
    run.set_status("running", "training")
    run.write_json("status.json", {**run.status, "updated": 1000.0})
    assert run.heartbeat() is True and run.status["updated"] > time.time() - 60
    run.write_json("status.json", {**run.status, "updated": 1000.0})
    assert run.heartbeat() is False  # too soon after the last beat
    assert run.heartbeat(every=0) is True
    run.set_status("running", "training", pid=_long_dead_pid())
    assert Run(run.path).heartbeat() is False  # another process's status: never kept alive by a reader
