"""The shared trainer: devices, seeds, precision, epochs, events, best checkpoints, cancellation.

A model describes one training stage as a :class:`Stage` (the module, its optimiser and a
``step`` function returning the loss terms); :meth:`Trainer.run_stage` runs the epochs and emits one
event per epoch to every callback (the run folder's ``events.jsonl``, a progress bar, the app).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, TrainingError
from .params import param

Event = dict[str, Any]
Callback = Callable[[Event], None]


@dataclass(frozen=True)
class TrainSpec:
    """Options every model's training shares."""

    seed: int = param(0, "random seed for torch, numpy, Python, UMAP and clustering", min=0)
    device: str = param(
        "auto",
        "where to train: auto picks CUDA, then Apple MPS, then the CPU",
        choices=("auto", "cpu", "cuda", "mps"),
    )
    precision: str = param(
        "auto",
        "number format for the big matrix products: auto uses bfloat16 where the processor supports it "
        "(checked to keep accuracy), fp32 is exact single precision",
        choices=("auto", "fp32", "bf16"),
    )
    eval_every: int = param(10, "evaluate on the validation edges every this many epochs (0 = never)", min=0)
    patience: int = param(
        0, "stop after this many evaluations without improvement (0 = never stop early)", min=0
    )
    restore_best: bool = param(
        False, "finish with the best checkpoint (by validation score) instead of the last epoch's weights"
    )
    deterministic: bool = param(
        False,
        "use PyTorch's deterministic algorithms on the GPU too (slower there); on the CPU they are always on, "
        "so a seeded run repeats exactly",
        advanced=True,
    )
    threads: int = param(0, "CPU threads for PyTorch (0 = all cores)", min=0, advanced=True)


def resolve_device(name: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU for "auto"; an explicit choice that is not available is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "CUDA was asked for but no CUDA GPU is available here; choose device 'auto' or 'cpu'."
        )
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(
                "Apple MPS was asked for but is not available here; choose device 'auto' or 'cpu'."
            )
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unknown device {name!r}; choose auto, cpu, cuda or mps.")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 dot products (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the chosen precision, or None for plain float32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if device.type == "cpu":
        if precision == "bf16" or cpu_supports_bf16():
            return torch.bfloat16
        return None
    return None  # MPS: keep float32


def precision_name(precision: str, device: torch.device | str) -> str:
    """What a run with ``precision`` ("auto", "fp32", "bf16") computes in on ``device``: "bf16" or "fp32".
    The same decision :class:`Trainer` takes (:func:`resolve_precision`), for showing before a run starts."""
    dtype = resolve_precision(precision, torch.device(device) if isinstance(device, str) else device)
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python, numpy and torch (all devices) and set PyTorch's process-wide deterministic-algorithms
    flag to ``deterministic`` (on or off, so one run's choice does not leak into the next run of the same
    process); return a torch generator for sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: the GPU allocator's peak on CUDA, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        # ru_maxrss is in kilobytes on Linux.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return float("nan")


class StopSignal:
    """A stop request from another thread (``set()``) or another process (a run folder's STOP file)."""

    def __init__(self, check: Callable[[], bool] | None = None):
        self._event = threading.Event()
        self._check = check

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        if self._event.is_set():
            return True
        if self._check is not None and self._check():
            self._event.set()
        return self._event.is_set()


@dataclass
class Stage:
    """One training stage.

    ``step(epoch)`` runs one optimisation step and returns the loss terms as tensors (their sum is
    optimised when ``"loss"`` is absent). ``evaluate()`` returns validation scores; ``score`` names the
    one to maximise for the best checkpoint (``None``: lowest training loss).
    """

    name: str
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[int], dict[str, torch.Tensor]]
    epochs: int
    evaluate: Callable[[], dict[str, float]] | None = None
    score: str | None = None
    grad_clip: float | None = None
    scheduler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Per-stage overrides of TrainSpec.patience / restore_best / eval_every (None: the TrainSpec value).
    patience: int | None = None
    restore_best: bool | None = None
    eval_every: int | None = None
    # Called after each epoch's step with the epoch's event (it may add entries); True ends the stage
    # as converged (for example LabelChangeStop for DEC fine-tuning).
    after_epoch: Callable[[int, Event], bool] | None = None
    # False: the run folder does not keep this stage's weights, and ``runs finish`` trains it again instead
    # of loading it (scGNN's per-cluster autoencoders: many short stages whose weights nothing reads later).
    saved: bool = True


