"""Model & graph: pick a model and preset, edit its settings, preview the cell graph, see the estimate."""

from __future__ import annotations

import streamlit as st

from scgraph_app import cache, config, forms, state, ui
from scgraph_core import data, estimate, graphs
from scgraph_core.cluster import ClusterParams
from scgraph_core.errors import ScgraphError
from scgraph_core.train import TrainSpec

ui.header(
    "Model & graph",
    "Choose what to train, how the cell graph is built, and where it runs.",
    "model",
)

cfg = state.config_state()
source = state.dataset_source()
models = config.available_models()

with ui.guard("the model picker"):
    names = list(models)
    if cfg["model"] not in names:
        cfg["model"] = names[0]
    left, right = st.columns([3, 2])
    with left:
        model = st.radio(
            "Model",
            names,
            index=names.index(cfg["model"]),
            format_func=lambda n: models[n].title,
            horizontal=True,
            key="model_pick",
            help="Each model comes from one paper; the line below says what it is for.",
        )
        cls = models[model]
        st.markdown(f"**{ui.md(cls.title)}**: {ui.md(cls.summary)}")
        badges = [f"Paper: {ui.md(cls.paper)}"]
        if cls.requires_counts:
            badges.append("needs raw counts")
        if cls.uses_labels:
            badges.append("trains on the label column")
        st.caption(" · ".join(badges))
    with right:
        presets = config.presets_of(model)
        preset = st.radio(
            "Preset",
            presets,
            index=presets.index(cfg["preset"]) if cfg["preset"] in presets and model == cfg["model"] else 0,
            horizontal=True,
            key=f"preset_pick:{model}",
            help="quick: a small network that trains in about a minute on the demo; paper: the settings "
            "the authors published; legacy: the authors' code as published, bugs included; gentle "
            "(AttentionAE-sc): DEC at a tenth of the paper's learning rate from a coarser Leiden start, "
            "which keeps a differentiation trajectory from being merged. Changing the preset resets the "
            "settings it defines.",
        )
    config.choose(model, preset)
    cfg = state.config_state()

    try:
        overview = cache.overview(source)
    except Exception:  # the Data page explains a file that cannot be read
        overview = None
    if overview is not None and cls.requires_counts and not overview["has_counts"]:
        st.warning(
            f"{ui.md(cls.title)} needs raw counts, but the loaded dataset has none "
            f"(X holds {ui.md(overview['x_kind'])} values and there is no 'counts' layer). Load a raw-count "
            "file on the Data page or choose CellVGAE.",
            icon=":material/warning:",
        )

base = config.base_values(cfg["model"], cfg["preset"])
form_key = f"{cfg['model']}:{cfg['preset']}"

tab_model, tab_graph, tab_train = st.tabs(
    [
        ":material/neurology: Model settings",
        ":material/hub: Cell graph",
        ":material/memory: Training & device",
    ]
)
with tab_model, ui.guard("the model settings"):
    st.caption(
        f"{ui.md(models[cfg['model']].title)} parameters ({ui.md(cfg['preset'])} preset values to start with)."
    )
    forms.schema_form(models[cfg["model"]].Params, "model", base["model"], key=form_key, columns=3)

own_graph = config.embedding_graph_note(cfg["model"])
with tab_graph, ui.guard("the graph settings"):
    if own_graph is not None:
        # No graph settings to offer: the model's own (neighbours, pruning) are under Model settings.
        st.info(
            f"{ui.md(own_graph)} Its neighbours and pruning are under Model settings; the genes it reads "
            "are set here.",
            icon=":material/hub:",
        )
        forms.schema_form(
            data.PrepareSpec, "prepare", base["prepare"], key=form_key, only=("n_hvg",), columns=2
        )
    else:
        st.caption("Which cells are joined to which. The genes: model input (HVG) and graph genes (KHVG).")
        forms.schema_form(
            data.PrepareSpec,
            "prepare",
            base["prepare"],
            key=form_key,
            only=("n_hvg", "n_graph_genes"),
            columns=2,
        )
        forms.schema_form(graphs.GraphSpec, "graph", base["graph"], key=form_key, columns=3)

with tab_train, ui.guard("the training settings"):
    from scgraph_app import sidebar

    st.caption(
        f"Detected: {ui.md(sidebar.device_line())}. Pick a device below to override the automatic choice."
    )
    forms.schema_form(TrainSpec, "train", base["train"], key=form_key, columns=3)
    st.markdown("**Clustering after training**")
    forms.schema_form(ClusterParams, "cluster", base["cluster"], key=form_key, columns=3)

st.divider()
resolved = None
with ui.guard("the configuration"):
    adata = cache.dataset(source)
    label_key = config.label_key_for(adata)
    resolved = config.current(label_key)

