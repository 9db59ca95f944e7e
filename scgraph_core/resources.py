"""Where the engine finds its own files and code, installed or not: nothing here reads the repository layout.

Static files the engine needs (the attention graph's HTML template) are package data under
``scgraph_core/assets`` (declared in pyproject.toml) and are read through :mod:`importlib.resources`, so
``pip install .`` carries them. Child processes (the background worker, the isolated file reader) run
``python -m scgraph_core...`` with :func:`child_env`, which puts the folder that holds this package on
their import path: the source checkout when run from one, site-packages when installed.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["asset_text", "child_env", "import_root"]

_PACKAGE = __package__ or "scgraph_core"


def asset_text(name: str) -> str:
    """The text of the package data file ``scgraph_core/assets/<name>``."""
    return resources.files(_PACKAGE).joinpath("assets", name).read_text(encoding="utf-8")


def import_root() -> Path:
    """The folder that holds the ``scgraph_core`` package (what a child process needs on its path)."""
    return Path(str(resources.files(_PACKAGE))).resolve().parent


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's environment) whose PYTHONPATH starts with
    :func:`import_root`, so a child ``python -m scgraph_core`` imports this very engine whatever its
    working folder."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(import_root()), out.get("PYTHONPATH")) if p)
    return out
