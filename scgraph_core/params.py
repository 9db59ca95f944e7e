"""Typed parameter schemas, declared once.

A schema is a frozen dataclass whose fields are made with :func:`param`. The same declaration gives
the command line its flags (:func:`add_arguments`), the app its form (:func:`describe`), and a run
its ``config.json`` (:func:`to_dict` / :func:`from_dict`, which validates types, ranges and choices).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_MISSING = dataclasses.MISSING


def param(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: typing.Sequence[Any] | None = None,
    label: str | None = None,
    advanced: bool = False,
    shown_if: dict[str, Any] | None = None,
) -> Any:
    """Declare one parameter: its default, a one-line help text and its allowed values.

    ``shown_if`` names the settings this one depends on: {field: value, tuple of values, or True for "on"};
    a form hides the parameter while any of them says the part it tunes is switched off."""
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices is not None else None,
        "label": label,
        "advanced": advanced,
        "shown_if": dict(shown_if) if shown_if else None,
    }
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamInfo:
    """What the app and the command line need to know about one parameter."""

    name: str
    kind: str  # "int", "float", "bool", "str", "ints", "floats"
    optional: bool
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple[Any, ...] | None
    label: str
    advanced: bool
    shown_if: dict[str, Any] | None = None

    def shown(self, values: dict[str, Any]) -> bool:
        """Whether the part this parameter tunes is switched on, given the section's current values."""
        for field, wanted in (self.shown_if or {}).items():
            value = values.get(field)
            if wanted is True:
                if not value:
                    return False
            elif isinstance(wanted, tuple):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
        return True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_SCALARS = {int: "int", float: "float", bool: "bool", str: "str"}
_SEQS = {int: "ints", float: "floats"}


def _kind_of(annotation: Any) -> tuple[str, bool]:
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"unsupported parameter type {annotation!r}")
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation], optional
    if origin in (tuple, list):
        inner = typing.get_args(annotation)[0]
        if inner in _SEQS:
            return _SEQS[inner], optional
    raise TypeError(f"unsupported parameter type {annotation!r}")


# User-facing labels of the parameters whose declaration names none: the one table the app's forms, the
# command line's messages and the estimate's advice all read (through :func:`describe`). A declaration's
# own ``label=`` wins; a name two schemas use for different things is told apart by the schema's name.
LABELS: dict[str, str] = {
    "lr": "learning rate",
    "conv": "graph layer",
    "hidden": "hidden layer sizes",
    "heads": "attention heads",
    "attn_dropout": "attention dropout",
    "feature_dropout": "feature dropout",
    "latent": "latent dimensions",
    "regularizer": "prior term",
    "kl_weight": "KL weight",
    "kl_factor": "KL weight x cells",
    "variance": "variance reading",
    "expr_decoder": "expression decoder size",
    "expr_weight": "expression loss weight",
    "dec_guard": "DEC guard (largest ZINB rise)",
    "val_fraction": "validation edges (share)",
    "test_fraction": "test edges (share)",
    "attention": "export attention",
    "marker_genes": "marker genes per dimension",
    "seed": "random seed",
    "eval_every": "evaluate every (epochs)",
    "patience": "early-stop patience",
    "restore_best": "finish with the best checkpoint",
    "deterministic": "deterministic algorithms",
    "threads": "CPU threads",
    "normalize": "normalisation",
    "target_sum": "total per cell after normalising",
    "n_hvg": "model genes (HVG)",
    "n_graph_genes": "graph genes (KHVG)",
    "hvg_flavor": "HVG method",
    "scale": "feature scaling",
    "max_value": "clip z-scores at",
    "min_genes_per_cell": "min genes per cell",
    "min_cells_per_gene": "min cells per gene",
    "method": "clustering method",
    "space": "HDBSCAN runs on",
    "min_samples": "HDBSCAN min samples",
    "max_noise": "largest noise share",
    "refine": "split large clusters",
    "assign_noise": "assign noise cells",
    "n_neighbors": "neighbours (UMAP, Leiden)",
    "resolution": "Leiden resolution",
    "n_init": "k-means restarts",
}
SCHEMA_LABELS: dict[tuple[str, str], str] = {("ClusterParams", "k"): "k-means clusters"}

