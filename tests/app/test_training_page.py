"""The Training page: Start launches the real background worker; the live view reads the run folder
(progress, ETA, device, memory, loss terms); Stop ends the run and keeps the best checkpoint."""

from __future__ import annotations

import os
import signal
import time

import pytest

from scgraph_core import jobs
from scgraph_core.models import base
from tests.app.conftest import assert_clean, open_page, plotly_array, plotly_figures, texts
from tests.helpers import toy_counts


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def toy_file(tmp_path):
    path = tmp_path / "toy.h5ad"
    toy_counts(n_cells=120).write_h5ad(path)
    return {"path": str(path), "orientation": "auto", "format": None, "name": "toy.h5ad", "kind": "path"}


def test_start_watch_and_stop_a_background_run(app_home, toy_file):
    tiny = dict(base.get("cellvgae").smoke)
    tiny["model"] = {**tiny["model"], "epochs": 3000}  # long enough to be stopped mid-way
    config = {
        "model": "cellvgae",
        "preset": "quick",
        "overrides": tiny,
        "label_key": "celltype",
        "label_key_set": True,
        "run_name": "",
    }
    at = open_page("training", state={"dataset": toy_file, "config": config})
    assert_clean(at)
    before = {i.id for i in app_home.store.list()}
    at.text_input(key="run_name").set_value("started from the page").run()
    at.button(key="start_training").click().run()
    new = [i.id for i in app_home.store.list() if i.id not in before]
    assert len(new) == 1, "Start should create exactly one run"
    run = app_home.store.open(new[0])
    try:
        assert not at.exception
        assert at.session_state["active_run"] == run.id  # the new run is the one watched
        worker = run.read_json("worker.json")
        assert run.meta["name"] == "started from the page" and worker["pid"] > 0
        # Detached: the worker is in its own session, so closing the app does not stop it.
        assert os.getsid(worker["pid"]) != os.getsid(0)
        assert run.config["input"]["path"] == toy_file["path"]
        wait_for(lambda: jobs.progress(run).epoch >= 2, 240, "the first epochs")
        at.run()
        assert_clean(at)
        bars = [p for p in at.get("progress")]
        assert bars and "of 3000" in bars[0].proto.text and "left for training" in bars[0].proto.text
        assert {"elapsed", "per epoch", "device", "precision", "peak memory"} <= {m.label for m in at.metric}
        assert next(m.value for m in at.metric if m.label == "device") == "cpu"
        assert len(at.get("plotly_chart")) >= 1  # the loss terms
        at.button(key=f"stop:{run.id}").click().run()
        assert run.stop_requested()
        # The trainer stops after the current epoch and says so in the event log; it would then cluster
        # the best checkpoint's embedding (the engine's own tests cover that part, it takes half a minute
        # in a fresh process), so the test ends the worker here.
        ended = wait_for(
            lambda: [e for e in run.events("stage_end") if e.get("stopped")], 240, "the trainer to stop"
        )
        assert ended[0]["epochs_run"] < 3000
        at.run()
        assert not at.exception
        assert any(b.label == "Stopping..." for b in at.button)  # the button says it was heard
    finally:
        pid = (run.read_json("worker.json") or {}).get("pid")
        if pid and jobs.worker_alive(run):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: jobs.worker_alive(run) is False, 120, "the worker to exit")
    at.run()
    assert not at.exception
    if jobs.status(run)["state"] == "stopped":  # a fast machine finished before the test ended it
        assert any(w.startswith("Stopped") for w in texts(at.warning))
    else:  # a worker gone without finishing is a readable failure, not a run that seems to go on
        state = jobs.status(run)
        assert any("ended without finishing" in e for e in texts(at.error)), (
            state,
            texts(at.error),
            texts(at.info),
        )


def test_a_finished_run_shows_its_curves_and_links(app_home):
    at = open_page("training", active=app_home.runs["cellvgae"])
    assert_clean(at)
    assert any(s == "Finished." for s in texts(at.success))
    assert len(at.get("plotly_chart")) == 2  # loss terms, validation scores
    assert {"ARI", "NMI", "clusters"} <= set(at.dataframe[-1].value.columns)
    assert {p.proto.label for p in at.get("page_link")} >= {
        "Explore the embedding",
        "Attention",
        "Marker genes",
    }


def test_notes_in_the_metrics_are_shown(app_home):
    run_id = app_home.copy_run("cellvgae", "run with a note")
    run = app_home.store.open(run_id)
    metrics = run.read_json("metrics.json", {})
    run.write_json("metrics.json", {**metrics, "notes": ["DEC merged the 9 Leiden clusters into 3 <b>."]})
    at = open_page("training", active=run_id)
    assert_clean(at)
    assert any("DEC merged the 9 Leiden clusters into 3 <b>." in t for t in texts(at.info))


