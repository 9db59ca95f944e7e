"""How many epochs the UMAP that HDBSCAN clusters needs: the label-free choice on saved embeddings.

Reads the ``.npz`` files ``bench_suite.py --save DIR`` writes (the latent and the labels) and reruns the
engine's default cluster choice (HDBSCAN grid on a 10-D UMAP, best silhouette) with the clustered
layout's epochs at umap-learn's default (500 up to 10,000 cells) and at fewer, for several layout seeds,
so the change can be told from the layout seed's own spread. One JSON line per (file, epochs, seed) in
``--jsonl``; a rerun skips what is done. ``--table`` prints ARI per dataset and epochs (mean over seeds)
and the median and worst over datasets.

    python benchmarks/study_cluster_epochs.py --saved /work/emb/s0 --jsonl benchmarks/results/cluster_epochs.jsonl
    python benchmarks/study_cluster_epochs.py --table --jsonl benchmarks/results/cluster_epochs.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def done_runs(path: Path) -> set[tuple[str, int, int]]:
    """(file, epochs, seed) of the runs already in ``path``."""
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["file"], r["epochs"], r["seed"]) for r in rows}


def run(saved: Path, out: Path, epochs: list[int], seeds: list[int]) -> None:
    from scgraph_core.cluster import cluster_embedding
    from scgraph_core.cluster.grid import pair_agreement
    from scgraph_core.metrics import clustering_metrics

    done = done_runs(out)
    for path in sorted(saved.glob("*.npz")):
        z = np.load(path, allow_pickle=True)
        emb, truth = z["embedding"], z["truth"]
        for e in epochs:
            for seed in seeds:
                if (path.name, e, seed) in done:
                    continue
                tick = time.perf_counter()
                found = cluster_embedding(emb, seed=seed, cluster_umap_n_epochs=e or None)
                seconds = time.perf_counter() - tick
                m = clustering_metrics(truth, found.labels)
                row = {
                    "file": path.name,
                    "epochs": e,
                    "seed": seed,
                    "cells": int(emb.shape[0]),
                    "ari": m["ari"],
                    "nmi": m["nmi"],
                    "n_clusters": m["n_clusters"],
                    "noise_fraction": m["noise_fraction"],
                    "seconds": round(seconds, 3),
                }
                if e == 0 and seed == 0:  # the engine's own run: must give the saved clusters (any names)
                    saved = z["clusters"].astype(str)
                    row["same_as_saved"] = pair_agreement(found.labels.astype(str), saved) == 1.0
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def table(out: Path) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    epochs = sorted({r["epochs"] for r in rows})
    files = sorted({r["file"] for r in rows})
    names = ["default" if e == 0 else str(e) for e in epochs]
    print(
        "| saved embedding | "
        + " | ".join(f"ARI {n}" for n in names)
        + " | "
        + " | ".join(f"s {n}" for n in names)
        + " |"
    )
    print("|---|" + "---:|" * (2 * len(epochs)))
    per: dict[int, list[float]] = {e: [] for e in epochs}
    for f in files:
        aris, secs = [], []
        for e in epochs:
            sel = [r for r in rows if r["file"] == f and r["epochs"] == e]
            a = statistics.mean(r["ari"] for r in sel) if sel else float("nan")
            per[e].append(a)
            aris.append(f"{a:.3f} ({len(sel)})")
            secs.append(f"{statistics.median(r['seconds'] for r in sel):.1f}" if sel else "-")
        print(f"| {f} | " + " | ".join(aris) + " | " + " | ".join(secs) + " |")
    print(
        "| median / worst | "
        + " | ".join(f"{statistics.median(v):.3f} / {min(v):.3f}" for v in per.values())
        + " | |"
    )


def command_line(doc: str, default_jsonl: str, default_epochs: str, run_fn, table_fn) -> None:
    """The studies' shared command line: --saved, --jsonl, --epochs, --seeds, --table."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--saved", default="", help="folder of bench_suite.py --save .npz files")
    parser.add_argument("--jsonl", default=str(Path(__file__).parent / "results" / default_jsonl))
    parser.add_argument("--epochs", default=default_epochs, help="0 = umap-learn's default")
    parser.add_argument("--seeds", default="0,1,2", help="layout seeds")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    out = Path(args.jsonl)
    if not args.table:
        epochs = [int(e) for e in args.epochs.split(",")]
        run_fn(Path(args.saved), out, epochs, [int(v) for v in args.seeds.split(",")])
    table_fn(out)


if __name__ == "__main__":
    command_line(__doc__, "cluster_epochs.jsonl", "0,200,100", run, table)
