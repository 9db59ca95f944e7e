"""scBiGNN: cell-type annotation from partial labels with a gene-level and a cell-level network trained by EM
(MODELS.md section 2)."""

from .model import PAPER, QUICK, GeneSequences, ScBiGNN, ScBiGNNParams, select_genes
from .module import CellNet, GeneAttentionLayer, GeneNet

__all__ = [
    "PAPER",
    "QUICK",
    "CellNet",
    "GeneAttentionLayer",
    "GeneNet",
    "GeneSequences",
    "ScBiGNN",
    "ScBiGNNParams",
    "select_genes",
]
