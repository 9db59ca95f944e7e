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
        st.session_state[ACTIVE] = current
    return current


def set_active_run(run_id: str | None) -> None:
    st.session_state[ACTIVE] = run_id


def pick_run(value: Any) -> None:
    """Make ``value`` the active run if it names a listed run; anything else leaves the active run.

    A run list hands back what the browser sent, which is the label it last showed. A run's label
    changes when it stops or is renamed, and a label no option has any more comes back as the label
    itself: taken as a pick, it made the active run fall back to the previous finished one after Stop.
    """
    if isinstance(value, str) and any(info.id == value for info in runs()):
        set_active_run(value)
