"""Training: start a run in the background and watch it live (loss terms, validation, ETA, memory)."""

from __future__ import annotations

import streamlit as st

from scgraph_app import cache, config, state, ui
from scgraph_core import estimate, jobs, plots
from scgraph_core.errors import ConfigError, ScgraphError
from scgraph_core.models import base as models
from scgraph_core.runs import Run

ui.header(
    "Training",
    "Training runs in the background: switch pages, refresh or close the tab, it keeps going.",
    "training",
)

REFRESH_S = 1.5
WATCH = "watch_run"
_STOP_ERROR = "_stop_error"

# ---- start a run -------------------------------------------------------------------------------
with ui.guard("starting a run"):
    cfg = state.config_state()
    source = state.dataset_source()
    cls = models.get(cfg["model"])
    with st.container(border=True):
        st.markdown(
            f"**Ready to train:** {ui.md(cls.title)}, {ui.md(cfg['preset'])} preset, on "
            f"**{ui.md(source.get('name', source.get('path')))}**"
            + (
                f" ({sum(len(v) for v in cfg['overrides'].values())} setting(s) changed)"
                if any(cfg["overrides"].values())
                else ""
            )
        )
        cols = st.columns([3, 1])
        name = cols[0].text_input(
            "Run name (optional)",
            key="run_name",
            placeholder=f"{cls.title} {cfg['preset']} on {source.get('name', '')}"[:100],
            help="A name for the Runs list; leave empty for one made from the model, preset and dataset.",
        )
        blocked = None
        if cls.uses_labels:
            blocked = (
                f"{cls.title} learns from the cell labels you have: choose the label column, how many labels to "
                "hide for scoring, and start it on the Annotate page."
            )
        elif cls.requires_counts:
            try:
                has_counts = cache.overview(source)["has_counts"]
            except Exception:  # the Data page explains a file that cannot be read; Start says it again
                has_counts = True
            if not has_counts:
                blocked = (
                    f"{cls.title} needs raw counts and the loaded dataset has none (no whole-number X and no "
                    "'counts' layer). Load a raw-count file on the Data page or choose CellVGAE on the Model "
                    "& graph page."
                )
        cols[1].write("")
        start = cols[1].button(
            "Start training",
            type="primary",
            key="start_training",
            icon=":material/play_arrow:",
            disabled=blocked is not None,
            help=blocked,
        )
        if blocked is not None:
            st.warning(ui.md(blocked), icon=":material/block:")
            if cls.uses_labels:
                ui.go_button("Go to Annotate", "annotate", key="train_to_annotate", icon=":material/label:")
        if start:
            from scgraph_core import train

            adata = cache.dataset(source)
            resolved = config.current(config.label_key_for(adata))
            train.resolve_device(resolved.train.device)  # a missing GPU is said here, not in the log
            if cls.requires_counts:
                overview = cache.overview(source)
                if not overview["has_counts"]:
                    raise ConfigError(
                        f"{cls.title} needs raw counts and the loaded dataset has none. Load a raw-count file "
                        "on the Data page or choose CellVGAE on the Model & graph page."
                    )
            display = name.strip() or f"{cls.title} {cfg['preset']} on {source.get('name', 'data')}"[:120]
            ui.start_run(resolved, source, display)
    ui.go_button("Change the settings", "model", key="train_settings", primary=False, icon=":material/tune:")

# ---- pick the run to watch ---------------------------------------------------------------------
watched: Run | None = None
with ui.guard("the run list"):
    infos = state.runs()
    if not infos:
        st.info(
            "No run yet. Press **Start training** above; the quick preset on the demo takes about a minute."
        )
        st.stop()
    active = state.active_run_id()
    live = [i for i in infos if i.state in ("running", "queued")]
    choices = [i.id for i in infos]
    labels = ui.run_labels(infos, lambda i: f"{i.name} · {i.model} · {ui.fmt_time(i.created)}")
    if len(live) > 1:
        st.caption(f"{len(live)} runs are training at once; they share this machine's processor.")
    # The widget follows the active run (which Start or the sidebar may have just changed); set on every
    # run so the browser also gets the current label (a rename changes it).
    watch_key = state.run_picker_key(WATCH)
    st.session_state[watch_key] = active if active in choices else choices[0]
    st.selectbox(
        "Run to watch",
        choices,
        format_func=lambda rid: labels.get(rid, str(rid)),
        key=watch_key,
        on_change=state.pick_run_from,
        args=(watch_key,),
        help="Every run on disk; the one you pick becomes the active run for the explore pages.",
    )
    picked = st.session_state[watch_key]
    watched = state.store().open(picked)


def _seconds(value: float | None) -> str:
    return estimate.format_seconds(value)


# What the worker does, in order; the keys are the pipeline steps of its event log (jobs.progress).
STEPS = [
    ("", "preparing the data"),
    ("graph", "building the cell graph"),
    ("train", "training epochs"),
    ("cluster", "clustering the embedding"),
    ("interpret", "interpreting: attention and gene weights"),
    ("write", "writing the results"),
]
_STEP_INDEX = {key: i for i, (key, _) in enumerate(STEPS)} | {"dec_restart": 2}


