"""UMAP's compiled code is kept on disk: a second process loads it instead of compiling, same layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIMISER = "layouts._optimize_layout_euclidean_single_epoch"  # umap-learn does not cache it itself

LAYOUT = """
import json, sys
import numpy as np
from scgraph_core.cluster import umap_embedding
x = np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32)
y = umap_embedding(x, n_components=2, seed=0, n_epochs=30)
print(json.dumps({"sum": float(np.abs(y).sum()), "first": y[0].tolist()}))
"""


def _start(env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.Popen(
        [sys.executable, "-c", LAYOUT],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> dict:
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _run(env_extra: dict[str, str]) -> dict:
    return _result(_start(env_extra))


def _index_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.nbi")}


def test_compiled_code_is_written_once_reused_and_can_be_switched_off(tmp_path):
    """One test, so the two cold compiles (about 30 s each, one thread each) are not repeated for a second
    test; they run side by side (separate cache folders), the warm one after them."""
    cache = tmp_path / "numba"
    switched_off = _start({"NUMBA_CACHE_DIR": str(tmp_path / "off"), "SCGRAPH_NUMBA_CACHE": "0"})
    cold = _start({"NUMBA_CACHE_DIR": str(cache)})
    plain, first = _result(switched_off), _result(cold)
    # Switched off: only the few functions the packages themselves mark for caching may be written.
    assert not any(OPTIMISER in f for f in _index_files(tmp_path / "off"))
    assert first == plain  # the cache does not change the layout
    written = _index_files(cache)
    # pynndescent's distances (compiled eagerly at import) and umap's layout optimiser are both cached.
    assert any("pynndescent" in f and "distances" in f for f in written), sorted(written)[:20]
    assert any(OPTIMISER in f for f in written), sorted(written)[:20]
    data_files = {p: p.stat().st_mtime_ns for p in cache.rglob("*.nbc")}
    second = _run({"NUMBA_CACHE_DIR": str(cache)})
    assert second == first  # loaded machine code gives the same layout
    # Nothing was compiled again: no data file was added or rewritten.
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.nbc")} == data_files


def test_the_layout_optimiser_releases_the_gil_and_gives_the_same_numbers(monkeypatch):
    """Two layouts may run in two threads (the analysis overlaps the drawn UMAP and the cluster choice's
    UMAP): the optimiser compiled with nogil computes exactly what umap-learn's own does."""
    import numpy as np
    import umap.layouts as layouts

    from scgraph_core import numba_cache
    from scgraph_core.cluster import umap_embedding

    assert numba_cache.nogil_layout() is True
    name = "_nb_optimize_layout_euclidean_single_epoch"
    patched = getattr(layouts, name)
    assert patched.targetoptions["nogil"] is True and not patched.targetoptions.get("parallel")
    assert numba_cache.nogil_layout() is True and getattr(layouts, name) is patched  # once per process
    x = np.random.default_rng(1).normal(size=(150, 6)).astype(np.float32)
    ours = umap_embedding(x, n_components=3, seed=0, n_epochs=40)
    monkeypatch.setattr(layouts, name, numba_cache._replaced["optimiser"])
    theirs = umap_embedding(x, n_components=3, seed=0, n_epochs=40)
    np.testing.assert_array_equal(ours, theirs)
