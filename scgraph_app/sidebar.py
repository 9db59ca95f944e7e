"""The sidebar every page shares: the loaded dataset, the active run (switchable) and the device."""

from __future__ import annotations

import os

import streamlit as st

from scgraph_core import jobs
from scgraph_core.runs import DAMAGED, Run, RunInfo

from . import state, ui

_WIDGET = "sidebar_run"


@st.cache_resource(show_spinner=False)
def device_line() -> str:
    """What the machine offers for training (detected once per server)."""
    from scgraph_core import train

    device = train.resolve_device("auto")
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        return f"GPU: {name}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    cores = os.cpu_count() or 1
    bf16 = "bfloat16 available" if train.precision_name("auto", device) == "bf16" else "float32"
    return f"CPU, {cores} core{'s' if cores != 1 else ''} ({bf16}); no GPU found"


def _label(info) -> str:
    return f"{info.name} · {info.model} · {info.state}"


def _damaged(info: RunInfo) -> None:
    """The active run's files cannot be trusted: say why, and offer to delete it."""
    st.warning(f"**This run is damaged:** {ui.md(info.damage)}", icon=":material/report:")
    if info.state != DAMAGED:
        return  # still training: it is deleted once it has ended
    with st.popover("Delete", icon=":material/delete:", help="Remove the damaged run's folder from disk."):
        st.write("This removes the run's folder and everything in it.")
        sure = st.checkbox("Yes, delete this run", key=f"sidebar_del_sure:{info.id}")
        if st.button("Delete for good", type="primary", key="sidebar_delete", disabled=not sure):
            state.store().delete(info.id)
            state.set_active_run(None)
            st.rerun()


def draw() -> None:
    source = state.dataset_source()
    with st.sidebar:
        st.markdown(f":material/dataset: **Dataset:** {ui.md(source.get('name', source.get('path')))}")
        infos = state.runs()
        active = state.active_run_id()
        if infos:
            ids = [i.id for i in infos]
            by_id = {i.id: i for i in infos}
            labels = ui.run_labels(infos, _label)
            # Set on every run, not only when it differs: the browser then gets the current label too (a run's
            # label changes with its state), rather than keeping the one it showed before.
            key = state.run_picker_key(_WIDGET)
            st.session_state[key] = active
            st.selectbox(
                "Active run",
                ids,
                key=key,
                format_func=lambda rid: labels.get(rid, str(rid)),
                on_change=state.pick_run_from,
                args=(key,),
                help="The run the explore pages (Embedding, Attention, Markers, ...) show. Every run "
                "on disk is listed, newest first; the Runs page manages them.",
            )
            picked = by_id.get(st.session_state.get(key))
            if picked is not None and picked.damaged:
                _damaged(picked)
            running = [i for i in infos if i.state in ("running", "queued")]
            if running:
                st.caption(f":material/progress_activity: {len(running)} run(s) training in the background")
            damaged = sum(i.damaged for i in infos)
            if damaged:
                st.caption(
                    f":material/report: {damaged} damaged run(s): the Runs page says why and deletes them."
                )
        else:
            st.caption("No runs yet: train one on the Training page.")
        ui.figure_format_picker()
        st.caption(f":material/memory: {device_line()}")


def active_run_has(view: str) -> bool:
    """Whether the active run's result lists ``view`` in its manifest (read from the file's header)."""
    run_id = state.active_run_id()
    if run_id is None:
        return False
    return run_has(Run(state.store().root / run_id), view)


def run_has(run: Run, view: str) -> bool:
    """Whether ``run``'s result lists ``view`` in its manifest (read from the file's header)."""
    path = run.file("result.h5ad")
    if not path.exists():
        return False
    return _has_view(str(path), os.stat(path).st_mtime, view)


@st.cache_data(max_entries=64, show_spinner=False)
def _has_view(path: str, stamp: float, view: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f"uns/scgraph/views/{view}" in f
    except OSError:
        return False


def status_of(run: Run) -> dict:
    return jobs.status(run)
