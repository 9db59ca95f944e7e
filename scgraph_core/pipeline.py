"""One analysis from data to results: validate -> prepare -> graph -> model stages -> analyse -> write.

The command line, the app's background worker and the Python API all call :func:`execute`, so they
produce the same result for the same configuration. The model only trains (:meth:`Model.train`);
:func:`scgraph_core.analyse.analyse` does the rest the same way for every model.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import params
from .analyse import analyse
from .cluster import ClusterParams
from .data import PrepareSpec
from .errors import ConfigError, RunError, ScgraphError, TrainingError
from .graphs import GraphSpec
from .labels import LabelSpec
from .models import base
from .results import Result, plain
from .runs import Run, atomic_write_bytes, plain_os_error
from .train import Stage, StageOutcome, StopSignal, Trainer, TrainSpec, peak_memory_mb

SECTIONS: dict[str, type] = {
    "prepare": PrepareSpec,
    "graph": GraphSpec,
    "train": TrainSpec,
    "cluster": ClusterParams,
}


# Section of the schemas -> its key in config.json.
CONFIG_KEYS: dict[str, str] = {
    "prepare": "prepare",
    "graph": "graph",
    "model": "model_params",
    "train": "train",
    "cluster": "cluster",
}


@dataclass(frozen=True)
class RunConfig:
    model: str
    preset: str
    prepare: PrepareSpec
    graph: GraphSpec
    params: Any
    train: TrainSpec
    cluster: ClusterParams
    label_key: str | None = None  # labels the result is scored against (ARI, NMI); never trained on
    labels: LabelSpec | None = None  # labels a model that learns from labels trains on

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "preset": self.preset,
            "label_key": self.label_key,
            **({"labels": params.to_dict(self.labels)} if self.labels is not None else {}),
            "prepare": params.to_dict(self.prepare),
            "graph": params.to_dict(self.graph),
            "model_params": params.to_dict(self.params),
            "train": params.to_dict(self.train),
            "cluster": params.to_dict(self.cluster),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        overrides = {
            k: d.get(key, {})
            for k, key in (
                ("prepare", "prepare"),
                ("graph", "graph"),
                ("model", "model_params"),
                ("train", "train"),
                ("cluster", "cluster"),
            )
        }
        labels = d.get("labels")
        return resolve_config(
            d["model"],
            d.get("preset", "paper"),
            overrides,
            label_key=d.get("label_key"),
            labels=params.from_dict(LabelSpec, labels, where="labels.") if labels else None,
        )


def sections_for(model: str) -> dict[str, type]:
    return {**SECTIONS, "model": base.get(model).Params}


def resolve_config(
    model: str,
    preset: str = "paper",
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    label_key: str | None = None,
    labels: LabelSpec | None = None,
) -> RunConfig:
    """Start from the model's preset and apply ``overrides`` (section -> {parameter: value}).

    ``label_key`` scores the result; ``labels`` (a :class:`~scgraph_core.labels.LabelSpec`) is what a
    model that learns from labels trains on: the two are never the same setting."""
    cls = base.get(model)
    if preset not in cls.presets:
        raise ConfigError(f"{cls.title} has no preset {preset!r}; choose one of {', '.join(cls.presets)}.")
    chosen = cls.presets[preset]
    overrides = overrides or {}
    unknown = set(overrides) - set(sections_for(model))
    if unknown:
        raise ConfigError(f"unknown configuration section(s): {', '.join(sorted(unknown))}")
    built = {}
    for section, schema in sections_for(model).items():
        values = {**chosen.get(section, {}), **(overrides.get(section) or {})}
        built[section] = params.from_dict(schema, values, where=f"{section}.")
    return RunConfig(
        model=model,
        preset=preset,
        prepare=built["prepare"],
        graph=built["graph"],
        params=built["model"],
        train=built["train"],
        cluster=built["cluster"],
        label_key=label_key,
        labels=labels,
    )


def environment() -> dict[str, str]:
    """Versions recorded with every run."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"scgraph": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in (
        "torch",
        "torch_geometric",
        "scanpy",
        "anndata",
        "numpy",
        "scipy",
        "umap-learn",
        "hdbscan",
    ):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def stop_note(metrics: dict[str, Any]) -> str:
    """What a run stopped by request says about the weights its results come from."""
    ran, best = metrics.get("epochs_run"), metrics.get("best_epoch")
    if not ran:
        return "stopped by request before its first epoch; results are from the untrained network"
    if "best_epoch" not in metrics:
        return f"stopped by request after {ran} epoch(s); results are from the weights it had then"
    if not best:
        return (
            f"stopped by request after {ran} epoch(s), before any checkpoint was scored; results are from "
            "the last epoch's weights"
        )
    if best >= ran:
        return f"stopped by request after {ran} epoch(s); results are from the last (and best) epoch"
    return f"stopped by request after {ran} epoch(s); results are from the best checkpoint (epoch {best})"


