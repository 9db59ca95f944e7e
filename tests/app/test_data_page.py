"""The Data page: the demo preselected, its summary and QC; uploads; server paths; readable errors."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from tests.app.conftest import assert_clean, open_page, texts
from tests.helpers import toy_counts


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_the_demo_is_preselected_and_summarised():
    at = open_page("data")
    assert_clean(at)
    assert at.title[0].value == "Data"
    assert at.radio[0].value == "demo"
    values = metrics(at)
    assert values["cells"] == "700" and values["genes"] == "765"
    assert values["raw counts"] == "no"
    assert any("log-normalised" in c for c in texts(at.caption))
    columns = at.dataframe[0].value["column"].tolist()
    assert "bulk_labels" in columns and "percent_mito" in columns
    # QC histograms (counts, genes, mitochondrial share from the file's columns) are drawn.
    assert len(at.get("plotly_chart")) == 1
    assert any("mitochondrial" in c for c in texts(at.caption))
    # The label column defaults to the demo's cell types; the teaching box is there, collapsed.
    label = next(s for s in at.selectbox if s.label.startswith("Known cell types"))
    assert label.value == "celltype"
    assert any("count matrix" in e.label for e in at.expander)


def test_an_uploaded_csv_is_read_and_its_qc_computed_from_counts():
    adata = toy_counts(n_cells=80, n_genes=40)
    table = pd.DataFrame(adata.X.toarray().astype(int), index=adata.obs_names, columns=adata.var_names)
    table.columns = [f"MT-{c}" if i < 3 else c for i, c in enumerate(table.columns)]
    buf = io.StringIO()
    table.to_csv(buf)
    at = open_page("data")
    at.radio[0].set_value("upload").run()
    at.file_uploader[0].set_value(("toy.csv", buf.getvalue().encode(), "text/csv")).run()
    assert_clean(at)
    values = metrics(at)
    assert values["cells"] == "80" and values["genes"] == "40" and values["raw counts"] == "yes"
    assert at.session_state["dataset"]["name"] == "toy.csv"
    assert any("counts per cell (from the raw counts in X)" in c for c in texts(at.caption))
    assert any("3 mitochondrial genes" in c for c in texts(at.caption))


def test_a_broken_upload_shows_what_is_wrong_and_the_page_keeps_working():
    at = open_page("data")
    at.radio[0].set_value("upload").run()
    at.file_uploader[0].set_value(
        ("cells.h5ad", b"this is not an HDF5 file", "application/octet-stream")
    ).run()
    assert not at.exception
    assert at.error, "the reader's message should be shown"
    message = texts(at.error)[0]
    assert "not an HDF5 file" in message and "could not be shown" in message
    # Back to the demo in one click.
    at.radio[0].set_value("demo").run()
    at.button(key="use_demo").click().run()
    assert_clean(at)
    assert metrics(at)["cells"] == "700"


def test_a_missing_server_path_is_explained(tmp_path):
    at = open_page("data")
    at.radio[0].set_value("path").run()
    at.text_input(key="data_path").set_value(str(tmp_path / "nothing.h5ad")).run()
    at.button(key="load_path").click().run()
    assert not at.exception
    assert "no dataset this server can open" in texts(at.error)[0]


def test_server_files_outside_the_data_roots_are_never_read(tmp_path, monkeypatch):
    """/etc/passwd, a planted .env and a file outside the roots: the same refusal, no content, demo kept."""
    root = tmp_path / "data"
    root.mkdir()
    (root / ".env").write_text("db_password=hunter2\n")
    outside = tmp_path / "other_user_result.csv"
    outside.write_text("gene,c1\nsecret_row_hunter2,1\n")
    monkeypatch.setenv("SCGRAPH_DATA_ROOTS", str(root))
    at = open_page("data")
    at.radio[0].set_value("path").run()
    answers = []
    for typed in ("/etc/passwd", str(root / ".env"), str(outside), str(root / "absent.h5ad")):
        at.text_input(key="data_path").set_value(typed).run()
        at.button(key="load_path").click().run()
        assert not at.exception
        shown = " ".join(texts(at.error) + texts(at.caption) + texts(at.markdown))
        assert "hunter2" not in shown and "root:x:0" not in shown
        answers.append(texts(at.error)[0].replace(repr(typed), "<path>"))
        assert at.session_state["dataset"]["path"] == "builtin:pbmc68k_reduced"  # nothing was loaded
    assert len(set(answers)) == 1


def test_preprocessing_choices_are_kept_as_overrides_of_the_preset():
    at = open_page("data")
    scale = next(s for s in at.selectbox if s.label == "Feature scaling")
    assert scale.value == "minmax"
    scale.set_value("zscore").run()
    assert_clean(at)
    assert at.session_state["config"]["overrides"]["prepare"] == {"scale": "zscore"}
    # Leaving the page and coming back keeps the choice.
    at.switch_page("pages/model.py").run()
    at.switch_page("pages/data.py").run()
    assert next(s for s in at.selectbox if s.label == "Feature scaling").value == "zscore"
    np.testing.assert_equal(at.session_state["config"]["preset"], "quick")


def test_numeric_cell_annotations_show_their_distinct_count_not_none():
    at = open_page("data")
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "distinct" in d.value.columns)
    distinct = dict(zip(table["column"], table["distinct"], strict=True))
    assert "None" not in map(str, distinct.values())
    numeric = [name for name, value in distinct.items() if value.endswith("(numeric)")]
    assert numeric, distinct
    assert all(value.split()[0].replace(",", "").isdigit() for value in distinct.values())
