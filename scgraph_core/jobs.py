"""Background training jobs for the app: start the worker detached, save uploads, read progress.

The app never trains in its own process. :func:`start` makes a run folder (``config.json`` holds the
resolved configuration plus ``input``) and :func:`launch` starts ``python -m scgraph_core work RUN_DIR``
(the same worker the command line uses, :func:`scgraph_core.pipeline.run_folder`) as a detached
process: in its own session, with no terminal, its output in ``worker.log``, reparented away from the
app (a short-lived launcher process starts it and exits). Closing the browser tab, a Streamlit rerun,
or stopping the Streamlit server therefore neither stops nor loses the training; every page reads the
run folder.

:func:`progress` turns a run folder's ``events.jsonl`` into what the Training page draws (epoch,
ETA, loss terms, validation scores, device, memory). :func:`save_upload` stores an uploaded file under
``$SCGRAPH_HOME/uploads`` so the worker, a separate process, can read it by path.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import resources
from .errors import DataError, RunError
from .runs import (
    FINISHED,
    LOG_FILE,
    WORKER_FILE,
    Run,
    RunStore,
    atomic_write_bytes,
    default_home,
    process_alive,
    process_start,
)

__all__ = [
    "Progress",
    "finish",
    "launch",
    "progress",
    "safe_filename",
    "save_upload",
    "start",
    "status",
    "stop",
    "uploads_dir",
    "worker_alive",
]

# The launcher: a tiny process that starts the worker in a new session and exits at once, so the
# worker is adopted by init (never a zombie of the app) and no signal sent to the app reaches it.
_LAUNCHER = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab', buffering=0)\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,\n"
    "                     start_new_session=True, close_fds=True)\n"
    "print(p.pid, flush=True)\n"
)


# ------------------------------------------------------------------------------------------------
# Uploads
# ------------------------------------------------------------------------------------------------


def uploads_dir(home: Path | str | None = None) -> Path:
    """Where uploaded files are kept: ``$SCGRAPH_HOME/uploads`` (or ``home/uploads``)."""
    return (Path(home) if home is not None else default_home()) / "uploads"


def safe_filename(name: str) -> str:
    """A plain file name from a browser-supplied one: no folders, only letters, digits, '.', '_', '-'.

    The extension (``.csv.gz``, ``.h5ad``) is kept because the reader picks the format from it.
    """
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    if not base or set(base) <= {".", "_", "-"}:
        raise DataError(f"The uploaded file name {name!r} has no usable characters; rename the file.")
    return base[:150]


def save_upload(name: str, content: bytes, *, home: Path | str | None = None) -> Path:
    """Store an uploaded file and return its path (the same content is stored once).

    Files go to ``uploads/<first 16 hex digits of sha256>/<safe name>``, written atomically, so two
    uploads of the same file share one copy and a half-written file is never read.
    """
    if not content:
        raise DataError(f"The uploaded file {name!r} is empty; upload it again or check the file.")
    digest = hashlib.sha256(content).hexdigest()[:16]
    path = uploads_dir(home) / digest / safe_filename(name)
    if not path.exists() or path.stat().st_size != len(content):
        atomic_write_bytes(path, content)
    return path


# ------------------------------------------------------------------------------------------------
# Starting and stopping
# ------------------------------------------------------------------------------------------------


def input_record(path: str | Path, orientation: str = "auto", fmt: str | None = None) -> dict[str, Any]:
    """The ``input`` entry of a run's config.json; file paths are made absolute for the worker."""
    from .data import DEMO_PATH

    text = str(path)
    if text != DEMO_PATH:
        text = str(Path(text).expanduser().absolute())
    return {"path": text, "orientation": orientation, "format": fmt}


def start(
    config: Any,
    input: dict[str, Any],
    *,
    store: RunStore | None = None,
    name: str | None = None,
    dataset: str | None = None,
    python: str | None = None,
) -> Run:
    """Create a queued run for ``config`` (a :class:`~scgraph_core.pipeline.RunConfig`) and start it.

    ``input`` is :func:`input_record`'s dict. Returns the run; its worker runs detached.
    """
    record = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if "model" not in record:
        raise RunError("The configuration names no model; choose a model first.")
    record["input"] = dict(input)
    store = store or RunStore()
    if dataset is None:
        dataset = Path(str(input.get("path", "")).rstrip("/")).name.replace("builtin:", "")
    run = store.create(model=record["model"], name=name, dataset=dataset, config=record)
    launch(run, python=python)
    return run