def step_list(step: str) -> None:
    """The worker's steps, the current one marked (clustering and interpreting have no epochs to count)."""
    current = _STEP_INDEX.get(step, 0)
    lines = []
    for i, (_, words) in enumerate(STEPS):
        if i < current:
            lines.append(f"- :material/check: {words}")
        elif i == current:
            lines.append(f"- :material/progress_activity: **{words}...**")
        else:
            lines.append(f"- :gray[{words}]")
    st.markdown("\n".join(lines))


def stop_control(run: Run) -> None:
    """The Stop button, outside the auto-refreshing live view: a click made while the view redraws
    would be lost inside it. The callback writes the stop request before the page runs again."""
    failed = st.session_state.pop(_STOP_ERROR, None)
    if failed:
        st.error(f"**The stop request could not be written.** {ui.md(failed)}", icon=":material/error:")
    requested = run.stop_requested()
    cols = st.columns([4, 1])
    if requested:
        cols[0].warning(
            "**Stop requested.** Training ends after the current epoch; the best checkpoint so far is "
            "kept and the results are computed from it.",
            icon=":material/stop_circle:",
        )
    cols[1].button(
        "Stopping..." if requested else "Stop",
        key=f"stop:{run.id}",
        disabled=requested,
        icon=":material/stop:",
        on_click=_request_stop,
        args=(run.id,),
        help="Ends training after the current epoch; the best checkpoint so far is kept and the results "
        "are computed from it.",
    )


def _request_stop(run_id: str) -> None:
    try:
        jobs.stop(state.store().open(run_id))
    except ScgraphError as exc:  # the run was deleted meanwhile: say so on the page, not as a traceback
        st.session_state[_STOP_ERROR] = str(exc)


def rounds_view(run: Run, p: jobs.Progress) -> None:
    """The rounds of an iterative model, one point per round: scGNN's refinement loop (ARI with the
    previous round against its stop threshold, and the cluster count), scBiGNN's EM (held-out scores)."""
    table = plots.round_table(p.rounds)
    if table.empty:
        return
    loop = str(table["loop"].iloc[-1]) if "loop" in table else ""
    model_params = run.config.get("model_params") or {}
    refine = loop == "refine"
    stop_ari = float(model_params.get("stop_ari", 0.99)) if refine else None
    fig = plots.rounds_figure(p.rounds, stop_ari=stop_ari)
    last = int(table["round"].iloc[-1])
    if refine:
        st.markdown("**Refinement rounds: do the clusters settle?**")
        max_rounds = model_params.get("max_rounds")
        limit = f" or after {int(max_rounds)} refinement rounds" if max_rounds is not None else ""
        text = (
            "Round 1 clusters the first autoencoder's embedding; each later round trains the cluster "
            "autoencoders, retrains the feature autoencoder, rebuilds the cell graph on the embedding and "
            f"clusters it again. The loop ends when two rounds' clusters agree above ARI {stop_ari:g}{limit}."
        )
        plural = "s" if last != 1 else ""
        if p.finished and p.state != "failed":
            converged = (run.read_json("metrics.json", {}) or {}).get("converged")
            if converged is True:
                text += f" **Settled after {last} round{plural}.**"
            elif converged is False:
                text += f" **Still changing after {last} round{plural}**: the last round's clusters are kept."
        elif not p.finished:
            most = f" (at most {int(max_rounds) + 1})" if max_rounds is not None else ""
            text += f" Round {last} done{most}."
        st.caption(text)
    else:
        st.markdown(f"**{ui.md(loop.upper() if loop == 'em' else loop or 'Training')} rounds**")
        st.caption(
            f"{last} round{'s' if last != 1 else ''}: what each round recorded (held-out scores where labels "
            "were hidden for scoring)."
        )
    if fig is not None:
        ui.chart(st, fig, width="stretch", key=f"rounds:{run.id}")
    with st.expander("What each round recorded"):
        st.dataframe(table.drop(columns=["loop"], errors="ignore"), hide_index=True)


