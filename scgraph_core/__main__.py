"""The command line: ``python -m scgraph_core COMMAND ...``.

Every error a user can cause is printed as one readable message on stderr with exit code 2; no
traceback is shown unless ``SCGRAPH_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import params
from .errors import ScgraphError

EXIT_USER_ERROR = 2


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _read_input(args: argparse.Namespace, *, isolated: bool = False):
    """The input file as AnnData; ``isolated`` reads it in a child process with time and memory
    limits (:mod:`scgraph_core.safe_read`), so no file can end this process with a signal."""
    from . import data

    if args.input == "demo":
        return data.load_demo()
    if isolated:
        from .safe_read import read_isolated

        return read_isolated(args.input, orientation=args.orientation, fmt=args.format)
    return data.read(args.input, orientation=args.orientation, fmt=args.format)


def _add_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="FILE",
        help="data file (.h5ad, 10x .h5, 10x folder or .zip, .csv/.tsv[.gz], .loom) or 'demo' for the built-in PBMC demo",
    )
    parser.add_argument(
        "--orientation",
        default="auto",
        choices=("auto", "cells_x_genes", "genes_x_cells"),
        help="for CSV/TSV tables: which way round the matrix is (default: detect)",
    )
    parser.add_argument("--format", default=None, help="override the format detected from the file name")


# ---- inspect ---------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from . import data

    # inspect is what other tools call to vet a file: any file must end in exit 0 or 2, never a signal.
    adata = _read_input(args, isolated=True)
    report = data.validate(adata, min_cells=args.min_cells)
    summary = data.summarize(adata)
    if args.json:
        _print_json({"summary": summary, "errors": report.errors, "warnings": report.warnings})
    else:
        kind = {"counts": "raw counts", "lognorm": "normalised (log) values", "scaled": "scaled values"}
        print(f"file:     {args.input}")
        print(f"cells:    {summary['n_cells']}")
        print(f"genes:    {summary['n_genes']}")
        print(f"X holds:  {kind.get(summary['x_kind'], summary['x_kind'])}")
        print(f"counts:   {'yes' if summary['x_kind'] == 'counts' or summary['has_counts_layer'] else 'no'}")
        print(f"storage:  {'sparse' if summary['sparse'] else 'dense'}, {summary['density']:.1%} non-zero")
        if summary.get("layers"):
            print(f"layers:   {', '.join(summary['layers'])}")
        cols = summary.get("obs_columns") or {}
        if cols:
            print("obs columns:")
            for name, desc in cols.items():
                values = f", {desc['n_unique']} values" if desc.get("n_unique") is not None else ""
                print(f"  {name}: {desc.get('dtype', '?')}{values}")
        else:
            print("obs columns: none")
        for w in report.warnings:
            print(f"warning: {w}")
        for note in report.notes:
            print(f"note: {note}")
    if report.errors:
        for e in report.errors:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


# ---- graph -----------------------------------------------------------------------------------
def cmd_graph(args: argparse.Namespace) -> int:
    from . import data, graphs

    prep_spec = params.from_dict(data.PrepareSpec, params.given(args, data.PrepareSpec), where="--")
    graph_spec = params.from_dict(graphs.GraphSpec, params.given(args, graphs.GraphSpec), where="--")
    adata = _read_input(args)
    data.validate(adata, min_cells=graph_spec.k + 1).raise_if_errors()
    prepared = data.prepare(adata, prep_spec)
    start = time.perf_counter()
    graph = graphs.build_graph(
        graphs.graph_matrix(prepared, graph_spec), graph_spec, cell_names=list(prepared.adata.obs_names)
    )
    seconds = time.perf_counter() - start
    stats = graph.stats()
    stats["seconds"] = round(seconds, 3)
    stats["backend"] = graph.info.get("backend")
    if args.save_edges:
        import pandas as pd

        names = prepared.adata.obs_names.to_numpy()
        table = pd.DataFrame({"source": names[graph.edge_index[0]], "target": names[graph.edge_index[1]]})
        if graph.weight is not None:
            table["weight"] = graph.weight
        table.to_csv(args.save_edges, index=False)
        stats["edges_file"] = args.save_edges
    if args.json:
        _print_json(stats)
    else:
        for key, value in stats.items():
            print(f"{key}: {value}")
    return 0


# ---- runs ------------------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    from .runs import RunStore

    store = RunStore(args.store)
    if args.action == "list":
        # A damaged run is listed with the reason and the command still succeeds: tools rely on it.
        infos = store.list()
        if args.json:
            _print_json([{**i.__dict__, "path": str(i.path), "damaged": i.damaged} for i in infos])
        elif not infos:
            print(f"no runs in {store.root}")
        else:
            for i in infos:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created)) if i.created else "?"
                print(f"{i.id}  {i.state:8s} {i.model:12s} {when:16s}  {i.name}  [{i.dataset}]")
                if i.damaged:
                    print(f"    damaged: {i.damage}")
        damaged = [i.id for i in infos if i.damaged]
        if damaged:
            print(
                f"warning: {len(damaged)} damaged run(s): {', '.join(damaged)}. "
                "`python -m scgraph_core runs delete RUN_ID` removes one.",
                file=sys.stderr,
            )
    elif args.action == "rename":
        if len(args.rest) != 2:
            raise ScgraphError("usage: runs rename RUN_ID NEW_NAME")
        store.rename(args.rest[0], args.rest[1])
        print(f"renamed {args.rest[0]}")
    elif args.action == "delete":
        if len(args.rest) != 1:
            raise ScgraphError("usage: runs delete RUN_ID")
        store.delete(args.rest[0])
        print(f"deleted {args.rest[0]}")
    elif args.action == "stop":
        if len(args.rest) != 1:
            raise ScgraphError("usage: runs stop RUN_ID")
        store.open(args.rest[0]).request_stop()
        print(f"stop requested for {args.rest[0]}")
    elif args.action == "finish":
        if len(args.rest) != 1:
            raise ScgraphError("usage: runs finish RUN_ID_OR_FOLDER")
        from . import pipeline
        from .runs import Run

        folder = Path(args.rest[0]).expanduser()
        run = Run(folder) if (folder / "meta.json").is_file() else store.open(args.rest[0])
        print(f"finishing {run.path} from its saved weights", file=sys.stderr)
        _, result = pipeline.finish(run, callbacks=[_progress_callback(not args.json)])
        _print_metrics(result.metrics)
        _print_verdict(run, store)
        print(f"results: {run.file('result.h5ad')}")
    return 0


# ---- train -----------------------------------------------------------------------------------
def _progress_callback(enabled: bool):
    """A progress bar on stderr driven by the trainer's epoch events."""
    if not enabled:
        return lambda event: None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def on_event(event: dict) -> None:
        kind = event.get("kind")
        if kind == "stage_start":
            bars[event["stage"]] = tqdm(
                total=event["epochs"], desc=event["stage"], unit="epoch", file=sys.stderr, leave=True
            )
        elif kind == "epoch" and event.get("stage") in bars:
            bar = bars[event["stage"]]
            postfix = {"loss": f"{event['loss']:.4f}"}
            for key, value in (event.get("validation") or {}).items():
                postfix[key] = f"{value:.3f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
        elif kind == "stage_end" and event.get("stage") in bars:
            bars.pop(event["stage"]).close()
        elif kind == "pipeline" and event.get("step") == "dec_restart":
            why = (
                f"merged {event['n_start']} clusters into {event['n_clusters']}"
                if event.get("reason") == "merge"
                else f"raised the ZINB loss by {event['rise']:.0%} by epoch {event['epoch']}"
            )
            print(
                f"[scgraph] DEC {why}; fine-tuning again from the pre-trained model at a tenth of the "
                "learning rate...",
                file=sys.stderr,
            )
        elif kind == "pipeline" and event.get("step") != "train":
            print(f"[scgraph] {event['step']}...", file=sys.stderr)

    return on_event


