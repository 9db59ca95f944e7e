"""CellVGAE mini-batch training against full batch (issue #25, section 2): quality and memory.

``--mode quality``: the whole run (``python -m scgraph_core train``, preset ``paper``) on an input, full batch
and each ``--batch-sizes`` value, seeds ``--seeds``; label-free ARI, clusters, training seconds.

``--mode reach``: how much of the graph one batch's sampled neighbourhoods cover (``--cells`` cells, each
``--batch-sizes`` value, the preset's fanout and layers): the cost of a step follows it, so memory is flat in the
number of cells only once this share is small.

``--mode memory``: ``--cells`` cells synthesised from the input (:mod:`scgraph_core.synthetic`, seed 0); in a
fresh process per (cells, batch size): the data recipe and graph, then the training stage for ``--epochs``
epochs (no analysis). Peak RSS (``ru_maxrss``) before training and at its end, so what training adds shows;
seconds per pass over the cells.

One JSON line per finished run in ``--jsonl`` (a rerun skips what is done); ``--table`` prints them.

    python benchmarks/bench_minibatch.py --mode quality --batch-sizes 1024 --seeds 0,1,2
    python benchmarks/bench_minibatch.py --mode memory --cells 20000,100000 --batch-sizes 0,2048 --epochs 1
    python benchmarks/bench_minibatch.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"


def quality_run(args: argparse.Namespace, batch: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "scgraph_core", "train", "--model", "cellvgae", "--input", args.input]
        cmd += [
            "--preset",
            args.preset,
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--label-key",
            args.label_key,
        ]
        cmd += ["--batch-size", str(batch)]
        if batch:
            cmd += ["--scale-lr", "true" if args.scale_lr else "false", "--batch-mode", args.batch_mode]
            if args.batch_mode == "parts":
                cmd += ["--negatives", args.negatives, "--halo", str(args.halo)]
        started = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=7200)
        wall = time.perf_counter() - started
        m = json.loads((out / "metrics.json").read_text())
    keep = ("ari", "nmi", "n_clusters", "noise", "seconds_train", "epochs_run", "best_epoch", "val_auc")
    keep += ("lr_per_step", "steps_per_epoch", "parts", "parts_edges_within", "negatives", "halo")
    return {"wall_seconds": wall, **{k: m.get(k) for k in keep}}


def memory_run(
    source: str,
    n_cells: int,
    batch: int,
    epochs: int,
    preset: str,
    mode: str,
    gpu_budget_gb: float = 0.0,
    readout: int = -1,
    halo: int = 0,
) -> dict:
    """In this (fresh) process: recipe, graph and ``epochs`` passes of training; peak RSS before and after.
    On a CUDA machine training runs on the GPU (the engine's device "auto"); ``gpu_budget_gb`` then caps what
    PyTorch may allocate there (``torch.cuda.set_per_process_memory_fraction``) and the peak is recorded."""
    sys.path.insert(0, str(REPO))
    import anndata as ad
    import torch

    from scgraph_core import pipeline, synthetic
    from scgraph_core.models import base
    from scgraph_core.train import Trainer

    real = ad.read_h5ad(source)
    adata = real if n_cells == real.n_obs else synthetic.synthesize_adata(real, n_cells, seed=0)
    config = pipeline.resolve_config(
        "cellvgae",
        preset,
        {
            "model": {
                "batch_size": batch,
                "epochs": epochs,
                "batch_mode": mode,
                "readout_cells": max(readout, 0),
                "halo": halo,
            },
            "train": {"eval_every": 0},
        },
    )
    model = base.get("cellvgae")()
    config, _ = model.adapt(config, adata)
    prepared = model.preprocess(adata, config.prepare)
    graph = pipeline.cell_graph(model, prepared, config)
    del adata, real
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer = Trainer(config.train)
    gpu = trainer.device.type == "cuda"
    if gpu and gpu_budget_gb:
        total = torch.cuda.get_device_properties(trainer.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_budget_gb * 2**30 / total), trainer.device)
    started = time.perf_counter()
    trained = model.train_net(prepared, graph, config.params, trainer)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = {k: v for k, v in (trained.batch_info or {}).items()}
    if (
        readout >= 0
    ):  # the embedding of every cell and every layer's attention, as a run reads them after training
        started = time.perf_counter()
        model.read_out(trained, prepared, config.params, trainer)
        maps = model.attention()
        extra.update(
            readout_cells=readout,
            readout_seconds=time.perf_counter() - started,
            readout_groups=model.training_metrics().get("readout_groups"),
            readout_layers=len(maps),
            peak_rss_mb_after_readout=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        if gpu:
            extra["gpu_peak_mb_after_readout"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
    return {
        **extra,
        "device": trainer.device.type,
        "gpu_budget_gb": gpu_budget_gb if gpu else None,
        "gpu_peak_mb": torch.cuda.max_memory_allocated(trainer.device) / 2**20 if gpu else None,
        "n_cells": n_cells,
        "n_edges": int(graph.edge_index.shape[1]),
        "peak_rss_mb_before_training": before,
        "peak_rss_mb": after,
        "seconds_per_epoch": seconds / epochs,
        "steps": trained.outcome.epochs_run,
    }


def reach_run(source: str, n_cells: int, batches: list[int], preset: str, mode: str) -> list[dict]:
    sys.path.insert(0, str(REPO))
    import anndata as ad
    import numpy as np

    from scgraph_core import pipeline, synthetic
    from scgraph_core.models import base
    from scgraph_core.models.cellvgae.model import split_edges
    from scgraph_core.nn.partition import PartitionBatches, kmeans_parts
    from scgraph_core.nn.sampling import NeighbourSampler

    real = ad.read_h5ad(source)
    adata = real if n_cells == real.n_obs else synthetic.synthesize_adata(real, n_cells, seed=0)
    config = pipeline.resolve_config("cellvgae", preset)
    model = base.get("cellvgae")()
    config, _ = model.adapt(config, adata)
    prepared = model.preprocess(adata, config.prepare)
    graph = pipeline.cell_graph(model, prepared, config)
    p = config.params
    split = split_edges(graph.edge_index, n_cells, val=p.val_fraction, test=p.test_fraction, seed=0)
    sampler = NeighbourSampler(split.message.numpy(), n_cells, [p.fanout] * (len(p.hidden) + 1))
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        if mode == "parts":
            # The largest batch of a pass (parts_per_batch parts; the same number of parts as training makes).
            n_edges, q = split.train_pos.shape[1], p.parts_per_batch
            n_parts = int(min(n_cells, max(q, round(q * n_edges / batch))))
            parts = kmeans_parts(np.asarray(prepared.features, dtype=np.float32), n_parts, seed=0)
            pb = PartitionBatches(parts, split.message.numpy(), split.train_pos.numpy())
            perm = rng.permutation(pb.n_parts)
            sizes = [pb.batch(perm[i : i + q]) for i in range(0, pb.n_parts, q)]
            big = max(sizes, key=lambda b: b.cells.size)
            rows.append(
                {
                    "n_cells": n_cells,
                    "n_edges": int(n_edges),
                    "batch_size": batch,
                    "batch_mode": "parts",
                    "seed_cells": int(big.cells.size),
                    "subgraph_cells": int(big.cells.size),
                    "share_of_cells": big.cells.size / n_cells,
                    "batch_train_edges": int(big.pos.shape[1]),
                    "parts": pb.n_parts,
                    "parts_edges_within": pb.within_share,
                }
            )
            continue
        pick = rng.permutation(split.train_pos.shape[1])[:batch]
        sub = sampler.sample(split.train_pos.numpy()[:, pick].ravel(), rng)
        rows.append(
            {
                "n_cells": n_cells,
                "n_edges": int(split.train_pos.shape[1]),
                "batch_size": batch,
                "seed_cells": sub.n_seeds,
                "subgraph_cells": int(sub.nodes.size),
                "share_of_cells": sub.nodes.size / n_cells,
            }
        )
    return rows


def _done(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict]) -> str:
    import numpy as np

    lines = []
    quality = [r for r in rows if r["mode"] == "quality"]
    if quality:
        lines += [
            "| input | batch size | learning rate per step | negatives | halo hops | seeds | ARI per seed | median ARI | clusters "
            "| training s (median) |"
        ]
        lines += ["|---|---:|---|---|---:|---:|---|---:|---|---:|"]
        groups: dict[tuple, list[dict]] = {}
        for r in quality:
            key = (
                Path(r["input"]).stem,
                r["batch_size"],
                _scaled(r),
                _mode(r),
                _negatives(r) or "",
                _halo(r),
            )
            groups.setdefault(key, []).append(r)
        for (name, batch, scaled, mode, negatives, halo), rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r["seed"])
            per_seed = " / ".join(f"{r['ari']:.3f}" for r in rs)
            rate = "as given" if not batch else ("divided by steps per pass" if scaled else "as given")
            lines.append(
                f"| {name} | {f'{batch} ({mode})' if batch else 'full'} | {rate} | {_NEG_NAMES[negatives] if batch else 'all cells'} | "
                f"{halo if mode == 'parts' else ''} | {len(rs)} | {per_seed} | "
                f"{np.median([r['ari'] for r in rs]):.3f} | {', '.join(str(r['n_clusters']) for r in rs)} | "
                f"{np.median([r['seconds_train'] for r in rs]):.0f} |"
            )
    sections = {
        "reach": (
            "| cells | training edges | batch (edges) | its cells | cells its neighbourhoods reach | share |",
            lambda r: (
                f"| {r['n_cells']:,} | {r['n_edges']:,} | {r['batch_size']:,} ({_mode(r)}) | {r['seed_cells']:,} | "
                f"{r['subgraph_cells']:,} | {r['share_of_cells']:.1%} |"
            ),
        ),
        "memory": (
            "| cells | edges | batch size | peak RSS before training, MB | peak RSS, MB | s per pass | GPU peak, MB |",
            lambda r: (
                f"| {r['n_cells']:,} | {r['n_edges']:,} | {_batch(r)} | "
                f"{r['peak_rss_mb_before_training']:.0f} | {r['peak_rss_mb']:.0f} | {r['seconds_per_epoch']:.1f} | "
                f"{_gpu(r)} |"
            ),
        ),
    }
    for mode, (head, line) in sections.items():
        found = sorted((r for r in rows if r["mode"] == mode), key=lambda r: (r["n_cells"], r["batch_size"]))
        if found:
            lines += ["", head, "|" + "---:|" * (head.count("|") - 1), *map(line, found)]
    return "\n".join(lines)


def _gpu(row: dict) -> str:
    if row.get("gpu_peak_mb") is None:
        return "(CPU)"
    cap = f" of {row['gpu_budget_gb']:g} GB allowed" if row.get("gpu_budget_gb") else ""
    return f"{row['gpu_peak_mb']:.0f}{cap}"


def _batch(row: dict) -> str:
    return f"{row['batch_size']} ({_mode(row)})" if row["batch_size"] else "full"


def _mode(row: dict) -> str:
    """A row's batch mode ("full" for full batch; rows written before partition batches sampled neighbours)."""
    return row.get("batch_mode", "neighbours") if row["batch_size"] else "full"


_NEG_NAMES = {"": "in batch", "batch": "in batch", "all": "all cells (bank)"}


def _negatives(row: dict) -> str | None:
    """A quality row's negatives with partition batches (rows written before the setting drew them in the batch)."""
    if row["mode"] != "quality" or _mode(row) != "parts":
        return None
    return row.get("negatives") or "batch"


def _halo(row: dict) -> int:
    """A row's halo hops around partition batches (0 for other rows and rows written before the setting)."""
    return int(row.get("halo") or 0) if _mode(row) == "parts" else 0


def _scaled(row: dict) -> bool:
    """Whether a quality row's mini-batch run divided the learning rate by the steps per pass (rows written
    before the setting existed have no key and did not)."""
    return bool(row["batch_size"]) and bool(row.get("scale_lr", False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("quality", "memory", "reach"), default="quality")
    parser.add_argument("--input", default=str(DATA / "pbmc3k_seurat250.h5ad"))
    parser.add_argument("--label-key", default="celltype")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch-sizes", default="0,1024", help="0 = full batch")
    parser.add_argument("--cells", default="20000", help="memory mode: cell counts to synthesise")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--jsonl", default=str(RESULTS / "minibatch.jsonl"))
    parser.add_argument(
        "--scale-lr",
        action="store_true",
        help="quality mode: with batches, divide the learning rate by the steps per pass (the engine's "
        "scale_lr, on by default in the engine; this benchmark passes it explicitly and leaves it off unless given)",
    )
    parser.add_argument(
        "--batch-mode",
        choices=("neighbours", "parts"),
        default="parts",
        help="the engine's batch_mode for the mini-batch runs (sampled neighbourhoods or partition batches)",
    )
    parser.add_argument(
        "--negatives",
        choices=("all", "batch"),
        default="all",
        help="quality mode with partition batches: the engine's negatives (pairs over every cell, or within the batch)",
    )
    parser.add_argument(
        "--halo",
        type=int,
        default=0,
        help="partition batches: the engine's halo (hops of neighbours added around a batch's cells as context)",
    )
    parser.add_argument(
        "--gpu-budget-gb",
        type=float,
        default=0.0,
        help="memory mode on a CUDA machine: cap PyTorch's GPU memory at this many GB (0 = no cap)",
    )
    parser.add_argument(
        "--readout-cells",
        type=int,
        default=-1,
        help="memory mode: also read every cell's embedding and attention after training, as a run does, in groups "
        "of this many cells (the model's readout_cells; 0 = one pass over the whole graph; -1 = no read-out)",
    )
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--single", help=argparse.SUPPRESS)  # internal: one memory run, JSON on stdout
    args = parser.parse_args()
    path = Path(args.jsonl)
    if args.single:
        cells, batch = (int(v) for v in args.single.split(","))
        row = memory_run(
            args.input,
            cells,
            batch,
            args.epochs,
            args.preset,
            args.batch_mode,
            args.gpu_budget_gb,
            args.readout_cells,
            args.halo,
        )
        print(json.dumps(row))
        return
    if args.table:
        print(table(_done(path)))
        return
    done = {
        (
            r["mode"],
            r["input"],
            r.get("n_cells"),
            r["batch_size"],
            r.get("seed"),
            _scaled(r),
            _mode(r),
            r.get("readout_cells", -1),
            _negatives(r),
            _halo(r),
        )
        for r in _done(path)
    }
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.mode == "reach":
        for cells in (int(c) for c in args.cells.split(",")):
            for row in reach_run(args.input, cells, batches, args.preset, args.batch_mode):
                row.update(mode="reach", input=args.input, seed=None, preset=args.preset)
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
        return
    if args.mode == "quality":
        todo = [(None, b, int(s)) for s in args.seeds.split(",") for b in batches]
    else:
        todo = [(int(c), b, None) for c in args.cells.split(",") for b in batches]
    for cells, batch, seed in todo:
        key = (
            args.mode,
            args.input,
            cells,
            batch,
            seed,
            args.mode == "quality" and bool(batch) and args.scale_lr,
            args.batch_mode if batch else "full",
            args.readout_cells if args.mode == "memory" else -1,
            args.negatives if args.mode == "quality" and batch and args.batch_mode == "parts" else None,
            args.halo if batch and args.batch_mode == "parts" else 0,
        )
        if key in done:
            continue
        if args.mode == "quality":
            row = quality_run(args, batch, seed)
        else:
            cmd = [
                sys.executable,
                __file__,
                "--mode",
                "memory",
                "--input",
                args.input,
                "--preset",
                args.preset,
            ]
            cmd += [
                "--epochs",
                str(args.epochs),
                "--single",
                f"{cells},{batch}",
                "--batch-mode",
                args.batch_mode,
                "--gpu-budget-gb",
                str(args.gpu_budget_gb),
            ]
            cmd += ["--readout-cells", str(args.readout_cells), "--halo", str(args.halo)]
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=7200)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(mode=args.mode, input=args.input, batch_size=batch, seed=seed, preset=args.preset)
        if args.mode == "quality" and batch:
            row["scale_lr"] = args.scale_lr
        if batch:
            row["batch_mode"] = args.batch_mode
            if args.batch_mode == "parts":
                row["halo"] = args.halo
        row["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
