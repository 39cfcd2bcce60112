"""Test helpers: a real headless Chromium (Debian's ``chromium``, driven by Playwright), real ``ppaia``
processes, screenshots, and fake peers that answer status requests with what a test makes them say."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from ppaia.network.identity import Identity
from ppaia.network.status import PeerStatus
from ppaia.network.transfer import ModelServer

SCREENS = Path("/tmp/ppaia-screens")  # every screenshot is also copied here, to look at
URL = re.compile(rb"dashboard: (http://\S+/)")
# records what a Content-Security-Policy blocked, and any dialog a script opened
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.sourceFile + " " + e.sample));
"""


def chromium_path() -> str:
    """The system Chromium, or skip the test saying what is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("browser test skipped: Chromium is not installed (Debian: apt-get install chromium)")
    return path


@contextmanager
def browser_page(width: int = 1400, height: int = 1600) -> Iterator[Any]:
    """A page of a fresh headless Chromium; its console errors and page errors are in `page.errors`."""
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser test skipped: playwright missing")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            page.errors = []
            page.dialogs = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
            page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
            page.add_init_script(WATCH)
            yield page
        finally:
            browser.close()


def screenshot(page: Any, folder: Path, name: str) -> Path:
    """Save a full-page screenshot into `folder` and a copy into /tmp/ppaia-screens; print both."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    print(f"screenshot: {path} (copy: {SCREENS / path.name})")
    return path


def wait_until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    """Call `check` every `step` s until it returns something true (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s: {what}")


def rows(page: Any) -> dict[str, dict[str, str]]:
    """The peer table's rows: peer id -> {column name: cell text}."""
    return page.evaluate(
        """() => {
          const names = [...document.querySelectorAll("#table thead th")].map((th) => th.textContent);
          const rows = {};
          for (const tr of document.querySelectorAll("#table tbody tr")) {
            const cells = [...tr.children].map((td) => td.textContent);
            rows[tr.dataset.peer] = Object.fromEntries(names.map((name, k) => [name, cells[k]]));
          }
          return rows;
        }"""
    )


class Process:
    """A ``python -m ppaia ...`` process in a session of its own (so that everything it started can be
    killed with it), its output in a file."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = cwd / f"ppaia-{args[0]}.log"
        self.handle = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "ppaia", *args],
            cwd=cwd,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "200"},
            preexec_fn=_hear_ctrl_c,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def url(self, timeout: float) -> str:
        """The dashboard URL it printed."""
        found = wait_until(
            lambda: URL.search(self.log.read_bytes()) or self.popen.poll() is not None,
            timeout,
            f"the dashboard's URL\n{self.output()}",
        )
        assert found is not True, f"exited with {self.popen.returncode}\n{self.output()}"
        return found.group(1).decode()

    def interrupt(self, timeout: float) -> int | None:
        """Ctrl-C (SIGINT to the process itself); its exit code, None if it did not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Kill the process and everything in its session."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self.handle.close()


def _hear_ctrl_c() -> None:
    """In the child: SIGINT back to its default. A suite started in the background (``make test &``)
    ignores SIGINT, every child inherits that, and Python then installs no Ctrl-C handler: the process
    would never see the Ctrl-C :meth:`Process.interrupt` sends, as it does from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signed_as(identity: Identity, make: Callable[[], Any]) -> Callable[[], Any]:
    def status() -> Any:
        made = make()
        if isinstance(made, PeerStatus) and re.fullmatch(r"[0-9a-f]{40}", str(made.peer_id)):
            return made.model_copy(update={"peer_id": identity.peer_id})
        return made

    return status


@contextmanager
def fake_peers(
    statuses: list[Callable[[], Any]], identities: list[Identity] | None = None
) -> Iterator[list[tuple[str, int]]]:
    """Status servers (the peers' own :class:`ModelServer`) answering with `statuses`, one each, in a
    thread's event loop; their addresses. Server k signs as ``identities[k]``: a status must carry its
    signer's peer id (a reader refuses one that claims another's), so without `identities` each server
    gets a fresh identity and its statuses are given that id — unless they claim one that is not a peer
    id at all (a forged status, left as it is)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    if identities is None:
        identities = [Identity.generate() for _ in statuses]
        statuses = [_signed_as(identity, make) for identity, make in zip(identities, statuses, strict=True)]
    pairs = zip(identities, statuses, strict=True)
    servers = [ModelServer(identity, status=make) for identity, make in pairs]
    try:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        yield [("127.0.0.1", server.port) for server in servers]
    finally:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
