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


def test_a_download_built_on_the_click_fails_with_a_message(tmp_path):
    """Deferred download data runs outside the page's script; a failure must still read as a message."""
    from scgraph_app import ui

    gone = tmp_path / "result.h5ad"
    gone.write_bytes(b"h5")
    build = ui.on_click(gone.read_bytes, "result.h5ad")
    assert build() == b"h5"
    gone.unlink()
    message = build()
    assert isinstance(message, str) and "Traceback" not in message
    assert message.startswith("scgraph could not build result.h5ad: FileNotFoundError")
    assert "Reload the page" in message


def test_every_deferred_download_on_the_pages_is_guarded():
    """A download button whose data is a function (built on the click) passes it through ui.on_click."""
    import ast
    from pathlib import Path

    pages = Path(__file__).resolve().parents[2] / "pages"
    unguarded, deferred = [], 0
    for path in sorted(pages.glob("*.py")):
        tree = ast.parse(path.read_text())
        functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "download_button"):
                continue
            data = next((k.value for k in call.keywords if k.arg == "data"), None)
            data = data if data is not None else (call.args[1] if len(call.args) > 1 else None)
            is_wrapped = isinstance(data, ast.Call) and getattr(data.func, "attr", "") == "on_click"
            is_function = isinstance(data, ast.Lambda) or (
                isinstance(data, ast.Name) and data.id in functions
            )
            deferred += is_wrapped
            if is_function:
                unguarded.append(f"{path.name}:{call.lineno}")
    assert not unguarded, f"deferred downloads outside ui.on_click: {unguarded}"
    assert deferred >= 8
