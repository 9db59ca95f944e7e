"""CellVGAE's paper preset adapts its data recipe to an input of many genes, and says so."""

from __future__ import annotations

import json

import pytest

from scgraph_core import pipeline
from scgraph_core.models import base
from scgraph_core.models.cellvgae import ADAPTED_RECIPE, RECIPE_MIN_GENES
from scgraph_core.models.cellvgae.model import LARGE_CELLS, LARGE_KL_FACTOR, kl_beta
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
    config, why = _adapt(wide, preset="quick")  # only the paper preset adapts
    assert why is None


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
    LARGE_CELLS the quick preset's weight, unless changed, is LARGE_KL_FACTOR / cells, said in a note."""
    for preset, n in (("quick", 700), ("quick", LARGE_CELLS), ("paper", 700), ("paper", 1_000_000)):
        config, why = _adapt(_cells(n), preset=preset)
        p = config.params
        assert p.kl_weight is None and p.kl_factor == 1.0 and why is None
        assert kl_beta(p, n) == pytest.approx(1 / n)
    config, why = _adapt(_cells(LARGE_CELLS + 1), preset="quick")
    assert config.params.kl_factor == LARGE_KL_FACTOR
    assert kl_beta(config.params, LARGE_CELLS + 1) == pytest.approx(LARGE_KL_FACTOR / (LARGE_CELLS + 1))
    assert why and f"{LARGE_CELLS + 1:,} cells" in why and "--kl-weight" in why
    # A weight or factor the user chose is kept.
    for chosen in ({"kl_weight": 2.0}, {"kl_factor": 5.0}):
        p = _adapt(_cells(50_000), {"model": chosen}, preset="quick")[0].params
        assert (p.kl_weight, p.kl_factor) == (chosen.get("kl_weight"), chosen.get("kl_factor", 1.0))
