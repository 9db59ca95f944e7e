"""The imputation statistics the Imputation page shows, computed by the engine."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest

from scgraph_core import imputation


def test_statistics_of_one_gene():
    observed = np.array([0, 0, 0, 2, 4], dtype=float)
    imputed = np.array([0.5, 1.0, 1.5, 2.0, 4.0])
    s = imputation.imputation_stats(observed, imputed)
    assert s.n_cells == 5
    assert s.zero_fraction == pytest.approx(0.6)
    assert s.mean_at_zeros == pytest.approx(1.0)
    assert s.mean_elsewhere == pytest.approx(3.0)
    assert s.correlation == pytest.approx(np.corrcoef(observed, imputed)[0, 1])


def test_constant_or_empty_values_give_nan_not_errors():
    s = imputation.imputation_stats(np.zeros(4), np.arange(4.0))
    assert s.zero_fraction == 1.0 and math.isnan(s.mean_elsewhere) and math.isnan(s.correlation)
    s = imputation.imputation_stats(np.ones(3), np.ones(3))
    assert s.zero_fraction == 0.0 and math.isnan(s.mean_at_zeros) and math.isnan(s.correlation)
    s = imputation.imputation_stats([], [])
    assert s.n_cells == 0 and math.isnan(s.zero_fraction)
    with pytest.raises(ValueError, match="observed has 2 values"):
        imputation.imputation_stats([1, 2], [1, 2, 3])


def test_expected_counts_are_compared_with_raw_counts():
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    assert imputation.observed_layer(adata, "counts") == (None, "X (log-normalised)")  # no counts kept
    adata.layers["counts"] = np.ones((3, 2), dtype=np.float32)
    assert imputation.observed_layer(adata, "counts") == ("counts", "raw counts")
    assert imputation.observed_layer(adata, "lognorm") == (None, "X (log-normalised)")
    assert imputation.observed_layer(adata, None) == (None, "X (log-normalised)")
