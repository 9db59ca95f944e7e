"""The run store: every training run is a folder on disk that outlives the process that made it.

A run folder holds::

    meta.json      name, model, dataset, creation time (rename edits only this file)
    config.json    the resolved configuration (schemas, seed, package versions)
    status.json    state (queued, running, done, stopped, failed), message, worker pid, heartbeat
    worker.json    the background worker's pid and host (runs the app starts)
    events.jsonl   one JSON object per line (epochs, stages); a torn last line is ignored
    STOP           present once a stop was requested (idempotent)
    checkpoints/   weights as tensors only (``torch.load(weights_only=True)``)
    result.h5ad    the AnnData with every result, written atomically

Every JSON or h5ad file is written to a temporary name and renamed into place, so a crash never
leaves a half-written file. Files are still never trusted: each run is read on its own and a folder
whose files are unreadable or of the wrong shape is listed as ``damaged`` with the reason, so it can
be deleted, and never breaks the list. Folders that hold no run file at all are skipped with a
warning.

A run whose process died is reported ``failed`` by :attr:`Run.status` (and so by the list, the app
and :meth:`RunStore.delete`): on the worker's own machine the process table decides (pid, its start
time, zombie); elsewhere a heartbeat older than :data:`HEARTBEAT_STALE_S` does.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunError

STATES = ("queued", "running", "done", "stopped", "failed")
FINISHED = ("done", "stopped", "failed")
DAMAGED = "damaged"  # reported for a folder whose files cannot be trusted; never written
WORKER_FILE = "worker.json"
LOG_FILE = "worker.log"
RUN_FILES = ("meta.json", "config.json", "status.json")  # a folder holding any of them is a run
# The worker refreshes its running status at most this often, from its training events.
HEARTBEAT_EVERY_S = 5.0
# A running run whose process cannot be checked here (it runs on another machine) is reported
# failed once its heartbeat is this old. Steps without events (the graph, clustering, writing the
# result) can take minutes on large data, hence the margin.
HEARTBEAT_STALE_S = 600.0
# A queued run that no worker was recorded for within this time is reported failed.
LAUNCH_GRACE_S = 120.0
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LATEST_TIME = 4102444800.0  # 2100-01-01: no later time was written by this program

_ENDED = (
    "The training process ended without finishing (it was killed or crashed). "
    "The last checkpoint, if any, is kept; start a new run to train again."
)


def default_home() -> Path:
    """The run store root: ``$SCGRAPH_HOME`` or ``~/.scgraph``."""
    env = os.environ.get("SCGRAPH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".scgraph"


def _write_temp(folder: Path, name: str, data: bytes) -> str:
    """Write ``data`` to a new hidden temporary file in ``folder``, flushed to disk; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, _json_bytes(obj))


_DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
}


def plain_os_error(exc: BaseException) -> str | None:
    """The cause of a failed write in plain words, when it is the disk's fault (full, quota, size limit)."""
    text = str(exc)
    codes = _DISK_ERRORS
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in codes:
            return codes[seen.errno]
        seen = seen.__cause__ or seen.__context__
    # h5py reports the C library's failure in its text: "... errno = 28, error message = 'No space left...'"
    for code, words in codes.items():
        if f"errno = {code}," in text or os.strerror(code) in text:
            return words
    return None