def test_a_missing_gpu_is_refused_before_starting(app_home, toy_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    config = {
        "model": "cellvgae",
        "preset": "quick",
        "overrides": {"train": {"device": "cuda"}},
        "label_key": None,
        "label_key_set": True,
        "run_name": "",
    }
    before = {i.id for i in app_home.store.list()}
    at = open_page("training", state={"dataset": toy_file, "config": config})
    at.button(key="start_training").click().run()
    assert not at.exception
    assert any("no CUDA GPU is available" in e for e in texts(at.error))
    assert {i.id for i in app_home.store.list()} == before  # no run was created


@pytest.fixture
def fake_running(tmp_path, monkeypatch):
    """A run that reads as training (its status names this test process), in a home of its own, with
    the event log a worker writes up to epoch 3 of 100."""
    from scgraph_core.runs import RunStore

    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path))
    run = RunStore(tmp_path / "runs").create(model="cellvgae", name="watched run", dataset="toy")
    run.set_status("running", "training")
    run.append_event({"kind": "pipeline", "step": "graph"})
    run.append_event({"kind": "pipeline", "step": "train", "device": "cpu", "precision": "float32"})
    run.append_event({"kind": "stage_start", "stage": "train", "epochs": 100})
    for epoch in (1, 2, 3):
        run.append_event(
            {
                "kind": "epoch",
                "stage": "train",
                "epoch": epoch,
                "epochs": 100,
                "loss": 1.0 / epoch,
                "seconds": 0.1,
            }
        )
    return run


def test_the_stop_button_is_not_redrawn_by_the_auto_refreshing_view(fake_running, monkeypatch):
    """A click made while the 1.5 s fragment redraws its own Stop button is lost: the button must live
    outside the fragment, which must still redraw the progress."""
    import streamlit
    from streamlit.delta_generator import DeltaGenerator

    inside: list[bool] = []
    timers: list[float | None] = []
    made_inside: list[str] = []
    real_dg_button, real_st_button = DeltaGenerator.button, streamlit.button

    def fake_fragment(func=None, *, run_every=None):
        timers.append(run_every)

        def wrap(f):
            def run(*args, **kwargs):
                inside.append(True)
                try:
                    return f(*args, **kwargs)
                finally:
                    inside.pop()

            return run

        return wrap if func is None else wrap(func)

    def dg_button(self, label, *args, **kwargs):
        if inside:
            made_inside.append(str(kwargs.get("key", label)))
        return real_dg_button(self, label, *args, **kwargs)

    def st_button(label, *args, **kwargs):
        if inside:
            made_inside.append(str(kwargs.get("key", label)))
        return real_st_button(label, *args, **kwargs)

    monkeypatch.setattr(streamlit, "fragment", fake_fragment)
    monkeypatch.setattr(DeltaGenerator, "button", dg_button)
    monkeypatch.setattr(streamlit, "button", st_button)
    at = open_page("training", active=fake_running.id)
    assert_clean(at)
    assert any(t for t in timers), "the live view should redraw itself on a timer"
    bars = at.get("progress")
    assert bars and "Epoch 3 of 100" in bars[0].proto.text  # the view still draws through the fragment
    assert at.button(key=f"stop:{fake_running.id}").label == "Stop"
    assert made_inside == []


def test_one_click_on_stop_writes_the_request_and_says_so(fake_running):
    at = open_page("training", active=fake_running.id)
    assert_clean(at)
    assert not any("Stop requested" in w for w in texts(at.warning))
    at.button(key=f"stop:{fake_running.id}").click().run()
    assert not at.exception
    assert fake_running.stop_requested()
    assert any("Stop requested" in w for w in texts(at.warning))
    button = at.button(key=f"stop:{fake_running.id}")
    assert button.label == "Stopping..." and button.disabled


