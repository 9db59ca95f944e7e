"""Leiden on a feature matrix above the exact-search limit: scgraph's neighbour search against scanpy's pynndescent.

    python benchmarks/bench_leiden_features.py --cells 60000 --jsonl benchmarks/results/leiden_features.jsonl

Leiden on a cells x features matrix (the scanpy baseline, scVGAE's observed-expression clusters, the Embedding page's
re-clustering by Leiden) builds a kNN graph first. Above 50,000 cells it was scanpy's ``transformer="pynndescent"``,
whose scikit-learn transformer also prepares a search index after the fit (nothing queries it; preparing it compiles
numba code in every new process). ``partition.leiden`` now takes the faiss search the layouts share, or pynndescent
without that index. Each path runs in a fresh process (compilation is paid per process, as in a run's worker), on the
points of well-separated blobs; one JSON line per finished (cells, path, seed), and a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
from scgraph_core.cluster import partition
from scgraph_core.numba_cache import import_umap
from sklearn.metrics import adjusted_rand_score
n, dims, seed, path = {n}, {dims}, {seed}, {path!r}
rng = np.random.default_rng(seed)
centres = rng.normal(scale=4.0, size=(12, dims))
truth = rng.integers(0, 12, n)
X = (centres[truth] + rng.normal(size=(n, dims))).astype(np.float32)
import_umap()
tick = time.perf_counter()
if path.startswith("scgraph"):
    if path == "scgraph-no-faiss":  # pynndescent without the search index
        from scgraph_core import graphs
        graphs.HAVE_FAISS = False
    labels = partition.leiden(X, resolution=0.5, seed=seed)
else:  # what partition.leiden ran before: scanpy with pynndescent's transformer
    import anndata as ad, scanpy as sc
    a = ad.AnnData(X=X)
    sc.pp.neighbors(a, n_neighbors=15, use_rep="X", random_state=seed, transformer="pynndescent")
    sc.tl.leiden(a, resolution=0.5, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    labels = a.obs["leiden"].astype(int).to_numpy()
seconds = time.perf_counter() - tick
print(json.dumps({{"seconds_leiden": seconds, "seconds_process": time.perf_counter() - t0,
                  "n_clusters": int(len(set(labels.tolist()))), "ari": float(adjusted_rand_score(truth, labels))}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="60000", help="comma-separated cell counts (default 60000)")
    ap.add_argument("--dims", type=int, default=30, help="features per cell (default 30, a latent space)")
    ap.add_argument(
        "--paths", default="scanpy-pynndescent,scgraph,scgraph-no-faiss", help="which paths to run"
    )
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--jsonl", type=Path, default=REPO / "benchmarks/results/leiden_features.jsonl")
    args = ap.parse_args()
    done = set()
    if args.jsonl.exists():
        for line in args.jsonl.read_text().splitlines():
            row = json.loads(line)
            done.add((row["cells"], row["path"], row["seed"]))
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    for n in (int(c) for c in args.cells.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            for path in args.paths.split(","):
                if (n, path, seed) in done:
                    continue
                code = CHILD.format(repo=str(REPO), n=n, dims=args.dims, seed=seed, path=path)
                start = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", code],
                    capture_output=True,
                    text=True,
                    env={**os.environ},
                    check=False,
                )
                if out.returncode != 0:
                    print(f"{path} on {n} cells failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = {"cells": n, "dims": args.dims, "path": path, "seed": seed}
                row.update(json.loads(out.stdout.strip().splitlines()[-1]))
                row["seconds_wall"] = time.perf_counter() - start
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row))


if __name__ == "__main__":
    main()
