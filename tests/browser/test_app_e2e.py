"""The app in a real browser: headless Chromium (Debian's package) driven by Playwright.

Starts ``streamlit run app.py`` on a free port with its own SCGRAPH_HOME. The first test loads the
built-in demo, trains the quick preset through the Training page (the real background worker), reads
the verdict, selects cells on the UMAP, compares them with the other cells (volcano) and saves them
into the run (an obs column and a rank_genes_groups table in result.h5ad), finds the label column's
marker genes (dot plot), draws six genes on the Expression page, stops a second run with one click,
and reloads the page (the dataset, model and active run come back from the address). A second test
loads a raw-count file by its path and trains scVGAE and AttentionAE-sc the same way, for the
Imputation page and the fusion attention, and reloads with that file and model. Screenshots of every
page go to ``$SCGRAPH_SCREENSHOTS`` (README.md's are in ``docs/screenshots/``). Skips with the reason
when Chromium or Playwright is missing (``.ci/run`` installs both); Playwright never downloads a
browser here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from scgraph_app import devserver
from scgraph_core.runs import Run
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
# Screenshots go to a scratch folder unless SCGRAPH_SCREENSHOTS names one (README.md's come from
# ``SCGRAPH_SCREENSHOTS=docs/screenshots make test``), so a test run leaves the checkout unchanged.
SHOTS = Path(os.environ.get("SCGRAPH_SCREENSHOTS", "/tmp/scgraph-screenshots"))
if not SHOTS.is_absolute():
    SHOTS = REPO / SHOTS
FULL_SHOTS = "SCGRAPH_SCREENSHOTS" in os.environ
CHROMIUM = devserver.CHROMIUM
FLAGS = devserver.CHROMIUM_FLAGS
TRAIN_TIMEOUT_S = 420
VIEW_HEIGHT = 1100


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium; .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -r requirements.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser_home")
    env = {
        "SCGRAPH_HOME": str(home),
        # The app reads typed paths only inside its data roots: pytest's temp folder and the shared datasets.
        "SCGRAPH_DATA_ROOTS": os.pathsep.join([str(tmp_path_factory.getbasetemp()), str(SHARED_DATA)]),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    try:
        with devserver.serve(env, home / "streamlit.log") as (url, _pid):
            yield url, home
    finally:
        # The training worker runs in its own session; the run has finished here, but be sure.
        for worker in home.glob("runs/*/worker.json"):
            import json

            pid = json.loads(worker.read_text()).get("pid")
            try:
                os.kill(int(pid), signal.SIGTERM)
            except (ProcessLookupError, TypeError, ValueError):
                pass


_settle = devserver.settle
_go = devserver.go


def _no_exceptions(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    errors = page.locator("[data-testid='stAlertContentError']")
    assert errors.count() == 0, errors.first.inner_text()


def _shot(page, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main block, so grow the window to it.

    Without SCGRAPH_SCREENSHOTS (a plain test run) only the window is taken, at once: the screenshots then
    serve to see what a failing test saw, and the two waits and the resize cost ~35 s per run."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    if not FULL_SHOTS:
        page.screenshot(path=str(SHOTS / f"{name}.png"))
        return
    time.sleep(0.6)  # let plotly finish drawing
    width = page.viewport_size["width"]
    height = page.evaluate(
        "() => { const m = document.querySelector(\"[data-testid='stMain']\");"
        " return m ? m.scrollHeight : document.body.scrollHeight; }"
    )
    page.set_viewport_size({"width": width, "height": int(min(max(height + 40, 900), 3200))})
    time.sleep(0.8)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size({"width": width, "height": VIEW_HEIGHT})


def _visit(page, title: str, selector: str, shot: str) -> None:
    """Open a page, wait for ``selector`` to appear, check it shows no error, take its screenshot."""
    _go(page, title)
    page.wait_for_selector(selector, timeout=60_000)
    _no_exceptions(page)
    _shot(page, shot)


def _choose(page, label: str, option: str | re.Pattern) -> None:
    """Pick an option in the select box labelled ``label``: the first that starts with ``option``
    (or matches the pattern)."""
    box = page.locator("[data-testid='stSelectbox']").filter(has_text=label).first
    box.click()
    if isinstance(option, str):
        option = re.compile("^" + re.escape(option))
    page.locator("[role='option']").filter(has_text=option).first.click()
    _settle(page)


def _add_genes(page, label: str, genes: list[str]) -> None:
    """Type each gene into the multiselect labelled ``label`` and take it with Enter."""
    field = page.locator("[data-testid='stMultiSelect']").filter(has_text=label).first.locator("input")
    for gene in genes:
        field.click()
        field.fill(gene)
        page.locator("[role='option']").filter(has_text=re.compile(f"^{re.escape(gene)}$")).first.click()
        _settle(page)
    page.keyboard.press("Escape")


def _keyed(key: str) -> str:
    """The CSS class Streamlit gives the element made with ``key=key``."""
    return ".st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", key.strip())


def _query(page) -> dict[str, str]:
    """The page address's query parameters (the dataset, model, preset and active run: scgraph_app.url)."""
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def _run_state(run: Path) -> str:
    try:
        return json.loads((run / "status.json").read_text()).get("state", "")
    except (OSError, ValueError):  # caught while the worker rewrites it
        return "unreadable"


