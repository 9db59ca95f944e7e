"""Where partition batches draw their negative pairs, on many steps a pass (issue #25): whole runs of CellVGAE
(``python -m scgraph_core train``) on cells synthesised from the suite's sets, one per (input, negatives, seed):
label-free ARI and clusters against the cells' inherited types, held-out link AUC (validation edges against
pairs over every cell), training seconds and the steps a pass.

Inputs are made as ``bench_stages.py --cells N --resample`` makes them (``--synth-dir``, kept between runs).
One JSON line per finished run in ``--jsonl``; a rerun skips what is done; ``--table`` prints a summary.

    python benchmarks/study_negatives.py --sources pbmc3k_seurat250,pbmc4k_top2000 --negatives all,batch \\
        --seeds 0,1 --cells 100000
    python benchmarks/study_negatives.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
# val_auc: the read-out's link AUC on the held-out (validation) edges against pairs over every cell.
# What names a run: a rerun skips a row with the same values.
KEY = ("source", "cells", "negatives", "seed", "preset", "batch_size", "epochs")
KEEP = ("ari", "n_clusters", "noise", "val_auc", "seconds_train", "seconds_total", "steps_per_epoch")


def one_run(path: str, negatives: str, seed: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "scgraph_core", "train", "--model", "cellvgae", "--input", path]
        cmd += ["--preset", args.preset, "--seed", str(seed), "--out", str(out), "--label-key", "celltype"]
        cmd += ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--negatives", negatives]
        started = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
        m = json.loads((out / "metrics.json").read_text())
    return {
        "wall_seconds": round(wall, 1),
        "negatives_ran": m.get("negatives"),
        **{k: m.get(k) for k in KEEP},
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| source | negatives | ARI by seed | median ARI | clusters | held-out AUC by seed |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["cells"], r["negatives"]), []).append(r)
    for (source, cells, neg), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        aris = " / ".join(f"{r['ari']:.3f}" for r in rs)
        aucs = " / ".join(f"{r['val_auc']:.3f}" for r in rs)
        clusters = " / ".join(str(r["n_clusters"]) for r in rs)
        med = statistics.median(r["ari"] for r in rs)
        lines.append(f"| {source}@{cells} | {neg} | {aris} | {med:.3f} | {clusters} | {aucs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", default="pbmc3k_seurat250,pbmc4k_top2000")
    parser.add_argument("--negatives", default="all,batch")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--synth-dir", default=str(Path(tempfile.gettempdir()) / "scgraph_synth"))
    parser.add_argument("--jsonl", default=str(RESULTS / "negatives_100k.jsonl"))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    path = Path(args.jsonl)
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
    if args.table:
        print(table(rows))
        return
    sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
    from bench_stages import synthesized

    done = {tuple(r[k] for k in KEY) for r in rows}
    for source in args.sources.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for negatives in args.negatives.split(","):
                key = (source, args.cells, negatives, seed, args.preset, args.batch_size, args.epochs)
                if key in done:
                    continue
                made = synthesized(str(DATA / f"{source}.h5ad"), args.cells, Path(args.synth_dir), True)
                row = dict(zip(KEY, key, strict=True))
                row.update(one_run(made, negatives, seed, args))
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
