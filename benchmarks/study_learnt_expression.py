"""Does CellVGAE's learnt expression follow the measured expression, and what does the KL weight do to it?

Learnt expression is each cell's embedding times a gene's P_mu row (MODELS.md 1.6); the Expression page
draws it beside the gene's observed expression and the Markers page ranks genes by the same P_mu. For every
suite set, KL weight and seed this trains CellVGAE's ``quick`` preset (or ``--preset``) through the command
line with that weight, then reads back:

* the label-free ARI, NMI and cluster count (``metrics.json``);
* over the model's genes, Pearson's r between a gene's learnt and observed expression across cells: the median,
  the share of genes with r > 0 and with r > 0.3 (what the Expression page prints for each gene it draws);
* the share of the learnt expression's variance (cells x genes) in its first principal direction: near 1, every
  gene's learnt map is the same picture up to sign and scale;
* the drawn UMAP's shape (``bench_quick_demo.layout_shape``): ``flat``, the median over cells of the 15 nearest
  drawn neighbours' covariance ratio (a blob about 0.5, a string near 0), and ``strings``, the share of cells
  under 0.1 (the quick preset's KL weight of 3 was chosen against strings).

``demo`` (the built-in 700 cells, scored against ``bulk_labels``) can be added to ``--datasets``.

One JSON line per finished run in ``--jsonl``; a rerun skips what is done. ``--table`` prints medians.

    python benchmarks/study_learnt_expression.py --kl 3,0.3,inv --seeds 0,1
    python benchmarks/study_learnt_expression.py --kl inv --seeds 0,1 --flags "--recipe auto"
    python benchmarks/study_learnt_expression.py --table

``inv`` is the paper's weight, 1 / cells (the paper preset's default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
SETS = [
    "demo",
    "pbmc3k_seurat250",
    "scvgae_sample",
    "paul15",
    "mouse_bladder_top2000",
    "pbmc4k_top2000",
    "worm_neuron",
    "human_kidney_top2000",
]


def agreement(result: Path) -> dict:
    import anndata as ad

    from scgraph_core import interpret

    adata = ad.read_h5ad(result)
    return interpret.learnt_expression_agreement(adata)


def shape(result: Path) -> dict:
    import anndata as ad

    from benchmarks.bench_quick_demo import layout_shape
    from scgraph_core import interpret

    adata = ad.read_h5ad(result)
    views = interpret.result_views(adata)
    xy = adata.obsm[views.get("umap") or "X_umap"]
    described = layout_shape(xy, np.asarray(adata.obsm[views["embedding"]]))
    return {"flat": described["flat"], "strings": described["strings"]}


def run_one(dataset: str, kl: str, seed: int, preset: str, work: Path, flags: str = "") -> dict:
    import anndata as ad

    if dataset == "demo":  # the built-in 700 cells; their types are bulk_labels
        path, label, n_cells = "demo", "bulk_labels", 700
    else:
        path, label = DATA / f"{dataset}.h5ad", "celltype"
        n_cells = ad.read_h5ad(path, backed="r").n_obs
    weight = 1.0 / n_cells if kl == "inv" else float(kl)
    out = work / f"{dataset}_{kl}_{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "scgraph_core", "train", "--model", "cellvgae", "--input", str(path)]
    cmd += ["--preset", preset, "--label-key", label, "--seed", str(seed), "--kl-weight", repr(weight)]
    cmd += ["--out", str(out), "--quiet", *flags.split()]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{dataset} kl={kl} seed={seed} failed:\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    row = {
        "dataset": dataset,
        "preset": preset,
        "kl": kl,
        "kl_weight": weight,
        "flags": flags,
        "seed": seed,
        "ari": metrics.get("ari"),
        "nmi": metrics.get("nmi"),
        "n_clusters": metrics.get("n_clusters"),
        "seconds": round(seconds, 1),
        **agreement(out / "result.h5ad"),
        **shape(out / "result.h5ad"),
    }
    shutil.rmtree(out, ignore_errors=True)
    return row


def table(rows: list[dict]) -> None:
    """Medians over seeds per set and KL weight, then over the suite's sets (the demo left out). A run repeated
    under another tag (same set, weight and seed) counts once: the first one's scores, the later one's layout."""
    first: dict[tuple, dict] = {}
    for r in rows:
        if r.get("flags"):  # a variant: its own column
            r = {**r, "kl": f"{r['kl']} {r['flags']}"}
        key = (r["dataset"], r["kl"], r["seed"])
        first[key] = {**r, **first[key]} if key in first else r
    rows = list(first.values())
    kls = list(dict.fromkeys(r["kl"] for r in rows))
    print("| set | " + " | ".join(f"KL {k}: ARI / genes r > 0 / median r / top-1 share" for k in kls) + " |")
    print("|---|" + "---|" * len(kls))
    for d in SETS:
        cells = []
        for k in kls:
            sel = [r for r in rows if r["dataset"] == d and r["kl"] == k]
            if not sel:
                cells.append("")
                continue
            keys = ("ari", "share_positive", "median_r", "top1_share")
            med = {key: statistics.median(r[key] for r in sel) for key in keys}
            drawn = [r["strings"] for r in sel if "strings" in r]
            strings = f" / strings {statistics.median(drawn):.0%}" if drawn else ""
            cells.append(
                f"{med['ari']:.3f} / {med['share_positive']:.0%} / {med['median_r']:.2f} / {med['top1_share']:.2f}"
                f"{strings} (n={len(sel)})"
            )
        print(f"| {d} | " + " | ".join(cells) + " |")
    for k in kls:
        sel = [r for r in rows if r["kl"] == k and r["dataset"] != "demo"]
        per_set = {}
        for r in sel:
            per_set.setdefault(r["dataset"], []).append(r)
        aris = [statistics.median(x["ari"] for x in v) for v in per_set.values()]
        rs = [statistics.median(x["median_r"] for x in v) for v in per_set.values()]
        pos = [statistics.median(x["share_positive"] for x in v) for v in per_set.values()]
        if aris:
            print(
                f"KL {k}: sets {len(aris)}, ARI median {statistics.median(aris):.3f} worst {min(aris):.3f}; "
                f"genes r > 0 median {statistics.median(pos):.0%} worst {min(pos):.0%}; "
                f"median r median {statistics.median(rs):.2f} worst {min(rs):.2f}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(SETS[1:]), help="suite sets, and 'demo' if wanted")
    p.add_argument("--kl", default="3,0.3,inv", help="KL weights; 'inv' = 1 / cells")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--preset", default="quick")
    p.add_argument("--jsonl", default=str(REPO / "benchmarks" / "results" / "learnt_expression.jsonl"))
    p.add_argument("--flags", default="", help="more train flags for every run, e.g. '--recipe auto'")
    p.add_argument(
        "--tag", default="", help="names a batch of runs, kept apart from the others when resuming"
    )
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    jsonl = Path(args.jsonl)
    rows = (
        [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        if jsonl.exists()
        else []
    )
    if args.table:
        table([r for r in rows if r.get("preset") == args.preset])
        return
    done = {
        (r["dataset"], r["preset"], r["kl"], r["seed"], r.get("tag", ""), r.get("flags", "")) for r in rows
    }
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scgraph_lx_") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for dataset in args.datasets.split(","):
                for kl in args.kl.split(","):
                    if (dataset, args.preset, kl, seed, args.tag, args.flags) in done:
                        continue
                    row = {**run_one(dataset, kl, seed, args.preset, Path(tmp), args.flags), "tag": args.tag}
                    print(json.dumps(row), flush=True)
                    with jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
