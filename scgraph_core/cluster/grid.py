"""The HDBSCAN grid (CellVGAE, MODELS.md 1.5) and the rules that pick one of its labelings.

:func:`hdbscan_grid` runs HDBSCAN over min_cluster_size x min_samples and keeps every labeling; one
is chosen without labels among the runs with at most 5 % noise and at least two clusters (pitfall 7)
by "silhouette", "consensus" (:func:`consensus_scores`, built on :func:`pair_agreement`) or "dbcv".
:func:`best_with_labels` is the "best-of" choice that uses the cell types (MODELS.md 6.3).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..metrics import grid_silhouettes
from .common import NOISE, matrix

SELECT_RULES = ("consensus", "silhouette", "dbcv")


def pair_agreement(a: Any, b: Any) -> float:
    """Adjusted Rand index between two labelings of the same cells, noise (-1) counted as one group.

        ARI = (Σ_ij C(n_ij, 2) − E) / (½ [Σ_i C(a_i, 2) + Σ_j C(b_j, 2)] − E),
        E = Σ_i C(a_i, 2) · Σ_j C(b_j, 2) / C(n, 2)

    with n_ij the contingency table and a_i, b_j its margins (Hubert & Arabie 1985). Computed from one
    ``bincount`` of the paired codes, so it costs O(n) and no cells x cells matrix. Two labelings that
    are both a single group (or both all singletons) agree perfectly: 1.0, as scikit-learn says.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"Both labelings need one label per cell; got shapes {a.shape} and {b.shape}.")
    n = a.size
    _, ca = np.unique(a, return_inverse=True)
    _, cb = np.unique(b, return_inverse=True)
    nb = int(cb.max()) + 1 if n else 1
    joint = np.bincount(ca.astype(np.int64) * nb + cb, minlength=0).astype(np.float64)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1.0)).sum() / 2.0)

    sum_ij = pairs(joint)
    sum_a = pairs(np.bincount(ca).astype(np.float64))
    sum_b = pairs(np.bincount(cb).astype(np.float64))
    total = n * (n - 1) / 2.0
    expected = sum_a * sum_b / total if total else 0.0
    top = (sum_a + sum_b) / 2.0
    if top == expected:  # both trivial (one group, or all singletons)
        return 1.0
    return float((sum_ij - expected) / (top - expected))


def consensus_scores(
    candidates: Any, voters: Sequence[Any], *, self_index: Sequence[int] | None = None
) -> np.ndarray:
    """How well each candidate labeling agrees with a set of voting labelings: mean ARI.

        score(c) = 1/|V_c| Σ_{v ∈ V_c} ARI(c, v)

    This is the medoid ("median partition") choice of cluster ensembles (Strehl & Ghosh, JMLR 3:583,
    2002): the labeling that shares the most with all the others, so a run that splits a cell type into
    fragments, or merges two because of one layout, loses to the run most runs agree with.
    ``candidates`` is [C, N]; ``voters`` a sequence of [N] labelings. ``self_index[c]`` (optional) is the
    position of candidate c among the voters, left out of its own mean (V_c = V minus itself).
    Identical labelings are compared once (grid points often agree).
    """
    cand = np.asarray(candidates)
    if cand.ndim != 2:
        raise ConfigError(f"candidates must be a [runs, cells] array of labelings; got shape {cand.shape}.")
    votes = [np.asarray(v) for v in voters]
    if not votes:
        raise ConfigError("consensus_scores needs at least one voting labeling.")
    if self_index is not None and len(self_index) != len(cand):
        raise ConfigError("self_index needs one voter position per candidate.")
    memo: dict[tuple[bytes, bytes], float] = {}
    keys = [v.astype(np.int64).tobytes() for v in votes]
    scores = np.empty(len(cand), dtype=np.float64)
    for c, labels in enumerate(cand):
        ck = labels.astype(np.int64).tobytes()
        total, count = 0.0, 0
        for j, (vk, v) in enumerate(zip(keys, votes, strict=True)):
            if self_index is not None and j == self_index[c]:
                continue
            pair = (ck, vk) if ck <= vk else (vk, ck)
            if pair not in memo:
                memo[pair] = 1.0 if ck == vk else pair_agreement(labels, v)
            total += memo[pair]
            count += 1
        scores[c] = total / count if count else np.nan
    return scores