def execute(
    adata: Any,
    config: RunConfig,
    *,
    run: Run | None = None,
    callbacks: Iterable[Callable[[dict], None]] = (),
    stop: StopSignal | None = None,
    replay: bool = False,
) -> tuple[Any, Result]:
    """Run one analysis. Returns the prepared AnnData with results written in, and the Result.

    With ``run``, events, status, weights, tables and ``result.h5ad`` go into the run folder, and a
    failure is recorded as the run's status before the error is raised again. Each training stage's
    weights are saved in the run folder as soon as the stage ends, so a failure in the analysis or the
    write loses no training: ``replay=True`` (``runs finish``) loads them instead of training.
    """
    from . import data

    callbacks = list(callbacks)
    if replay and run is None:
        raise ConfigError("Replaying saved training stages needs the run folder that holds them.")
    if run is not None:
        callbacks.insert(0, run.append_event)
        callbacks.insert(1, lambda event: run.heartbeat())  # at most every few seconds
        if stop is None:
            stop = StopSignal(run.stop_requested)
        run.set_status("running", "finishing from the saved weights" if replay else "preparing data")
    model = base.get(config.model)()
    started = time.time()
    try:
        if config.label_key is not None and config.label_key not in adata.obs:
            cols = ", ".join(map(str, adata.obs.columns)) or "none"
            raise ConfigError(f"Label column {config.label_key!r} is not in the data; obs columns: {cols}.")
        config, adapted = model.adapt(config, adata)
        if adapted and run is not None:
            # config.json records what ran: the adapted settings and why (``runs finish`` reads them back).
            run.write_json("config.json", {**run.config, **config.to_dict(), "recipe_note": adapted})
        report = data.validate(adata, min_cells=config.graph.k + 1, require_counts=model.requires_counts)
        report.raise_if_errors()
        if config.labels is not None:
            config.labels.check()
            config.labels.values(adata.obs)  # a missing column is refused before any training
        elif type(model).uses_labels:
            raise ConfigError(f"{model.title} learns from labels: give the label column (--label-key).")
        prepared = model.preprocess(adata, config.prepare)
        _stage(callbacks, "graph", run)
        t0 = time.time()
        graph = cell_graph(model, prepared, config)
        seconds_graph = time.time() - t0
        trainer = Trainer(config.train, callbacks=callbacks, stop=stop)
        if run is not None:
            _keep_stages(run, trainer, replay)
        _stage(callbacks, "train", run, device=str(trainer.device), precision=trainer.precision_name)
        t0 = time.time()
        model.train(prepared, graph, config.params, trainer, cluster=config.cluster, labels=config.labels)
        seconds_train = time.time() - t0
        from . import distributed

        if not distributed.is_main():
            return None, None  # type: ignore[return-value]  # torchrun's other ranks: rank 0 analyses and writes
        result = analyse(
            model,
            prepared,
            config.cluster,
            seed=config.train.seed,
            label_key=config.label_key,
            emit=trainer.emit,
        )
        if adapted:
            result.metrics["recipe"] = adapted
            result.metrics["notes"] = [adapted, *result.metrics.get("notes", [])]
        result.metrics["graph"] = graph.stats()
        result.metrics["seconds_graph"] = seconds_graph
        result.metrics["seconds_train"] = seconds_train
        result.metrics.setdefault("peak_memory_mb", peak_memory_mb(trainer.device))
        result.metrics["seconds_total"] = time.time() - started
        result.metrics["device"] = str(trainer.device)
        result.metrics["precision"] = trainer.precision_name
        out = result.write(prepared.adata)
        out = model.match_input(out, adata, prepared)  # put back cells/genes that prepare dropped
        out.uns["scgraph"] = plain(
            {**out.uns.get("scgraph", {}), "config": config.to_dict(), "environment": environment()}
        )
        if run is not None:
            _save(run, out, result)
            stopped = bool(result.metrics.get("stopped"))
            run.set_status(
                "stopped" if stopped else "done", stop_note(result.metrics) if stopped else "finished"
            )
        return out, result
    except ScgraphError as exc:
        if run is None:
            raise
        message = _record_failure(run, str(exc), exc)
        if message == str(exc):
            raise
        raise type(exc)(message) from exc
    except Exception as exc:
        if run is None:
            raise
        reason = plain_os_error(exc)
        if reason is None:
            _record_failure(run, f"internal error: {type(exc).__name__}: {exc}", exc)
            raise
        raise RunError(_record_failure(run, f"Could not finish: {reason}.", exc)) from exc