if resolved is not None:
    changed = {s: v for s, v in cfg["overrides"].items() if v}
    with st.expander(
        f"Configuration: {ui.md(models[resolved.model].title)}, {ui.md(resolved.preset)} preset"
        + (f", {sum(len(v) for v in changed.values())} setting(s) changed" if changed else ""),
        expanded=False,
    ):
        st.json(resolved.to_dict(), expanded=1)
    preview = None
    with ui.guard("the graph preview"):
        import dataclasses

        n_cells = int(adata.n_obs)
        auto = n_cells <= 30_000
        st.subheader("The cell graph for these settings")
        if own_graph is not None:
            # Statistics of a kNN graph on the input would describe a graph this model never trains on.
            st.info(ui.md(own_graph), icon=":material/hub:")
        elif auto or st.button("Build the graph to see its statistics", key="graph_preview_btn"):
            if config.builds_own_graph(resolved.model):
                st.info(
                    f"{ui.md(models[resolved.model].title)} builds its own graph during training; the kNN "
                    "statistics below are for the settings above and may differ from it.",
                    icon=":material/info:",
                )
            from scgraph_core.models import base as model_base

            # The graph the run will build: a preset's recipe can adapt to this input (many genes, many cells).
            built, adapted_why = model_base.get(resolved.model).adapt(resolved, adata)
            if adapted_why:
                st.caption(f":material/tune: {ui.md(adapted_why)}")
            preview = cache.graph_preview(
                source,
                {f.name: getattr(built.prepare, f.name) for f in dataclasses.fields(built.prepare)},
                {f.name: getattr(built.graph, f.name) for f in dataclasses.fields(built.graph)},
            )
        if preview is not None:
            s = preview["stats"]
            c = st.columns(6)
            c[0].metric("cells", f"{s['n_nodes']:,}", help="Cells left after the preparation filters.")
            c[1].metric(
                "edges", f"{s['n_undirected_edges']:,}", help="Distinct cell pairs joined (either direction)."
            )
            c[2].metric("mean degree", f"{s['mean_degree']:.1f}", help="Neighbours per cell on average.")
            c[3].metric(
                "isolated cells",
                f"{s['n_isolated']:,}",
                help="Cells with no neighbour: the model cannot learn from a graph for them.",
            )
            c[4].metric(
                "connected pieces",
                f"{s['n_components']:,}",
                help="Separate pieces of the graph; many small pieces mean k is too small.",
            )
            c[5].metric(
                "largest piece",
                f"{s['largest_component_fraction']:.0%}",
                help="Share of the cells in the biggest connected piece.",
            )
            st.caption(
                f"Built in {preview['seconds']:.1f} s on {preview['n_graph_genes']} graph genes "
                f"({ui.md(preview.get('backend') or 'exact')} search); the model reads {preview['n_features']} genes."
            )
            for note in preview["notes"]:
                st.caption(f":material/info: {ui.md(note)}")
            if s["n_components"] > max(5, s["n_nodes"] // 100):
                st.warning(
                    "The graph falls apart into many pieces: raise k or build it on PCs (More settings).",
                    icon=":material/warning:",
                )

    with ui.guard("the estimate"):
        calibration = None
        try:
            with st.spinner("Timing a few training steps of this model on this machine..."):
                calibration = estimate.calibrate(adata, resolved)
        except ScgraphError as exc:
            st.caption(f":material/info: No measurement on this machine: {ui.md(str(exc))}")
        est = estimate.estimate(
            resolved,
            preview["n_cells"] if preview else adata.n_obs,
            n_genes=preview["n_genes"] if preview else adata.n_vars,
            n_features=preview["n_features"] if preview else None,
            n_edges=preview["stats"]["n_edges"] if preview else None,
            graph_seconds=preview["seconds"] if preview else None,
            calibration=calibration,
        )
        st.subheader("Estimate")
        c = st.columns(4)
        c[0].metric(
            "per epoch",
            estimate.format_seconds(est.seconds_per_epoch)
            if est.seconds_per_epoch >= 1
            else f"{est.seconds_per_epoch:.2f} s",
            help="Average over every training stage.",
        )
        c[1].metric(
            "training", estimate.format_seconds(est.train_seconds), help=f"{est.epochs} epochs in all."
        )
        c[2].metric(
            "whole run",
            f"{estimate.format_seconds(est.low_seconds)} - {estimate.format_seconds(est.high_seconds)}",
            help="Start-up, preparation, graph, training, clustering and interpretation, and writing; "
            "the breakdown is below. A busy machine is slower.",
        )
        c[3].metric(
            "peak memory",
            f"{est.peak_memory_mb / 1024:.1f} GB",
            help="The training process's peak memory (rough).",
        )
        for warning in est.warnings:
            st.warning(ui.md(warning), icon=":material/warning:")
        st.dataframe(
            [
                {
                    "step": part.name,
                    "expected": estimate.format_seconds(part.seconds),
                    "range": f"{estimate.format_seconds(part.low)} - {estimate.format_seconds(part.high)}",
                    "how": part.detail,
                }
                for part in est.parts
            ],
            hide_index=True,
            key="estimate_parts",
        )
        label = ":material/warning: rough estimate" if est.rough else ":material/straighten: measured basis"
        st.caption(
            f"{label}: {ui.md(est.basis)} on {est.device} ({est.precision}). A busy machine is slower."
        )
        for note in est.notes:
            st.caption(f":material/info: {ui.md(note)}")

    ui.go_button("Next: train it", "training", key="model_next", icon=":material/arrow_forward:")
