"""scVGAE (Inoue, 2024): a graph convolutional autoencoder with zero-inflated negative binomial heads,
for imputing scRNA-seq counts (MODELS.md section 4). "Fixed" preset: the paper's intent with the
published code's bugs fixed (MODELS.md 4.6).

The pure module, tensors in and tensors out. With X the model input (X_ij = √(x_ij / s_i), the raw counts
library-size normalised to the median library size, then square-rooted), Â = D^-½ (A + I) D^-½:

    h = Dropout_0.2(ReLU(GraphNorm(Â X W₀ᵀ + b₀)))                       encoder, h ∈ R^{N×128}
    M = exp(Â h W_Mᵀ + b_M),  Θ = exp(Â h W_Θᵀ + b_Θ),  Π = σ(Â h W_Πᵀ + b_Π)  GCN heads, each N×G
    X̂ = decoder(√M) + BN_G(X) + BN_N(Xᵀ)ᵀ                                  expression decoder + skip terms
    decoder = Linear(G→1024) → BN → ReLU → Dropout_0.4 → Linear(1024→G) → ReLU

BN_G standardises each gene across cells; BN_N standardises each cell across genes (N affine pairs, so
the model is transductive). The three heads are graph convolutions; Â (h Wᵀ) = (Â h) Wᵀ, so they share
one propagation of h (N×128) instead of three of an N×G matrix.

Loss (paper section "Loss"; MODELS.md 4.4), both terms mean-reduced:

    L = α · MSE(X̂, X) + (1 − α) · NLL_ZINB(x; s·M, Θ, Π),   α = 0.05

with x the raw counts and s the size factors, so the ZINB term fits counts and trains all three heads.
The imputed expression is s·M (expected counts with the dropout zeros removed), from an eval-mode pass.

Graph (:func:`build_graph`): the paper's linear kernel S = X Xᵀ with a global 85th-percentile threshold
(binary, about 0.15·N partners per cell), computed blockwise; by default on gene-centred X (``kernel``),
and replaced by a kNN graph above 5,000 cells (recorded as a deviation). Training (:meth:`ScVGAE.train_net`):
full batch Adam on every observed count, as in the paper; optionally (``val_fraction``) a share of the
non-zero counts is hidden as a validation set and the epoch that recovers them best is kept. What differs
from the published code, and why, is listed in MODELS.md 4.4-4.6 and in the parameter help texts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..params import param
from ..train import Stage, StageOutcome, Trainer
from .base import Model, Result, register
from .layers import GCNLayer, graph_structure

if TYPE_CHECKING:
    import anndata

    from ..data import Prepared
    from ..graphs import Graph

LOSSES = ("fixed", "legacy")
OUTPUTS = ("mean", "zinb_mean", "reconstruction")


class _Propagate(torch.autograd.Function):
    """out = S @ h for a constant sparse S given with its transpose (backward: dh = Sᵀ @ dout)."""

    @staticmethod
    def forward(ctx, h: Tensor, s: Tensor, s_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.s_t = s_t
        with torch.autocast(h.device.type, enabled=False):
            return torch.sparse.mm(s, h.float())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        with torch.autocast(grad.device.type, enabled=False):
            return torch.sparse.mm(ctx.s_t, grad.contiguous()), None, None


def propagate(h: Tensor, edge_index: Tensor) -> Tensor:
    """Â h with Â = D^-½ (A + I) D^-½ (GCN normalisation, self loops added), as a sparse product."""
    import warnings

    n = h.size(0)
    crow, col, vals, crow_t, col_t, vals_t = graph_structure(edge_index, n, True).gcn_operator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        s = torch.sparse_csr_tensor(crow, col, vals.float(), (n, n), check_invariants=False)
        s_t = torch.sparse_csr_tensor(crow_t, col_t, vals_t.float(), (n, n), check_invariants=False)
    return _Propagate.apply(h, s, s_t)


class CountTarget:
    """Raw counts as a ZINB target, with the positions of the non-zero entries precomputed.

    :meth:`nll` equals ``counts.zinb_nll(x, μ, θ, pi_logit=…)`` (mean over all N·G entries) but evaluates
    the lgamma terms only where x > 0: most entries of a count matrix are 0 and their likelihood,
    log(π + (1 − π)(θ / (θ + μ))^θ), needs none.
    """

    def __init__(self, counts: Tensor) -> None:
        flat = counts.reshape(-1)
        self.shape = tuple(counts.shape)
        self.nonzero = torch.nonzero(flat > 0.5, as_tuple=True)[0]
        self.values = flat[self.nonzero]
        self.is_zero = (flat <= 0.5).reshape(self.shape).to(counts.dtype)

    def nll(self, mu: Tensor, theta: Tensor, pi_logit: Tensor) -> Tensor:
        from .counts import zinb_log_prob

        with torch.autocast(mu.device.type, enabled=False):
            mu, theta, pi_logit = mu.float(), theta.float(), pi_logit.float()
            eps = 1e-8
            log_p_theta = torch.log(theta + eps) - torch.log(theta + mu + eps)
            zero = torch.logaddexp(-F.softplus(-pi_logit), -F.softplus(pi_logit) + theta * log_p_theta)
            idx = self.nonzero
            nonzero = zinb_log_prob(
                self.values,
                mu.reshape(-1)[idx],
                theta.reshape(-1)[idx],
                pi_logit=pi_logit.reshape(-1)[idx],
            )
            total = -(zero * self.is_zero).sum() - nonzero.sum()
        return total / float(self.shape[0] * self.shape[1])


class GraphNorm(nn.Module):
    """GraphNorm (Cai et al., ICML 2021) for one graph: per feature, over the N nodes,

        out = γ ⊙ (x − α ⊙ mean(x)) / √(mean((x − α ⊙ mean(x))²) + ε) + β

    with learnable γ (1), β (0) and mean scale α (1). Equal to PyG's ``GraphNorm`` without a batch
    vector; written here so that training does not import PyTorch Geometric.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mean_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - self.mean_scale * x.mean(dim=0, keepdim=True)
        std = torch.sqrt(centred.pow(2).mean(dim=0, keepdim=True) + self.eps)
        return self.weight * centred / std + self.bias


