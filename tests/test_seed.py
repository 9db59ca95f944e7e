"""One seed: ``--seed`` on the command line, ``train={"seed": ...}`` in the Python API and the app's
"Random seed" field all set TrainSpec.seed and nothing else, so the same seed resolves to the same
configuration on every path."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from scgraph_core import params, pipeline
from scgraph_core.__main__ import build_parser, command_line
from scgraph_core.models import base

SEED = 7


def _cli(model: str, *words: str) -> pipeline.RunConfig:
    argv = ["train", "--model", model, "--preset", "quick", "--input", "demo", *words]
    args = build_parser(argv).parse_args(argv)
    sections = pipeline.sections_for(model)
    overrides = {name: params.given(args, schema, name) for name, schema in sections.items()}
    return pipeline.resolve_config(model, "quick", overrides)


def _api(model: str, monkeypatch: pytest.MonkeyPatch, **sections) -> pipeline.RunConfig:
    seen = {}

    def execute(adata, config, **kwargs):
        seen["config"] = config
        return adata, None

    monkeypatch.setattr(pipeline, "execute", execute)
    pipeline.fit(object(), model, preset="quick", **sections)
    return seen["config"]


def _app(model: str, seed: int) -> pipeline.RunConfig:
    """The app's path: the training form (forms.schema_form) stores the field as an override, and
    scgraph_app.config.current resolves it."""

    def script():
        import streamlit as st

        from scgraph_app import config, forms, state
        from scgraph_core.train import TrainSpec

        cfg = state.config_state()
        cfg.update(model=st.session_state.get("test_model", cfg["model"]), preset="quick")
        base_values = config.base_values(cfg["model"], cfg["preset"])
        forms.schema_form(TrainSpec, "train", base_values["train"], key="seed-test")
        st.session_state["test_resolved"] = config.current().to_dict()

    at = AppTest.from_function(script, default_timeout=60)
    at.session_state["test_model"] = model
    at.run()
    assert not at.exception
    field = next(n for n in at.number_input if n.label == "Random seed")
    field.set_value(seed).run()
    assert not at.exception
    return pipeline.RunConfig.from_dict(at.session_state["test_resolved"])


@pytest.mark.parametrize("model", sorted(base.available()))
def test_the_same_seed_gives_the_same_configuration_on_every_path(model, monkeypatch):
    from_cli = _cli(model, "--seed", str(SEED))
    from_api = _api(model, monkeypatch, train={"seed": SEED})
    from_app = _app(model, SEED)
    assert from_cli.train.seed == SEED
    assert from_cli.to_dict() == from_api.to_dict() == from_app.to_dict()
    # The seed is the training seed only: every other setting is the preset's.
    preset = pipeline.resolve_config(model, "quick").to_dict()
    changed = {
        (section, name)
        for section in ("prepare", "graph", "model_params", "train", "cluster")
        for name, value in from_cli.to_dict()[section].items()
        if value != preset[section][name]
    }
    assert changed == {("train", "seed")}


def test_the_graph_seed_has_its_own_flag_and_round_trips():
    config = _cli("cellvgae", "--seed", "3", "--graph-seed", "5")
    assert (config.train.seed, config.graph.seed) == (3, 5)
    record = {**config.to_dict(), "input": {"path": "builtin:pbmc68k_reduced"}}
    words = command_line(record).split()
    assert words[words.index("--seed") + 1] == "3" and words[words.index("--graph-seed") + 1] == "5"
    assert _cli("cellvgae", *words[words.index("--input") + 2 :]).to_dict() == config.to_dict()
