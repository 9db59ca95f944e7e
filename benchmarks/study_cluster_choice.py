"""CellVGAE's label-free cluster choice, compared on saved embeddings (issue #21, section 2).

Reads the ``.npz`` files ``bench_suite.py --save DIR`` writes (the 50-D latent, the labels, the engine's
clusters) and, for each, reruns the engine's clustering recipe and some alternatives on the same latent:

* ``engine``: HDBSCAN (excess of mass) on a 10-D UMAP (min_dist 0), 16-point grid, consensus over 3 layouts
  (the default; must reproduce the saved clusters);
* ``leaf``: the same grid with HDBSCAN's leaf selection (the finest clusters of the tree instead of the most
  persistent ones), consensus over its own 3 layouts;
* ``both``: candidates and voters from both grids;
* ``engine_refine``: the default followed by the small-cluster post-processing (split clusters above 25 %);
* ``silhouette``: the paper's rule (best silhouette) on the excess-of-mass grid;
* ``best_eom`` / ``best_leaf``: the best grid run chosen **with the labels** (a ceiling, never a method).

One JSON line per (file, method) in ``--jsonl``; a rerun skips what is done. ``--table`` prints mean ARI per
dataset and method with scanpy's better resolution from the suite's JSONL beside it.

    python benchmarks/study_cluster_choice.py --saved /work/emb/default --jsonl benchmarks/results/cluster_choice.jsonl
    python benchmarks/study_cluster_choice.py --table --jsonl benchmarks/results/cluster_choice.jsonl \
        --suite benchmarks/results/suite_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = (10, 25, 50, 100)
SAMPLES = (5, 10, 25, 50)
METHODS = ("engine", "leaf", "both", "engine_refine", "silhouette", "best_eom", "best_leaf")
# Leiden on the latent's kNN graph (k = 15), chosen without labels (run with --leiden):
# ``leiden_r1``: resolution 1.0; ``leiden_stab``: the resolution whose clusters agree best (mean pairwise ARI) over
# five random 80 % subsamples; ``leiden_sil``: the resolution with the best silhouette on the 10-D UMAP;
# ``pooled_sil``: the best silhouette on the 10-D UMAP among the HDBSCAN grid's eligible runs and the Leiden ones;
# ``best_leiden``: the resolution picked with the labels (a ceiling).
LEIDEN_METHODS = ("leiden_r1", "leiden_stab", "leiden_sil", "pooled_sil", "best_leiden")
RESOLUTIONS = (0.25, 0.5, 0.75, 1.0, 1.5)


def _grid(points: np.ndarray, how: str) -> np.ndarray:
    import hdbscan

    rows = []
    for size in SIZES:
        for ms in SAMPLES:
            model = hdbscan.HDBSCAN(min_cluster_size=size, min_samples=ms, cluster_selection_method=how)
            rows.append(model.fit_predict(points))
    return np.asarray(rows)


def _eligible(labels: np.ndarray, max_noise: float = 0.05) -> list[int]:
    out = []
    for r, row in enumerate(labels):
        k = len(np.unique(row[row >= 0]))
        if (row < 0).mean() <= max_noise and k >= 2:
            out.append(r)
    return out


def _consensus(cands: list[np.ndarray], voters: list[np.ndarray]) -> np.ndarray:
    from scgraph_core.cluster.grid import consensus_scores

    if not cands:
        return np.asarray([])
    # each candidate is also a voter: drop exactly itself by identity
    index = []
    for c in cands:
        index.append(next(j for j, v in enumerate(voters) if v is c))
    return consensus_scores(np.asarray(cands), voters, self_index=index)


def _pick(grids: list[list[np.ndarray]], first_only: bool = True) -> np.ndarray | None:
    """Consensus among the eligible runs of the first layout of each grid, voters = eligible runs of all."""
    cands, voters = [], []
    for layouts in grids:
        for li, labels in enumerate(layouts):
            ok = [labels[i] for i in _eligible(labels)]
            voters.extend(ok)
            if li == 0 or not first_only:
                cands.extend(ok)
    if not cands:
        return None
    scores = _consensus(cands, voters)
    return cands[int(np.argmax(scores))]


def study(path: Path) -> list[dict]:
    from scgraph_core import metrics
    from scgraph_core.cluster import embedding as emb
    from scgraph_core.cluster.refine import refine_clusters
    from scgraph_core.metrics import silhouette

    z = np.load(path, allow_pickle=True)  # our own file: the clusters are strings
    latent, truth = z["embedding"], z["truth"]
    m = re.match(r".*?_(?P<name>.+)_cellvgae_(?P<seed>\d+)\.npz$", path.name)
    name, seed = m["name"], int(m["seed"])
    layouts = [
        emb.umap_embedding(latent, n_neighbors=15, min_dist=0.0, n_components=10, seed=seed + r)
        for r in range(3)
    ]
    eom = [_grid(p, "eom") for p in layouts]
    leaf = [_grid(p, "leaf") for p in layouts]

    def score(labels: np.ndarray | None) -> dict:
        if labels is None:
            return {"ari": None}
        lab = np.where(labels < 0, "noise", labels.astype(str))
        s = metrics.clustering_metrics(truth, lab, noise_label="noise")
        return {"ari": s["ari"], "nmi": s["nmi"], "n_clusters": s["n_clusters"], "noise": s["noise"]}

    picked = {
        "engine": _pick([eom]),
        "leaf": _pick([leaf]),
        "both": _pick([eom, leaf]),
    }
    base = picked["engine"]
    if base is not None:
        picked["engine_refine"], _ = refine_clusters(
            layouts[0], base, large_fraction=0.25, min_cluster_size=10
        )
    ok = _eligible(eom[0])
    if ok:
        sils = [silhouette(layouts[0], eom[0][i], sample=5000, seed=seed) for i in ok]
        picked["silhouette"] = eom[0][ok[int(np.nanargmax([-np.inf if s is None else s for s in sils]))]]
    rows = []
    for method in METHODS:
        if method.startswith("best_"):
            grid = eom[0] if method == "best_eom" else leaf[0]
            scored = [score(g) for g in grid]
            best = max(scored, key=lambda s: -1 if s["ari"] is None else s["ari"])
            rows.append({"dataset": name, "seed": seed, "method": method, **best})
        else:
            rows.append({"dataset": name, "seed": seed, "method": method, **score(picked.get(method))})
    saved = z["clusters"]
    same = None if base is None else metrics.clustering_metrics(saved.astype(str), base.astype(str))["ari"]
    for r in rows:
        r["engine_reproduced_ari"] = same
    return rows


def study_leiden(path: Path) -> list[dict]:
    from sklearn.metrics import adjusted_rand_score

    from scgraph_core import metrics
    from scgraph_core.cluster import embedding as emb
    from scgraph_core.cluster.partition import leiden
    from scgraph_core.metrics import silhouette

    z = np.load(path, allow_pickle=True)  # our own file: the clusters are strings
    latent, truth = z["embedding"], z["truth"]
    m = re.match(r".*?_(?P<name>.+)_cellvgae_(?P<seed>\d+)\.npz$", path.name)
    name, seed = m["name"], int(m["seed"])
    n = latent.shape[0]
    layout = emb.umap_embedding(latent, n_neighbors=15, min_dist=0.0, n_components=10, seed=seed)
    full = {r: leiden(latent, resolution=r, n_neighbors=15, seed=seed) for r in RESOLUTIONS}
    rng = np.random.default_rng(seed)
    subsets = [np.sort(rng.choice(n, size=int(0.8 * n), replace=False)) for _ in range(5)]
    stability = {}
    for r in RESOLUTIONS:
        parts = []
        for i, rows in enumerate(subsets):
            lab = np.full(n, -1)
            lab[rows] = leiden(latent[rows], resolution=r, n_neighbors=15, seed=seed + i)
            parts.append(lab)
        pairs = []
        for a in range(len(parts)):
            for b in range(a + 1, len(parts)):
                both = (parts[a] >= 0) & (parts[b] >= 0)
                pairs.append(adjusted_rand_score(parts[a][both], parts[b][both]))
        stability[r] = float(np.mean(pairs))
    sil = {r: silhouette(layout, full[r], sample=5000, seed=seed) for r in RESOLUTIONS}

    def val(x: float | None) -> float:
        return -np.inf if x is None else x

    eom = _grid(layout, "eom")
    pool = [eom[i] for i in _eligible(eom)] + list(full.values())
    pool_sil = [val(silhouette(layout, lab, sample=5000, seed=seed)) for lab in pool]

    def score(labels: np.ndarray) -> dict:
        lab = np.where(labels < 0, "noise", labels.astype(str))
        s = metrics.clustering_metrics(truth, lab, noise_label="noise")
        return {"ari": s["ari"], "nmi": s["nmi"], "n_clusters": s["n_clusters"], "noise": s["noise"]}

    picked = {
        "leiden_r1": full[1.0],
        "leiden_stab": full[max(RESOLUTIONS, key=lambda r: stability[r])],
        "leiden_sil": full[max(RESOLUTIONS, key=lambda r: val(sil[r]))],
        "pooled_sil": pool[int(np.argmax(pool_sil))],
    }
    rows = [{"dataset": name, "seed": seed, "method": k, **score(v)} for k, v in picked.items()]
    best = max((score(v) for v in full.values()), key=lambda s: s["ari"])
    rows.append({"dataset": name, "seed": seed, "method": "best_leiden", **best})
    for r in rows:
        r["stability"] = stability
        r["leiden_silhouette"] = sil
    return rows


def _done(jsonl: Path) -> list[dict]:
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def table(rows: list[dict], suite: list[dict]) -> str:
    sets = sorted({r["dataset"] for r in rows})
    present = {r["method"] for r in rows}
    methods = [m for m in METHODS + LEIDEN_METHODS if m in present]
    head = "| dataset | seeds | " + " | ".join(methods) + " | scanpy better |"
    out = [head, "|" + "---|" * (len(methods) + 3)]
    for name in sets:
        seeds = sorted({r["seed"] for r in rows if r["dataset"] == name})
        cells = []
        for method in methods:
            v = [r for r in rows if r["dataset"] == name and r["method"] == method and r["ari"] is not None]
            cells.append(
                f"{np.mean([r['ari'] for r in v]):.2f} [{np.median([r['n_clusters'] for r in v]):g}]"
                if v
                else "-"
            )
        sc = [
            max(r["scanpy_r0.5"]["ari"], r["scanpy_r1.0"]["ari"])
            for r in suite
            if r.get("dataset") == name
            and r.get("model") == "cellvgae"
            and r.get("seed") in seeds
            and "ari" in r
        ]
        cells.append(f"{np.mean(sc):.2f}" if sc else "-")
        out.append(f"| {name} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def suite_table(rows: list[dict], suite: list[dict], method: str) -> str:
    """The README's suite rows with CellVGAE's clusters as ``method`` picks them on the same saved runs
    (``engine`` reproduces the runs exactly), scanpy from the same runs' lines; and the bar's three counts."""
    out = [
        f"| dataset | types | CellVGAE ({method}) | scanpy r0.5 | scanpy r1.0 |",
        "|---|---:|---:|---:|---:|",
    ]
    ours, theirs, wins = [], [], 0
    for name in sorted({r["dataset"] for r in rows}):
        v = [r for r in rows if r["dataset"] == name and r["method"] == method and r["ari"] is not None]
        seeds = {r["seed"] for r in v}
        sc = [
            r
            for r in suite
            if r.get("dataset") == name
            and r.get("model") == "cellvgae"
            and r.get("seed") in seeds
            and "ari" in r
        ]
        if not v or not sc:
            continue
        a = [r["ari"] for r in v]
        cell = f"{np.mean(a):.2f} ({min(a):.2f}-{max(a):.2f}) [{np.median([r['n_clusters'] for r in v]):g}]"
        res = {
            key: (np.mean([r[key]["ari"] for r in sc]), np.median([r[key]["n_clusters"] for r in sc]))
            for key in ("scanpy_r0.5", "scanpy_r1.0")
        }
        better = max(m for m, _ in res.values())
        ours.append(np.mean(a))
        theirs.append(better)
        wins += round(np.mean(a), 2) >= round(better, 2)
        types = sc[0].get("n_types", "")
        out.append(
            f"| {name} | {types} | {cell} | "
            + " | ".join(f"{m:.2f} [{c:g}]" for m, c in res.values())
            + f" | seeds {','.join(map(str, sorted(seeds)))}"
        )
        out[-1] = out[-1].rsplit(" | seeds", 1)[0] + " |"
    out.append(
        f"\nCellVGAE at least scanpy's better resolution (two decimals) on {wins} of {len(ours)} sets; median over "
        f"sets {np.median(ours):.3f} against {np.median(theirs):.3f}; worst set {min(ours):.3f} against {min(theirs):.3f}."
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--saved", default="/work/emb/default", help="folder of bench_suite --save files")
    parser.add_argument("--jsonl", default="benchmarks/results/cluster_choice.jsonl")
    parser.add_argument("--suite", default="benchmarks/results/suite_cpu.jsonl")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--leiden", action="store_true", help="run the Leiden candidates instead")
    parser.add_argument(
        "--suite-table", metavar="METHOD", help="print the README's suite rows with CellVGAE chosen by METHOD"
    )
    args = parser.parse_args()
    jsonl = Path(args.jsonl)
    if args.suite_table:
        print(suite_table(_done(jsonl), _done(Path(args.suite)), args.suite_table))
        return
    if args.table:
        print(table(_done(jsonl), _done(Path(args.suite))))
        return
    wanted = set(LEIDEN_METHODS if args.leiden else METHODS)
    done = {(r["dataset"], r["seed"]) for r in _done(jsonl) if r["method"] in wanted}
    for path in sorted(Path(args.saved).parent.glob(Path(args.saved).name + "_*_cellvgae_*.npz")):
        m = re.match(r".*?_(?P<name>.+)_cellvgae_(?P<seed>\d+)\.npz$", path.name)
        if (m["name"], int(m["seed"])) in done:
            continue
        t0 = time.perf_counter()
        rows = study_leiden(path) if args.leiden else study(path)
        with open(jsonl, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps({**r, "seconds": time.perf_counter() - t0}) + "\n" for r in rows))
        brief = ", ".join(f"{r['method']} {r['ari']:.3f}" for r in rows if r["ari"] is not None)
        print(f"{path.name}: {brief}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