def _print_metrics(metrics: dict) -> None:
    shown = (
        "ari",
        "nmi",
        "accuracy",
        "macro_f1",
        "q_accuracy",
        "q_macro_f1",
        "silhouette",
        "n_clusters",
        "noise",
        "seconds_per_epoch",
        "epochs_run",
        "val_auc",
        "val_ap",
        "test_auc",
        "test_ap",
        "device",
        "precision",
    )
    for key in shown:
        if key in metrics:
            value = metrics[key]
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    for note in metrics.get("notes") or []:
        print(f"note: {note}")


def _print_verdict(run, store=None) -> None:
    """How good the run is and what to try next (scgraph_core.verdict), after its metrics."""
    from .verdict import assess_run

    try:
        found = assess_run(run, store)
    except Exception as exc:  # the verdict is advice: never fail a finished run over it
        print(f"(no verdict: {type(exc).__name__}: {exc})", file=sys.stderr)
        return
    for line in found.lines():
        print(line)


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from . import pipeline
    from .labels import LabelSpec
    from .models import base
    from .runs import Run, RunStore

    sections = pipeline.sections_for(args.model)
    overrides = {name: params.given(args, schema, name) for name, schema in sections.items()}
    config = pipeline.resolve_config(args.model, args.preset, overrides, label_key=args.label_key)
    if base.get(args.model).uses_labels:
        # A model that learns from labels trains on --label-key; scoring against the same column (ARI of its
        # own training labels) would mean nothing, so the held-out share scores it instead.
        labels = None
        if args.label_key:
            labels = LabelSpec(
                key=args.label_key,
                unlabelled=args.unlabelled,
                holdout_fraction=args.holdout_fraction,
                seed=config.train.seed,
            )
            labels.check()
        config = dataclasses.replace(config, label_key=None, labels=labels)
    elif args.holdout_fraction or args.unlabelled is not None:
        raise ScgraphError(
            f"--holdout-fraction and --unlabelled are for models that learn from labels; {args.model} does not."
        )
    from . import distributed

    if distributed.launched():
        if args.model != "cellvgae" or not getattr(config.params, "batch_size", 0):
            raise ScgraphError(
                "Several processes (torchrun) train only CellVGAE on sampled batches: add --batch-size "
                "(for example 4096), or run one process."
            )
        distributed.setup(config.train.device)
        if not distributed.is_main():
            try:  # this rank trains its share of the batches; rank 0 writes the run folder
                pipeline.execute(_read_input(args), config)
            finally:
                distributed.teardown()
            return 0
    if args.out:
        _check_writable_folder(Path(args.out).expanduser())  # before minutes of reading, not after
    adata = _read_input(args)
    record = config.to_dict()
    record["input"] = {"path": str(args.input), "orientation": args.orientation, "format": args.format}
    dataset = os.path.basename(str(args.input).rstrip("/"))
    if args.out:
        run = Run.create_at(args.out, name=args.name, model=args.model, dataset=dataset, config=record)
    else:
        run = RunStore().create(model=args.model, name=args.name, dataset=dataset, config=record)
    print(f"run folder: {run.path}", file=sys.stderr)
    from .train import StopSignal

    _, result = pipeline.execute(
        adata,
        config,
        run=run,
        callbacks=[_progress_callback(not args.quiet)],
        stop=StopSignal(run.stop_requested),
    )
    distributed.teardown()
    _print_metrics(result.metrics)
    _print_verdict(run, None if args.out else RunStore())
    print(f"results: {run.file('result.h5ad')}")
    return 0


