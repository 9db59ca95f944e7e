"""Expression: learnt expression (embedding times the gene's P_mu row) next to observed expression."""

from __future__ import annotations

import numpy as np
import streamlit as st

from scgraph_app import cache, ui
from scgraph_core import interpret, plots

ui.header(
    "Expression",
    "What the model learnt about a gene, next to what was measured, on the same UMAP.",
    "expression",
)

run, adata, views = ui.active_result(key="ex")
ui.need_view(
    views,
    "gene_weights",
    "Learnt expression needs gene weights (P_mu), which this run's model does not expose. Choose a "
    "CellVGAE run (for models that impute, see the Imputation page).",
    empty_key="ex-none",
)
with ui.guard("the check of the learnt expression"):
    ui.learnt_expression_note(run, adata)

with ui.guard("the gene choice"):
    weights, genes = interpret.gene_weight_matrix(adata, "P_mu")
    emb = np.asarray(adata.obsm[views["embedding"]])
    coords = cache.layout(run, adata)
    model = views.get("model", "")
    markers = (adata.uns.get(model, {}) or {}).get(views.get("marker_table") or "")
    suggested = [g for g in ("NKG7", "LYZ", "CD79A", "FCGR3A") if g in set(genes)]
    if not suggested and markers is not None and len(markers):
        suggested = list(dict.fromkeys(str(g) for g in markers["gene"]))[:2]
    chosen = st.multiselect(
        "Genes (type to search)",
        genes,
        default=suggested[:2] or genes[:1],
        max_selections=6,
        key="ex_genes",
        help="The model's input genes (the ones with P_mu weights). Marker genes such as NKG7 (NK cells), "
        "LYZ (monocytes), CD79A (B cells) and FCGR3A (FCGR3A+ monocytes) make good first examples.",
    )
    scale = st.toggle(
        "Same colour scale for both",
        value=False,
        key="ex_same",
        help="Learnt expression is a score, not a count; off, each plot uses its own range.",
    )

with ui.guard("the expression plots"):
    panels: list[plots.Panel] = []
    captions: list[str] = []
    for gene in chosen:
        learnt = interpret.learnt_expression(emb, weights, genes.index(gene))
        observed = cache.expression(adata, gene)
        r = (
            np.corrcoef(observed, learnt)[0, 1]
            if np.std(observed) > 0 and np.std(learnt) > 0
            else float("nan")
        )
        captions.append(
            f"**{ui.md(gene)}** · Correlation of learnt and observed expression across cells: r = {r:.2f}"
            if np.isfinite(r)
            else f"**{ui.md(gene)}** · The gene does not vary here."
        )
        learnt_shown = learnt
        if scale and np.ptp(learnt) > 0:
            # Map the score onto the observed range, so the same colour means the same rank of cell.
            lo, hi = float(observed.min()), float(observed.max())
            learnt_shown = lo + (learnt - learnt.min()) / np.ptp(learnt) * (hi - lo)
        panels.append(plots.Panel(f"{gene}: observed (log-normalised)", observed, "observed"))
        panels.append(
            plots.Panel(f"{gene}: learnt (embedding x P_mu row)", learnt_shown, "learnt", "Cividis")
        )
    if panels:
        for line in captions:
            st.caption(line)
        # One figure for every gene: a browser allows a page only a few WebGL plots.
        ui.chart(
            st,
            plots.embedding_panels(coords, panels, columns=2, panel_height=400),
            width="stretch",
            key="ex_panels",
        )

if not chosen:
    st.info("Pick one or more genes above.", icon=":material/search:")
else:
    with ui.guard("the download"):
        import pandas as pd

        def expression_csv() -> str:
            """Built when the button is clicked, not on every rerun (100k cells: seconds)."""
            table = pd.DataFrame({"cell": adata.obs_names})
            for gene in chosen:
                table[f"{gene}_observed"] = cache.expression(adata, gene)
                table[f"{gene}_learnt"] = interpret.learnt_expression(emb, weights, genes.index(gene))
            return table.to_csv(index=False)

        st.download_button(
            "Observed and learnt expression (CSV)",
            ui.on_click(expression_csv, "the expression table"),
            file_name=f"{run.id}_learnt_expression.csv",
            mime="text/csv",
            key="dl_expr",
        )
