"""Start the app as a real ``streamlit run`` server on a free local port (browser tests and the page benchmarks).

Not used by the app itself: it is the one place that knows how to start it headless, wait for its health
endpoint and stop it with everything it spawned, and how Chromium is started and a page waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SCGRAPH_CHROMIUM", "/usr/bin/chromium")
# Without these Chromium's connections are refused in this sandbox (and it tries to phone home).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(page, timeout_s: float = 60) -> None:
    """Wait (Playwright page) until Streamlit has finished running the script: its status widget is gone."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    time.sleep(0.8)
    while time.time() < deadline:
        if page.locator("[data-testid='stStatusWidget']").count() == 0:
            return
        time.sleep(0.3)


def go(page, title: str) -> None:
    """Open a page by its title in the sidebar's navigation and wait until it has been drawn."""
    page.locator("[data-testid='stSidebarNavLink']", has_text=title).first.click()
    page.wait_for_selector(f"h1:has-text('{title.split(' ')[0]}')", timeout=60_000)
    settle(page)


@contextlib.contextmanager
def serve(env: dict[str, str], log_path: Path, *, start_timeout_s: float = 90) -> Iterator[tuple[str, int]]:
    """Run ``streamlit run app.py`` with ``env`` (added to this process's environment); yield (url, pid).

    The server's output goes to ``log_path``. On exit the server's whole process group is stopped (SIGTERM,
    then SIGKILL after 20 s)."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    cmd += ["--browser.gatherUsageStats", "false"]
    log = open(log_path, "wb")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                tail = Path(log_path).read_bytes()[-2000:].decode(errors="replace")
                raise RuntimeError(f"streamlit did not start (log {log_path}):\n{tail}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
