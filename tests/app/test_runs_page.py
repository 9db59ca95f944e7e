"""The Runs page: every run on disk with status, model, dataset, settings, scores and date; open,
rename, delete, downloads."""

from __future__ import annotations

from tests.app.conftest import assert_clean, open_page, texts


def test_every_run_is_listed_with_its_settings_and_scores(app_home):
    at = open_page("runs")
    assert_clean(at)
    table = at.dataframe[0].value
    assert set(app_home.runs.values()) <= set(table["id"])
    row = table[table["id"] == app_home.runs["cellvgae"]].iloc[0]
    assert (row["status"], row["model"], row["preset"], row["k"]) == ("done", "cellvgae", "quick", 5)
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
