"""Shared fixtures of the app tests: one run store with tiny real runs, trained once per session.

The runs are trained in-process through ``pipeline.execute`` (the same path the background worker
takes) on a toy dataset whose cell types include a hostile name, so every page is tested against a
label that must be shown as text. Every registered model is trained with its own smoke settings
(``Model.smoke``); a model that fails to train fails the tests.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scgraph_core import pipeline
from scgraph_core.labels import LabelSpec
from scgraph_core.models import base
from scgraph_core.runs import Run, RunStore
from tests.helpers import toy_counts

APP = Path(__file__).resolve().parents[2] / "app.py"
HOSTILE = '<script>alert("x")</script>'


def hostile_toy(n_cells: int = 150, seed: int = 0):
    """Toy counts whose third cell type is called <script>..., and one gene name with HTML in it."""
    adata = toy_counts(n_cells=n_cells, seed=seed)
    adata.obs["celltype"] = adata.obs["celltype"].replace({"type2": HOSTILE})
    names = list(adata.var_names)
    names[0] = "<b>GENE0</b>"
    adata.var_names = names
    return adata


def train(store: RunStore, model: str, *, name: str, adata=None, seed: int = 0) -> Run:
    smoke = base.get(model).smoke
    overrides = {**smoke, "train": {**smoke.get("train", {}), "seed": seed}}
    # A model that learns from labels trains on them (a held-out share scores it); "celltype" still scores.
    labels = (
        LabelSpec(key="celltype", holdout_fraction=0.2, seed=seed) if base.get(model).uses_labels else None
    )
    config = pipeline.resolve_config(model, "quick", overrides, label_key="celltype", labels=labels)
    record = config.to_dict()
    record["input"] = {"path": "toy", "orientation": "auto", "format": None}
    run = store.create(model=model, name=name, dataset="toy (hostile labels)", config=record)
    pipeline.execute(adata if adata is not None else hostile_toy(), config, run=run)
    return run


@dataclass
class Home:
    path: Path
    runs: dict[str, str] = field(default_factory=dict)  # role -> run id

    @property
    def store(self) -> RunStore:
        return RunStore(self.path / "runs")

    def copy_run(self, role: str, new_name: str) -> str:
        """A cheap extra run: a copy of an existing run folder under a new id."""
        src = self.store.open(self.runs[role])
        new_id = self.store.new_id("copy")
        shutil.copytree(src.path, self.store.root / new_id)
        self.store.rename(new_id, new_name)
        return new_id


@pytest.fixture(scope="session")
def app_home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("app_home"))
    store = home.store
    home.runs["cellvgae"] = train(store, "cellvgae", name="tiny CellVGAE").id
    for model, cls in base.available().items():
        if model != "cellvgae":
            home.runs[model] = train(store, model, name=f"tiny {cls.title}").id
    return home


@pytest.fixture(autouse=True)
def _app_home_env(app_home, monkeypatch):
    monkeypatch.setenv("SCGRAPH_HOME", str(app_home.path))


def open_page(
    page: str, *, active: str | None = None, state: dict | None = None, timeout: float = 180
) -> AppTest:
    """Run the app, then switch to ``pages/<page>.py`` (the Data page is the default)."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    if active is not None:
        at.session_state["active_run"] = active
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    if page != "data":
        at.switch_page(f"pages/{page}.py").run()
    return at


def assert_clean(at: AppTest) -> None:
    """No uncaught exception and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def needs(app_home: Home, model: str) -> str:
    """The id of the tiny run of ``model`` (every registered model has one)."""
    return app_home.runs[model]


def texts(elements) -> list[str]:
    """The text of markdown-like elements with the escapes the app adds to file-supplied text removed."""
    return [str(e.value).replace("\\", "") for e in elements]


def plotly_figures(at) -> list[dict]:
    """The plotly figures on the page, as the JSON Streamlit sends to the browser."""
    import json

    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def plotly_array(value):
    """A plotly JSON array: a plain list, or numpy's typed-array encoding {'dtype', 'bdata'}."""
    import base64

    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)