@dataclass
class GridResult:
    """All runs of an HDBSCAN grid and the automatic, label-free choice among them.

    ``runs[i]`` describes row ``labels[i]``: min_cluster_size, min_samples, n_clusters (noise
    excluded), noise (cells), noise_fraction, silhouette (noise excluded, on the clustered points; None
    below two clusters), eligible (noise_fraction <= max_noise with at least two clusters), consensus
    (mean ARI with the eligible runs of every layout; None unless ``select`` is "consensus" or for
    ineligible runs) and dbcv (HDBSCAN's relative validity; None unless ``select`` is "dbcv").
    ``chosen`` is the index picked by ``select``; ``rule`` a sentence saying how it was picked;
    ``n_layouts`` how many point sets voted (1 + len(extra_points)) and ``n_voters`` how many runs.
    """

    runs: list[dict[str, Any]]
    labels: np.ndarray
    chosen: int
    rule: str
    max_noise: float = 0.05
    select: str = "silhouette"
    n_layouts: int = 1
    n_voters: int = 0

    @property
    def chosen_labels(self) -> np.ndarray:
        """Labels of the automatically chosen run (noise -1)."""
        return self.labels[self.chosen]

    @property
    def chosen_run(self) -> dict[str, Any]:
        """The row of ``runs`` that was chosen."""
        return self.runs[self.chosen]


def _named(run: dict[str, Any]) -> str:
    return f"min_cluster_size={run['min_cluster_size']}, min_samples={run['min_samples']}"


def _choose(runs: list[dict[str, Any]], max_noise: float, select: str = "silhouette") -> tuple[int, str]:
    """The label-free choice among eligible runs (noise <= max_noise, >= 2 clusters), else lowest noise.

    "silhouette": best silhouette. "consensus": best consensus score, ties by silhouette. "dbcv": best
    relative validity, ties by silhouette. ``max()`` keeps the first of equal keys, i.e. the earliest
    grid point, so the choice is deterministic.
    """

    def sil(i: int) -> float:
        s = runs[i]["silhouette"]
        return -np.inf if s is None else s

    def score(i: int, key: str) -> float:
        v = runs[i].get(key)
        return -np.inf if v is None or not np.isfinite(v) else float(v)

    eligible = [i for i, r in enumerate(runs) if r["eligible"]]
    pool = f"the {len(eligible)} runs with noise <= {max_noise:.0%} and at least 2 clusters"
    if eligible:
        if select == "consensus":
            best = max(eligible, key=lambda i: (score(i, "consensus"), sil(i)))
            return best, (
                f"the run that agrees best with the others (mean ARI {runs[best]['consensus']:.3f} against "
                f"the eligible runs of every layout) among {pool}: {_named(runs[best])}"
            )
        if select == "dbcv":
            best = max(eligible, key=lambda i: (score(i, "dbcv"), sil(i)))
            return best, (
                f"best HDBSCAN relative validity (DBCV {runs[best]['dbcv']:.3f}) among {pool}: "
                f"{_named(runs[best])}"
            )
        best = max(eligible, key=sil)
        return best, f"best silhouette among {pool}: {_named(runs[best])}"
    several = [i for i, r in enumerate(runs) if r["n_clusters"] >= 2]
    fallback = several or list(range(len(runs)))
    best = min(fallback, key=lambda i: (runs[i]["noise_fraction"], -sil(i)))
    what = "with at least 2 clusters" if several else "(no run found 2 clusters)"
    return best, (
        f"no run had noise <= {max_noise:.0%} with at least 2 clusters; fell back to the lowest noise "
        f"{what}, ties broken by silhouette: {_named(runs[best])} ({runs[best]['noise_fraction']:.1%} noise)"
    )


