"""Which part of AttentionAE-sc's DEC fine-tuning moves the clustering: variants from one pre-trained model.

For every labelled raw-count dataset in ``../shared/data`` and every seed, the ``paper`` preset is pre-trained
once through the engine's :class:`scgraph_core.models.attentionae.Session`; then each DEC variant starts from a
copy of those same weights (same Leiden start, same random state), so the rows of one dataset differ only in
the fine-tuning. Variants (model parameters, plus ``resolution`` for the Leiden start):

* ``paper``            the preset: the authors' squared Student-t kernel, P recomputed from the live Q;
* ``textbook``         DEC as published: Student-t (alpha = 1), P fixed between refreshes (detached);
* ``student_t_live``   Student-t kernel, live P;
* ``squared_fixed``    squared kernel, detached P;
* ``zinb_1``           the preset with the ZINB term weighted 1.0 instead of 0.1 during DEC;
* ``lr_1e-4``          the preset with a 10x smaller DEC learning rate;
* ``start_r0.5``       the preset started from Leiden at resolution 0.5 instead of 1.0;
* ``graph_0.1``        the preset with the graph term weighted 0.1 instead of 0.01 during DEC;
* ``zinb_1_start_r0.5`` ZINB weight 1.0 and the start at resolution 0.5 together;
* ``lr_3e-4``          the preset with a 3x smaller DEC learning rate;
* ``lr_1e-4_start_r0.5`` the 10x smaller DEC learning rate and the start at resolution 0.5 together;
* ``warmup_20``, ``warmup_50`` the preset with the DEC learning rate rising linearly to 1e-3 over 20 / 50 epochs.

Per row: clusters and ARI of the Leiden start and of the final DEC clusters (and of paul15's coarse types),
epochs run. Labels are read only to score.

    python benchmarks/ablate_dec.py                         # seed 2 on the three sets (about 20 min, 2 cores)
    python benchmarks/ablate_dec.py --datasets pbmc4k_top2000 --seeds 0 1 --variants paper textbook
Writes ``benchmarks/results/dec_ablation.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clustering import DATA, DATASETS, REPO

VARIANTS: dict[str, dict] = {
    "paper": {},
    "textbook": {"dec_kernel": "student_t", "detach_target": True},
    "student_t_live": {"dec_kernel": "student_t", "detach_target": False},
    "squared_fixed": {"dec_kernel": "legacy", "detach_target": True},
    "zinb_1": {"dec_zinb_weight": 1.0},
    "lr_1e-4": {"dec_lr": 1e-4},
    "start_r0.5": {"resolution": 0.5},
    "graph_0.1": {"dec_graph_weight": 0.1},
    "zinb_1_start_r0.5": {"dec_zinb_weight": 1.0, "resolution": 0.5},
    "lr_3e-4": {"dec_lr": 3e-4},
    "lr_1e-4_start_r0.5": {"dec_lr": 1e-4, "resolution": 0.5},
    "warmup_20": {"dec_warmup": 20},
    "warmup_50": {"dec_warmup": 50},
}


def pretrained_session(name: str, seed: int):
    """The ``paper`` preset pre-trained on ``name``: (session, config, pre-training outcome, seconds, labels),
    labels = {label key: one label per cell, in the session's cell order}."""
    import anndata as ad

    from scgraph_core import data, graphs, pipeline
    from scgraph_core.models import attentionae
    from scgraph_core.train import Trainer

    adata = ad.read_h5ad(DATA / f"{name}.h5ad")
    config = pipeline.resolve_config(
        "attentionae", "paper", {"train": {"seed": seed}}, label_key=DATASETS[name][0]
    )
    prepared = data.prepare(adata, config.prepare)
    graph = graphs.build_graph(
        graphs.graph_matrix(prepared, config.graph), config.graph, cell_names=list(prepared.adata.obs_names)
    )
    run = attentionae.Session(prepared, graph, config.params, Trainer(config.train, callbacks=[], stop=None))
    started = time.perf_counter()
    pre = run.pretrain()
    labels = {k: prepared.adata.obs[k].to_numpy() for k in DATASETS[name]}
    return run, config, pre, time.perf_counter() - started, labels


def ablate(name: str, seed: int, variants: list[str]) -> list[dict]:
    """Pre-train once on ``name`` with ``seed``, then fine-tune every variant from a copy of the weights."""
    import numpy as np
    import torch

    from scgraph_core import metrics

    run, config, pre, seconds_pretrain, truth = pretrained_session(name, seed)
    weights = copy.deepcopy(run.net.state_dict())
    preset = run.params

    def scores(labels: np.ndarray) -> dict:
        return {k: round(metrics.clustering_metrics(t, labels)["ari"], 4) for k, t in truth.items()}

    rows = []
    for variant in variants:
        settings = dict(VARIANTS[variant])
        resolution = settings.pop("resolution", config.cluster.resolution)
        run.net.load_state_dict(weights)
        run.params = dataclasses.replace(preset, **settings)
        run.dec, run.centres = None, None
        run.generator.manual_seed(seed + 1)
        torch.manual_seed(seed)
        z0 = run.embed()
        start = run.initialise(z0, resolution=resolution, n_neighbors=config.cluster.n_neighbors)
        t0 = time.perf_counter()
        outcome = run.finetune(start)
        seconds_dec = time.perf_counter() - t0
        labels, q, _, folded = run.assign(run.embed())
        row = {
            "dataset": name,
            "seed": seed,
            "variant": variant,
            "settings": VARIANTS[variant],
            "pretrain_epochs": pre.epochs_run,
            "seconds_pretrain": round(seconds_pretrain, 1),
            "seconds_dec": round(seconds_dec, 1),
            "dec_epochs": outcome.epochs_run,
            "dec_converged": bool(outcome.converged),
            "n_clusters_start": int(start.max()) + 1,
            "n_clusters": int(q.shape[1]),
            "folded": folded,
            "ari_start": scores(start),
            "ari": scores(labels),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | labels | variant | start ARI | clusters | DEC ARI | clusters | DEC epochs |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for key in DATASETS[r["dataset"]]:
            lines.append(
                f"| {r['dataset']} (seed {r['seed']}) | {key} | {r['variant']} | {r['ari_start'][key]:.3f} | "
                f"{r['n_clusters_start']} | {r['ari'][key]:.3f} | {r['n_clusters']} | {r['dec_epochs']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dec_ablation.json")
    args = parser.parse_args()
    missing = [d for d in args.datasets if not (DATA / f"{d}.h5ad").exists()]
    if missing:
        sys.exit(
            f"Missing datasets in {DATA}: {', '.join(missing)} (set SCGRAPH_SHARED_DATA to their folder)."
        )
    import torch

    rows = [row for name in args.datasets for seed in args.seeds for row in ablate(name, seed, args.variants)]
    result = {
        "benchmark": "dec_ablation_attentionae",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/ablate_dec.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
