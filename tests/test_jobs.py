"""Background jobs: uploads are stored safely, the worker runs detached, failures and progress are
read from the run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scgraph_core import jobs, pipeline, runs
from scgraph_core.errors import DataError, RunError
from scgraph_core.runs import Run, RunStore
from tests.helpers import toy_counts


def test_uploads_are_stored_once_under_a_plain_name(tmp_path):
    a = jobs.save_upload("../../etc/my data (1).csv.gz", b"x,y\n1,2\n", home=tmp_path)
    assert a.parent.parent == tmp_path / "uploads"
    assert a.name == "my_data_1_.csv.gz"  # no folders, the extension kept
    assert a.read_bytes() == b"x,y\n1,2\n"
    assert jobs.save_upload("other.csv.gz", b"x,y\n1,2\n", home=tmp_path).parent == a.parent  # same content
    with pytest.raises(DataError, match="empty"):
        jobs.save_upload("empty.h5ad", b"", home=tmp_path)
    with pytest.raises(DataError, match="no usable characters"):
        jobs.safe_filename("///")


def test_input_records_are_absolute_and_the_demo_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert jobs.input_record("data.h5ad")["path"] == str(tmp_path / "data.h5ad")
    assert jobs.input_record("builtin:pbmc68k_reduced")["path"] == "builtin:pbmc68k_reduced"


def test_a_detached_worker_that_fails_reports_why(tmp_path):
    store = RunStore(tmp_path / "runs")
    config = pipeline.resolve_config("cellvgae", "quick")
    run = jobs.start(config, jobs.input_record(tmp_path / "missing.h5ad"), store=store, name="bad input")
    info = json.loads(run.file("worker.json").read_text())
    assert info["command"][-2:] == ["work", str(run.path.absolute())]
    try:
        assert os.getsid(info["pid"]) != os.getsid(0)  # its own session: the app's signals do not reach it
    except ProcessLookupError:
        pass  # already finished
    deadline = time.time() + 180
    while jobs.status(run)["state"] not in ("failed", "done") and time.time() < deadline:
        time.sleep(0.5)
    status = jobs.status(run)
    assert status["state"] == "failed"
    assert "No file or folder at" in status["message"]
    assert jobs.worker_alive(run) in (False, None) or _wait_exit(run)
    assert "No file or folder" in jobs.log_tail(run)
    with pytest.raises(RunError, match="only a queued run"):
        jobs.launch(run)


def _wait_exit(run: Run) -> bool:
    deadline = time.time() + 30
    while jobs.worker_alive(run) and time.time() < deadline:
        time.sleep(0.2)
    return not jobs.worker_alive(run)


def test_a_worker_that_died_before_starting_is_reported_failed(tmp_path):
    run = Run.create_at(tmp_path / "run", model="cellvgae")
    run.write_json(
        jobs.WORKER_FILE,
        {"pid": 2**22 + 12345, "host": __import__("socket").gethostname(), "started": time.time() - 60},
    )
    (run.path / jobs.LOG_FILE).write_text("Traceback ...\nImportError: no module named torch\n")
    status = jobs.status(run)
    assert status["state"] == "failed"
    assert "ended before it started" in status["message"] and "ImportError" in status["message"]


def test_progress_names_the_dec_epochs_a_guard_abandoned_apart(tmp_path):
    run = Run.create_at(tmp_path / "run", model="attentionae")
    run.set_status("running", "training")

    def dec(epochs: int, losses: list[float]) -> None:
        run.append_event({"kind": "stage_start", "stage": "dec", "epochs": epochs})
        for epoch, zinb in enumerate(losses, start=1):
            run.append_event(
                {
                    "kind": "epoch",
                    "stage": "dec",
                    "epoch": epoch,
                    "epochs": epochs,
                    "loss": zinb,
                    "losses": {"zinb": zinb},
                    "seconds": 0.1,
                }
            )

    dec(100, [0.63, 0.66, 0.70])
    run.append_event({"kind": "pipeline", "step": "dec_restart", "epoch": 3, "rise": 0.11})
    dec(100, [0.63, 0.631])
    p = jobs.progress(run)
    assert list(p.history["stage"]) == ["dec_abandoned"] * 3 + ["dec"] * 2
    assert [s["stage"] for s in p.stages] == ["dec_abandoned", "dec"]
    assert (p.step, p.stage, p.epoch, p.restart) == ("dec_restart", "dec", 2, "zinb")


def test_progress_reads_epochs_terms_validation_and_eta(tmp_path):
    run = Run.create_at(tmp_path / "run", model="cellvgae")
    run.set_status("running", "training")
    t0 = time.time()
    run.append_event({"kind": "pipeline", "step": "train", "device": "cpu", "precision": "bf16"})
    run.append_event(
        {"kind": "stage_start", "stage": "train", "epochs": 10, "device": "cpu", "precision": "bf16"}
    )
    for epoch in range(1, 5):
        event = {
            "kind": "epoch",
            "stage": "train",
            "epoch": epoch,
            "epochs": 10,
            "loss": 2.0 / epoch,
            "losses": {"reconstruction": 1.9 / epoch, "kl": 0.1 / epoch},
            "seconds": 0.5,
            "peak_memory_mb": 800.0 + epoch,
        }
        if epoch % 2 == 0:
            event["validation"] = {"val_auc": 0.5 + epoch / 10}
        run.append_event(event)
    with open(run.file("events.jsonl"), "a", encoding="utf-8") as fh:
        fh.write('{"kind": "epoch", "torn')  # a line being written
    p = jobs.progress(run)
    assert (p.state, p.step, p.stage, p.epoch, p.epochs) == ("running", "train", "train", 4, 10)
    assert p.fraction == pytest.approx(0.4)
    assert p.seconds_per_epoch == pytest.approx(0.5) and p.eta_s == pytest.approx(3.0)
    assert (p.device, p.precision, p.peak_memory_mb) == ("cpu", "bf16", 804.0)
    assert list(p.history.columns[:5]) == ["stage", "epoch", "loss", "reconstruction", "kl"]
    assert p.history["val_auc"].notna().sum() == 2
    assert p.elapsed_s >= 0 and p.started >= t0 - 1
    jobs.stop(run)
    assert jobs.progress(run).stop_requested
    run.set_status("done", "finished")
    done = jobs.progress(run)
    assert done.finished and done.eta_s is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to tell a zombie")
def test_a_worker_killed_before_it_began_is_failed_even_as_an_unreaped_zombie(tmp_path):
    run = RunStore(tmp_path).create(model="cellvgae")
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not waited on: it stays a zombie
    try:
        deadline = time.time() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline, "the child process did not end"
            time.sleep(0.05)
        run.write_json(
            jobs.WORKER_FILE, {"pid": child.pid, "host": socket.gethostname(), "started": time.time()}
        )
        assert jobs.worker_alive(run) is False
        assert jobs.status(run)["state"] == "failed" and jobs.progress(run).state == "failed"
        assert "ended before it started training" in jobs.progress(run).message
    finally:
        child.wait()


def test_a_damaged_run_reads_as_damaged_in_progress_and_stop_is_harmless(tmp_path):
    run = RunStore(tmp_path).create(model="cellvgae")
    run.file("status.json").write_text('{"state": "running", "updated": "yesterday"}')
    p = jobs.progress(run)
    assert p.state == "damaged" and "'updated' should be a time" in p.message
    jobs.stop(run)
    assert jobs.worker_info(run) == {}
    run.file(jobs.WORKER_FILE).write_text("[1]")
    assert jobs.worker_info(run) == {} and jobs.worker_alive(run) is None


def test_training_refreshes_the_heartbeat_from_its_events(tmp_path, monkeypatch):
    beats: list[bool] = []
    real = Run.heartbeat

    def every_event(self, every=runs.HEARTBEAT_EVERY_S):
        beats.append(real(self, every=0))
        return beats[-1]

    monkeypatch.setattr(Run, "heartbeat", every_event)
    tiny = {
        "model": {"hidden": [16, 16], "heads": [2], "latent": 8, "epochs": 4, "lr": 0.01},
        "prepare": {"n_hvg": 40, "n_graph_genes": 30},
        "cluster": {"min_cluster_sizes": [5], "min_samples": [3]},
    }
    config = pipeline.resolve_config("cellvgae", "quick", tiny)
    run = Run.create_at(tmp_path / "run", model="cellvgae")
    pipeline.execute(toy_counts(), config, run=run)
    epochs = run.events("epoch")
    assert epochs and sum(beats) >= len(epochs)  # the running status was refreshed at every epoch
    assert run.state == "done"


def test_a_stopped_runs_note_names_the_weights_its_results_come_from():
    from scgraph_core.pipeline import stop_note

    assert "untrained" in stop_note({"epochs_run": 0, "best_epoch": 0})
    assert "before any checkpoint was scored" in stop_note({"epochs_run": 1, "best_epoch": 0})
    assert "best checkpoint (epoch 20)" in stop_note({"epochs_run": 37, "best_epoch": 20})
    assert "last (and best) epoch" in stop_note({"epochs_run": 37, "best_epoch": 37})
    # a model that keeps no checkpoints (AttentionAE-sc's DEC) makes no claim about one
    note = stop_note({"epochs_run": 12})
    assert "after 12 epoch(s)" in note and "checkpoint" not in note
