"""The address keeps the dataset, model, preset and active run: a reload (a new session) restores them,
and whatever a link names that the server cannot show is said plainly, with a fallback."""

from __future__ import annotations

import io
import os
import shutil

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from scgraph_core import data, jobs
from scgraph_core.runs import RunStore
from tests.app.conftest import APP, assert_clean, open_page, texts
from tests.helpers import toy_counts

SECRET = "hunter2"


@pytest.fixture(autouse=True)
def every_run_through_app_py(monkeypatch):
    """Run app.py on every AppTest run, as a served app does.

    AppTest forgets between runs that app.py uses st.navigation, sees the pages/ folder and runs a later
    run's page on its own (Streamlit's older multipage layout): no sidebar, and no app.py code around
    the page, which is where the address is written.
    """
    from streamlit.runtime.pages_manager import PagesManager

    real_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture
def home(app_home, tmp_path, monkeypatch):
    """A home of its own holding two sound copies of the trained run, and a data root with a file."""
    runs = tmp_path / "home" / "runs"
    runs.mkdir(parents=True)
    src = app_home.store.open(app_home.runs["cellvgae"]).path
    ids = [src.name, f"{src.name}-b"]
    for run_id in ids:
        shutil.copytree(src, runs / run_id)
    RunStore(runs).rename(ids[1], "second run")  # the sidebar tells runs apart by their names
    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path / "home"))
    root = tmp_path / "data"
    root.mkdir()
    toy_counts(n_cells=120).write_h5ad(root / "toy.h5ad")
    monkeypatch.setenv("SCGRAPH_DATA_ROOTS", str(root))
    return {"runs": ids, "root": root, "tmp": tmp_path}


def reload(at: AppTest) -> AppTest:
    """What a browser reload does: a new session that starts from the address the old one left."""
    fresh = AppTest.from_file(str(APP), default_timeout=180)
    fresh.query_params = dict(at.query_params)
    return fresh.run()


def link(params: dict) -> AppTest:
    fresh = AppTest.from_file(str(APP), default_timeout=180)
    fresh.query_params = dict(params)
    return fresh.run()


def cells(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "cells")


def link_notes(at: AppTest) -> list[str]:
    return texts(at.sidebar.warning)


def test_a_reload_keeps_the_server_path_model_preset_and_run(home):
    at = open_page("data")
    assert_clean(at)
    # The demo is left out of the address; the model, preset and active run are in it.
    assert "data" not in at.query_params
    assert at.query_params["model"] == "cellvgae" and at.query_params["preset"] == "quick"
    assert at.query_params["run"] in home["runs"]
    at.radio(key="data_source_kind").set_value("path").run()
    at.text_input(key="data_path").set_value(str(home["root"] / "toy.h5ad")).run()
    at.button(key="load_path").click().run()
    assert cells(at) == "120"
    assert at.query_params["data"] == f"path:{os.path.realpath(home['root'] / 'toy.h5ad')}"
    at.switch_page("pages/model.py").run()
    at.radio(key="preset_pick:cellvgae").set_value("paper").run()
    assert at.query_params["preset"] == "paper"
    other = next(r for r in home["runs"] if r != at.session_state["active_run"])
    at.sidebar.selectbox[0].set_value(other).run()
    assert at.query_params["run"] == other

    again = reload(at)
    assert_clean(again)
    assert link_notes(again) == []
    source = again.session_state["dataset"]
    assert source["path"] == os.path.realpath(home["root"] / "toy.h5ad") and source["kind"] == "path"
    assert cells(again) == "120"
    assert again.session_state["config"]["model"] == "cellvgae"
    assert again.session_state["config"]["preset"] == "paper"
    assert again.session_state["active_run"] == other
    assert again.sidebar.selectbox[0].value == other
    assert dict(again.query_params) == dict(at.query_params)  # the address is stable across reloads


