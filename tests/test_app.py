"""The app's first page, run headless with Streamlit's AppTest."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"


def test_demo_page_describes_the_builtin_dataset():
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    values = {m.label: m.value for m in at.metric}
    assert values["cells"] == "700" and values["genes"] == "765"
    assert values["values in X"] == "log-normalised"
    assert "bulk_labels" in at.dataframe[0].value["column"].tolist()
