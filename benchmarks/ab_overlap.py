"""The drawn UMAP and the label-free cluster choice one after the other against side by side in two threads (issue
#25), on a saved embedding: the analysis steps of :func:`scgraph_core.analyse.analyse` that the overlap touches
(shared neighbours, then :func:`scgraph_core.analyse.draw_and_choose`: drawn layout, cluster choice, Leiden), ``--cells`` rows drawn (seed 0) from ``--obsm`` of a run's
result.h5ad, with the quick preset's cluster settings. Both arms use one BLAS thread (as the analysis does up to
``OVERLAP_MAX_CELLS``); the limit is lifted here so sizes above it can be measured. One JSON line per run in
``--jsonl`` with the seconds and checksums of the clusters and the layout (the two arms must agree).

    python benchmarks/ab_overlap.py --h5ad RUN/result.h5ad --cells 100000 --mode serial --rep 1
    python benchmarks/ab_overlap.py --h5ad RUN/result.h5ad --cells 100000 --mode overlap --rep 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--h5ad", required=True)
    parser.add_argument("--obsm", default="X_cellvgae")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--mode", choices=("serial", "overlap"), required=True)
    parser.add_argument("--rep", type=int, default=1)
    parser.add_argument("--jsonl", default=str(REPO / "benchmarks" / "results" / "ab_overlap.jsonl"))
    args = parser.parse_args()
    os.environ["SCGRAPH_OVERLAP"] = "1" if args.mode == "overlap" else "0"
    import h5py

    from scgraph_core import analyse, pipeline
    from scgraph_core import cluster as clustering

    with h5py.File(args.h5ad, "r") as fh:
        values = fh["obsm"][args.obsm]
        n = min(args.cells, values.shape[0])
        rows = np.sort(np.random.default_rng(0).choice(values.shape[0], n, replace=False))
        space = np.asarray(values[rows], dtype=np.float32)
    cluster = pipeline.resolve_config("cellvgae", "quick", {}).cluster
    analyse.OVERLAP_MAX_CELLS = 10**9
    seed = 0
    started = time.perf_counter()
    knn = clustering.shared_neighbours(space, cluster.n_neighbors, seed=seed)
    seconds_knn = time.perf_counter() - started
    xy, _, chosen, seconds_layout, overlapped = analyse.draw_and_choose(
        space, cluster, seed, knn, choose=True, on_drawing=False
    )
    found, _, seconds = chosen
    labels = np.asarray(found.labels)
    row = {
        "h5ad": args.h5ad,
        "cells": n,
        "mode": args.mode,
        "rep": args.rep,
        "overlapped": overlapped,
        "seconds": round(time.perf_counter() - started, 1),
        "neighbours": round(seconds_knn, 1),
        "layout": round(seconds_layout, 1),
        **{k: round(v, 1) for k, v in seconds.items()},
        "n_clusters": int(len(set(labels.tolist()) - {-1})),
        "labels_sum": int(labels.sum()),
        "layout_sum": float(np.asarray(xy, dtype=np.float64).sum()),
    }
    print(json.dumps(row), flush=True)
    with open(args.jsonl, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
