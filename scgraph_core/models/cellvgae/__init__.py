"""CellVGAE: a graph attention variational autoencoder for cells (MODELS.md section 1)."""

from .model import (
    ADAPTED_RECIPE,
    PAPER,
    QUICK,
    RECIPE_MIN_GENES,
    CellVGAE,
    CellVGAEParams,
    link_scores,
    split_edges,
)
from .module import CellVGAENet

__all__ = [
    "ADAPTED_RECIPE",
    "PAPER",
    "QUICK",
    "RECIPE_MIN_GENES",
    "CellVGAE",
    "CellVGAENet",
    "CellVGAEParams",
    "link_scores",
    "split_edges",
]
