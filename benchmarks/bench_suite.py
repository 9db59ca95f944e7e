"""The dataset suite: every model's default preset on every labelled set in ``../shared/data``, against scanpy.

For every dataset, model and seed, in its own fresh process (so its peak memory is its own):

* the model's ``paper`` preset through the engine (``pipeline.execute``, what ``python -m scgraph_core train``
  runs), scored on its **label-free** clusters (``uns['scgraph']['views']['clusters']``: CellVGAE's HDBSCAN
  choice, AttentionAE-sc's DEC clusters, scVGAE's Leiden on the imputed matrix); labels are read only to score;
* in the same process, scanpy's PCA (50) -> kNN (15) -> Leiden at resolutions 0.5 and 1.0 on the same cells and
  the genes the model's recipe chose (log-normalised, unscaled; :func:`scgraph_core.cluster.scanpy_baseline`).

ARI, NMI, cluster count, noise, wall seconds and peak memory per run. The count models (scVGAE, AttentionAE-sc)
are skipped on sets without raw counts (pbmc3k_seurat250 holds log-normalised values).

Resumable: each finished run is one JSON line in ``--jsonl`` (default ``benchmarks/results/suite.jsonl``); a
rerun skips the (dataset, model, seed, tag) already there, so the suite can be stopped and resumed.
``--jobs N`` runs N processes at once (on a many-core machine; timings are then per-process, not exclusive).
At the end ``--out`` (``suite.json``) gathers every line and the README table is printed.

    python benchmarks/bench_suite.py                                   # everything (hours on 2 cores)
    python benchmarks/bench_suite.py --models cellvgae --seeds 0 --datasets paul15
    python benchmarks/bench_suite.py --table                           # print the table of what is done
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = (
    "pbmc3k_seurat250",
    "paul15",
    "scvgae_sample",
    "pbmc4k_top2000",
    "human_kidney_top2000",
    "mouse_bladder_top2000",
    "worm_neuron",
)
MODELS = ("cellvgae", "attentionae", "scvgae", "scgnn")
TITLES = {"cellvgae": "CellVGAE", "attentionae": "AttentionAE-sc", "scvgae": "scVGAE", "scgnn": "scGNN"}
LABEL = "celltype"
RESULTS = REPO / "benchmarks" / "results"


def single(name: str, model: str, seed: int, overrides: dict) -> dict:
    """One run in this process: the model's paper preset, its label-free clusters, scanpy on its genes."""
    import anndata as ad
    import numpy as np

    from scgraph_core import cluster, data, metrics, pipeline
    from scgraph_core.models import base

    started = time.perf_counter()
    adata = ad.read_h5ad(DATA / f"{name}.h5ad")
    row: dict = {"dataset": name, "model": model, "seed": seed, "n_cells": int(adata.n_obs)}
    has_counts = data.detect_x_kind(adata.X) == "counts" or "counts" in adata.layers
    if base.get(model).requires_counts and not has_counts:
        return {
            **row,
            "skipped": f"{model} needs raw counts; {name} holds {data.detect_x_kind(adata.X)} values",
        }
    preset = os.environ.get("SCGRAPH_SUITE_PRESET", "paper")
    row["preset"] = preset
    config = pipeline.resolve_config(
        model, preset, {**overrides, "train": {**overrides.get("train", {}), "seed": seed}}, label_key=LABEL
    )
    out, result = pipeline.execute(adata, config)
    seconds = time.perf_counter() - started
    views = out.uns["scgraph"]["views"]
    truth = out.obs[LABEL].to_numpy()
    pred = out.obs[views["clusters"]].astype(str).to_numpy()
    scores = metrics.clustering_metrics(truth, pred, noise_label="noise")
    row.update(
        {
            "ari": scores["ari"],
            "nmi": scores["nmi"],
            "n_clusters": scores["n_clusters"],
            "noise": scores["noise"],
            "n_types": len(set(truth.astype(str))),
            "clusters_key": views["clusters"],
            "seconds_total": seconds,
            "seconds_model": result.metrics.get("seconds_total"),
            "device": result.metrics.get("device"),
            "peak_memory_mb": result.metrics.get("peak_memory_mb"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "n_features": result.metrics.get("n_features"),
        }
    )
    save = os.environ.get("SCGRAPH_SUITE_SAVE")
    if save:  # the embedding, for studying cluster choices without training again
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            f"{save}_{name}_{model}_{seed}.npz",
            embedding=out.obsm[views["embedding"]].astype(np.float32),
            truth=truth.astype(str),
            clusters=pred,
            umap=np.asarray(out.obsm["X_umap"], dtype=np.float32)
            if "X_umap" in out.obsm
            else np.zeros((0, 2)),
        )
    # scanpy on the same cells and the genes the model's recipe chose, log-normalised and unscaled.
    genes = _model_genes(out, model)
    cols = out.var_names.get_indexer(genes)
    lognorm = out.layers.get("lognorm", out.X)
    matrix = lognorm[:, cols] if (cols >= 0).all() else lognorm
    row["n_genes_scanpy"] = int(matrix.shape[1])
    for resolution in (0.5, 1.0):
        t0 = time.perf_counter()
        labels = cluster.scanpy_baseline(matrix, counts=False, resolution=resolution, seed=seed)
        s = metrics.clustering_metrics(truth, np.asarray(labels))
        row[f"scanpy_r{resolution}"] = {
            "ari": s["ari"],
            "nmi": s["nmi"],
            "n_clusters": s["n_clusters"],
            "seconds": time.perf_counter() - t0,
        }
    if (
        model == "attentionae"
    ):  # whether DEC ran again (--dec-guard, --dec-merge-restart), its start and folds
        row["dec_restart"] = result.metrics.get("dec_restart")
        row["dec_folded_clusters"] = result.metrics.get("dec_folded_clusters")
        row["leiden_init"] = result.metrics.get("leiden_init")  # the start DEC refines
    if model == "scgnn":  # MODELS.md 3.7: k-means on PCA-50 with scGNN's own cluster count
        from sklearn.decomposition import PCA

        dense = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
        n_pcs = max(1, min(50, min(dense.shape) - 1))
        pcs = PCA(n_components=n_pcs, random_state=seed).fit_transform(dense)
        k = max(2, int(scores["n_clusters"]))
        s = metrics.clustering_metrics(truth, cluster.kmeans(pcs, k, seed=seed))
        row["kmeans_pca50_same_k"] = {"ari": s["ari"], "nmi": s["nmi"], "n_clusters": s["n_clusters"]}
        row["rounds"] = result.metrics.get("rounds")
        row["converged"] = result.metrics.get("converged")
    return row