def test_a_run_stopped_after_one_epoch_shows_its_loss(tmp_path, monkeypatch):
    """One click on Stop right after the first epoch leaves one point per loss term: drawn as a dot (a
    line of one point is invisible, and the panels looked empty in the browser)."""
    from scgraph_core.runs import RunStore

    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path))
    run = RunStore(tmp_path / "runs").create(model="cellvgae", name="stopped at once", dataset="toy")
    run.append_event({"kind": "stage_start", "stage": "train", "epochs": 5000})
    run.append_event(
        {
            "kind": "epoch",
            "stage": "train",
            "epoch": 1,
            "epochs": 5000,
            "loss": 3.7,
            "losses": {"reconstruction": 3.5, "kl": 0.2},
            "seconds": 2.0,
        }
    )
    run.append_event({"kind": "stage_end", "stage": "train", "epochs_run": 1, "stopped": True})
    run.set_status("stopped", "stopped by request; results are from the best checkpoint")
    at = open_page("training", active=run.id)
    assert_clean(at)
    assert any("Stopped:" in w for w in texts(at.warning))
    (loss,) = plotly_figures(at)  # the loss terms (no validation scores were recorded)
    assert len(loss["data"]) == 3  # loss, reconstruction, kl
    for trace in loss["data"]:
        assert "markers" in trace["mode"] and plotly_array(trace["marker"]["size"]).tolist() == [6]


def step_lines(at) -> list[str]:
    """The step list: the markdown block of '- ' lines that names the worker's steps."""
    for text in texts(at.markdown):
        if "preparing the data" in text:
            return text.split("\n")
    raise AssertionError(f"no step list on the page: {texts(at.markdown)}")


def test_clustering_and_interpreting_are_named_steps_not_a_full_bar(fake_running):
    at = open_page("training", active=fake_running.id)
    lines = step_lines(at)
    assert "**training epochs...**" in next(line for line in lines if "training epochs" in line)
    assert at.get("progress"), "epochs are counted with a bar"
    for step, words in (("cluster", "clustering the embedding"), ("interpret", "interpreting")):
        fake_running.append_event({"kind": "pipeline", "step": step})
        at.run()
        assert_clean(at)
        lines = step_lines(at)
        current = [line for line in lines if line.endswith("...**")]
        assert len(current) == 1 and words in current[0], lines
        done = lines[: lines.index(current[0])]
        assert (
            all(":material/check:" in line for line in done)
            and "training epochs" in done[-1 if step == "cluster" else -2]
        )
        assert not at.get("progress"), "no progress bar pretends clustering or interpreting is done"


def test_a_finished_run_says_how_good_it_is_and_what_to_try_next(app_home):
    run_id = app_home.copy_run("cellvgae", "merged run")
    run = app_home.store.open(run_id)
    metrics = run.read_json("metrics.json", {})
    # As if the clustering had merged the toy's types into one cluster and Leiden did far better.
    run.write_json(
        "metrics.json",
        {**metrics, "ari": 0.05, "n_clusters": 1, "leiden": {"ari": 0.9, "nmi": 0.9, "n_clusters": 3}},
    )
    at = open_page("training", active=run_id)
    assert_clean(at)
    shown = " ".join(texts(at.markdown))
    assert "How good is it?" in shown
    assert "1 cluster for 3 annotated types: the clustering merges types" in shown
    assert "Leiden on the embedding: ARI 0.90" in shown
    assert "What to try next" in shown and "Another clustering of this run scores better" in shown
    assert "Open Embedding" in {p.proto.label for p in at.get("page_link")}


def test_start_is_disabled_with_the_reason_when_the_model_needs_counts_the_data_lacks(app_home):
    from scgraph_core.models import base

    counting = [cls for cls in base.available().values() if cls.requires_counts]
    if not counting:
        pytest.skip("no registered model needs raw counts yet")
    at = open_page("model")  # the built-in demo holds log-normalised values
    at.radio(key="model_pick").set_value(counting[0].title).run()
    at.switch_page("pages/training.py").run()
    assert_clean(at)
    start = at.button(key="start_training")
    assert start.disabled and "needs raw counts" in start.help
    assert any("needs raw counts" in w for w in texts(at.warning))
    at.switch_page("pages/model.py").run()
    at.radio(key="model_pick").set_value("CellVGAE").run()
    at.switch_page("pages/training.py").run()
    assert not at.button(key="start_training").disabled


def test_a_model_that_learns_from_labels_is_started_on_the_annotate_page(app_home):
    from scgraph_core.models import base

    learning = [cls for cls in base.available().values() if cls.uses_labels]
    at = open_page("model")
    at.radio(key="model_pick").set_value(learning[0].title).run()
    at.switch_page("pages/training.py").run()
    assert_clean(at)
    start = at.button(key="start_training")
    assert start.disabled and "Annotate page" in start.help
    assert any(b.key == "train_to_annotate" for b in at.button)


def _home_with_a_done_and_a_running_run(app_home, tmp_path, monkeypatch, name: str = "watched run"):
    """A home of its own: a copy of a finished tiny run, then a newer run that reads as training."""
    import shutil

    from scgraph_core.runs import RunStore

    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path))
    store = RunStore(tmp_path / "runs")
    done = app_home.store.open(app_home.runs["cellvgae"])
    shutil.copytree(done.path, store.root / done.id)
    time.sleep(0.01)
    running = store.create(model="cellvgae", name=name, dataset="toy")
    running.set_status("running", "training")
    return store, done.id, running