def _check_writable_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents) and write a probe file in it, or say plainly why that fails."""
    from .runs import plain_os_error

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".scgraph-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = plain_os_error(exc) or (exc.strerror or type(exc).__name__).lower()
        raise ScgraphError(
            f"Cannot write the run folder {folder}: {reason}. Choose --out in a folder you can write to "
            "(or leave --out out to use the run store)."
        ) from None


def cmd_work(args: argparse.Namespace) -> int:
    """Run a queued run folder (what the app starts in the background)."""
    from . import pipeline
    from .runs import Run

    run = Run(args.run_dir)
    status = run.status
    if status["state"] != "queued":
        print(f"error: run {run.id} is {status['state']}, not queued; nothing to do.", file=sys.stderr)
        return EXIT_USER_ERROR
    problems = run.problems(status)
    if problems:
        print(f"error: run {run.id} is damaged: {' '.join(problems)}", file=sys.stderr)
        return EXIT_USER_ERROR
    _, result = pipeline.run_folder(run)
    _print_metrics(result.metrics)
    return 0


TRAIN_HELP = "train a model and write a run folder (result.h5ad, metrics.json, tables)"


def _add_train_parser(sub, argv: Sequence[str] | None) -> None:
    from . import pipeline
    from .models import base

    # The model decides which flags exist, so read --model first.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="cellvgae")
    known, _ = pre.parse_known_args(argv)
    model = known.model if known.model in base.available() else "cellvgae"
    cls = base.get(model)
    p = sub.add_parser(
        "train",
        help=TRAIN_HELP,
        description=f"Train a model. Flags below are those of {cls.title}; pass --model NAME --help for another.",
    )
    p.add_argument(
        "--model", default="cellvgae", choices=sorted(base.available()), help="which model to train"
    )
    p.add_argument(
        "--input", required=True, metavar="FILE", help="data file, or 'demo' for the built-in PBMC demo"
    )
    p.add_argument(
        "--orientation",
        default="auto",
        choices=("auto", "cells_x_genes", "genes_x_cells"),
        help="for CSV/TSV tables: which way round the matrix is (default: detect)",
    )
    p.add_argument("--format", default=None, help="override the format detected from the file name")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="run folder to create (default: a new run in the store)"
    )
    p.add_argument("--name", default=None, help="a display name for the run")
    p.add_argument(
        "--preset",
        default="paper",
        choices=sorted(cls.presets),
        help="starting settings: paper = the authors' settings with their code's bugs fixed, legacy (where "
        "offered) = the authors' code as published, quick = a demo that trains in seconds",
    )
    p.add_argument(
        "--label-key",
        default=None,
        metavar="COL",
        help="obs column with known cell types: scores ARI/NMI, or, for a model that learns from labels "
        "(scBiGNN), the labels it trains on (empty or NaN cells are unlabelled and get predictions)",
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="models that learn from labels: hide this stratified, seeded share of the known labels and report "
        "accuracy and macro-F1 on them (default 0)",
    )
    p.add_argument(
        "--unlabelled",
        default=None,
        metavar="VALUE",
        help="models that learn from labels: a value of the label column that means 'not labelled'",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for name, schema in pipeline.sections_for(model).items():
        params.add_arguments(p, schema, title={"model": f"{cls.title} model"}.get(name, name), section=name)
    p.set_defaults(func=cmd_train)


@functools.lru_cache(maxsize=16)
def train_flags(model: str) -> dict[str, str]:
    """The train parser's flag of every setting of ``model``: dest (``name`` or ``section.name`` where the
    section's flag is prefixed, e.g. ``graph.seed`` -> ``--graph-seed``) -> flag."""
    parser = build_parser(["train", "--model", model])
    train = next(
        a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train")
    )
    return {a.dest: a.option_strings[0] for a in train._actions if a.option_strings}