# The settings a biologist is likely to change, per schema; a form shows them first and keeps the rest under
# "Usually leave alone" (a parameter declared ``advanced`` is always there). Schemas not listed keep
# their declarations as they are.
WORTH_CHANGING: dict[str, frozenset[str]] = {
    "CellVGAEParams": frozenset({"conv", "latent", "regularizer", "expr_decoder", "lr", "epochs", "recipe"}),
    "ScVGAEParams": frozenset({"hidden", "output", "lr", "epochs", "val_fraction"}),
    "AttentionAEParams": frozenset({"latent", "pretrain_epochs", "dec_epochs", "attention_top", "denoised"}),
    "GraphSpec": frozenset({"kind", "k", "metric", "use", "edge_file"}),
    "TrainSpec": frozenset({"seed", "device", "precision", "patience"}),
    "ClusterParams": frozenset(
        {"method", "hdbscan_select", "min_cluster_sizes", "n_neighbors", "resolution", "k"}
    ),
}


def worth_changing(schema: type, name: str) -> bool:
    """Whether ``name`` belongs with the settings worth changing (see :data:`WORTH_CHANGING`)."""
    chosen = WORTH_CHANGING.get(schema.__name__)
    return chosen is None or name in chosen


def label_of(schema: type, name: str, declared: str | None = None) -> str:
    """The user-facing label of ``schema``'s parameter ``name``: its declared label, else the tables above,
    else the name with spaces."""
    return (
        declared or SCHEMA_LABELS.get((schema.__name__, name)) or LABELS.get(name) or name.replace("_", " ")
    )


def info_of(schema: type, name: str) -> ParamInfo:
    """One parameter of ``schema`` (its default, label, help and allowed values)."""
    for info in describe(schema):
        if info.name == name:
            return info
    raise KeyError(f"{schema.__name__} has no parameter {name!r}")