class ScVGAEOutput(NamedTuple):
    """One forward pass. ``mean`` is M (normalised scale: multiply by the size factors for counts)."""

    embedding: Tensor  # h, [N, hidden]
    mean: Tensor  # M, [N, G]
    theta: Tensor  # Θ, [N, G]
    pi_logit: Tensor  # logit of Π, [N, G]
    reconstruction: Tensor  # X̂, [N, G]


class ScVGAENet(nn.Module):
    """The scVGAE network (MODELS.md 4.3, fixed).

    Args:
        n_genes: G, the number of genes (no HVG step: all genes are modelled).
        n_cells: N; needed by BN_N, the per-cell normalisation skip term.
        hidden: width of the GCN encoder (128 in the paper).
        decoder_hidden: width of the expression decoder (1024).
        dropout: dropout after the encoder (0.2). decoder_dropout: inside the decoder (0.4).
        max_log: clamp of the log-mean and log-dispersion pre-activations to [−max_log, max_log] (the
            paper-era heads are unclamped and can overflow).
        theta_max: largest inverse dispersion (NB → Poisson beyond; keeps lgamma accurate in float32).
    """

    def __init__(
        self,
        n_genes: int,
        n_cells: int,
        *,
        hidden: int = 128,
        decoder_hidden: int = 1024,
        dropout: float = 0.2,
        decoder_dropout: float = 0.4,
        max_log: float = 15.0,
        theta_max: float = 1e4,
    ) -> None:
        super().__init__()
        if min(n_genes, n_cells, hidden, decoder_hidden) < 1:
            raise ConfigError("scVGAE needs at least one gene, one cell and positive layer widths.")
        self.n_genes, self.n_cells, self.hidden = int(n_genes), int(n_cells), int(hidden)
        self.dropout = float(dropout)
        self.max_log = float(max_log)
        self.log_theta_max = float(np.log(theta_max))
        self.encoder = GCNLayer(self.n_genes, self.hidden)
        self.graph_norm = GraphNorm(self.hidden)
        # The three GCN heads (mean, dispersion, dropout) after one shared propagation: rows [0, G) are
        # the mean head, [G, 2G) the dispersion head, [2G, 3G) the dropout head.
        self.heads = nn.Linear(self.hidden, 3 * self.n_genes)
        self.decoder = nn.Sequential(
            nn.Linear(self.n_genes, decoder_hidden),
            nn.BatchNorm1d(decoder_hidden),
            nn.ReLU(),
            nn.Dropout(decoder_dropout),
            nn.Linear(decoder_hidden, self.n_genes),
            nn.ReLU(),
        )
        self.gene_norm = nn.BatchNorm1d(self.n_genes)  # BN_G: each gene across cells
        self.cell_norm = nn.BatchNorm1d(self.n_cells)  # BN_N: each cell across genes

    def head_slices(self) -> dict[str, slice]:
        g = self.n_genes
        return {"mean": slice(0, g), "theta": slice(g, 2 * g), "pi": slice(2 * g, 3 * g)}

    @torch.no_grad()
    def init_mean_bias(self, gene_log_mean: Tensor) -> None:
        """Start the mean head at each gene's mean normalised count (log scale), so training learns the
        cell-to-cell deviations instead of first walking every bias from 0 to log(mean)."""
        self.heads.bias[self.head_slices()["mean"]] = gene_log_mean.to(self.heads.bias)

    def encode(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """h = Dropout(ReLU(GraphNorm(GCN(x)))), [N, hidden]."""
        h = self.graph_norm(self.encoder(x, edge_index).float())
        return F.dropout(F.relu(h), self.dropout, self.training)

    def forward(self, x: Tensor, edge_index: Tensor) -> ScVGAEOutput:
        if x.shape != (self.n_cells, self.n_genes):
            raise ConfigError(
                f"scVGAE was built for {self.n_cells} cells x {self.n_genes} genes; got input {tuple(x.shape)}."
            )
        h = self.encode(x, edge_index)
        raw = self.heads(propagate(h, edge_index)).float()
        sl = self.head_slices()
        mean = torch.exp(raw[:, sl["mean"]].clamp(-self.max_log, self.max_log))
        theta = torch.exp(raw[:, sl["theta"]].clamp(-self.max_log, self.log_theta_max))
        pi_logit = raw[:, sl["pi"]]
        # The decoder reads √M: M is on the normalised-count scale, √M on the scale of X (the paper-era
        # code fitted ZINB to X itself, so its M was on X's scale too).
        decoded = self.decoder(torch.sqrt(mean)).float()
        skip = self.gene_norm(x) + self.cell_norm(x.t()).t()
        return ScVGAEOutput(h, mean, theta, pi_logit, decoded + skip)


# =============================================================================================
# Inputs: counts, size factors, the √-normalised matrix; the graph
# =============================================================================================


@dataclass
class Inputs:
    """What the network reads, from the prepared data's raw counts (kept cells x kept genes)."""

    counts: np.ndarray  # float32 [N, G], raw counts
    size_factors: np.ndarray  # float32 [N], total / median total
    x: np.ndarray  # float32 [N, G], √(counts / size factor)


def model_inputs(prepared: Prepared) -> Inputs:
    """Counts, size factors and X = √(x / s) from ``prepared.adata`` (needs a ``counts`` layer)."""
    from ..errors import DataError
    from .counts import size_factors

    adata = prepared.adata
    if "counts" not in adata.layers:
        raise DataError(
            "scVGAE needs raw counts, but the prepared data has none. Provide a file with raw counts in X "
            "or in a layer named 'counts' (whole numbers, not normalised)."
        )
    counts = adata.layers["counts"]
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    counts = np.ascontiguousarray(counts, dtype=np.float32)
    if "size_factor" in adata.obs:
        s = adata.obs["size_factor"].to_numpy(dtype=np.float32)
    else:
        s = size_factors(counts)
    s = np.where(s > 0, s, s[s > 0].min() if (s > 0).any() else 1.0).astype(np.float32)
    x = np.sqrt(counts / s[:, None], dtype=np.float32)
    return Inputs(counts=counts, size_factors=s, x=x)


def build_graph(
    x: np.ndarray, spec: Any, params: ScVGAEParams, *, cell_names: list[str] | None = None
) -> Graph:
    """The cell graph on X (MODELS.md 4.2, 4.6).

    ``kind = linear`` (the paper): S = X Xᵀ thresholded at the global ``percentile`` of all N² values,
    computed blockwise. It is an all-pairs computation, allowed up to the memory guard's size rule (5,000
    cells on the CPU, where it runs); above that ``large_graph = knn`` switches to the authors' later
    graph (kNN, k = ``fallback_k``, on PCA-50 of X, union) and records the deviation, and
    ``large_graph = refuse`` raises :class:`~scgraph_core.errors.MemoryGuardError`. Other kinds are built
    as asked, on X (``use = pca``: on its first ``n_pcs`` PCs).
    """
    from .. import graphs, memory

    n = x.shape[0]
    deviations: list[str] = []
    if spec.kind == "linear" and not memory.dense_cells_allowed(n, "cpu"):
        if params.large_graph == "refuse":
            memory.check_dense(
                n,
                n,
                what="The linear-kernel graph (x_i·x_j over all cell pairs)",
                itemsize=8,
                device="cpu",
                advice="Set large_graph = knn (the scVGAE authors' kNN graph on PCA-50) or graph kind = knn.",
            )
        spec = dataclasses.replace(
            spec, kind="knn", k=params.fallback_k, use="pca", n_pcs=50, percentile=85.0, max_degree=None
        )
        deviations.append(
            f"{n:,} cells is above the {memory.DENSE_MAX_CELLS['cpu']:,}-cell limit of the all-pairs linear "
            f"kernel: used a kNN graph instead (k = {params.fallback_k} on PCA-50 of X, union), as the "
            "authors' later code does"
        )
    matrix = x
    if spec.kind == "linear" and params.kernel == "centred":
        # S = X_c X_cᵀ with every gene centred: the uncentred x_i·x_j of non-negative √-counts is dominated
        # by the genes all cells express, and its top pairs join cell types (see ScVGAEParams.kernel).
        matrix = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    if spec.kind != "linear" and spec.use == "pca":
        from sklearn.decomposition import PCA

        n_pcs = max(1, min(spec.n_pcs, min(x.shape) - 1))
        matrix = PCA(n_components=n_pcs, svd_solver="randomized", random_state=spec.seed).fit_transform(x)
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    graph = graphs.build_graph(matrix, spec, cell_names=cell_names)
    if spec.kind == "linear" and params.min_neighbors:
        graph = _with_nearest(graph, x, params.min_neighbors)
    graph.info["built_on"] = "sqrt_normalised_counts" + (
        "_centred"
        if spec.kind == "linear" and params.kernel == "centred"
        else "_pca"
        if matrix is not x
        else ""
    )
    graph.info.setdefault("deviations", []).extend(deviations)
    return graph


def _with_nearest(graph: Graph, x: np.ndarray, k: int) -> Graph:
    """The linear-kernel graph joined (union) with each cell's k most similar cells.

    A global percentile leaves cells whose similarities are all low (rare types, small libraries) with
    no partner, and a GCN then sees nothing but the cell itself. Every row of X has the same norm
    (Σ_j x_ij² = median library size), so x_i·x_j ranks partners as the cosine does: the k most similar
    cells are the cosine kNN.
    """
    from .. import graphs

    n = graph.n_nodes
    before = graph.stats()
    knn = graphs.build_graph(x, graphs.GraphSpec(kind="knn", k=min(k, n - 1), metric="cosine"))
    keys = np.unique(
        np.concatenate(
            [graph.edge_index[0] * n + graph.edge_index[1], knn.edge_index[0] * n + knn.edge_index[1]]
        )
    )
    info = dict(graph.info)
    info["min_neighbors"] = {
        "k": int(k),
        "isolated_before": before["n_isolated"],
        "components_before": before["n_components"],
        "edges_added": int(keys.size - graph.n_edges),
    }
    edge_index = np.vstack([keys // n, keys % n])
    return graphs.Graph(edge_index, np.ones(keys.size, dtype=np.float32), n, graph.spec, info)


# =============================================================================================
# Input order: the written result keeps every input cell and gene
# =============================================================================================


def _reindex_frame(frame: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    out = frame.reindex(index)
    for col in out.columns:
        src = frame[col]
        if src.dtype == bool:
            out[col] = out[col].eq(True)  # cells/genes added back: False
        elif isinstance(src.dtype, pd.CategoricalDtype):
            out[col] = pd.Categorical(out[col], categories=src.cat.categories)
    return out


def _expand_rows(value: Any, rows: np.ndarray, n: int) -> Any:
    """Rows placed at ``rows`` of an n-row array (NaN elsewhere; sparse matrices: empty rows)."""
    if sp.issparse(value):
        value = sp.csr_matrix(value)
        pick = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n, value.shape[0]))
        return (pick @ value).tocsr()
    if isinstance(value, pd.DataFrame):
        full = value.iloc[:0].reindex(range(n))
        full.iloc[rows] = value.to_numpy()
        return full
    value = np.asarray(value)
    dtype = value.dtype if np.issubdtype(value.dtype, np.floating) else np.float64
    full = np.full((n, *value.shape[1:]), np.nan, dtype=dtype)
    full[rows] = value
    return full


def match_input(out: anndata.AnnData, source: anndata.AnnData, prepared: Prepared) -> anndata.AnnData:
    """The result on every input cell and gene, in the input's order (the output contract, issue 5).

    ``data.prepare`` drops cells and genes without counts before training. This puts them back:
    ``layers['counts']`` is the input's raw counts; ``layers['imputed']`` holds the model's values for
    the modelled entries and the observed counts elsewhere (0 for dropped all-zero cells and genes);
    X and ``layers['lognorm']`` are log1p(x · target_sum / total) with the totals ``prepare`` used
    (identical to the prepared values on the modelled entries); obs / var ``scvgae_modelled`` mark what
    was modelled; embeddings and other per-cell results are NaN (or missing) for cells that were not.
    """
    import anndata as ad

    if out.n_obs == source.n_obs and out.n_vars == source.n_vars:
        out.obs["scvgae_modelled"] = True
        out.var["scvgae_modelled"] = True
        return out
    counts_from = prepared.record.get("counts_source")
    full_counts = source.layers["counts"] if counts_from == "counts layer" else source.X
    full_counts = sp.csr_matrix(full_counts, dtype=np.float32)
    rows = source.obs_names.get_indexer(out.obs_names)
    cols = source.var_names.get_indexer(out.var_names)
    if (rows < 0).any() or (cols < 0).any():  # pragma: no cover - prepare keeps the input's names
        raise RuntimeError("prepared cells or genes are missing from the input")
    n, g = source.shape

    # Log-normalised values everywhere, with the per-cell totals prepare used on the kept cells.
    target = float(prepared.record["spec"].get("target_sum", 1e4))
    totals = np.asarray(full_counts.sum(axis=1)).ravel().astype(np.float64)
    kept_counts = sp.csr_matrix(out.layers["counts"])
    totals[rows] = np.asarray(kept_counts.sum(axis=1)).ravel()
    factor = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
    lognorm = sp.diags(factor.astype(np.float32)) @ full_counts
    lognorm = sp.csr_matrix(lognorm, dtype=np.float32)
    np.log1p(lognorm.data, out=lognorm.data)

    imputed = full_counts.toarray()
    kept = out.layers["imputed"]
    imputed[np.ix_(rows, cols)] = kept.toarray() if sp.issparse(kept) else np.asarray(kept)

    obs = _reindex_frame(out.obs, source.obs_names)
    for col in source.obs.columns:
        if col not in obs:
            obs[col] = source.obs[col]
    obs["scvgae_modelled"] = np.isin(np.arange(n), rows)
    var = _reindex_frame(out.var, source.var_names)
    for col in source.var.columns:
        if col not in var:
            var[col] = source.var[col]
    var["scvgae_modelled"] = np.isin(np.arange(g), cols)
    full = ad.AnnData(
        X=lognorm.copy(),
        obs=obs,
        var=var,
        layers={"counts": full_counts, "lognorm": lognorm, "imputed": imputed.astype(np.float32)},
        obsm={k: _expand_rows(v, rows, n) for k, v in out.obsm.items()},
        varm={k: _expand_rows(v, cols, g) for k, v in out.varm.items()},
        uns=dict(out.uns),
    )
    for key, value in out.layers.items():  # other per-entry results (e.g. the dropout probability): 0 outside
        if key not in full.layers:
            layer = np.zeros((n, g), dtype=np.float32)
            layer[np.ix_(rows, cols)] = value.toarray() if sp.issparse(value) else np.asarray(value)
            full.layers[key] = layer
    for key, value in out.obsp.items():
        m = _expand_rows(value, rows, n)
        full.obsp[key] = _expand_rows(sp.csr_matrix(m).T, rows, n).T.tocsr()
    return full


# =============================================================================================
# The user-facing model: parameter schema, presets, training, clustering.
# =============================================================================================


@dataclass(frozen=True)
class ScVGAEParams:
    """scVGAE settings (Inoue 2024; MODELS.md section 4)."""

    hidden: int = param(128, "width of the GCN encoder (the cell embedding's size)", min=2, max=4096)
    decoder_hidden: int = param(1024, "width of the expression decoder", min=1, max=16384, advanced=True)
    dropout: float = param(0.2, "dropout after the encoder", min=0.0, max=0.95)
    decoder_dropout: float = param(0.4, "dropout inside the expression decoder", min=0.0, max=0.95)
    alpha: float = param(
        0.05,
        "weight of the reconstruction (MSE) term; the ZINB term gets 1 - alpha (the paper: 0.05)",
        min=0.0,
        max=1.0,
    )
    loss: str = param(
        "fixed",
        "fixed: alpha·MSE + (1 - alpha)·ZINB on the raw counts; legacy: what the published code trains "
        "(only (1 - alpha)·MSE: the ZINB heads get no gradient)",
        choices=LOSSES,
    )
    output: str = param(
        "mean",
        "what the imputed layer holds: mean = expected counts s·M with dropout zeros removed; "
        "zinb_mean = (1 - Π)·s·M; reconstruction = the decoder's X̂ back on the count scale (legacy)",
        choices=OUTPUTS,
    )
    lr: float = param(1e-3, "Adam learning rate", min=1e-7, max=1.0)
    epochs: int = param(300, "training epochs (full batch)", min=1, max=100000)
    val_fraction: float = param(
        0.0,
        "share of the non-zero counts hidden from training to score the imputation and choose the epoch "
        "(0 = train on every count, as the paper does; stopping early on this score leaves the imputed "
        "matrix worse for clustering)",
        min=0.0,
        max=0.5,
    )
    keep_dropout: bool = param(
        False, "also write the dropout probability Π as layers['scvgae_dropout'] (cells x genes)"
    )
    init_mean_bias: bool = param(
        True, "start the mean head at each gene's mean count (faster, steadier training)", advanced=True
    )
    large_graph: str = param(
        "knn",
        "above 5,000 cells the all-pairs linear kernel is not built: knn switches to a kNN graph "
        "(recorded as a deviation), refuse stops with a message",
        choices=("knn", "refuse"),
        advanced=True,
    )
    kernel: str = param(
        "centred",
        "linear kernel: centred = x_i·x_j after centring every gene (the Gram matrix of the centred data); "
        "raw = x_i·x_j of the √-normalised counts as the paper-era code computes it (on scvgae_sample "
        "about half of its edges join cells of different types, against one in five centred)",
        choices=("centred", "raw"),
    )
    min_neighbors: int = param(
        0,
        "linear kernel: also join each cell to its this many most similar cells, so that no cell is left "
        "without partners by the global percentile (0 = the paper's graph as is)",
        min=0,
    )
    fallback_k: int = param(30, "neighbours per cell of the kNN graph used above 5,000 cells", min=1)
    n_pcs: int = param(50, "principal components of the imputed matrix for clustering and UMAP", min=2)

    def check(self) -> None:
        if self.loss == "legacy" and self.output != "reconstruction":
            raise ConfigError(
                "loss = legacy trains only the reconstruction; its ZINB heads are untrained, so set "
                "output = reconstruction."
            )


# "paper" is the fixed preset: the paper's architecture, alpha and graph, with the bugs fixed (MODELS.md 4.6);
# the learning rate was chosen on scvgae_sample with a separate mask (benchmarks/bench_imputation.py). It
# trains on every count, like the paper, and stops when the training loss stops falling. Choosing the epoch
# on hidden counts instead (val_fraction 0.05) kept epoch 20-25: slightly lower errors on the hidden
# entries of bench_imputation.py (median L1 0.60 / 0.49 / 0.82 on scvgae_sample / paul15 / pbmc4k, against
# 0.64 / 0.53 / 0.88), but an imputed matrix that k-means clusters far worse (ARI 0.53 / 0.27 / 0.55, against
# 0.75 / 0.34 / 0.60; the observed counts give 0.74 / 0.33 / 0.78).
FIXED = {
    "prepare": {"normalize": "library_log1p", "n_hvg": 0, "n_graph_genes": 0, "scale": "none"},
    "graph": {"kind": "linear", "percentile": 85.0, "symmetrize": "union"},
    "model": {},
    "cluster": {"method": "leiden", "n_neighbors": 15, "resolution": 1.0},
    "train": {"eval_every": 5, "patience": 4, "restore_best": True},
}
# The published code's training (MODELS.md 4.4-4.5): MSE only, lr 1e-4, 100 epochs, no validation, the
# decoder's X̂ as output (taken here from an eval-mode pass, not the last training-mode one).
LEGACY = {
    **FIXED,
    "model": {
        "loss": "legacy",
        "output": "reconstruction",
        "lr": 1e-4,
        "epochs": 100,
        "val_fraction": 0.0,
        "kernel": "raw",
        "init_mean_bias": False,
    },
    "train": {"eval_every": 0, "patience": 0, "restore_best": False},
}
QUICK = {**FIXED, "model": {"hidden": 64, "decoder_hidden": 256, "epochs": 60, "lr": 3e-3}}


@dataclass
class Trained:
    net: ScVGAENet
    inputs: Inputs
    edge_index: Tensor
    outcome: StageOutcome
    initial_state: dict[str, Tensor]
    validation: Validation | None = None


@register
class ScVGAE(Model):
    name = "scvgae"
    title = "scVGAE"
    summary = (
        "Imputes missing expression: a graph convolutional autoencoder fitted to the raw counts with a "
        "zero-inflated negative binomial; writes the imputed counts and clusters the imputed matrix."
    )
    paper = "Inoue, scVGAE: a ZINB-based variational graph autoencoder for scRNA-seq imputation, 2024"
    Params = ScVGAEParams
    presets = {"paper": FIXED, "legacy": LEGACY, "quick": QUICK}
    requires_counts = True

    def __init__(self) -> None:
        self._inputs: tuple[int, Inputs] | None = None

    def inputs(self, prepared: Prepared) -> Inputs:
        if self._inputs is None or self._inputs[0] != id(prepared):
            self._inputs = (id(prepared), model_inputs(prepared))
        return self._inputs[1]

    # Pipeline hooks (scgraph_core.pipeline.execute): the graph is built on X, and the written result keeps
    # the input's cells and genes.
    def build_graph(self, prepared: Prepared, config: Any) -> Graph:
        names = [str(c) for c in prepared.adata.obs_names]
        return build_graph(self.inputs(prepared).x, config.graph, config.params, cell_names=names)

    def match_input(
        self, out: anndata.AnnData, source: anndata.AnnData, prepared: Prepared
    ) -> anndata.AnnData:
        return match_input(out, source, prepared)

    def train_net(self, prepared: Prepared, graph: Graph, params: ScVGAEParams, trainer: Trainer) -> Trained:
        """Build the network and run the training stage.

        With ``val_fraction`` > 0 that share of the non-zero counts is hidden (set to 0 in X and in the ZINB
        target, as an unobserved entry would be), and every ``eval_every`` epochs the model is scored on
        how well it recovers them: the median |log1p(ŷ·10⁴/T) − log1p(x·10⁴/T)| over the hidden entries
        (T: the cell's total count). The trainer keeps the best epoch and stops after ``patience``
        evaluations without improvement (preset ``paper``), so training ends before the network starts
        to reproduce the zeros of its input.
        """
        from .. import memory

        p = params
        device = trainer.device
        inp = self.inputs(prepared)
        n_cells, n_genes = inp.x.shape
        # Dense N x G tensors held at once while training: X, counts, the 3G head outputs, M, Θ, Π, X̂,
        # the skip terms and their gradients (about 16 copies of an N x G float32 matrix).
        memory.check_bytes(
            16 * 4 * n_cells * n_genes,
            what=f"Training scVGAE on {n_cells:,} cells x {n_genes:,} genes",
            device=device,
            advice="Use fewer genes (for example the top 5,000 highly variable genes) or fewer cells.",
        )
        val = validation_split(inp.counts, p.val_fraction, seed=trainer.spec.seed)
        x_np, counts_np = inp.x, inp.counts
        if val is not None:
            x_np, counts_np = x_np.copy(), counts_np.copy()
            x_np[val.rows, val.cols] = 0.0
            counts_np[val.rows, val.cols] = 0.0
        x = torch.from_numpy(x_np).to(device)
        counts = torch.from_numpy(counts_np).to(device)
        target = CountTarget(counts)
        s = torch.from_numpy(inp.size_factors).to(device)[:, None]
        edge_index = torch.from_numpy(graph.edge_index).to(device)
        net = ScVGAENet(
            n_genes,
            n_cells,
            hidden=p.hidden,
            decoder_hidden=p.decoder_hidden,
            dropout=p.dropout,
            decoder_dropout=p.decoder_dropout,
        ).to(device)
        if p.init_mean_bias:
            gene_mean = (counts / s).mean(dim=0)
            net.init_mean_bias(torch.log(gene_mean + 1e-6))
        initial_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        optimizer = torch.optim.Adam(net.parameters(), lr=p.lr)
        alpha = p.alpha

        def step(epoch: int) -> dict[str, Tensor]:
            with trainer.autocast():
                out = net(x, edge_index)
            mse = F.mse_loss(out.reconstruction.float(), x)
            zinb = target.nll(out.mean * s, out.theta, out.pi_logit)
            if p.loss == "legacy":
                # The published code's net effect (MODELS.md 4.4): only the MSE term trains.
                loss = (1.0 - alpha) * mse
            else:
                loss = alpha * mse + (1.0 - alpha) * zinb
            return {"loss": loss, "mse": mse.detach(), "zinb": zinb.detach()}

        evaluate = None
        if val is not None:
            totals = counts_np.sum(axis=1, dtype=np.float64)[val.rows]
            truth = _log_cp10k(val.values, totals)
            rows_t, cols_t = torch.from_numpy(val.rows).to(device), torch.from_numpy(val.cols).to(device)

            def evaluate() -> dict[str, float]:
                net.eval()
                with torch.no_grad(), trainer.autocast():
                    out = net(x, edge_index)
                pred = expected_counts(out, s, p.output)[rows_t, cols_t].float().cpu().numpy()
                error = float(np.median(np.abs(_log_cp10k(pred, totals) - truth)))
                return {"val_log_error": error, "val_score": -error}

        stage = Stage(
            "train",
            net,
            optimizer,
            step,
            p.epochs,
            evaluate=evaluate,
            score="val_score" if evaluate is not None else None,
        )
        outcome = trainer.run_stage(stage)
        return Trained(net, inp, edge_index, outcome, initial_state, val)

    @staticmethod
    def impute(trained: Trained, output: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(imputed counts [N, G], embedding h [N, hidden], dropout probability Π [N, G]) from an
        eval-mode pass (MODELS.md 4.6) on every observed count (validation entries included)."""
        net = trained.net
        device = next(net.parameters()).device
        x = torch.from_numpy(trained.inputs.x).to(device)
        s = torch.from_numpy(trained.inputs.size_factors).to(device)[:, None]
        net.eval()
        with torch.no_grad():
            out = net(x, trained.edge_index)
        values = expected_counts(out, s, output)
        dropout = torch.sigmoid(out.pi_logit)
        return (
            values.float().cpu().numpy(),
            out.embedding.float().cpu().numpy(),
            dropout.float().cpu().numpy(),
        )

    def fit(
        self,
        prepared: Prepared,
        graph: Graph,
        params: ScVGAEParams,
        trainer: Trainer,
        *,
        cluster,
        label_key=None,
    ) -> Result:
        from .. import cluster as clustering
        from .. import metrics

        p = params
        seed = trainer.spec.seed
        trained = self.train_net(prepared, graph, p, trainer)
        imputed, embedding, dropout = self.impute(trained, p.output)
        outcome = trained.outcome
        n_cells, n_genes = imputed.shape
        validated = [e["validation"] for e in outcome.history if e.get("validation")]
        result_metrics: dict[str, Any] = {
            "epochs_run": outcome.epochs_run,
            "stopped": outcome.stopped,
            "best_epoch": outcome.best_epoch if validated else outcome.epochs_run,
            "val_log_error": min((v["val_log_error"] for v in validated), default=None),
            "n_validation_entries": 0 if trained.validation is None else int(trained.validation.rows.size),
            "seconds_per_epoch": outcome.seconds_per_epoch,
            "n_cells": n_cells,
            "n_features": n_genes,
            "final_losses": outcome.history[-1]["losses"] if outcome.history else {},
            "graph_deviations": list(graph.info.get("deviations", [])),
        }
        trainer.emit({"kind": "pipeline", "step": "cluster"})

        # Clustering on the imputed matrix, normalised like raw counts: log1p CP10k -> PCA -> Leiden
        # (and k-means when k is given); the UMAP is drawn from the same PCs.
        pcs = lognorm_pcs(imputed, n_pcs=p.n_pcs, seed=seed)
        umap_xy = clustering.umap_embedding(
            pcs,
            n_neighbors=cluster.n_neighbors,
            min_dist=cluster.umap_min_dist,
            n_epochs=cluster.umap_n_epochs,
            seed=seed,
        )
        leiden_labels = clustering.leiden(
            pcs, resolution=cluster.resolution, n_neighbors=cluster.n_neighbors, seed=seed
        )
        obs: dict[str, Any] = {"scvgae_leiden": _categorical(leiden_labels)}
        views: dict[str, Any] = {
            "umap": "X_umap",
            "clusters": "scvgae_leiden",
            "other_clusters": [],
            "imputed_layer": "imputed",
            "imputed_scale": "counts",
            "history": "history",
        }
        labels, method = leiden_labels, "leiden"
        if cluster.k is not None or cluster.method == "kmeans":
            if cluster.k is None:
                raise ConfigError("k-means needs the number of clusters: set k.")
            labels = clustering.kmeans(pcs, cluster.k, seed=seed, n_init=cluster.n_init)
            method = "kmeans"
            obs["scvgae_kmeans"] = _categorical(labels)
            views["clusters"], views["other_clusters"] = "scvgae_kmeans", ["scvgae_leiden"]
        truth = prepared.adata.obs[label_key].to_numpy() if label_key is not None else None
        result_metrics.update(metrics.clustering_metrics(truth, labels, embedding=pcs, seed=seed))
        result_metrics["cluster_method"] = method
        # The same recipe on the observed counts, always: the app shows both, and how far they agree
        # (label-free) says what imputation did to the cluster structure.
        obs_pcs = lognorm_pcs(trained.inputs.counts, n_pcs=p.n_pcs, seed=seed)
        if method == "kmeans":
            base_labels = clustering.kmeans(obs_pcs, cluster.k, seed=seed, n_init=cluster.n_init)
        else:
            base_labels = clustering.leiden(
                obs_pcs, resolution=cluster.resolution, n_neighbors=cluster.n_neighbors, seed=seed
            )
        observed_key = f"scvgae_observed_{method}"
        obs[observed_key] = _categorical(base_labels)
        views["other_clusters"] = [*views["other_clusters"], observed_key]
        agreement = metrics.clustering_metrics(base_labels, labels)
        m = metrics.clustering_metrics(truth, base_labels, seed=seed)
        result_metrics["observed_counts"] = {
            k: m[k] for k in ("ari", "nmi", "n_clusters") if m.get(k) is not None
        }
        result_metrics["agreement_with_observed"] = {"ari": agreement["ari"], "nmi": agreement["nmi"]}
        note = observed_clusters_note(method, labels, base_labels, agreement["ari"])
        if note:
            result_metrics.setdefault("notes", []).append(note)
        if truth is not None:
            scores = {"leiden": leiden_labels}
            if method == "kmeans":
                scores["kmeans"] = labels
            for name, lab in scores.items():
                m = metrics.clustering_metrics(truth, lab, seed=seed)
                result_metrics[name] = {k: m[k] for k in ("ari", "nmi", "n_clusters")}

        history = pd.DataFrame(
            [
                {
                    "epoch": e["epoch"],
                    "loss": e["loss"],
                    **e["losses"],
                    "val_log_error": (e.get("validation") or {}).get("val_log_error", np.nan),
                }
                for e in outcome.history
            ]
        )
        uns = {
            "history": history,
            "imputed_output": p.output,
            "imputed_description": {
                "mean": "expected counts s_i * M_ij (NB mean; technical dropout zeros removed)",
                "zinb_mean": "expected counts (1 - pi_ij) * s_i * M_ij (ZINB mean)",
                "reconstruction": "decoder output X^ squared times s_i (paper-era output)",
            }[p.output],
            "cluster_method": method,
        }
        return Result(
            model=self.name,
            embedding_key="X_scvgae",
            obs=obs,
            obsm={"X_scvgae": embedding, "X_scvgae_pca": pcs, "X_umap": umap_xy},
            layers={"imputed": imputed, **({"scvgae_dropout": dropout} if p.keep_dropout else {})},
            uns=uns,
            metrics=result_metrics,
            weights={k: v.detach().cpu() for k, v in trained.net.state_dict().items()},
            views=views,
        )


AGREEMENT_NOTE_BELOW = 0.5


def observed_clusters_note(method: str, imputed: np.ndarray, observed: np.ndarray, ari: float) -> str | None:
    """A note for the run when clustering the imputed matrix disagrees with the same clustering of the
    observed counts (ARI between the two partitions below :data:`AGREEMENT_NOTE_BELOW`), else None."""
    if not np.isfinite(ari) or ari >= AGREEMENT_NOTE_BELOW:
        return None
    n_imp, n_obs = int(np.unique(imputed).size), int(np.unique(observed).size)
    return (
        f"{method.capitalize()} on the imputed matrix ({n_imp} clusters) agrees only weakly with the same "
        f"clustering of the observed counts ({n_obs} clusters; ARI {ari:.2f} between the two). Imputation "
        "smooths each cell towards its graph neighbours, and the smoothed matrix can split cell types "
        "along technical axes such as sequencing depth. Both clusterings are in the results "
        f"(scvgae_{method}, scvgae_observed_{method}); use scVGAE for expression recovery and check "
        "clusters against the observed counts."
    )


@dataclass
class Validation:
    """Non-zero counts hidden from training to choose the epoch (positions and true values)."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray


def validation_split(counts: np.ndarray, fraction: float, *, seed: int) -> Validation | None:
    """A random ``fraction`` of the non-zero entries (None for fraction 0 or too few non-zeros)."""
    if fraction <= 0:
        return None
    rows, cols = np.nonzero(counts)
    n = int(round(fraction * rows.size))
    if n < 1:
        return None
    rng = np.random.default_rng([seed, 20240])  # its own stream: independent of any mask the user made
    pick = np.sort(rng.choice(rows.size, size=n, replace=False))
    return Validation(
        rows[pick].astype(np.int64), cols[pick].astype(np.int64), counts[rows[pick], cols[pick]].copy()
    )


def expected_counts(out: ScVGAEOutput, s: Tensor, output: str) -> Tensor:
    """The imputed value on the count scale: s·M ("mean"), (1 − Π)·s·M ("zinb_mean") or s·max(X̂, 0)²
    ("reconstruction": X̂ lives on the scale of X = √(x / s))."""
    if output == "mean":
        return out.mean * s
    if output == "zinb_mean":
        return torch.sigmoid(-out.pi_logit) * out.mean * s
    return out.reconstruction.float().clamp(min=0.0).pow(2) * s


def _log_cp10k(values: np.ndarray, totals: np.ndarray) -> np.ndarray:
    factor = np.divide(1e4, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    return np.log1p(np.asarray(values, dtype=np.float64) * factor)


def lognorm_pcs(counts: np.ndarray, *, n_pcs: int = 50, seed: int = 0, target_sum: float = 1e4) -> np.ndarray:
    """First PCs of log1p(x · target_sum / Σ_j x_ij): a counts matrix normalised like raw counts."""
    from sklearn.decomposition import PCA

    totals = counts.sum(axis=1, dtype=np.float64)
    factor = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    logs = np.log1p(counts * factor[:, None].astype(np.float32))
    n = max(1, min(n_pcs, min(logs.shape) - 1))
    pcs = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit_transform(logs)
    return np.ascontiguousarray(pcs, dtype=np.float32)


def _categorical(labels: np.ndarray) -> pd.Categorical:
    return pd.Categorical([str(v) for v in labels])
