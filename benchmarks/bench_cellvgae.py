"""CellVGAE training speed and memory: scgraph against a plain float32 PyG baseline, on one device.

For each dataset size (PBMC3k itself, then 20k / 50k / 100k synthetic cells made from it as
``../shared/data/README.md`` describes, kNN k = 5) and preset (paper, quick), every variant trains in
its own fresh process, so its peak memory (``ru_maxrss``: whole process, data included) is its own:

* ``scgraph``      the engine as users run it (lean GAT, precision "auto" = bf16 autocast here)
* ``scgraph-fp32`` the same engine in float32
* ``baseline``     the obvious PyG model (GATConv layers + VGAE, float32; benchmarks/cellvgae_baseline.py)

Seconds per epoch are the median over the timed epochs (the first epoch is a warm-up and is not
counted); evaluation is off for all variants so the same work is timed. ``--device cuda`` runs every
variant, the baseline included, on the GPU (synchronised around each timed step) and adds the GPU's peak
memory (``torch.cuda.max_memory_allocated``) beside the process RSS; ``--device cpu`` (the default) and
``auto`` as the engine reads them.

    python benchmarks/bench_cellvgae.py                         # everything (about 20 minutes)
    python benchmarks/bench_cellvgae.py --sizes 2638 --presets paper
Writes ``benchmarks/results/cellvgae.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
PBMC3K = (
    Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data")) / "pbmc3k_seurat250.h5ad"
)
EPOCHS = {2638: 8, 20000: 4, 50000: 3, 100000: 3}


def _dataset(n_cells: int):
    import anndata as ad

    from scgraph_core import synthetic

    real = ad.read_h5ad(PBMC3K)
    if n_cells == real.n_obs:
        return real
    return synthetic.synthesize_adata(real, n_cells, seed=0)


def single(n_cells: int, preset: str, impl: str, epochs: int, device: str = "cpu") -> dict:
    """Train one variant in this process and return its measurements."""
    import numpy as np
    import torch

    from scgraph_core import data, graphs, pipeline
    from scgraph_core.models.cellvgae import CellVGAE
    from scgraph_core.train import Trainer

    adata = _dataset(n_cells)
    precision = "fp32" if impl in ("scgraph-fp32", "baseline") else "auto"
    config = pipeline.resolve_config(
        "cellvgae",
        preset,
        {
            "model": {"epochs": epochs, "attention": False},
            "train": {"precision": precision, "eval_every": 0, "device": device},
        },
    )
    prepared = data.prepare(adata, config.prepare)
    graph = graphs.build_graph(graphs.graph_matrix(prepared, config.graph), config.graph)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds: list[float] = []
    if impl == "baseline":
        from cellvgae_baseline import baseline_model, baseline_step

        from scgraph_core.models.cellvgae import split_edges
        from scgraph_core.train import resolve_device

        p = config.params
        dev = resolve_device(device)
        torch.manual_seed(0)
        split = split_edges(graph.edge_index, adata.n_obs, val=p.val_fraction, test=p.test_fraction, seed=0)
        x = torch.from_numpy(np.ascontiguousarray(prepared.features)).to(dev)
        model = baseline_model(
            x.shape[1], hidden=p.hidden, heads=p.heads, attn_dropout=p.attn_dropout, latent=p.latent
        ).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=p.lr)
        message, positives = split.message.to(dev), split.train_pos.to(dev)
        for _ in range(epochs):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            baseline_step(model, opt, x, message, positives)  # .item() inside waits for the GPU
            seconds.append(time.perf_counter() - start)
        precision_used = "fp32"
    else:
        trainer = Trainer(config.train)
        dev = trainer.device
        outcome = CellVGAE().train_net(prepared, graph, config.params, trainer).outcome
        seconds = [e["seconds"] for e in outcome.history]  # the trainer synchronises on a GPU
        precision_used = trainer.precision_name
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return {
        "n_cells": int(adata.n_obs),
        "preset": preset,
        "impl": impl,
        "precision": precision_used,
        "epochs_timed": len(timed),
        "seconds_per_epoch": statistics.median(timed),
        "seconds_min": min(timed),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_data_mb": rss_data,
        "n_edges": int(graph.edge_index.shape[1]),
        "device": str(dev),
        "gpu_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "gpu_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="2638,20000,50000,100000")
    parser.add_argument("--presets", default="paper,quick")
    parser.add_argument("--impls", default="scgraph,scgraph-fp32,baseline")
    parser.add_argument("--baseline-max", type=int, default=20000, help="largest size the baseline runs at")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cellvgae.json"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto: every variant runs there")
    parser.add_argument(
        "--single", nargs=5, metavar=("N", "PRESET", "IMPL", "EPOCHS", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.single:
        n, preset, impl, epochs, device = args.single
        print(json.dumps(single(int(n), preset, impl, int(epochs), device)))
        return
    if not PBMC3K.exists():
        sys.exit(f"{PBMC3K} is absent: this benchmark needs ../shared/data beside the repository.")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for preset in args.presets.split(","):
            for impl in args.impls.split(","):
                if impl == "baseline" and n > args.baseline_max:
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    "--single",
                    str(n),
                    preset,
                    impl,
                    str(EPOCHS.get(n, 3)),
                    args.device,
                ]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
                )
                if proc.returncode != 0:
                    row = {"n_cells": n, "preset": preset, "impl": impl, "error": proc.stderr.strip()[-500:]}
                else:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["impl"] == "baseline"
                and r["n_cells"] == row["n_cells"]
                and r["preset"] == row["preset"]
                and "seconds_per_epoch" in r
            ),
            None,
        )
        if base and "seconds_per_epoch" in row:
            row["speedup_vs_baseline"] = base["seconds_per_epoch"] / row["seconds_per_epoch"]
    import torch

    out = {
        "benchmark": "cellvgae_training",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": args.device,
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(
        "| cells | preset | variant | device | precision | s/epoch | vs baseline | peak memory (RSS) | GPU peak |"
    )
    print("|---:|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['n_cells']:,} | {r['preset']} | {r['impl']} | | | failed | | | |")
            continue
        ratio = f"{r['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in r else ""
        gpu = f"{r['gpu_peak_mb'] / 1024:.2f} GB" if r.get("gpu_peak_mb") is not None else ""
        print(
            f"| {r['n_cells']:,} | {r['preset']} | {r['impl']} | {r.get('device', 'cpu')} | {r['precision']} | "
            f"{r['seconds_per_epoch']:.3f} | {ratio} | {r['peak_rss_mb'] / 1024:.2f} GB | {gpu} |"
        )


if __name__ == "__main__":
    main()
