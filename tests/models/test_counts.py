"""ZINB / NB likelihoods against direct evaluations of the probability mass function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from scgraph_core.nn.counts import nb_log_prob, nb_nll, size_factors, zinb_log_prob, zinb_nll


def _grid():
    x = torch.tensor([0.0, 0.0, 1.0, 3.0, 7.0, 40.0, 0.0, 250.0], dtype=torch.float64)
    mu = torch.tensor([0.1, 5.0, 0.7, 2.5, 9.0, 35.0, 1e3, 200.0], dtype=torch.float64)
    theta = torch.tensor([0.5, 2.0, 1e-2, 10.0, 1.0, 1e4, 3.0, 50.0], dtype=torch.float64)
    pi = torch.tensor([0.1, 0.7, 0.3, 0.05, 0.5, 0.2, 0.01, 0.9], dtype=torch.float64)
    return x, mu, theta, pi


def test_nb_matches_scipy_pmf():
    x, mu, theta, _ = _grid()
    # scipy's nbinom(n, p) counts failures before n successes: n = θ, p = θ / (θ + μ).
    expected = stats.nbinom.logpmf(x.numpy(), theta.numpy(), (theta / (theta + mu)).numpy())
    got = nb_log_prob(x, mu, theta, eps=0.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_nb_matches_torch_distributions():
    x, mu, theta, _ = _grid()
    dist = torch.distributions.NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta))
    np.testing.assert_allclose(nb_log_prob(x, mu, theta, eps=0.0), dist.log_prob(x), rtol=1e-9, atol=1e-9)


def test_zinb_matches_direct_mixture():
    x, mu, theta, pi = _grid()
    nb = stats.nbinom.pmf(x.numpy(), theta.numpy(), (theta / (theta + mu)).numpy())
    direct = np.where(x.numpy() == 0, pi.numpy() + (1 - pi.numpy()) * nb, (1 - pi.numpy()) * nb)
    got = zinb_log_prob(x, mu, theta, pi, eps=0.0).numpy()
    np.testing.assert_allclose(got, np.log(direct), rtol=1e-9, atol=1e-9)


def test_zinb_logit_and_probability_agree_and_nll_means():
    x, mu, theta, pi = _grid()
    logit = torch.log(pi) - torch.log1p(-pi)
    a = zinb_log_prob(x, mu, theta, pi, eps=0.0)
    b = zinb_log_prob(x, mu, theta, pi_logit=logit, eps=0.0)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    nll = zinb_nll(x, mu, theta, pi_logit=logit, eps=0.0)
    assert math.isclose(float(nll), float(-a.mean()), rel_tol=1e-12)
    # float32 keeps ~1e-3 absolute accuracy even with θ = 1e4 in the grid.
    nll32 = zinb_nll(x.float(), mu.float(), theta.float(), pi_logit=logit.float())
    assert abs(float(nll32) - float(nll)) < 2e-3
    assert math.isclose(
        float(nb_nll(x, mu, theta, reduction="sum")), float(-nb_log_prob(x, mu, theta).sum()), rel_tol=1e-6
    )


def test_zinb_stays_finite_at_extremes_and_has_gradients():
    x = torch.tensor([0.0, 0.0, 5.0, 1e4])
    mu = torch.tensor([1e-6, 1e6, 1e-6, 1e4], requires_grad=True)
    theta = torch.tensor([1e-4, 1e6, 1e3, 1e-3], requires_grad=True)
    logit = torch.tensor([-30.0, 30.0, 0.0, -5.0], requires_grad=True)
    loss = zinb_nll(x, mu, theta, pi_logit=logit)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (mu, theta, logit):
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


def test_zinb_prefers_the_true_parameters():
    rng = np.random.default_rng(0)
    mu_true, theta_true, pi_true = 4.0, 2.0, 0.3
    nb = rng.negative_binomial(theta_true, theta_true / (theta_true + mu_true), size=20000)
    x = torch.tensor(np.where(rng.random(20000) < pi_true, 0, nb), dtype=torch.float32)

    def nll(mu, theta, pi):
        n = x.numel()
        return float(zinb_nll(x, torch.full((n,), mu), torch.full((n,), theta), torch.full((n,), pi)))

    best = nll(mu_true, theta_true, pi_true)
    for other in ((2.0, 2.0, 0.3), (4.0, 0.5, 0.3), (4.0, 2.0, 0.05), (8.0, 2.0, 0.3)):
        assert nll(*other) > best


def test_reduction_is_checked():
    x, mu, theta, pi = _grid()
    with pytest.raises(ValueError):
        zinb_nll(x, mu, theta, pi, reduction="avg")
    with pytest.raises(ValueError):
        zinb_log_prob(x, mu, theta)


def test_size_factors_dense_and_sparse():
    counts = np.array([[1, 1, 0], [2, 2, 2], [0, 0, 0], [4, 4, 4]], dtype=np.float32)
    s = size_factors(counts)
    totals = np.array([2, 6, 0, 12.0])
    assert s.dtype == np.float32
    np.testing.assert_allclose(s[[0, 1, 3]], totals[[0, 1, 3]] / 6.0)
    assert s[2] > 0  # an empty cell gets the smallest positive factor, not 0
    np.testing.assert_allclose(size_factors(sp.csr_matrix(counts)), s)
