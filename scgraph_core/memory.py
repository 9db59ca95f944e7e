"""The memory guard: refuse a dense allocation that would not fit, with a message, instead of crashing.

Dense N x N (cell x cell) or G x G (gene x gene) matrices are the hot spots of several models
(MODELS.md 6.2-6.3). Code that is about to build one calls :func:`check_dense` first. Two limits apply:

* a size rule: a dense N x N matrix is allowed for at most ``DENSE_MAX_CELLS[device]`` rows (5,000 on
  the CPU, 20,000 on a GPU) unless the caller passes ``allow=True`` (the user asked for it);
* a byte budget: the allocation (times ``copies``, for the temporaries an operation makes) must fit in
  ``$SCGRAPH_MEMORY_BUDGET_GB`` when that is set, else in 80 % of the memory available now (RAM on the
  CPU, free GPU memory on CUDA).

Both raise :class:`~scgraph_core.errors.MemoryGuardError` with what was asked, what is available and
what to do instead.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import MemoryGuardError

DENSE_MAX_CELLS = {"cpu": 5_000, "cuda": 20_000, "mps": 5_000}
_AVAILABLE_SHARE = 0.8


def _device_type(device: Any) -> str:
    return getattr(device, "type", None) or str(device).split(":")[0]


def available_bytes(device: Any = "cpu") -> int:
    """Memory this process may still use on ``device``: the budget variable, else what is free now."""
    budget = os.environ.get("SCGRAPH_MEMORY_BUDGET_GB")
    if budget:
        try:
            return int(float(budget) * 2**30)
        except ValueError:
            raise MemoryGuardError(
                f"SCGRAPH_MEMORY_BUDGET_GB={budget!r} is not a number; set it to a size in GB such as 8."
            ) from None
    if _device_type(device) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free * _AVAILABLE_SHARE)
    try:
        import psutil

        return int(psutil.virtual_memory().available * _AVAILABLE_SHARE)
    except (ImportError, OSError):
        return 2**62  # unknown: let the size rule decide


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GB"


def check_bytes(n_bytes: int, *, what: str, device: Any = "cpu", advice: str = "") -> None:
    """Raise :class:`MemoryGuardError` when ``n_bytes`` would not fit in the memory available."""
    have = available_bytes(device)
    if n_bytes > have:
        raise MemoryGuardError(
            f"{what} needs about {_gb(n_bytes)} but only {_gb(have)} is available on "
            f"{_device_type(device)}; nothing was allocated. {advice}".strip()
        )


def dense_cells_allowed(n_cells: int, device: Any = "cpu") -> bool:
    """Whether the size rule allows a dense N x N matrix for ``n_cells`` cells on ``device``."""
    return n_cells <= DENSE_MAX_CELLS.get(_device_type(device), DENSE_MAX_CELLS["cpu"])


def check_dense(
    rows: int,
    cols: int,
    *,
    what: str,
    itemsize: int = 4,
    copies: int = 1,
    device: Any = "cpu",
    allow: bool = False,
    advice: str = "",
) -> None:
    """Check a dense ``rows x cols`` allocation (``copies`` of it) before making it.

    For a square matrix the size rule applies unless ``allow``; the byte budget always applies.
    """
    kind = _device_type(device)
    if rows == cols and not allow and not dense_cells_allowed(rows, kind):
        limit = DENSE_MAX_CELLS.get(kind, DENSE_MAX_CELLS["cpu"])
        raise MemoryGuardError(
            f"{what} would be a dense {rows:,} x {cols:,} matrix, above the {limit:,} rows allowed on "
            f"{kind}; nothing was allocated. {advice or 'Use the sparse (kNN) option for this many cells.'}"
        )
    check_bytes(int(rows) * int(cols) * int(itemsize) * int(copies), what=what, device=device, advice=advice)
