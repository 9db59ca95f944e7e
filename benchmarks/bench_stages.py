"""Where a whole run's time goes, with and without numba's disk cache (issue #25, section 1).

Each repeat is ``python -m scgraph_core train`` in a fresh process (as the app's worker and the command line
run it), on one input and preset, and reads ``metrics.json``: seconds for the graph, training, analysis
(layout, clusters, interpretation) and writing, and the process's wall time from start to exit (imports
included). Modes:

* ``cold``: ``SCGRAPH_NUMBA_CACHE=0`` and an empty ``NUMBA_CACHE_DIR``: umap-learn and pynndescent compile in
  every process, as before the cache;
* ``warm``: the cache on, in a folder a first, untimed run filled (what every run after the first on a machine
  sees);
* ``machine``: this machine's own cache as it stands (what a user's next run sees; for large ``--cells``
  runs, where a fill run would double the time).

``--cells N`` synthesises N cells from ``--input`` first (:mod:`scgraph_core.synthetic`, seed 0, by
interpolation, or as fresh counts with ``--resample``; the cells inherit their anchors' labels) to time the analysis at scale; each line then also holds the label-free ARI,
the cluster count and where the analysis time went (``analysis_parts``).

One JSON line per finished repeat in ``--jsonl`` (a rerun skips what is done); ``--summary`` prints medians.

    python benchmarks/bench_stages.py --input ../shared/data/pbmc3k_seurat250.h5ad --repeats 3
    python benchmarks/bench_stages.py --input ../shared/data/pbmc3k_seurat250.h5ad --cells 100000 \
        --preset quick --modes machine --repeats 1
    python benchmarks/bench_stages.py --input ../shared/data/pbmc3k_seurat250.h5ad --cells 100000 \
        --preset quick --modes machine --repeats 1 --flags "--k 32" --keep /tmp/kept_runs
    python benchmarks/bench_stages.py --summary
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("seconds_graph", "seconds_train", "seconds_analysis", "seconds_write", "seconds_total")


def one_run(args: argparse.Namespace, env: dict[str, str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "scgraph_core", "train", "--model", args.model, "--input", args.input]
    cmd += ["--preset", args.preset, "--seed", "0", "--out", str(out)]
    if args.label_key:
        cmd += ["--label-key", args.label_key]
    cmd += args.flags.split()
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    keep = (
        "ari",
        "nmi",
        "n_clusters",
        "noise",
        "n_cells",
        "analysis_parts",
        "peak_memory_mb",
        "cluster_rule",
        "val_auc",
        "graph",
        "kl_weight",
        "learnt_expression",
    )
    return {"wall_seconds": wall, **{k: metrics.get(k) for k in STAGES}, **{k: metrics.get(k) for k in keep}}


def synthesized(source: str, n_cells: int, folder: Path, resample: bool = False) -> str:
    """``n_cells`` cells made from ``source`` (scgraph_core.synthetic, seed 0), written once and reused."""
    import anndata as ad

    from scgraph_core import synthetic

    path = folder / f"{Path(source).stem}_{n_cells}{'_resample' if resample else ''}.h5ad"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        adata = synthetic.synthesize_adata(ad.read_h5ad(source), n_cells, seed=0, resample=resample)
        adata.write_h5ad(path)
    return str(path)


def _ari(rows: list[dict]) -> str:
    aris = [r["ari"] for r in rows if r.get("ari") is not None]
    if not aris:
        return ""
    clusters = [r["n_clusters"] for r in rows if r.get("n_clusters") is not None]
    return f"{np.median(aris):.3f}" + (f" [{np.median(clusters):g}]" if clusters else "")


def summary(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        path, _, cells = r["input"].partition("@")
        cells, _, recipe = cells.partition(":")
        name = Path(path).stem + (
            f" ({int(cells):,} cells{', ' + recipe if recipe else ''})" if cells else ""
        )
        name += f" {r['flags']}" if r.get("flags") else ""
        groups.setdefault((name, r["model"], r["preset"], r["mode"]), []).append(r)
    head = "| input | model | preset | numba cache | runs | wall | graph | train | analysis | write | ARI [clusters] |"
    lines = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, model, preset, mode), rs in sorted(groups.items()):
        med = {
            k: float(np.median([r[k] for r in rs if r.get(k) is not None])) for k in ("wall_seconds", *STAGES)
        }
        lines.append(
            f"| {name} | {model} | {preset} | {mode} | {len(rs)} | {med['wall_seconds']:.1f} | "
            f"{med['seconds_graph']:.1f} | {med['seconds_train']:.1f} | {med['seconds_analysis']:.1f} | "
            f"{med['seconds_write']:.1f} | {_ari(rs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", default=str(REPO.parent / "shared" / "data" / "pbmc3k_seurat250.h5ad"))
    parser.add_argument("--model", default="cellvgae")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--label-key", default="celltype")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="cold,warm")
    parser.add_argument("--jsonl", default=str(REPO / "benchmarks" / "results" / "stages.jsonl"))
    parser.add_argument("--summary", action="store_true")
    parser.add_argument(
        "--cells",
        type=int,
        default=0,
        help="synthesise this many cells from --input first (0: the input as is)",
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="with --cells: draw the new cells as fresh counts (scgraph_core.synthetic, resample=True)",
    )
    parser.add_argument(
        "--flags", default="", help="more train flags, e.g. '--k 32' (part of what a rerun skips as done)"
    )
    parser.add_argument(
        "--keep",
        default="",
        help="keep each timed run's folder under this directory (default: a temporary one, deleted after)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=4 * 3600,
        help="seconds a run may take before it is stopped (the paper preset at 100,000 cells trains for ~85 "
        "minutes on 2 cores; an hour stopped it)",
    )
    parser.add_argument("--synth-dir", default=str(Path(tempfile.gettempdir()) / "scgraph_synth"))
    args = parser.parse_args()
    source = args.input
    if args.cells:
        sys.path.insert(0, str(REPO))
        args.input = synthesized(source, args.cells, Path(args.synth_dir), args.resample)
        label = f"{source}@{args.cells}" + (":resample" if args.resample else "")
    else:
        label = source
    path = Path(args.jsonl)
    if args.summary:
        print(summary(path))
        return
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            key = (r["input"], r["model"], r["preset"], r["mode"], r.get("flags", ""))
            done[key] = done.get(key, 0) + 1
    with tempfile.TemporaryDirectory() as tmp:
        warm_cache = Path(tmp) / "warm"
        for mode in args.modes.split(","):
            key = (label, args.model, args.preset, mode, args.flags)
            todo = args.repeats - done.get(key, 0)
            if todo <= 0:
                continue
            env = {**os.environ, "SCGRAPH_HOME": str(Path(tmp) / "home")}
            if mode == "machine":
                pass  # this machine's own numba cache, as the user's runs see it (filled by earlier runs)
            elif mode == "warm":
                env["NUMBA_CACHE_DIR"] = str(warm_cache)
                one_run(args, env, Path(tmp) / "fill")  # fills the cache; not timed
            for r in range(todo):
                if mode == "cold":
                    env["SCGRAPH_NUMBA_CACHE"] = "0"
                    env["NUMBA_CACHE_DIR"] = str(Path(tmp) / f"cold{r}")  # empty: nothing to load
                where = Path(tmp) / f"{mode}{r}"
                if args.keep:
                    where = Path(args.keep) / f"{time.strftime('%Y%m%d-%H%M%S')}_{mode}{r}"
                    where.parent.mkdir(parents=True, exist_ok=True)
                row = one_run(args, env, where)
                line = {"input": label, "model": args.model, "preset": args.preset, "mode": mode, **row}
                line["flags"] = args.flags
                if args.keep:
                    line["kept"] = str(where)
                line["cpus"] = os.cpu_count()
                line["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(line) + "\n")
                print(json.dumps(line), flush=True)
    print(summary(path))


if __name__ == "__main__":
    main()