def _saved_result(run: Path, until, timeout_s: float = 30):
    """The run's result.h5ad read back once ``until(adata)`` holds (the app writes it atomically)."""
    import anndata as ad

    deadline = time.monotonic() + timeout_s
    while True:
        adata = ad.read_h5ad(run / "result.h5ad")
        if until(adata) or time.monotonic() > deadline:
            return adata
        time.sleep(0.5)


def test_demo_trains_and_every_view_appears(browser, app_url):
    url, home = app_url
    page = browser.new_page(viewport={"width": 1440, "height": VIEW_HEIGHT})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # Data: the demo is preselected.
    page.goto(url)
    page.wait_for_selector("h1:has-text('Data')", timeout=90_000)
    _settle(page, 120)
    assert page.get_by_text("PBMC 68k reduced (built-in demo)").first.is_visible()
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)  # the QC histograms
    _no_exceptions(page)
    _shot(page, "data")

    # Model & graph: the graph statistics and the estimate before training.
    _go(page, "Model & graph")
    page.wait_for_selector("text=The cell graph for these settings", timeout=90_000)
    page.wait_for_selector("text=Estimate", timeout=60_000)
    _no_exceptions(page)
    _shot(page, "model")

    # Training: start the quick preset; the live view draws epochs, then the run finishes.
    _go(page, "Training")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_selector("text=/Epoch \\d+ of 60|Finished\\./", timeout=180_000)
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)  # the live loss curves
    # Wait for a stretch of curve (or the end, on a fast machine) before the screenshot.
    page.wait_for_selector("text=/Epoch ([2-5][0-9]) of 60|Finished\\./", timeout=TRAIN_TIMEOUT_S * 1000)
    _shot(page, "training")
    page.wait_for_selector("text=Finished.", timeout=TRAIN_TIMEOUT_S * 1000)
    _settle(page)
    _no_exceptions(page)
    runs = list((home / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "result.h5ad").exists()
    run = runs[0]
    _shot(page, "training-done")
    # The verdict on the finished run: how good it is, under the curves.
    verdict = page.locator(_keyed(f"verdict:{run.name}"))
    verdict.wait_for(timeout=60_000)
    assert verdict.get_by_text("How good is it?").is_visible()
    verdict.scroll_into_view_if_needed()
    _shot(page, "verdict")

    # Stop on the first click: a second run, stopped with one click while its live view redraws. Its
    # epochs are raised so that it cannot end by itself before the click, however fast the machine.
    _go(page, "Model & graph")
    epochs = page.locator("[class*='-model-epochs']").get_by_role("spinbutton")
    epochs.fill("5000")
    epochs.press("Enter")
    _settle(page)
    _go(page, "Training")
    assert page.get_by_text("(1 setting(s) changed)").first.is_visible()
    page.get_by_role("button", name="Start training").click()
    page.wait_for_selector("text=/Epoch \\d+ of 5000/", timeout=180_000)
    (stopped,) = set((home / "runs").iterdir()) - {run}
    page.locator(_keyed(f"stop:{stopped.name}")).get_by_role("button").click()
    clicked = time.time()
    # The one click is enough: its callback writes the request before the page runs again (which, with the
    # worker training on every core of a busy 2-core machine, can take longer than the request itself).
    while not (stopped / "STOP").exists() and time.time() < clicked + 30:
        time.sleep(0.2)
    assert (stopped / "STOP").exists(), "the first click on Stop was lost"
    # Not asserted here: the page showing "Stop requested." at once (on the busy 2-core machine the page can
    # take longer than the request to run again); the stopped run's "Stopped:" is checked below.
    deadline = clicked + 40
    while not Run(stopped).events("stage_end") and time.time() < deadline:
        time.sleep(0.3)
    ended = Run(stopped).events("stage_end")
    assert ended and ended[-1]["stopped"] and ended[-1]["epochs_run"] < 5000, "the trainer did not stop"
    # The stopped run stays the active one (the address names it). Its label changes from '... · running' to
    # '... · stopped' while the browser still sends the old one; that sent the page back to the previous run.
    page.wait_for_timeout(3_000)
    assert _query(page).get("run") == stopped.name, page.url
    _no_exceptions(page)
    # The run now clusters the best checkpoint's embedding in the background (its state says "stopped"
    # once the results are written: checked after the reload below). The first run is explored meanwhile.
    _choose(page, "Active run", re.compile(r"· done$"))

    # Embedding: the WebGL UMAP of the new run.
    _go(page, "Embedding")
    page.wait_for_selector(".js-plotly-plot .gl-container canvas, .js-plotly-plot canvas", timeout=60_000)
    assert page.locator(".js-plotly-plot").count() >= 1
    _no_exceptions(page)
    _shot(page, "embedding")
    # Select cells with the box tool: their composition appears under the plot.
    plot = page.locator(".js-plotly-plot").first
    plot.hover()
    plot.locator('.modebar-btn[data-title="Box Select"]').click()
    box = plot.locator(".nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.05)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.95, steps=12)
    page.mouse.up()
    page.wait_for_selector("text=/[0-9,]+ cells selected/", timeout=60_000)
    _settle(page)
    assert page.get_by_text("Download the selected cells (CSV)").first.is_visible()
    selected = page.get_by_text(re.compile(r"[0-9,]+ cells selected")).first.inner_text()
    n_selected = int(selected.split()[0].replace(",", ""))
    _no_exceptions(page)
    _shot(page, "embedding-selection")
    # Keep the selection, compare it with the other cells over all genes, save it into the run.
    page.get_by_role("button", name="Keep this selection").click()
    page.wait_for_selector(f"text=selection 1: {n_selected:,} cells", timeout=60_000)
    _settle(page)
    page.locator(_keyed("sel_go")).get_by_role("button").click()
    volcano = page.locator(f"{_keyed('sel_volcano')} .js-plotly-plot")
    volcano.wait_for(timeout=120_000)
    _settle(page)
    genes = set(_saved_result(run, lambda a: True).var_names)
    named = [t.strip() for t in volcano.locator(".annotation-text").all_text_contents()]
    assert named and set(named) <= genes, f"the volcano names {named}, not genes of the result"
    assert page.get_by_text("Higher in selection 1").first.is_visible()
    _no_exceptions(page)
    _shot(page, "selection-de")
    page.locator(_keyed("sel_save")).get_by_role("button").click()
    _settle(page)
    # On a busy 2-core machine the save can wait behind the stopped run, which clusters in the background.
    saved = _saved_result(run, lambda a: "rank_genes_groups_selection_1" in a.uns, timeout_s=90)
    _no_exceptions(page)
    assert "selection_1" in saved.obs, (
        f"the selection was not saved into {run.name}; the page shows {_query(page)}"
    )
    # The contract: an annotation is an obs column, its genes an uns table in rank_genes_groups' layout.
    assert (saved.obs["selection_1"].astype(str) == "selection 1").sum() == n_selected
    rgg = saved.uns["rank_genes_groups_selection_1"]
    assert rgg["params"]["groupby"] == "selection_1"
    assert list(rgg["names"].dtype.names) == ["selection 1"]
    assert set(map(str, rgg["names"]["selection 1"])) == genes
    assert {"scores", "logfoldchanges", "pvals", "pvals_adj"} <= set(rgg)

    # Attention: the pyvis graph draws nodes inside its iframe.
    _go(page, "Attention")
    page.wait_for_selector("iframe", timeout=60_000)
    frame = None
    deadline = time.time() + 60
    while frame is None and time.time() < deadline:
        for f in page.frames:
            if f.url.startswith("about:") or "srcdoc" in (f.url or ""):
                try:
                    if f.locator("#network").count():
                        frame = f
                        break
                except Exception:
                    pass
        time.sleep(0.5)
    assert frame is not None, "the attention graph's iframe did not load"
    frame.wait_for_selector("#network canvas", timeout=60_000)
    n_nodes = frame.evaluate("nodes.length")
    n_edges = frame.evaluate("edges.length")
    assert n_nodes > 10 and n_edges == 120
    _no_exceptions(page)
    time.sleep(2)  # the layout settles
    _shot(page, "attention")

    # Markers: the P_mu marker table.
    _go(page, "Markers")
    page.wait_for_selector("[data-testid='stDataFrame']", timeout=60_000)
    assert page.get_by_text("Marker genes (CSV)").first.is_visible()
    _no_exceptions(page)
    _shot(page, "markers")
    # Markers of the label column (the demo's cell types, a copy of bulk_labels) over all genes, drawn
    # as a dot plot (groups x top genes).
    label_key = Run(run).config["label_key"]
    _choose(page, "Group cells by", f"{label_key} (known cell types)")
    page.locator(_keyed("de_go")).get_by_role("button").click()
    page.get_by_role("tab", name="Dot plot").wait_for(timeout=120_000)
    page.get_by_role("tab", name="Dot plot").click()
    dots = page.locator(f"{_keyed('de_dot')} .js-plotly-plot")
    dots.wait_for(timeout=60_000)
    _settle(page)
    labels = set(saved.obs[label_key].astype(str))
    drawn = dots.evaluate("(el) => ({genes: Array.from(el.data[0].x), groups: Array.from(el.data[0].y)})")
    rows = {t.strip() for t in dots.locator(".yaxislayer-above .ytick text").all_text_contents()}
    assert rows and rows == set(drawn["groups"]) <= labels, (
        f"the dot plot's rows {rows} are not {label_key}'s"
    )
    n_dots = len(set(drawn["groups"])) * len(set(drawn["genes"]))
    assert dots.locator(".scatterlayer .point").count() == n_dots > len(rows)  # one dot per group and gene
    _no_exceptions(page)
    _shot(page, "markers-dotplot")

    # Annotate: the demo's labels counted per type; the CellVGAE run is not a label-learning run, so the
    # page points to training scBiGNN instead of showing predictions.
    _visit(page, "Annotate", "text=1. Your labels", "annotate")
    page.wait_for_selector("text=cells to predict", timeout=60_000)
    assert page.get_by_role("button", name="Train scBiGNN").is_visible()
    assert page.get_by_text("Pick a finished scBiGNN run").first.is_visible()

    _visit(page, "Expression", ".js-plotly-plot", "expression")
    # Six genes in the one figure: an observed and a learnt panel each, every panel drawn with every cell.
    from scgraph_core import interpret

    model_genes = interpret.gene_weight_matrix(saved, "P_mu")[1]
    shown = set(page.locator("[data-testid='stMultiSelect']").first.inner_text().split())
    more = [
        g
        for g in ("CD79A", "FCGR3A", "GNLY", "PPBP", "CD3D", "MS4A1", "S100A8", "HLA-DRA")
        if g in model_genes
    ]
    more = [g for g in more + list(model_genes) if g not in shown][: 6 - len(shown & set(model_genes))]
    _add_genes(page, "Genes (type to search)", more)
    figure = page.locator(f"{_keyed('ex_panels')} .js-plotly-plot")
    page.wait_for_function(
        "(n) => document.querySelectorAll('.st-key-ex_panels .cartesianlayer .subplot').length === n", arg=12
    )
    _settle(page)
    points = figure.evaluate(
        "(el) => Array.from(el.querySelectorAll('.cartesianlayer .subplot'))"
        ".map((s) => s.querySelectorAll('.scatterlayer .point').length)"
    )
    assert points == [saved.n_obs] * 12, f"points drawn per panel: {points}"
    assert figure.locator(".colorbar").count() == 12
    assert page.get_by_text(re.compile("Correlation of learnt and observed|does not vary here")).count() == 6
    _no_exceptions(page)
    _shot(page, "expression-6genes")
    _visit(page, "Runs", "[data-testid='stDataFrame']", "runs")

    # Reload: the dataset, model and active run come back from the page's address. The first run is
    # active, so a session that forgot it would open the newer, stopped run instead.
    _go(page, "Training")
    deadline = time.monotonic() + 20
    while _query(page).get("run") != run.name and time.monotonic() < deadline:
        time.sleep(0.3)
    address = _query(page)
    assert address.get("run") == run.name and address.get("model") == "cellvgae", address
    page.reload()
    page.wait_for_selector("h1:has-text('Training')", timeout=90_000)
    _settle(page, 120)
    assert _query(page) == address
    sidebar = page.locator("[data-testid='stSidebar']")
    assert sidebar.get_by_text("PBMC 68k reduced (built-in demo)").first.is_visible()
    active = sidebar.get_by_role("combobox", name="Active run").input_value()
    assert active.endswith("· done"), f"the reloaded page's active run is {active!r}"
    ready = page.locator("p", has_text="Ready to train:").first.inner_text()
    assert "CellVGAE, quick preset, on PBMC 68k reduced (built-in demo)" in ready, ready
    page.locator("[data-testid='stAlertContentSuccess']", has_text="Finished").wait_for(timeout=60_000)
    _no_exceptions(page)
    _shot(page, "reloaded")

    # The stopped run: its state on disk and on the Training page.
    while _run_state(stopped) not in ("done", "failed", "stopped") and time.time() < clicked + 120:
        time.sleep(0.5)
    assert _run_state(stopped) == "stopped", f"one click on Stop left the run {_run_state(stopped)!r}"
    _choose(page, "Active run", re.compile(r"· stopped$"))
    page.locator("[data-testid='stAlertContentWarning']", has_text="Stopped:").wait_for(timeout=30_000)
    # Its loss curves may hold a single epoch: every panel still shows it (a dot where no line can be drawn).
    curves = page.locator(f"{_keyed(f'loss:{stopped.name}')} .js-plotly-plot")
    curves.wait_for(timeout=30_000)
    drawn = curves.evaluate(
        "(el) => Array.from(el.querySelectorAll('.cartesianlayer .subplot')).map((s) =>"
        " s.querySelectorAll('.scatterlayer .point').length > 0 ||"
        " Array.from(s.querySelectorAll('.scatterlayer path.js-line')).some((p) => /L/.test(p.getAttribute('d') || '')))"
    )
    assert drawn and all(drawn), f"loss panels drawn: {drawn}"
    _no_exceptions(page)
    page.locator("h1").first.hover()  # no tooltip over the page
    _shot(page, "training-stopped")
    assert not dialogs, f"a page opened a dialog: {dialogs}"
    page.close()


def _raw_count_file(tmp_path: Path) -> Path:
    """Part of scvgae_sample from ../shared/data when it is there (real counts for the README's screenshots:
    400 of its 1,000 cells drawn at random, the 1,000 of its 5,000 genes with the most counts, which cuts
    the two trainings to a fifth); otherwise Poisson counts made here, so the test runs in a fresh clone too."""

    real = SHARED_DATA / "scvgae_sample.h5ad"
    if real.exists():
        import anndata
        import numpy as np

        full = anndata.read_h5ad(real)
        cells = np.sort(np.random.default_rng(0).choice(full.n_obs, 400, replace=False))
        genes = np.sort(np.argsort(-np.asarray(full.X.sum(axis=0)).ravel(), kind="stable")[:1000])
        path = tmp_path / "scvgae_sample_part.h5ad"
        full[cells][:, genes].copy().write_h5ad(path)
        return path
    from tests.helpers import toy_counts

    path = tmp_path / "toy_counts.h5ad"
    toy_counts(n_cells=400, n_genes=300, n_types=4).write_h5ad(path)
    return path


def _train_quick(page, model_title: str, runs: Path) -> None:
    """Pick a model's quick preset on the Model & graph page, start it on the Training page, wait for the end.

    The Training page may still show the previous run's "Finished" for a moment after the click, so the end
    is read from the new run's own status file under ``runs`` first, then from the page."""
    before = set(runs.iterdir()) if runs.exists() else set()
    _go(page, "Model & graph")
    radios = page.locator("[data-testid='stRadio']")
    radios.filter(has_text="Model").first.get_by_text(model_title, exact=True).click()
    _settle(page)
    radios.filter(has_text="Preset").first.get_by_text("quick", exact=True).click()
    _settle(page)
    _no_exceptions(page)
    _go(page, "Training")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_selector(
        "text=/Starting the training process|Epoch \\d+ of|Preparing|Building/", timeout=120_000
    )
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    state = "no new run"
    while time.monotonic() < deadline:
        now = set(runs.iterdir()) if runs.exists() else set()
        new = [r for r in now - before if (r / "status.json").exists()]
        if new:
            try:
                state = json.loads((new[0] / "status.json").read_text()).get("state", "")
            except (OSError, ValueError):  # caught while the worker rewrites it
                state = "unreadable"
            if state in ("done", "failed", "stopped"):
                break
        time.sleep(1)
    assert state == "done", f"the {model_title} run ended as {state!r}"
    page.wait_for_selector("[data-testid='stAlertContentSuccess']:has-text('Finished')", timeout=60_000)
    _settle(page)
    _no_exceptions(page)


def test_count_models_train_and_their_views_appear(browser, app_url, tmp_path):
    """A raw-count file loaded by path; scVGAE's Imputation page and AttentionAE-sc's clusters and fusion
    attention, each trained through the Training page (quick presets)."""
    url, home = app_url
    counts = _raw_count_file(tmp_path)
    page = browser.new_page(viewport={"width": 1440, "height": VIEW_HEIGHT})
    page.goto(url)
    page.wait_for_selector("h1:has-text('Data')", timeout=90_000)
    _settle(page, 120)
    page.get_by_text("File or folder on this server").first.click()
    _settle(page)
    field = page.get_by_role("textbox", name="Path on the server")
    field.fill(str(counts))
    field.press("Enter")
    _settle(page)
    page.get_by_role("button", name="Load this file").click()
    page.locator("h3", has_text=counts.name).first.wait_for(timeout=90_000)  # the dataset summary
    _settle(page, 120)
    _no_exceptions(page)
    before = set((home / "runs").iterdir()) if (home / "runs").exists() else set()

    _train_quick(page, "scVGAE", home / "runs")
    _go(page, "Imputation")
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    assert page.locator(".js-plotly-plot").count() == 4  # observed and imputed UMAPs, histogram, gene-gene
    assert page.get_by_text("cells at 0 before").first.is_visible()
    _no_exceptions(page)
    _shot(page, "imputation")

    _train_quick(page, "AttentionAE-sc", home / "runs")
    new = set((home / "runs").iterdir()) - before
    assert len(new) == 2 and all((r / "result.h5ad").exists() for r in new)
    _visit(page, "Embedding", ".js-plotly-plot", "embedding-attentionae")
    _go(page, "Attention")
    page.wait_for_selector("iframe", timeout=60_000)
    assert page.get_by_text("Fusion attention").first.is_visible()
    _no_exceptions(page)
    time.sleep(2)  # the graph layout settles
    _shot(page, "attention-attentionae")

    # Reload: the typed path and the chosen model (neither is the default) come back from the address.
    _go(page, "Training")
    address = _query(page)
    assert address.get("data") == f"path:{counts}" and address.get("model") == "attentionae", address
    page.reload()
    page.wait_for_selector("h1:has-text('Training')", timeout=90_000)
    _settle(page, 120)
    assert _query(page) == address
    assert page.locator("[data-testid='stSidebar']").get_by_text(counts.name).first.is_visible()
    ready = page.locator("p", has_text="Ready to train:").first.inner_text()
    assert f"AttentionAE-sc, quick preset, on {counts.name}" in ready, ready
    _no_exceptions(page)
    page.close()
