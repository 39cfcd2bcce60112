"""The dashboard in a real headless Chromium: a simulation served while it runs, a real 6-peer swarm
running learned trust (its trust heat-map, bytes and consensus distance curves, as a simulation's) in
which a peer is killed, and peers that report markup. Each test saves a screenshot (its path is
printed; a copy goes to /tmp/ppaia-screens). Skipped, saying so, where Chromium is not installed."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dashboard_browser import Process, browser_page, chromium_path, fake_peers, rows, screenshot, wait_until

import ppaia
from ppaia.dashboard import Dashboard, SwarmSource
from ppaia.dashboard.server import PUSH_INTERVAL_S
from ppaia.dashboard.sources import POLL_S, STATUS_TIMEOUT_S
from ppaia.network.agreement import Agreement, digest_of
from ppaia.network.identity import Identity
from ppaia.network.status import PeerStatus, Phase

pytestmark = pytest.mark.slow
OWN_SCRIPTS = 11  # the <script> elements of index.html
HOSTILE = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    '"><svg onload=window.__pwned=3>',
    "javascript:window.__pwned=4",
    "</td></tr><script>alert(5)</script>",
    "{{constructor.constructor('window.__pwned=6')()}}",
    "<iframe srcdoc='<script>parent.__pwned=7</script>'>",
]


def counter(page) -> tuple[int, int]:
    """The round shown and the page's peer count."""
    values = page.evaluate(
        "[document.getElementById('round-counter').dataset.round, "
        "document.getElementById('peer-count').dataset.peers]"
    )
    return int(values[0] or -1), int(values[1] or 0)


@contextmanager
def explained(page, run: Process, folder: Path) -> Iterator[None]:
    """On a failed check, say what the page and the run were doing (the page's status, counters, errors
    and the run's output) and keep a screenshot of the page as it was."""
    try:
        yield
    except AssertionError as failure:
        shot = screenshot(page, folder, "dashboard-failed")
        state = page.evaluate(
            "[document.getElementById('status')?.textContent, document.readyState, "
            "document.querySelectorAll('#table tbody tr').length]"
        )
        raise AssertionError(
            f"{failure}\npage: status={state[0]!r} ready={state[1]} rows={state[2]} counter={counter(page)} "
            f"errors={page.errors} screenshot={shot}\nrun (exit {run.popen.poll()}):\n{run.output()[-3000:]}"
        ) from None


def test_run_dashboard_shows_every_peer_and_the_round_advances_while_it_runs(tmp_path):
    chromium_path()
    run = Process(
        [
            *("run", "--dashboard", "--dashboard-port", "0", "--dashboard-linger", "0"),
            *("--set", "peers=16", "--set", "rounds=5000", "--out", "run"),
        ],
        tmp_path,
    )
    try:
        url = run.url(timeout=60)
        with browser_page() as page, explained(page, run, tmp_path):
            page.goto(url)
            wait_until(lambda: counter(page)[1] == 16 and len(rows(page)) == 16, 60, "16 peers on the page")
            first, _ = counter(page)
            wait_until(lambda: counter(page)[0] > first, 60, f"the round counter to move past {first}")
            assert run.popen.poll() is None, "the run ended before the page showed it running"
            status = page.text_content("#status")
            assert status.startswith("running"), status
            assert set(rows(page)) == {str(i) for i in range(16)}
            caption = page.text_content("#graph-caption")
            assert caption.startswith("16 of 16 peers drawn"), caption
            legend = page.eval_on_selector_all("#legend li", "items => items.map(i => i.textContent)")
            assert sum(int(item.split()[-1]) for item in legend) == 16
            assert page.locator("#curves .uplot").count() >= 3  # accuracy, consensus distance, bytes
            screenshot(page, tmp_path, "dashboard-run-16-peers")
            assert page.evaluate("window.__violations") == [] and page.errors == []
        assert run.interrupt(timeout=30) is not None, run.output()
        assert not list(tmp_path.glob(".run.*")) and not (tmp_path / "run").exists()  # nothing half-written
    finally:
        run.stop()


def _pid(tmp_path: Path, index: int) -> int:
    """The pid of swarm peer `index` of the launch writing into tmp_path/swarm (its data-dir lock)."""
    (lock,) = tmp_path.glob(f".swarm.*/peers/{index}/peer.lock")
    return int(lock.read_text().strip())


def charts(page) -> list[str]:
    """The names of the curves' charts on the page."""
    return page.eval_on_selector_all("#curves .chart", "charts => charts.map(c => c.dataset.chart)")


