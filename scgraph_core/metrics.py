"""How good a clustering, a classification or an imputation is.

Clustering is scored against known cell types with the adjusted Rand index (ARI) and normalised mutual
information (NMI), and without labels by the silhouette width on an embedding. Imputation is scored on
held-out entries by the median L1 distance, the root-mean-square error and the cosine similarity (the
measures of the scGNN paper).

Conventions shared by every function here:

* Cells whose true label is missing (NaN / None / a missing categorical) are left out of label-based
  scores; the remaining cells are scored as usual.
* Predicted noise (label ``noise_label``, -1 as HDBSCAN writes it) is *kept* for ARI, NMI and accuracy:
  all noise cells form one extra group. A method that leaves many cells unassigned is therefore penalised
  rather than scored only on the cells it was sure about. Noise is left out of the silhouette, which is
  only defined for points that belong to a cluster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from .errors import ConfigError


def _labels(values: Any, name: str) -> pd.Series:
    """Labels as a 1-D pandas Series (keeps strings, categoricals and missing values as they are)."""
    if isinstance(values, pd.Series):
        series = values.reset_index(drop=True)
    else:
        array = values if isinstance(values, pd.Categorical) else np.asarray(values)
        if getattr(array, "ndim", 1) != 1:
            raise ConfigError(f"{name} must be one label per cell (a 1-D array); got shape {array.shape}.")
        series = pd.Series(array)
    return series


def _codes(series: pd.Series) -> np.ndarray:
    """Integer codes of the labels; missing labels get -1 (callers drop them first)."""
    codes, _ = pd.factorize(series, use_na_sentinel=True)
    return codes


def _same_length(a: pd.Series, b: pd.Series, names: str) -> None:
    if len(a) != len(b):
        raise ConfigError(f"{names} must have one entry per cell; got {len(a)} and {len(b)} entries.")


def _paired(labels_true: Any, labels_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of true and predicted labels over the cells that have a true label."""
    true = _labels(labels_true, "labels_true")
    pred = _labels(labels_pred, "labels_pred")
    _same_length(true, pred, "labels_true and labels_pred")
    if pred.isna().any():
        raise ConfigError("labels_pred has missing values; mark unassigned cells with the noise label (-1).")
    known = ~true.isna().to_numpy()
    return _codes(true[known]), _codes(pred[known])


def silhouette(
    embedding: Any,
    labels: Any,
    *,
    sample: int | None = 5000,
    seed: int | None = 0,
    noise_label: Any = -1,
) -> float | None:
    """Mean silhouette width of ``labels`` on ``embedding`` (Euclidean), noise excluded.

    s(i) = (b(i) - a(i)) / max(a(i), b(i)) with a(i) the mean distance to the own cluster and b(i) the
    mean distance to the nearest other cluster. It costs O(n^2) distances, so above ``sample`` clustered
    cells a uniform subsample of that size is scored, drawn with ``seed`` (``sample=None`` scores all).

    Returns None when fewer than two clusters remain (the width is undefined), or when every scored
    point is its own cluster.
    """
    lab = _labels(labels, "labels")
    if sp.issparse(embedding):
        emb = sp.csr_matrix(embedding)
    else:
        emb = np.asarray(embedding)
        if emb.ndim == 1:
            emb = emb[:, None]
        if emb.ndim != 2:
            raise ConfigError(f"The embedding must be a cells x dimensions matrix; got shape {emb.shape}.")
    if emb.shape[0] != len(lab):
        raise ConfigError(
            f"The embedding has {emb.shape[0]} rows but there are {len(lab)} labels; give one row per cell."
        )
    if sample is not None and sample < 2:
        raise ConfigError(f"The silhouette sample size must be at least 2; got {sample}.")
    keep = (~lab.isna() & (lab != noise_label)).to_numpy()
    codes = _codes(lab[keep])
    emb = emb[keep]
    if len(np.unique(codes)) < 2:
        return None
    if sample is not None and len(codes) > sample:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(codes), size=sample, replace=False))
        emb, codes = emb[rows], codes[rows]
    n_groups = len(np.unique(codes))
    if n_groups < 2 or n_groups >= len(codes):
        return None
    return float(silhouette_score(emb, codes, metric="euclidean"))