def test_a_reload_keeps_an_uploaded_file_by_its_place_not_its_content(home):
    adata = toy_counts(n_cells=80, n_genes=40)
    table = pd.DataFrame(adata.X.toarray().astype(int), index=adata.obs_names, columns=adata.var_names)
    buf = io.StringIO()
    table.to_csv(buf)
    at = open_page("data")
    at.radio(key="data_source_kind").set_value("upload").run()
    at.file_uploader[0].set_value(("toy.csv", buf.getvalue().encode(), "text/csv")).run()
    assert cells(at) == "80"
    address = at.query_params["data"]
    assert address.startswith("upload:") and address.endswith("/toy.csv") and len(address) < 60
    assert "cell0" not in "".join(at.query_params.values())  # no file content in the address

    again = reload(at)
    assert_clean(again)
    assert again.session_state["dataset"]["kind"] == "upload"
    assert again.session_state["dataset"]["name"] == "toy.csv"
    assert cells(again) == "80"
    assert again.radio(key="data_source_kind").value == "upload"


def test_a_link_cannot_open_files_outside_the_uploads_folder_or_the_data_roots(home):
    outside = home["tmp"] / "other_user.csv"
    outside.write_text(f"gene,c1\n{SECRET},1\n")
    uploads = jobs.uploads_dir()
    (uploads / "0123abcd").mkdir(parents=True)
    (uploads / "0123abcd" / "planted.csv").symlink_to(outside)  # a link out of the uploads folder
    (uploads / ".hidden").mkdir()
    (uploads / ".hidden" / "x.csv").write_text(f"gene,c1\n{SECRET},1\n")
    (home["root"] / ".env").write_text(f"password={SECRET}\n")
    hostile = [
        "upload:../../../../../../etc/passwd",
        "upload:/etc/passwd",
        f"upload:{outside}",
        "upload:0123abcd/planted.csv",
        "upload:.hidden/x.csv",
        "upload:",
        "path:/etc/passwd",
        f"path:{outside}",
        f"path:{home['root'] / '.env'}",
        f"path:{home['root'] / 'absent.h5ad'}",
        "file:///etc/passwd",
    ]
    for value in hostile:
        at = link({"data": value})
        assert not at.exception, value
        assert at.session_state["dataset"]["path"] == data.DEMO_PATH, value  # the demo, not the file
        notes = link_notes(at)
        assert len(notes) == 1 and "The dataset in this link was not loaded" in notes[0], (value, notes)
        shown = " ".join(texts(at.sidebar.warning) + texts(at.markdown) + texts(at.caption) + texts(at.error))
        assert SECRET not in shown and "root:x:0" not in shown, value
        assert cells(at) == "700"
        assert "data" not in at.query_params  # the address now says what is shown: the demo
    # The sidebar note goes away when dismissed.
    at.button(key="url_notes_dismiss").click().run()
    assert link_notes(at) == []


def test_a_missing_or_damaged_run_in_a_link_falls_back_with_a_message(home):
    sound = open_page("data").session_state["active_run"]
    damaged = home["runs"][1] if sound == home["runs"][0] else home["runs"][0]
    (home["tmp"] / "home" / "runs" / damaged / "status.json").write_text("{ torn")
    for run_id, words in (
        ("cellvgae-20000101-000000-dead", "is not on this server"),
        ("../../etc", "is not on this server"),
        (damaged, "is damaged"),
    ):
        at = link({"run": run_id})
        assert not at.exception, run_id
        assert not at.error, texts(at.error)
        notes = link_notes(at)
        assert len(notes) == 1 and words in notes[0], (run_id, notes)
        assert at.session_state["active_run"] == sound
        assert at.query_params["run"] == sound


def test_an_unknown_model_or_preset_in_a_link_is_said_and_the_defaults_kept(home):
    at = link({"model": "<b>nope</b>", "preset": "paper"})
    assert_clean(at)
    assert any("model this server does not have" in n and "<b>nope</b>" in n for n in link_notes(at))
    assert at.session_state["config"]["model"] == "cellvgae"
    assert at.query_params["model"] == "cellvgae"
    at = link({"model": "cellvgae", "preset": "fastest"})
    assert_clean(at)
    assert any("preset" in n and "fastest" in n for n in link_notes(at))
    assert at.session_state["config"]["preset"] == "quick"
    at = link({"model": "cellvgae", "preset": "paper"})
    assert_clean(at) and link_notes(at) == []
    assert at.session_state["config"]["preset"] == "paper"
