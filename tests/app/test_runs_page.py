"""The Runs page: every run on disk with status, model, dataset, settings, scores and date; open,
rename, delete, downloads."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import assert_clean, open_page, texts


def test_every_run_is_listed_with_its_settings_and_scores(app_home):
    at = open_page("runs")
    assert_clean(at)
    table = at.dataframe[0].value
    assert set(app_home.runs.values()) <= set(table["id"])
    row = table[table["id"] == app_home.runs["cellvgae"]].iloc[0]
    k = app_home.store.open(app_home.runs["cellvgae"]).config["graph"]["k"]  # what the run was trained with
    assert (row["status"], row["model"], row["preset"], row["k"]) == ("done", "cellvgae", "quick", k)
    assert row["dataset"] == "toy (hostile labels)" and 0 <= row["ARI"] <= 1
    assert {"created", "epochs", "seed", "NMI", "clusters", "minutes"} <= set(table.columns)


def test_open_makes_the_run_active_and_shows_its_embedding(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("runs")
    at.selectbox(key="runs_pick").set_value(run_id).run()
    at.button(key="run_open").click().run()
    assert_clean(at)
    assert at.title[0].value == "Embedding" and at.session_state["active_run"] == run_id


def test_rename_downloads_and_delete(app_home):
    copy = app_home.copy_run("cellvgae", "to be renamed")
    at = open_page("runs")
    at.selectbox(key="runs_pick").set_value(copy).run()
    at.text_input(key=f"rename:{copy}").set_value("renamed <b>run</b>").run()
    at.button(key="run_rename").click().run()
    assert_clean(at)
    assert app_home.store.open(copy).meta["name"] == "renamed <b>run</b>"
    assert "renamed <b>run</b>" in " ".join(texts(at.markdown))  # shown as typed, not as HTML
    labels = {d.label for d in at.get("download_button")}
    assert any(label.startswith("result.h5ad (") for label in labels)
    assert any(label.startswith("All tables and logs (") for label in labels)
    files = sorted(
        p.name
        for p in app_home.store.open(copy).path.iterdir()
        if p.suffix in (".csv", ".json", ".jsonl", ".log")
    )
    assert any(label == f"All tables and logs ({len(files)} files, zip)" for label in labels)
    at.checkbox(key=f"del_sure:{copy}").check().run()
    at.button(key="run_delete").click().run()
    assert not at.exception
    assert copy not in {i.id for i in app_home.store.list()}
    assert copy not in set(at.dataframe[0].value["id"])


# (damaged file, what it holds): JSON of the wrong shape, a text where a time belongs, torn JSON
DAMAGE = [
    ("status.json", "[1, 2]"),
    ("status.json", '"done"'),
    ("status.json", '{"state": "done", "updated": "yesterday"}'),
    ("meta.json", '{"name": "hurt", "created": "yesterday"}'),
    ("meta.json", "{ torn"),
]


@pytest.fixture
def damaged_runs(app_home):
    """Runs with damaged files in the shared store (run id -> damaged file), removed afterwards."""
    made = {}
    for name, content in DAMAGE:
        run = app_home.store.create(model="cellvgae", name="hurt run")
        run.file(name).write_text(content)
        made[run.id] = name
    yield made
    for run_id in made:
        shutil.rmtree(app_home.store.root / run_id, ignore_errors=True)


def _said(elements, *words: str) -> bool:
    return any(all(w in text for w in words) for text in texts(elements))


def test_damaged_runs_are_listed_with_the_reason_and_deleted(app_home, damaged_runs):
    victim = next(iter(damaged_runs))
    # app.py draws the sidebar (active-run picker) and the page list around the first page.
    at = open_page("data", active=victim)
    assert_clean(at)  # no "unexpected problem" in the sidebar or the page list
    assert [s.label for s in at.sidebar.selectbox] == ["Active run"]
    assert _said(at.sidebar.warning, "This run is damaged", "status.json does not hold a JSON object")
    at = open_page("runs", active=victim)
    assert_clean(at)
    rows = at.dataframe[0].value.set_index("id")
    for run_id, name in damaged_runs.items():
        assert rows.loc[run_id, "status"] == "damaged" and name in rows.loc[run_id, "problem"]
    assert rows.loc[app_home.runs["cellvgae"], "problem"] == ""
    assert _said(at.warning, "This run is damaged", "status.json does not hold a JSON object")
    at.checkbox(key=f"del_sure:{victim}").check().run()
    at.button(key="run_delete").click().run()
    assert_clean(at)
    assert victim not in {i.id for i in app_home.store.list()}
    assert victim not in set(at.dataframe[0].value["id"])


def _sidebar_alone() -> None:
    from scgraph_app import sidebar

    sidebar.draw()


def test_the_sidebar_deletes_a_damaged_active_run(app_home, damaged_runs):
    victim = next(run_id for run_id, name in damaged_runs.items() if name == "meta.json")
    at = open_page("data", active=victim)
    assert_clean(at)
    assert _said(at.sidebar.warning, "This run is damaged", "'created' should be a time")
    # AppTest captures app.py's sidebar on the first run only, so the clicks go to the sidebar alone.
    at = AppTest.from_function(_sidebar_alone, default_timeout=60)
    at.session_state["active_run"] = victim
    at.run()
    at.sidebar.checkbox(key=f"sidebar_del_sure:{victim}").check().run()
    at.sidebar.button(key="sidebar_delete").click().run()
    assert_clean(at)
    assert victim not in {i.id for i in app_home.store.list()}
    assert at.session_state["active_run"] != victim


@pytest.mark.parametrize("page", ["training", "embedding"])
def test_other_pages_show_a_damaged_active_run_without_an_error(app_home, damaged_runs, page):
    victim = next(iter(damaged_runs))
    at = open_page(page, active=victim)
    assert_clean(at)
    assert _said(at.warning, "status.json does not hold a JSON object")


def test_a_run_that_failed_after_training_is_finished_from_the_page(tmp_path, monkeypatch):
    """The write failed (a full disk); the weights were kept; Finish writes the result without training."""
    import errno
    import time

    import anndata as ad

    from scgraph_core import pipeline, runs
    from scgraph_core.errors import RunError
    from scgraph_core.models import base
    from scgraph_core.runs import RunStore
    from tests.helpers import toy_counts

    home = tmp_path / "home"
    monkeypatch.setenv("SCGRAPH_HOME", str(home))
    data_file = tmp_path / "toy.h5ad"
    runs.write_h5ad(toy_counts(n_cells=150), data_file)
    config = pipeline.resolve_config("cellvgae", "quick", base.get("cellvgae").smoke, label_key="celltype")
    record = {**config.to_dict(), "input": {"path": str(data_file), "orientation": "auto", "format": None}}
    run = RunStore().create(model="cellvgae", name="disk filled", dataset="toy", config=record)

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(ad.AnnData, "write_h5ad", full_disk)
        with pytest.raises(RunError, match="no space left on device"):
            pipeline.run_folder(run)
    assert run.state == "failed" and not run.file("result.h5ad").exists()

    at = open_page("runs")
    at.selectbox(key="runs_pick").set_value(run.id).run()
    assert "runs finish" in texts(at.error)[0]
    at.button(key="run_finish").click().run()
    assert not at.exception
    deadline = time.time() + 240
    while run.state != "done" and time.time() < deadline:
        time.sleep(1)
    assert run.state == "done", run.status
    assert run.file("result.h5ad").is_file()
    at.run()
    assert "run_finish" not in {b.key for b in at.button}


def test_the_command_line_of_a_run_is_shown(app_home):
    run_id = app_home.runs["cellvgae"]
    at = open_page("runs")
    at.selectbox(key="runs_pick").set_value(run_id).run()
    assert_clean(at)
    codes = [c.value for c in at.code]
    assert any(c.startswith("python -m scgraph_core train --model cellvgae --preset quick") for c in codes)