#: :func:`grid_silhouettes` keeps all cells' distances when there are at most this many (float64; 200 MB).
_SHARED_DISTANCES_MAX = 5000 * 5000


def _all_distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances between all rows of ``x`` (|a|² + |b|² - 2ab in float64, clipped at 0)."""
    sq = np.einsum("ij,ij->i", x, x)
    d = x @ x.T
    d *= -2.0
    d += sq[:, None]
    d += sq[None, :]
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)  # a cell's distance to itself, exactly
    return np.sqrt(d, out=d)


def _width_sum(sums: np.ndarray, mine: np.ndarray, sizes: np.ndarray) -> float:
    """Sum of silhouette widths of cells whose distance sums per cluster are ``sums`` [cells, k]."""
    rows = np.arange(len(mine))
    n_mine = sizes[mine]
    a = sums[rows, mine] / np.maximum(n_mine - 1.0, 1.0)
    means = sums / sizes
    means[rows, mine] = np.inf
    b = means.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    s[n_mine == 1] = 0.0  # a cluster of one cell
    return float(s.sum())


def grid_silhouettes(
    points: Any, labelings: Any, *, sample: int | None = 5000, seed: int | None = 0, noise_label: Any = -1
) -> list[float | None]:
    """:func:`silhouette` of each labeling (rows of ``labelings``) on the same ``points``.

    Where a labeling's clustered cells are all scored (no subsample) the cells' distances are computed
    once for all labelings (up to 5,000 cells), so each costs one matrix product (distances x one-hot
    clusters gives every cell's distance sum per cluster) instead of scikit-learn's chunked reduction:
    the HDBSCAN grid scores up to 16 labelings of one layout. Same definition as scikit-learn's (a(i) the
    mean distance to the other cells of its cluster, b(i) the smallest mean distance to another cluster,
    s(i) = (b - a) / max(a, b), 0 for a cluster of one cell) and the same value up to float rounding
    (tested). Otherwise, and for sparse points, :func:`silhouette` per labeling.
    """
    rows = np.asarray(labelings)
    pts = points if sp.issparse(points) else np.asarray(points)
    m = pts.shape[0]
    shared = not sp.issparse(pts) and pts.ndim == 2 and m * m <= _SHARED_DISTANCES_MAX
    dist: np.ndarray | None = None
    out: list[float | None] = []
    for labels in rows:
        keep = labels != noise_label
        n_keep = int(keep.sum())
        if not shared or rows.shape[1] != m or (sample is not None and n_keep > sample):
            out.append(silhouette(pts, labels, sample=sample, seed=seed, noise_label=noise_label))
            continue
        own = np.unique(labels[keep], return_inverse=True)[1].ravel()
        k = int(own.max()) + 1 if n_keep else 0
        if k < 2 or k >= n_keep:
            out.append(None)
            continue
        if dist is None:
            dist = _all_distances(np.asarray(pts, dtype=np.float64))
        onehot = np.zeros((m, k), dtype=np.float64)
        onehot[np.flatnonzero(keep), own] = 1.0  # noise cells count in no cluster
        sums = (dist @ onehot)[keep]
        out.append(_width_sum(sums, own, onehot.sum(axis=0)) / n_keep)
    return out


def clustering_metrics(
    labels_true: Any,
    labels_pred: Any,
    *,
    embedding: Any = None,
    noise_label: Any = -1,
    silhouette_sample: int | None = 5000,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Scores of one clustering.

    Returns a dict with

    * ``ari``, ``nmi``: against ``labels_true`` (strings, categoricals or numbers); cells with a missing
      true label are left out; noise cells count as one extra predicted group (see the module docstring).
      None when ``labels_true`` is None or no cell has a true label. NMI uses the arithmetic mean of the
      entropies (scikit-learn's default).
    * ``silhouette``: on ``embedding`` with noise excluded (see :func:`silhouette`); None without an
      embedding or with fewer than two clusters.
    * ``n_clusters``: clusters excluding noise; ``noise``: number of noise cells; ``noise_fraction``.
    """
    pred = _labels(labels_pred, "labels_pred")
    n = len(pred)
    noise = int((pred == noise_label).sum())
    out: dict[str, Any] = {
        "ari": None,
        "nmi": None,
        "silhouette": None,
        "n_clusters": int(pred[pred != noise_label].nunique()),
        "noise": noise,
        "noise_fraction": noise / n if n else 0.0,
    }
    if labels_true is not None:
        true_codes, pred_codes = _paired(labels_true, labels_pred)
        if len(true_codes):
            out["ari"] = float(adjusted_rand_score(true_codes, pred_codes))
            out["nmi"] = float(normalized_mutual_info_score(true_codes, pred_codes))
    if embedding is not None:
        out["silhouette"] = silhouette(
            embedding, pred, sample=silhouette_sample, seed=seed, noise_label=noise_label
        )
    return out