def _record_failure(run: Run, message: str, exc: BaseException) -> str:
    """Mark the run failed and return the message; when training finished before the failure, the message
    says how to finish the run from its saved weights."""
    try:
        run.remove_temporary_files()
        if run.saved_stages() and not isinstance(exc, TrainingError):
            message += (
                f" The trained model is saved: once the cause is fixed, `python -m scgraph_core runs finish "
                f"{run.id}` (or Finish on the Runs page) redoes the analysis and the write without training again."
            )
        run.append_event({"kind": "error", "message": message})
        run.set_status("failed", message)
    except OSError:
        pass  # the disk that failed the write may refuse this too; the dead worker reads as failed
    return message


def _keep_stages(run: Run, trainer: Trainer, replay: bool) -> None:
    """Save each trained stage in the run folder, or (``replay``) load it from there instead of training."""

    def keep(index: int, stage: Stage, outcome: StageOutcome) -> None:
        run.save_stage(index, stage.name, stage.module.state_dict(), dataclasses.asdict(outcome))

    def load(index: int, stage: Stage) -> StageOutcome:
        state, outcome = run.load_stage(index, stage.name)
        try:
            stage.module.load_state_dict(state)
            return StageOutcome(**outcome)
        except (RuntimeError, TypeError) as exc:
            raise RunError(
                f"Run {run.id}: the saved weights of stage {index + 1} ({stage.name}) do not fit the model its "
                f"config.json describes ({type(exc).__name__}); start a new run."
            ) from None

    if replay:
        trainer.replay = load
    else:
        trainer.keep = keep


def cell_graph(model: base.Model, prepared: Any, config: RunConfig) -> Any:
    """The cell graph a run trains on: the model's own builder where it has one, else the config's GraphSpec."""
    from . import graphs

    own = model.build_graph(prepared, config)  # a model may build its graph on its own input
    if own is not None:
        return own
    return graphs.build_graph(
        graphs.graph_matrix(prepared, config.graph), config.graph, cell_names=list(prepared.adata.obs_names)
    )


def _stage(callbacks: list, name: str, run: Run | None, **extra: Any) -> None:
    event = {"kind": "pipeline", "step": name, **extra}
    for cb in callbacks:
        cb(event)
    if run is not None:
        run.set_status("running", {"graph": "building the cell graph", "train": "training"}[name])