def write_h5ad(adata: Any, path: Path) -> None:
    """Write an AnnData atomically: to a temporary name beside ``path``, then renamed into place.

    Checks the free space first (a full disk made h5py crash the process), keeps pandas' string arrays
    writable under pandas 2 and 3, and on any failure removes the temporary file and raises a
    :class:`RunError` whose message names the cause.
    """
    import anndata

    path = Path(path)
    need = _h5ad_bytes(adata)
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise RunError(
            f"No space left on device to write {path.name}: it needs about {need / 2**20:,.0f} MB and "
            f"{free / 2**20:,.0f} MB are free in {path.parent}. Free some space and try again."
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".h5ad", dir=path.parent)
    os.close(fd)

    def write() -> None:
        # pandas 3 stores text as string arrays, which anndata writes only when asked to.
        with anndata.settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(tmp)

    try:
        if hasattr(os, "fork"):
            _in_child(write, path.name)
        else:
            write()
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        reason = plain_os_error(exc)
        if reason is None:
            raise
        raise RunError(f"Could not write {path.name}: {reason} (in {path.parent}).") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _in_child(write: Callable[[], None], name: str) -> None:
    """Run ``write`` in a forked child (it shares the data, nothing is copied or pickled).

    When HDF5 fails mid-file (a full disk), h5py's objects are left broken and the process that wrote
    them prints hundreds of tracebacks and then crashes when it frees them; in a child that exits at once,
    the crash cannot take the run's own process (and its status) with it. Raises OSError for a disk
    failure, RunError otherwise.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, report in one line, leave without running any cleanup
        code, report = 0, b""
        try:
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # h5py's complaints about a broken file are not for the user
            write()
        except BaseException as exc:
            code = 1
            found = plain_os_error(exc)
            errno_of = next((e for e, w in _DISK_ERRORS.items() if w == found), 0)
            report = f"{errno_of}\t{type(exc).__name__}: {str(exc)[:400]}".encode()
        try:
            os.write(write_end, report)
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise RunError(f"Writing {name} crashed (signal {os.WTERMSIG(status)}); nothing was written.")
    if os.WEXITSTATUS(status) != 0:
        code_text, _, message = b"".join(chunks).decode(errors="replace").partition("\t")
        code = int(code_text) if code_text.isdigit() else 0
        if code:
            raise OSError(code, os.strerror(code))
        raise RunError(f"Could not write {name}: {message or 'the writer failed'}.")


def _h5ad_bytes(adata: Any) -> int:
    """A lower bound of the bytes an AnnData takes on disk (its arrays, uncompressed)."""
    total = 0

    def add(value: Any) -> None:
        nonlocal total
        if hasattr(value, "data") and hasattr(value, "indices"):  # scipy sparse
            total += value.data.nbytes + value.indices.nbytes + value.indptr.nbytes
        elif hasattr(value, "nbytes"):
            total += int(value.nbytes)

    add(adata.X)
    for group in (adata.layers, adata.obsm, adata.obsp, adata.varm):
        for value in group.values():
            add(value)
    return total


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths and tuples reach JSON as plain values.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _claim(tmp: str, path: Path) -> None:
    """Put the finished file ``tmp`` at ``path`` unless a file is there (then FileExistsError).

    A hard link is made in one step and never replaces a file, so of several processes claiming the
    same path exactly one succeeds, and readers never see the file half written.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: create exclusively, then fill
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Path(tmp).read_bytes())


def check_run_id(run_id: str) -> str:
    """Accept only plain folder names: letters, digits, '.', '_' and '-' (no path traversal)."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or run_id in (".", ".."):
        raise RunError(
            f"{run_id!r} is not a valid run id: use letters, digits, '.', '_' and '-' only "
            "(at most 100 characters, starting with a letter or digit)."
        )
    return run_id


def check_display_name(name: str) -> str:
    name = str(name).strip()
    if not name:
        raise RunError("A run name cannot be empty.")
    if len(name) > 120:
        raise RunError("A run name can have at most 120 characters.")
    if any(ord(c) < 32 for c in name):
        raise RunError("A run name cannot contain control characters (such as newlines).")
    return name


# ------------------------------------------------------------------------------------------------
# What the JSON files must hold: their content is checked, never trusted
# ------------------------------------------------------------------------------------------------


def _is_time(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= _LATEST_TIME
    )


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_pid(value: Any) -> bool:
    return _is_whole(value) and 0 < value < 2**31


_KINDS = {
    "text": (lambda v: isinstance(v, str), "text"),
    "time": (_is_time, "a time (seconds since 1970)"),
    "pid": (_is_pid, "a process id (a positive whole number)"),
    "whole": (_is_whole, "a whole number"),
}
# field -> (kind, whether null is allowed)
_META_FIELDS = {
    "name": ("text", False),
    "model": ("text", False),
    "dataset": ("text", False),
    "created": ("time", False),
}
_STATUS_FIELDS = {
    "state": ("text", False),
    "message": ("text", False),
    "updated": ("time", False),
    "pid": ("pid", True),
    "host": ("text", True),
    "pid_start": ("whole", True),
}
_WORKER_FIELDS = {
    "pid": ("pid", False),
    "host": ("text", True),
    "started": ("time", False),
    "pid_start": ("whole", True),
}
_WORKER_REQUIRED = ("pid", "started")


def _describe(value: Any) -> str:
    """A JSON value in words, for messages about a damaged file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"the text {text}" if isinstance(value, str) else f"the number {text}"


