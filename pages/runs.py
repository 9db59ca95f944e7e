"""Runs: every run on disk with its status, settings and scores; open, rename, stop, delete, download."""

from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import streamlit as st

from scgraph_app import state, ui
from scgraph_core import jobs
from scgraph_core.__main__ import command_line
from scgraph_core.errors import RunError, ScgraphError
from scgraph_core.runs import Run


def _number(value):
    """A number from a run's JSON file, or None: the files are read, never trusted."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _section(record: dict, key: str) -> dict:
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def _object(run: Run, name: str) -> dict:
    """A JSON object file of the run ({} when it is missing or damaged)."""
    try:
        return run.read_object(name) or {}
    except RunError:
        return {}


ui.header(
    "Runs", "Every training kept on disk: open one to explore it, manage it, or download its results.", "runs"
)

PICK = "runs_pick"

with ui.guard("the run list"):
    infos = state.runs()
    if not infos:
        ui.empty_state(
            "No runs on disk yet: train a model first.", "Go to Training", "training", key="runs-empty"
        )
    rows = []
    for info in infos:
        run = Run(info.path)
        cfg = run.config
        m = _object(run, "metrics.json")
        seconds = _number(m.get("seconds_total"))
        rows.append(
            {
                "name": info.name,
                "status": info.state,
                "model": info.model,
                "dataset": info.dataset,
                "created": pd.Timestamp(info.created, unit="s", tz="UTC").tz_convert(None)
                if info.created
                else pd.NaT,
                "preset": cfg["preset"] if isinstance(cfg.get("preset"), str) else "",
                "epochs": _number(m.get("epochs_run", _section(cfg, "model_params").get("epochs"))),
                "k": _number(_section(cfg, "graph").get("k")),
                "seed": _number(_section(cfg, "train").get("seed")),
                "ARI": _number(m.get("ari")),
                "NMI": _number(m.get("nmi")),
                "clusters": _number(m.get("n_clusters")),
                "minutes": seconds / 60.0 if seconds is not None else None,
                "problem": info.damage,
                "id": info.id,
            }
        )
    table = pd.DataFrame(rows)
    event = st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key="runs_table",
        column_config={
            "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
            "ARI": st.column_config.NumberColumn(
                format="%.3f", help="Agreement of the clusters with the known cell types."
            ),
            "NMI": st.column_config.NumberColumn(format="%.3f"),
            "minutes": st.column_config.NumberColumn(
                "minutes", format="%.1f", help="Wall time of the whole run."
            ),
            "problem": st.column_config.TextColumn(
                "problem",
                help="Why a damaged run's files cannot be trusted; pick it below to delete it.",
            ),
            "id": st.column_config.TextColumn("folder", help="The run's folder name in the run store."),
        },
    )
    damaged = sum(i.damaged for i in infos)
    st.caption(
        f"{len(infos)} run(s) in {ui.md(state.store().root)}"
        + (f", {damaged} of them damaged" if damaged else "")
        + ". Click a row to manage that run."
    )
    picked_rows = (event or {}).get("selection", {}).get("rows", []) if event else []
    ids = [i.id for i in infos]
    if picked_rows:
        st.session_state[PICK] = ids[picked_rows[0]]
    if st.session_state.get(PICK) not in ids:
        active = state.active_run_id()
        st.session_state[PICK] = active if active in ids else ids[0]
    by_id = {i.id: i for i in infos}
    labels = ui.run_labels(infos, lambda i: f"{i.name} · {i.model} · {i.state} · {ui.fmt_time(i.created)}")
    run_id = st.selectbox(
        "Run to manage",
        ids,
        key=PICK,
        help="The run the buttons below act on (clicking a row of the table picks it too).",
        format_func=lambda rid: labels.get(rid, str(rid)),
    )

with ui.guard("the run's actions"):
    info = by_id[run_id]
    run = state.store().open(run_id)
    status = jobs.status(run)
    shown = info.state if info.state == "damaged" else status["state"]
    st.markdown(f"### {ui.STATE_ICONS.get(shown, '')} {ui.md(info.name)}")
    message = status.get("message") or ""
    if info.damaged:
        st.warning(
            f"**This run is damaged:** {ui.md(info.damage)} Its files cannot be trusted; delete it "
            "(the other runs are not affected).",
            icon=":material/report:",
        )
    elif status["state"] == "failed":
        st.error(ui.md(message), icon=":material/error:")
        if (
            run.saved_stages()
            and not run.file("result.h5ad").exists()
            and st.button(
                "Finish from the saved weights",
                key="run_finish",
                type="primary",
                icon=":material/play_arrow:",
                help="Training finished before the failure and its weights are saved: read the data again, "
                "cluster, interpret and write the result without training again (runs finish on the command "
                "line). Fix the cause first (for example free disk space).",
            )
        ):
            jobs.finish(run)
            st.toast("Finishing in the background; the run's status updates here.")
            st.rerun()
    elif message:
        st.caption(f"{status['state']}: {ui.md(message)}")
    has_result = run.file("result.h5ad").exists()
    c = st.columns(4)
    if c[0].button(
        "Open",
        type="primary",
        key="run_open",
        disabled=not has_result,
        icon=":material/open_in_new:",
        help="Make this the active run and show its embedding.",
    ):
        state.set_active_run(run.id)
        st.switch_page(ui.PAGES["embedding"])
    running = status.get("state") in ("queued", "running")
    if c[1].button(
        "Watch training", key="run_watch", icon=":material/monitoring:", help="Show its live progress."
    ):
        state.set_active_run(run.id)
        st.switch_page(ui.PAGES["training"])
    if c[2].button(
        "Stop",
        key="run_stop",
        disabled=not running or run.stop_requested(),
        icon=":material/stop:",
        help="Stop after the current epoch; the best checkpoint is kept.",
    ):
        jobs.stop(run)
        st.toast("Stop requested; the run ends after its current epoch.")
        st.rerun()
    with c[3].popover(
        "Delete",
        icon=":material/delete:",
        disabled=run.alive(status),
        help="Remove the run folder from disk.",
    ):
        st.write("This removes the run's folder and everything in it.")
        sure = st.checkbox(
            "Yes, delete this run", key=f"del_sure:{run.id}", help="Deleting cannot be undone."
        )
        if st.button("Delete for good", type="primary", key="run_delete", disabled=not sure):
            state.store().delete(run.id)
            st.session_state.pop(PICK, None)
            if st.session_state.get(state.ACTIVE) == run.id:
                state.set_active_run(None)
            st.toast("Run deleted.")
            st.rerun()

    if not info.damaged and run.config.get("model"):
        with st.expander("Command line for this run", icon=":material/terminal:"):
            try:
                st.code(command_line(run.config), language="bash")
                st.caption(
                    "Trains the same configuration again from a terminal in the scgraph folder (only the settings "
                    "that differ from the preset are written)."
                )
            except ScgraphError as exc:
                st.caption(f"No command line for this run: {ui.md(str(exc))}")

    r = st.columns([3, 1])
    new_name = r[0].text_input(
        "Rename",
        value=info.name,
        key=f"rename:{run.id}",
        max_chars=120,
        disabled=info.damaged,
        help="The name shown in the run lists; the folder keeps its id. A damaged run cannot be renamed.",
    )
    r[1].write("")
    if r[1].button(
        "Save name", key="run_rename", disabled=info.damaged or new_name.strip() == run.meta.get("name", "")
    ):
        state.store().rename(run.id, new_name)
        st.toast("Renamed.")
        st.rerun()

with ui.guard("the downloads"):
    st.markdown("**Downloads**")
    files = sorted(
        p.name for p in run.path.iterdir() if p.is_file() and p.suffix in (".csv", ".json", ".jsonl", ".log")
    )
    d = st.columns(3)
    if has_result:
        result_path = run.file("result.h5ad")
        d[0].download_button(
            f"result.h5ad ({result_path.stat().st_size / 2**20:.1f} MB)",
            data=ui.on_click(lambda: result_path.read_bytes(), "result.h5ad"),
            file_name=f"{run.id}.h5ad",
            mime="application/octet-stream",
            key="dl_h5ad",
            help="The AnnData with every result; opens in scanpy (sc.read_h5ad) and cellxgene.",
            icon=":material/download:",
        )

    def tables_zip() -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in files:
                zf.write(run.file(name), arcname=f"{run.id}/{name}")
        return buf.getvalue()

    if files:
        d[1].download_button(
            f"All tables and logs ({len(files)} files, zip)",
            data=ui.on_click(tables_zip, "the zip of tables and logs"),
            file_name=f"{run.id}_tables.zip",
            mime="application/zip",
            key="dl_zip",
            icon=":material/folder_zip:",
        )
        one = d[2].selectbox(
            "One file",
            files,
            key=f"one_file:{run.id}",
            label_visibility="collapsed",
            help="A single table or log of the run folder.",
        )
        d[2].download_button(
            f"Download {one}",
            data=run.file(one).read_bytes(),
            file_name=f"{run.id}_{one}",
            mime="text/csv" if one.endswith(".csv") else "application/json",
            key="dl_one",
        )
    with st.expander("Settings of this run (config.json)"):
        cfg = dict(run.config or {})
        st.json(cfg, expanded=1)
        st.download_button(
            "config.json",
            json.dumps(cfg, indent=2),
            file_name=f"{run.id}_config.json",
            mime="application/json",
            key="dl_cfg",
        )
    metrics = _object(run, "metrics.json")
    if metrics:
        with st.expander("Scores and timings (metrics.json)"):
            st.json(metrics, expanded=1)
