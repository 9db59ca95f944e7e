"""How good a finished run is, in plain words, and what to try next.

:func:`assess` reads a run's metrics (``metrics.json``) and result (``result.h5ad``) and returns a
:class:`Verdict`: a headline, the findings behind it, how the run's other clusterings score, and next
steps chosen by the rules below. Every threshold is a module constant so the rules can be read (and
tested) in one place.

With a label column the verdict is the agreement with the annotated types (ARI, NMI) and the number of
clusters against the number of types. Without one it is the silhouette and the cluster sizes: a cluster
holding most cells, many tiny clusters, a large share of noise.

Next steps (``NextStep.kind``):

- ``recluster``: another clustering of the same run beats the chosen one by ``BETTER_BY`` ARI, or the
  clusters merge/split types, or (without labels) the sizes look wrong: re-cluster on the Embedding page.
- ``more_genes``: the result is not good and the model read at most ``FEW_GENES_SHARE`` of the genes and
  fewer than ``MANY_GENES``: raise ``n_hvg``.
- ``count_model``: the result is poor, the data hold raw counts and the model is not AttentionAE-sc, which
  models counts with a ZINB decoder.
- ``other_model``: a run of another model on the same dataset and label column scored ``BETTER_BY`` ARI
  more.
- ``stopped_better``: a stopped run of the same dataset scored ``BETTER_BY`` ARI more than this finished
  one.

The text is plain (file-supplied names included as read): the app escapes it before drawing it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

GOOD_ARI = 0.7
FAIR_ARI = 0.4
BETTER_BY = 0.05  # an ARI lead smaller than this is noise between seeds
MERGE_RATIO = 0.5  # clusters <= this share of the types: types are merged
SPLIT_RATIO = 2.0  # clusters >= this multiple of the types: types are split
SILHOUETTE_WORDS = ((0.5, "well separated"), (0.25, "moderately separated"), (0.1, "weakly separated"))
DOMINANT_SHARE = 0.5  # one cluster holding more than this share of the cells
TINY_SHARE = 0.01  # a cluster under this share of the cells (and under TINY_CELLS) is tiny
TINY_CELLS = 10
MANY_TINY = 3  # this many tiny clusters, and at least a third of all clusters, are "many"
NOISE_SHARE = 0.1
FEW_GENES_SHARE = 0.25
MANY_GENES = 2000
COUNT_MODEL = "attentionae"
NOISE_LABELS = ("noise", "-1")
CHANCE_AUC = 0.55  # validation AUC of the edge decoder at or below this: the latent learnt no structure
# Learnt expression (embedding x P_mu row) that correlates positively with the observed expression for fewer than
# LEARNT_MIN_POSITIVE of the model's genes does not follow what was measured (half would by chance); with at least
# LEARNT_MAX_TOP1 of its variance along one latent direction it is one picture for every gene. On the seven suite
# sets (two seeds) CellVGAE's quick preset with its former KL weight of 3 gave 33-82 % of genes positive and
# 0.88-0.98 along one direction, the paper's 1 / cells 84-98 % and 0.37-0.67 (benchmarks/NOTES.md, session 47).
LEARNT_MIN_POSITIVE = 0.75
LEARNT_MAX_TOP1 = 0.8
# A KL weight above this (the paper's 1 / cells is below 1e-3 from 1,000 cells) is named as the likely cause.
STRONG_KL = 0.01

_OTHER_NAMES = {
    "leiden": "Leiden on the embedding",
    "kmeans": "k-means on the embedding",
    "observed_counts": "the same clustering on the observed counts",
    "hdbscan_best_with_labels": "the HDBSCAN grid run that best matches the labels",
}


@dataclass(frozen=True)
class NextStep:
    kind: str  # the rule that chose it (see the module docstring)
    text: str
    page: str | None = None  # the app page where it is done: "embedding", "model", "runs", "annotate"


@dataclass(frozen=True)
class Score:
    """One clustering of the run scored against the labels."""

    name: str
    n_clusters: int | None
    ari: float | None
    nmi: float | None
    chosen: bool = False


@dataclass(frozen=True)
class RunScore:
    """Another run's headline score, for comparing runs of the same data."""

    id: str
    name: str
    model: str
    dataset: str
    state: str
    label_key: str | None
    ari: float | None


