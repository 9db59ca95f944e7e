"""Tests of the pure CellVGAE module and its losses (MODELS.md 1.3, 1.4, 1.6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scgraph_core.errors import ConfigError
from scgraph_core.interpret import p_matrix
from scgraph_core.models.cellvgae import CellVGAENet
from scgraph_core.nn.losses import (
    edge_reconstruction_loss,
    kl_divergence,
    mmd_loss,
    reparameterize,
    sample_negative_edges,
)

N, D = 60, 20


def small_graph(n: int = N, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A union-symmetrised random k-neighbour graph: (both directions, each undirected edge once)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.arange(n).repeat_interleave(k)
    dst = (src + torch.randint(1, n, (n * k,), generator=gen)) % n
    keys = torch.unique(torch.cat([src * n + dst, dst * n + src]))
    both = torch.stack([keys // n, keys % n])
    return both, both[:, both[0] < both[1]]


def small_net(conv: str = "gat", n_hidden: int = 2, **kwargs) -> CellVGAENet:
    hidden = (8, 6, 5)[:n_hidden]
    heads = (3, 2, 2, 3, 2)[: n_hidden + 2] if n_hidden == 3 else (3, 2, 3, 2)
    drops = (0.4,) * n_hidden + (0.2, 0.2)
    return CellVGAENet(D, conv=conv, hidden=hidden, heads=heads, attn_dropout=drops, latent=4, **kwargs)


@pytest.mark.parametrize("conv", ["gat", "gatv2", "gcn"])
@pytest.mark.parametrize("n_hidden", [2, 3])
def test_shapes_and_eval_embedding(conv: str, n_hidden: int) -> None:
    torch.manual_seed(0)
    net = small_net(conv, n_hidden)
    x, (ei, _) = torch.rand(N, D), small_graph()
    z, mu, s = net(x, ei)
    assert z.shape == mu.shape == s.shape == (N, 4)
    assert not torch.allclose(z, mu)  # reparameterised while training
    net.eval()
    z, mu, s = net(x, ei)
    assert torch.equal(z, mu)
    torch.testing.assert_close(net.encode(x, ei)[0], mu)  # deterministic at eval
    assert net.decode_edges(z, ei).shape == (ei.size(1),)


def test_attention_export_names_sums_and_training_flag() -> None:
    torch.manual_seed(1)
    net = small_net("gat", 3)
    x, (ei, _) = torch.rand(N, D), small_graph()
    for training in (True, False):
        net.train(training)
        att = net.attention(x, ei)
        assert net.training is training
        assert list(att) == ["hidden1", "hidden2", "hidden3", "mu", "sigma"]
        for name, heads in zip(att, (3, 2, 2, 3, 2), strict=True):
            edges, alpha = att[name]
            assert isinstance(edges, np.ndarray) and isinstance(alpha, np.ndarray)
            assert alpha.shape == (ei.size(1) + N, heads)
            sums = np.zeros((N, heads))
            np.add.at(sums, edges[1], alpha)
            np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    assert small_net("gcn").attention(x, ei) == {}


@pytest.mark.parametrize("conv", ["gat", "gatv2", "gcn"])
def test_gene_weights_are_d_by_l_and_match_interpret(conv: str) -> None:
    torch.manual_seed(2)
    net = small_net(conv, 3)
    p_mu, p_sigma = net.gene_weights()
    assert p_mu.shape == p_sigma.shape == (D, 4)
    hidden, w_mu, w_sigma = net.projection_weights()
    ws = [w.detach().numpy() for w in hidden]
    np.testing.assert_allclose(p_mu, p_matrix([*ws, w_mu.detach().numpy()], net.heads[-2], 4), rtol=1e-6)
    np.testing.assert_allclose(
        p_sigma, p_matrix([*ws, w_sigma.detach().numpy()], net.heads[-1], 4), rtol=1e-6
    )


def test_log_sigma_is_clamped() -> None:
    net = small_net(sigma_clamp=0.5).eval()
    with torch.no_grad():
        net.latent_layer.bias[1].fill_(100.0)
    _, s = net.encode(torch.rand(N, D), small_graph()[0])
    assert float(s.detach().max()) <= 0.5


def test_expression_decoder() -> None:
    net = small_net(expr_decoder_hidden=7)
    assert net.decode_expression(torch.randn(N, 4)).shape == (N, D)
    with pytest.raises(ConfigError):
        small_net().decode_expression(torch.randn(N, 4))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(conv="gin"),
        dict(hidden=(8,)),
        dict(heads=(2, 2, 2)),
        dict(attn_dropout=(0.1,)),
        dict(variance="std"),
    ],
)
def test_bad_configuration_raises(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        CellVGAENet(D, **kwargs)


@pytest.mark.parametrize("variance", ["logvar", "legacy"])
def test_training_reduces_the_loss(variance: str) -> None:
    torch.manual_seed(3)
    net = small_net(variance=variance)
    x, (ei, pos) = torch.rand(N, D), small_graph()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(25):
        z, mu, s = net(x, ei, generator=gen)
        loss = edge_reconstruction_loss(z, pos, N, generator=gen) + kl_divergence(mu, s) / N
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


# ---------------------------------------------------------------------------------------------------- losses


def test_negative_sampling_excludes_positives_both_directions_and_self_loops() -> None:
    n = 12
    _both, pos = small_graph(n, 4)
    loops = torch.arange(n)
    forbidden = torch.cat([pos, pos.flip(0), torch.stack([loops, loops])], dim=1)
    neg = sample_negative_edges(forbidden, n, 5000, generator=torch.Generator().manual_seed(0))
    bad = set((forbidden[0] * n + forbidden[1]).tolist())
    assert neg.shape == (2, 5000)
    assert not bad & set((neg[0] * n + neg[1]).tolist())
    # Only the listed direction excluded (the authors' behaviour): reverse directions do occur.
    legacy = sample_negative_edges(pos, n, 5000, generator=torch.Generator().manual_seed(0))
    reverse = set((pos[1] * n + pos[0]).tolist())
    assert reverse & set((legacy[0] * n + legacy[1]).tolist())


def test_negative_sampling_is_reproducible_and_fails_on_complete_graphs() -> None:
    both, _ = small_graph(10, 3)
    a = sample_negative_edges(both, 10, 50, generator=torch.Generator().manual_seed(4))
    b = sample_negative_edges(both, 10, 50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    full = torch.cartesian_prod(torch.arange(5), torch.arange(5)).t()
    with pytest.raises(ValueError, match="too dense"):
        sample_negative_edges(full, 5, 3)


def test_edge_loss_at_zero_embedding_is_two_log_two() -> None:
    _, pos = small_graph()
    loss = edge_reconstruction_loss(torch.zeros(N, 4), pos, N)
    assert math.isclose(loss.item(), 2 * math.log(2), rel_tol=1e-6)


def test_edge_loss_separates_good_from_bad_embeddings() -> None:
    # Two cliques: an embedding aligned with them scores better than a random one.
    n = 40
    block = torch.arange(n) // 20
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n)).t()
    pos = pairs[:, (block[pairs[0]] == block[pairs[1]]) & (pairs[0] < pairs[1])]
    good = torch.nn.functional.one_hot(block, 2).float() * 3.0
    gen = torch.Generator().manual_seed(0)
    assert edge_reconstruction_loss(good, pos, n, generator=gen) < edge_reconstruction_loss(
        torch.randn(n, 2, generator=gen), pos, n, generator=gen
    )


def test_kl_matches_closed_form() -> None:
    gen = torch.Generator().manual_seed(5)
    mu, s = torch.randn(30, 4, generator=gen), torch.randn(30, 4, generator=gen)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * s))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, s), expected)
    torch.testing.assert_close(kl_divergence(mu, s, parameterization="legacy"), expected)
    with pytest.raises(ValueError):
        kl_divergence(mu, s, parameterization="std")


@pytest.mark.parametrize(("parameterization", "std"), [("logvar", math.exp(0.5)), ("legacy", math.e)])
def test_reparameterize_uses_the_right_scale(parameterization: str, std: float) -> None:
    mu, s = torch.full((20000, 2), 3.0), torch.ones(20000, 2)
    z = reparameterize(mu, s, parameterization, generator=torch.Generator().manual_seed(6))
    assert abs(float(z.mean()) - 3.0) < 0.05
    assert abs(float(z.std()) - std) < 0.05 * std


def test_mmd_kernel_and_subsampling() -> None:
    gen_seed = 7
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    got = mmd_loss(z, generator=torch.Generator().manual_seed(gen_seed))
    prior = torch.randn(6, 3, generator=torch.Generator().manual_seed(gen_seed))

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return sum(math.exp(-float(((u - v) ** 2).sum()) / 9.0) for u in a for v in b) / (len(a) * len(b))

    expected = k(z, z) + k(prior, prior) - 2 * k(z, prior)
    assert math.isclose(got.item(), expected, rel_tol=1e-5, abs_tol=1e-7)
    far = mmd_loss(torch.randn(3000, 3) + 5.0, max_samples=500)
    near = mmd_loss(torch.randn(3000, 3), max_samples=500)
    assert far > 10 * near