def describe(schema: type) -> list[ParamInfo]:
    """The parameters of ``schema`` in declaration order."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        if "help" not in f.metadata:
            continue
        kind, optional = _kind_of(hints[f.name])
        m = f.metadata
        out.append(
            ParamInfo(
                name=f.name,
                kind=kind,
                optional=optional,
                default=f.default,
                help=m["help"],
                min=m["min"],
                max=m["max"],
                choices=m["choices"],
                label=label_of(schema, f.name, m["label"]),
                advanced=m["advanced"] or not worth_changing(schema, f.name),
                shown_if=m.get("shown_if"),
            )
        )
    return out


def _coerce(info: ParamInfo, value: Any, where: str) -> Any:
    if value is None:
        if info.optional:
            return None
        raise ConfigError(f"{where}{info.name} must be set ({info.help}).")
    try:
        if info.kind == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = low in ("true", "1", "yes")
            elif not isinstance(value, (bool, int)):
                raise ValueError(value)
            value = bool(value)
        elif info.kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif info.kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
        elif info.kind == "str":
            value = str(value)
        else:
            item = int if info.kind == "ints" else float
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            elif not isinstance(value, (list, tuple)):
                value = [value]
            converted = []
            for v in value:
                if item is int and isinstance(v, float) and not v.is_integer():
                    raise ValueError(v)
                converted.append(item(v))
            value = tuple(converted)
    except (TypeError, ValueError, OverflowError):
        expected = {
            "int": "a whole number",
            "float": "a number",
            "bool": "true or false",
            "str": "text",
            "ints": "a list of whole numbers such as 128,128",
            "floats": "a list of numbers such as 0.4,0.4",
        }[info.kind]
        raise ConfigError(f"{where}{info.name} must be {expected}; got {value!r}.") from None
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}{info.name} must be a finite number; got {v!r}.")
        if info.choices is not None and v not in info.choices:
            allowed = ", ".join(str(c) for c in info.choices)
            raise ConfigError(f"{where}{info.name} must be one of {allowed}; got {v!r}.")
        if info.min is not None and v < info.min:
            raise ConfigError(f"{where}{info.name} must be at least {info.min}; got {v!r}.")
        if info.max is not None and v > info.max:
            raise ConfigError(f"{where}{info.name} must be at most {info.max}; got {v!r}.")
    return value


def from_dict(schema: type, values: dict[str, Any] | None = None, *, where: str = "") -> Any:
    """Build ``schema`` from a mapping, validating every value; unknown keys are an error."""
    values = dict(values or {})
    infos = {i.name: i for i in describe(schema)}
    unknown = sorted(set(values) - set(infos))
    if unknown:
        known = ", ".join(sorted(infos))
        raise ConfigError(f"{where}unknown parameter(s) {', '.join(unknown)}. Known parameters: {known}.")
    kwargs = {name: _coerce(info, values.get(name, info.default), where) for name, info in infos.items()}
    obj = schema(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready values of a schema instance (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# Parameter names whose plain flag belongs to one section of a run's parser: ``--seed`` is always the
# training seed (TrainSpec.seed), the same value the Python API's ``train={"seed": ...}`` and the app's
# training form set. Another section declaring the name gets its prefixed flag (``--graph-seed``).
FLAG_OWNERS: dict[str, str] = {"seed": "train"}


def add_arguments(
    parser: argparse.ArgumentParser, schema: type, *, title: str | None = None, section: str | None = None
) -> None:
    """Add one flag per parameter. Flags default to "not given" so presets can fill the rest.

    A name another section already put on the parser gets the section's prefix (``--cluster-k`` beside the
    graph's ``--k``) when ``section`` is given, so one flag never sets two different things. A name in
    :data:`FLAG_OWNERS` keeps its plain flag for its owning section only: every other section gets the
    prefixed one (``--graph-seed``), whichever section is added first.
    """
    group = parser.add_argument_group(title) if title else parser
    owners: dict[str, list[str | None]] = dict(parser.get_default("_scgraph_owners") or {})
    for info in describe(schema):
        dest, flag = info.name, info.flag
        owner = FLAG_OWNERS.get(info.name)
        if section is not None and owner is not None and section != owner:
            dest, flag = f"{section}.{info.name}", f"--{section}-{flag[2:]}"
        elif flag in parser._option_string_actions:
            if section is None:
                owners[dest] = [*owners.get(dest, []), section]
                continue
            dest, flag = f"{section}.{info.name}", f"--{section}-{flag[2:]}"
        owners[dest] = [*owners.get(dest, []), section]
        shown = list(info.default) if isinstance(info.default, tuple) else info.default
        help_text = f"{info.help} (default: {shown})"
        if info.choices is not None:
            help_text += f"; one of: {', '.join(str(c) for c in info.choices)}"
        metavar = {"ints": "N,N,...", "floats": "X,X,..."}.get(info.kind) or info.name.upper()
        group.add_argument(
            flag,
            dest=dest,
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=metavar,
        )
    parser.set_defaults(_scgraph_owners=owners)


def given(namespace: argparse.Namespace, schema: type, section: str | None = None) -> dict[str, Any]:
    """The schema's parameters that were given on the command line (as raw strings); with ``section``,
    only the flags that belong to it (its prefixed ones and the unprefixed ones it owns or shares)."""
    values = vars(namespace)
    owners = values.get("_scgraph_owners", {})
    out: dict[str, Any] = {}
    for info in describe(schema):
        prefixed = f"{section}.{info.name}"
        if section is not None and prefixed in values:
            out[info.name] = values[prefixed]
        elif info.name in values and (section is None or section in owners.get(info.name, [section])):
            out[info.name] = values[info.name]
    return out