def test_launch_dashboard_shows_trust_bytes_distance_and_a_killed_peer_dropped_within_the_bound(tmp_path):
    chromium_path()
    launch = Process(
        [
            *("launch", "--peers", "6", "--set", "rounds=2000", "--timeout", "120"),
            *("--set", "rule=learned_trust(partners=2)", "--set", "holdout=0.2"),
            *("--dashboard", "--dashboard-port", "0", "--dashboard-linger", "0", "--out", "swarm"),
        ],
        tmp_path,
    )
    killed = 3
    try:
        url = launch.url(timeout=60)
        with browser_page() as page:
            page.goto(url)

            def all_in_rounds() -> bool:
                table = rows(page)
                running = [row for row in table.values() if row["state"] in ("training", "mixing")]
                return len(running) == 6 and all(int(row["round"]) >= 3 for row in running)

            wait_until(all_in_rounds, 60, f"6 peers in round 3 or later\n{launch.output()}")
            # what the peers report and the dashboard measures, drawn as for a simulation
            wait_until(lambda: len(charts(page)) == 3, 30, "accuracy, consensus distance and bytes curves")
            assert set(charts(page)) == {
                "test accuracy",
                "consensus distance (1/N)Σ‖θᵢ−θ̄‖²",
                "bytes sent (cumulative)",
            }
            assert page.is_visible("#heat") and page.text_content("#heat-caption").startswith(
                "trust after round"
            )
            assert page.text_content("#graph-caption").endswith("links: trust (width: weight)")
            table = rows(page)
            assert all(float(row["MB received"]) > 0 for row in table.values()), table
            screenshot(page, tmp_path, "dashboard-swarm-trust")
            os.kill(_pid(tmp_path, killed), signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: rows(page)[str(killed)]["state"] == "dropped", 30, "the killed peer dropped")
            elapsed = time.monotonic() - killed_at
            bound = float(page.get_attribute("#status", "data-drop-after"))
            # after the bound: the next request (every POLL_S, each waiting at most STATUS_TIMEOUT_S), the
            # next push (at most every PUSH_INTERVAL_S) and this test's own reading of the page
            assert elapsed <= bound + POLL_S + STATUS_TIMEOUT_S + PUSH_INTERVAL_S + 1.0, (elapsed, bound)
            others = {peer: row["state"] for peer, row in rows(page).items() if peer != str(killed)}
            assert "dropped" not in others.values(), others
            assert page.text_content("#graph-caption").startswith("6 of 6 peers drawn")
            screenshot(page, tmp_path, "dashboard-swarm-killed-peer")
            assert page.evaluate("window.__violations") == [] and page.errors == []
        launch.interrupt(timeout=30)
    finally:
        launch.stop()


def _hostile_statuses() -> list:
    """Statuses of three fake peers: two report markup in every free-text field a status has (its ban
    list; its shared config, which must only match its own digest), one sends a status whose peer id is
    markup (refused: a peer id is 40 hex digits)."""
    config = ppaia.ExperimentConfig(peers=3, rounds=10)
    agreement = Agreement.of(config)
    shared = {**agreement.shared, "rule": {"name": HOSTILE[0], "note": HOSTILE[1:]}, HOSTILE[2]: HOSTILE[3]}
    hostile = Agreement(digest=digest_of(shared), shared=shared)

    def status(index: int, banned: list[str], agreement: Agreement, identity: Identity) -> PeerStatus:
        return PeerStatus(
            peer_id=identity.peer_id,
            index=index,
            round=4,
            rounds=10,
            step=0,
            phase=Phase.MIXING,
            accuracy=0.5,
            loss=1.0,
            banned=banned,
            banned_total=len(banned),
            agreement=agreement,
        )

    ids = [Identity.generate() for _ in range(2)]
    forged = dict(status(2, [], agreement, Identity.generate())) | {"peer_id": HOSTILE[0]}
    return [
        lambda: status(0, HOSTILE[:4], hostile, ids[0]),
        lambda: status(1, HOSTILE[4:], hostile, ids[1]),
        lambda: PeerStatus.model_construct(**forged),
    ]


def test_markup_that_peers_report_is_shown_as_text_and_never_runs(tmp_path):
    chromium_path()
    with fake_peers(_hostile_statuses()) as addresses:
        board = Dashboard(SwarmSource(addresses))
        url = board.start()
        try:
            with browser_page() as page:
                page.goto(url)
                table = wait_until(
                    lambda: (t := rows(page)) and len(t) == 3 and "bans" in t["0"]["note"] and t,
                    20,
                    "3 peers, one listing bans",
                )
                notes = " ".join(row["note"] for row in table.values())
                for text in HOSTILE:  # every string is on the page, as the peer sent it
                    assert text in notes, text
                config = page.text_content("#config")
                assert json.dumps(HOSTILE[0]) in config and json.dumps(HOSTILE[2]) in config
                assert "last request: bad_status" in table["2"]["note"]  # the forged peer id: refused
                assert HOSTILE[0] not in table["2"]["peer"]
                page.click("#config-panel summary")
                screenshot(page, tmp_path, "dashboard-hostile-peers")
                assert page.evaluate("typeof window.__pwned") == "undefined"
                assert page.evaluate("typeof parent.__pwned") == "undefined"
                assert page.dialogs == []
                assert page.locator("script").count() == OWN_SCRIPTS
                assert page.locator("img, svg, iframe").count() == 0
                assert page.evaluate("window.__violations") == []  # nothing even tried to run
                assert not re.search(r"<(script|img|svg|iframe)", page.inner_html("#table"))
        finally:
            board.stop()
