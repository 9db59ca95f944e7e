"""What one browser session has chosen: the dataset, the configuration being edited, the active run.

Everything lives in ``st.session_state`` under a few keys; runs themselves live on disk (the run store),
so a second browser loses nothing but these choices. A new session takes them from the address
(``url.restore``: a reload keeps them), else opens on the built-in demo with the newest running run
(else the newest finished one) active.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from scgraph_core import data
from scgraph_core.runs import RunInfo, RunStore

DATASET = "dataset"
CONFIG = "config"
ACTIVE = "active_run"
_GENERATION = "_active_run_generation"

DEMO_SOURCE: dict[str, Any] = {
    "path": data.DEMO_PATH,
    "orientation": "auto",
    "format": None,
    "name": "PBMC 68k reduced (built-in demo)",
}


def store() -> RunStore:
    """The run store ($SCGRAPH_HOME/runs); read fresh each time so tests can point it elsewhere."""
    return RunStore()


def dataset_source() -> dict[str, Any]:
    if DATASET not in st.session_state:
        st.session_state[DATASET] = dict(DEMO_SOURCE)
    return st.session_state[DATASET]


def set_dataset_source(source: dict[str, Any]) -> None:
    old = st.session_state.get(DATASET)
    st.session_state[DATASET] = dict(source)
    if old is None or old.get("path") != source.get("path"):
        # A new dataset: its label column and gene filters are its own.
        cfg = config_state()
        cfg["label_key"] = None
        cfg["label_key_set"] = False


def is_demo(source: dict[str, Any] | None = None) -> bool:
    return (source or dataset_source()).get("path") == data.DEMO_PATH


def config_state() -> dict[str, Any]:
    """The configuration being edited: model, preset, per-section overrides, label column."""
    if CONFIG not in st.session_state:
        st.session_state[CONFIG] = {
            "model": "cellvgae",
            "preset": "quick",
            "overrides": {},
            "label_key": None,
            "label_key_set": False,
            "run_name": "",
        }
    return st.session_state[CONFIG]


def overrides(section: str) -> dict[str, Any]:
    return config_state()["overrides"].setdefault(section, {})


def runs() -> list[RunInfo]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # folders that are not runs; damaged runs are listed
        return store().list()


def default_run(infos: list[RunInfo]) -> str | None:
    """The newest running (or queued) run, else the newest sound run that has a result."""
    for info in infos:
        if info.state in ("running", "queued"):
            return info.id
    for info in infos:
        if not info.damaged and (info.path / "result.h5ad").exists():
            return info.id
    return None


def active_run_id() -> str | None:
    """The active run's id, kept valid: a deleted run falls back to the default."""
    infos = runs()
    ids = {i.id for i in infos}
    current = st.session_state.get(ACTIVE)
    if current not in ids:
        current = default_run(infos)
        set_active_run(current)
    return current


def set_active_run(run_id: str | None) -> None:
    if st.session_state.get(ACTIVE) != run_id:
        st.session_state[_GENERATION] = st.session_state.get(_GENERATION, 0) + 1
    st.session_state[ACTIVE] = run_id


def run_picker_key(base: str) -> str:
    """The widget key of a run list that shows and picks the active run (the sidebar's, the Training page's).

    It changes whenever the active run changes. Each rerun carries every widget value the browser holds,
    and a browser that has not yet drawn the newest page still holds the previous active run in these lists:
    with one key for good, that value read as a fresh pick (for example when a live view's timer fired just
    after a pick in the sidebar, the Training page's list sent the run it still showed and took the active
    run back). Under a new key the old list is another widget, and :func:`pick_run_from` ignores it."""
    return f"{base}:{st.session_state.get(_GENERATION, 0)}"


def pick_run_from(key: str) -> None:
    """``on_change`` of a run list made with ``key = run_picker_key(...)``: a pick in the list on show moves
    the active run; a value from a list drawn before the active run last changed is an echo, not a pick."""
    if key != run_picker_key(key.rsplit(":", 1)[0]):
        return
    pick_run(st.session_state.get(key))


def pick_run(value: Any) -> None:
    """Make ``value`` the active run if it names a listed run; anything else leaves the active run.

    A run list hands back what the browser sent, which is the label it last showed. A run's label
    changes when it stops or is renamed, and a label no option has any more comes back as the label
    itself: taken as a pick, it made the active run fall back to the previous finished one after Stop.
    """
    if isinstance(value, str) and any(info.id == value for info in runs()):
        set_active_run(value)
