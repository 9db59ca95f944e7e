"""LTMG (censored Gaussian mixtures per gene) against simulated truth and a direct likelihood optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import optimize, stats
from scipy.special import logsumexp

from scgraph_core.models.scgnn.ltmg import fit_ltmg

THR = 0.6
# K → (means, sds, weights); well separated, the lowest component partly below the threshold.
SPECS = {
    1: ([3.0], [0.4], [1.0]),
    2: ([1.0, 3.5], [0.4, 0.4], [0.5, 0.5]),
    3: ([1.0, 3.0, 5.0], [0.35, 0.4, 0.4], [0.3, 0.4, 0.3]),
}


def _gene(rng: np.random.Generator, n: int, means, sds, weights, thr: float = THR):
    """Values of one gene and the true component (1-based) of each cell; values below thr are set to 0."""
    z = rng.choice(len(means), size=n, p=weights)
    y = rng.normal(np.asarray(means)[z], np.asarray(sds)[z])
    y[y < thr] = 0.0
    return y, z + 1


def _simulated(n: int = 3000, genes: int = 30, seed: int = 1):
    rng = np.random.default_rng(seed)
    cols, labels, ks = [], [], []
    for g in range(genes):
        k = g % 3 + 1
        y, z = _gene(rng, n, *SPECS[k])
        cols.append(y)
        labels.append(z)
        ks.append(k)
    return np.stack(cols, axis=1), np.stack(labels, axis=1), np.array(ks)


def _censored_loglik(y: np.ndarray, thr: float, means, sds, weights) -> float:
    """Exact log-likelihood of a censored mixture: densities above thr, the mass below thr for each zero."""
    means, sds, weights = (np.asarray(a, dtype=float) for a in (means, sds, weights))
    obs = y[y >= thr]
    n_cens = int((y < thr).sum())
    dens = np.log(weights)[None, :] + stats.norm.logpdf(obs[:, None], means[None, :], sds[None, :])
    mass = np.log(weights) + stats.norm.logcdf(thr, means, sds)
    return float(logsumexp(dens, axis=1).sum() + n_cens * logsumexp(mass))


def _direct_fit(y: np.ndarray, thr: float, means, sds, weights):
    """Maximise the censored likelihood with L-BFGS over (μ, log σ, softmax logits), started at ``means`` etc."""
    k = len(means)

    def unpack(theta):
        logits = np.concatenate([[0.0], theta[2 * k :]])
        return theta[:k], np.exp(theta[k : 2 * k]), np.exp(logits - logsumexp(logits))

    def neg(theta):
        return -_censored_loglik(y, thr, *unpack(theta))

    start = np.concatenate([means, np.log(sds), np.log(np.asarray(weights[1:]) / weights[0])])
    res = optimize.minimize(
        neg, start, method="L-BFGS-B", options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8}
    )
    m, s, w = unpack(res.x)
    return -res.fun, m, s, w


def test_simulated_truth_is_recovered():
    X, Z, ks = _simulated()
    res = fit_ltmg(X, threshold=THR, max_components=3)
    assert (res.n_components == ks).mean() >= 0.9
    for g in np.flatnonzero(res.n_components == ks):
        truth = np.asarray(SPECS[ks[g]][0])
        assert np.abs(res.means[g, : ks[g]] - truth).max() < 0.15
        assert np.isnan(res.means[g, ks[g] :]).all()
    expressed = X > 0
    assert (res.signal[expressed] == Z[expressed]).mean() >= 0.95
    assert (res.signal[~expressed] == 0).all()
    # BIC as documented: −2 log L + (3K − 1) log n.
    np.testing.assert_allclose(
        res.bic, -2 * res.log_likelihood + (3 * np.arange(1, 4) - 1) * np.log(X.shape[0])
    )


@pytest.mark.parametrize(
    ("means", "sds", "weights"),
    [
        ([1.2], [0.5], [1.0]),
        ([0.9, 2.5], [0.4, 0.5], [0.6, 0.4]),
        ([1.0, 2.2, 3.6], [0.3, 0.35, 0.4], [0.3, 0.3, 0.4]),
    ],
)
def test_em_matches_direct_maximum_likelihood(means, sds, weights):
    rng = np.random.default_rng(7)
    y, _ = _gene(rng, 2000, means, sds, weights)
    k = len(means)
    res = fit_ltmg(y[:, None], threshold=THR, max_components=k, max_iter=3000, tol=1e-9)
    assert res.n_components[0] == k
    em = (res.means[0, :k], res.sds[0, :k], res.weights[0, :k])
    ll_em = _censored_loglik(y, THR, *em)
    # The module's own log-likelihood agrees with the independent one.
    assert res.log_likelihood[0, k - 1] == pytest.approx(ll_em, abs=1e-2)
    ll_direct, m, s, w = _direct_fit(y, THR, *em)
    assert ll_em >= ll_direct - 0.05
    np.testing.assert_allclose(em[0], m, atol=0.01)
    np.testing.assert_allclose(em[1], s, atol=0.01)
    np.testing.assert_allclose(em[2], w, atol=0.01)
    # Started elsewhere (the truth), the direct fit does not find a better optimum either.
    ll_truth_start, *_ = _direct_fit(y, THR, means, sds, weights)
    assert ll_em >= ll_truth_start - 0.05


def test_censoring_corrects_the_truncation_bias():
    rng = np.random.default_rng(3)
    mu, sd, thr = 1.0, 0.5, 1.25  # about 69 % of the cells fall below the threshold
    y = rng.normal(mu, sd, size=6000)
    y[y < thr] = 0.0
    assert (y == 0).mean() > 0.6
    res = fit_ltmg(y[:, None], threshold=thr)
    naive = y[y > 0].mean()
    assert naive - mu > 0.4
    assert res.n_components[0] == 1
    assert abs(res.means[0, 0] - mu) < 0.08
    assert abs(res.sds[0, 0] - sd) < 0.05


def test_sparse_and_dense_agree_and_labels_follow_means():
    X, _, _ = _simulated(n=800, genes=12, seed=5)
    dense = fit_ltmg(X, threshold=THR)
    sparse = fit_ltmg(sp.csr_matrix(X), threshold=THR)
    assert isinstance(dense.signal, np.ndarray) and dense.signal.dtype == np.int8
    assert sp.issparse(sparse.signal) and sparse.signal.format == "csr" and sparse.signal.dtype == np.int8
    assert sparse.signal.nnz == np.count_nonzero(X)  # zeros stay implicit
    np.testing.assert_array_equal(sparse.signal.toarray(), dense.signal)
    np.testing.assert_array_equal(sparse.n_components, dense.n_components)
    np.testing.assert_allclose(sparse.means, dense.means, equal_nan=True)
    assert (dense.signal[X == 0] == 0).all()
    assert (dense.signal[X > 0] >= 1).all()
    for g in range(X.shape[1]):
        k = dense.n_components[g]
        assert (np.diff(dense.means[g, :k]) > 0).all()
        # Mean of the values given each label increases with the label.
        col, lab = X[:, g], dense.signal[:, g]
        level = [col[lab == j].mean() for j in range(1, k + 1) if (lab == j).any()]
        assert (np.diff(level) > 0).all()


def test_default_threshold_and_small_genes():
    rng = np.random.default_rng(2)
    X = np.zeros((500, 3))
    X[:, 0] = np.where(rng.random(500) < 0.5, rng.normal(2.0, 0.3, 500).clip(0.7), 0.0)
    X[:4, 1] = [1.0, 2.0, 3.0, 4.0]  # too few values for a mixture
    res = fit_ltmg(X)
    assert res.threshold == pytest.approx(X[X > 0].min())
    assert res.n_components.tolist()[1:] == [1, 0]
    assert res.signal[:4, 1].tolist() == [1, 1, 1, 1]
    assert np.isnan(res.bic[1, 1:]).all() and np.isnan(res.means[2]).all()
    assert (res.signal[:, 2] == 0).all()


def test_deterministic():
    X, _, _ = _simulated(n=600, genes=9, seed=11)
    a = fit_ltmg(sp.csc_matrix(X), threshold=THR, seed=0)
    b = fit_ltmg(sp.csc_matrix(X), threshold=THR, seed=0)
    np.testing.assert_array_equal(a.signal.toarray(), b.signal.toarray())
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.bic, b.bic)


def test_rejects_negative_values():
    with pytest.raises(ValueError, match="non-negative"):
        fit_ltmg(np.array([[1.0, -0.5], [0.0, 2.0]]))
