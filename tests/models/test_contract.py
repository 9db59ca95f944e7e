"""The same end-to-end checks for every registered model: train a few epochs (``Model.smoke``), write the
run folder, reopen ``result.h5ad``, and find every view the manifest declares where it says.

A new model is picked up here by its registry line alone (``base.MODEL_MODULES``)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from scgraph_core import pipeline
from scgraph_core.labels import LabelSpec
from scgraph_core.models import base
from scgraph_core.results import VIEW_KEYS
from scgraph_core.runs import Run
from tests.helpers import toy_counts

MODELS = sorted(base.available())


@pytest.fixture(scope="module")
def toy():
    return toy_counts(n_cells=150, n_genes=60)


def _slot(adata: ad.AnnData, kind: str, key: str) -> bool:
    return key in getattr(adata, kind)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_writes_and_reopens_with_its_declared_views(name, toy, tmp_path):
    cls = base.get(name)
    smoke = cls.smoke
    assert smoke, f"{name} declares no smoke settings (Model.smoke) for a seconds-long run"
    # A model that learns from labels trains on a LabelSpec with a held-out share; "celltype" still scores.
    labels = LabelSpec(key="celltype", holdout_fraction=0.2) if cls.uses_labels else None
    config = pipeline.resolve_config(name, "quick", smoke, label_key="celltype", labels=labels)
    run = Run.create_at(tmp_path / name, model=name, config=config.to_dict())
    out, result = pipeline.execute(toy.copy(), config, run=run)
    assert run.state == "done", run.status
    # The run folder holds the contract files; metrics carry the scoring keys.
    metrics = json.loads(run.file("metrics.json").read_text())
    for key in (
        "ari",
        "nmi",
        "n_clusters",
        "noise",
        "seconds_total",
        "seconds_graph",
        "seconds_train",
        "seconds_analysis",
        "seconds_write",
        "peak_memory_mb",
    ):
        assert key in metrics, (name, key)
    assert 0.0 <= metrics["nmi"] <= 1.0
    assert (
        metrics["seconds_graph"] + metrics["seconds_train"] + metrics["seconds_analysis"]
        <= metrics["seconds_total"]
    )
    back = ad.read_h5ad(run.file("result.h5ad"))
    views = back.uns["scgraph"]["views"]
    assert views["model"] == name
    assert set(views) <= set(VIEW_KEYS) | {"uns_key"}, set(views) - set(VIEW_KEYS)
    # Every declared view is where the manifest says, with one row per cell (or gene).
    emb = back.obsm[views["embedding"]]
    assert emb.shape[0] == back.n_obs and np.isfinite(emb[np.isfinite(emb).all(axis=1)]).all()
    assert back.obsm[views["umap"]].shape == (back.n_obs, 2)
    assert _slot(back, "obs", views["clusters"])
    for key in views.get("other_clusters", []):
        assert _slot(back, "obs", key), (name, key)
    if "probabilities" in views:
        assert back.obsm[views["probabilities"]].shape[1] == len(views["probability_names"])
    if "imputed_layer" in views:
        assert back.layers[views["imputed_layer"]].shape == back.shape
        assert views["imputed_scale"] in ("counts", "lognorm")
    for layer in views.get("attention_layers", []):
        att = views["attention"][layer]
        assert _slot(back, "obsp", att["obsp"]) and back.obsp[att["obsp"]].shape == (back.n_obs, back.n_obs)
        assert att["kind"] in ("graph", "fusion")
    if "gene_weights" in views:
        for key in views["gene_weights"].values():
            assert back.varm[key].shape[0] == back.n_vars
        assert len(back.uns[name][views["marker_table"]]) > 0  # two or more clusters give markers
    if "history" in views:
        assert len(back.uns[name][views["history"]]) > 0
    # What was written is what execute returned.
    assert back.n_obs == out.n_obs and set(back.obsm) == set(out.obsm)
    assert result.embedding_key == views["embedding"]


@pytest.mark.parametrize("name", MODELS)
def test_every_hook_a_model_answers_is_declared_on_the_base_class(name):
    """No model grows a hook the pipeline would have to find by getattr."""
    cls = base.get(name)
    hooks = {
        n for n, v in vars(base.Model).items() if callable(v) or isinstance(v, (classmethod, staticmethod))
    }
    public = {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}
    # Model-specific helpers are fine; but anything named like a pipeline hook must be the base's.
    pipeline_words = {"fit", "analyse", "write", "postprocess"}
    assert not (public & pipeline_words), public & pipeline_words
    for hook in ("train", "embed"):
        assert hook in hooks and hook in vars(cls), (name, hook)


def test_key_added_writes_a_second_result_beside_the_first(toy, tmp_path):
    """Result.write(key_added=...) keeps two runs of one model apart in one AnnData."""
    config = pipeline.resolve_config("cellvgae", "quick", base.get("cellvgae").smoke, label_key="celltype")
    out, result = pipeline.execute(toy.copy(), config)
    again = result.write(out, key_added="second")
    assert "X_second" in again.obsm and "X_cellvgae" in again.obsm
    assert "second_cluster" in again.obs and "cellvgae_cluster" in again.obs
    assert "P_mu_second" in again.varm and "X_umap_second" in again.obsm
    views = again.uns["scgraph"]["views_by_key"]["second"]
    assert views["embedding"] == "X_second" and views["clusters"] == "second_cluster"
    assert again.uns["scgraph"]["views"]["embedding"] == "X_cellvgae"  # the first result is untouched
    with pytest.raises(Exception, match="key_added"):
        result.write(out, key_added="bad key!")


def test_a_run_above_the_umap_sample_draws_a_sampled_layout_and_says_so(toy):
    """``cluster.umap_sample``: the drawn UMAP of a larger run is laid out on a sample, noted in uns and notes."""
    smoke = base.get("cellvgae").smoke
    overrides = {**smoke, "cluster": {**smoke["cluster"], "umap_sample": 100}}
    config = pipeline.resolve_config("cellvgae", "quick", overrides, label_key="celltype")
    out, result = pipeline.execute(toy.copy(), config)
    assert result.uns["umap_sample"] == {"cells": 100, "of": toy.n_obs, "k": 10}
    assert any("random sample of 100 of the 150 cells" in n for n in result.metrics["notes"])
    xy = out.obsm[result.views["umap"]]
    assert xy.shape == (toy.n_obs, 2) and np.isfinite(xy).all()