@dataclass
class Verdict:
    level: str  # "good", "fair", "poor" or "unknown"
    headline: str
    findings: list[str] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    next_steps: list[NextStep] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The verdict as plain text lines (the command line prints these)."""
        out = [f"verdict ({self.level}): {self.headline}"]
        out += [f"  - {f}" for f in self.findings]
        for s in self.scores:
            if not s.chosen and s.ari is not None:
                out.append(f"  other clustering: {s.name}: ARI {s.ari:.3f}, {s.n_clusters} clusters")
        out += [f"next: {step.text}" for step in self.next_steps]
        return out


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def other_scores(metrics: dict) -> list[Score]:
    """The run's other clusterings scored against the labels, read from ``metrics`` (best first)."""
    main = (_num(metrics.get("ari")), metrics.get("n_clusters"))
    out = []
    for key, value in metrics.items():
        if not isinstance(value, dict) or _num(value.get("ari")) is None or "n_clusters" not in value:
            continue
        ari, n = _num(value["ari"]), int(value["n_clusters"])
        if key == "hdbscan_best_with_labels" and (ari, n) == main:
            continue  # the label-free choice already is the best grid run
        name = _OTHER_NAMES.get(key, key.replace("_", " "))
        if key == "hdbscan_best_with_labels" and "min_cluster_size" in value:
            name += f" (min cluster size {value['min_cluster_size']}, min samples {value.get('min_samples')})"
        out.append(Score(name, n, ari, _num(value.get("nmi"))))
    return sorted(out, key=lambda s: -(s.ari or 0.0))


def cluster_sizes(labels: Iterable[Any]) -> tuple[pd.Series, int]:
    """(cells per cluster, largest first; noise cells), noise being the labels in ``NOISE_LABELS``."""
    s = pd.Series(np.asarray(list(labels), dtype=object)).astype(str)
    noise = s.isin(NOISE_LABELS)
    return s[~noise].value_counts(), int(noise.sum())


def _level_from_ari(ari: float) -> str:
    return "good" if ari >= GOOD_ARI else "fair" if ari >= FAIR_ARI else "poor"


def _with_labels(v: Verdict, metrics: dict, n_types: int, label_key: str) -> str | None:
    """Fill the label-based part; return "merges"/"splits" when the cluster count is far off."""
    ari, nmi = _num(metrics.get("ari")), _num(metrics.get("nmi"))
    n = metrics.get("n_clusters")
    v.level = _level_from_ari(ari) if ari is not None else "unknown"
    shape = None
    parts = []
    if n is not None and n_types:
        n = int(n)
        count = f"{_plural(n, 'cluster')} for {n_types} annotated types"
        if n <= MERGE_RATIO * n_types:
            shape, count = "merges", f"{count}: the clustering merges types"
        elif n >= SPLIT_RATIO * n_types:
            shape, count = "splits", f"{count}: the clustering splits types"
        parts.append(count)
    if ari is not None:
        words = {"good": "agrees well", "fair": "agrees in part", "poor": "agrees poorly"}[v.level]
        nmi_text = f", NMI {nmi:.2f}" if nmi is not None else ""
        parts.append(f"{words} with '{label_key}' (ARI {ari:.2f}{nmi_text})")
    v.headline = "; ".join(parts) + "." if parts else "No scores were recorded for this run."
    v.scores = [Score("the run's clusters", n, ari, nmi, chosen=True), *other_scores(metrics)]
    return shape


def _without_labels(v: Verdict, metrics: dict, sizes: pd.Series | None, noise: int) -> list[str]:
    """Fill the label-free part; return the problems found in the cluster sizes."""
    sil = _num(metrics.get("silhouette"))
    problems = []
    n_cells = int(sizes.sum()) + noise if sizes is not None else metrics.get("n_cells")
    n = len(sizes) if sizes is not None else metrics.get("n_clusters")
    head = []
    if n is not None:
        head.append(f"{_plural(int(n), 'cluster')}")
    if sil is not None:
        words = next((w for cut, w in SILHOUETTE_WORDS if sil >= cut), "barely separated")
        head.append(f"{words} (silhouette {sil:.2f})")
    if n is not None and int(n) <= 1:
        problems.append("single")
        v.findings.append("The clustering found no groups: every cell is in one cluster.")
    if sizes is not None and n_cells and len(sizes) > 1:
        top = sizes.iloc[0] / n_cells
        if top > DOMINANT_SHARE:
            problems.append("dominant")
            v.findings.append(f"One cluster holds {top:.0%} of the cells.")
        tiny = int((sizes < max(TINY_CELLS, TINY_SHARE * n_cells)).sum())
        if tiny >= MANY_TINY and tiny * 3 >= len(sizes):
            problems.append("tiny")
            v.findings.append(
                f"{tiny} of the {len(sizes)} clusters are tiny (under {max(TINY_CELLS, round(TINY_SHARE * n_cells))} cells)."
            )
    if problems or sil is None:
        v.level = "poor" if "single" in problems or (sil is not None and sil < 0.1) else "fair"
    else:
        v.level = "good" if sil >= 0.25 else "fair" if sil >= 0.1 else "poor"
    v.headline = ", ".join(head) + "; no label column to score against." if head else "No scores recorded."
    return problems


