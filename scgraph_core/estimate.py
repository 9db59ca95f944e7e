"""How long a run will take and how much memory it will need, before it starts.

CellVGAE's numbers come from the training benchmark (``benchmarks/results/cellvgae.json``, written by
``benchmarks/bench_cellvgae.py`` on the project's 2-core CPU machine). Each benchmark row is turned into
two work counts for one epoch,

    dense = N · (D·K₁H₁ + K₁H₁·K₂H₂ + … + K_last·H_last·(K_μ + K_σ)·L)        (projection multiply-adds)
    edge  = (0.9·E + N) · (K₁H₁ + K₂H₂ + … + (K_μ + K_σ)·L)               (messages over the training
                                                                            edges and self loops)

and ``seconds per epoch = a·dense + b·edge + c`` is fitted by non-negative least squares on the
relative error (separately for bf16 and fp32). Peak memory is fitted the same way:
``process memory after loading = m₀ + m₁·N·G`` and ``training extra = p₀ + p₁·N·(Σ widths + D)``. The
fit reproduces the benchmark rows to about ±30 %, on that machine; other CPUs differ.

Clustering and interpretation after training (UMAP, the HDBSCAN grid, Leiden, attention export) are
added as a rough ``15 s + 0.9 ms per cell`` (numba compilation in a fresh worker included), from the
UMAP timings quoted in :func:`scgraph_core.cluster.umap_embedding`.

Models without benchmark rows get a **rough** estimate from their matrix sizes only (the same
throughput constants, a generic hidden width), flagged ``rough=True`` with a note saying so; GPU
numbers are rough for every model (no GPU benchmark is stored): the CPU fit divided by an assumed
speed-up.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Estimate", "estimate", "cellvgae_fit", "typical_edges"]

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cellvgae.json"
_BENCH_PRESETS = {
    "quick": {"hidden": (64, 64), "heads": (3, 3, 3, 3), "latent": 16},
    "paper": {"hidden": (128, 128), "heads": (10, 10, 10, 10), "latent": 50},
}
_BENCH_GENES = 250
# Used only if the benchmark file is missing (a fit of the same file, 2026-11-21).
_FALLBACK = {
    "bf16": {"a": 1.87e-11, "b": 2.81e-9, "c": 0.0},
    "fp32": {"a": 3.31e-11, "b": 3.07e-9, "c": 0.0},
    "memory": {"m0": 441.0, "m1": 2.1e-5, "p0": 92.0, "p1": 1.58e-5},
}
#: Assumed speed-up of a CUDA GPU over the benchmark's 2-core CPU (not measured here: rough).
GPU_SPEEDUP = 15.0
#: Fixed cost of one epoch (Python, autograd, negative sampling), assumed: the benchmark's smallest rows
#: (2,638 cells) take 0.04 s, so smaller data cannot be much faster than this.
MIN_EPOCH_S = 0.02
#: Edges per cell of a union-symmetrised kNN graph, per unit of k (measured: 1.62 on the demo, 1.83 on
#: pbmc3k at k = 5).
EDGES_PER_K = 1.7


@dataclass
class Estimate:
    """A time and memory estimate for one run (seconds and MB)."""

    model: str
    device: str
    n_cells: int
    epochs: int
    seconds_per_epoch: float
    train_seconds: float
    other_seconds: float
    peak_memory_mb: float
    rough: bool
    basis: str
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return self.train_seconds + self.other_seconds

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["total_seconds"] = self.total_seconds
        return d


def typical_edges(n_cells: int, k: int) -> int:
    """The stored (directed) edge count of a union-symmetrised kNN graph, for when it is not built yet."""
    return int(round(n_cells * k * EDGES_PER_K))


def _widths(hidden: tuple[int, ...], heads: tuple[int, ...], latent: int) -> tuple[list[int], int]:
    hidden_widths = [int(h) * int(k) for h, k in zip(hidden, heads, strict=False)]
    latent_width = (int(heads[-2]) + int(heads[-1])) * int(latent)
    return hidden_widths, latent_width


def _work(n: int, e: int, d: int, hidden: tuple[int, ...], heads: tuple[int, ...], latent: int):
    """(dense, edge, activation, attention) work counts of one CellVGAE epoch (module docstring)."""
    widths, lat = _widths(hidden, heads, latent)
    chain = [d, *widths]
    dense = n * (sum(a * b for a, b in zip(chain[:-1], chain[1:], strict=False)) + chain[-1] * lat)
    messages = 0.9 * e + n
    edge = messages * (sum(widths) + lat)
    activations = n * (sum(widths) + lat + d)
    attention = messages * sum(heads)
    return float(dense), float(edge), float(activations), float(attention)


def _nnls(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(y, 1e-9)  # relative error: small and large rows count alike
    coef, _ = nnls(A * w[:, None], y * w)
    return coef


@functools.lru_cache(maxsize=4)
def cellvgae_fit(path: str | None = None) -> dict[str, dict[str, float]]:
    """Fit the constants of the module docstring to the benchmark file (cached)."""
    path = Path(path) if path else BENCHMARK
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError):
        return dict(_FALLBACK)
    rows = [
        r for r in rows if str(r.get("impl", "")).startswith("scgraph") and r.get("preset") in _BENCH_PRESETS
    ]
    if len(rows) < 3:
        return dict(_FALLBACK)
    out: dict[str, dict[str, float]] = {}
    for precision in ("bf16", "fp32"):
        chosen = [r for r in rows if r.get("precision") == precision]
        if len(chosen) < 3:
            out[precision] = dict(_FALLBACK[precision])
            continue
        A, y = [], []
        for r in chosen:
            p = _BENCH_PRESETS[r["preset"]]
            dense, edge, _, _ = _work(
                r["n_cells"], r["n_edges"], _BENCH_GENES, p["hidden"], p["heads"], p["latent"]
            )
            A.append([dense, edge, 1.0])
            y.append(r["seconds_per_epoch"])
        a, b, c = _nnls(np.array(A), np.array(y))
        out[precision] = {"a": float(a), "b": float(b), "c": float(c)}
    base = {r["n_cells"]: r["rss_after_data_mb"] for r in rows if "rss_after_data_mb" in r}
    B = np.array([[1.0, n * _BENCH_GENES] for n in base])
    m0, m1 = _nnls(B, np.array(list(base.values())))
    A, y = [], []
    for r in rows:
        p = _BENCH_PRESETS[r["preset"]]
        _, _, act, _ = _work(r["n_cells"], r["n_edges"], _BENCH_GENES, p["hidden"], p["heads"], p["latent"])
        A.append([1.0, act])
        y.append(max(1.0, r["peak_rss_mb"] - r["rss_after_data_mb"]))
    p0, p1 = _nnls(np.array(A), np.array(y))
    out["memory"] = {"m0": float(m0), "m1": float(m1), "p0": float(p0), "p1": float(p1)}
    return out


def _epochs_of(params: Any) -> int:
    """Total epochs: the ``epochs`` parameter, or the sum of every ``*_epochs`` parameter."""
    total = 0
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if (f.name == "epochs" or f.name.endswith("_epochs")) and isinstance(value, int):
            total += value
    return max(total, 1)


def _other_seconds(n_cells: int) -> float:
    return 15.0 + 0.9e-3 * n_cells


def estimate(
    config: Any,
    n_cells: int,
    *,
    n_genes: int | None = None,
    n_features: int | None = None,
    n_edges: int | None = None,
    device: str = "cpu",
    precision: str = "bf16",
    benchmark: str | None = None,
) -> Estimate:
    """Estimate time and memory for ``config`` (a :class:`~scgraph_core.pipeline.RunConfig`).

    ``n_genes`` is the genes of the loaded data (memory of the matrices), ``n_features`` the model's
    input genes (default: ``config.prepare.n_hvg``, capped at ``n_genes``), ``n_edges`` the stored edge
    count of the graph (default: :func:`typical_edges`). ``device`` is the resolved device ("cpu",
    "cuda", "mps"), ``precision`` the resolved one ("bf16" or "fp32").
    """
    n_cells = int(n_cells)
    genes = int(n_genes) if n_genes else int(config.prepare.n_hvg or 1000)
    features = int(n_features) if n_features else int(config.prepare.n_hvg or genes)
    features = min(features, genes) if genes else features
    edges = int(n_edges) if n_edges is not None else typical_edges(n_cells, config.graph.k)
    fit = cellvgae_fit(benchmark)
    mem = fit["memory"]
    notes: list[str] = []
    params = config.params
    epochs = _epochs_of(params)
    base_mb = mem["m0"] + mem["m1"] * n_cells * genes

    if config.model == "cellvgae":
        heads = tuple(params.heads) if params.conv != "gcn" else (1,) * (len(params.hidden) + 2)
        dense, edge, act, _ = _work(n_cells, edges, features, tuple(params.hidden), heads, params.latent)
        if params.conv == "gatv2":
            dense *= 2.0  # source and target projections
            notes.append("GATv2 is not in the benchmark; counted as twice the GAT projections.")
        c = fit.get(precision, fit["fp32"])
        per_epoch = c["a"] * dense + c["b"] * edge + c["c"]
        extra_mb = mem["p0"] + mem["p1"] * act
        if params.regularizer == "mmd":
            notes.append("The MMD term is not in the benchmark; it adds time and memory on many cells.")
        rough = False
        basis = (
            "fitted to the CellVGAE training benchmark (benchmarks/results/cellvgae.json, 2-core CPU); "
            "within about ±30 % of the measured rows on that machine"
        )
    else:
        width = _generic_width(params)
        latent = int(getattr(params, "latent", 0) or 32)
        dense = n_cells * (features * width + width * width + width * latent) * 3.0  # encoder + decoder
        edge = (edges + n_cells) * width
        c = fit.get(precision, fit["fp32"])
        per_epoch = c["a"] * dense + c["b"] * edge + c["c"]
        extra_mb = mem["p0"] + mem["p1"] * n_cells * (features + 4 * width) * 2.0
        rough = True
        basis = (
            "rough guess from the matrix sizes only: this model has no benchmark yet, so the CellVGAE "
            "throughput constants are applied to an assumed network width"
        )
        notes.append(
            "Models with dense cell x cell steps (for example all-cell attention) can need far more time "
            "and memory than this guess on many cells."
        )

    per_epoch = max(per_epoch, MIN_EPOCH_S)
    if device == "cuda":
        per_epoch /= GPU_SPEEDUP
        rough = True
        notes.append(
            f"No GPU benchmark is stored: the CPU fit is divided by an assumed {GPU_SPEEDUP:.0f}x speed-up "
            "(rough). Memory is split between the GPU (training) and the CPU (data)."
        )
    elif device == "mps":
        rough = True
        notes.append("Apple MPS is not benchmarked; the CPU numbers are shown.")
    train_seconds = per_epoch * epochs
    if math.isnan(train_seconds):
        train_seconds = float("inf")
    return Estimate(
        model=config.model,
        device=device,
        n_cells=n_cells,
        epochs=epochs,
        seconds_per_epoch=float(per_epoch),
        train_seconds=float(train_seconds),
        other_seconds=_other_seconds(n_cells),
        peak_memory_mb=float(base_mb + extra_mb),
        rough=rough,
        basis=basis,
        notes=notes,
    )


def _generic_width(params: Any) -> int:
    hidden = getattr(params, "hidden", None)
    if isinstance(hidden, (tuple, list)) and hidden:
        return int(max(hidden))
    if isinstance(hidden, int) and hidden > 0:
        return hidden
    return 256


def format_seconds(seconds: float | None) -> str:
    """'45 s', '3 min 20 s', '2 h 5 min' (for estimates and ETAs)."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"
