"""The run configuration being edited: the chosen model and preset, plus the user's overrides.

``base_values`` is what the preset says for every section (schema defaults filled in);
``current`` resolves preset + overrides with the engine (``pipeline.resolve_config``), which validates
everything and raises ``ConfigError`` with a message the page shows.
"""

from __future__ import annotations

from typing import Any

from scgraph_core import params, pipeline
from scgraph_core.models import base as models

from . import state


def available_models() -> dict[str, type]:
    return models.available()


def presets_of(model: str) -> list[str]:
    cls = models.get(model)
    names = list(cls.presets)
    # quick first: it is what a class runs on the demo.
    return sorted(names, key=lambda p: (p != "quick", p != "paper", p))


def base_values(model: str, preset: str) -> dict[str, dict[str, Any]]:
    """Every section's values under ``preset``, the schema defaults filled in (JSON-ready)."""
    cls = models.get(model)
    chosen = cls.presets.get(preset, {})
    out: dict[str, dict[str, Any]] = {}
    for section, schema in pipeline.sections_for(model).items():
        defaults = {i.name: i.default for i in params.describe(schema)}
        merged = {**defaults, **chosen.get(section, {})}
        out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
    return out


def choose(model: str, preset: str) -> None:
    """Switch model or preset; the overrides the new preset sets itself are dropped (the preset wins)."""
    cfg = state.config_state()
    if cfg["model"] == model and cfg["preset"] == preset:
        return
    if model not in available_models():
        return
    if preset not in models.get(model).presets:
        preset = presets_of(model)[0]
    new_preset = models.get(model).presets.get(preset, {})
    kept: dict[str, dict[str, Any]] = {}
    if cfg["model"] == model:
        for section, values in cfg["overrides"].items():
            kept[section] = {k: v for k, v in values.items() if k not in new_preset.get(section, {})}
    else:
        # Another model: only the data preparation the user chose carries over.
        prep = cfg["overrides"].get("prepare", {})
        kept["prepare"] = {k: v for k, v in prep.items() if k not in new_preset.get("prepare", {})}
    cfg.update(model=model, preset=preset, overrides=kept)


def effective(section: str) -> dict[str, Any]:
    cfg = state.config_state()
    values = dict(base_values(cfg["model"], cfg["preset"])[section])
    values.update(cfg["overrides"].get(section, {}))
    return values


def current(label_key: str | None = None) -> pipeline.RunConfig:
    """The resolved configuration (validated by the engine)."""
    cfg = state.config_state()
    overrides = {k: v for k, v in cfg["overrides"].items() if v}
    return pipeline.resolve_config(cfg["model"], cfg["preset"], overrides, label_key=label_key)


# Models whose cell graph is rebuilt on their own embedding while they train: the pipeline's graph is empty
# for them (scGNN's build_graph), so the graph settings and a kNN preview of them would mislead.
EMBEDDING_GRAPH_MODELS = frozenset({"scgnn"})


def builds_own_graph(model: str) -> bool:
    """Whether the model replaces the pipeline's cell graph with its own (``Model.build_graph``)."""
    cls = models.get(model)
    return cls.build_graph is not models.Model.build_graph


def embedding_graph_note(model: str) -> str | None:
    """The plain sentence shown instead of graph settings and statistics for a model that builds its
    cell graph on its own embedding in every round (scGNN); None for the others."""
    if model not in EMBEDDING_GRAPH_MODELS:
        return None
    values = effective("model")
    pruned = "not pruned" if values.get("prune") == "none" else "pruned"
    return (
        f"{models.get(model).title} builds its cell graph on its own embedding in every round "
        f"(k = {values.get('knn_k')}, {pruned})."
    )


def label_key_for(adata) -> str | None:
    """The label column: the user's choice, else 'celltype' when the data has it, else none."""
    cfg = state.config_state()
    if cfg.get("label_key_set"):
        key = cfg.get("label_key")
        return key if key in adata.obs else None
    for candidate in ("celltype", "cell_type", "CellType", "labels", "label"):
        if candidate in adata.obs:
            return candidate
    return None


def label_columns(adata, max_values: int = 200) -> list[str]:
    """obs columns that can serve as labels: categories or text with at most ``max_values`` values."""
    import pandas as pd

    out = []
    for name in adata.obs.columns:
        col = adata.obs[name]
        if (
            isinstance(col.dtype, pd.CategoricalDtype)
            or col.dtype.kind in "OSUb"
            or (col.dtype.kind in "iu" and col.nunique() <= 50)
        ) and 1 < col.nunique() <= max_values:
            out.append(str(name))
    return out
