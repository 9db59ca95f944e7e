"""Cell-type annotation from partial labels: scBiGNN's p_theta and q_phi against standard classifiers.

For every labelled set in ``../shared/data`` (labels in ``obs['celltype']``), on the same cells and the same
genes (the T genes scBiGNN reads, those of highest variance of log(1 + 10^6 x / sum); MODELS.md 2.1):

* ``scbignn_p``, ``scbignn_q``  the engine's scBiGNN (preset ``paper`` unless ``--preset``), trained through
  :meth:`ScBiGNN.train` with a LabelSpec whose unlabelled cells are the test cells;
* ``linear_svc``  LinearSVC on log1p CP10k (the strong baseline of the issue);
* ``logistic``    logistic regression on log1p CP10k;
* ``knn_pca``     a 10-nearest-neighbour classifier (fewer when fewer cells are labelled) on 50 principal
  components of log1p CP10k.

Splits (``--rates``): ``cv`` is stratified 5-fold cross-validation (the held-out fold is unlabelled in the
graph, transductive, as in the paper); a number r (0.05, 0.01) labels a stratified share r of the cells (at
least one per type) and tests on all the others. The test labels are never given to any method; they only
score. Each finished split is one line of the JSONL file (``--out``); a rerun skips the lines already there.

    python benchmarks/bench_annotation.py --set scvgae_sample --set pbmc3k_seurat250 --seeds 0 --rates cv
    python benchmarks/bench_annotation.py --summary          # the table of means from the JSONL file
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
DATA = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "benchmarks" / "results" / "annotation.jsonl"
SETS = (
    "scvgae_sample",
    "pbmc3k_seurat250",
    "paul15",
    "mouse_bladder_top2000",
    "pbmc4k_top2000",
    "human_kidney_top2000",
    "worm_neuron",
)
LABEL = "celltype"
# The scBiGNN settings a benchmark run uses unless --model says otherwise: sequences capped at 256 genes and
# gene importance from 300 cells keep a 5-fold run on a 2-core CPU to minutes per fold.
BENCH_DEFAULTS = {"max_tokens": 256, "importance_cells": 300}


def splits(truth: np.ndarray, setting: str, seed: int, folds: int) -> list[tuple[str, np.ndarray]]:
    """(split id, test mask) for cross-validation (stratified folds) or a labelled share (stratified)."""
    rng = np.random.default_rng(seed)
    by_type = [np.flatnonzero(truth == t) for t in np.unique(truth)]
    if setting == "cv":
        fold_of = np.empty(truth.size, dtype=np.int64)
        for cells in by_type:
            fold_of[rng.permutation(cells)] = np.arange(cells.size) % folds
        return [(f"fold{f}", fold_of == f) for f in range(folds)]
    rate = float(setting)
    test = np.ones(truth.size, dtype=bool)
    for cells in by_type:
        test[rng.permutation(cells)[: max(1, int(round(rate * cells.size)))]] = False
    return [("labelled", test)]


def baseline_inputs(prepared, genes: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """log1p CP10k of the model's genes (the counts when there are any, else X as loaded) and 50 PCs of it."""
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    a = prepared.adata
    cols = a.var_names.get_indexer(genes)
    if "counts" in a.layers:
        counts = sp.csr_matrix(a.layers["counts"], dtype=np.float64)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        x = sp.diags(1e4 / np.maximum(totals, 1)) @ counts
        x = np.log1p(x[:, cols].toarray())
    else:  # already log-normalised (pbmc3k_seurat250)
        m = a.layers.get("lognorm", a.X)
        x = (m[:, cols].toarray() if sp.issparse(m) else np.asarray(m)[:, cols]).astype(np.float64)
    n_pcs = min(50, x.shape[1] - 1, x.shape[0] - 1)
    pcs = PCA(n_components=n_pcs, random_state=seed).fit_transform(x)
    return x.astype(np.float32), pcs.astype(np.float32)