def assess(
    metrics: dict,
    adata: Any = None,
    *,
    label_key: str | None = None,
    model: str | None = None,
    others: Iterable[RunScore] = (),
    this: RunScore | None = None,
) -> Verdict:
    """The verdict on one finished run.

    ``metrics`` is the run's ``metrics.json``; ``adata`` its result (cluster sizes, the label column, the
    preparation record in ``uns['scgraph']['prepare']``), optional; ``others`` other runs' scores, compared
    with ``this`` (same dataset and label column).
    """
    metrics = metrics or {}
    v = Verdict(level="unknown", headline="")
    scg = (adata.uns.get("scgraph", {}) if adata is not None else {}) or {}
    views = scg.get("views") or {}
    prepare = scg.get("prepare") or {}
    model = model or views.get("model") or (scg.get("config") or {}).get("model")

    if views.get("predictions") or metrics.get("labels"):
        return _predictions(v, metrics)

    sizes, noise = None, 0
    clusters_key = views.get("clusters")
    if adata is not None and clusters_key in adata.obs:
        sizes, noise = cluster_sizes(adata.obs[clusters_key])
    n_types = 0
    if label_key and adata is not None and label_key in adata.obs:
        n_types = int(adata.obs[label_key].dropna().nunique())
    labelled = bool(label_key) and (n_types > 0 or _num(metrics.get("ari")) is not None)

    shape = None
    problems: list[str] = []
    if labelled:
        shape = _with_labels(v, metrics, n_types, label_key)
    else:
        problems = _without_labels(v, metrics, sizes, noise)
    noise_share = _num(metrics.get("noise_fraction"))
    if noise_share is None and sizes is not None and (int(sizes.sum()) + noise):
        noise_share = noise / (int(sizes.sum()) + noise)
    if noise_share is not None and noise_share > NOISE_SHARE:
        problems.append("noise")
        v.findings.append(f"{noise_share:.0%} of the cells are noise (in no cluster).")

    # ---- next steps --------------------------------------------------------------------------
    ari = _num(metrics.get("ari"))
    auc = _num(metrics.get("val_auc"))
    at_chance = auc is not None and auc <= CHANCE_AUC
    # An embedding that still separates the annotated types has structure: then only the edge decoder failed.
    collapsed = at_chance and not (ari is not None and ari >= FAIR_ARI)
    if at_chance and not collapsed:
        v.findings.append(
            f"Its held-out edges score AUC {auc:.2f} (0.5 is chance): the edge decoder does not predict links, "
            f"though the embedding separates the annotated types (ARI {ari:.2f}); its link scores mean little."
        )
    if collapsed:
        v.level = "poor"
        v.findings.insert(
            0,
            f"The model learnt no structure: its held-out edges score AUC {auc:.2f} (0.5 is chance), so its "
            "embedding, and every clustering of it, is noise.",
        )
        batches = _num(metrics.get("steps_per_epoch"))
        v.next_steps.append(
            NextStep(
                "retrain",
                "Train again with a lower learning rate"
                + (
                    f" (each epoch here was {int(batches):,} steps at the preset's rate: turn on scale_lr, or "
                    "lower lr)"
                    if batches and batches > 1 and not metrics.get("scale_lr")
                    else f" (lr; each epoch here was {int(batches):,} steps, the rate already divided by them)"
                    if batches and batches > 1
                    else " (lr)"
                )
                + " on the Model & graph page; re-clustering cannot help.",
                "model",
            )
        )
    better = [
        s
        for s in v.scores
        if not s.chosen and s.ari is not None and ari is not None and s.ari >= ari + BETTER_BY
    ]
    if collapsed:
        pass
    elif better:
        b = better[0]
        v.next_steps.append(
            NextStep(
                "recluster",
                f"Another clustering of this run scores better: {b.name}, ARI {b.ari:.2f} with "
                f"{_plural(int(b.n_clusters or 0), 'cluster')} (against {ari:.2f}). Colour the Embedding page "
                "by it, or re-cluster there with those settings; the model is not trained again.",
                "embedding",
            )
        )
    elif shape or problems:
        why = {
            "merges": "to split the merged types, re-cluster with a smaller min cluster size (HDBSCAN) or a "
            "higher resolution (Leiden)",
            "splits": "to join the split types, re-cluster with a larger min cluster size (HDBSCAN) or a lower "
            "resolution (Leiden)",
        }.get(shape or "")
        if why is None:
            if "tiny" in problems:
                why = "to join the tiny clusters, re-cluster with a larger min cluster size or a lower resolution"
            elif "noise" in problems:
                why = "to place more cells, re-cluster with a smaller min samples (HDBSCAN) or with Leiden (no noise)"
            else:
                why = "to split the large cluster, re-cluster with a smaller min cluster size or a higher resolution"
        v.next_steps.append(
            NextStep(
                "recluster", f"On the Embedding page, {why}; the model is not trained again.", "embedding"
            )
        )

    learnt = learnt_expression_problem(metrics)
    if learnt:
        v.findings.append(learnt)
        weight = _num(metrics.get("kl_weight"))
        cells = _num(metrics.get("n_cells")) or _num((metrics.get("graph") or {}).get("n_nodes"))
        if weight is not None and weight > STRONG_KL:
            paper = f" (the paper's 1 / cells, {1 / cells:.1e} here)" if cells else " (the paper's 1 / cells)"
            v.next_steps.append(
                NextStep(
                    "lower_kl",
                    f"For gene-level readings, train again with a smaller KL weight{paper} on the Model & graph "
                    f"page: this run's {weight:.3g} pulls the latent means towards zero so hard that the encoder "
                    "weights no longer say which genes drive the embedding.",
                    "model",
                )
            )

    used, total = prepare.get("n_hvg_used"), prepare.get("n_genes")
    if v.level in ("fair", "poor") and used and total:
        used, total = int(used), int(total)
        if used <= FEW_GENES_SHARE * total and used < MANY_GENES:
            more = min(total, max(MANY_GENES, 2 * used))
            v.next_steps.append(
                NextStep(
                    "more_genes",
                    f"The model read {used:,} of {total:,} genes: train again with more genes (n_hvg {more:,}) "
                    "on the Model & graph page.",
                    "model",
                )
            )

    has_counts = prepare.get("x_kind") == "counts" or prepare.get("counts_source") not in (None, "")
    if v.level == "poor" and has_counts and model and model != COUNT_MODEL:
        v.next_steps.append(
            NextStep(
                "count_model",
                "The data hold raw counts: try AttentionAE-sc, which models counts with a ZINB decoder and "
                "clusters while it trains (Model & graph page).",
                "model",
            )
        )

    if this is not None and ari is not None:
        peers = [
            o
            for o in others
            if o.id != this.id
            and o.dataset == this.dataset
            and o.label_key == this.label_key
            and o.ari is not None
            and o.ari >= ari + BETTER_BY
        ]
        peers.sort(key=lambda o: -(o.ari or 0.0))
        stopped = next((o for o in peers if o.state == "stopped" and this.state == "done"), None)
        if stopped is not None:
            v.next_steps.append(
                NextStep(
                    "stopped_better",
                    f"Run '{stopped.name}' was stopped early and scored better (ARI {stopped.ari:.2f} against "
                    f"{ari:.2f}): training longer overfits here; train with fewer epochs or with restore_best "
                    "and patience set.",
                    "runs",
                )
            )
        rival = next((o for o in peers if o.model != this.model), None)
        if rival is not None:
            v.next_steps.append(
                NextStep(
                    "other_model",
                    f"{_title(rival.model)} did better on the same data: run '{rival.name}' scored ARI {rival.ari:.2f} "
                    f"against {ari:.2f}. Open it on the Runs page.",
                    "runs",
                )
            )
    return v


