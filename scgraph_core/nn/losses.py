"""Losses of the graph autoencoders: edge reconstruction, KL, MMD, and the reparameterisation.

Equations follow MODELS.md section 1.4 (CellVGAE). The KL and MMD weights are applied by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PARAMETERIZATIONS",
    "edge_reconstruction_loss",
    "kl_divergence",
    "mmd_loss",
    "reparameterize",
    "sample_negative_edges",
]

PARAMETERIZATIONS = ("logvar", "legacy")

# Rejection rounds before giving up on a graph so dense that almost every pair is a positive.
_MAX_REJECTION_ROUNDS = 100


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n uniform integers in [0, high) drawn with ``generator`` (on its device), returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(high, (n,), generator=generator, device=gen_device).to(device)


def sample_negative_edges(
    forbidden: Tensor,
    num_nodes: int,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform node pairs (i, j) over all N² ordered pairs, none of which is in ``forbidden``.

    Pairs are hashed to i·N + j; the forbidden hashes are sorted once and every draw is checked with a
    binary search (``searchsorted``); only the collisions are redrawn. Negatives may repeat, as with
    any uniform sampler. Returns a [2, num_samples] long tensor on ``forbidden``'s device.

    Raises:
        ValueError: when nearly every pair is forbidden and rejection does not finish.
    """
    device = forbidden.device
    total = num_nodes * num_nodes
    keys = torch.unique(forbidden[0].long() * num_nodes + forbidden[1].long())  # sorted
    draws = _randint(total, num_samples, generator, device)
    for _ in range(_MAX_REJECTION_ROUNDS):
        if keys.numel() == 0:
            break
        slot = torch.searchsorted(keys, draws).clamp_max_(keys.numel() - 1)
        clash = keys[slot] == draws
        n_clash = int(clash.sum())
        if n_clash == 0:
            break
        draws[clash] = _randint(total, n_clash, generator, device)
    else:
        raise ValueError(
            f"could not draw {num_samples} negative pairs: {keys.numel()} of {total} node pairs are "
            "positives; the graph is too dense for negative sampling"
        )
    return torch.stack([draws // num_nodes, draws % num_nodes])


def edge_reconstruction_loss(
    z: Tensor,
    pos_edge_index: Tensor,
    num_nodes: int,
    *,
    generator: torch.Generator | None = None,
    exclude_positive_both_directions: bool = True,
    add_self_loops_to_positives: bool = True,
) -> Tensor:
    """Inner-product decoder loss with uniform negative sampling (VGAE; MODELS.md 1.4).

        L = mean_{(i,j) ∈ pos} −log σ(z_iᵀ z_j) + mean_{(i,j) ∈ neg} −log(1 − σ(z_iᵀ z_j))

    computed with ``logsigmoid`` (−log(1 − σ(x)) = −log σ(−x)), so it never overflows.

    The positive term averages over ``pos_edge_index`` as given (in CellVGAE each undirected training
    edge listed once). Negatives are redrawn on every call, uniformly over ordered node pairs, as many
    as there are positives once self loops are added (E_pos + N, the number the authors' code draws).
    Self loops, when added, are also kept out of the negatives.

    Args:
        z: node embeddings [N, L].
        pos_edge_index: positive edges [2, E_pos].
        num_nodes: N.
        generator: random source for the negatives (seeded runs).
        exclude_positive_both_directions: the fixed preset (MODELS.md 1.7 pitfall 10) keeps both i→j and
            j→i of every positive out of the negatives; False reproduces the authors' code, which only
            excludes the listed direction.
        add_self_loops_to_positives: add (i, i) to the positive set used for counting and excluding
            negatives (the authors' behaviour); False draws exactly E_pos negatives and allows i = j.
    """
    src, dst = pos_edge_index[0], pos_edge_index[1]
    pos_logits = (z[src] * z[dst]).sum(dim=-1)
    pos_loss = -F.logsigmoid(pos_logits).mean()

    forbidden = pos_edge_index.long()
    if add_self_loops_to_positives:
        forbidden = forbidden[:, forbidden[0] != forbidden[1]]
        num_neg = forbidden.size(1) + num_nodes
        loops = torch.arange(num_nodes, device=forbidden.device)
        forbidden = torch.cat([forbidden, torch.stack([loops, loops])], dim=1)
    else:
        num_neg = forbidden.size(1)
    if exclude_positive_both_directions:
        forbidden = torch.cat([forbidden, forbidden.flip(0)], dim=1)
    neg = sample_negative_edges(forbidden, num_nodes, num_neg, generator=generator).to(z.device)
    neg_logits = (z[neg[0]] * z[neg[1]]).sum(dim=-1)
    neg_loss = -F.logsigmoid(-neg_logits).mean()
    return pos_loss + neg_loss


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")


def kl_divergence(mu: Tensor, s: Tensor, *, parameterization: str = "logvar") -> Tensor:
    """KL(q(z|x) ‖ N(0, I)) averaged over cells: −½ · mean_i Σ_l (1 + s_il − μ_il² − exp(s_il)).

    This is the closed form for s = log σ² ("logvar", the fixed preset). The authors' code uses the
    same formula while sampling with σ = exp(s) ("legacy"; MODELS.md 1.4 and 1.7 pitfall 5): the two
    presets differ in :func:`reparameterize`, not here. The KL weight β (CellVGAE: 1/N) is the
    caller's.
    """
    _check_parameterization(parameterization)
    return -0.5 * torch.mean(torch.sum(1.0 + s - mu.pow(2) - s.exp(), dim=1))


def reparameterize(
    mu: Tensor,
    s: Tensor,
    parameterization: str = "logvar",
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """z = μ + ε·σ with ε ~ N(0, I): σ = exp(s/2) for "logvar" (fixed), σ = exp(s) for "legacy".

    "legacy" is what the authors' code does (s read as log σ by the sampler but as log σ² by the KL).
    """
    _check_parameterization(parameterization)
    gen_device = generator.device if generator is not None else mu.device
    eps = torch.randn(mu.shape, generator=generator, device=gen_device, dtype=mu.dtype).to(mu.device)
    std = torch.exp(0.5 * s) if parameterization == "logvar" else torch.exp(s)
    return mu + eps * std


def mmd_loss(z: Tensor, *, max_samples: int = 2000, generator: torch.Generator | None = None) -> Tensor:
    """Biased MMD² between the embedding and as many draws from N(0, I) (InfoVAE; MODELS.md 1.4).

        MMD² = mean k(z, z') + mean k(y, y') − 2 mean k(z, y),   k(a, b) = exp(−‖a − b‖² / L²)

    with the kernel exactly as MODELS.md states it (the squared distance divided by the squared latent
    size L², the authors' choice). All pairs are used, diagonal included (the biased estimator). To keep
    memory at O(M²) rather than O(N²), at most ``max_samples`` = M cells are drawn at random without
    replacement each call (MODELS.md 1.7 pitfall 6).
    """
    n, dim = z.shape
    gen_device = generator.device if generator is not None else z.device
    if n > max_samples:
        idx = torch.randperm(n, generator=generator, device=gen_device)[:max_samples].to(z.device)
        z = z[idx]
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # distances by expansion cancel badly in half precision
    prior = torch.randn(z.shape, generator=generator, device=gen_device, dtype=z.dtype).to(z.device)
    scale = float(dim * dim)

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        sq = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.t()).clamp_min(0.0)
        return torch.exp(-sq / scale).mean()

    with torch.autocast(z.device.type, enabled=False):  # the a @ bᵀ above stays in full precision
        return kernel_mean(z, z) + kernel_mean(prior, prior) - 2.0 * kernel_mean(z, prior)