def _model_genes(out, model: str) -> list[str]:
    uns = out.uns.get(model, {})
    for key in ("feature_genes", "model_genes"):
        if key in uns:
            return [str(g) for g in uns[key]]
    if "scgraph_feature" in out.var:
        return list(out.var_names[out.var["scgraph_feature"].astype(bool)])
    return list(out.var_names)


def _key(row: dict) -> tuple:
    return (row["dataset"], row["model"], int(row["seed"]), row.get("tag", ""))


def _done(jsonl: Path) -> list[dict]:
    if not jsonl.exists():
        return []
    rows = []
    for line in jsonl.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line torn by an interrupted write: that run is simply redone
    return rows


def _run_child(
    name: str,
    model: str,
    seed: int,
    overrides: dict,
    threads: int,
    timeout: float,
    save: str = "",
    preset: str = "paper",
) -> dict:
    cmd = [sys.executable, __file__, "--single", name, model, str(seed), json.dumps(overrides)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SCGRAPH_SUITE_PRESET": preset}
    if save:
        env["SCGRAPH_SUITE_SAVE"] = save
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            "dataset": name,
            "model": model,
            "seed": seed,
            "error": f"did not finish within {timeout:.0f} s",
        }
    if proc.returncode != 0:
        return {"dataset": name, "model": model, "seed": seed, "error": proc.stderr.strip()[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mean_range(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _merged(spec: str) -> list[dict]:
    """Rows of FILE[:TAG[:SET+SET]],... as one untagged variant; a (dataset, model, seed) seen is skipped."""
    seen, out = set(), []
    for item in spec.split(","):
        path, tag, only = ([*item.split(":"), "", ""])[:3]
        for r in _done(Path(path)):
            if r.get("tag", "") != tag or "error" in r or "skipped" in r:
                continue
            if only and r["dataset"] not in only.split("+"):
                continue
            key = (r["dataset"], r["model"], int(r["seed"]))
            if key not in seen:
                seen.add(key)
                out.append({**r, "tag": "", "source": item})
    return out


def table(rows: list[dict], tag: str = "") -> str:
    """Rows = datasets, columns = methods: mean ARI over seeds with the seed range, median clusters."""
    rows = [r for r in rows if r.get("tag", "") == tag and "error" not in r and "skipped" not in r]
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    head = ["dataset", "types"] + [TITLES[m] for m in models] + ["scanpy r0.5", "scanpy r1.0"]
    if "scgnn" in models:
        head.append("k-means PCA-50, scGNN's k")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for name in DATASETS:
        mine = [r for r in rows if r["dataset"] == name]
        if not mine:
            continue
        cells = [name, str(mine[0]["n_types"])]
        for m in models:
            rs = [r for r in mine if r["model"] == m]
            if not rs:
                cells.append("n/a" if m != "cellvgae" else "")
                continue
            clusters = statistics.median(r["n_clusters"] for r in rs)
            cells.append(f"{_mean_range([r['ari'] for r in rs])} [{clusters:g}]")
        # scanpy's baseline from the CellVGAE runs (its recipe's genes), else from any model's runs.
        base_rows = [r for r in mine if r["model"] == "cellvgae"] or mine
        for res in ("0.5", "1.0"):
            vals = [r[f"scanpy_r{res}"]["ari"] for r in base_rows]
            clusters = statistics.median(r[f"scanpy_r{res}"]["n_clusters"] for r in base_rows)
            cells.append(f"{_mean_range(vals)} [{clusters:g}]")
        if "scgnn" in models:
            rs = [r for r in mine if r["model"] == "scgnn" and "kmeans_pca50_same_k" in r]
            vals = [r["kmeans_pca50_same_k"]["ari"] for r in rs]
            cells.append(_mean_range(vals) if vals else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(rows: list[dict], tag: str = "") -> str:
    rows = [r for r in rows if r.get("tag", "") == tag and "error" not in r and "skipped" not in r]
    lines = [
        "| dataset | model | device | wall s (median) | peak RSS GB (max) |",
        "|---|---|---|---:|---:|",
    ]
    for name in DATASETS:
        for m in MODELS:
            rs = [r for r in rows if r["dataset"] == name and r["model"] == m]
            if rs:
                wall = statistics.median(r["seconds_total"] for r in rs)
                rss = max(r["peak_rss_mb"] for r in rs) / 1024
                lines.append(f"| {name} | {TITLES[m]} | {rs[0]['device']} | {wall:.0f} | {rss:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--set", default="{}", help='JSON overrides by section, e.g. \'{"graph": {"k": 10}}\''
    )
    parser.add_argument("--tag", default="", help="names a variant (--set) so its runs are kept apart")
    parser.add_argument(
        "--merge",
        default="",
        help="with --table: FILE[:TAG[:SET+SET...]],... rows of one variant measured in several files (only "
        "the sets named, if any; the first file's row wins for a dataset, model and seed), e.g. seeds run on "
        "different machines",
    )
    parser.add_argument("--preset", default="paper", help="the models' preset (give a --tag for any other)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (1 on a 2-core machine)")
    parser.add_argument("--threads", type=int, default=0, help="threads per run (0: the engine's default)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a run is abandoned")
    parser.add_argument("--jsonl", default=str(RESULTS / "suite.jsonl"))
    parser.add_argument("--out", default=str(RESULTS / "suite.json"))
    parser.add_argument("--table", action="store_true", help="only print the tables of the runs done")
    parser.add_argument("--save", default="", help="folder for each run's embedding and clusters (.npz)")
    parser.add_argument("--single", nargs=4, metavar=("NAME", "MODEL", "SEED", "SET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        name, model, seed, overrides = args.single
        print(json.dumps(single(name, model, int(seed), json.loads(overrides))))
        return
    jsonl = Path(args.jsonl)
    if args.table:
        rows = _done(jsonl) if not args.merge else _merged(args.merge)
        print(table(rows, "" if args.merge else args.tag))
        print()
        print(cost_table(rows, args.tag))
        return
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data beside the repository.")
    overrides = json.loads(args.set)
    done = {_key(r) for r in _done(jsonl) if "error" not in r}
    todo = [
        (name, model, int(seed))
        for seed in args.seeds.split(",")
        for name in args.datasets.split(",")
        for model in args.models.split(",")
        if (name, model, int(seed), args.tag) not in done
    ]
    print(f"{len(todo)} runs to do, {len(done)} done already", file=sys.stderr)
    jsonl.parent.mkdir(parents=True, exist_ok=True)

    def one(job: tuple[str, str, int]) -> None:
        name, model, seed = job
        save = str(Path(args.save) / (args.tag or "default")) if args.save else ""
        row = _run_child(name, model, seed, overrides, args.threads, args.timeout, save, args.preset)
        row.update(tag=args.tag, overrides=overrides, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        line = json.dumps(row) + "\n"
        with open(jsonl, "a", encoding="utf-8") as fh:  # one write per run: a line is whole or absent
            fh.write(line)
        brief = (
            row.get("error") or row.get("skipped") or f"ARI {row['ari']:.3f}, {row['n_clusters']} clusters"
        )
        print(f"{name} {model} seed {seed}: {brief}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, todo))

    import torch

    rows = _done(jsonl)
    summary = {
        "benchmark": "dataset_suite",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "jobs": args.jobs,
            "threads": args.threads,
        },
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(table(rows, args.tag))
    print()
    print(cost_table(rows, args.tag))
    for r in rows:
        if "error" in r and r.get("tag", "") == args.tag:
            print(f"failed: {r['dataset']} {r['model']} seed {r['seed']}: {r['error'][-300:]}")


if __name__ == "__main__":
    main()
