"""One function run in a forked child process while the caller goes on with other work.

The analysis after training is two long, single-threaded steps that do not depend on each other: the drawn 2-D
UMAP and the label-free cluster choice (its own UMAP and the HDBSCAN grid). umap-learn optimises a seeded layout
on one thread and its numba loops hold the GIL, so Python threads cannot overlap them; a forked child can, with
the same inputs and the same seed, so the result is exactly the serial one.

:class:`Background` forks at once (Linux, at least two usable cores, ``SCGRAPH_SERIAL_ANALYSIS`` unset or 0) and
:meth:`Background.result` collects the child's value. The child limits every OpenMP and BLAS pool to one thread
before it starts (a pool the parent started is not usable in a forked child, and the parent is busy on the other
core), writes the pickled value to a pipe and leaves with ``os._exit`` (no atexit handlers, no flushing of the
parent's files). If the child fails in any way (an exception, an unpicklable value, killed for memory), the
function is run again in the caller, so errors surface there exactly as without the child. Where no child can be
forked, the function simply runs in the caller when the result is asked for.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

_MISSING = object()


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether :class:`Background` forks here (else it runs the function in the caller, later)."""
    if os.environ.get("SCGRAPH_SERIAL_ANALYSIS", "0") not in ("", "0"):
        return False
    return sys.platform.startswith("linux") and hasattr(os, "fork") and usable_cores() >= 2


class Background:
    """``fn(*args, **kwargs)`` in a forked child; :meth:`result` returns its value (see the module text).

    ``seconds`` is how long the function took where it ran; ``forked`` says whether a child ran it;
    ``child_peak_mb`` is the child's peak RSS."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._call = (fn, args, kwargs)
        self._value: Any = _MISSING
        self.seconds = 0.0
        self.child_peak_mb: float | None = (
            None  # the child's peak RSS (pages shared with the caller included)
        )
        self.forked = False
        self._pid = 0
        self._read = -1
        if can_fork():
            self._start()

    def _start(self) -> None:
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return
        if pid == 0:  # the child: never returns
            os.close(read)
            _child(write, *self._call)
        os.close(write)
        self._pid, self._read, self.forked = pid, read, True

    def result(self) -> Any:
        """The function's value: from the child, or computed here (no child, or the child failed)."""
        if self._value is not _MISSING:
            return self._value
        if self.forked:
            ok, payload = self._collect()
            if ok:
                self.seconds, self.child_peak_mb, self._value = payload
                return self._value
            self.forked = False  # the child failed: run it here, where its error (if any) is raised
        fn, args, kwargs = self._call
        started = time.perf_counter()
        self._value = fn(*args, **kwargs)
        self.seconds = time.perf_counter() - started
        return self._value

    def _collect(self) -> tuple[bool, Any]:
        chunks = []
        try:
            with os.fdopen(self._read, "rb") as pipe:
                while chunk := pipe.read(1 << 20):
                    chunks.append(chunk)
        finally:
            try:
                _, status = os.waitpid(self._pid, 0)
            except ChildProcessError:
                status = -1
        if status != 0 or not chunks:
            return False, None
        try:
            return pickle.loads(b"".join(chunks))
        except Exception:  # a truncated or unreadable payload: run it again in the caller
            return False, None

    def __del__(self) -> None:  # a result never asked for (the caller failed): end the child, reap it
        if self.forked and self._value is _MISSING and self._pid:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.close(self._read)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self._pid, 0)


def _child(write: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """In the forked child: one thread per pool, run, send (ok, (seconds, value)) or exit non-zero."""
    code = 1
    try:
        _die_with_parent()
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        os.environ["OMP_NUM_THREADS"] = "1"
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - started
        import resource

        peak = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )  # kB on Linux; shared pages count too
        payload = pickle.dumps((True, (seconds, peak, value)), protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(payload)
        while view:
            view = view[os.write(write, view) :]
        code = 0
    except BaseException:  # the caller runs the function again and sees the error itself
        code = 1
    finally:
        try:
            os.close(write)
        finally:
            os._exit(code)


def _die_with_parent() -> None:
    """Ask Linux to end this child if the parent dies first (prctl PR_SET_PDEATHSIG), best effort."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except Exception:  # not Linux or no libc: the child still ends after its work
        pass