def _run_grid(
    pts: np.ndarray, sizes: tuple[int, ...], samples: tuple[int, ...], validity: bool
) -> tuple[np.ndarray, list[float | None]]:
    """Labels [len(sizes)·len(samples), N] (min_cluster_size-major) and, if asked, relative validity.

    HDBSCAN's single-linkage tree depends on the points and min_samples only (min_cluster_size just
    condenses it), so the runs share one tree per min_samples value through hdbscan's own ``memory``
    cache (a joblib cache in a temporary folder, removed afterwards): 4 trees for the 16-point grid.
    Without a writable temporary folder each run builds its own tree (same labels, slower).
    """
    import hdbscan
    from joblib import Memory

    out = np.empty((len(sizes) * len(samples), pts.shape[0]), dtype=np.int64)
    dbcv: list[float | None] = []
    with contextlib.ExitStack() as stack:
        try:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="scgraph-hdbscan-"))
        except OSError:  # no writable temporary folder: every run builds its own tree, as before
            folder = None
        memory = Memory(folder, verbose=0)
        for r, (size, ms) in enumerate((a, b) for a in sizes for b in samples):
            model = hdbscan.HDBSCAN(
                min_cluster_size=int(size), min_samples=int(ms), gen_min_span_tree=validity, memory=memory
            )
            out[r] = model.fit_predict(pts)
            value = None
            if validity:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-noise runs divide by zero inside
                    raw = float(model.relative_validity_)
                value = raw if np.isfinite(raw) else None
            dbcv.append(value)
    return out, dbcv


