"""Clustering quality, time and memory of AttentionAE-sc against scanpy's Leiden on PCA, measured in one run.

For every labelled raw-count dataset in ``../shared/data`` and every seed, in its own fresh process (so its
peak memory, ``ru_maxrss`` of the whole process with the data, is its own):

* ``attentionae``  the engine as users run it (``python -m scgraph_core train --model attentionae``, preset
  ``paper`` = the paper's intent with the authors' bugs fixed); ARI / NMI of the final DEC clusters and of
  the Leiden initialisation it starts from (on the pre-trained embedding);
* ``scanpy``       log-normalised values of the same HVGs -> PCA (50) -> kNN (15) -> Leiden, at resolution 1.0
  (scanpy's default, the resolution AttentionAE-sc's initialisation uses) and 0.5
  (:func:`scgraph_core.cluster.scanpy_baseline`), same seed.

Labels are read only to score. paul15 is scored against its 19 clusters and its 10 coarse types from the
same run. A scale row trains on 20,000 cells synthesised from pbmc4k (``scgraph_core.synthetic``, counts
rounded, labels inherited from the anchor cell) and reports seconds and peak memory.

    python benchmarks/bench_clustering.py                               # everything (about 1-2 hours)
    python benchmarks/bench_clustering.py --datasets scvgae_sample --seeds 0 --no-scale
Writes ``benchmarks/results/clustering.json`` and prints markdown tables.
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
DATA = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {
    "scvgae_sample": ["celltype"],
    "paul15": ["celltype", "celltype_coarse"],
    "pbmc4k_top2000": ["celltype"],
}
SCALE_SOURCE, SCALE_CELLS = "pbmc4k_top2000", 20_000


def _load(name: str, n_cells: int | None = None):
    import anndata as ad

    from scgraph_core import synthetic

    adata = ad.read_h5ad(DATA / f"{name}.h5ad")
    if n_cells is not None and n_cells != adata.n_obs:
        adata = synthetic.synthesize_adata(adata, n_cells, seed=0)
    return adata


def single(name: str, seed: int, n_cells: int | None, overrides: dict) -> dict:
    """Train AttentionAE-sc once in this process; score it and the scanpy baseline on the same HVGs."""
    from scgraph_core import cluster, metrics, pipeline

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    adata = _load(name, n_cells)
    keys = DATASETS[name]
    config = pipeline.resolve_config(
        "attentionae",
        "paper",
        {**overrides, "train": {**overrides.get("train", {}), "seed": seed}},
        label_key=keys[0],
    )
    out, result = pipeline.execute(adata, config)
    seconds = time.perf_counter() - started
    m = result.metrics
    row: dict = {
        "dataset": name,
        "n_cells": int(out.n_obs),
        "n_genes_model": int(m["n_features"]),
        "seed": seed,
        "attention_mode": m["attention_mode"],
        "seconds_total": seconds,
        "seconds_pretrain": m["seconds_pretrain"],
        "seconds_dec": m["seconds_dec"],
        "seconds_per_epoch": m["seconds_per_epoch"],
        "pretrain_epochs": m["pretrain_epochs_run"],
        "dec_epochs": m["dec_epochs_run"],
        "dec_converged": m["dec_converged"],
        "dec_restart": m.get("dec_restart"),  # set when dec_guard > 0 and the ZINB loss rose past it
        "n_clusters": m["n_clusters"],
        "n_clusters_init": m["leiden_init"]["n_clusters"],
        "silhouette": m["silhouette"],
        "silhouette_init": m["leiden_init"]["silhouette"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # CPU seconds of this process: on a machine shared with other jobs, closer than wall seconds to
        # what the run costs on dedicated cores (with one thread they are what an idle core would take).
        "cpu_seconds": _cpu_seconds(),
        "threads": __import__("torch").get_num_threads(),
        "load_average": [load_start, os.getloadavg()[0]],
        "scores": {},
    }
    # The baseline on the very same cells and HVGs (log-normalised, unscaled).
    hvg = out.var_names.get_indexer(out.uns["attentionae"]["feature_genes"])
    lognorm = out.layers["lognorm"][:, hvg]
    baseline = {}
    for resolution in (1.0, 0.5):
        t0 = time.perf_counter()
        labels = cluster.scanpy_baseline(lognorm, counts=False, resolution=resolution, seed=seed)
        baseline[resolution] = (labels, time.perf_counter() - t0)
    row["seconds_scanpy"] = baseline[1.0][1]
    for key in keys:
        truth = out.obs[key].to_numpy()
        scores = {}
        for label, pred in (
            ("attentionae", out.obs["attentionae_cluster"].to_numpy()),
            ("leiden_init", out.obs["attentionae_leiden"].to_numpy()),
            ("scanpy_r1.0", baseline[1.0][0]),
            ("scanpy_r0.5", baseline[0.5][0]),
        ):
            s = metrics.clustering_metrics(truth, pred)
            scores[label] = {"ari": s["ari"], "nmi": s["nmi"], "n_clusters": s["n_clusters"]}
        row["scores"][key] = scores
    return row


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_child(name: str, seed: int, n_cells: int | None, overrides: dict) -> dict:
    cmd = [sys.executable, __file__, "--single", name, str(seed), str(n_cells or 0), json.dumps(overrides)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"dataset": name, "seed": seed, "n_cells": n_cells, "error": proc.stderr.strip()[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def quality_table(rows: list[dict]) -> str:
    lines = [
        "| dataset | labels | cells | AttentionAE-sc ARI | NMI | clusters | Leiden init ARI | NMI | clusters "
        "| scanpy r=1.0 ARI | NMI | clusters | scanpy r=0.5 ARI | NMI | clusters |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" in r or r.get("scale"):
            continue
        for key in r["scores"]:
            groups.setdefault((r["dataset"], key, r["n_cells"]), []).append(r["scores"][key])
    for (name, key, n), scores in groups.items():
        cells = [f"{name}", key, f"{n:,}"]
        for method in ("attentionae", "leiden_init", "scanpy_r1.0", "scanpy_r0.5"):
            cells.append(_mean_sd([s[method]["ari"] for s in scores]))
            cells.append(_mean_sd([s[method]["nmi"] for s in scores]))
            cells.append(f"{statistics.median([s[method]['n_clusters'] for s in scores]):g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(rows: list[dict]) -> str:
    lines = [
        "| dataset | cells | attention | wall s (median) | CPU s (median) | pre-train s | DEC s | epochs pre + DEC "
        "| DEC converged | peak memory | scanpy s | load avg |",
        "|---|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["dataset"], r["n_cells"]), []).append(r)
    for (name, n), rs in groups.items():

        def med(k: str, rs: list[dict] = rs) -> float:
            return statistics.median(r[k] for r in rs)

        epochs = ", ".join(f"{r['pretrain_epochs']}+{r['dec_epochs']}" for r in rs)
        conv = f"{sum(r['dec_converged'] for r in rs)}/{len(rs)}"
        lines.append(
            f"| {name}{' (synthetic)' if rs[0].get('scale') else ''} | {n:,} | {rs[0]['attention_mode']} | "
            f"{med('seconds_total'):.0f} | {med('cpu_seconds'):.0f} | {med('seconds_pretrain'):.0f} | "
            f"{med('seconds_dec'):.0f} | {epochs} | {conv} | {max(r['peak_rss_mb'] for r in rs) / 1024:.2f} GB | "
            f"{med('seconds_scanpy'):.1f} | {statistics.mean(x for r in rs for x in r['load_average']):.1f} |"
        )
    return "\n".join(lines)


def cpu_model() -> str | None:
    """The processor's name: results are reproducible on one machine, not across processor models."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor() or None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="0,1,2,3,4", help="the paper averages 5 seeds")
    parser.add_argument("--no-scale", action="store_true", help="skip the 20,000-cell synthetic row")
    parser.add_argument("--scale-cells", type=int, default=SCALE_CELLS)
    parser.add_argument("--scale-seeds", default="0")
    parser.add_argument(
        "--set", default="{}", help='JSON overrides by section, e.g. \'{"model": {"dec_epochs": 50}}\''
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="PyTorch threads per run (0 = the engine's default, all cores); 1 is faster on a crowded machine",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "clustering.json"))
    parser.add_argument(
        "--single", nargs=4, metavar=("NAME", "SEED", "N", "OVERRIDES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.single:
        name, seed, n, overrides = args.single
        row = single(name, int(seed), int(n) or None, json.loads(overrides))
        print(json.dumps(row))
        return
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data beside the repository.")
    overrides = json.loads(args.set)
    if args.threads:
        overrides.setdefault("train", {})["threads"] = args.threads
    rows = []
    for name in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = _run_child(name, seed, None, overrides)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if not args.no_scale:
        for seed in (int(s) for s in args.scale_seeds.split(",")):
            # From 10,000 cells on the paper builds the input graph on 50 principal components.
            scale_overrides = {
                **overrides,
                "graph": {"use": "pca", "n_pcs": 50, **overrides.get("graph", {})},
            }
            row = _run_child(SCALE_SOURCE, seed, args.scale_cells, scale_overrides)
            row["scale"] = True
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = {
        "benchmark": "clustering_attentionae",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "overrides": overrides,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "torch": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_at_end": load,
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(quality_table(rows))
    print()
    print(cost_table(rows))
    scale = [r for r in rows if r.get("scale") and "error" not in r]
    for r in scale:
        s = r["scores"]["celltype"]
        print(
            f"\n20k synthetic (labels inherited from the anchor cell): AttentionAE-sc ARI {s['attentionae']['ari']:.3f} "
            f"NMI {s['attentionae']['nmi']:.3f}; scanpy r=1.0 ARI {s['scanpy_r1.0']['ari']:.3f}."
        )
    for r in rows:
        if "error" in r:
            print(f"\nfailed: {r['dataset']} seed {r['seed']}: {r['error']}")


if __name__ == "__main__":
    main()
