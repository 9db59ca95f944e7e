"""scVGAE: a ZINB graph convolutional autoencoder for imputing counts (MODELS.md section 4)."""

from .model import (
    FIXED,
    LEGACY,
    QUICK,
    Inputs,
    ScVGAE,
    ScVGAEParams,
    build_graph,
    expected_counts,
    lognorm_pcs,
    model_inputs,
    observed_clusters_note,
    validation_split,
)
from .module import ScVGAENet, ScVGAEOutput

__all__ = [
    "FIXED",
    "LEGACY",
    "QUICK",
    "Inputs",
    "ScVGAE",
    "ScVGAENet",
    "ScVGAEOutput",
    "ScVGAEParams",
    "build_graph",
    "expected_counts",
    "lognorm_pcs",
    "model_inputs",
    "observed_clusters_note",
    "validation_split",
]