def accuracy(labels_true: Any, labels_pred: Any, *, match: bool = False) -> float | None:
    """Fraction of cells whose predicted label equals the true one (missing true labels left out).

    With ``match=True`` the predicted labels are cluster ids rather than cell types: each cluster is first
    mapped one-to-one onto a cell type so that the most cells agree (Hungarian algorithm on the contingency
    table), the "clustering accuracy" of scDeepCluster and scGNN. Clusters left without a partner (more
    clusters than types) count as wrong. Returns None when no cell has a true label.
    """
    true = _labels(labels_true, "labels_true")
    pred = _labels(labels_pred, "labels_pred")
    _same_length(true, pred, "labels_true and labels_pred")
    known = ~true.isna().to_numpy()
    if not known.any():
        return None
    if not match:
        # Compare as text so that 1 and "1" (a label read back from a file) agree.
        agree = true[known].astype(str).to_numpy() == pred[known].astype(str).to_numpy()
        return float(agree.mean())
    true_codes, pred_codes = _paired(true, pred)
    table = np.zeros((pred_codes.max() + 1, true_codes.max() + 1), dtype=np.int64)
    np.add.at(table, (pred_codes, true_codes), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(true_codes))


def imputation_errors(truth: Any, imputed: Any) -> dict[str, float | None]:
    """Errors of imputed values against the true values of the same entries.

    ``truth`` and ``imputed`` hold the held-out entries (typically the non-zeros masked before training),
    in the same order; 2-D inputs are flattened. Returns

    * ``median_l1``: median_i |t_i - x_i|;
    * ``rmse``: sqrt(mean_i (t_i - x_i)^2);
    * ``cosine``: t.x / (|t| |x|), None when either vector is all zeros.
    """
    t = np.asarray(truth, dtype=np.float64).ravel()
    x = np.asarray(imputed, dtype=np.float64).ravel()
    if np.shape(truth) != np.shape(imputed):
        raise ConfigError(
            f"truth and imputed must hold the same entries; got shapes {np.shape(truth)} and {np.shape(imputed)}."
        )
    if t.size == 0:
        raise ConfigError("No entries to score: give at least one held-out value.")
    if not (np.isfinite(t).all() and np.isfinite(x).all()):
        raise ConfigError("truth and imputed must be finite numbers; remove NaN or infinite values first.")
    diff = t - x
    norms = np.linalg.norm(t) * np.linalg.norm(x)
    return {
        "median_l1": float(np.median(np.abs(diff))),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "cosine": float(t @ x / norms) if norms > 0 else None,
    }
