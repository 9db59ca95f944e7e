"""The built-in demo dataset (scanpy's bundled ``pbmc68k_reduced``), read without a file."""

from __future__ import annotations

import warnings
from typing import Any

import anndata as ad
import numpy as np

from ..errors import DataError
from .io import as_float32, finish, short
from .qc import detect_x_kind

DEMO_PATH = "builtin:pbmc68k_reduced"


def load_demo() -> ad.AnnData:
    """The built-in demo: scanpy's bundled ``pbmc68k_reduced`` (700 cells x 765 genes, offline).

    The bundled ``X`` holds z-scored values (negatives, clipped at 10), which suit neither count
    models nor min-max features. Its ``.raw`` holds the log-normalised values (log1p of
    library-size normalised counts) of the same 700 cells and 765 genes, so when ``.raw`` is
    there and log-normalised the demo's ``X`` is built from it (float32 CSR); otherwise the
    scaled ``X`` is kept. ``obs`` (``bulk_labels``, ``louvain``, QC columns), ``obsm``
    (``X_pca``, ``X_umap``), ``var`` and the colour palettes are kept; ``obs["celltype"]`` is a
    copy of ``bulk_labels`` so the demo names its labels like the shared datasets do. The
    precomputed neighbour graph and rankings are dropped (they were made from the scaled X).
    No raw counts exist in this dataset.
    """
    try:
        import scanpy as sc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bundled = sc.datasets.pbmc68k_reduced()
    except Exception as exc:  # a broken install, not a user file
        raise DataError(
            f"The built-in demo dataset could not be loaded ({short(exc)}). Reinstall scanpy "
            "(pip install --force-reinstall scanpy) or load your own file."
        ) from exc

    X: Any = bundled.X
    var = bundled.var.copy()
    raw = bundled.raw
    if raw is not None and raw.shape[0] == bundled.n_obs and detect_x_kind(raw.X) == "lognorm":
        X = raw.X
        if not raw.var_names.equals(bundled.var_names):
            var = raw.var.copy()
    obs = bundled.obs.copy()
    obs["celltype"] = obs["bulk_labels"]
    uns: dict[str, Any] = {}
    for key in ("bulk_labels", "louvain"):
        colors = bundled.uns.get(f"{key}_colors")
        if colors is not None:
            uns[f"{key}_colors"] = list(colors)
    if "bulk_labels_colors" in uns:
        uns["celltype_colors"] = list(uns["bulk_labels_colors"])
    adata = ad.AnnData(
        X=as_float32(X),
        obs=obs,
        var=var,
        obsm={k: np.asarray(v).copy() for k, v in bundled.obsm.items()},
        uns=uns,
    )
    return finish(adata, "pbmc68k_reduced", {"path": DEMO_PATH, "format": "builtin"})
