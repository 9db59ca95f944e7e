"""Keep UMAP's compiled code between processes.

umap-learn and pynndescent compile their numba functions in every new process, and most of them are not
marked for numba's on-disk cache: importing pynndescent compiles its distance functions eagerly, and the
first UMAP compiles the layout optimiser. Together that is 10-30 s per process on a 2-core machine, paid by
every training run (each runs in its own worker process), every command-line call and every test process,
on 3,000 cells more than the UMAP itself takes.

:func:`import_umap` imports both packages with ``cache=True`` as the default of ``numba.njit`` while their
modules load, so numba writes the machine code beside the packages (or, where that folder is read-only, in
its user-wide cache, or in ``NUMBA_CACHE_DIR`` when set) and later processes load it instead of compiling.
The code is the same; only where it comes from changes. Nothing happens when umap was imported already
(for example by scanpy, before this), and ``SCGRAPH_NUMBA_CACHE=0`` turns it off.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings

_lock = threading.Lock()


def enabled() -> bool:
    """False when ``SCGRAPH_NUMBA_CACHE`` is 0 / false / no / off."""
    return os.environ.get("SCGRAPH_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def import_umap() -> None:
    """Import umap-learn and pynndescent (once per process) with numba's disk cache as the default."""
    if "umap" in sys.modules and "pynndescent" in sys.modules:
        return
    with _lock:
        if not enabled() or "pynndescent" in sys.modules:
            import pynndescent
            import umap

            return
        import numba
        from numba.core.errors import NumbaWarning

        original = numba.njit

        def njit(*args, **kwargs):
            kwargs.setdefault("cache", True)
            return original(*args, **kwargs)

        numba.njit = njit
        # A function numba cannot cache (dynamic globals, e.g. pynndescent's nn_descent) is compiled as before;
        # its warning, raised whenever it is first compiled, says nothing a user can act on.
        warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=NumbaWarning)
        try:
            import pynndescent  # noqa: F401
            import umap
            import umap.umap_  # noqa: F401
        finally:
            numba.njit = original
