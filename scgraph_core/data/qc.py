"""What a dataset holds, checked without changing it.

:func:`detect_x_kind` tells raw counts from log-normalised, normalised or scaled values;
:func:`validate` reports what blocks use (empty or tiny data, NaN/inf, missing raw counts) and what
the user should know (all-zero cells or genes, duplicated names, scaled X); :func:`summarize`
gives the JSON overview ``python -m scgraph_core inspect`` prints.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError

# ln(1 + 1e6) is 13.8 and log2(1 + 1e6) is 19.9: log-normalised data stays well under this.
_LOG_MAX = 30.0
_KIND_SAMPLE = 100_000
_WHOLE_TOL = 1e-4


def _values_of(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Stored values: the non-zeros of a sparse matrix, every entry of a dense one."""
    if sp.issparse(X):
        return np.asarray(X.data)
    return np.ravel(np.asarray(X))


def n_nonfinite(X: np.ndarray | sp.spmatrix) -> int:
    values = _values_of(X)
    if values.dtype.kind not in "fc":
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def detect_x_kind(X: Any) -> str:
    """What an expression matrix holds, from its values.

    * ``"scaled"``: any negative value (z-scored or otherwise centred data);
    * ``"counts"``: no negatives and every sampled non-zero is a whole number (within 1e-4);
      up to 100,000 non-zeros are sampled with a fixed seed, so the answer is fast and stable;
    * ``"lognorm"``: no negatives, not whole numbers, maximum at most 30 (log-normalised data:
      ln(1 + 1e6) is 13.8, log2 19.9);
    * ``"normalized"``: no negatives, not whole numbers, maximum above 30: normalised but not
      log-transformed (CPM, TPM, estimated counts).

    An all-zero matrix counts as ``"counts"``. NaN entries are ignored here (:func:`validate`
    reports them).
    """
    if X is None:
        raise DataError("There is no expression matrix (X is empty). Load a file with values.")
    if not sp.issparse(X):
        X = np.asarray(X)
    values = _values_of(X)
    if values.size == 0:
        return "counts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        vmin = np.nanmin(values)
    if vmin < 0:
        return "scaled"
    rng = np.random.default_rng(0)
    sample = values
    if values.size > 10 * _KIND_SAMPLE:
        # Dense matrices are mostly zeros in this field: draw more than needed, keep non-zeros.
        sample = values[rng.integers(0, values.size, 10 * _KIND_SAMPLE)]
    sample = sample[(sample != 0) & np.isfinite(sample)]
    if sample.size == 0 and values.size > 10 * _KIND_SAMPLE:
        sample = values[(values != 0) & np.isfinite(values)]
    if sample.size > _KIND_SAMPLE:
        sample = sample[rng.integers(0, sample.size, _KIND_SAMPLE)]
    if sample.size == 0 or np.all(np.abs(sample - np.round(sample)) <= _WHOLE_TOL):
        return "counts"
    finite = values[np.isfinite(values)] if not np.isfinite(values).all() else values
    return "lognorm" if float(np.max(finite)) <= _LOG_MAX else "normalized"


KIND_WORDS = {
    "counts": "raw counts",
    "lognorm": "log-normalised values",
    "normalized": "normalised values that are not log-transformed (CPM/TPM-like)",
    "scaled": "scaled values (it has negative numbers)",
}


def nonzero_per(X: np.ndarray | sp.spmatrix, axis: int) -> np.ndarray:
    """Number of non-zero entries per row (axis=1) or per column (axis=0)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        nz = X.data != 0  # explicit zeros do not count as expressed
        if axis == 1:
            rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
            return np.bincount(rows[nz], minlength=X.shape[0])
        return np.bincount(X.indices[nz], minlength=X.shape[1])
    return np.count_nonzero(np.asarray(X), axis=axis)


@dataclass
class ValidationReport:
    """What :func:`validate` found. ``errors`` block use; ``warnings`` are for the user to read;
    ``notes`` are information with nothing to fix."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # information: nothing to fix
    x_kind: str = "unknown"
    n_cells: int = 0
    n_genes: int = 0
    n_zero_cells: int = 0
    n_zero_genes: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self) -> None:
        """Raise one :class:`DataError` listing every error, one per line."""
        if self.errors:
            raise DataError("\n".join(self.errors))


