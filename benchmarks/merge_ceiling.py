"""How far merging clusters alone can lift scanpy's Leiden partitions: the ceiling DEC's merging works under.

DEC fine-tuning starts from an over-split Leiden partition and, in the authors' form, lifts ARI mostly by
merging clusters (README, AttentionAE-sc clustering). This asks what a near-best merge of a Leiden
partition scores: every cluster is given the label most of its cells carry (an oracle that reads the labels),
and the merged partition is scored. A method that only merges the clusters of a partition cannot go much
beyond that partition's ceiling; going beyond it needs an embedding that separates the labels better.

For every labelled raw-count set in ``../shared/data``: the same HVGs as the AttentionAE-sc ``paper`` preset
(log-normalised, unscaled) -> PCA (50) -> kNN (15) -> Leiden (:func:`scgraph_core.cluster.scanpy_baseline`)
at resolutions 0.5, 1.0 and 2.0, seed 0. Per partition: clusters, ARI, the ceiling ARI after the oracle merge.
``--results`` adds the partitions of finished runs (``result.h5ad`` of ``python -m scgraph_core train``:
every ``obs`` column ending in ``_cluster`` or ``_leiden``, scored against the label keys the file holds).

    python benchmarks/merge_ceiling.py          # about 1 minute on 2 cores
    python benchmarks/merge_ceiling.py --datasets pbmc4k_top2000 --results runs/pbmc4k/result.h5ad
Writes ``benchmarks/results/merge_ceiling.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clustering import DATA, DATASETS, REPO

RESOLUTIONS = (0.5, 1.0, 2.0)


def oracle_merge(truth: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Each cluster relabelled with the label most of its cells carry (ties: the label sorted first)."""
    labels, y = np.unique(truth.astype(str), return_inverse=True)
    ids, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((ids.size, labels.size), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    return labels[table.argmax(axis=1)][c]


def score(dataset: str, key: str, partition: object, truth: np.ndarray, found: np.ndarray) -> dict:
    """One table row: the partition's clusters and ARI against ``truth``, and its ceiling after the merge."""
    from scgraph_core import metrics

    return {
        "dataset": dataset,
        "labels": key,
        "n_labels": int(np.unique(truth.astype(str)).size),
        "resolution": partition,
        "n_clusters": int(np.unique(found).size),
        "ari": round(metrics.clustering_metrics(truth, found)["ari"], 4),
        "ceiling_ari": round(metrics.clustering_metrics(truth, oracle_merge(truth, found))["ari"], 4),
    }


def measure(name: str, seed: int) -> list[dict]:
    import anndata as ad

    from scgraph_core import cluster, data, pipeline

    adata = ad.read_h5ad(DATA / f"{name}.h5ad")
    config = pipeline.resolve_config("attentionae", "paper", {}, label_key=DATASETS[name][0])
    prepared = data.prepare(adata, config.prepare)
    cells = prepared.adata
    lognorm = cells.layers["lognorm"][:, cells.var_names.get_indexer(prepared.feature_genes)]
    rows = []
    for resolution in RESOLUTIONS:
        found = cluster.scanpy_baseline(lognorm, counts=False, resolution=resolution, seed=seed)
        for key in DATASETS[name]:
            truth = cells.obs[key].to_numpy()
            rows.append(score(name, key, resolution, truth, found))
    return rows


def measure_result(path: Path) -> list[dict]:
    """The ceilings of the partitions a finished run wrote (see the module docstring)."""
    import anndata as ad

    obs = ad.read_h5ad(path, backed="r").obs
    known = sorted({k for ks in DATASETS.values() for k in ks})
    keys = [k for k in known if k in obs]
    if not keys:
        sys.exit(f"{path} has none of the label columns {known}: train with --label-key so they are kept.")
    rows = []
    for column in [c for c in obs.columns if c.endswith(("_cluster", "_leiden"))]:
        found = obs[column].astype(str).to_numpy()
        for key in keys:
            truth = obs[key].to_numpy()
            rows.append(score(str(path), key, column, truth, found))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", nargs="*", default=[], help="result.h5ad files of finished runs")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "merge_ceiling.json"))
    args = parser.parse_args()
    missing = [d for d in args.datasets if not (DATA / f"{d}.h5ad").exists()]
    if missing:
        sys.exit(f"Not found in {DATA}: {', '.join(missing)}. Put ../shared/data beside the repository.")
    absent = [p for p in args.results if not Path(p).is_file()]
    if absent:
        sys.exit(f"No such result file: {', '.join(absent)} (give the result.h5ad a finished run wrote).")
    rows = [row for name in args.datasets for row in measure(name, args.seed)]
    rows += [row for path in args.results for row in measure_result(Path(path))]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": platform.platform(), "seed": args.seed, "rows": rows}, indent=1) + "\n"
    )
    print(
        "| dataset or run | labels | resolution or partition | clusters | ARI | ceiling ARI (oracle merge) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['labels']} ({r['n_labels']}) | {r['resolution']} | {r['n_clusters']} | "
            f"{r['ari']:.3f} | {r['ceiling_ari']:.3f} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