def hdbscan_grid(
    points: Any,
    *,
    min_cluster_sizes: tuple[int, ...] = (10, 25, 50, 100),
    min_samples: tuple[int, ...] = (5, 10, 25, 50),
    max_noise: float = 0.05,
    silhouette_sample: int | None = 5000,
    seed: int | None = 0,
    select: str = "silhouette",
    extra_points: Sequence[Any] = (),
) -> GridResult:
    """Run ``hdbscan.HDBSCAN`` for every (min_cluster_size, min_samples) pair on ``points``.

    ``points`` are normally UMAP coordinates of the embedding (CellVGAE clusters on them), but any
    cells x dims matrix works. Runs are ordered min_cluster_size-major. HDBSCAN itself is
    deterministic; ``seed`` only draws the silhouette subsample (above ``silhouette_sample`` cells).

    ``select`` picks one run without labels among those with noise <= ``max_noise`` and >= 2 clusters:
    "silhouette" (the best silhouette on ``points``, MODELS.md 1.7 pitfall 7; the default here for
    compatibility), "consensus" (:func:`consensus_scores`: the run agreeing best with the other eligible
    runs) or "dbcv" (HDBSCAN's relative validity, a density-based validity index). With "consensus",
    ``extra_points`` (other layouts of the same cells, e.g. UMAPs with other seeds) get the same grid
    and their eligible runs vote too; the candidates are always the runs on ``points``, so the chosen
    labeling is one of the returned ``labels``. Without eligible runs: the lowest-noise run.
    """
    pts = matrix(points, "The points to cluster", allow_sparse=False)
    n = pts.shape[0]
    sizes, samples = tuple(min_cluster_sizes), tuple(min_samples)
    if not sizes or not samples:
        raise ConfigError("The HDBSCAN grid needs at least one min_cluster_size and one min_samples value.")
    if min(sizes) < 2:
        raise ConfigError(f"HDBSCAN min_cluster_size values must be at least 2; got {min(sizes)}.")
    if min(samples) < 1:
        raise ConfigError(f"HDBSCAN min_samples values must be at least 1; got {min(samples)}.")
    if max(samples) >= n:
        raise ConfigError(
            f"HDBSCAN min_samples={max(samples)} needs more cells than the {n} given; use smaller min_samples values."
        )
    if not 0.0 <= max_noise <= 1.0:
        raise ConfigError(f"max_noise is a fraction of cells between 0 and 1; got {max_noise}.")
    if select not in SELECT_RULES:
        raise ConfigError(f"Unknown HDBSCAN selection rule {select!r}; use one of {', '.join(SELECT_RULES)}.")
    extra = [matrix(e, "extra_points", allow_sparse=False) for e in extra_points]
    for e in extra:
        if e.shape[0] != n:
            raise ConfigError(f"Every extra layout needs one row per cell ({n}); got {e.shape[0]} rows.")

    all_labels, dbcv = _run_grid(pts, sizes, samples, validity=select == "dbcv")
    runs: list[dict[str, Any]] = []
    first: dict[bytes, int] = {}  # grid points often agree; score each labeling once
    for r in range(len(all_labels)):
        first.setdefault(all_labels[r].tobytes(), r)
    distinct = list(first.values())
    found = grid_silhouettes(pts, all_labels[distinct], sample=silhouette_sample, seed=seed)
    scores = dict(zip(first, found, strict=True))
    pairs = [(a, b) for a in sizes for b in samples]
    for r, (size, ms) in enumerate(pairs):
        labels = all_labels[r]
        key = labels.tobytes()
        noise = int((labels == NOISE).sum())
        n_clusters = len(np.unique(labels[labels != NOISE]))
        runs.append(
            {
                "min_cluster_size": int(size),
                "min_samples": int(ms),
                "n_clusters": n_clusters,
                "noise": noise,
                "noise_fraction": noise / n,
                "silhouette": scores[key],
                "eligible": noise / n <= max_noise and n_clusters >= 2,
                "consensus": None,
                "dbcv": dbcv[r],
            }
        )

    def eligible_rows(labels: np.ndarray) -> list[int]:
        out = []
        for r, row in enumerate(labels):
            k = len(np.unique(row[row != NOISE]))
            if (row == NOISE).sum() / n <= max_noise and k >= 2:
                out.append(r)
        return out

    n_voters = 0
    if select == "consensus":
        cand = [i for i, run in enumerate(runs) if run["eligible"]]
        voters = [all_labels[i] for i in cand]
        for e in extra:
            more, _ = _run_grid(e, sizes, samples, validity=False)
            voters.extend(more[i] for i in eligible_rows(more))
        n_voters = len(voters)
        if cand and n_voters > 1:
            found = consensus_scores(all_labels[cand], voters, self_index=list(range(len(cand))))
            for i, value in zip(cand, found.tolist(), strict=True):
                runs[i]["consensus"] = value
        elif cand:
            runs[cand[0]]["consensus"] = 1.0  # the only eligible run agrees with itself
    chosen, rule = _choose(runs, max_noise, select)
    return GridResult(
        runs=runs,
        labels=all_labels,
        chosen=chosen,
        rule=rule,
        max_noise=max_noise,
        select=select,
        n_layouts=1 + len(extra),
        n_voters=n_voters,
    )


def best_with_labels(grid: GridResult, labels_true: Any) -> int:
    """Index of the grid run with the highest ARI against ``labels_true`` (uses the cell types!).

    This is the "best-of" choice of CellVGAE's paper. Report it only beside ``grid.chosen``, the choice
    made without labels, never alone. Noise counts as one group and cells without a label are left out,
    as in :func:`scgraph_core.metrics.clustering_metrics`.
    """
    from ..metrics import clustering_metrics

    if len(labels_true) != grid.labels.shape[1]:
        raise ConfigError(
            f"labels_true has {len(labels_true)} entries but the grid clustered {grid.labels.shape[1]} cells."
        )
    aris = [clustering_metrics(labels_true, row)["ari"] for row in grid.labels]
    if all(a is None for a in aris):
        raise ConfigError("No cell has a true label, so no run can be chosen by ARI.")
    return int(np.argmax([-np.inf if a is None else a for a in aris]))
