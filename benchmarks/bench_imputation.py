"""Imputation benchmark: scVGAE against three baselines on hidden non-zero counts (issue 5, MODELS.md 4.7).

Protocol, per dataset (raw-count files in ``../shared/data``):

1. Hide 10 % of the non-zero entries of the raw count matrix (``data.mask_nonzero``, fixed ``--mask-seed``):
   they become 0 in the input every method sees.
2. Every method returns a value for each hidden entry; errors are measured on the **log1p CP10k scale**:
   ``L(v)_ij = log1p(v · 10⁴ / T_i)`` with ``T_i`` the total count of cell i in the *masked* input (the
   library size a method can see). The truth is ``L(x_ij)`` of the hidden count; a method that returns
   counts is scored as ``L(ŷ_ij)``; a method that works in log space returns its value directly.
3. Scores (``metrics.imputation_errors``): median absolute error, RMSE and cosine similarity between the
   truth and imputed vectors of the hidden entries.

Methods, each in its own fresh process (so ``peak_rss_mb``, ``ru_maxrss`` of that process, data and
imports included, is its own):

* ``none``           no imputation: the hidden entries stay 0 (``L = 0``).
* ``gene_mean``      per-gene mean of ``L(masked)`` over all cells (zeros included).
* ``gene_mean_nz``   (extra, stronger) per-gene mean of ``L(masked)`` over the cells where the gene is non-zero.
* ``knn``            k-nearest-neighbour average: the mean of ``L(masked)`` over each cell's k nearest other
                     cells (Euclidean on the first 50 PCs of ``L(masked)``); k = ``--knn-k``.
* ``scvgae``         the engine's scVGAE, ``paper`` (fixed) preset, through ``pipeline.execute``; its
                     ``layers['imputed']`` (expected counts, input order) is scored as ``L(ŷ)``.
* ``scvgae_legacy``  the ``legacy`` preset (the published code's MSE-only training, decoder output).
* ``scgnn``, ``scgnn_quick``  the engine's scGNN, ``paper`` or ``quick`` preset; ``layers['imputed']``
                     (expected counts) scored as ``L(ŷ)``. It models the 2,000 genes of largest count variance
                     and returns the observed value (here 0) elsewhere; ``modelled_only`` scores its genes alone.

For the scVGAE rows the script also reports k-means ARI (k = number of labels, 10 restarts) on the first
50 PCs of log1p CP10k of the imputed counts (normalised by their own totals, like raw counts) against the
same on the masked input (MODELS.md 4.7: ARI on X̂ should be at least ARI on X − 0.02).

Settings were chosen on ``scvgae_sample`` with ``--mask-seed 1`` (``--tag tuning``); the reported table uses
``--mask-seed 0`` on all three datasets.

    python benchmarks/bench_imputation.py                       # all datasets, about 15 min on 2 cores
    python benchmarks/bench_imputation.py --datasets scvgae_sample --mask-seed 1 --tag tuning \\
        --model '{"epochs": 200}' --knn-k 5,10,15,30
Writes ``benchmarks/results/imputation.json`` (or ``imputation_<tag>.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = ("scvgae_sample", "paul15", "pbmc4k_top2000")
TARGET_SUM = 1e4


def problem(dataset: str, fraction: float, seed: int):
    """(AnnData of the masked counts with labels, hidden rows, cols, true counts, masked totals T)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from scgraph_core import data

    real = ad.read_h5ad(SHARED / f"{dataset}.h5ad")
    counts = sp.csr_matrix(real.X, dtype=np.float32)
    masked, rows, cols, values = data.mask_nonzero(counts, fraction=fraction, seed=seed)
    adata = ad.AnnData(X=masked, obs=real.obs[["celltype"]].copy(), var=real.var[[]].copy())
    totals = np.asarray(masked.sum(axis=1)).ravel().astype(np.float64)
    return adata, rows, cols, values, totals