def _watch_list(at):
    """The Training page's "Run to watch" list (its key changes with the active run: state.run_picker_key)."""
    return next(s for s in at.main.selectbox if s.label == "Run to watch")


def _active_run_list(at):
    return next(s for s in at.sidebar.selectbox if s.label == "Active run")


def test_a_run_list_drawn_before_the_active_run_changed_does_not_take_it_back(
    app_home, tmp_path, monkeypatch
):
    """Every rerun carries each widget value the browser holds. After a pick, a rerun sent by a browser that
    had not yet drawn the new page (a live view's timer firing) carried a run list still showing the previous
    run, which read as a pick and took the active run back (seen in the browser test: a selection saved into
    the wrong run). Here that rerun is sent for the Training page's list. The sidebar's list is keyed the
    same way (AppTest drops the sidebar after a rerun, so its echo cannot be sent here)."""
    _store, previous, running = _home_with_a_done_and_a_running_run(app_home, tmp_path, monkeypatch)
    assert _active_run_list(open_page("data", active=running.id)).key.startswith("sidebar_run:")
    at = open_page("training", active=running.id)
    assert_clean(at)
    stale_id = _watch_list(at).id
    assert _watch_list(at).value == running.id
    _watch_list(at).set_value(previous).run()  # a pick
    assert at.session_state["active_run"] == previous
    assert _watch_list(at).value == previous and _watch_list(at).id != stale_id
    # The browser's next rerun still holds the list it drew before the pick, showing the running run.
    echo = _watch_list(at)
    echo.id = stale_id
    echo.set_value(running.id)
    at.run()
    assert not at.exception
    assert at.session_state["active_run"] == previous
    assert _watch_list(at).value == previous
    # A pick in the list on show still moves the active run.
    _watch_list(at).set_value(running.id).run()
    assert at.session_state["active_run"] == running.id


def test_a_stale_label_from_the_browser_does_not_move_the_active_run(app_home, tmp_path, monkeypatch):
    """The run lists send back the label the browser last showed. A run's label changes when it stops or
    is renamed (the sidebar reads 'name · model · state', the Training page 'name · model · time'), and a
    label no option has any more came back as the label itself: the callback took it as a pick, and the
    active run fell back to the previous finished run (seen in the browser after Stop). Here the page
    sends the old label after a rename, as the browser does."""
    store, previous, running = _home_with_a_done_and_a_running_run(app_home, tmp_path, monkeypatch)
    at = open_page("training", active=running.id)
    assert_clean(at)
    old = _watch_list(at).options[0]
    assert old.startswith("watched run · ")
    running.set_status("stopped", "stopped by the user")  # no result yet: it is still being written
    store.rename(running.id, "renamed while watched")
    at.run()
    box = _watch_list(at)
    assert box.value == running.id and box.options[0].startswith("renamed while watched · ")
    box.options[0] = old  # the browser still holds the label it showed before the rename
    box.set_value(old)
    at.run()
    assert not at.exception
    assert at.session_state["active_run"] == running.id != previous
    assert _watch_list(at).value == running.id
    # A real pick still moves it.
    _watch_list(at).set_value(previous).run()
    assert at.session_state["active_run"] == previous


def test_runs_that_read_alike_are_told_apart_in_every_run_list(app_home, tmp_path, monkeypatch):
    """Two finished runs with the same name and model (trained twice with the default name): each list's
    labels stay distinct, so picking the second does not pick the first."""
    import shutil

    from scgraph_core.runs import RunStore

    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path))
    store = RunStore(tmp_path / "runs")
    done = app_home.store.open(app_home.runs["cellvgae"])
    first, second = done.id, store.new_id("cellvgae")
    shutil.copytree(done.path, store.root / first)
    shutil.copytree(done.path, store.root / second)
    at = open_page("data", active=first)  # app.py's sidebar is kept in AppTest's tree on the first page
    assert_clean(at)
    box = _active_run_list(at)
    assert len(set(box.options)) == len(box.options) == 2, box.options
    box.set_value(second).run()
    assert at.session_state["active_run"] == second
    for page, pick in (("runs", lambda at: at.selectbox(key="runs_pick")), ("training", _watch_list)):
        at = open_page(page, active=first)
        assert_clean(at)
        box = pick(at)
        assert len(set(box.options)) == len(box.options) == 2, (page, box.options)
