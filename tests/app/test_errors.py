"""Any exception inside a page becomes a readable message; the sidebar and other pages keep working."""

from __future__ import annotations

import shutil

from tests.app.conftest import open_page, texts


def test_a_damaged_result_is_a_message_not_a_traceback(app_home):
    broken = app_home.copy_run("cellvgae", "damaged copy")
    (app_home.store.open(broken).file("result.h5ad")).write_bytes(b"not an h5ad file")
    try:
        for page in ("embedding", "attention", "markers", "expression"):
            at = open_page(page, active=broken)
            assert not at.exception, page
            message = texts(at.error)[0]
            assert "cannot be read" in message and "Runs page" in message, page
        # The sidebar (drawn by app.py around every page) still works with the damaged run active.
        at = open_page("data", active=broken)
        assert not at.exception and [s.label for s in at.sidebar.selectbox] == ["Active run"]
        # Another run still opens.
        at = open_page("embedding", active=app_home.runs["cellvgae"])
        assert not at.exception and not at.error
    finally:
        shutil.rmtree(app_home.store.open(broken).path)


def test_an_unexpected_error_shows_its_details_in_a_collapsed_box(app_home, monkeypatch):
    from scgraph_core import plots

    def broken_figure(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(plots, "embedding_scatter", broken_figure)
    at = open_page("embedding", active=app_home.runs["cellvgae"])
    assert not at.exception
    message = texts(at.error)[0]
    assert "unexpected problem" in message and "ZeroDivisionError" in message
    assert any(e.label == "Technical details" for e in at.expander)
    # The rest of the page (scores) is still drawn.
    assert at.dataframe