def log_cp10k(values, totals):
    """L(v) = log1p(v · 10⁴ / T) for counts ``v`` of cells with masked totals ``T`` (same shape)."""
    import numpy as np

    factor = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    return np.log1p(np.asarray(values, dtype=np.float64) * factor)


def log_matrix(masked, totals):
    """Dense L(masked), float32 [N, G]."""
    import numpy as np

    factor = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    dense = masked.toarray().astype(np.float32)
    return np.log1p(dense * factor[:, None].astype(np.float32))


def kmeans_ari(counts, labels, seed: int = 0) -> float:
    from sklearn.metrics import adjusted_rand_score

    from scgraph_core import cluster
    from scgraph_core.models.scvgae import lognorm_pcs

    codes = labels.astype("category").cat.codes.to_numpy()
    pcs = lognorm_pcs(counts, n_pcs=50, seed=seed)
    pred = cluster.kmeans(pcs, int(codes.max()) + 1, seed=seed, n_init=10)
    return float(adjusted_rand_score(codes, pred))


def same_type_fraction(adata, config) -> float:
    """Share of the model's graph edges that join two cells of the same labelled type (a diagnostic;
    the labels play no part in building the graph)."""
    from scgraph_core import data
    from scgraph_core.models import scvgae

    prepared = data.prepare(adata, config.prepare)
    graph = scvgae.build_graph(scvgae.model_inputs(prepared).x, config.graph, config.params)
    labels = prepared.adata.obs["celltype"].to_numpy()
    src, dst = graph.edge_index
    return float((labels[src] == labels[dst]).mean())


