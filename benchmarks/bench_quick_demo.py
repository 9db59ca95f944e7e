"""CellVGAE's ``quick`` preset on the built-in demo (and two check sets) against scanpy's Leiden (issue #21).

For every set and seed, each in its own fresh process:

* ``engine``: the quick preset through the engine (``pipeline.execute``, what ``python -m scgraph_core train
  --preset quick`` runs), scored on its label-free clusters; ``--set`` / ``--tag`` try a variant of the preset;
* ``scanpy``: the reference recipe on the same cells, all genes of the loaded ``X`` (log-normalised; counts are
  normalised to 10,000 and log1p-transformed first): ``sc.pp.pca`` (50) -> ``sc.pp.neighbors`` (15) ->
  ``sc.tl.leiden`` (igraph) at resolutions 0.5 and 1.0, and ``sc.tl.umap`` for the shape of its drawing.

Both score ARI / NMI / clusters against the set's labels and describe the drawn 2-D UMAP: ``flat`` is the median
over cells of lambda2 / lambda1 of the covariance of each cell's 15 nearest UMAP neighbours (about 0.5 and more
in a blob, near 0 on a string), ``strings`` the share of cells whose ratio is below 0.1, ``trust`` sklearn's
trustworthiness of the UMAP against 50 PCs of the log-normalised genes (15 neighbours). ``run s`` in the table
is the median seconds of the run itself (engine: preparation to clusters and interpretation, data loaded and
packages imported; scanpy: PCA to Leiden); each row's ``wall`` also counts the process start and the scoring.

Resumable: each finished run is one JSON line in ``--jsonl`` (default ``benchmarks/results/quick_demo.jsonl``); a
rerun skips the (set, method, seed, tag) already there. ``--plots DIR`` also draws each UMAP, coloured by the
labels, to ``DIR/<set>_<method>_<tag>_<seed>.png``.

    python benchmarks/bench_quick_demo.py                                  # demo seeds 0-2, check sets seeds 0-1
    python benchmarks/bench_quick_demo.py --sets demo --seeds 0 --tag k10 --set '{"graph": {"k": 10}}'
    python benchmarks/bench_quick_demo.py --table                          # print the table of what is done
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import DATA, _done, _mean_range  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# set -> label key; the demo is read with data.load_demo(), the others from ../shared/data.
SETS = {"demo": "bulk_labels", "pbmc3k_seurat250": "celltype", "scvgae_sample": "celltype"}
DEMO_SEEDS = "0,1,2"
CHECK_SEEDS = "0,1"
RESOLUTIONS = (0.5, 1.0)


def _load(name: str):
    import anndata as ad

    from scgraph_core import data

    if name == "demo":
        return data.load_demo()
    return ad.read_h5ad(DATA / f"{name}.h5ad")


def _lognorm_pcs(adata, seed: int):
    """50 PCs of the log-normalised genes (all of them) of ``adata``, and that matrix as an AnnData."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    from scgraph_core import data
    from scgraph_core.data.io import as_float32

    work = ad.AnnData(X=as_float32(adata.X), obs=adata.obs[[]].copy())
    if data.detect_x_kind(work.X) == "counts":
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    n_comps = min(50, work.n_obs - 1, work.n_vars - 1)
    sc.pp.pca(work, n_comps=n_comps, random_state=seed)
    return np.asarray(work.obsm["X_pca"], dtype=np.float32), work


def layout_shape(xy, reference, k: int = 15) -> dict:
    """How a 2-D layout looks: local flatness (strings are near 0), share of string cells, trustworthiness."""
    import numpy as np
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    xy = np.asarray(xy, dtype=np.float64)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(return_distance=False)
    local = xy[idx] - xy[idx].mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", local, local) / k
    ev = np.linalg.eigvalsh(cov)  # ascending: lambda2 <= lambda1
    ratio = ev[:, 0] / np.maximum(ev[:, 1], 1e-12)
    return {
        "flat": float(np.median(ratio)),
        "strings": float(np.mean(ratio < 0.1)),
        "trust": float(trustworthiness(reference, xy, n_neighbors=k)),
    }


