"""How long each explore page of the app takes on a large run, in a real browser (issue #25, section 3).

1. Synthesises ``--cells`` cells from ``--input`` (:mod:`scgraph_core.synthetic`, seed 0; the cells inherit
   their anchors' labels) unless the file is already in ``--work``.
2. Trains one CellVGAE run on it with the command line (``--preset``, default ``quick``), as a user would,
   into ``WORK/home/runs/cells<N>`` (kept: a rerun reuses the finished run).
3. Starts ``streamlit run app.py`` with that home, opens ``/?run=cells<N>`` in headless Chromium
   (Playwright) and visits every explore page twice: ``first`` = the first visit (the result file is read and
   the page's figures built), ``again`` = a later visit (what the cache leaves). A page's time runs from the
   click in the navigation until its main element is drawn and Streamlit's "running" indicator is gone.
   Also: the server's resident memory (its process tree) after the visits, and the result file's size.

One JSON line per finished (cells, preset, tag) in ``--jsonl``; a rerun skips what is done (``--tag`` names a
new measurement of the same run, e.g. after a change to the app).

    python benchmarks/bench_app_pages.py --cells 100000
    python benchmarks/bench_app_pages.py --cells 3000 --jsonl /tmp/pages.jsonl     # a quick check
    python benchmarks/bench_app_pages.py --cells 1000000 --resample --flags "--batch-size 4096 --epochs 5"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scgraph_app import devserver  # noqa: E402

SHARED = Path(os.environ.get("SCGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
# (navigation title, what marks the page as drawn)
PAGES = (
    ("Embedding", ".js-plotly-plot"),
    ("Attention", ".js-plotly-plot"),
    ("Markers", "[data-testid='stDataFrame'], .js-plotly-plot"),
    ("Expression", ".js-plotly-plot"),
    ("Annotate", "text=1. Your labels"),
    ("Training", ".js-plotly-plot"),
    ("Runs", "[data-testid='stDataFrame']"),
)


def make_input(args: argparse.Namespace, work: Path) -> Path:
    path = work / f"synthetic_{args.cells}{'_resample' if args.resample else ''}.h5ad"
    if path.exists():
        return path
    import anndata

    from scgraph_core import synthetic

    real = anndata.read_h5ad(args.input)
    synthetic.synthesize_adata(real, args.cells, seed=0, resample=args.resample).write_h5ad(path)
    return path


def run_name(args: argparse.Namespace) -> str:
    """The run's folder name: the cells, and what else makes it a different run."""
    name = f"cells{args.cells}" + ("_resample" if args.resample else "")
    if args.flags:
        name += "_" + "-".join(re.findall(r"[A-Za-z0-9.]+", args.flags))
    return name


def make_run(args: argparse.Namespace, home: Path, data: Path) -> tuple[Path, float]:
    run = home / "runs" / run_name(args)
    if (run / "result.h5ad").exists():
        return run, float(json.loads((run / "metrics.json").read_text()).get("seconds_total", 0.0))
    cmd = [sys.executable, "-m", "scgraph_core", "train", "--model", "cellvgae", "--input", str(data)]
    cmd += ["--preset", args.preset, "--seed", "0", "--label-key", "celltype", "--out", str(run)]
    cmd += args.flags.split()
    limit = 3600 if args.cells <= 200_000 else 4 * 3600
    subprocess.run(cmd, cwd=REPO, check=True, timeout=limit, env={**os.environ, "SCGRAPH_HOME": str(home)})
    return run, float(json.loads((run / "metrics.json").read_text())["seconds_total"])


def tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def settle(page, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    page.wait_for_timeout(300)
    while time.time() < deadline:
        if page.locator("[data-testid='stStatusWidget']").count() == 0:
            return
        page.wait_for_timeout(100)
    raise TimeoutError("the page was still running after the time limit")


def visit(page, title: str, selector: str) -> float:
    started = time.perf_counter()
    page.locator("[data-testid='stSidebarNavLink']", has_text=title).first.click()
    page.wait_for_selector(f"h1:has-text('{title}')", timeout=300_000)
    page.wait_for_selector(selector, timeout=300_000)
    settle(page)
    seconds = time.perf_counter() - started - 0.3  # settle's first look waits 0.3 s
    errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']").count()
    if errors:
        raise RuntimeError(f"the {title} page shows an error")
    return round(seconds, 2)


def time_pages(args: argparse.Namespace, home: Path, run: Path) -> dict:
    from playwright.sync_api import sync_playwright

    env = {"SCGRAPH_HOME": str(home), "SCGRAPH_DATA_ROOTS": str(home)}
    out: dict = {"first": {}, "again": {}}
    with devserver.serve(env, home / "streamlit.log") as (url, pid), sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=devserver.CHROMIUM, args=devserver.CHROMIUM_FLAGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        started = time.perf_counter()
        page.goto(f"{url}/?run={run.name}&model=cellvgae")
        page.wait_for_selector("h1:has-text('Data')", timeout=300_000)
        settle(page)
        out["open"] = round(time.perf_counter() - started, 2)
        for rnd in ("first", "again"):
            for title, selector in PAGES:
                out[rnd][title] = visit(page, title, selector)
        out["server_rss_mb"] = round(tree_rss_mb(pid), 1)
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--input", default=str(SHARED / "pbmc3k_seurat250.h5ad"))
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--tag", default="", help="names a new measurement of the same run")
    parser.add_argument(
        "--resample", action="store_true", help="draw the cells as fresh counts (synthetic, resample=True)"
    )
    parser.add_argument(
        "--flags",
        default="",
        help="more train flags, e.g. '--batch-size 4096 --epochs 5' for 1,000,000 cells",
    )
    parser.add_argument("--work", default="/tmp/scgraph_app_pages")
    parser.add_argument("--jsonl", default=str(REPO / "benchmarks" / "results" / "app_pages.jsonl"))
    args = parser.parse_args()
    jsonl = Path(args.jsonl)
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (
                row.get("cells"),
                row.get("preset"),
                row.get("tag", ""),
                row.get("run", f"cells{args.cells}"),
            ) == (
                args.cells,
                args.preset,
                args.tag,
                run_name(args),
            ):
                print(f"done already: {row}")
                return
    work = Path(args.work)
    home = work / "home"
    (home / "runs").mkdir(parents=True, exist_ok=True)
    data = make_input(args, work)
    run, train_seconds = make_run(args, home, data)
    timings = time_pages(args, home, run)
    row = {
        "cells": args.cells,
        "preset": args.preset,
        "tag": args.tag,
        "run": run.name,
        "flags": args.flags,
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "run_seconds_total": round(train_seconds, 1),
        "result_mb": round((run / "result.h5ad").stat().st_size / 2**20, 1),
        **timings,
        "load_average": list(os.getloadavg()),
    }
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