def _field_problems(name: str, obj: dict, fields: dict[str, tuple[str, bool]]) -> list[str]:
    problems = []
    for key, (kind, nullable) in fields.items():
        if key not in obj or (nullable and obj[key] is None):
            continue
        check, words = _KINDS[kind]
        if not check(obj[key]):
            problems.append(f"{name}: '{key}' should be {words}, not {_describe(obj[key])}")
    return problems


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) from /proc; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), to tell it from a later one that reuses
    its pid; None where /proc is absent or the process is gone."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else None


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` is a live process: it exists, is not a zombie (ended but not yet reaped, which
    still answers ``kill(pid, 0)``), and, when ``start`` is given, started then (its pid not reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except (OverflowError, ValueError):
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (or it ended just now): kill(pid, 0) is all we know
    if stat[0] in ("Z", "X"):
        return False
    return start is None or stat[1] == start


def _here(host: Any) -> bool:
    return isinstance(host, str) and host == socket.gethostname()


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One line of the run list.

    ``damage`` says in plain words why the run's files cannot be trusted ("" for a sound run). A
    damaged run that is not training has the state ``damaged`` and the reason as its message; it can
    still be deleted.
    """

    id: str
    path: Path
    name: str
    model: str
    dataset: str
    created: float
    state: str
    message: str
    damage: str = ""

    @property
    def damaged(self) -> bool:
        return bool(self.damage)


class Run:
    """One run folder. Safe to open from several processes: the worker writes, pages read."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._last_beat = -math.inf

    @property
    def id(self) -> str:
        return self.path.name

    # ---- files -----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.file(name), obj)

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.file(name)
        if not path.exists():
            return default
        try:
            return _read_json(path)
        except (OSError, ValueError) as exc:
            raise RunError(f"{path} is unreadable ({exc}); the run folder may be damaged.") from None

    def read_object(self, name: str) -> dict | None:
        """The JSON object in file ``name``; None when there is no such file.

        Raises RunError saying in plain words why the file cannot be used: unreadable, not JSON, or
        JSON that is not an object (a list, a string, null...).
        """
        try:
            data = self.file(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RunError(f"{name} cannot be read ({exc.strerror or exc}).") from None
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:  # also bytes that are not text
            raise RunError(f"{name} is not valid JSON ({exc}).") from None
        if not isinstance(obj, dict):
            raise RunError(f"{name} does not hold a JSON object (it holds {_describe(obj)}).")
        return obj

    def _checked(
        self, name: str, fields: dict[str, tuple[str, bool]], required: tuple[str, ...] = ()
    ) -> dict | None:
        """:meth:`read_object`, with the fields this program reads checked for their type."""
        obj = self.read_object(name)
        if obj is not None:
            problems = [f"{name} names no '{key}'" for key in required if obj.get(key) is None]
            problems += _field_problems(name, obj, fields)
            if problems:
                raise RunError("; ".join(problems) + ".")
        return obj

    @property
    def meta(self) -> dict:
        """meta.json's fields that have the right type ({} when it is missing or damaged)."""
        try:
            meta = self.read_object("meta.json") or {}
        except RunError:
            return {}
        return {k: v for k, v in meta.items() if not _field_problems("meta.json", {k: v}, _META_FIELDS)}

    @property
    def config(self) -> dict:
        """config.json ({} when it is missing or damaged; :meth:`problems` says why)."""
        try:
            return self.read_object("config.json") or {}
        except RunError:
            return {}

    def problems(self, status: dict | None = None) -> list[str]:
        """Why the run's files cannot be trusted, in plain words; empty for a sound run."""
        out = []
        try:
            if self._checked("meta.json", _META_FIELDS) is None:
                out.append("meta.json is missing.")
        except RunError as exc:
            out.append(str(exc))
        try:
            self.read_object("config.json")
        except RunError as exc:
            out.append(str(exc))
        status = self.status if status is None else status
        if status.get("state") == DAMAGED:
            out.append(str(status.get("message", "")))
        return out

    def log_tail(self, n_chars: int = 1500) -> str:
        """The end of the background worker's output (``worker.log``)."""
        try:
            with open(self.file(LOG_FILE), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - n_chars))
                return fh.read().decode("utf-8", errors="replace").strip()
        except OSError:
            return ""

    # ---- status ----------------------------------------------------------------------------
    @staticmethod
    def _status_record(state: str, message: str = "", **extra: Any) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        status = {
            "state": state,
            "message": message,
            "updated": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **extra,
        }
        if "pid_start" not in extra:
            status["pid_start"] = process_start(status["pid"]) if _is_pid(status["pid"]) else None
        return status

    def set_status(self, state: str, message: str = "", **extra: Any) -> None:
        self.write_json("status.json", self._status_record(state, message, **extra))

    def heartbeat(self, every: float = HEARTBEAT_EVERY_S) -> bool:
        """Refresh the running status's time, at most once per ``every`` seconds; True when written.

        Only the process the status names beats, so a reader can never keep a dead run alive.
        """
        now = time.monotonic()
        if now - self._last_beat < every:
            return False
        try:
            status = self.read_object("status.json")
        except RunError:
            return False
        if not status or status.get("state") != "running" or status.get("pid") != os.getpid():
            return False
        status["updated"] = time.time()
        self.write_json("status.json", status)
        self._last_beat = now
        return True

    def _recorded_status(self) -> dict:
        """status.json as written, checked (RunError says what is wrong); none yet reads as queued."""
        status = self._checked("status.json", _STATUS_FIELDS)
        if status is None:
            return {"state": "queued", "message": "", "updated": self.meta.get("created", 0.0)}
        if "state" not in status:
            raise RunError("status.json names no state.")
        if status["state"] not in STATES:
            raise RunError(
                f"status.json: 'state' should be one of {', '.join(STATES)}, "
                f"not {_describe(status['state'])}."
            )
        return status

    @property
    def status(self) -> dict:
        """The status. A run whose process is gone reads as ``failed`` with the reason; a run whose
        status.json (or worker.json) is unreadable or of the wrong shape reads as ``damaged``."""
        try:
            status = self._recorded_status()
            why = self._why_gone(status)
            if why:
                # The worker may have finished between the read and the process check: read again.
                newer = self._recorded_status()
                if newer != status:
                    status, why = newer, self._why_gone(newer)
        except RunError as exc:
            return {"state": DAMAGED, "message": str(exc)}
        if why:
            return {**status, "state": "failed", "message": why}
        return dict(status)

    def _why_gone(self, status: dict) -> str:
        """Why a queued or running run's process is gone ("" while it lives or cannot be judged)."""
        if status["state"] == "running":
            return self._running_gone(status)
        if status["state"] == "queued":
            return self._queued_gone(status)
        return ""

    def _running_gone(self, status: dict) -> str:
        pid, start = status.get("pid"), status.get("pid_start")
        if pid is not None and _here(status.get("host")):
            if not process_alive(pid, start):
                return _ENDED
            if start is not None and process_start(pid) is not None:
                return ""  # the very process that wrote the status: alive, however long it is silent
        # Another machine's process, or one the process table cannot confirm: the heartbeat decides.
        if time.time() - status.get("updated", 0.0) > HEARTBEAT_STALE_S:
            return (
                f"The training process has sent no heartbeat for over {HEARTBEAT_STALE_S / 60:.0f} "
                "minutes; it was probably killed or its machine restarted. The last checkpoint, if any, "
                "is kept; start a new run to train again."
            )
        return ""

    def _queued_gone(self, status: dict) -> str:
        worker = self._checked(WORKER_FILE, _WORKER_FIELDS, _WORKER_REQUIRED)
        if worker is None:
            if time.time() - status.get("updated", 0.0) > LAUNCH_GRACE_S:
                return (
                    f"The training process was never started: no worker was recorded within "
                    f"{LAUNCH_GRACE_S:.0f} seconds of queuing the run. Start a new run to train."
                )
            return ""
        if _here(worker.get("host")):
            if not process_alive(worker["pid"], worker.get("pid_start")):
                tail = self.log_tail(600)
                return "The training process ended before it started training." + (
                    f" Its last output: {tail}" if tail else ""
                )
            return ""
        if time.time() - worker["started"] > HEARTBEAT_STALE_S:
            return (
                f"The training process on {worker.get('host') or 'another machine'} has not started "
                f"training within {HEARTBEAT_STALE_S / 60:.0f} minutes; it was probably killed. "
                "Start a new run to train."
            )
        return ""

    @property
    def state(self) -> str:
        return self.status.get("state", "queued")

    def alive(self, status: dict | None = None) -> bool:
        """Whether a process may still be working on the run (then it must not be deleted)."""
        state = (self.status if status is None else status)["state"]
        if state == "running" or (state == "queued" and self.file(WORKER_FILE).exists()):
            return True
        if state != DAMAGED:
            return False
        # status.json cannot be read: a worker recorded on this machine may still be alive.
        try:
            worker = self._checked(WORKER_FILE, _WORKER_FIELDS, _WORKER_REQUIRED) or {}
        except RunError:
            return False
        return (
            bool(worker)
            and _here(worker.get("host"))
            and process_alive(worker["pid"], worker.get("pid_start"))
        )

    # ---- events ----------------------------------------------------------------------------
    def append_event(self, event: dict) -> None:
        """Append one event as a single line (a reader never sees a torn line as valid JSON)."""
        line = json.dumps({"time": time.time(), **event}, default=_json_default) + "\n"
        with open(self.file("events.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()

    def events(self, kind: str | None = None) -> list[dict]:
        path = self.file("events.jsonl")
        if not path.exists():
            return []
        out = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written right now, or torn by a crash
                if kind is None or event.get("kind") == kind:
                    out.append(event)
        return out

    # ---- stop ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the worker to stop after the current epoch. Calling it twice is harmless."""
        self.file("STOP").touch(exist_ok=True)

    def stop_requested(self) -> bool:
        return self.file("STOP").exists()

    # ---- weights and results ---------------------------------------------------------------
    def save_weights(self, name: str, state_dict: dict) -> Path:
        """Save tensors only; the file is read back with ``weights_only=True``."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
        path = self.file(f"checkpoints/{check_run_id(name)}.pt")
        atomic_write_bytes(path, buf.getvalue())
        return path

    def load_weights(self, name: str) -> dict:
        import torch

        path = self.file(f"checkpoints/{check_run_id(name)}.pt")
        if not path.exists():
            raise RunError(f"Run {self.id} has no checkpoint named {name!r}.")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged or foreign file must not crash the reader
            raise RunError(f"Checkpoint {path} cannot be read as tensors ({exc}).") from None

    def write_result(self, adata: Any) -> Path:
        """Write ``result.h5ad`` atomically; a failure leaves no temporary file and says why in plain words."""
        self.remove_temporary_files()
        path = self.file("result.h5ad")
        write_h5ad(adata, path)
        return path

    def remove_temporary_files(self) -> list[Path]:
        """Remove half-written files a crashed writer left behind (``.result.*``, ``.<name>.*.tmp``)."""
        removed = []
        for pattern in (".result.*", ".*.tmp", "checkpoints/.*.tmp"):
            for leftover in self.path.glob(pattern):
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
                    removed.append(leftover)
        return removed

    # ---- trained stages (kept before the analysis, so ``runs finish`` can redo it) -----------------
    def save_stage(self, index: int, name: str, state_dict: dict, outcome: dict) -> None:
        key = f"stage{index}_{name}"
        self.save_weights(key, state_dict)
        self.write_json(f"checkpoints/{key}.json", outcome)

    def load_stage(self, index: int, name: str) -> tuple[dict, dict]:
        key = f"stage{index}_{name}"
        if not self.file(f"checkpoints/{key}.json").is_file():
            raise RunError(
                f"Run {self.id} has no saved weights for training stage {index + 1} ({name}): its training "
                "did not finish, so there is nothing to finish from. Start a new run to train again."
            )
        outcome = self.read_json(f"checkpoints/{key}.json")
        if not isinstance(outcome, dict):
            raise RunError(f"Run {self.id}: checkpoints/{key}.json is damaged; start a new run.")
        return self.load_weights(key), outcome

    def saved_stages(self) -> list[str]:
        folder = self.file("checkpoints")
        return sorted(p.stem for p in folder.glob("stage*_*.json")) if folder.is_dir() else []

    def read_result(self) -> Any:
        import anndata

        path = self.file("result.h5ad")
        if not path.exists():
            raise RunError(f"Run {self.id} has no result yet (state: {self.state}).")
        try:
            return anndata.read_h5ad(path)
        except Exception as exc:
            raise RunError(f"{path} cannot be read ({exc}); the run's result is damaged.") from None

    def update_result(self, edit: Callable[[Any], Any]) -> Any:
        """Read ``result.h5ad``, let ``edit`` change the AnnData in place, write it back atomically and
        return the file as read again.

        Used to add annotations and saved differential expression (:mod:`scgraph_core.de`). Edits are
        serialised by a lock file, so two sessions saving at once both keep their change; a run that is
        still being worked on by its worker is refused. ``edit``'s exceptions propagate and leave the
        file as it was.
        """
        import fcntl

        if self.alive():
            raise RunError(
                f"Run {self.id} is still {self.state}; wait until it has finished to save into its results."
            )
        with open(self.file(".result-edit.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                adata = self.read_result()
                edit(adata)
                self.write_result(adata)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return self.read_result()

    def info(self) -> RunInfo:
        """The run's line in the list; never raises for a damaged folder (it says why instead)."""
        status = self.status
        damage = "; ".join(self.problems(status))
        state, message = status["state"], str(status.get("message", ""))
        if damage and not self.alive(status):  # a live run keeps its state until it ends
            state, message = DAMAGED, damage
        meta = self.meta
        return RunInfo(
            id=self.id,
            path=self.path,
            name=meta.get("name", self.id),
            model=meta.get("model", "?"),
            dataset=meta.get("dataset", "?"),
            created=float(meta.get("created", 0.0)),
            state=state,
            message=message,
            damage=damage,
        )

    @classmethod
    def create_at(
        cls,
        path: Path | str,
        *,
        name: str | None = None,
        model: str = "",
        dataset: str = "",
        config: dict | None = None,
    ) -> Run:
        """Make a run folder at ``path``: a new folder, or an existing one that holds no run.

        Creation is atomic: the files are written under temporary names, then meta.json is claimed
        with a hard link, which fails when it exists. Of two processes creating the same folder at
        once exactly one succeeds; the other gets a RunError and leaves nothing behind.
        """
        path = Path(path)
        display = check_display_name(name or path.name)
        taken = f"{path} already holds a run; choose another output folder or delete that run first."
        if _is_run_folder(path):
            raise RunError(taken)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"The run folder {path} cannot be made: {exc.strerror or exc}.") from None
        meta = {"name": display, "model": model, "dataset": dataset, "created": time.time()}
        files = {
            "meta.json": meta,
            "config.json": config or {},
            "status.json": cls._status_record("queued", updated=meta["created"]),
        }
        temps = {file: _write_temp(path, file, _json_bytes(obj)) for file, obj in files.items()}
        try:
            try:
                _claim(temps["meta.json"], path / "meta.json")
            except FileExistsError:
                raise RunError(taken) from None
            os.replace(temps["config.json"], path / "config.json")
            os.replace(temps["status.json"], path / "status.json")
        finally:
            for tmp in temps.values():
                Path(tmp).unlink(missing_ok=True)
        return cls(path)


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and any(os.path.lexists(path / name) for name in RUN_FILES)


class RunStore:
    """All runs under one root folder (``$SCGRAPH_HOME/runs``)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_home() / "runs"

    def _path(self, run_id: str) -> Path:
        return self.root / check_run_id(run_id)

    def new_id(self, model: str = "run") -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        prefix = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-") or "run"
        return f"{prefix}-{stamp}-{secrets.token_hex(2)}"

    def create(
        self, *, model: str, name: str | None = None, dataset: str = "", config: dict | None = None
    ) -> Run:
        run_id = self.new_id(model)
        for _ in range(8):  # an id already taken this second: draw another
            if not os.path.lexists(self._path(run_id)):
                break
            run_id = self.new_id(model)
        return Run.create_at(
            self._path(run_id), name=name or run_id, model=model, dataset=dataset, config=config
        )

    def open(self, run_id: str) -> Run:
        """The run ``run_id``, damaged or not (a damaged run can still be deleted)."""
        path = self._path(run_id)
        if not _is_run_folder(path):
            raise RunError(f"There is no run {run_id!r} in {self.root}.")
        return Run(path)

    def __iter__(self) -> Iterator[Run]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            if not _RUN_ID.match(path.name) or not _is_run_folder(path):
                warnings.warn(f"Skipping {path}: it is not a scgraph run folder.", stacklevel=2)
                continue
            yield Run(path)

    def list(self) -> list[RunInfo]:
        """Every run, newest first. Each is read on its own: a damaged one is listed with the state
        ``damaged`` and the reason, and never hides the others."""
        infos = []
        for run in self:
            try:
                infos.append(run.info())
            except OSError as exc:  # the folder itself cannot be read
                reason = f"The run folder cannot be read ({exc.strerror or exc})."
                infos.append(RunInfo(run.id, run.path, run.id, "?", "?", 0.0, DAMAGED, reason, damage=reason))
        return sorted(infos, key=lambda i: i.created, reverse=True)

    def rename(self, run_id: str, new_name: str) -> None:
        new_name = check_display_name(new_name)
        run = self.open(run_id)
        try:
            meta = run._checked("meta.json", _META_FIELDS)
        except RunError as exc:
            raise RunError(f"Run {run_id} cannot be renamed: {exc} Delete it instead.") from None
        if meta is None:
            raise RunError(f"Run {run_id} cannot be renamed: its meta.json is missing. Delete it instead.")
        meta["name"] = new_name
        run.write_json("meta.json", meta)

    def delete(self, run_id: str) -> None:
        """Remove a run folder; damaged and dead runs too. Refused only while a process works on it."""
        run = self.open(run_id)
        if run.alive():
            raise RunError(f"Run {run_id} is still training; stop it first, then delete it.")
        # Move aside first so a half-finished delete never leaves a half-run in the list.
        trash = self.root / f".deleting-{run_id}-{secrets.token_hex(2)}"
        try:
            os.replace(run.path, trash)
        except FileNotFoundError:
            raise RunError(f"Run {run_id} was deleted meanwhile (by another process).") from None
        shutil.rmtree(trash, ignore_errors=True)