def run_view(run_id: str) -> None:
    """The run's state, progress, device, memory and curves, read from the run folder alone."""
    with ui.guard("the live view"):
        run = state.store().open(run_id)
        p = jobs.progress(run)
        # Once the run ends, redraw the whole app so the sidebar and page list catch up, before anything of the
        # finished run is drawn here: drawn in the live view first, its verdict showed twice while the app reran
        # (the live view's copy, then the page's), which a browser test caught.
        seen = st.session_state.setdefault("_seen_state", {})
        if seen.get(run.id) not in (None, p.state) and p.finished:
            seen[run.id] = p.state
            st.rerun(scope="app")
        seen[run.id] = p.state
        if p.state == "queued":
            st.info(
                "Starting the training process (loading the libraries takes a few seconds)...",
                icon=":material/schedule:",
            )
        elif p.state == "running":
            step_list(p.step)
            if p.step in ("train", "dec_restart") and p.epochs:
                stage = f" ({ui.md(p.stage)})" if p.stage and p.stage != "train" else ""
                eta = f" · about {_seconds(p.eta_s)} left for training" if p.eta_s is not None else ""
                st.progress(p.fraction, text=f"Epoch {p.epoch} of {p.epochs}{stage}{eta}")
            if p.step == "dec_restart":
                why = (
                    "DEC merged most of the clusters it started from"
                    if p.restart == "merge"
                    else "DEC raised the ZINB loss past its guard"
                )
                st.caption(f"{why}; fine-tuning again at a tenth of the learning rate.")
        elif p.state == "done":
            st.success(
                "Finished." if p.message in ("", "finished") else f"Finished: {ui.md(p.message)}.",
                icon=":material/check_circle:",
            )
        elif p.state == "stopped":
            st.warning(f"Stopped: {ui.md(p.message)}.", icon=":material/stop_circle:")
        elif p.state == "damaged":
            st.warning(
                f"**This run is damaged:** {ui.md(p.message)} The Runs page deletes it.",
                icon=":material/report:",
            )
        else:
            st.error(f"Failed: {ui.md(p.message)}", icon=":material/error:")
            tail = jobs.log_tail(run)
            if tail:
                with st.expander("The training process's last output"):
                    st.code(tail, language="text")

        c = st.columns(5)
        c[0].metric("elapsed", _seconds(p.elapsed_s))
        c[1].metric("per epoch", f"{p.seconds_per_epoch:.2f} s" if p.seconds_per_epoch is not None else "-")
        c[2].metric(
            "device", p.device or "-", help="Where the worker trains (set on the Model & graph page)."
        )
        c[3].metric(
            "precision",
            p.precision or "-",
            help="bf16: bfloat16 matrix products where the processor supports them.",
        )
        c[4].metric(
            "peak memory",
            f"{p.peak_memory_mb / 1024:.2f} GB" if p.peak_memory_mb else "-",
            help="The training process's peak memory (GPU memory on CUDA).",
        )
        if not p.history.empty:
            log_y = st.toggle("Log scale", key=f"logy:{run.id}", help="Show the loss terms on a log scale.")
            ui.chart(st, plots.loss_figure(p.history, log_y=log_y), width="stretch", key=f"loss:{run.id}")
            val = plots.validation_figure(p.history)
            if val is not None:
                st.markdown("**Validation: finding the held-out edges**")
                ui.chart(st, val, width="stretch", key=f"val:{run.id}")
        if p.rounds:
            rounds_view(run, p)
        if p.finished and p.state != "failed":
            metrics = run.read_json("metrics.json", {}) or {}
            words = {
                "ari": "ARI",
                "nmi": "NMI",
                "silhouette": "silhouette",
                "n_clusters": "clusters",
                "rounds": "rounds",
                "noise": "noise cells",
                "val_auc": "validation AUC",
            }
            shown = {words[k]: metrics[k] for k in words if metrics.get(k) is not None}
            if shown:
                st.markdown("**Result**")
                st.dataframe(
                    [{k: round(v, 3) if isinstance(v, float) else v for k, v in shown.items()}],
                    hide_index=True,
                )
            for note in metrics.get("notes") or []:
                st.info(ui.md(str(note)), icon=":material/info:")
            if run.file("result.h5ad").exists():
                with ui.guard("the verdict on this run"):
                    ui.verdict_box(run)
                from scgraph_app import sidebar

                imputes = sidebar.run_has(run, "imputed_layer")
                cols = st.columns(4 if imputes else 3)
                cols[0].page_link(
                    ui.PAGES["embedding"], label="Explore the embedding", icon=":material/scatter_plot:"
                )
                cols[1].page_link(ui.PAGES["attention"], label="Attention", icon=":material/share:")
                cols[2].page_link(
                    ui.PAGES["markers"], label="Marker genes", icon=":material/format_list_numbered:"
                )
                if imputes:  # scVGAE, scGNN, AttentionAE-sc: the values filled in for the zeros
                    cols[3].page_link(
                        ui.PAGES["imputation"], label="Imputation", icon=":material/auto_fix_high:"
                    )


# Redrawn every REFRESH_S seconds while the run trains (the worker writes the folder, this reads it).
live_view = st.fragment(run_every=REFRESH_S)(run_view)

if watched is not None:
    watched_state = jobs.status(watched).get("state")
    live_now = watched_state in ("queued", "running")
    with ui.guard("the live view"):
        meta = watched.meta
        icon = ui.STATE_ICONS.get(watched_state, "")
        st.markdown(f"### {icon} {ui.md(meta.get('name', watched.id))}")
        if live_now:
            stop_control(watched)
    if live_now:
        live_view(watched.id)
    else:
        run_view(watched.id)
