"""Every page explains itself: a collapsed teaching box citing its paper, and help on every control."""

from __future__ import annotations

import pytest

from scgraph_app import teaching
from tests.app.conftest import open_page

PAGES = ["data", "model", "training", "embedding", "attention", "markers", "expression", "imputation", "runs"]
WIDGETS = ("selectbox", "multiselect", "slider", "toggle", "radio", "text_input", "number_input", "checkbox")


@pytest.mark.parametrize("page", PAGES)
def test_teaching_box_and_help_on_every_control(app_home, page):
    role = "scvgae" if page == "imputation" and "scvgae" in app_home.runs else "cellvgae"
    at = open_page(page, active=app_home.runs[role])
    assert not at.exception
    topic = teaching.TOPICS[page]
    boxes = [e for e in at.expander if e.label.endswith(topic["title"])]
    assert boxes, f"{page}: no teaching box"
    text = " ".join(m.value for m in boxes[0].markdown)
    assert topic["papers"] and "Where this comes from" in text
    missing = []
    for kind in WIDGETS:
        for widget in getattr(at, kind):
            if not (widget.help or "").strip():
                missing.append(f"{kind} {widget.label!r}")
    assert not missing, f"{page}: controls without help: {missing}"
