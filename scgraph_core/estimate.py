"""How long a run will take and how much memory it will need, measured on this machine before it starts.

Calibration (:func:`calibrate`) runs the chosen model for real on a random subsample of ``n`` cells
(default :data:`CALIBRATION_CELLS`) with every gene of the data, so the prepared input has the real
number of model genes: preparation, graph construction, every training stage cut to
:data:`CALIBRATION_STEPS` steps or until the step time settles (the slower first steps are kept as a
fixed warm-up), the
clustering and interpretation that follow training, and the write of the result. It runs on the device
and precision the run will use and is cached per (data, model, settings, device) for the process.

:func:`estimate` extrapolates each stage to the full data of ``N`` cells and ``G`` genes:

    training     = Σ_stages (epochs_s · t_s · N / n + warm-up_s)  (+ evaluations: t_eval · N / n · epochs_s / eval_every)
    preparation  = t_prep · N / n                    (one pass over N · G)
    graph        = the preview's measured build time, else t_graph · N / n (kNN), or
                   t_graph · (N / n)² for a model that builds a dense cell x cell kernel (scVGAE)
    clustering   = t_analysis · N / n                (UMAP, the HDBSCAN grid, Leiden, markers, attention)
    writing      = t_write · N / n
    start-up     = WORKER_STARTUP_S                  (a fresh worker imports torch and compiles numba)

Sparse message passing costs ~ edges ∝ N·k and the dense decoders (ZINB) ~ N · genes, both linear in N
at fixed settings, so every measured time is scaled by N / n. A fixed per-step overhead makes that an
over-estimate when N ≫ n, and a busy machine makes anything slower; each stage is therefore given as a
range ``[LOW · t, HIGH · t]`` (the low end widens to ``LOW_FAR`` when extrapolating more than
``FAR`` times the calibration size).

Without a calibration (before one has run, or when it fails) the estimate is a rough per-cell guess
from :data:`ROUGH_SECONDS_PER_CELL_EPOCH`, flagged ``rough=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import graphs
from .train import Trainer

__all__ = [
    "Calibration",
    "Estimate",
    "StageTime",
    "calibrate",
    "estimate",
    "format_seconds",
    "typical_edges",
]

#: Cells in the calibration subsample (all cells when the data has fewer).
CALIBRATION_CELLS = 400
#: Most training steps run per stage during calibration (fewer once the step time settles).
CALIBRATION_STEPS = 12
#: Fresh worker process: imports (torch, scanpy, anndata) and numba compilation of UMAP / HDBSCAN,
#: measured on the project's 2-core CPU machine (9-14 s); taken as fixed.
WORKER_STARTUP_S = 12.0
#: Range around each extrapolated stage time.
LOW, HIGH, LOW_FAR, FAR = 0.7, 1.5, 0.35, 4.0
#: Rough guess without a calibration: seconds per cell, per epoch, per 1000 model genes (2-core CPU,
#: CellVGAE quick on the demo ~ 1e-5; count models with a dense ZINB decoder are ~10x that per gene).
ROUGH_SECONDS_PER_CELL_EPOCH = 2e-5
#: Edges per cell of a union-symmetrised kNN graph, per unit of k (measured: 1.62 on the demo, 1.83 on
#: pbmc3k at k = 5).
EDGES_PER_K = 1.7
#: Memory model (MB), fitted once to the CellVGAE benchmark on the 2-core CPU machine:
#: process after loading = M0 + M1 · N · G; training extra = P0 + P1 · N · (input genes + widths).
M0, M1, P0, P1 = 441.0, 2.1e-5, 92.0, 1.58e-5
#: A model reads all genes above this many: warn (time and memory grow with cells x genes).
MANY_GENES = 5000

_CACHE: dict[str, Calibration] = {}


@dataclass(frozen=True)
class StageTime:
    """One part of a run: its name, a central time and a range (seconds), and how it was obtained."""

    name: str
    seconds: float
    low: float
    high: float
    detail: str


@dataclass(frozen=True)
class Calibration:
    """Times measured on a subsample of ``n_cells`` cells of the real data, on ``device``."""

    model: str
    device: str
    precision: str
    n_cells: int
    n_features: int
    n_edges: int
    prepare_seconds: float
    graph_seconds: float
    #: (stage name, declared epochs, settled seconds per step, seconds per evaluation, evaluations per
    #: epoch, warm-up seconds of the first steps beyond the settled time)
    stages: tuple[tuple[str, int, float, float, float], ...]
    analysis_seconds: float
    write_seconds: float
    seconds: float  # what the calibration itself took


@dataclass
class Estimate:
    """A time and memory estimate for one run (seconds and MB); ``parts`` is the breakdown."""

    model: str
    device: str
    n_cells: int
    n_features: int
    epochs: int
    seconds_per_epoch: float
    train_seconds: float
    other_seconds: float
    peak_memory_mb: float
    rough: bool
    basis: str
    precision: str = "fp32"  # what the run computes in: "bf16" or "fp32" (train.precision_name)
    parts: list[StageTime] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    @property
    def low_seconds(self) -> float:
        return sum(p.low for p in self.parts)

    @property
    def high_seconds(self) -> float:
        return sum(p.high for p in self.parts)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            total_seconds=self.total_seconds, low_seconds=self.low_seconds, high_seconds=self.high_seconds
        )
        return d


def typical_edges(n_cells: int, k: int) -> int:
    """The stored (directed) edge count of a union-symmetrised kNN graph, for when it is not built yet."""
    return int(round(n_cells * k * EDGES_PER_K))


def _epochs_of(params: Any) -> int:
    """Total epochs: the ``epochs`` parameter, or the sum of every ``*_epochs`` parameter (not minima)."""
    total = 0
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if (
            (f.name == "epochs" or f.name.endswith("_epochs"))
            and "min" not in f.name
            and isinstance(value, int)
        ):
            total += value
    return max(total, 1)


def _key(adata: Any, config: Any, device: str, precision: str, n_cells: int) -> str:
    shape = (int(adata.n_obs), int(adata.n_vars), str(adata.obs_names[0]), str(adata.var_names[-1]))
    text = json.dumps([shape, config.to_dict(), device, precision, n_cells], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def calibrate(
    adata: Any,
    config: Any,
    *,
    n_cells: int = CALIBRATION_CELLS,
    steps: int = CALIBRATION_STEPS,
    use_cache: bool = True,
) -> Calibration:
    """Time every stage of ``config`` on ``n_cells`` random cells of ``adata`` (all genes kept).

    Runs the same steps as :func:`scgraph_core.pipeline.execute` in this process, with each training
    stage cut to ``steps`` steps, and writes the result to a temporary folder. Raises what the run would
    raise (for example :class:`~scgraph_core.errors.DataError` for a count model on log-normalised data).
    """
    from . import data, pipeline
    from .analyse import analyse
    from .models import base
    from .runs import write_h5ad
    from .train import resolve_device

    config, _ = base.get(config.model).adapt(config, adata)  # the recipe the run will use on this input
    device = resolve_device(config.train.device)
    trainer = _CalibrationTrainer(config.train, steps=steps)
    key = _key(adata, config, device.type, trainer.precision_name, n_cells)
    if use_cache and key in _CACHE:
        return _CACHE[key]
    started = time.perf_counter()
    n = min(int(n_cells), int(adata.n_obs))
    rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, size=n, replace=False))
    sub = adata[rows].copy()
    model = base.get(config.model)()
    data.validate(sub, min_cells=config.graph.k + 1, require_counts=model.requires_counts).raise_if_errors()

    t0 = time.perf_counter()
    prepared = model.preprocess(sub, config.prepare)
    t1 = time.perf_counter()
    graph = pipeline.cell_graph(model, prepared, config)
    t2 = time.perf_counter()
    model.train(prepared, graph, config.params, trainer, cluster=config.cluster, labels=config.labels)
    result = analyse(model, prepared, config.cluster, seed=config.train.seed)
    t3 = time.perf_counter()
    out = model.match_input(result.write(prepared.adata), sub, prepared)
    with tempfile.TemporaryDirectory(prefix="scgraph-calibrate-") as tmp:
        write_h5ad(out, Path(tmp) / "result.h5ad")
    t4 = time.perf_counter()
    stats = graph.stats()
    cal = Calibration(
        model=config.model,
        device=device.type,
        precision=trainer.precision_name,
        n_cells=int(prepared.adata.n_obs),
        n_features=int(prepared.features.shape[1]),
        n_edges=int(stats.get("n_edges", 0)),
        prepare_seconds=t1 - t0,
        graph_seconds=t2 - t1,
        stages=tuple(trainer.timings),
        analysis_seconds=max(0.0, (t3 - t2) - trainer.seconds_in_stages),
        write_seconds=t4 - t3,
        seconds=t4 - started,
    )
    _CACHE[key] = cal
    return cal


class _CalibrationTrainer(Trainer):
    """A Trainer that runs each stage only until its step time settles, recording its declared epochs.

    The first steps in a fresh process are several times slower (kernel selection and compilation,
    measured here: ~8 steps of 1.6-2 s before CellVGAE settles at ~0.2 s on 700 cells); the worker pays
    that too, so it is kept as a fixed warm-up cost and the settled step time is what gets scaled.
    """

    def __init__(self, spec: Any, *, steps: int) -> None:
        super().__init__(spec)
        self.steps = max(2, int(steps))
        self.timings: list[tuple[str, int, float, float, float, float]] = []
        self.seconds_in_stages = 0.0

    def run_stage(self, stage: Any) -> Any:
        declared = int(stage.epochs)
        seen: list[float] = []

        def settled(epoch: int, event: dict[str, Any]) -> bool:
            seen.append(float(event["seconds"]))
            return len(seen) >= 3 and max(seen[-2:]) < 0.5 * max(seen[:-2])

        short = dataclasses.replace(stage, epochs=min(declared, self.steps), after_epoch=settled)
        started = time.perf_counter()
        outcome = super().run_stage(short)
        self.seconds_in_stages += time.perf_counter() - started
        steady = float(np.mean(seen[-2:])) if len(seen) >= 2 else (seen[0] if seen else 0.0)
        warmup = max(0.0, sum(seen) - steady * len(seen))
        evals = [e["eval_seconds"] for e in outcome.history if "eval_seconds" in e]
        every = int(self.spec.eval_every or 0)
        per_eval = float(np.median(evals)) if evals else 0.0
        rate = 1.0 / every if every and stage.evaluate is not None else 0.0
        self.timings.append((stage.name, declared, steady, per_eval, rate, warmup))
        return outcome


def _scaled(name: str, seconds: float, ratio: float, detail: str) -> StageTime:
    low = LOW_FAR if ratio > FAR else LOW
    return StageTime(name, seconds, seconds * low, seconds * HIGH, detail)


# A stage of refinement round r: scGNN's em_r2, gae_r0, cluster_r3_5 (the trainer's stage names).
_ROUND_STAGE = re.compile(r"^[a-z]+_r(\d+)(?:_\d+)?$")


def _rounds_part(per_round: dict[int, float], max_rounds: int, work: float) -> StageTime:
    """The refinement loop's time: round 0 (the first clustering) plus up to ``max_rounds`` rounds of
    retraining. The calibration runs as many rounds as its subsample needed, which says little about the
    full data: the loop stops once two rounds agree, after one retraining round at the earliest, so the
    range goes from one round to all of them and the middle value assumes all (the loop often runs out)."""
    first = per_round.get(0, 0.0)
    later = [v for r, v in per_round.items() if r > 0]
    each = float(np.mean(later)) if later else first
    most = first + max_rounds * each
    least = first + min(1, max_rounds) * each
    low = LOW_FAR if work > FAR else LOW
    detail = (
        f"refinement rounds: {each:.3g} s each (measured over {len(later) or 1} round(s)), up to "
        f"{max_rounds} after the first clustering; it stops early once two rounds' clusters agree"
    )
    return StageTime("training: refinement rounds", most, least * low, most * HIGH, detail)


def estimate(
    config: Any,
    n_cells: int,
    *,
    n_genes: int | None = None,
    n_features: int | None = None,
    n_edges: int | None = None,
    graph_seconds: float | None = None,
    calibration: Calibration | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> Estimate:
    """Estimate time and memory for ``config`` (a :class:`~scgraph_core.pipeline.RunConfig`) on ``n_cells``.

    ``n_genes``: genes of the loaded data; ``n_features``: the model's input genes (default: from the
    calibration, else ``config.prepare.n_hvg`` with 0 meaning all genes); ``n_edges``: the graph's stored
    edges; ``graph_seconds``: the measured build time of the full-size graph (the page's preview);
    ``calibration``: from :func:`calibrate` on the same data and settings. Without a calibration the
    result is rough. ``device`` and ``precision`` (what the run computes in, "bf16" or "fp32") default to
    what the run will use: :func:`~scgraph_core.train.resolve_device` and
    :func:`~scgraph_core.train.precision_name` on ``config.train``; a calibration's own win.
    """
    from . import params
    from .train import precision_name, resolve_device

    if device is None:
        device = resolve_device(config.train.device).type
    if precision is None:
        precision = precision_name(config.train.precision, device)
    n_cells = max(1, int(n_cells))
    genes = int(n_genes) if n_genes else int(config.prepare.n_hvg or 2000)
    if n_features:
        features = int(n_features)
    elif calibration is not None:
        features = calibration.n_features
    else:
        features = min(int(config.prepare.n_hvg or genes), genes)
    edges = (
        int(n_edges) if n_edges is not None else typical_edges(n_cells, graphs.k_for(config.graph, n_cells))
    )
    epochs = _epochs_of(config.params)
    max_rounds = getattr(config.params, "max_rounds", None)  # a model with a refinement loop (scGNN)
    notes: list[str] = []
    parts: list[StageTime] = []
    from .models import base

    # A model that overrides Model.build_graph builds its own graph (every model class has the method).
    custom_graph = base.get(config.model).build_graph is not base.Model.build_graph

    if calibration is not None:
        cal = calibration
        device, precision = cal.device, cal.precision
        ratio = n_cells / max(cal.n_cells, 1)
        edge_ratio = edges / cal.n_edges if cal.n_edges else ratio
        work = max(ratio, edge_ratio)  # sparse steps follow the edges, dense ones the cells
        parts.append(
            _scaled(
                "preparation",
                cal.prepare_seconds * ratio,
                ratio,
                f"{cal.prepare_seconds:.2f} s on {cal.n_cells} cells, x cells",
            )
        )
        if graph_seconds is not None and not custom_graph:
            parts.append(
                StageTime(
                    "cell graph",
                    graph_seconds,
                    graph_seconds,
                    graph_seconds * HIGH,
                    "measured on the full data",
                )
            )
        elif custom_graph and cal.n_edges == 0:  # scGNN: its graphs are built in every training round
            parts.append(
                _scaled("cell graph", cal.graph_seconds * ratio, ratio, "built while training (in its time)")
            )
        elif custom_graph:
            g = cal.graph_seconds * ratio**2
            parts.append(
                StageTime(
                    "cell graph", g, cal.graph_seconds * ratio, g * HIGH, "dense cell x cell kernel: x cells²"
                )
            )
        else:
            parts.append(_scaled("cell graph", cal.graph_seconds * ratio, ratio, "x cells"))
        train_seconds = 0.0
        per_round: dict[int, float] = {}
        for name, declared, per_step, per_eval, evals_per_epoch, warmup in cal.stages:
            s = declared * (per_step + per_eval * evals_per_epoch) * work + warmup
            in_round = _ROUND_STAGE.match(name)
            if in_round is not None and max_rounds is not None:
                r = int(in_round.group(1))
                per_round[r] = per_round.get(r, 0.0) + s
                continue
            train_seconds += s
            parts.append(
                _scaled(
                    f"training: {name}",
                    s,
                    work,
                    f"{declared} epochs x {per_step * work:.3g} s + {warmup:.1f} s warm-up (measured "
                    f"{per_step:.3g} s per settled step on {cal.n_cells} cells)",
                )
            )
        if per_round:
            part = _rounds_part(per_round, int(max_rounds or 0), work)
            train_seconds += part.seconds
            parts.append(part)
            notes.append(part.detail[0].upper() + part.detail[1:] + ".")
        per_epoch = train_seconds / epochs
        parts.append(
            _scaled(
                "clustering and interpretation",
                cal.analysis_seconds * ratio,
                ratio,
                f"{cal.analysis_seconds:.1f} s on {cal.n_cells} cells, x cells",
            )
        )
        parts.append(_scaled("writing the result", cal.write_seconds * ratio, ratio, "x cells"))
        rough = False
        basis = (
            f"measured on this machine ({device}, {precision}): {cal.n_cells} of the cells with all "
            f"{features:,} model genes, up to {CALIBRATION_STEPS} timed steps of every training stage, then scaled to "
            f"{n_cells:,} cells"
        )
        if ratio > FAR:
            notes.append(
                f"Scaled up {ratio:.0f}x from the calibration: fixed per-step costs make the middle value "
                "high, so the range reaches lower than usual."
            )
    else:
        per_cell = ROUGH_SECONDS_PER_CELL_EPOCH * max(features, 250) / 1000
        if config.model != "cellvgae":
            per_cell *= 10  # dense count decoders
        per_epoch = per_cell * n_cells
        train_seconds = per_epoch * epochs
        parts.append(
            StageTime("preparation and graph", 2e-3 * n_cells, 1e-3 * n_cells, 6e-3 * n_cells, "rough")
        )
        parts.append(StageTime("training", train_seconds, train_seconds / 3, train_seconds * 5, "rough"))
        analysis = 1e-3 * n_cells
        parts.append(
            StageTime("clustering and interpretation", analysis, analysis / 3, analysis * 5, "rough")
        )
        rough = True
        basis = "rough guess from the data size only: no measurement on this machine yet"
    parts.insert(
        0,
        StageTime(
            "start-up",
            WORKER_STARTUP_S,
            WORKER_STARTUP_S * LOW,
            WORKER_STARTUP_S * HIGH,
            "imports and compilation in the worker",
        ),
    )

    extra = P0 + P1 * n_cells * (features + 512)
    if config.model in ("scvgae", "attentionae"):
        extra += 6 * n_cells * features * 4 / 2**20  # mean, dispersion, dropout and their gradients
    peak = M0 + M1 * n_cells * genes + extra
    if device == "cuda":
        notes.append("On the GPU the training memory is GPU memory; the data stays in CPU memory.")
    if getattr(config.params, "batch_size", 0):
        if getattr(config.params, "batch_mode", "neighbours") == "parts":
            notes.append(
                "Mini-batch training is estimated as full-batch passes and its memory as a full batch's; with "
                "partition batches a step holds only its parts' cells, so the training memory is far lower on "
                "large data, and a pass costs about as much as a full-batch epoch."
            )
        else:
            notes.append(
                "Mini-batch training is estimated as full-batch passes. While a batch's sampled neighbourhoods "
                "still cover most of the graph, each batch costs about as much as a full pass: on pbmc3k, "
                "4,096-edge batches made training about 3x longer."
            )

    warnings = []
    if features > MANY_GENES:
        label = params.info_of(type(config.prepare), "n_hvg").label
        hvg_label = label[0].upper() + label[1:]
        warnings.append(
            f"The model reads all {features:,} genes (n_hvg = {config.prepare.n_hvg}): every epoch and the "
            f"memory grow with cells x genes ({n_cells:,} x {features:,}). Setting '{hvg_label}' "
            f"to 2000 on the Cell graph tab makes it about {features / 2000:.0f}x lighter."
        )
    other = sum(p.seconds for p in parts) - train_seconds
    return Estimate(
        model=config.model,
        device=device,
        n_cells=n_cells,
        n_features=features,
        epochs=epochs,
        seconds_per_epoch=float(per_epoch),
        train_seconds=float(train_seconds),
        other_seconds=float(other),
        peak_memory_mb=float(peak),
        rough=rough,
        precision=precision,
        basis=basis,
        parts=parts,
        notes=notes,
        warnings=warnings,
    )


def format_seconds(seconds: float | None) -> str:
    """'45 s', '3 min 20 s', '2 h 5 min' (for estimates and ETAs)."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"
