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


_nogil_state: dict[str, bool] = {}
_replaced: dict[str, object] = {}  # umap-learn's own optimiser, kept for the test that compares the two


def nogil_layout() -> bool:
    """Let umap-learn's seeded layout optimisation release the GIL, so two layouts can run in two threads.

    umap-learn's one-thread (seeded) optimiser runs one numba function per epoch, compiled without
    ``nogil``: two UMAPs in two threads of one process then take turns instead of using two cores. This
    compiles the same Python function (same bytecode, same ``fastmath``, not parallel) once more with
    ``nogil=True`` and puts it where umap-learn looks it up at every call, so every layout computes exactly
    the numbers it did before (a test compares them bit for bit) and holds the GIL only between epochs.
    The copy gets its own name, so numba's disk cache keeps it apart from umap-learn's own (the cache does
    not tell compile options apart) and still recompiles it when umap-learn's source changes.

    Returns True when the optimiser releases the GIL, False when this umap-learn does not have the
    function where 0.5.x keeps it (then layouts run as before, and callers should not overlap them).
    """
    import types

    if "ok" in _nogil_state:
        return _nogil_state["ok"]
    import_umap()
    with _lock:
        if "ok" in _nogil_state:
            return _nogil_state["ok"]
        import numba

        layouts = sys.modules.get("umap.layouts")
        name = "_nb_optimize_layout_euclidean_single_epoch"
        source = getattr(layouts, "_optimize_layout_euclidean_single_epoch", None)
        current = getattr(layouts, name, None)
        if source is None or current is None or not isinstance(source, types.FunctionType):
            _nogil_state["ok"] = False
            return False
        if getattr(current, "targetoptions", {}).get("nogil"):
            _nogil_state["ok"] = True
            return True
        copy = types.FunctionType(
            source.__code__,
            source.__globals__,
            source.__name__ + "_nogil",
            source.__defaults__,
            source.__closure__,
        )
        copy.__qualname__ = source.__qualname__ + "_nogil"
        copy.__module__ = source.__module__
        _replaced["optimiser"] = current
        setattr(
            layouts,
            name,
            numba.njit(copy, fastmath=True, parallel=False, nogil=True, cache=enabled()),
        )
        _nogil_state["ok"] = True
        return True
