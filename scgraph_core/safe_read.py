"""Read an untrusted data file in a child process, with a time and a memory limit.

:func:`scgraph_core.data.read` runs in the caller's process: a file built to exhaust memory, or
one that makes a library's C++ core abort, takes that process down with it. A server that reads
files for several people (the app) and tools that rely on a clean exit code (``python -m
scgraph_core inspect``) read through :func:`read_isolated` instead. The child runs ``data.read``,
writes the result as an ``.h5ad`` into a private temporary folder and a small JSON note beside it;
this process reads both back (nothing is unpickled) and deletes the folder. Every way the child
can fail becomes a :class:`~scgraph_core.errors.DataError` with a message for the user.

Settings (environment variables, read on every call; arguments override them):

* ``SCGRAPH_READ_TIMEOUT_S``: wall-clock seconds one read may take, default 600;
* ``SCGRAPH_READ_MEMORY_MB``: address space the reading process may use (``RLIMIT_AS``), in MB,
  default 75 % of the machine's physical memory. The memory limit applies on Linux and other
  systems with ``resource.RLIMIT_AS``; elsewhere only the time limit does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import resources
from .errors import ConfigError, DataError

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["DEFAULT_MEMORY_SHARE", "DEFAULT_TIMEOUT_S", "read_isolated", "read_limits"]

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MEMORY_SHARE = 0.75
_RESULT = "result.json"
_DATA = "data.h5ad"
_LOG = "child.log"
# Seconds the child adds to its own alarm: it ends itself if this process dies without killing it.
_ALARM_GRACE_S = 30
# Texts a child writes to stderr when an allocation failed (Python, C++ and glibc spellings).
_OOM_SIGNS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")


def _setting(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name}={text!r} must be a positive number; unset it to use {default:g}.")
    return value


def _default_memory_mb() -> float:
    try:
        import psutil

        total = psutil.virtual_memory().total
    except (ImportError, OSError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return float("inf")
    return DEFAULT_MEMORY_SHARE * total / 2**20


def read_limits() -> tuple[float, float]:
    """(timeout in seconds, memory in MB) from ``SCGRAPH_READ_TIMEOUT_S`` and ``SCGRAPH_READ_MEMORY_MB``."""
    return (
        _setting("SCGRAPH_READ_TIMEOUT_S", DEFAULT_TIMEOUT_S),
        _setting("SCGRAPH_READ_MEMORY_MB", _default_memory_mb()),
    )


def read_isolated(
    path: str | Path,
    *,
    orientation: str = "auto",
    fmt: str | None = None,
    timeout_s: float | None = None,
    memory_mb: float | None = None,
) -> ad.AnnData:
    """:func:`scgraph_core.data.read` in a child process that cannot take this one down.

    Arguments and result are those of :func:`~scgraph_core.data.read`; ``timeout_s`` and
    ``memory_mb`` override ``SCGRAPH_READ_TIMEOUT_S`` and ``SCGRAPH_READ_MEMORY_MB`` (see the
    module docstring). The demo path ``"builtin:pbmc68k_reduced"`` is read here, in this process.
    A missing file, an unknown format or a bad orientation are reported before any child starts.
    The child's :class:`~scgraph_core.data.DataWarning` messages are warned again here.

    Raises
    ------
    DataError
        Whatever ``read`` raises, with its message unchanged; and "needs more than N MB to read"
        when the child ran out of its memory, "took longer than N s" when it was stopped at the
        time limit, "could not be read: the reader stopped (signal NAME)" when it was killed.
    """
    from . import data
    from .data.io import resolve

    if fmt == "builtin" or str(path) == data.DEMO_PATH:
        return data.load_demo()
    source, fmt = resolve(path, orientation, fmt)
    default_timeout, default_memory = read_limits()
    timeout = float(timeout_s if timeout_s is not None else default_timeout)
    memory = float(memory_mb if memory_mb is not None else default_memory)
    if not (timeout > 0 and memory > 0):
        raise ConfigError(f"timeout_s and memory_mb must be positive; got {timeout:g} and {memory:g}.")
    request = {
        "path": str(source.absolute()),
        "orientation": orientation,
        "fmt": fmt,
        "memory_mb": memory if memory != float("inf") else None,
        "timeout_s": timeout,
    }
    with tempfile.TemporaryDirectory(prefix="scgraph_read_") as tmp:
        folder = Path(tmp)
        (folder / "request.json").write_text(json.dumps(request))
        returncode = _run_child(folder, timeout)
        if returncode is None:
            raise DataError(
                f"{source.name} took longer than {timeout:g} s to read, and reading was stopped. If "
                "the file is simply large, raise SCGRAPH_READ_TIMEOUT_S; otherwise check that it is "
                "what its name says, or subset it before loading it here."
            )
        note = _read_note(folder / _RESULT)
        if note is None or not note.get("ok"):
            log = (folder / _LOG).read_text(errors="replace") if (folder / _LOG).exists() else ""
            raise _failure(source.name, returncode, note, log, memory, timeout)
        import anndata as ad

        adata = ad.read_h5ad(folder / _DATA)
    for message in note.get("warnings", []):
        warnings.warn(str(message), data.DataWarning, stacklevel=2)
    return adata


def _child_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "scgraph_core.safe_read", str(folder)]


def _run_child(folder: Path, timeout: float) -> int | None:
    """Run the child to its end; its exit status, or None when it was killed at the time limit."""
    # The child must import this engine even when the caller was started from another folder.
    env = resources.child_env()
    # Reading needs no BLAS threads, and glibc's per-thread malloc arenas reserve 64 MB of address
    # space each: both would count against RLIMIT_AS without holding any data.
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["MALLOC_ARENA_MAX"] = "2"
    with open(folder / _LOG, "wb") as log:
        proc = subprocess.Popen(
            _child_command(folder), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:  # also on KeyboardInterrupt: never leave a reader behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _read_note(path: Path) -> dict[str, Any] | None:
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _failure(
    name: str, returncode: int, note: dict[str, Any] | None, log: str, memory_mb: float, timeout_s: float
) -> DataError:
    """The DataError for a child that did not deliver a result. ``log`` (the child's stderr) is
    only searched for signs of running out of memory: it may quote the file, so it is never shown."""
    kind = (note or {}).get("kind")
    if kind == "data":
        return DataError(str(note["message"]))  # type: ignore[index]
    out_of_memory = kind == "memory" or (note is None and any(s in log for s in _OOM_SIGNS))
    if out_of_memory:
        limit = f"{memory_mb:,.0f} MB" if memory_mb != float("inf") else "the memory of this machine"
        return DataError(
            f"{name} needs more than {limit} to read. Subset it (fewer cells or genes) or save it in "
            "a sparse format (.h5ad, a 10x folder), read it on a machine with more memory, or raise "
            "SCGRAPH_READ_MEMORY_MB."
        )
    if note is None and returncode < 0:
        signame = _signal_name(-returncode)
        if signame == "SIGALRM":  # the child's own backstop alarm
            return DataError(
                f"{name} took longer than {timeout_s:g} s to read, and reading was stopped. Raise "
                "SCGRAPH_READ_TIMEOUT_S if the file is simply large."
            )
        hint = " (the system may have stopped it for using too much memory)" if signame == "SIGKILL" else ""
        return DataError(
            f"{name} could not be read: the reader stopped (signal {signame}){hint}. The file is "
            "probably corrupt, truncated or not what its name says; check that the download or "
            "export finished, or save it again from the program that made it."
        )
    what = (note or {}).get("type") or f"exit code {returncode}"
    return DataError(
        f"{name} could not be read: the reader failed ({what}). The file is probably corrupt, "
        "truncated or not what its name says; check that the download or export finished, or save "
        "it again from the program that made it."
    )


# ------------------------------------------------------------------------------------------------
# The child
# ------------------------------------------------------------------------------------------------


def _limit_self(memory_mb: float | None, timeout_s: float) -> None:
    """Cap this process's address space and wall time (the alarm ends it if its parent died)."""
    try:
        import resource
    except ImportError:  # not a Unix system: the parent's timeout is the only limit
        return
    if memory_mb is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = int(memory_mb * 2**20)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    signal.alarm(int(timeout_s) + _ALARM_GRACE_S)


def _memory_exhausted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _write_note(folder: Path, note: dict[str, Any]) -> None:
    tmp = folder / (_RESULT + ".tmp")
    tmp.write_text(json.dumps(note))
    os.replace(tmp, folder / _RESULT)


def _child(folder: Path) -> int:
    request = json.loads((folder / "request.json").read_text())
    _limit_self(request["memory_mb"], float(request["timeout_s"]))
    try:
        from . import data  # imported under the limits: numpy, pandas, anndata, h5py, scipy

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", data.DataWarning)
            adata = data.read(request["path"], orientation=request["orientation"], fmt=request["fmt"])
        import anndata

        # pandas 3 reads text as string arrays, which anndata writes only when asked to.
        with anndata.settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(folder / _DATA)
        messages = [str(w.message) for w in caught if issubclass(w.category, data.DataWarning)]
        note: dict[str, Any] = {"ok": True, "warnings": messages}
    except DataError as exc:
        note = {"ok": False, "kind": "memory" if _memory_exhausted(exc) else "data", "message": str(exc)}
    except MemoryError:
        note = {"ok": False, "kind": "memory"}
    except Exception as exc:  # a library failure outside data.read's net: its type only
        note = {"ok": False, "kind": "error", "type": type(exc).__name__}
    _write_note(folder, note)
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
