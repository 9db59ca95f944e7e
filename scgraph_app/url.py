"""The browser's address keeps this session's choices, so a reload (or a copied link) restores them.

``?data=path:/srv/data/pbmc.h5ad&model=cellvgae&preset=quick&run=<run id>``: the dataset source (the
demo is left out; an uploaded file is named by its place in the uploads folder, a typed path by the
path), the chosen model and preset, and the active run. No file content ever goes into the address.

An address is typed by whoever holds the link, so it is checked like a typed path: a server path must
be inside the data roots (:mod:`scgraph_core.roots`), an uploaded file inside the uploads folder, a
model and preset must exist, and a run must be on disk and sound. Whatever does not pass is said in
the sidebar, and the session falls back to the demo, the default settings or the newest run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from scgraph_core import data, jobs, roots
from scgraph_core.errors import DataError

from . import config, state, ui

KEYS = ("data", "orient", "fmt", "model", "preset", "run")
ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")
_RESTORED = "_url_restored"
_NOTES = "_url_notes"


# ---- the dataset source <-> one short parameter --------------------------------------------------


def encode_source(source: dict[str, Any]) -> dict[str, str]:
    """The parameters that name ``source`` ({} for the demo, or an upload outside the uploads folder)."""
    if state.is_demo(source):
        return {}
    path = str(source.get("path", ""))
    if source.get("kind") == "upload":
        base = Path(os.path.realpath(jobs.uploads_dir()))
        try:
            rel = Path(os.path.realpath(path)).relative_to(base)
        except ValueError:
            return {}
        out = {"data": f"upload:{rel.as_posix()}"}
    else:
        out = {"data": f"path:{path}"}
    if source.get("orientation", "auto") != "auto":
        out["orient"] = str(source["orientation"])
    if source.get("format"):
        out["fmt"] = str(source["format"])
    return out


def uploaded_file(rel: str) -> Path:
    """The stored upload at ``rel`` inside the uploads folder (links followed), or a DataError."""
    base = Path(os.path.realpath(jobs.uploads_dir()))
    text = rel.strip()
    found: Path | None = None
    if text and "\x00" not in text and not Path(text).is_absolute():
        real = Path(os.path.realpath(base / text))
        try:
            inside = real.relative_to(base)
        except ValueError:
            inside = None
        if inside is not None and inside.parts and not any(p.startswith(".") for p in inside.parts):
            found = real if real.is_file() else None
    if found is None:
        raise DataError(
            "The uploaded file this link names is not on the server any more (or the link does not name "
            "one). Upload the file again on the Data page."
        )
    return found


def decode_source(params: dict[str, str]) -> dict[str, Any]:
    """The dataset source the parameters name, checked; a DataError says what is wrong."""
    text = params.get("data", "")
    kind, _, value = text.partition(":")
    orientation = params.get("orient", "auto")
    fmt = params.get("fmt") or None
    if orientation not in ORIENTATIONS:
        raise DataError(
            f"The link's table orientation {orientation!r} is not one of {', '.join(ORIENTATIONS)}."
        )
    if fmt is not None and fmt not in data.FORMATS:
        raise DataError(f"The link's file format {fmt!r} is not one scgraph reads.")
    if kind == "upload":
        path = uploaded_file(value)
        name = path.name
    elif kind == "path":
        path = roots.resolve(value)  # the same check as a path typed on the Data page
        name = value.strip().rstrip("/").rsplit("/", 1)[-1] or str(path)
    else:
        raise DataError("The link's dataset is neither an uploaded file nor a path on the server.")
    return {"path": str(path), "orientation": orientation, "format": fmt, "name": name, "kind": kind}


# ---- restore once per session, write on every run ------------------------------------------------


def _params() -> dict[str, str]:
    return {k: st.query_params[k] for k in KEYS if k in st.query_params}


def restore() -> None:
    """On a session's first run, take the dataset, model, preset and active run from the address."""
    if st.session_state.get(_RESTORED):
        return
    st.session_state[_RESTORED] = True
    params = _params()
    notes: list[str] = []
    if params.get("data"):
        try:
            state.set_dataset_source(decode_source(params))
        except DataError as exc:
            notes.append(
                f"**The dataset in this link was not loaded:** {ui.md(exc)} The built-in demo is open."
            )
    model, preset = params.get("model"), params.get("preset")
    if model or preset:
        models = config.available_models()
        model = model or state.config_state()["model"]
        if model not in models:
            notes.append(
                f"**The link names a model this server does not have** ({ui.md(model)}); "
                f"{ui.md(state.config_state()['model'])} is chosen."
            )
        else:
            presets = config.presets_of(model)
            if preset and preset not in presets:
                notes.append(
                    f"**The link names a preset {ui.md(models[model].title)} does not have** ({ui.md(preset)}); "
                    f"the {ui.md(presets[0])} preset is chosen."
                )
                preset = None
            config.choose(model, preset or presets[0])
    run_id = params.get("run")
    if run_id:
        by_id = {i.id: i for i in state.runs()}
        info = by_id.get(run_id)
        if info is None:
            notes.append(
                f"**The run in this link is not on this server** ({ui.md(run_id)}): it may have been "
                "deleted. The newest run is shown instead; the Runs page lists every run."
            )
        elif info.damaged:
            notes.append(
                f"**The run in this link is damaged** ({ui.md(info.name)}): {ui.md(info.damage)} The newest "
                "sound run is shown instead; the Runs page deletes damaged runs."
            )
        else:
            state.set_active_run(run_id)
    st.session_state[_NOTES] = notes


def notes() -> list[str]:
    """What the address asked for and did not get (shown in the sidebar until dismissed)."""
    return list(st.session_state.get(_NOTES, []))


def show_notes() -> None:
    found = notes()
    if not found:
        return
    with st.sidebar:
        for note in found:
            st.warning(note, icon=":material/link_off:")
        if st.button("Dismiss", key="url_notes_dismiss", icon=":material/close:"):
            st.session_state[_NOTES] = []
            st.rerun()


def wanted() -> dict[str, str]:
    """The parameters this session's choices make."""
    cfg = state.config_state()
    out = encode_source(state.dataset_source())
    out.update(model=str(cfg["model"]), preset=str(cfg["preset"]))
    run_id = st.session_state.get(state.ACTIVE)
    if run_id:
        out["run"] = str(run_id)
    return out


def sync() -> None:
    """Write the session's choices into the address (other parameters are kept).

    Written on every run, not only when they differ from ``st.query_params``: a rerun restarts from
    the address the browser last sent, which may predate what the previous run wrote.
    """
    if not st.session_state.get(_RESTORED):
        return  # the address has not been read yet: writing now would lose what it asked for
    target = wanted()
    for key in KEYS:
        if key not in target and key in st.query_params:
            del st.query_params[key]
    st.query_params.update(target)