def flag_of(model: str, section: str, name: str) -> str:
    """The ``train`` command's flag for ``section``'s parameter ``name`` of ``model``."""
    flags = train_flags(model)
    return flags.get(f"{section}.{name}") or flags.get(name) or "--" + name.replace("_", "-")


def command_line(record: dict) -> str:
    """The ``python -m scgraph_core train`` command that reproduces a run's configuration (config.json).

    Only the settings that differ from the run's preset are written as flags, each under the flag the train
    parser gives it; parsing the command back gives the same configuration (tested).
    """
    import shlex

    from . import pipeline

    model, preset = record["model"], record.get("preset", "paper")
    flags = dict(train_flags(model))
    base = pipeline.resolve_config(model, preset).to_dict()
    source = record.get("input") or {}
    words = ["python", "-m", "scgraph_core", "train", "--model", model, "--preset", preset]
    words += ["--input", str(source.get("path", "FILE")).replace("builtin:pbmc68k_reduced", "demo")]
    if source.get("orientation", "auto") != "auto":
        words += ["--orientation", source["orientation"]]
    if source.get("format"):
        words += ["--format", source["format"]]
    if record.get("label_key"):
        words += ["--label-key", record["label_key"]]
    labels = record.get("labels") or {}
    if labels.get("key"):
        words += ["--label-key", labels["key"]]
        if labels.get("holdout_fraction"):
            words += ["--holdout-fraction", str(labels["holdout_fraction"])]
        if labels.get("unlabelled") is not None:
            words += ["--unlabelled", str(labels["unlabelled"])]
    for section, key in pipeline.CONFIG_KEYS.items():
        for name, value in (record.get(key) or {}).items():
            if value == base[key].get(name) or value is None:
                continue
            flag = flags.get(f"{section}.{name}") or flags.get(name)
            if flag is None or flag in words:
                continue
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = str(value).lower()
            words += [flag, str(value)]
    return shlex.join(words)


