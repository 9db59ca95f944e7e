"""The memory guard refuses what would not fit, with a message, and allows what does."""

from __future__ import annotations

import pytest

from scgraph_core import memory
from scgraph_core.errors import MemoryGuardError


def test_square_matrix_above_the_cell_limit_is_refused():
    with pytest.raises(MemoryGuardError, match="dense 6,000 x 6,000"):
        memory.check_dense(6000, 6000, what="The cell-cell kernel")
    memory.check_dense(6000, 6000, what="The cell-cell kernel", allow=True)  # fits in RAM when allowed
    memory.check_dense(4000, 4000, what="The cell-cell kernel")


def test_byte_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCGRAPH_MEMORY_BUDGET_GB", "0.01")
    with pytest.raises(MemoryGuardError, match="needs about") as info:
        memory.check_dense(3000, 3000, what="Attention maps", copies=2, advice="Use sampled keys.")
    assert "Use sampled keys." in str(info.value)
    memory.check_dense(100, 100, what="small")
    monkeypatch.setenv("SCGRAPH_MEMORY_BUDGET_GB", "lots")
    with pytest.raises(MemoryGuardError, match="not a number"):
        memory.available_bytes()


def test_gpu_allows_more_cells():
    assert not memory.dense_cells_allowed(10_000, "cpu")
    assert memory.dense_cells_allowed(10_000, "cuda")