def single(
    dataset: str, method: str, fraction: float, seed: int, knn_k: int, model: dict, graph: dict | None = None
) -> dict:
    """Run one method on one dataset in this process and return its scores."""
    import numpy as np

    from scgraph_core import metrics

    adata, rows, cols, values, totals = problem(dataset, fraction, seed)
    truth = log_cp10k(values, totals[rows])
    extra: dict = {}
    elapsed = None  # seconds of the imputation itself (scVGAE: without the ARI scoring below)
    start = time.perf_counter()
    if method == "none":
        pred = np.zeros_like(truth)
    elif method in ("gene_mean", "gene_mean_nz"):
        L = log_matrix(adata.X, totals)
        if method == "gene_mean":
            means = L.mean(axis=0, dtype=np.float64)
        else:
            nz = (L > 0).sum(axis=0)
            means = np.divide(L.sum(axis=0, dtype=np.float64), nz, out=np.zeros(L.shape[1]), where=nz > 0)
        pred = means[cols]
    elif method == "knn":
        from sklearn.decomposition import PCA
        from sklearn.neighbors import NearestNeighbors

        L = log_matrix(adata.X, totals)
        pcs = PCA(n_components=50, svd_solver="randomized", random_state=0).fit_transform(L)
        _, idx = NearestNeighbors(n_neighbors=knn_k + 1).fit(pcs).kneighbors(pcs)
        neighbours = idx[:, 1:]  # the cell itself comes first
        pred = L[neighbours[rows], cols[:, None]].mean(axis=1, dtype=np.float64)
        extra["k"] = knn_k
    elif method in ("scvgae", "scvgae_legacy"):
        from scgraph_core import pipeline

        preset = "paper" if method == "scvgae" else "legacy"
        overrides = {"model": {**model, "keep_dropout": True}} if method == "scvgae" else {}
        overrides["train"] = {"seed": 0}
        if graph and method == "scvgae":
            overrides["graph"] = graph
        config = pipeline.resolve_config("scvgae", preset, overrides, label_key="celltype")
        out, result = pipeline.execute(adata, config)
        imputed = out.layers["imputed"]
        assert out.obs_names.equals(adata.obs_names) and out.var_names.equals(adata.var_names)
        pred = log_cp10k(imputed[rows, cols], totals[rows])
        if "scvgae_dropout" in out.layers:
            # The ZINB mean (1 - Π)·s·M of the same model, for comparison with the NB mean it writes.
            zinb_mean = (1.0 - out.layers["scvgae_dropout"][rows, cols]) * imputed[rows, cols]
            extra["zinb_mean_output"] = metrics.imputation_errors(truth, log_cp10k(zinb_mean, totals[rows]))
        m = result.metrics
        extra.update(
            preset=preset,
            model_params={k: v for k, v in config.to_dict()["model_params"].items()},
            seconds_per_epoch=m["seconds_per_epoch"],
            epochs=m["epochs_run"],
            precision=m["precision"],
            graph={k: m["graph"][k] for k in ("n_edges", "mean_degree", "n_components", "n_isolated")},
            graph_deviations=m["graph_deviations"],
            best_epoch=m["best_epoch"],
            val_log_error=m["val_log_error"],
            leiden_ari=m.get("ari"),
            final_losses=m["final_losses"],
        )
        elapsed = time.perf_counter() - start
        extra["graph_same_type_fraction"] = same_type_fraction(adata, config)
        extra["kmeans_ari_imputed"] = kmeans_ari(np.asarray(imputed), adata.obs["celltype"])
        extra["kmeans_ari_input"] = kmeans_ari(adata.X.toarray(), adata.obs["celltype"])
    elif method in ("scgnn", "scgnn_quick"):
        from scgraph_core import pipeline

        preset = "paper" if method == "scgnn" else "quick"
        config = pipeline.resolve_config("scgnn", preset, {"train": {"seed": 0}}, label_key="celltype")
        out, result = pipeline.execute(adata, config)
        assert out.obs_names.equals(adata.obs_names) and out.var_names.equals(adata.var_names)
        imputed = np.asarray(out.layers["imputed"])
        pred = log_cp10k(imputed[rows, cols], totals[rows])
        elapsed = time.perf_counter() - start
        # scGNN models its 2,000 genes of largest count variance; elsewhere it returns the observed value (0 here).
        modelled = out.var["scgnn_modelled"].to_numpy(dtype=bool)[cols]
        m = result.metrics
        extra.update(
            preset=preset,
            modelled_share=float(modelled.mean()),
            modelled_only=metrics.imputation_errors(truth[modelled], pred[modelled]),
            rounds=m.get("rounds"),
            converged=m.get("converged"),
            clusters_ari=m.get("ari"),
            n_clusters=m.get("n_clusters"),
        )
        extra["kmeans_ari_imputed"] = kmeans_ari(imputed, adata.obs["celltype"])
        extra["kmeans_ari_input"] = kmeans_ari(adata.X.toarray(), adata.obs["celltype"])
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = elapsed if elapsed is not None else time.perf_counter() - start
    scores = metrics.imputation_errors(truth, pred)
    return {
        "dataset": dataset,
        "method": method,
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_hidden": len(truth),
        "mask_seed": seed,
        **scores,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


def machine() -> dict:
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": os.getloadavg(),
        "note": "2-core machine shared with other engineers: timings are indicative",
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def beats(row: dict, base: dict) -> list[str]:
    """The measures on which ``row`` is better than ``base``."""
    won = []
    if row["median_l1"] < base["median_l1"]:
        won.append("median_l1")
    if row["rmse"] < base["rmse"]:
        won.append("rmse")
    if (row["cosine"] or 0.0) > (base["cosine"] or 0.0):
        won.append("cosine")
    return won


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default="none,gene_mean,gene_mean_nz,knn,scvgae,scvgae_legacy")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of non-zeros hidden")
    parser.add_argument("--mask-seed", type=int, default=0)
    parser.add_argument("--knn-k", default="10", help="k of the kNN baseline (a list runs each)")
    parser.add_argument("--model", default="{}", help="JSON overrides of scVGAE's model parameters")
    parser.add_argument("--graph", default="{}", help="JSON overrides of scVGAE's graph parameters")
    parser.add_argument("--tag", default="", help="results go to imputation_<tag>.json")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--jsonl", default=None, help="resumable: one line per finished run; runs already there are skipped"
    )
    parser.add_argument("--single", nargs=2, metavar=("DATASET", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model, graph = json.loads(args.model), json.loads(args.graph)
    if args.single:
        ds, method = args.single
        k = int(args.knn_k.split(",")[0])
        print(json.dumps(single(ds, method, args.fraction, args.mask_seed, k, model, graph)))
        return
    missing = [d for d in args.datasets.split(",") if not (SHARED / f"{d}.h5ad").exists()]
    if missing:
        sys.exit(f"{', '.join(missing)} absent from {SHARED}: this benchmark needs ../shared/data.")
    info = machine()
    rows = []
    jsonl = Path(args.jsonl) if args.jsonl else None
    done: dict[tuple, dict] = {}
    if jsonl is not None and jsonl.exists():
        for line in jsonl.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn line: that run is redone
            if "error" not in r:
                done[(r["dataset"], r["method"], str(r.get("k", "")), r.get("mask_seed"))] = r
    for ds in args.datasets.split(","):
        for method in args.methods.split(","):
            for k in args.knn_k.split(",") if method == "knn" else [args.knn_k.split(",")[0]]:
                key = (ds, method, k if method == "knn" else "", args.mask_seed)
                if key in done:
                    rows.append(done[key])
                    continue
                cmd = [sys.executable, __file__, "--single", ds, method, "--fraction", str(args.fraction)]
                cmd += ["--mask-seed", str(args.mask_seed), "--knn-k", k, "--model", args.model]
                cmd += ["--graph", args.graph]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
                )
                if proc.returncode != 0:
                    row = {"dataset": ds, "method": method, "error": proc.stderr.strip()[-800:]}
                else:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                if jsonl is not None:
                    jsonl.parent.mkdir(parents=True, exist_ok=True)
                    with open(jsonl, "a", encoding="utf-8") as fh:  # one write per run
                        fh.write(json.dumps(row) + "\n")
    for row in rows:
        if row.get("method") not in ("scvgae", "scgnn", "scgnn_quick") or "error" in row:
            continue
        same = [r for r in rows if r["dataset"] == row["dataset"] and "error" not in r]
        row["beats"] = {
            r["method"] + (f"_k{r['k']}" if "k" in r else ""): beats(row, r)
            for r in same
            if r["method"] in ("none", "gene_mean", "knn")
        }
        row["beats_all_three_on_two_measures"] = all(len(v) >= 2 for v in row["beats"].values())
    name = f"imputation_{args.tag}.json" if args.tag else "imputation.json"
    out_path = Path(args.out) if args.out else REPO / "benchmarks" / "results" / name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "imputation_hidden_nonzeros",
        "scale": "log1p(count * 1e4 / T_i), T_i = total count of cell i in the masked input",
        "fraction_hidden": args.fraction,
        "mask_seed": args.mask_seed,
        "model_overrides": model,
        "graph_overrides": graph,
        "machine": info,
        "rows": rows,
    }
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nmask seed {args.mask_seed}, {args.fraction:.0%} of non-zeros hidden; errors on log1p CP10k\n")
    print(
        "| dataset | method | median L1 | RMSE | cosine | k-means ARI (imputed / input) | seconds | peak memory |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['dataset']} | {r['method']} | failed | | | | | |")
            continue
        name = r["method"] + (f" (k={r['k']})" if "k" in r else "")
        ari = (
            f"{r['kmeans_ari_imputed']:.3f} / {r['kmeans_ari_input']:.3f}"
            if "kmeans_ari_imputed" in r
            else ""
        )
        print(
            f"| {r['dataset']} | {name} | {r['median_l1']:.3f} | {r['rmse']:.3f} | {_fmt(r['cosine'])} | {ari} | "
            f"{r['seconds']:.1f} | {r['peak_rss_mb'] / 1024:.2f} GB |"
        )


if __name__ == "__main__":
    main()
