from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from scgraph_core import params
from scgraph_core.errors import ConfigError


@dataclass(frozen=True)
class Demo:
    k: int = params.param(5, "neighbours per cell", min=1, max=100)
    lr: float = params.param(1e-4, "learning rate", min=0.0)
    conv: str = params.param("gat", "encoder layer", choices=("gat", "gcn"))
    hidden: tuple[int, ...] = params.param((128, 128), "hidden sizes", min=1)
    cutoff: float | None = params.param(None, "optional cut-off")
    flag: bool = params.param(False, "a switch")

    def check(self) -> None:
        if self.conv == "gcn" and self.k > 50:
            raise ConfigError("gcn needs k <= 50")


def test_defaults_and_roundtrip():
    d = params.from_dict(Demo)
    assert d.k == 5 and d.hidden == (128, 128) and d.cutoff is None
    again = params.from_dict(Demo, params.to_dict(d))
    assert again == d
    assert params.to_dict(d)["hidden"] == [128, 128]


def test_coercion_from_strings():
    d = params.from_dict(Demo, {"k": "7", "lr": "0.01", "hidden": "64,32", "flag": "yes", "cutoff": "2.5"})
    assert (d.k, d.lr, d.hidden, d.flag, d.cutoff) == (7, 0.01, (64, 32), True, 2.5)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"k": 0}, "at least 1"),
        ({"k": "five"}, "whole number"),
        ({"k": 2.5}, "whole number"),
        ({"conv": "mlp"}, "one of gat, gcn"),
        ({"hidden": "64,-1"}, "at least 1"),
        ({"flag": "maybe"}, "true or false"),
        ({"nope": 1}, "unknown parameter"),
        ({"conv": "gcn", "k": 60}, "gcn needs"),
    ],
)
def test_invalid_values_name_the_problem(values, words):
    with pytest.raises(ConfigError, match=words):
        params.from_dict(Demo, values)


def test_argparse_flags_only_given_values():
    parser = argparse.ArgumentParser()
    params.add_arguments(parser, Demo)
    ns = parser.parse_args(["--k", "9", "--hidden", "32,16"])
    assert params.given(ns, Demo) == {"k": "9", "hidden": "32,16"}
    assert "--cutoff" in parser.format_help()


def test_describe_exposes_help_and_ranges():
    infos = {i.name: i for i in params.describe(Demo)}
    assert infos["k"].kind == "int" and infos["k"].min == 1 and infos["k"].help == "neighbours per cell"
    assert infos["hidden"].kind == "ints"
    assert infos["cutoff"].optional
    assert infos["conv"].choices == ("gat", "gcn")


def test_a_name_two_sections_declare_gets_its_own_flag(capsys):
    from scgraph_core.__main__ import main

    parser = argparse.ArgumentParser()

    @dataclass(frozen=True)
    class Other:
        k: int | None = params.param(None, "clusters", min=1)
        seed: int = params.param(0, "seed")

    @dataclass(frozen=True)
    class WithSeed:
        k: int = params.param(5, "neighbours per cell", min=1)
        seed: int = params.param(0, "seed")

    @dataclass(frozen=True)
    class Training:
        seed: int = params.param(0, "seed")

    params.add_arguments(parser, WithSeed, section="graph")
    params.add_arguments(parser, Training, section="train")
    params.add_arguments(parser, Other, section="cluster")
    ns = parser.parse_args(["--k", "9", "--seed", "3"])
    # --k is the graph's (first come), --seed is always the training seed (FLAG_OWNERS), whatever the order.
    assert params.given(ns, WithSeed, "graph") == {"k": "9"}
    assert params.given(ns, Training, "train") == {"seed": "3"}
    assert params.given(ns, Other, "cluster") == {}
    ns = parser.parse_args(["--cluster-k", "4", "--graph-seed", "5", "--cluster-seed", "6"])
    assert params.given(ns, Other, "cluster") == {"k": "4", "seed": "6"}
    assert params.given(ns, WithSeed, "graph") == {"seed": "5"} and params.given(ns, Training, "train") == {}
    with pytest.raises(SystemExit):
        main(["train", "--model", "scvgae", "--help"])
    text = capsys.readouterr().out
    assert "--cluster-k" in text and "--model-n-pcs" in text and "--graph-seed" in text


