"""The engine reads nothing from the repository layout: its files are package data, its child processes
find it through the package itself, so ``pip install .`` works."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib import resources as importlib_resources
from pathlib import Path

import scgraph_core
from scgraph_core import plots, resources

PACKAGE = Path(scgraph_core.__file__).resolve().parent
# Text in code (not comments or docstrings) that reaches outside the package folder.
OUTSIDE_TEXT = re.compile(r"\.\./|^assets/|/assets/|benchmarks/|shared/data")


def _outside_references(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "parents":  # Path(__file__).parents[1]
                found.append((node.lineno, "parents[...]"))
        elif isinstance(node, ast.Attribute) and node.attr == "parent":
            if isinstance(node.value, ast.Attribute) and node.value.attr == "parent":
                found.append((node.lineno, ".parent.parent"))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and OUTSIDE_TEXT.search(node.value)
        ):
            found.append((node.lineno, repr(node.value)))
    return found


def test_assets_are_package_data_read_through_importlib_resources():
    template = importlib_resources.files("scgraph_core").joinpath("assets", plots.ATTENTION_TEMPLATE)
    assert template.is_file()
    assert resources.asset_text(plots.ATTENTION_TEMPLATE) == template.read_text(encoding="utf-8")
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert "assets/*" in config["tool"]["setuptools"]["package-data"]["scgraph_core"]
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["scgraph_core*"]


def test_no_engine_module_refers_to_a_path_outside_the_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [
            f"{path.relative_to(PACKAGE)}:{line}: {what}" for line, what in _outside_references(tree)
        ]
    assert not offenders, "\n".join(offenders)


def test_the_check_finds_what_it_looks_for():
    code = 'ROOT = Path(__file__).parents[1]\nA = ROOT.parent.parent\nB = "../shared/data/x.h5ad"\n"""../ in a docstring"""\n'
    assert [what for _, what in _outside_references(ast.parse(code))] == [
        "parents[...]",
        ".parent.parent",
        repr("../shared/data/x.h5ad"),
    ]


def test_child_processes_import_this_engine_from_any_folder(tmp_path):
    assert resources.import_root() == PACKAGE.parent
    env = resources.child_env({"PYTHONPATH": "/elsewhere", "PATH": os.environ.get("PATH", "")})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PACKAGE.parent), "/elsewhere"]
    out = subprocess.run(
        [sys.executable, "-c", "import scgraph_core, sys; print(scgraph_core.__file__)"],
        env=resources.child_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert Path(out.stdout.strip()).resolve().parent == PACKAGE
