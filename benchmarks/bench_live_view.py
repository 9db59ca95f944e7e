"""What watching a run costs: the Training page's live view, in a real browser, while the run trains.

Starts ``streamlit run app.py`` with a fresh home, opens the app in headless Chromium (Playwright), sets the
demo's CellVGAE quick preset to 5,000 epochs (so the run cannot end during the window), starts it on the
Training page and, after a warm-up, measures over ``--window`` seconds: the server's CPU seconds (the
Streamlit process alone, not the training worker it started), the worker's CPU seconds, the epochs trained
and so the seconds per epoch, and the server's resident memory at the end. Then the run is stopped.

Settings (``--settings``, each run ``--repeats`` times, alternating):
- ``app``: the app as shipped (``.streamlit/config.toml``: Streamlit's collection after every run off,
  ``app.py`` collects after whole-page runs);
- ``gc-every-run``: Streamlit's default, a full garbage collection after every run, the live view's
  1.5-second reruns included (``STREAMLIT_RUNNER_POST_SCRIPT_GC=true``);
- ``not-watched``: as ``app``, but the page is closed once the run has started (nobody watching).

The browser runs on the same machine: its own CPU is not counted, but it competes with the worker as it
would on a laptop. One JSON line per finished (setting, repeat) in ``--jsonl``; a rerun skips what is done.

    python benchmarks/bench_live_view.py                       # 2 repeats of the three settings, ~5 minutes
    python benchmarks/bench_live_view.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scgraph_app import devserver  # noqa: E402

SETTINGS = {
    "app": {},
    "gc-every-run": {"STREAMLIT_RUNNER_POST_SCRIPT_GC": "true"},
    "not-watched": {},
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _epochs(run: Path) -> int:
    text = (run / "events.jsonl").read_text()
    return sum(1 for line in text.splitlines() if '"kind": "epoch"' in line)


def _wait_gone(pid: int, timeout_s: float) -> None:
    """Wait until process ``pid`` has exited (its /proc entry gone or a zombie), at most ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.5)


def one(setting: str, args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {"SCGRAPH_HOME": str(home), **SETTINGS[setting]}
        with devserver.serve(env, home / "streamlit.log") as (url, pid), sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=devserver.CHROMIUM, args=devserver.CHROMIUM_FLAGS, headless=True
            )
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(url)
            page.wait_for_selector("h1:has-text('Data')", timeout=120_000)
            devserver.settle(page, 120)
            devserver.go(page, "Model & graph")
            epochs = page.locator("[class*='-model-epochs']").get_by_role("spinbutton")
            epochs.fill("5000")
            epochs.press("Enter")
            devserver.settle(page, 120)
            devserver.go(page, "Training")
            page.get_by_role("button", name="Start training").click()
            page.wait_for_selector("text=/Epoch \\d+ of 5000/", timeout=180_000)
            if setting == "not-watched":
                page.close()
            time.sleep(args.warmup)
            (run,) = list((home / "runs").iterdir())
            worker = int(json.loads((run / "worker.json").read_text())["pid"])
            t0, s0, w0, e0 = time.perf_counter(), _cpu_seconds(pid), _cpu_seconds(worker), _epochs(run)
            time.sleep(args.window)
            t1, s1, w1, e1 = time.perf_counter(), _cpu_seconds(pid), _cpu_seconds(worker), _epochs(run)
            rss = _rss_mb(pid)
            (run / "STOP").write_text("")
            browser.close()
            _wait_gone(worker, 120)  # it writes the stopped run's results before it exits
    return {
        "setting": setting,
        "window_s": round(t1 - t0, 1),
        "server_cpu_s": round(s1 - s0, 2),
        "worker_cpu_s": round(w1 - w0, 2),
        "epochs": e1 - e0,
        "seconds_per_epoch": round((t1 - t0) / max(1, e1 - e0), 4),
        "server_rss_mb": round(rss, 1),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| setting | runs | server CPU (s per 100 s) | training s/epoch | server RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for setting in SETTINGS:
        rs = [r for r in rows if r["setting"] == setting]
        if not rs:
            continue
        cpu = statistics.median(100 * r["server_cpu_s"] / r["window_s"] for r in rs)
        spe = statistics.median(r["seconds_per_epoch"] for r in rs)
        rss = statistics.median(r["server_rss_mb"] for r in rs)
        lines.append(f"| {setting} | {len(rs)} | {cpu:.1f} | {spe:.3f} | {rss:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--jsonl", type=Path, default=REPO / "benchmarks" / "results" / "live_view.jsonl")
    parser.add_argument("--tag", default="")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    done = []
    if args.jsonl.exists():
        done = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    if args.table:
        print(table([r for r in done if r.get("tag", "") == args.tag]))
        return
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    have = {(r["setting"], r["repeat"], r.get("tag", "")) for r in done}
    for repeat in range(args.repeats):
        for setting in settings:
            if (setting, repeat, args.tag) in have:
                continue
            row = {**one(setting, args), "repeat": repeat, "tag": args.tag}
            print(json.dumps(row), flush=True)
            args.jsonl.parent.mkdir(parents=True, exist_ok=True)
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    print(table([r for r in done if r.get("tag", "") == args.tag]))


if __name__ == "__main__":
    main()
