"""What an imputed layer did to one gene: the measured values it is compared with and the summary numbers.

The Imputation page shows these; they are computed here so any reader of a result gets the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ImputationStats", "imputation_stats", "observed_layer"]


def observed_layer(adata: Any, scale: str | None) -> tuple[str | None, str]:
    """The measured values an imputed layer of ``scale`` is compared with, like with like: (layer, name).

    Expected counts are compared with the raw counts (``layers["counts"]``) when the result holds them;
    every other scale with X (log-normalised in a scgraph result). The layer is None for X.
    """
    if str(scale or "") == "counts" and "counts" in getattr(adata, "layers", {}):
        return "counts", "raw counts"
    return None, "X (log-normalised)"


@dataclass(frozen=True)
class ImputationStats:
    """One gene across cells: the share of cells measured at 0, the mean imputed value in those cells and
    in the others (NaN where there are no such cells), and the Pearson correlation of measured and imputed
    values (NaN when either is constant)."""

    zero_fraction: float
    mean_at_zeros: float
    mean_elsewhere: float
    correlation: float
    n_cells: int


def imputation_stats(observed: Any, imputed: Any) -> ImputationStats:
    """Summary of one gene's imputation: ``observed`` and ``imputed`` are its values in the same cells."""
    obs = np.asarray(observed, dtype=np.float64).reshape(-1)
    imp = np.asarray(imputed, dtype=np.float64).reshape(-1)
    if obs.shape != imp.shape:
        raise ValueError(f"observed has {obs.size} values but imputed has {imp.size}")
    n = int(obs.size)
    if n == 0:
        nan = float("nan")
        return ImputationStats(nan, nan, nan, nan, 0)
    zeros = obs == 0
    at_zeros = float(imp[zeros].mean()) if zeros.any() else float("nan")
    elsewhere = float(imp[~zeros].mean()) if (~zeros).any() else float("nan")
    r = float(np.corrcoef(obs, imp)[0, 1]) if obs.std() > 0 and imp.std() > 0 else float("nan")
    return ImputationStats(
        zero_fraction=float(zeros.mean()),
        mean_at_zeros=at_zeros,
        mean_elsewhere=elsewhere,
        correlation=r,
        n_cells=n,
    )