def _plot(path: str, xy, labels, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    cats = pd.Categorical(labels.astype(str))
    fig, ax = plt.subplots(figsize=(6, 5), dpi=90)
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(cats.categories):
        m = np.asarray(cats.codes == i)
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(i % 20), label=name, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def single_engine(name: str, seed: int, overrides: dict, plots: str, tag: str) -> dict:
    """One run of the quick preset in this process."""
    from scgraph_core import metrics, pipeline

    label = SETS[name]
    adata = _load(name)
    started = time.perf_counter()
    config = pipeline.resolve_config(
        "cellvgae",
        "quick",
        {**overrides, "train": {**overrides.get("train", {}), "seed": seed}},
        label_key=label,
    )
    out, result = pipeline.execute(adata, config)
    seconds = time.perf_counter() - started
    views = out.uns["scgraph"]["views"]
    truth = out.obs[label].astype(str).to_numpy()
    pred = out.obs[views["clusters"]].astype(str).to_numpy()
    scores = metrics.clustering_metrics(truth, pred, noise_label="noise")
    reference, _ = _lognorm_pcs(adata[out.obs_names], 0)
    xy = out.obsm[views["umap"]]
    if plots:
        _plot(
            f"{plots}/{name}_engine_{tag or 'default'}_{seed}.png",
            xy,
            truth,
            f"{name} quick {tag or 'default'} seed {seed}: ARI {scores['ari']:.2f}",
        )
    return {
        "ari": scores["ari"],
        "nmi": scores["nmi"],
        "n_clusters": scores["n_clusters"],
        "noise": scores["noise"],
        "seconds": seconds,
        "seconds_per_epoch": result.metrics.get("seconds_per_epoch"),
        "n_cells": int(out.n_obs),
        **layout_shape(xy, reference),
    }


def single_scanpy(name: str, seed: int, plots: str) -> dict:
    """scanpy's PCA -> neighbours -> Leiden (two resolutions) and its UMAP, in this process."""
    import numpy as np
    import scanpy as sc

    from scgraph_core import metrics

    label = SETS[name]
    adata = _load(name)
    started = time.perf_counter()
    reference, work = _lognorm_pcs(adata, seed)
    sc.pp.neighbors(work, n_neighbors=15, use_rep="X_pca", random_state=seed)
    truth = adata.obs[label].astype(str).to_numpy()
    row: dict = {"n_cells": int(adata.n_obs)}
    for resolution in RESOLUTIONS:
        key = f"leiden_{resolution}"
        sc.tl.leiden(
            work,
            resolution=resolution,
            random_state=seed,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            key_added=key,
        )
        s = metrics.clustering_metrics(truth, work.obs[key].astype(str).to_numpy())
        row[f"r{resolution}"] = {"ari": s["ari"], "nmi": s["nmi"], "n_clusters": s["n_clusters"]}
    row["seconds"] = time.perf_counter() - started
    sc.tl.umap(work, random_state=seed)
    xy = np.asarray(work.obsm["X_umap"])
    if plots:
        _plot(f"{plots}/{name}_scanpy_{seed}.png", xy, truth, f"{name} scanpy seed {seed}")
    row.update(layout_shape(xy, reference))
    return row


def _key(row: dict) -> tuple:
    return (row["set"], row["method"], int(row["seed"]), row.get("tag", ""))


def _run_child(job: tuple, overrides: dict, plots: str, tag: str, timeout: float) -> dict:
    name, method, seed = job
    cmd = [sys.executable, __file__, "--single", name, method, str(seed), json.dumps(overrides)]
    cmd += ["--plots", plots, "--tag", tag]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.setdefault("OMP_NUM_THREADS", "1")
    head = {"set": name, "method": method, "seed": seed}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**head, "error": f"did not finish within {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**head, "error": proc.stderr.strip()[-800:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**head, **row, "wall": time.perf_counter() - t0, "commit": _commit()}  # wall: imports included


def _commit() -> str:
    """The checkout's commit, with ``+`` when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "scgraph_core"], cwd=REPO, capture_output=True, text=True
        )
        return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")
    except OSError:
        return ""


def _fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f}"


def table(rows: list[dict], tags: list[str] | None = None) -> str:
    """One line per set and method (engine variants by tag, scanpy per resolution): mean ARI with the range."""
    rows = [r for r in rows if "error" not in r]
    head = [
        "set",
        "method",
        "seeds",
        "ARI mean (range)",
        "NMI",
        "clusters",
        "flat",
        "strings",
        "trust",
        "run s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    all_tags = sorted({r.get("tag", "") for r in rows if r["method"] == "engine"}, key=lambda t: (t != "", t))
    for name in SETS:
        mine = [r for r in rows if r["set"] == name]
        for tag in tags if tags is not None else all_tags:
            rs = sorted((r for r in mine if r["method"] == "engine" and r.get("tag", "") == tag), key=_key)
            if not rs:
                continue
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        f"quick {tag or '(current)'}",
                        ",".join(str(r["seed"]) for r in rs),
                        _mean_range([r["ari"] for r in rs]),
                        _fmt([r["nmi"] for r in rs]),
                        "/".join(str(r["n_clusters"]) for r in rs),
                        _fmt([r["flat"] for r in rs]),
                        _fmt([r["strings"] for r in rs]),
                        _fmt([r["trust"] for r in rs]),
                        f"{statistics.median(r['seconds'] for r in rs):.0f}",
                    ]
                )
                + " |"
            )
        rs = sorted((r for r in mine if r["method"] == "scanpy"), key=_key)
        for res in RESOLUTIONS:
            if not rs:
                break
            part = [r[f"r{res}"] for r in rs]
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        f"scanpy Leiden r{res}",
                        ",".join(str(r["seed"]) for r in rs),
                        _mean_range([p["ari"] for p in part]),
                        _fmt([p["nmi"] for p in part]),
                        "/".join(str(p["n_clusters"]) for p in part),
                        _fmt([r["flat"] for r in rs]),
                        _fmt([r["strings"] for r in rs]),
                        _fmt([r["trust"] for r in rs]),
                        f"{statistics.median(r['seconds'] for r in rs):.0f}",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    parser.add_argument(
        "--seeds", default="", help=f"default: {DEMO_SEEDS} on the demo, {CHECK_SEEDS} elsewhere"
    )
    parser.add_argument("--methods", default="engine,scanpy")
    parser.add_argument(
        "--set", default="{}", help='JSON overrides of the quick preset, e.g. \'{"graph": {"k": 10}}\''
    )
    parser.add_argument("--tag", default="", help="names a variant (--set) so its runs are kept apart")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run is abandoned")
    parser.add_argument("--jsonl", default=str(RESULTS / "quick_demo.jsonl"))
    parser.add_argument("--plots", default="", help="folder for a PNG of each run's UMAP")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs done")
    parser.add_argument(
        "--tags", default=None, help="with --table: comma-separated tags to show ('' = current)"
    )
    parser.add_argument(
        "--single", nargs=4, metavar=("SET", "METHOD", "SEED", "OVERRIDES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.single:
        name, method, seed, overrides = args.single
        if method == "engine":
            row = single_engine(name, int(seed), json.loads(overrides), args.plots, args.tag)
        else:
            row = single_scanpy(name, int(seed), args.plots)
        print(json.dumps(row))
        return
    jsonl = Path(args.jsonl)
    if args.table:
        tags = None if args.tags is None else args.tags.split(",")
        print(table(_done(jsonl), tags))
        return
    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        sys.exit(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    if any(n != "demo" for n in names) and not DATA.exists():
        sys.exit(f"{DATA} is absent: the check sets need ../shared/data beside the repository.")
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.set)
    done = {_key(r) for r in _done(jsonl) if "error" not in r}
    todo = []
    for name in names:
        seeds = args.seeds or (DEMO_SEEDS if name == "demo" else CHECK_SEEDS)
        for method in args.methods.split(","):
            for seed in seeds.split(","):
                tag = args.tag if method == "engine" else ""  # scanpy does not change with the preset
                if (name, method, int(seed), tag) not in done:
                    todo.append((name, method, int(seed), tag))
    print(f"{len(todo)} runs to do, {len(done)} done already", file=sys.stderr)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    for name, method, seed, tag in todo:
        row = _run_child(
            (name, method, seed), overrides if method == "engine" else {}, args.plots, tag, args.timeout
        )
        row.update(
            tag=tag,
            overrides=overrides if method == "engine" else {},
            finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        with open(jsonl, "a", encoding="utf-8") as fh:  # one write per run: a line is whole or absent
            fh.write(json.dumps(row) + "\n")
        if "error" in row:
            brief = row["error"][-300:]
        elif method == "engine":
            brief = f"ARI {row['ari']:.3f}, {row['n_clusters']} clusters, flat {row['flat']:.2f}, {row['wall']:.0f} s"
        else:
            brief = ", ".join(
                f"r{r}: ARI {row[f'r{r}']['ari']:.3f} ({row[f'r{r}']['n_clusters']})" for r in RESOLUTIONS
            )
        print(f"{name} {method} {tag} seed {seed}: {brief}", file=sys.stderr, flush=True)
    print(table(_done(jsonl)))


if __name__ == "__main__":
    main()
