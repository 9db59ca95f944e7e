"""How many epochs the drawn 2-D UMAP needs: layout quality against time on saved embeddings.

Reads the ``.npz`` files ``bench_suite.py --save DIR`` writes (the latent and the labels) and lays out each
latent in 2-D (the engine's drawn UMAP: 15 neighbours, min_dist 0.1, seed 0..) with umap-learn's default
epochs (500 up to 10,000 cells) and with fewer. For each layout: the share of every cell's 15 nearest
neighbours in the latent that are also among its 15 nearest in the drawing (neighbour preservation), the
silhouette of the cell types on the drawing (how well the picture separates them), and seconds. One JSON
line per (file, epochs, seed) in ``--jsonl``; a rerun skips what is done; ``--table`` prints means.

    python benchmarks/study_drawn_epochs.py --saved /work/emb/s0 --jsonl benchmarks/results/drawn_epochs.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_cluster_epochs import command_line, done_runs


def preserved(latent: np.ndarray, xy: np.ndarray, k: int = 15) -> float:
    """Mean share of each cell's k nearest neighbours in ``latent`` that are among its k nearest in ``xy``."""
    from sklearn.neighbors import NearestNeighbors

    a = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent, return_distance=False)[:, 1:]
    b = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def run(saved: Path, out: Path, epochs: list[int], seeds: list[int]) -> None:
    from scgraph_core.cluster.layout import umap_embedding
    from scgraph_core.metrics import silhouette

    done = done_runs(out)
    for path in sorted(saved.glob("*.npz")):
        z = np.load(path, allow_pickle=True)
        emb, truth = z["embedding"], z["truth"].astype(str)
        for e in epochs:
            for seed in seeds:
                if (path.name, e, seed) in done:
                    continue
                tick = time.perf_counter()
                xy = umap_embedding(emb, min_dist=0.1, n_epochs=e or None, seed=seed)
                seconds = time.perf_counter() - tick
                row = {
                    "file": path.name,
                    "epochs": e,
                    "seed": seed,
                    "cells": int(emb.shape[0]),
                    "preserved": preserved(emb, xy),
                    "silhouette_types": silhouette(xy, truth, sample=None, noise_label="nan"),
                    "seconds": round(seconds, 3),
                }
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def table(out: Path) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    epochs = sorted({r["epochs"] for r in rows})
    names = ["default" if e == 0 else str(e) for e in epochs]
    print(
        "| saved embedding | "
        + " | ".join(f"kNN kept {n} | type silhouette {n} | s {n}" for n in names)
        + " |"
    )
    print("|---|" + "---:|" * (3 * len(epochs)))
    for f in sorted({r["file"] for r in rows}):
        cells = []
        for e in epochs:
            sel = [r for r in rows if r["file"] == f and r["epochs"] == e]
            cells += [
                f"{statistics.mean(r['preserved'] for r in sel):.3f}",
                f"{statistics.mean(r['silhouette_types'] for r in sel):.3f}",
                f"{statistics.median(r['seconds'] for r in sel):.1f}",
            ]
        print(f"| {f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    command_line(__doc__, "drawn_epochs.jsonl", "0,200", run, table)
