"""Epoch by epoch through AttentionAE-sc's DEC fine-tuning: clusters, ARI and label-free cluster scores.

Pre-trains the ``paper`` preset once on one labelled dataset of ``../shared/data`` with one seed, starts DEC
from its Leiden initialisation and, after every DEC epoch, scores the labels the engine reads (argmax Q, eval
mode): the number of clusters, ARI against each label key, and three scores that need no labels (silhouette
on a fixed 1,500-cell subsample, Davies-Bouldin, Calinski-Harabasz on the embedding), with the epoch's ZINB
and graph losses unweighted (``zinb_rise`` is the ZINB loss against DEC's first epoch, what ``--dec-guard``
watches). DEC runs all
``--epochs`` epochs (the 0.1 % stopping rule is held off) so the whole course is visible; ``stopped_at`` is the
epoch at which the engine's rule (fewer than 0.1 % of labels changed, after epoch 20) would have ended it.

    python benchmarks/trace_dec.py paul15 --seed 3                  # about 5 min on 2 cores
    python benchmarks/trace_dec.py paul15 --seed 3 --no-noise       # DEC with noise and query dropout off

Writes ``benchmarks/results/dec_trace_<dataset>_seed<seed>[_no_noise].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clustering import DATA, DATASETS, REPO, cpu_model


def trace(name: str, seed: int, epochs: int, no_noise: bool) -> dict:
    import numpy as np
    import torch
    from ablate_dec import pretrained_session
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    from scgraph_core import metrics
    from scgraph_core.models import attentionae
    from scgraph_core.train import LabelChangeStop

    run, config, _, _, truth = pretrained_session(name, seed)
    subsample = np.random.default_rng(0).choice(run.n_cells, min(1500, run.n_cells), replace=False)
    rows: list[dict] = []
    engine_rule = LabelChangeStop(config.params.dec_tol, config.params.dec_min_epochs)
    stopped_at: list[int] = []

    class Recorder(LabelChangeStop):
        """The stopping rule DEC is given: never stops early, records every epoch's labels instead."""

        def update(self, epoch: int, labels: np.ndarray) -> bool:
            z = run.embed().cpu().numpy()
            row = {"epoch": epoch, "n_clusters": int(np.unique(labels).size)}
            row.update({k: round(metrics.clustering_metrics(t, labels)["ari"], 4) for k, t in truth.items()})
            if row["n_clusters"] > 1:
                row["silhouette"] = round(float(silhouette_score(z[subsample], labels[subsample])), 4)
                row["davies_bouldin"] = round(float(davies_bouldin_score(z, labels)), 4)
                row["calinski_harabasz"] = round(float(calinski_harabasz_score(z, labels)), 1)
            if engine_rule.update(epoch, labels) and not stopped_at:
                stopped_at.append(epoch)
            rows.append(row)
            print(json.dumps(row), flush=True)
            return super().update(epoch, labels)

    losses: dict[int, dict] = {}
    weights = {"zinb": config.params.dec_zinb_weight, "graph": config.params.dec_graph_weight}

    def record_losses(event: dict) -> None:
        if event.get("kind") == "epoch" and event.get("stage") == "dec":
            found = event.get("losses", {})
            losses[int(event["epoch"])] = {k: found[k] / w for k, w in weights.items() if k in found and w}

    run.trainer.callbacks.append(record_losses)
    attentionae.model.LabelChangeStop = Recorder  # the engine reads it from its own module
    run.generator.manual_seed(seed + 1)
    torch.manual_seed(seed)
    start = run.initialise(
        run.embed(), resolution=config.cluster.resolution, n_neighbors=config.cluster.n_neighbors
    )
    run.params = dataclasses.replace(run.params, dec_epochs=epochs, dec_min_epochs=epochs)
    if no_noise:
        run.net.noise = 0.0
        run.net.attn_1.query_dropout = run.net.attn_2.query_dropout = 0.0
    run.finetune(start)
    first = losses.get(1, {}).get("zinb")
    for row in rows:
        found = losses.get(row["epoch"], {})
        row.update({k: round(v, 5) for k, v in found.items()})
        if first and "zinb" in found:
            row["zinb_rise"] = round(found["zinb"] / first - 1.0, 4)
    return {
        "dataset": name,
        "seed": seed,
        "no_noise": no_noise,
        "stopped_at": stopped_at[0] if stopped_at else None,
        "epochs": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=list(DATASETS))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--no-noise", action="store_true", help="switch noise and query dropout off in DEC")
    parser.add_argument("--out", type=Path, help="where to write the JSON (default: benchmarks/results/)")
    args = parser.parse_args()
    if not (DATA / f"{args.dataset}.h5ad").exists():
        sys.exit(f"Missing {args.dataset}.h5ad in {DATA} (set SCGRAPH_SHARED_DATA to its folder).")
    result = {
        "benchmark": "dec_trace_attentionae",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/trace_dec.py " + " ".join(sys.argv[1:]),
        "cpu_model": cpu_model(),
        **trace(args.dataset, args.seed, args.epochs, args.no_noise),
    }
    suffix = "_no_noise" if args.no_noise else ""
    out = (
        args.out or REPO / "benchmarks" / "results" / f"dec_trace_{args.dataset}_seed{args.seed}{suffix}.json"
    )
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