def launch(run: Run, *, python: str | None = None, env: dict[str, str] | None = None) -> int:
    """Start the worker for a queued run, detached; record its pid in ``worker.json``; return the pid."""
    if run.state != "queued":
        raise RunError(f"Run {run.id} is {run.state}; only a queued run can be started.")
    if run.file(WORKER_FILE).exists():
        raise RunError(f"Run {run.id} was already started; start a new run instead.")
    python = python or sys.executable
    command = [python, "-m", "scgraph_core", "work", str(run.path.absolute())]
    try:
        pid = _detached(run, command, env)
    except RunError as exc:
        run.set_status("failed", f"The training process could not be started: {exc}")
        raise RunError(f"The training process could not be started: {exc}") from None
    run.write_json(
        WORKER_FILE,
        {
            "pid": pid,
            "pid_start": process_start(pid),  # tells the worker from a later process given its pid
            "host": socket.gethostname(),
            "started": time.time(),
            "command": command,
        },
    )
    return pid


def finish(run: Run, *, python: str | None = None) -> int:
    """Start ``python -m scgraph_core runs finish RUN_DIR`` detached (the Runs page's Finish button): a run that
    failed after training is analysed and written from its saved weights. Returns the process id."""
    state = run.state
    if state in ("queued", "running"):
        raise RunError(f"Run {run.id} is {state}; wait for it to end before finishing it.")
    if not run.saved_stages():
        raise RunError(f"Run {run.id} has no saved training stages, so there is nothing to finish from.")
    python = python or sys.executable
    command = [python, "-m", "scgraph_core", "runs", "finish", str(run.path.absolute()), "--json"]
    try:
        return _detached(run, command, None)
    except RunError as exc:
        raise RunError(f"The finishing process could not be started: {exc}") from None


