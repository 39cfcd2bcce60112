"""The dashboard of a large simulation: how long the page takes to draw an update, and the server's CPU.

A ``ppaia run --dashboard`` of PEERS peers (learned trust on a random 6-regular graph: a trust heat-map,
links weighted by trust, per-peer ε-free table) runs in one process; a ``ppaia dashboard RUN_DIR``
follows the same run from another process, and a headless Chromium (Debian's ``chromium``) shows its
page while the run goes on. Printed: the page's render times (performance.now around each update), the
size of one view, and the dashboard process's CPU seconds over the wall seconds it served (its CPU
share: reading the records, building views, pushing them).

    .venv/bin/python benchmarks/dashboard_scale.py [--peers 2000] [--rounds 30] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

URL = re.compile(rb"dashboard: (http://\S+/)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(arguments: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "ppaia", *arguments], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT
        )


def url_of(log: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = URL.search(log.read_bytes())
        if found:
            return found.group(1).decode()
        time.sleep(0.2)
    raise SystemExit(f"no dashboard URL in {log}:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the page is watched")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dashboard-scale-"))
    settings = [
        *("--set", f"peers={options.peers}", "--set", f"rounds={options.rounds}"),
        *("--set", "dataset=synthetic(samples=60000, test_samples=500, features=32)"),
        *("--set", "rule=learned_trust(partners=3, steps=2)", "--set", "holdout=0.2"),
        *("--set", "topology=random_regular(6)", "--set", "partition=iid"),
    ]
    run = start(
        ["run", "--dashboard", "--dashboard-port", "0", "--dashboard-linger", "0", *settings, "--out", "run"],
        folder,
        folder / "run.log",
    )
    url_of(folder / "run.log")  # the run writes its records from now on
    watch = ["dashboard", "run", "--port", "0", "--for", str(options.seconds + 30)]
    board = start(watch, folder, folder / "board.log")
    url = url_of(folder / "board.log")
    try:
        with sync_playwright() as playwright:
            chromium = shutil.which("chromium")
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            cpu_before, wall_before = cpu_seconds(board.pid), time.monotonic()
            page.goto(url)
            deadline = time.monotonic() + options.seconds
            while time.monotonic() < deadline and run.poll() is None:
                time.sleep(1)
            cpu, wall = cpu_seconds(board.pid) - cpu_before, time.monotonic() - wall_before
            stats = page.evaluate("window.ppaiaStats")
            round_shown = page.get_attribute("#round-counter", "data-round")
            # the slider moved to round 1: the page fetches that round's view and draws it
            slider_ms = page.evaluate(
                """() => new Promise((done) => {
                  const views = window.ppaiaStats.views, started = performance.now();
                  const slider = document.getElementById("slider");
                  slider.value = "1";
                  slider.dispatchEvent(new Event("input"));
                  const check = () => window.ppaiaStats.views > views && window.ppaiaStats.last.round === 1
                    ? done(performance.now() - started) : setTimeout(check, 5);
                  check();
                })"""
            )
            page.screenshot(path=str(folder / "dashboard-2000.png"), full_page=True)
            browser.close()
        view_bytes = len(urllib.request.urlopen(url + "api/view", timeout=30).read())
    finally:
        for process in (board, run):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in (board, run):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    renders = stats["renders"][1:] or stats["renders"]  # the first draw builds every chart and node
    print(f"peers {options.peers}, page watched {wall:.0f} s, newest round shown {round_shown}")
    print(f"updates drawn: {len(stats['renders'])}; first {stats['renders'][0]:.0f} ms")
    print(
        f"render per update: median {statistics.median(renders):.0f} ms, "
        f"max {max(renders):.0f} ms; an earlier round (fetch + draw): {slider_ms:.0f} ms"
    )
    print(f"one view: {view_bytes / 1e3:.0f} kB of JSON")
    print(f"dashboard process CPU: {cpu:.1f} s over {wall:.0f} s = {100 * cpu / wall:.1f} % of one core")
    print(f"screenshot: {folder / 'dashboard-2000.png'}")


if __name__ == "__main__":
    main()