def test_labels_live_in_one_table_and_declarations_win():
    from scgraph_core import data, graphs
    from scgraph_core.cluster import ClusterParams
    from scgraph_core.train import TrainSpec

    assert params.info_of(data.PrepareSpec, "n_hvg").label == params.LABELS["n_hvg"]
    assert params.info_of(TrainSpec, "seed").label == "random seed"
    assert params.info_of(graphs.GraphSpec, "seed").label == "graph seed"  # declared: not the run's seed
    assert params.info_of(graphs.GraphSpec, "k").label == "neighbours (k)"  # declared in graphs.py
    assert params.info_of(ClusterParams, "k").label == "k-means clusters"  # SCHEMA_LABELS
    assert params.info_of(Demo, "cutoff").label == "cutoff"  # no label anywhere: the name
    with pytest.raises(KeyError):
        params.info_of(Demo, "nope")


def test_the_app_reads_labels_from_the_engine_only():
    """forms.py keeps no label table of its own (one place: params.LABELS and the declarations)."""
    import scgraph_app.forms as forms

    assert not hasattr(forms, "LABELS") and not hasattr(forms, "SECTION_LABELS")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_non_finite_numbers_are_refused_in_every_parameter(value):
    """--lr nan once passed validation and crashed training; an infinite whole number overflowed."""
    from scgraph_core import pipeline
    from scgraph_core.models import base

    for model in base.available():
        schema = base.get(model).Params
        for info in params.describe(schema):
            if info.kind in ("float", "floats", "int", "ints"):
                with pytest.raises(ConfigError, match=info.name):
                    params.from_dict(schema, {info.name: value})
    with pytest.raises(ConfigError, match="lr must be"):
        pipeline.resolve_config("cellvgae", "paper", {"model": {"lr": value}})


def test_the_command_line_refuses_nan_before_reading_data(capsys):
    from scgraph_core.__main__ import main

    code = main(["train", "--model", "cellvgae", "--input", "/nonexistent.h5ad", "--lr", "nan"])
    assert code == 2
    err = capsys.readouterr().err
    assert "lr must be a finite number" in err and "Traceback" not in err


def test_worth_changing_and_shown_if_come_from_the_declarations():
    from scgraph_core.models import base

    infos = {i.name: i for i in params.describe(base.get("cellvgae").Params)}
    assert not infos["epochs"].advanced and not infos["latent"].advanced
    assert infos["variance"].advanced and infos["attn_dropout"].advanced
    assert infos["expr_weight"].shown({"expr_decoder": 64}) and not infos["expr_weight"].shown(
        {"expr_decoder": 0}
    )
    assert infos["kl_weight"].shown({"regularizer": "kl"}) and not infos["kl_weight"].shown(
        {"regularizer": "mmd"}
    )
    assert infos["epochs"].shown({})  # no condition: always shown
    aae = {i.name: i for i in params.describe(base.get("attentionae").Params)}
    assert aae["dec_tol"].shown({"dec_epochs": 100}) and not aae["dec_tol"].shown({"dec_epochs": 0})
    # Every name listed as worth changing exists in its schema (a renamed field must not vanish silently).
    from scgraph_core import graphs, train
    from scgraph_core.cluster import ClusterParams

    schemas = {s.__name__: s for s in (graphs.GraphSpec, train.TrainSpec, ClusterParams)}
    schemas.update({cls.Params.__name__: cls.Params for cls in base.available().values()})
    for schema_name, names in params.WORTH_CHANGING.items():
        fields = {i.name for i in params.describe(schemas[schema_name])}
        assert names <= fields, (schema_name, names - fields)