def learnt_expression_problem(metrics: dict, subject: str = "Its") -> str | None:
    """A sentence when the run's learnt expression does not follow the measured expression, or is one picture
    for every gene (``metrics``'s ``learnt_expression``, see :func:`scgraph_core.interpret.expression_agreement`);
    else None. ``subject`` opens the sentence ("Its", or "This run's" where no run was named before)."""
    agreement = (metrics or {}).get("learnt_expression") or {}
    positive, genes = _num(agreement.get("share_positive")), _num(agreement.get("n_genes"))
    median, top1 = _num(agreement.get("median_r")), _num(agreement.get("top1_share"))
    if positive is None or not genes:
        return None
    median_text = f"; median r {median:.2f}" if median is not None else ""
    care = ". Read its gene-level results (Expression page, P_mu markers) with care."
    if positive < LEARNT_MIN_POSITIVE:
        text = (
            f"{subject} learnt expression barely follows the measured expression: {positive:.0%} of its {int(genes):,} "
            f"genes correlate positively with their observed values across cells (half would by chance{median_text})"
        )
        if top1 is not None and top1 >= LEARNT_MAX_TOP1:
            text += f", and {top1:.0%} of it lies along one direction, so most genes show the same picture"
        return text + care
    if top1 is not None and top1 >= LEARNT_MAX_TOP1:
        return (
            f"{subject} learnt expression is nearly one picture for every gene: {top1:.0%} of it lies along one latent "
            f"direction, so a gene's learnt map says little about that gene ({positive:.0%} of its {int(genes):,} "
            f"genes correlate positively with their observed values{median_text})" + care
        )
    return None