@dataclass
class StageOutcome:
    epochs_run: int
    stopped: bool
    best_epoch: int
    best_score: float
    seconds_per_epoch: float
    history: list[Event]
    converged: bool = False  # ended because the stage's after_epoch said so


class Trainer:
    """Runs stages with events, best-checkpoint keeping, cancellation and a NaN guard."""

    def __init__(
        self,
        spec: TrainSpec | None = None,
        *,
        callbacks: Iterable[Callback] = (),
        stop: StopSignal | None = None,
    ):
        self.spec = spec or TrainSpec()
        from . import distributed

        self.device = distributed.device_for(resolve_device(self.spec.device))
        self.amp_dtype = resolve_precision(self.spec.precision, self.device)
        self.callbacks = list(callbacks)
        self.stop = stop if stop is not None else StopSignal()
        # Stages are numbered in the order they run. ``keep(index, stage, outcome)`` is called after each one
        # (the run folder saves the weights there, so a failure in the analysis never loses a trained model);
        # with ``replay(index, stage) -> outcome`` set, a stage is not trained but loaded (``runs finish``).
        self.keep: Callable[[int, Stage, StageOutcome], None] | None = None
        self.replay: Callable[[int, Stage], StageOutcome] | None = None
        self.stages_run = 0
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        elif self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        # Deterministic algorithms always on the CPU: without them the same seed gave a different AttentionAE-sc
        # model on 2 threads (Leiden start ARI 0.71 vs 0.60); they cost a few percent of speed there (README).
        deterministic = self.spec.deterministic or self.device.type == "cpu"
        self.generator = seed_everything(self.spec.seed, deterministic=deterministic)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def precision_name(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"  # as :func:`precision_name` says

    def emit(self, event: Event) -> None:
        for cb in self.callbacks:
            cb(event)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def run_stage(self, stage: Stage) -> StageOutcome:
        index = self.stages_run
        self.stages_run += 1
        if self.replay is not None and stage.saved:
            outcome = self.replay(index, stage)
            stage.module.eval()
            return outcome
        outcome = self._train_stage(stage)
        if self.keep is not None and stage.saved:
            self.keep(index, stage, outcome)
        return outcome

    def _train_stage(self, stage: Stage) -> StageOutcome:
        spec = self.spec
        best_state: dict[str, torch.Tensor] | None = None
        best_score, best_epoch = -math.inf, 0
        since_best = 0
        history: list[Event] = []
        epoch_seconds: list[float] = []
        stopped = False
        converged = False
        patience = spec.patience if stage.patience is None else stage.patience
        restore_best = spec.restore_best if stage.restore_best is None else stage.restore_best
        eval_every = spec.eval_every if stage.eval_every is None else stage.eval_every
        self.emit(
            {
                "kind": "stage_start",
                "stage": stage.name,
                "epochs": stage.epochs,
                "device": str(self.device),
                "precision": self.precision_name,
            }
        )
        epoch = 0
        from . import distributed

        for epoch in range(1, stage.epochs + 1):
            # Distributed, every rank stops at the same step (a rank that stopped alone would leave the others
            # waiting for its gradients).
            if distributed.any_rank(bool(self.stop)):
                stopped = True
                epoch -= 1
                break
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            stage.module.train()
            stage.optimizer.zero_grad(set_to_none=True)
            terms = stage.step(epoch)
            loss = terms["loss"] if "loss" in terms else sum(terms.values())
            finite = bool(torch.isfinite(loss.detach()))
            # Distributed, every rank learns that one diverged before any waits for the others' gradients.
            if distributed.any_rank(not finite):
                self._restore(stage.module, best_state)
                self.emit(
                    {"kind": "error", "stage": stage.name, "epoch": epoch, "message": "non-finite loss"}
                )
                where = (
                    f"The loss became {float(loss.detach())}"
                    if not finite
                    else "The loss of another training process became non-finite"
                )
                raise TrainingError(
                    f"{where} at epoch {epoch} of {stage.name}; training stopped and no result was written from "
                    "the diverged weights. Try a lower learning rate, fewer heads, or check the input for "
                    "extreme values."
                )
            loss.backward()
            if stage.grad_clip:
                torch.nn.utils.clip_grad_norm_(stage.module.parameters(), stage.grad_clip)
            stage.optimizer.step()
            if stage.scheduler is not None:
                stage.scheduler.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            epoch_seconds.append(seconds)
            event: Event = {
                "kind": "epoch",
                "stage": stage.name,
                "epoch": epoch,
                "epochs": stage.epochs,
                "loss": float(loss.detach()),
                "losses": {k: float(v.detach()) for k, v in terms.items() if k != "loss"},
                "seconds": seconds,
                "peak_memory_mb": peak_memory_mb(self.device),
            }
            # Best checkpoint: by validation score when one is computed, else by training loss.
            score = None
            do_eval = (
                stage.evaluate is not None
                and eval_every
                and (epoch % eval_every == 0 or epoch == stage.epochs)
            )
            if do_eval:
                eval_start = time.perf_counter()
                scores = stage.evaluate()
                event["validation"] = scores
                event["eval_seconds"] = time.perf_counter() - eval_start
                if stage.score is not None:
                    score = scores.get(stage.score)
            elif stage.score is None:
                score = -event["loss"]
            if score is not None and math.isfinite(score):
                if score > best_score:
                    best_score, best_epoch, since_best = score, epoch, 0
                    best_state = self._snapshot(stage.module)
                else:
                    since_best += 1
            if stage.after_epoch is not None and stage.after_epoch(epoch, event):
                converged = True
            history.append(event)
            self.emit(event)
            if converged:
                self.emit({"kind": "converged", "stage": stage.name, "epoch": epoch})
                break
            if patience and since_best >= patience:
                self.emit(
                    {"kind": "early_stop", "stage": stage.name, "epoch": epoch, "best_epoch": best_epoch}
                )
                break
        if stopped or restore_best:
            self._restore(stage.module, best_state)
        stage.module.eval()
        median = float(np.median(epoch_seconds)) if epoch_seconds else float("nan")
        outcome = StageOutcome(epoch, stopped, best_epoch, best_score, median, history, converged)
        self.emit(
            {
                "kind": "stage_end",
                "stage": stage.name,
                "epochs_run": epoch,
                "stopped": stopped,
                "best_epoch": best_epoch,
                "seconds_per_epoch": median,
            }
        )
        return outcome

    @staticmethod
    def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        # A real copy: state_dict() returns references that the next step would overwrite.
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    @staticmethod
    def _restore(module: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> None:
        if state is not None:
            module.load_state_dict(copy.deepcopy(state))


class LabelChangeStop:
    """Convergence test on a sequence of hard labels (DEC's stopping rule, Xie et al. 2016).

    ``update(epoch, labels)`` returns True once ``epoch > min_epochs`` and the share of cells whose label
    differs from the previous call is below ``tol`` (0.001 = 0.1 %). ``last_change`` keeps that share.
    """

    def __init__(self, tol: float = 0.001, min_epochs: int = 0) -> None:
        if not 0.0 <= tol < 1.0:
            raise ConfigError(f"The label-change tolerance must be in [0, 1); got {tol}.")
        self.tol = float(tol)
        self.min_epochs = int(min_epochs)
        self.previous: np.ndarray | None = None
        self.last_change: float | None = None

    def update(self, epoch: int, labels: Any) -> bool:
        labels = np.asarray(labels).copy()
        if self.previous is None or self.previous.shape != labels.shape:
            self.previous, self.last_change = labels, None
            return False
        self.last_change = float(np.mean(labels != self.previous))
        self.previous = labels
        return epoch > self.min_epochs and self.last_change < self.tol
