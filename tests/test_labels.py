"""LabelSpec: which cells' labels a model may learn from, kept apart from the labels a run is scored on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scgraph_core import pipeline
from scgraph_core.errors import ConfigError, DataError
from scgraph_core.labels import LabelSpec


def _obs(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["T", "B", "NK", "Mono"], size=n, p=[0.5, 0.3, 0.15, 0.05]).astype(object)
    labels[:10] = np.nan
    labels[10:15] = ""
    labels[15:20] = "unknown"
    return pd.DataFrame({"celltype": labels}, index=[f"c{i}" for i in range(n)])


def test_empty_nan_and_the_chosen_unknown_value_are_unlabelled():
    obs = _obs()
    spec = LabelSpec(key="celltype", unlabelled="unknown")
    known = spec.known(obs)
    assert not known[:20].any() and known[20:].all()
    # Without the chosen value, "unknown" is a class like any other.
    assert LabelSpec(key="celltype").known(obs)[15:20].all()


def test_holdout_is_disjoint_stratified_seeded_and_never_reaches_the_training_labels():
    obs = _obs(400)
    spec = LabelSpec(key="celltype", unlabelled="unknown", holdout_fraction=0.3, seed=1)
    train, held = spec.split(obs)
    assert not (train & held).any()
    assert ((train | held) == spec.known(obs)).all()
    labels = spec.values(obs)
    for cls in ("T", "B", "NK", "Mono"):
        n = int((labels == cls).sum())
        assert int((held & (labels == cls).to_numpy()).sum()) == min(round(0.3 * n), n - 1)
    given = spec.training_labels(obs)
    assert all(v is None for v in given[held]) and all(v is None for v in given[~train])
    assert (given[train] == labels.to_numpy()[train]).all()
    # Same seed, same split; another seed, another one.
    assert (spec.split(obs)[1] == held).all()
    other = LabelSpec(key="celltype", unlabelled="unknown", holdout_fraction=0.3, seed=2)
    assert not (other.split(obs)[1] == held).all()


def test_folds_cover_every_known_cell_once():
    obs = _obs(300)
    seen = np.zeros(len(obs), dtype=int)
    for fold in range(5):
        _, held = LabelSpec(key="celltype", folds=5, fold=fold).split(obs)
        seen += held
    known = LabelSpec(key="celltype").known(obs)
    assert (seen[known] == 1).all() and (seen[~known] == 0).all()


def test_bad_label_settings_say_what_to_fix():
    obs = _obs()
    with pytest.raises(DataError, match="obs columns: celltype"):
        LabelSpec(key="cell_type").values(obs)
    with pytest.raises(ConfigError, match="either folds or a hold-out"):
        LabelSpec(key="celltype", folds=5, holdout_fraction=0.2).check()
    with pytest.raises(ConfigError, match="fold must be below"):
        LabelSpec(key="celltype", folds=3, fold=3).check()


def test_run_config_keeps_scoring_and_training_labels_apart_and_round_trips():
    spec = LabelSpec(key="celltype", unlabelled="unknown", holdout_fraction=0.2, seed=3)
    config = pipeline.resolve_config("cellvgae", "quick", label_key="louvain", labels=spec)
    d = config.to_dict()
    assert d["label_key"] == "louvain" and d["labels"]["key"] == "celltype"
    back = pipeline.RunConfig.from_dict(d)
    assert back.labels == spec and back.label_key == "louvain"
    assert "labels" not in pipeline.resolve_config("cellvgae", "quick").to_dict()