def _detached(run: Run, command: list[str], env: dict[str, str] | None) -> int:
    """Start ``command`` in a session of its own (it outlives the app), its output appended to the run's
    worker log; return its pid, or raise RunError with the launcher's own words."""
    # The process must import this engine even when the app was started from another folder; it keeps the
    # app's working folder, so relative settings (SCGRAPH_HOME, SCGRAPH_DATA_ROOTS) mean the same to it.
    child_env = resources.child_env(env)
    child_env.setdefault("SCGRAPH_HOME", str(default_home()))
    child_env["PYTHONUNBUFFERED"] = "1"
    out = subprocess.run(
        [command[0], "-c", _LAUNCHER, str(run.file(LOG_FILE)), *command],
        env=child_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        raise RunError((out.stderr or out.stdout).strip()[-500:] or f"exit status {out.returncode}")
    return int(out.stdout.strip())


def worker_info(run: Run) -> dict[str, Any]:
    """worker.json ({} when there is none or it is damaged)."""
    try:
        return run.read_object(WORKER_FILE) or {}
    except RunError:
        return {}


def worker_alive(run: Run) -> bool | None:
    """Whether the run's worker process is alive (None: unknown, e.g. started on another machine)."""
    info = worker_info(run)
    pid, start = info.get("pid"), info.get("pid_start")
    if not _is_pid(pid) or info.get("host") != socket.gethostname():
        return None
    return process_alive(pid, start if isinstance(start, int) and not isinstance(start, bool) else None)


def _is_pid(pid: Any) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31


def _zombie(pid: Any, host: Any) -> bool:
    return _is_pid(pid) and host == socket.gethostname() and not _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    # A process that ended but was not reaped still answers kill(pid, 0); /proc says it is a zombie.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def log_tail(run: Run, n_chars: int = 1500) -> str:
    return run.log_tail(n_chars)


def status(run: Run) -> dict[str, Any]:
    """The run's status: :attr:`Run.status`, which reports a run whose worker died (before or while
    training, a zombie included) as failed with the reason and the worker's last output, and a run
    whose files are damaged as ``damaged``."""
    return dict(run.status)


def stop(run: Run) -> None:
    """Ask the run to stop after the current epoch (idempotent); it keeps its best checkpoint."""
    if run.state in FINISHED:
        return
    run.request_stop()


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What a run's event log says about it, for the Training page.

    ``history`` has one row per epoch: stage, epoch, loss, one column per loss term, and the
    validation scores where they were computed. ``rounds`` holds the ``round`` events of an iterative
    model (scGNN's refinement loop, scBiGNN's EM), in order. ``eta_s`` is the time left for the training epochs
    of the current stage (median of the last epochs' seconds times the epochs left); clustering and
    interpretation come after it.
    """

    state: str
    message: str
    step: str = ""  # pipeline step: graph, train, cluster, interpret
    restart: str = ""  # AttentionAE-sc started DEC again: why ("zinb" = its guard, "merge" = the merge rule)
    stage: str = ""
    epoch: int = 0
    epochs: int = 0
    started: float | None = None
    updated: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    seconds_per_epoch: float | None = None
    device: str = ""
    precision: str = ""
    peak_memory_mb: float | None = None
    stop_requested: bool = False
    stages: list[dict[str, Any]] = field(default_factory=list)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def fraction(self) -> float:
        """Share of the current stage's epochs done, in [0, 1]."""
        return min(1.0, self.epoch / self.epochs) if self.epochs else 0.0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def progress(run: Run, *, recent: int = 10) -> Progress:
    """Read the run folder's status and event log into a :class:`Progress`."""
    st = status(run)
    events = run.events()
    out = Progress(state=st.get("state", "queued"), message=str(st.get("message", "")))
    out.stop_requested = run.stop_requested()
    rows: list[dict[str, Any]] = []
    seconds: list[float] = []
    for ev in events:
        kind = ev.get("kind")
        t = ev.get("time")
        if out.started is None and t is not None:
            out.started = float(t)
        if t is not None:
            out.updated = float(t)
        if kind == "pipeline":
            out.step = str(ev.get("step", ""))
            # AttentionAE-sc's guard abandoned DEC and starts it again: the first run's epochs get their own name
            if out.step == "dec_restart":
                out.restart = str(ev.get("reason", "zinb"))
                for row in rows:
                    if row["stage"] == "dec":
                        row["stage"] = "dec_abandoned"
                for stage in out.stages:
                    if stage["stage"] == "dec":
                        stage["stage"] = "dec_abandoned"
            out.device = str(ev.get("device", out.device) or out.device)
            out.precision = str(ev.get("precision", out.precision) or out.precision)
        elif kind == "stage_start":
            out.stage, out.epoch, out.epochs = str(ev.get("stage", "")), 0, int(ev.get("epochs", 0))
            out.device = str(ev.get("device", out.device) or out.device)
            out.precision = str(ev.get("precision", out.precision) or out.precision)
            out.stages.append({"stage": out.stage, "epochs": out.epochs})
            seconds = []
        elif kind == "epoch":
            out.stage = str(ev.get("stage", out.stage))
            out.epoch = int(ev.get("epoch", 0))
            out.epochs = int(ev.get("epochs", out.epochs))
            if ev.get("seconds") is not None:
                seconds.append(float(ev["seconds"]))
            if ev.get("peak_memory_mb") is not None:
                out.peak_memory_mb = float(ev["peak_memory_mb"])
            row = {"stage": out.stage, "epoch": out.epoch, "loss": ev.get("loss")}
            row.update({str(k): v for k, v in (ev.get("losses") or {}).items()})
            row.update({str(k): v for k, v in (ev.get("validation") or {}).items()})
            rows.append(row)
        elif kind == "stage_end" and out.stages:
            out.stages[-1].update(
                epochs_run=ev.get("epochs_run"),
                stopped=ev.get("stopped"),
                best_epoch=ev.get("best_epoch"),
            )
        elif kind == "round":
            out.rounds.append(ev)
        elif kind == "error":
            out.error = str(ev.get("message", ""))
    out.history = pd.DataFrame(rows)
    if seconds:
        tail = sorted(seconds[-recent:])
        out.seconds_per_epoch = tail[len(tail) // 2]
        if not out.finished and out.epochs:
            out.eta_s = max(0, out.epochs - out.epoch) * out.seconds_per_epoch
    if out.started is not None:
        end = out.updated if out.finished and out.updated else time.time()
        out.elapsed_s = max(0.0, end - out.started)
    return out


def progress_json(run: Run) -> str:
    """The progress as JSON (for the command line and debugging)."""
    p = progress(run)
    d = {k: v for k, v in p.__dict__.items() if k != "history"}
    d["history_rows"] = len(p.history)
    return json.dumps(d, default=str)
