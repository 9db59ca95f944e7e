"""AttentionAE-sc: a denoising and a graph autoencoder fused by attention, refined by DEC (MODELS.md 5)."""

from .model import (
    ATTENTION_MODES,
    FIXED,
    GENTLE,
    LEGACY,
    QUICK,
    AttentionAE,
    AttentionAEParams,
    Session,
    graph_mse,
    history_table,
    kept_clusters,
    kernel_graph,
    merge_note,
    raw_counts,
)
from .module import AttentionAENet, Encoded

__all__ = [
    "ATTENTION_MODES",
    "FIXED",
    "GENTLE",
    "LEGACY",
    "QUICK",
    "AttentionAE",
    "AttentionAENet",
    "AttentionAEParams",
    "Encoded",
    "Session",
    "graph_mse",
    "history_table",
    "kept_clusters",
    "kernel_graph",
    "merge_note",
    "raw_counts",
]