# ---- parser ----------------------------------------------------------------------------------
def _command_in(argv: Sequence[str] | None) -> str | None:
    """The command named on the command line (its first word that is not an option), if any."""
    words = sys.argv[1:] if argv is None else list(argv)
    return next((w for w in words if not w.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser. Only the command being run gets its flags: ``graph`` and ``train`` read
    them from the preprocessing, graph and model settings, which means importing scanpy and torch (seconds),
    so ``--help``, ``inspect`` and ``runs`` do not pay for them."""
    command = _command_in(argv)
    parser = argparse.ArgumentParser(
        prog="python -m scgraph_core",
        description="scgraph: graph neural networks on single-cell RNA-seq data, from the command line.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="summarise and validate a data file")
    _add_input(p)
    p.add_argument(
        "--min-cells", type=int, default=10, help="fewest cells a usable file must have (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_inspect)

    graph_help = "build a cell graph and report its statistics"
    if command == "graph":
        from . import data, graphs

        p = sub.add_parser("graph", help=graph_help)
        _add_input(p)
        params.add_arguments(p, data.PrepareSpec, title="preprocessing")
        params.add_arguments(p, graphs.GraphSpec, title="graph")
        p.add_argument(
            "--save-edges", metavar="CSV", help="also write the edge list (source, target[, weight])"
        )
        p.add_argument("--json", action="store_true", help="print the statistics as JSON")
        p.set_defaults(func=cmd_graph)
    else:
        sub.add_parser("graph", help=graph_help)

    p = sub.add_parser("runs", help="list, rename, stop, delete or finish runs in the run store")
    p.add_argument("action", choices=("list", "rename", "delete", "stop", "finish"))
    p.add_argument(
        "rest",
        nargs="*",
        help="RUN_ID [NEW_NAME]; finish takes a run id or a run folder and redoes the analysis and the write "
        "of a run that failed after training, from its saved weights",
    )
    p.add_argument("--store", default=None, help="run store folder (default: $SCGRAPH_HOME/runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    if command == "train":
        _add_train_parser(sub, argv)
    else:
        sub.add_parser("train", help=TRAIN_HELP)

    w = sub.add_parser("work", help="run a queued run folder (used by the app)")
    w.add_argument("run_dir", metavar="RUN_DIR")
    w.set_defaults(func=cmd_work)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("SCGRAPH_DEBUG") == "1"
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        with warnings.catch_warnings():
            if not debug:
                # Library chatter (deprecations) is not for the user; our own warnings are printed.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
            return args.func(args)
    except ScgraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so plainly, keep the traceback for SCGRAPH_DEBUG=1
        if debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in scgraph; run again with SCGRAPH_DEBUG=1 for details.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
