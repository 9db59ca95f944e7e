"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep the suite's threads at the machine's size and its run store out of the user's home.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")


def shared_file(name: str) -> Path:
    """Path of a dataset in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared datasets live beside the repository (../shared/data)")
    return path


@pytest.fixture
def pbmc3k_path() -> Path:
    return shared_file("pbmc3k_seurat250.h5ad")


@pytest.fixture(autouse=True)
def _run_store_home(tmp_path_factory, monkeypatch):
    """Every test gets its own SCGRAPH_HOME, so no test touches a real run store."""
    monkeypatch.setenv("SCGRAPH_HOME", str(tmp_path_factory.mktemp("scgraph_home")))
    # The app reads typed server paths only inside the data roots: the tests' files live in pytest's temp folder.
    monkeypatch.setenv("SCGRAPH_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))
