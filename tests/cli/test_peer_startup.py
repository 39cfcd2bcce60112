"""Starting ``ppaia peer`` and ``ppaia launch`` by hand, as a new user does: real processes, each in a
fresh working directory, with relative data directories.

The default listen address picks one free port for models (TCP) and the DHT (UDP) and says which; a taken
port, a wrong --bootstrap and a data directory already in use each end the process in one line naming what
is wrong (exit 2), the wrong bootstrap within --wait; ``ppaia launch`` reports its swarm's real wall time
and ends its live table on the run's final numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.network.dht import PeerDHT
from ppaia.network.identity import Identity
from ppaia.network.records import PeerRecord
from ppaia.network.status import PeerStatus, Phase
from ppaia.network.swarm import free_port
from ppaia.network.transfer import fetch_status

runner = CliRunner()
PEER = [sys.executable, "-m", "ppaia", "peer", "--set", "rounds=1"]
FIRST = [*PEER, "--partition", "0/2", "--data-dir", "d0"]  # a first peer, as the user started it
JOIN = re.compile(
    r"peer \d+ \((?P<id>[0-9a-f]{40})\) listens on TCP (?P<host>[\d.]+):(?P<port>\d+) \(models\) and UDP "
    r"(?P=host):(?P=port) \(the DHT\): others join it with --bootstrap (?P=host):(?P=port);"
)


class Process:
    """A CLI process whose output (stdout and stderr together) is read line by line as it comes, each
    line with the time it arrived."""

    def __init__(self, cwd: Path, command: list[str]) -> None:
        self.cwd = cwd
        self.popen = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.arrived: list[float] = []  # when each line came
        self._queue: queue.Queue[tuple[float, str | None]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self._queue.put((time.monotonic(), line.rstrip("\n")))
        self._queue.put((time.monotonic(), None))

    def _next(self, timeout: float) -> bool:
        """Take the next line within `timeout` s; False once the output ended."""
        arrived, line = self._queue.get(timeout=timeout)
        if line is None:
            self._queue.put((arrived, None))  # the end stays the end
            self.ended = arrived
            return False
        self.lines.append(line)
        self.arrived.append(arrived)
        return True

    def expect(self, pattern: re.Pattern, timeout: float = 120.0) -> tuple[float, re.Match]:
        """The first line that matches `pattern` (waiting for it if not seen yet), and when it came."""
        deadline, seen = time.monotonic() + timeout, 0
        while True:
            for i in range(seen, len(self.lines)):
                if match := pattern.search(self.lines[i]):
                    return self.arrived[i], match
            seen = len(self.lines)
            try:
                if not self._next(max(deadline - time.monotonic(), 0)):
                    raise AssertionError(f"{pattern.pattern!r}: the process ended\n" + "\n".join(self.lines))
            except queue.Empty:
                raise AssertionError(
                    f"{pattern.pattern!r} not within {timeout} s\n" + "\n".join(self.lines)
                ) from None

    def finish(self, timeout: float = 120.0) -> tuple[int, float, list[str]]:
        """Wait for the end: (exit code, when the output ended, every line)."""
        self.popen.wait(timeout=timeout)
        while self._next(10):
            pass
        return self.popen.returncode, self.ended, self.lines

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(timeout=10)


def one_line_error(code: int, lines: list[str]) -> str:
    """The error a failed peer ended with, after checking it is one line and no traceback."""
    assert code == 2, "\n".join(lines)
    assert not any("Traceback" in line or "──" in line for line in lines), "\n".join(lines)
    assert lines[-1].startswith("error: "), "\n".join(lines)
    return lines[-1]


WAIT = 3.0  # --wait of the peer given a wrong bootstrap address


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[dict[str, Process]]:
    """The peers a user starts by hand, all at once (their set-up is most of this file's time), each from
    a fresh working directory:

    - "default": ``ppaia peer --partition 0/2 --data-dir d0``, nothing else (the default listen address).
      It waits for peer 1 (up to --wait) and lingers after: it runs for minutes unless killed;
    - "TCP", "UDP": told to listen on a port another program holds for that protocol;
    - "bootstrap": told to join through a port nobody listens on, with --wait `WAIT`.
    """
    started: dict[str, Process] = {}
    with contextlib.ExitStack() as stack:
        for protocol, kind in (("TCP", socket.SOCK_STREAM), ("UDP", socket.SOCK_DGRAM)):
            taken = stack.enter_context(socket.socket(socket.AF_INET, kind))
            taken.bind(("127.0.0.1", free_port()))
            if kind == socket.SOCK_STREAM:
                taken.listen()
            address = f"127.0.0.1:{taken.getsockname()[1]}"
            started[protocol] = Process(tmp_path_factory.mktemp(protocol), [*FIRST, "--listen", address])
        nobody = f"127.0.0.1:{free_port()}"
        started["bootstrap"] = Process(
            tmp_path_factory.mktemp("bootstrap"), [*FIRST, "--bootstrap", nobody, "--wait", str(WAIT)]
        )
        started["default"] = Process(tmp_path_factory.mktemp("default"), FIRST)
        try:
            yield started
        finally:
            for process in started.values():
                process.kill()


@pytest.mark.slow
def test_the_default_listen_address_serves_models_and_the_dht_on_one_free_port_it_names(peers):
    _, joined = peers["default"].expect(JOIN)
    host, port = joined["host"], int(joined["port"])
    assert host == "127.0.0.1" and 0 < port < 65536

    async def ask() -> tuple[PeerStatus, PeerRecord | None, int]:
        status = await fetch_status(host, port, identity=Identity.generate(), timeout=10)  # TCP
        dht = PeerDHT(Identity.generate(), rpc_timeout=2.0)
        await dht.start(host, free_port())
        try:
            reached = await dht.bootstrap([(host, port)])  # UDP, the number it told others to join
            return status, await dht.find_peer(joined["id"]), reached
        finally:
            await dht.stop()

    status, record, reached = asyncio.run(ask())
    assert status.peer_id == joined["id"] and reached == 1
    assert (record.host, record.tcp_port, record.udp_port) == (host, port, port)


@pytest.mark.slow
def test_a_second_peer_on_a_data_directory_in_use_is_refused_naming_it_and_the_holder(peers):
    first = peers["default"]
    first.expect(JOIN)  # it holds d0 from before its set-up: certainly by now
    second = Process(first.cwd, [*PEER, "--partition", "1/2", "--data-dir", "d0"])
    code, _, lines = second.finish()
    error = one_line_error(code, lines)
    assert "data directory d0 is in use" in error and f"pid {first.popen.pid}" in error
    assert first.popen.poll() is None  # the first one runs on, its key its own


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_a_taken_port_is_a_one_line_error_naming_protocol_and_address(peers, protocol):
    peer = peers[protocol]
    code, _, lines = peer.finish()
    error = one_line_error(code, lines)
    address = peer.popen.args[peer.popen.args.index("--listen") + 1]
    assert f"cannot listen on {protocol} {address}" in error and "address already in use" in error


@pytest.mark.slow
def test_a_wrong_bootstrap_fails_within_wait_naming_the_address(peers):
    peer = peers["bootstrap"]
    listening, _ = peer.expect(JOIN)  # its set-up is done: from here on it only tries to join
    failed, _ = peer.expect(re.compile("^error: "))
    code, _, lines = peer.finish()
    error = one_line_error(code, lines)
    nobody = peer.popen.args[peer.popen.args.index("--bootstrap") + 1]
    assert f"no bootstrap peer answered within {WAIT:g} s: {nobody}" in error
    # before: it retried for about 2.5 minutes, then a traceback (slack: a loaded machine's scheduling)
    assert failed - listening < 3 * WAIT + 10


@pytest.mark.parametrize("listen", ["127.0.0.1:-1", "127.0.0.1:65536", "127.0.0.1:port", "127.0.0.1"])
def test_bad_listen_ports_are_still_refused_and_port_0_is_no_bootstrap_address(listen):
    result = runner.invoke(app, ["peer", "--partition", "0/2", "--listen", listen])
    assert result.exit_code == 2 and listen in result.output
    result = runner.invoke(app, ["peer", "--partition", "1/2", "--bootstrap", "127.0.0.1:0"])
    assert result.exit_code == 2 and "from 1 to 65535" in result.output


@pytest.mark.slow
def test_launch_reports_the_swarms_wall_time_and_ends_its_table_on_the_final_accuracies(tmp_path):
    rounds, out = 2, tmp_path / "out"
    invocation = [
        "launch", "--peers", "2", "--timeout", "150", "--out", str(out),
        *("--set", "rule=consensus", "--set", "topology=ring", "--set", "partition=iid"),
        *("--set", f"rounds={rounds}"),
    ]  # fmt: skip
    started = time.monotonic()
    result = runner.invoke(app, invocation)
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    table = [row for row in rows if len(row) == 7]  # the live table's last frame (no terminal: only it)
    summary = {row[0]: row[1] for row in rows if len(row) == 2}
    final = json.loads((out / "summary.json").read_text())
    assert [row[0] for row in table] == ["0", "1"]
    for i, (_, round_, phase, accuracy, *_, state) in enumerate(table):
        assert (round_, phase, state) == (str(rounds), Phase.FINISHED, "finished")
        assert accuracy == f"{final['peer_accuracy'][i]:.3f}"

    # each peer's log spans part of the swarm's life: its wall time is at least their union, at most
    # the whole command's
    stamps = []
    for log in (out / "peers").glob("*/peer.log"):
        times = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", log.read_text(), flags=re.M)
        stamps += [
            time.mktime(time.strptime(t[:19], "%Y-%m-%d %H:%M:%S")) + int(t[20:]) / 1000 for t in times
        ]
    wall = float(summary["wall seconds (swarm: first start to last exit)"])
    rounds_s = float(summary["seconds in rounds (slowest peer: train + mix)"])
    assert max(stamps) - min(stamps) <= wall <= took and rounds_s <= wall
    assert "wall seconds (training)" not in summary  # the simulator's label, which misled here
