"""The run store: every training run is a folder on disk that outlives the process that made it.

A run folder holds::

    meta.json      name, model, dataset, creation time (rename edits only this file)
    config.json    the resolved configuration (schemas, seed, package versions)
    status.json    state (queued, running, done, stopped, failed), message, worker pid, heartbeat
    events.jsonl   one JSON object per line (epochs, stages); a torn last line is ignored
    STOP           present once a stop was requested (idempotent)
    checkpoints/   weights as tensors only (``torch.load(weights_only=True)``)
    result.h5ad    the AnnData with every result, written atomically

Every JSON or h5ad file is written to a temporary name and renamed into place, so a crash never
leaves a half-written file that breaks listing. Folders that are not runs are skipped with a warning.
"""

from __future__ import annotations

import errno
import json
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
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HEARTBEAT_STALE_S = 120.0


def default_home() -> Path:
    """The run store root: ``$SCGRAPH_HOME`` or ``~/.scgraph``."""
    env = os.environ.get("SCGRAPH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".scgraph"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunInfo:
    """One line of the run list."""

    id: str
    path: Path
    name: str
    model: str
    dataset: str
    created: float
    state: str
    message: str


class Run:
    """One run folder. Safe to open from several processes: the worker writes, pages read."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

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

    @property
    def meta(self) -> dict:
        return self.read_json("meta.json", {}) or {}

    @property
    def config(self) -> dict:
        return self.read_json("config.json", {}) or {}

    # ---- status ----------------------------------------------------------------------------
    def set_status(self, state: str, message: str = "", **extra: Any) -> None:
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
        self.write_json("status.json", status)

    def heartbeat(self) -> None:
        """Refresh the running status so readers can tell a live worker from a dead one."""
        status = self.read_json("status.json", {}) or {}
        if status.get("state") == "running":
            status["updated"] = time.time()
            self.write_json("status.json", status)

    @property
    def status(self) -> dict:
        """The status, with a running run whose worker died reported as failed."""
        status = dict(self.read_json("status.json", {"state": "queued", "message": ""}) or {})
        if status.get("state") == "running" and self._worker_gone(status):
            status["state"] = "failed"
            status["message"] = (
                "The training process ended without finishing (it was killed or crashed). "
                "The last checkpoint, if any, is kept; start a new run to train again."
            )
        return status

    def _worker_gone(self, status: dict) -> bool:
        pid, host = status.get("pid"), status.get("host")
        if host == socket.gethostname() and isinstance(pid, int):
            return not _pid_alive(pid)
        return time.time() - float(status.get("updated", 0)) > _HEARTBEAT_STALE_S

    @property
    def state(self) -> str:
        return self.status.get("state", "queued")

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

    def info(self) -> RunInfo:
        meta = self.meta
        status = self.status
        return RunInfo(
            id=self.id,
            path=self.path,
            name=meta.get("name", self.id),
            model=meta.get("model", "?"),
            dataset=meta.get("dataset", "?"),
            created=float(meta.get("created", 0.0)),
            state=status.get("state", "queued"),
            message=status.get("message", ""),
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
        """Make a run folder at ``path`` (which must not hold another run already)."""
        path = Path(path)
        if (path / "meta.json").exists() or (path / "status.json").exists():
            raise RunError(
                f"{path} already holds a run; choose another output folder or delete that run first."
            )
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run.write_json(
            "meta.json",
            {
                "name": check_display_name(name or path.name),
                "model": model,
                "dataset": dataset,
                "created": time.time(),
            },
        )
        run.write_json("config.json", config or {})
        run.set_status("queued")
        return run


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
        return Run.create_at(
            self._path(run_id), name=name or run_id, model=model, dataset=dataset, config=config
        )

    def open(self, run_id: str) -> Run:
        path = self._path(run_id)
        if not (path / "meta.json").is_file():
            raise RunError(f"There is no run {run_id!r} in {self.root}.")
        return Run(path)

    def __iter__(self) -> Iterator[Run]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            if not _RUN_ID.match(path.name) or not (path / "meta.json").is_file():
                warnings.warn(f"Skipping {path}: it is not a scgraph run folder.", stacklevel=2)
                continue
            yield Run(path)

    def list(self) -> list[RunInfo]:
        """Every readable run, newest first; damaged folders are skipped with a warning."""
        infos = []
        for run in self:
            try:
                infos.append(run.info())
            except RunError as exc:
                warnings.warn(f"Skipping {run.path}: {exc}", stacklevel=2)
        return sorted(infos, key=lambda i: i.created, reverse=True)

    def rename(self, run_id: str, new_name: str) -> None:
        run = self.open(run_id)
        meta = run.meta
        meta["name"] = check_display_name(new_name)
        run.write_json("meta.json", meta)

    def delete(self, run_id: str) -> None:
        run = self.open(run_id)
        if run.state == "running":
            raise RunError(f"Run {run_id} is still training; stop it first, then delete it.")
        # Move aside first so a half-finished delete never leaves a half-run in the list.
        trash = self.root / f".deleting-{run_id}-{secrets.token_hex(2)}"
        os.replace(run.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