def score(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def run_split(prepared, truth, test, *, preset: str, seed: int, overrides: dict, x, pcs) -> dict:
    """Train every method with the labels of ``~test`` and score it on ``test``."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    from scgraph_core import graphs, pipeline
    from scgraph_core.labels import LabelSpec
    from scgraph_core.models.scbignn import ScBiGNN
    from scgraph_core.models.scbignn.model import homophily
    from scgraph_core.train import Trainer

    out: dict = {"methods": {}}
    train = ~test
    started = time.perf_counter()
    prepared.adata.obs["bench_label"] = pd.Series(
        np.where(train, truth, None), index=prepared.adata.obs_names
    )
    config = pipeline.resolve_config(
        "scbignn",
        preset,
        {"model": overrides, "train": {"seed": seed}},
        labels=LabelSpec(key="bench_label", seed=seed),
    )
    model = ScBiGNN()
    model.train(prepared, None, config.params, Trainer(config.train), labels=config.labels)
    seconds = time.perf_counter() - started
    classes = np.asarray(model._classes, dtype=object)
    for name, probs in (("scbignn_p", model._p_probs), ("scbignn_q", model._q_probs)):
        out["methods"][name] = {**score(truth[test], classes[probs[test].argmax(1)]), "seconds": seconds}
    out["rounds"] = [
        {k: r.get(k) for k in ("round", "mstep_epochs_run", "homophily_h")} for r in model._rounds
    ]
    # Per-round accuracy on the test cells (scored here: the model saw them unlabelled).
    out["scbignn_sizes"] = model._sizes
    out["top_genes"] = model.gene_importance()["gene"].head(50).tolist()
    # MODELS.md 2.7: homophily of kNN (k = 5) on q's h against kNN on PCA of the same genes.
    spec = graphs.GraphSpec(kind="knn", k=5, symmetrize="union")
    out["homophily_h"] = homophily(graphs.build_graph(model._h_q, spec).edge_index, truth)
    out["homophily_pca"] = homophily(graphs.build_graph(pcs, spec).edge_index, truth)
    for name, clf, inputs in (
        ("linear_svc", LinearSVC(random_state=seed), x),
        ("logistic", LogisticRegression(max_iter=1000), x),
        ("knn_pca", KNeighborsClassifier(n_neighbors=min(10, int(train.sum()))), pcs),
    ):
        t0 = time.perf_counter()
        clf.fit(inputs[train], truth[train])
        pred = clf.predict(inputs[test])
        out["methods"][name] = {**score(truth[test], pred), "seconds": time.perf_counter() - t0}
    out["n_train"], out["n_test"] = int(train.sum()), int(test.sum())
    return out


def done_keys(path: Path) -> set[tuple]:
    keys = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                overrides = json.dumps(r.get("model_overrides", {}), sort_keys=True)
                keys.add((r["set"], r["setting"], r["seed"], r["split"], r["preset"], overrides))
    return keys


def summary(path: Path) -> str:
    """Mean accuracy / macro-F1 per set, setting and method, as a markdown table."""
    import dataclasses

    import pandas as pd

    from scgraph_core.models.scbignn import ScBiGNN

    # A row's setting is named by how it differs from the engine's defaults and the benchmark's own.
    defaults = {f.name: f.default for f in dataclasses.fields(ScBiGNN.Params)} | BENCH_DEFAULTS
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        variant = {k: v for k, v in r.get("model_overrides", {}).items() if defaults.get(k) != v}
        setting = r["setting"] + (f" {json.dumps(variant, sort_keys=True)}" if variant else "")
        for method, m in r["methods"].items():
            rows.append(
                {
                    "set": r["set"],
                    "setting": setting,
                    "method": method,
                    **{k: m[k] for k in ("accuracy", "macro_f1")},
                }
            )
        rows.append(
            {
                "set": r["set"],
                "setting": setting,
                "method": "homophily h / pca",
                "accuracy": r["homophily_h"],
                "macro_f1": r["homophily_pca"],
            }
        )
    table = pd.DataFrame(rows).groupby(["set", "setting", "method"], sort=False)
    means = table.mean().round(3)
    means["runs"] = table.size()
    lines = ["| set | setting | method | accuracy | macro-F1 | runs |", "|---|---|---|---|---|---|"]
    for (name, setting, method), row in means.iterrows():
        lines.append(
            f"| {name} | {setting} | {method} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} | {int(row['runs'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", dest="sets", help="dataset name (repeatable; default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument(
        "--only-folds", default="", help="cross-validation: run only these folds (e.g. 0,1; default all)"
    )
    parser.add_argument("--rates", default="cv,0.05,0.01", help="cv and/or labelled shares, comma-separated")
    parser.add_argument("--preset", default="paper", help="scBiGNN preset (default paper)")
    parser.add_argument(
        "--model",
        default=json.dumps(BENCH_DEFAULTS),
        help=f"JSON overrides of scBiGNN's model parameters (default {json.dumps(BENCH_DEFAULTS)})",
    )
    parser.add_argument("--out", default=str(OUT), help=f"JSONL file (default {OUT.relative_to(REPO)})")
    parser.add_argument("--summary", action="store_true", help="print the table of the JSONL file and exit")
    args = parser.parse_args(argv)
    path = Path(args.out)
    if args.summary:
        print(summary(path))
        return 0
    import anndata as ad

    from scgraph_core import pipeline
    from scgraph_core.models.scbignn import ScBiGNN, select_genes

    overrides = json.loads(args.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(path)
    for name in args.sets or SETS:
        adata = ad.read_h5ad(DATA / f"{name}.h5ad")
        config = pipeline.resolve_config("scbignn", args.preset, {"model": overrides})
        prepared = ScBiGNN().preprocess(adata, config.prepare)
        truth = prepared.adata.obs[LABEL].astype(str).to_numpy(dtype=object)
        lognorm = prepared.adata.layers.get("lognorm", prepared.adata.X)
        idx = select_genes(lognorm, config.params.n_genes, config.params.gene_ranking, None)
        genes = [str(g) for g in prepared.adata.var_names[idx]]
        for seed in [int(s) for s in args.seeds.split(",")]:
            x, pcs = baseline_inputs(prepared, genes, seed)
            for setting in args.rates.split(","):
                for split, test in splits(truth, setting, seed, args.folds):
                    if setting == "cv" and args.only_folds and split[4:] not in args.only_folds.split(","):
                        continue
                    key = (name, setting, seed, split, args.preset, json.dumps(overrides, sort_keys=True))
                    if key in done:
                        continue
                    t0 = time.perf_counter()
                    result = run_split(
                        prepared,
                        truth,
                        test,
                        preset=args.preset,
                        seed=seed,
                        overrides=overrides,
                        x=x,
                        pcs=pcs,
                    )
                    line = {
                        "set": name,
                        "setting": setting,
                        "seed": seed,
                        "split": split,
                        "preset": args.preset,
                        "model_overrides": overrides,
                        "seconds": time.perf_counter() - t0,
                        **result,
                    }
                    with path.open("a") as fh:
                        fh.write(json.dumps(line) + "\n")
                    shown = ", ".join(f"{m} {v['accuracy']:.3f}" for m, v in result["methods"].items())
                    print(f"{name} {setting} seed {seed} {split}: {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