# A label-learning run (scBiGNN) is judged on its predictions of the hidden labels, not on clusters.
GOOD_ACCURACY, FAIR_ACCURACY = 0.9, 0.75


def _predictions(v: Verdict, metrics: dict) -> Verdict:
    """The verdict on a run that predicts cell types: accuracy and macro-F1 on the hidden labels."""
    summary = metrics.get("labels") or {}
    n_pred = int(summary.get("n_unlabelled", 0)) + int(summary.get("n_held_out", 0))
    acc, f1 = _num(metrics.get("accuracy")), _num(metrics.get("macro_f1"))
    annotate = NextStep(
        "annotate",
        "On the Annotate page: the confusion matrix, the cells the model is least sure of, and the genes "
        "that mark each predicted type.",
        "annotate",
    )
    if acc is None:
        v.level = "unknown"
        v.headline = f"Predicted types for {n_pred:,} cells; no labels were hidden, so there is no accuracy."
        v.next_steps.append(
            NextStep(
                "holdout",
                "Train again hiding a share of the known labels (--holdout-fraction 0.2, or 'Hide to score' on "
                "the Annotate page) to measure how often the predictions are right.",
                "annotate",
            )
        )
        v.next_steps.append(annotate)
        return v
    v.level = "good" if acc >= GOOD_ACCURACY else ("fair" if acc >= FAIR_ACCURACY else "poor")
    held = int(summary.get("n_held_out", 0))
    v.headline = (
        f"{acc:.0%} of {held:,} hidden labels predicted right (macro-F1 {f1:.2f}); "
        f"types predicted for {n_pred:,} cells."
        if f1 is not None
        else f"{acc:.0%} of {held:,} hidden labels predicted right."
    )
    if f1 is not None and acc - f1 > 0.15:
        v.findings.append(
            "Macro-F1 is well below accuracy: the common types are right, the rare ones often wrong."
        )
        v.next_steps.append(
            NextStep(
                "more_labels",
                "Label more cells of the rare types (the Annotate page lists the labelled cells per type).",
                "annotate",
            )
        )
    v.next_steps.append(annotate)
    return v


def _title(model: str) -> str:
    try:
        from .models import base

        return base.get(model).title
    except Exception:  # an unregistered model is named as recorded
        return model


def run_score(run: Any) -> RunScore | None:
    """A run's headline score from its folder (``None`` when it has no readable metrics)."""
    try:
        metrics = run.read_json("metrics.json")
        meta, config, state = run.meta, run.config, run.state
    except Exception:  # a damaged or half-deleted run is simply not compared
        return None
    if not isinstance(metrics, dict):
        return None
    return RunScore(
        id=run.id,
        name=str(meta.get("name", run.id)),
        model=str(meta.get("model", "?")),
        dataset=str(meta.get("dataset", "")),
        state=state,
        label_key=(config or {}).get("label_key"),
        ari=_num(metrics.get("ari")),
    )


def assess_run(run: Any, store: Any = None, adata: Any = None) -> Verdict:
    """The verdict on a finished run folder, compared with the other runs of ``store`` when given."""
    metrics = run.read_json("metrics.json", {}) or {}
    if adata is None and run.file("result.h5ad").exists():
        adata = run.read_result()
    label_key = (run.config or {}).get("label_key")
    others: list[RunScore] = []
    this = None
    if store is not None:
        this = run_score(run)
        for other in store:
            if other.id != run.id:
                score = run_score(other)
                if score is not None:
                    others.append(score)
    return assess(
        metrics, adata, label_key=label_key, model=(run.meta or {}).get("model"), others=others, this=this
    )
