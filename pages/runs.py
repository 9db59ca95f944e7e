"""Runs: every run on disk with its status, settings and scores; open, rename, stop, delete, download."""

from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import streamlit as st

from scgraph_app import state, ui
from scgraph_core import jobs

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
        run = state.store().open(info.id)
        cfg = run.config or {}
        m = run.read_json("metrics.json", {}) or {}
        model_params = cfg.get("model_params") or {}
        rows.append(
            {
                "name": info.name,
                "status": jobs.status(run).get("state", info.state),
                "model": info.model,
                "dataset": info.dataset,
                "created": pd.Timestamp(info.created, unit="s", tz="UTC").tz_convert(None)
                if info.created
                else pd.NaT,
                "preset": cfg.get("preset", ""),
                "epochs": m.get("epochs_run", model_params.get("epochs")),
                "k": (cfg.get("graph") or {}).get("k"),
                "seed": (cfg.get("train") or {}).get("seed"),
                "ARI": m.get("ari"),
                "NMI": m.get("nmi"),
                "clusters": m.get("n_clusters"),
                "minutes": (m["seconds_total"] / 60.0)
                if isinstance(m.get("seconds_total"), (int, float))
                else None,
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
            "id": st.column_config.TextColumn("folder", help="The run's folder name in the run store."),
        },
    )
    st.caption(f"{len(infos)} run(s) in {ui.md(state.store().root)}. Click a row to manage that run.")
    picked_rows = (event or {}).get("selection", {}).get("rows", []) if event else []
    ids = [i.id for i in infos]
    if picked_rows:
        st.session_state[PICK] = ids[picked_rows[0]]
    if st.session_state.get(PICK) not in ids:
        active = state.active_run_id()
        st.session_state[PICK] = active if active in ids else ids[0]
    by_id = {i.id: i for i in infos}
    run_id = st.selectbox(
        "Run to manage",
        ids,
        key=PICK,
        help="The run the buttons below act on (clicking a row of the table picks it too).",
        format_func=lambda rid: (
            f"{by_id[rid].name} · {by_id[rid].model} · {by_id[rid].state} · {ui.fmt_time(by_id[rid].created)}"
        ),
    )

with ui.guard("the run's actions"):
    run = state.store().open(run_id)
    status = jobs.status(run)
    st.markdown(f"### {ui.STATE_ICONS.get(status.get('state'), '')} {ui.md(run.meta.get('name', run.id))}")
    message = status.get("message") or ""
    if status.get("state") == "failed":
        st.error(ui.md(message), icon=":material/error:")
    elif message:
        st.caption(f"{status.get('state')}: {ui.md(message)}")
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
        "Delete", icon=":material/delete:", disabled=running, help="Remove the run folder from disk."
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

    r = st.columns([3, 1])
    new_name = r[0].text_input(
        "Rename",
        value=run.meta.get("name", run.id),
        key=f"rename:{run.id}",
        max_chars=120,
        help="The name shown in the run lists; the folder keeps its id.",
    )
    r[1].write("")
    if r[1].button("Save name", key="run_rename", disabled=new_name.strip() == run.meta.get("name", "")):
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
            data=lambda: result_path.read_bytes(),
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
            data=tables_zip,
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
    metrics = run.read_json("metrics.json", {}) or {}
    if metrics:
        with st.expander("Scores and timings (metrics.json)"):
            st.json(metrics, expanded=1)