def validate(adata: ad.AnnData, *, min_cells: int = 10, require_counts: bool = False) -> ValidationReport:
    """Check that ``adata`` can be used; never changes it.

    Errors: empty matrix; fewer than ``min_cells`` cells (a cell graph needs neighbours); NaN or
    infinite values; with ``require_counts``, no raw counts (X is not whole non-negative numbers
    and there is no ``counts`` layer that is). Warnings: all-zero cells or genes (dropped by
    :func:`prepare`), duplicated names, scaled X.
    """
    n_cells, n_genes = adata.shape
    report = ValidationReport(n_cells=int(n_cells), n_genes=int(n_genes))
    if adata.X is None or n_cells == 0 or n_genes == 0:
        report.errors.append(
            f"The data is empty ({n_cells} cells x {n_genes} genes). Load a file with an expression matrix."
        )
        return report
    X = adata.X
    report.x_kind = detect_x_kind(X)
    if n_cells < min_cells:
        report.errors.append(
            f"The data has only {n_cells} cells; building a cell graph needs at least "
            f"{min_cells}. Load a dataset with more cells."
        )
    n_bad = n_nonfinite(X)
    if n_bad:
        report.errors.append(
            f"X holds {n_bad} NaN or infinite value(s). Replace them (for example with 0) or "
            "remove the affected cells/genes, then load the data again."
        )
    genes_per_cell = nonzero_per(X, axis=1)
    cells_per_gene = nonzero_per(X, axis=0)
    report.n_zero_cells = int(np.count_nonzero(genes_per_cell == 0))
    report.n_zero_genes = int(np.count_nonzero(cells_per_gene == 0))
    # Only counts above zero are named; genes zero everywhere are common (a subset of a panel) and
    # harmless, so alone they are information, not a warning.
    zero_genes = f"{report.n_zero_genes} gene(s) are zero in every cell" if report.n_zero_genes else ""
    if report.n_zero_cells:
        also = f" and {zero_genes}" if zero_genes else ""
        report.warnings.append(
            f"{report.n_zero_cells} cell(s) have no expressed gene{also}; preparing the data drops them."
        )
    elif zero_genes:
        report.notes.append(f"{zero_genes}; preparing the data drops them.")
    for names, what in ((adata.obs_names, "cell"), (adata.var_names, "gene")):
        n_dup = int(names.duplicated().sum())
        if n_dup:
            report.warnings.append(
                f"{n_dup} duplicated {what} name(s); call var_names_make_unique / "
                "obs_names_make_unique or load the file with scgraph's reader."
            )
    if require_counts:
        layer = adata.layers.get("counts", None)
        if layer is not None:
            layer_kind = detect_x_kind(layer)
            if layer_kind != "counts":
                report.errors.append(
                    f"This model needs raw counts, but the 'counts' layer holds "
                    f"{KIND_WORDS[layer_kind]}. Provide a file with raw counts in X or in a "
                    "`counts` layer."
                )
        elif report.x_kind != "counts":
            hint = ""
            if adata.raw is not None and detect_x_kind(adata.raw.X) == "counts":
                # Raw counts kept in .raw (the scanpy habit): say how to hand them over.
                hint = (
                    " This file keeps raw counts in .raw: copy them into a `counts` layer "
                    "(adata.layers['counts'] = adata.raw[:, adata.var_names].X) and save it again."
                )
            report.errors.append(
                f"This model needs raw counts, but X holds {KIND_WORDS[report.x_kind]}. "
                "Provide a file with raw counts in X or a `counts` layer (for example the "
                "Cell Ranger output), or choose a model that works on log-normalised data." + hint
            )
    elif report.x_kind == "scaled":
        report.warnings.append(
            "X holds scaled values (negative numbers): gene selection and min-max features work "
            "best on log-normalised data or raw counts."
        )
    return report


def summarize(adata: ad.AnnData) -> dict[str, Any]:
    """JSON-ready overview of a dataset (``python -m scgraph_core inspect`` prints it)."""
    X = adata.X
    n_cells, n_genes = adata.shape
    if X is None or n_cells == 0 or n_genes == 0:
        nnz = 0
        kind = "empty"
    else:
        nnz = int(X.count_nonzero()) if sp.issparse(X) else int(np.count_nonzero(X))
        kind = detect_x_kind(X)
    obs_columns: dict[str, dict[str, Any]] = {}
    for name in adata.obs.columns:
        column = adata.obs[name]
        labels = isinstance(column.dtype, pd.CategoricalDtype) or column.dtype.kind in "OSUb"
        obs_columns[str(name)] = {
            "dtype": str(column.dtype),
            "n_unique": int(column.nunique()),
            "numeric": not labels and column.dtype.kind in "iuf",
        }
    source = adata.uns.get("scgraph_source")
    return {
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "x_kind": kind,
        "has_counts_layer": "counts" in adata.layers,
        "sparse": bool(sp.issparse(X)),
        "density": float(nnz / (n_cells * n_genes)) if n_cells and n_genes else 0.0,
        "obs_columns": obs_columns,
        "layers": [str(k) for k in adata.layers],
        "source": {str(k): str(v) for k, v in source.items()} if isinstance(source, dict) else None,
    }
