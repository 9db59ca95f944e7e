"""scGNN (#24) or scBiGNN (#23) time and memory against the number of cells (2k, 20k, 100k on the 2-core CPU).

Cells are synthesised from ``../shared/data/pbmc4k_top2000.h5ad`` (raw counts, 2,000 genes) as
``../shared/data/README.md`` describes (:func:`scgraph_core.synthetic.synthesize_adata`); every run is the
engine's ``pipeline.execute`` in its own fresh process, so its peak memory (``ru_maxrss``, data and imports
included) is its own. Per run: wall seconds, seconds per stage family (feature AE, cluster AEs, per-round
retraining, graph AE, imputation), rounds, peak RSS. ``--model scbignn`` trains on 80 % of the inherited labels
(``holdout_fraction`` 0.2) and adds accuracy and macro-F1 on the hidden fifth; its stage families are the
q_phi pre-training, the E-steps and the M-steps.

Resumable: one JSON line per finished run in ``--jsonl``; a rerun skips the (model, cells, preset) already there.

    python benchmarks/bench_scgnn_scale.py --sizes 2000,20000 --preset quick
    python benchmarks/bench_scgnn_scale.py --model scbignn --sizes 2000,20000,100000 --preset quick
    python benchmarks/bench_scgnn_scale.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCE = "pbmc4k_top2000"
RESULTS = REPO / "benchmarks" / "results"


def _memory() -> str:
    """Resident memory now and the peak so far (MB), for the progress lines: where a large run's memory grows."""
    try:
        with open("/proc/self/statm") as fh:
            now = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        now = float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"rss {now:.0f} MB, peak {peak:.0f} MB"


def single(n_cells: int, preset: str, model: str = "scgnn", resample: bool = False) -> dict:
    import anndata as ad

    from scgraph_core import pipeline, synthetic
    from scgraph_core.labels import LabelSpec

    real = ad.read_h5ad(DATA / f"{SOURCE}.h5ad")
    if n_cells == real.n_obs:
        adata = real
    else:
        adata = synthetic.synthesize_adata(real, n_cells, seed=0, resample=resample)
    stages: dict[str, float] = defaultdict(float)

    progress = os.environ.get("SCGRAPH_BENCH_PROGRESS")
    last_stage = [""]

    def on_event(event: dict) -> None:
        if event.get("kind") == "epoch":
            family = event["stage"].split("_r")[0] if "_r" in event["stage"] else event["stage"]
            stages[family] += float(event["seconds"])
        stage = str(event.get("stage") or event.get("step") or "")
        if progress and stage and stage != last_stage[0]:
            last_stage[0] = stage
            with open(
                progress, "a"
            ) as fh:  # one line per new stage: which stage a long run is in, and since when
                fh.write(f"{time.strftime('%H:%M:%S')} {n_cells} {stage} {_memory()}\n")

    labels = LabelSpec(key="celltype", holdout_fraction=0.2) if model == "scbignn" else None
    config = pipeline.resolve_config(model, preset, {"train": {"seed": 0}}, labels=labels)
    started = time.perf_counter()
    _, result = pipeline.execute(adata, config, callbacks=[on_event])
    m = result.metrics
    return {
        "model": model,
        "accuracy": m.get("accuracy"),
        "macro_f1": m.get("macro_f1"),
        "n_cells": n_cells,
        "preset": preset,
        "synthesis": "resample" if resample else "interpolate",
        "n_genes": int(m.get("n_features", 0)),
        "seconds_total": time.perf_counter() - started,
        "seconds_train": m.get("seconds_train"),
        "seconds_analysis": m.get("seconds_analysis"),
        "stage_seconds": dict(stages),
        "rounds": m.get("rounds"),
        "n_clusters": m.get("n_clusters"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": os.getloadavg(),
    }


def _done(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _drawn(row: dict) -> str:
    return " (resampled)" if row.get("synthesis") == "resample" else ""


def table(rows: list[dict]) -> str:
    lines = [
        "| cells | preset | wall min | feature AE s | cluster AEs s | retraining s | graph AE s | imputation s | rounds | peak GB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted((r for r in rows if "error" not in r), key=lambda r: (r["preset"], r["n_cells"])):
        s = r["stage_seconds"]
        if r.get("model", "scgnn") != "scgnn":
            stages = ", ".join(f"{k} {v:.0f} s" for k, v in s.items())
            lines.append(
                f"| {r['n_cells']:,}{_drawn(r)} | {r['preset']} | {r['seconds_total'] / 60:.1f} | {r['model']}: {stages}; "
                f"accuracy {r['accuracy']:.3f} | | | | | {r['rounds']} | {r['peak_rss_mb'] / 1024:.2f} |"
            )
            continue
        lines.append(
            f"| {r['n_cells']:,}{_drawn(r)} | {r['preset']} | {r['seconds_total'] / 60:.1f} | {s.get('feature_ae', 0):.0f} | "
            f"{s.get('cluster', 0):.0f} | {s.get('em', 0):.0f} | {s.get('gae', 0):.0f} | {s.get('imputation_ae', 0):.0f} | "
            f"{r['rounds']} | {r['peak_rss_mb'] / 1024:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--model", default="scgnn", choices=("scgnn", "scbignn"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--jsonl", default=str(RESULTS / "scgnn_scale.jsonl"))
    parser.add_argument("--table", action="store_true")
    parser.add_argument(
        "--resample", action="store_true", help="draw the cells as fresh counts (synthetic, resample=True)"
    )
    parser.add_argument(
        "--single", nargs=4, metavar=("CELLS", "PRESET", "MODEL", "SYNTH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.single:
        cells, preset, model, synth = args.single
        print(json.dumps(single(int(cells), preset, model, synth == "resample")))
        return
    path = Path(args.jsonl)
    if args.table:
        print(table(_done(path)))
        return
    synth = "resample" if args.resample else "interpolate"
    done = {
        (r.get("model", "scgnn"), r["n_cells"], r["preset"], r.get("synthesis", "interpolate"))
        for r in _done(path)
        if "error" not in r
    }
    for size in (int(s) for s in args.sizes.split(",")):
        if (args.model, size, args.preset, synth) in done:
            continue
        cmd = [sys.executable, __file__, "--single", str(size), args.preset, args.model, synth]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            row = (
                json.loads(proc.stdout.strip().splitlines()[-1])
                if proc.returncode == 0
                else {
                    "model": args.model,
                    "n_cells": size,
                    "preset": args.preset,
                    "synthesis": synth,
                    "error": proc.stderr.strip()[-800:],
                }
            )
        except subprocess.TimeoutExpired:
            row = {
                "model": args.model,
                "n_cells": size,
                "preset": args.preset,
                "synthesis": synth,
                "error": f"did not finish within {args.timeout:.0f} s",
            }
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(_done(path)))


if __name__ == "__main__":
    main()
