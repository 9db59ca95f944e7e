"""scGNN: iterative feature, cluster and graph autoencoders for clustering and imputation (MODELS.md section 3)."""

from .model import PAPER, QUICK, ScGNN, ScGNNParams, imputation_weights, kmeans_k, knn_graph
from .module import FeatureAE, GraphAE

__all__ = [
    "PAPER",
    "QUICK",
    "FeatureAE",
    "GraphAE",
    "ScGNN",
    "ScGNNParams",
    "imputation_weights",
    "kmeans_k",
    "knn_graph",
]
