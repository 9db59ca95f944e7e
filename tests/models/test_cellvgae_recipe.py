"""CellVGAE's presets adapt their data recipe to an input of many genes, and say so."""

from __future__ import annotations

import itertools
import json

import pytest

from scgraph_core import pipeline
from scgraph_core.models import base
from scgraph_core.models.cellvgae import ADAPTED_RECIPE, RECIPE_MIN_GENES
from scgraph_core.models.cellvgae.model import KL_RAMP, LARGE_KL_FACTOR, kl_beta, quick_kl_weight
from scgraph_core.runs import Run
from tests.helpers import toy_counts

FAST = {"model": {"hidden": [16, 16], "heads": [2], "latent": 8, "epochs": 3}, "cluster": {"min_cluster_sizes": [5], "min_samples": [3]}}  # fmt: skip


def _adapt(adata, overrides=None, preset="paper"):
    config = pipeline.resolve_config("cellvgae", preset, overrides or {})
    return base.get("cellvgae").adapt(config, adata)


def test_many_genes_get_the_suite_recipe_and_few_genes_keep_the_paper_one():
    wide = toy_counts(n_cells=60, n_genes=RECIPE_MIN_GENES + 1)
    config, why = _adapt(wide)
    assert (config.prepare.n_hvg, config.prepare.n_graph_genes) == (1000, 2000)
    assert (config.graph.use, config.graph.n_pcs, config.graph.k) == ("pca", 50, 15)
    assert why and f"{RECIPE_MIN_GENES + 1:,} genes" in why and "--recipe fixed" in why
    narrow = toy_counts(n_cells=60, n_genes=RECIPE_MIN_GENES)
    config, why = _adapt(narrow)
    assert why is None and (config.prepare.n_hvg, config.graph.k, config.graph.use) == (250, 5, "graph_genes")


def test_settings_the_user_changed_are_kept_and_fixed_changes_nothing():
    wide = toy_counts(n_cells=60, n_genes=1500)
    config, why = _adapt(wide, {"graph": {"k": 7}, "prepare": {"n_hvg": 300}})
    assert config.graph.k == 7 and config.prepare.n_hvg == 300
    assert (
        config.graph.use == "pca"
        and config.prepare.n_graph_genes == ADAPTED_RECIPE["prepare"]["n_graph_genes"]
    )
    assert "k = " not in why and "n_hvg" not in why
    config, why = _adapt(wide, {"model": {"recipe": "fixed"}})
    assert why is None and config.graph.k == 5
    config, why = _adapt(wide, {"model": {"recipe": "fixed"}}, preset="quick")
    assert why is None and (config.prepare.n_hvg, config.graph.k) == (250, 10)


def test_the_quick_preset_adapts_to_many_genes_too():
    """The quick preset's small network on 1,000 HVGs and a graph on 50 PCs of 2,000 (its k 10 becomes 15); an
    input of 1,000 genes or fewer keeps the preset as written."""
    config, why = _adapt(toy_counts(n_cells=60, n_genes=RECIPE_MIN_GENES + 1), preset="quick")
    assert (config.prepare.n_hvg, config.prepare.n_graph_genes) == (1000, 2000)
    assert (config.graph.use, config.graph.n_pcs, config.graph.k) == ("pca", 50, 15)
    assert (config.params.hidden, config.params.epochs) == ((64, 64), 60)
    assert why and "--recipe fixed" in why
    config, why = _adapt(toy_counts(n_cells=60, n_genes=RECIPE_MIN_GENES), preset="quick")
    assert why is None and (config.prepare.n_hvg, config.prepare.n_graph_genes, config.graph.k) == (
        250,
        250,
        10,
    )


def test_the_run_records_what_was_chosen_and_why(tmp_path):
    wide = toy_counts(n_cells=120, n_genes=1200)
    config = pipeline.resolve_config("cellvgae", "paper", FAST, label_key="celltype")
    run = Run.create_at(
        tmp_path / "run", model="cellvgae", config={**config.to_dict(), "input": {"path": "x"}}
    )
    out, result = pipeline.execute(wide, config, run=run)
    recorded = json.loads(run.file("config.json").read_text())
    assert recorded["graph"]["use"] == "pca" and recorded["graph"]["k"] == 15
    assert recorded["prepare"]["n_hvg"] == 1000 and recorded["input"] == {"path": "x"}
    assert "recipe_note" in recorded and result.metrics["recipe"] == recorded["recipe_note"]
    assert result.metrics["notes"][0] == recorded["recipe_note"]
    assert out.uns["scgraph"]["config"]["graph"]["k"] == 15
    assert result.metrics["n_features"] == 1000


@pytest.mark.parametrize("n_genes", [RECIPE_MIN_GENES + 1])
def test_finishing_an_adapted_run_reads_the_adapted_config(n_genes):
    config = pipeline.resolve_config("cellvgae", "paper")
    adapted, _ = _adapt(toy_counts(n_cells=40, n_genes=n_genes))
    again = pipeline.RunConfig.from_dict(adapted.to_dict())
    assert base.get("cellvgae").adapt(again, toy_counts(n_cells=40, n_genes=n_genes))[1] is None
    assert again.graph == adapted.graph and config.graph != adapted.graph


def _cells(n: int):
    import anndata as ad
    import scipy.sparse as sp

    return ad.AnnData(sp.csr_matrix((n, 20), dtype="float32"))


def test_both_presets_weigh_the_kl_term_by_one_over_the_cells_and_quick_more_above_many_cells():
    """The paper's 1 / cells (the quick preset's former fixed 3 left the encoder weights meaningless); above
    KL_RAMP[0] cells the quick preset's weight, unless changed, rises on a log scale to LARGE_KL_FACTOR / cells at
    KL_RAMP[1] and follows it above, said in a note; it never jumps with the number of cells."""
    low, high = KL_RAMP
    for preset, n in (("quick", 700), ("quick", low), ("paper", 700), ("paper", 1_000_000)):
        config, why = _adapt(_cells(n), preset=preset)
        p = config.params
        assert p.kl_weight is None and p.kl_factor == 1.0 and why is None
        assert kl_beta(p, n) == pytest.approx(1 / n)
    for n in (low + 1, 50_000, high, 1_000_000):
        config, why = _adapt(_cells(n), preset="quick")
        assert kl_beta(config.params, n) == pytest.approx(quick_kl_weight(n))
        assert why and f"{n:,} cells" in why and "--kl-weight" in why
    assert quick_kl_weight(high) == pytest.approx(LARGE_KL_FACTOR / high)
    assert quick_kl_weight(1_000_000) == pytest.approx(LARGE_KL_FACTOR / 1_000_000)
    # Continuous at both ends and rising in between (log-linear: the midpoint is the geometric mean).
    assert quick_kl_weight(low + 1) == pytest.approx(1 / low, rel=1e-3)
    assert quick_kl_weight(high - 1) == pytest.approx(LARGE_KL_FACTOR / high, rel=1e-2)
    mid = int(round((low * high) ** 0.5))
    assert quick_kl_weight(mid) == pytest.approx((1 / low * LARGE_KL_FACTOR / high) ** 0.5, rel=1e-3)
    ramp = [quick_kl_weight(n) for n in range(low, high + 1, 1000)]
    assert all(b > a for a, b in itertools.pairwise(ramp))
    # A weight or factor the user chose is kept.
    for chosen in ({"kl_weight": 2.0}, {"kl_factor": 5.0}):
        p = _adapt(_cells(50_000), {"model": chosen}, preset="quick")[0].params
        assert (p.kl_weight, p.kl_factor) == (chosen.get("kl_weight"), chosen.get("kl_factor", 1.0))
