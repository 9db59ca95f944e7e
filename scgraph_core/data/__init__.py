"""Load single-cell data, check it once, and prepare the matrices the graphs and models use.

Three steps, in the order a user takes them, each in its own module:

* :mod:`.io`: :func:`read` turns a file (h5ad, 10x h5, 10x matrix folder or zip, csv/tsv, loom)
  into an ``AnnData`` with cells as rows, a float32 ``X`` (CSR when sparse or mostly zeros), unique
  names and ``uns["scgraph_source"]``. Every problem a user can cause becomes a :class:`DataError`
  that says what is wrong and what to do, without quoting the file's text. Files from people you do
  not control are read with :func:`scgraph_core.safe_read.read_isolated`, which runs :func:`read`
  in a child process with time and memory limits. :mod:`.demo`: :func:`load_demo` gives the
  built-in demo dataset.
* :mod:`.qc`: :func:`validate` / :func:`summarize` report what the data holds (raw counts,
  log-normalised or scaled values, empty cells and genes, duplicated names) without changing it.
* :mod:`.preparation`: :func:`prepare` applies a :class:`PrepareSpec` recipe (filters,
  normalisation, HVG and KHVG selection, per-gene scaling) and returns a :class:`Prepared` bundle:
  a new ``AnnData`` with ``counts`` / ``lognorm`` layers plus the dense model features and graph
  input.

:mod:`.mask` hides entries of a matrix for imputation tests. The names below are re-exported here,
so ``from scgraph_core.data import read`` and ``data.prepare(...)`` work as before the split.
"""

from __future__ import annotations

from .demo import DEMO_PATH, load_demo
from .io import FORMATS, MAX_SCAN_ENTRIES, MAX_TABLE_COLUMNS, DataWarning, read
from .mask import mask_nonzero
from .preparation import Prepared, PrepareSpec, prepare
from .qc import ValidationReport, detect_x_kind, summarize, validate

__all__ = [
    "DEMO_PATH",
    "FORMATS",
    "MAX_SCAN_ENTRIES",
    "MAX_TABLE_COLUMNS",
    "DataWarning",
    "PrepareSpec",
    "Prepared",
    "ValidationReport",
    "detect_x_kind",
    "load_demo",
    "mask_nonzero",
    "prepare",
    "read",
    "summarize",
    "validate",
]
