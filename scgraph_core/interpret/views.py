"""A result's views manifest (``uns["scgraph"]["views"]``, see models/base.py VIEW_KEYS) as a plain dict.

The app's explore pages read attention maps and gene weights through it (:mod:`.attention`,
:mod:`.genes`).
"""

from __future__ import annotations

import numpy as np


def result_views(adata) -> dict:
    """The views manifest of a result AnnData as a plain dict ({} when the file has none)."""
    scgraph = adata.uns.get("scgraph", {}) if hasattr(adata, "uns") else {}
    views = scgraph.get("views", {}) if isinstance(scgraph, dict) else {}
    return _plain_views(views) if isinstance(views, dict) else {}


def _plain_views(value):
    # h5ad hands lists back as numpy arrays and numbers as numpy scalars.
    if isinstance(value, dict):
        return {str(k): _plain_views(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain_views(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain_views(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
