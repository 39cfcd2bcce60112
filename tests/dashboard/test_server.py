"""The dashboard's server over real sockets (no browser): what it serves, the headers that keep a
string from ever running, the Host check against DNS rebinding, the address rules, the event stream;
the vendored libraries against their pinned hashes; the page's scripts, which never insert markup."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ppaia
from ppaia.cli.main import app as cli
from ppaia.dashboard import Dashboard, DashboardError, RunSource
from ppaia.dashboard.server import CSP, STATIC, is_loopback
from ppaia.simulation.live import RECORD_FILE

runner = CliRunner()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run") / "run"
    ppaia.write_outputs(ppaia.run({"peers": 4, "rounds": 2}), folder, plots=False)
    return folder


@pytest.fixture(scope="module")
def board(run_folder):
    dashboard = Dashboard(RunSource(run_folder))
    dashboard.start()
    yield dashboard
    dashboard.stop()


def get(board: Dashboard, path: str, host: str | None = None) -> http.client.HTTPResponse:
    """GET `path` from `board` through 127.0.0.1, with the Host header `host` (default: its address)."""
    connection = http.client.HTTPConnection("127.0.0.1", board.port, timeout=10)
    connection.request("GET", path, headers={"Host": host if host is not None else f"127.0.0.1:{board.port}"})
    return connection.getresponse()


@pytest.mark.parametrize("path", ["/", "/api/view", "/static/js/page.js", "/static/vendor/uPlot.iife.min.js"])
def test_every_response_forbids_scripts_from_anywhere_but_the_server(board, path):
    response = get(board, path)
    assert response.status == 200
    assert response.getheader("content-security-policy") == CSP
    assert "script-src 'self'" in CSP and "unsafe" not in CSP
    assert response.getheader("x-content-type-options") == "nosniff"
    assert response.getheader("x-frame-options") == "DENY"


def test_the_view_is_served_at_any_round_and_a_bad_round_is_refused(board):
    view = json.loads(get(board, "/api/view?round=1").read())
    assert (view["round"], view["latest"], view["peers_total"]) == (1, 2, 4)
    assert get(board, "/api/view?round=x").status == 400


def test_the_event_stream_sends_the_newest_view(board):
    response = get(board, "/api/events")
    assert response.getheader("content-type").startswith("text/event-stream")
    assert response.readline() == b"event: view\n"
    data = response.readline()
    assert data.startswith(b"data: ") and json.loads(data[6:])["latest"] == 2


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8350", "10.0.0.5", "[2001:db8::1]:80", "127.0.0.1.evil.example", "-"],
)
def test_a_request_for_another_host_name_is_refused_on_loopback(board, host):
    """A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing."""
    assert get(board, "/api/view", host=host).status == 421


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:1", "[::1]:8350", "LOCALHOST"])
def test_loopback_host_names_are_served(board, host):
    assert get(board, "/api/view", host=host).status == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org"])
def test_an_address_beyond_this_machine_needs_public(run_folder, host):
    with pytest.raises(DashboardError, match="--public"):
        Dashboard(RunSource(run_folder), host=host)
    assert not is_loopback(host)


def test_a_public_dashboard_answers_any_host_name(run_folder):
    board = Dashboard(RunSource(run_folder), host="0.0.0.0", public=True)
    board.start()
    try:
        assert get(board, "/api/view", host="dashboard.lab.example").status == 200
    finally:
        board.stop()


def test_a_taken_port_is_an_error_naming_it(board, run_folder):
    with pytest.raises(DashboardError, match=f"cannot listen on 127.0.0.1:{board.port}"):
        Dashboard(RunSource(run_folder), port=board.port).start()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--host", "0.0.0.0"], "--public"),
        ([], "either a RUN_DIR or --peers"),
        (["RUN", "--peers", "127.0.0.1:9"], "either a RUN_DIR or --peers"),
        (["--peers", "nowhere"], "nowhere"),
        (["missing-folder"], "no such run folder"),
        (["RUN", "--config", "x.toml"], "--config goes with --peers"),
    ],
)
def test_the_dashboard_command_refuses_what_it_cannot_serve(run_folder, arguments, message):
    arguments = [str(run_folder) if a == "RUN" else a for a in arguments]
    if arguments[:1] == ["--host"]:
        arguments = [str(run_folder), *arguments]
    result = runner.invoke(cli, ["dashboard", *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    result = runner.invoke(cli, ["dashboard", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output
    assert RECORD_FILE in result.output


def test_vendored_libraries_are_the_pinned_releases():
    vendor = STATIC / "vendor"
    pinned = json.loads((vendor / "vendor.json").read_text())["files"]
    assert set(pinned) == {"uPlot.iife.min.js", "uPlot.min.css", "cytoscape.min.js"}
    for name, entry in pinned.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == entry["sha256"], name
        assert re.fullmatch(r"\d+\.\d+\.\d+", entry["version"]), entry


def test_the_page_loads_only_its_own_files():
    page = (STATIC / "index.html").read_text()
    for reference in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert reference.startswith("/static/") or reference == "data:,", reference
        if reference.startswith("/static/"):
            assert (STATIC / reference.removeprefix("/static/")).is_file(), reference
    assert "<script>" not in page and "style=" not in page  # nothing inline: the CSP would block it


SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc")


@pytest.mark.parametrize("script", sorted(path.name for path in (STATIC / "js").glob("*.js")))
def test_the_pages_scripts_never_insert_markup(script):
    """Strings enter the page as text only (textContent, text nodes, attribute values)."""
    assert not SINKS.search((STATIC / "js" / script).read_text())
