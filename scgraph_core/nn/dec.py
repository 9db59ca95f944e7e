"""Deep embedded clustering (Xie et al., ICML 2016) as AttentionAE-sc fine-tunes with it (MODELS.md 5.4).

Soft assignment of cell i to centre c_j with a Student-t kernel of α degrees of freedom:

    q_ij = (1 + ‖z_i − c_j‖² / α)^(−(α+1)/2) / Σ_l (1 + ‖z_i − c_l‖² / α)^(−(α+1)/2)

(α = 1 gives the exponent −1; the authors' code squares the kernel, exponent −2: ``kernel="legacy"``).
Target distribution and loss:

    p_ij = (q_ij² / f_j) / Σ_l (q_il² / f_l),   f_j = Σ_i q_ij
    L = KL(P ‖ Q) = 1/N Σ_i Σ_j p_ij (log p_ij − log q_ij)

Everything is computed in log space (no 0 · log 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

KERNELS = ("student_t", "legacy")


def log_soft_assign(z: Tensor, centres: Tensor, *, alpha: float = 1.0, kernel: str = "student_t") -> Tensor:
    """log q [N, C] (rows sum to one in probability space)."""
    if kernel not in KERNELS:
        raise ConfigError(f"DEC kernel must be one of {KERNELS}; got {kernel!r}")
    if alpha <= 0:
        raise ConfigError(f"The DEC degrees of freedom alpha must be positive; got {alpha}")
    z, centres = z.float(), centres.float()
    d2 = (z.pow(2).sum(1, keepdim=True) - 2.0 * z @ centres.t() + centres.pow(2).sum(1)).clamp_min(0.0)
    exponent = (alpha + 1.0) / 2.0 if kernel == "student_t" else 2.0
    logits = -exponent * torch.log1p(d2 / alpha)
    return logits - torch.logsumexp(logits, dim=1, keepdim=True)


def soft_assign(z: Tensor, centres: Tensor, *, alpha: float = 1.0, kernel: str = "student_t") -> Tensor:
    """q [N, C], the soft assignments (see the module docstring)."""
    return log_soft_assign(z, centres, alpha=alpha, kernel=kernel).exp()


def log_target_distribution(log_q: Tensor) -> Tensor:
    """log p [N, C] from log q: p_ij ∝ q_ij² / f_j with f_j = Σ_i q_ij."""
    log_f = torch.logsumexp(log_q, dim=0, keepdim=True)
    logits = 2.0 * log_q - log_f
    return logits - torch.logsumexp(logits, dim=1, keepdim=True)


def dec_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P ‖ Q) averaged over cells (PyTorch's ``batchmean``)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def initial_centres(z: Tensor, labels: Tensor, n_clusters: int) -> Tensor:
    """Cluster means of ``z`` for labels 0..n_clusters-1 (every label must occur)."""
    counts = torch.bincount(labels, minlength=n_clusters).to(z.dtype)
    if bool((counts == 0).any()):
        raise ValueError("every cluster needs at least one cell to have a centre")
    sums = torch.zeros(n_clusters, z.size(1), dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    return sums / counts.unsqueeze(1)
