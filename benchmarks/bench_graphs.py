"""Time cell-graph construction on real and synthetic cells; measure approximate-search recall.

    python benchmarks/bench_graphs.py                      # 3k (pbmc3k), 20k and 100k synthetic cells
    python benchmarks/bench_graphs.py --sizes 3000,20000 --repeats 3 --out /tmp/graphs.json

Sizes below 5000 use pbmc3k itself (2,638 cells x 250 genes, log values); larger ones are synthesised
from it with scgraph_core.synthetic (interpolation between real neighbours). Each configuration is
built with ``symmetrize='none'`` so the directed k-neighbour lists can be compared with the exact ones
(recall@k = shared neighbours / k, averaged over cells); one union-symmetrised build per size shows
what symmetrisation adds. Writes JSON (with machine information) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scgraph_core import graphs as G  # noqa: E402
from scgraph_core import params  # noqa: E402
from scgraph_core.synthetic import synthesize_adata  # noqa: E402

SHARED = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASET = "pbmc3k_seurat250.h5ad"
K = 5

# (label, spec values, engine) — engine "pynndescent" runs the approximate search without faiss.
CONFIGS = [
    ("knn euclidean", {"kind": "knn", "metric": "euclidean", "backend": "exact"}, "faiss"),
    ("knn euclidean", {"kind": "knn", "metric": "euclidean", "backend": "approx"}, "faiss"),
    ("knn euclidean", {"kind": "knn", "metric": "euclidean", "backend": "approx"}, "pynndescent"),
    ("knn cosine", {"kind": "knn", "metric": "cosine", "backend": "exact"}, "faiss"),
    ("knn cosine", {"kind": "knn", "metric": "cosine", "backend": "approx"}, "faiss"),
    ("pknn", {"kind": "pknn", "backend": "exact"}, "faiss"),
    ("pknn", {"kind": "pknn", "backend": "approx"}, "faiss"),
]


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def machine() -> dict:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": {
            n: _version(n)
            for n in ("numpy", "scipy", "torch", "faiss-cpu", "pynndescent", "scanpy", "scikit-learn")
        },
    }


def load_cells(n: int, seed: int) -> tuple[np.ndarray, str, float]:
    import anndata as ad

    real = ad.read_h5ad(SHARED / DATASET)
    if n < 5000:
        X = real.X.toarray() if hasattr(real.X, "toarray") else np.asarray(real.X)
        return np.ascontiguousarray(X, dtype=np.float32), f"pbmc3k real ({real.n_obs} cells)", 0.0
    t = time.perf_counter()
    syn = synthesize_adata(real, n, seed=seed)
    seconds = time.perf_counter() - t
    return (
        np.ascontiguousarray(syn.X.toarray(), dtype=np.float32),
        f"synthetic from pbmc3k ({n} cells)",
        seconds,
    )


def build(X: np.ndarray, values: dict, engine: str) -> tuple[G.Graph, float]:
    spec = params.from_dict(G.GraphSpec, {"k": K, "symmetrize": "none", **values})
    saved = G.HAVE_FAISS
    G.HAVE_FAISS = engine == "faiss" and saved
    try:
        t = time.perf_counter()
        g = G.build_graph(X, spec)
        return g, time.perf_counter() - t
    finally:
        G.HAVE_FAISS = saved


def neighbour_lists(g: G.Graph) -> np.ndarray:
    return g.edge_index[1].reshape(g.n_nodes, K)  # sorted by source, exactly K per cell


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = (approx[:, :, None] == exact[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / K)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="3000,20000,100000", help="cell counts, comma-separated")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed repeats below 50,000 cells (median reported)"
    )
    ap.add_argument("--large-repeats", type=int, default=1, help="timed repeats from 50,000 cells on")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "graphs.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-pynndescent", action="store_true", help="skip the pynndescent rows (JIT takes ~30 s)"
    )
    args = ap.parse_args(argv)

    if not (SHARED / DATASET).exists():
        print(f"skipped: {SHARED / DATASET} is absent (the shared datasets live in ../shared/data).")
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report = {"machine": machine(), "k": K, "dataset": DATASET, "results": [], "notes": {}}
    configs = [c for c in CONFIGS if not (args.no_pynndescent and c[2] == "pynndescent")]

    if any(c[2] == "pynndescent" for c in configs):
        # pynndescent compiles its numba kernels on first use in every process; time that once, apart.
        warm = np.random.default_rng(0).random((2000, 50), dtype=np.float32)
        _, s = build(warm, {"kind": "knn", "backend": "approx"}, "pynndescent")
        report["notes"]["pynndescent_first_call_seconds"] = round(s, 2)
        print(f"pynndescent first call (numba JIT) on 2,000 cells: {s:.1f} s", flush=True)

    for n in sizes:
        X, source, synth_s = load_cells(n, args.seed)
        reps = args.repeats if X.shape[0] < 50000 else args.large_repeats
        print(
            f"\n{source}: {X.shape[0]} x {X.shape[1]} (synthesis {synth_s:.1f} s), {reps} repeat(s)",
            flush=True,
        )
        exact_lists: dict[str, np.ndarray] = {}
        for label, values, engine in configs:
            times, g = [], None
            for _ in range(reps):
                g, s = build(X, values, engine)
                times.append(s)
            lists = neighbour_lists(g)
            if values["backend"] == "exact":
                exact_lists[label] = lists
            rec = (
                recall(lists, exact_lists[label])
                if label in exact_lists and values["backend"] != "exact"
                else None
            )
            row = {
                "cells": int(X.shape[0]),
                "genes": int(X.shape[1]),
                "source": source,
                "synthesis_seconds": round(synth_s, 3),
                "graph": label,
                "backend": values["backend"],
                "engine": g.info["backend"],
                "seconds": round(statistics.median(times), 3),
                "all_seconds": [round(t, 3) for t in times],
                f"recall_at_{K}": None if rec is None else round(rec, 4),
                "n_edges_directed": g.n_edges,
            }
            report["results"].append(row)
            print(f"  {label:14s} {g.info['backend']:12s} {row['seconds']:8.2f} s  recall {rec}", flush=True)
        # What union symmetrisation adds on top (approximate search, the cheap one at every size).
        spec = params.from_dict(G.GraphSpec, {"k": K, "backend": "approx"})
        t = time.perf_counter()
        g = G.build_graph(X, spec)
        s = time.perf_counter() - t
        st = g.stats()
        report["results"].append(
            {
                "cells": int(X.shape[0]),
                "genes": int(X.shape[1]),
                "source": source,
                "graph": "knn euclidean, union",
                "backend": "approx",
                "engine": g.info["backend"],
                "seconds": round(s, 3),
                "all_seconds": [round(s, 3)],
                f"recall_at_{K}": None,
                "n_edges_directed": g.n_edges,
                "stats": st,
            }
        )
        print(f"  union graph: {s:.2f} s, {st['n_components']} component(s), min degree {st['min_degree']}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}\n")
    print(table(report))
    return 0


def table(report: dict) -> str:
    lines = [
        f"| cells | graph (k={K}) | backend | engine | seconds (median) | recall@{K} vs exact |",
        "|---:|---|---|---|---:|---:|",
    ]
    for r in report["results"]:
        rec = r[f"recall_at_{K}"]
        lines.append(
            f"| {r['cells']:,} | {r['graph']} | {r['backend']} | {r['engine']} | {r['seconds']:.2f} | "
            f"{'' if rec is None else f'{rec:.3f}'} |"
        )
    m = report["machine"]
    v = m["versions"]
    lines.append(
        f"\n{m['cpus_usable']} CPU cores, numpy {v['numpy']}, torch {v['torch']}, faiss {v['faiss-cpu']}, "
        f"pynndescent {v['pynndescent']}; {m['date']}; load average at start {m['load_average_at_start']}."
    )
    if "pynndescent_first_call_seconds" in report["notes"]:
        lines.append(
            f"pynndescent first call (numba JIT): {report['notes']['pynndescent_first_call_seconds']} s."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
