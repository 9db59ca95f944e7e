"""The analysis after training on a saved embedding: the cluster choice after the drawn UMAP, or beside it (#25).

The engine makes the drawn 2-D UMAP and the label-free cluster choice (its own 10-D UMAP and the HDBSCAN grid),
both single-threaded, in two processes at once (:mod:`scgraph_core.background`). This reruns the shared analysis
(:func:`scgraph_core.analyse.analyse`) on the embedding a finished run saved in ``result.h5ad``, in fresh
processes, with ``SCGRAPH_SERIAL_ANALYSIS=1`` ("after") and without ("beside"), alternating, and records the
seconds, where they went and the label-free ARI (the two must agree exactly). It times the layouts, the cluster
choice, the Leiden comparison and the scores; the attention and P_mu export, which a saved embedding does not
carry, are not part of it (a run's ``analysis_parts["interpret"]`` has them).

One JSON line per finished repeat in ``--jsonl`` (a rerun skips what is done); ``--table`` prints medians.

    python benchmarks/bench_analysis.py --result runs/pbmc3k/result.h5ad --repeats 3
    python benchmarks/bench_analysis.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODES = ("after", "beside")


def one(result: str, label_key: str, seed: int) -> dict:
    """In this process: the shared analysis of the saved embedding, with the run's clustering settings."""
    sys.path.insert(0, str(REPO))
    import anndata as ad

    from scgraph_core import analyse, cluster
    from scgraph_core.models.base import Embedding, Model
    from scgraph_core.params import from_dict

    saved = ad.read_h5ad(result)
    key = saved.uns["scgraph"]["views"]["embedding"]
    config = json.loads((Path(result).parent / "config.json").read_text())
    params = from_dict(cluster.ClusterParams, config.get("cluster", {}), where="cluster: ")

    class Saved(Model):
        name = "saved"

        def embed(self) -> Embedding:
            return Embedding(key, np.asarray(saved.obsm[key], dtype=np.float32))

    prepared = type("Prepared", (), {"adata": saved})()
    started = time.perf_counter()
    res = analyse.analyse(Saved(), prepared, params, seed=seed, label_key=label_key)
    m = res.metrics
    return {
        "seconds": time.perf_counter() - started,
        "parts": m["analysis_parts"],
        "overlapped": bool(m.get("analysis_overlapped", False)),
        "child_peak_rss_mb": m.get("analysis_child_peak_rss_mb"),
        "ari": m.get("ari"),
        "n_clusters": m.get("n_clusters"),
        "n_cells": int(saved.n_obs),
    }


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["result"], r["n_cells"], r["mode"]), []).append(r)
    lines = [
        "| saved run | cells | cluster choice | repeats | analysis s (median) | layout | cluster choice s | "
        "waited | Leiden | ARI [clusters] |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (result, cells, mode), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):

        def med(get, rs=rs) -> float:
            return float(np.median([get(r) for r in rs]))

        lines.append(
            f"| {Path(result).parent.name} | {cells:,} | {mode} | {len(rs)} | {med(lambda r: r['seconds']):.1f} | "
            f"{med(lambda r: r['parts'].get('layout', 0)):.1f} | {med(lambda r: r['parts'].get('clusters', 0)):.1f} | "
            f"{med(lambda r: r['parts'].get('clusters_waited', 0)):.1f} | "
            f"{med(lambda r: r['parts'].get('leiden', 0)):.1f} | {rs[0]['ari']:.3f} [{rs[0]['n_clusters']}] |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--result", action="append", default=[], help="a run's result.h5ad (repeatable)")
    parser.add_argument("--label-key", default="celltype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jsonl", default=str(REPO / "benchmarks" / "results" / "analysis_overlap.jsonl"))
    parser.add_argument("--table", action="store_true")
    parser.add_argument(
        "--single", action="store_true", help=argparse.SUPPRESS
    )  # internal: one run, JSON out
    args = parser.parse_args()
    path = Path(args.jsonl)
    if args.single:
        print(json.dumps(one(args.result[0], args.label_key, args.seed)))
        return
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
    if args.table:
        print(table(rows))
        return
    if not args.result:
        parser.error("give --result PATH (a finished run's result.h5ad) or --table")
    done = {(r["result"], r["mode"], r["repeat"]) for r in rows}
    for result in args.result:
        for repeat in range(args.repeats):
            for mode in MODES:  # alternating, so drifting load touches both alike
                if (result, mode, repeat) in done:
                    continue
                env = {**os.environ, "SCGRAPH_SERIAL_ANALYSIS": "1" if mode == "after" else "0"}
                cmd = [
                    sys.executable,
                    __file__,
                    "--single",
                    "--result",
                    result,
                    "--label-key",
                    args.label_key,
                ]
                cmd += ["--seed", str(args.seed)]
                proc = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=7200)
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row.update(result=result, mode=mode, repeat=repeat, cpus=os.cpu_count())
                row["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(table([json.loads(line) for line in path.read_text().splitlines() if line.strip()]))


if __name__ == "__main__":
    main()