def _save(run: Run, adata: Any, result: Result) -> None:
    if result.weights:
        run.save_weights("final", result.weights)
    for name, table in result.tables.items():
        atomic_write_bytes(run.file(f"{name}.csv"), table.to_csv(index=False).encode())
    run.write_json("metrics.json", result.metrics)
    started = time.time()
    run.write_result(adata)
    # Written again with the time the write took (the first copy stands if this one cannot be written).
    run.write_json("metrics.json", {**result.metrics, "seconds_write": time.time() - started})


def fit(
    adata: Any,
    model: str = "cellvgae",
    *,
    preset: str = "paper",
    label_key: str | None = None,
    labels: LabelSpec | None = None,
    run_dir: str | Path | None = None,
    prepare: dict[str, Any] | None = None,
    graph: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
) -> Any:
    """Train ``model`` on ``adata`` and return a new AnnData with the results (scanpy habit).

    Each keyword overrides one section of the preset, e.g. ``fit(adata, "cellvgae", preset="quick",
    train={"seed": 1}, graph={"k": 10}, params={"epochs": 100})``. With ``run_dir`` the run folder is
    written there too. ``labels`` (a :class:`~scgraph_core.labels.LabelSpec`) is what a model that learns
    from labels trains on, e.g. ``fit(adata, "scbignn", labels=LabelSpec(key="celltype",
    holdout_fraction=0.2))``; ``label_key`` only scores the result.
    """
    overrides = {"prepare": prepare, "graph": graph, "model": params, "train": train, "cluster": cluster}
    config = resolve_config(
        model, preset, {k: v for k, v in overrides.items() if v}, label_key=label_key, labels=labels
    )
    run = None
    if run_dir is not None:
        source = adata.uns.get("scgraph_source", {}).get("path", "")
        run = Run.create_at(run_dir, model=model, dataset=str(source), config=config.to_dict())
    out, _ = execute(adata, config, run=run)
    return out


def finish(run: Run, *, callbacks: Iterable[Callable[[dict], None]] = ()) -> tuple[Any, Result]:
    """Redo the analysis and the write of a run whose training finished, from its saved stages.

    For a run that failed after training (a full disk, a crash while writing ``result.h5ad``): the input
    is read and prepared again and the graph rebuilt with the run's own configuration, each training
    stage is loaded instead of trained, then clustering, interpretation and the write run as usual.
    """
    state = run.state
    if state in ("queued", "running"):
        raise RunError(f"Run {run.id} is {state}; wait for it to end (or stop it) before finishing it.")
    if state == "done" and run.file("result.h5ad").is_file():
        raise RunError(f"Run {run.id} is already finished; its results are in {run.file('result.h5ad')}.")
    if not run.saved_stages():
        raise RunError(
            f"Run {run.id} has no saved training stages (its training did not finish a stage, or it was "
            "made by an older scgraph), so there is nothing to finish from; start a new run."
        )
    return run_folder(run, replay=True, callbacks=callbacks)


def run_folder(
    run: Run, *, replay: bool = False, callbacks: Iterable[Callable[[dict], None]] = ()
) -> tuple[Any, Result]:
    """The worker: read the run's config and input, train, and write everything into the folder."""
    from . import data

    cfg = run.config
    if "model" not in cfg or "input" not in cfg:
        raise ConfigError(f"{run.path}/config.json has no model or input; it was not made by scgraph.")
    config = RunConfig.from_dict(cfg)
    source = cfg["input"]
    try:
        adata = (
            data.load_demo()
            if source.get("path") == "builtin:pbmc68k_reduced"
            else data.read(
                source["path"], orientation=source.get("orientation", "auto"), fmt=source.get("format")
            )
        )
    except ScgraphError as exc:
        run.set_status("failed", str(exc))
        raise
    return execute(adata, config, run=run, replay=replay, callbacks=callbacks)
