"""``ppaia peer --swarm NAME --data SPEC --bootstrap HOST:PORT``: open-swarm peer processes joining by name.

Real processes on 127.0.0.1, each with its own data file; every process is killed in a ``finally`` and
every wait is bounded.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from open_parts import CONFIG, write_parts
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.network.swarm import HOST, free_port

runner = CliRunner()


def test_an_open_swarm_peer_needs_its_own_data():
    result = runner.invoke(app, ["peer", "--swarm", "s", "--bootstrap", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "brings its own --data" in result.output


class Processes:
    def __init__(self, root: Path, config: Path, data: list[str], test: str) -> None:
        self.root, self.config, self.data, self.test = root, config, data, test
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, part: int, seed: str | None = None, *extra: str) -> None:
        self.ports.setdefault(name, free_port())
        command = [
            sys.executable, "-m", "ppaia", "peer", "--swarm", "cli-open", "--config", str(self.config),
            "--data", self.data[part], "--test", self.test, "--listen", f"{HOST}:{self.ports[name]}",
            "--data-dir", str(self.root / name), "--threads", "1", "--wait", "15", *extra,
        ]  # fmt: skip
        if seed is not None:
            command += ["--bootstrap", f"{HOST}:{self.ports[seed]}"]
        with open(self.root / f"{name}.out", "ab") as out:
            self.processes[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def output(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def rounds_done(self, name: str) -> int:
        found = re.findall(r"round (\d+)/\d+", self.output(name))
        return int(found[-1]) if found else 0

    def until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"{what} not within {timeout} s\n" + "\n".join(
                f"--- {n}\n{self.output(n)[-1500:]}" for n in self.processes
            )
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.mark.slow
def test_peers_join_by_name_and_an_incompatible_one_is_refused_at_join(tmp_path):
    """Two peers start by swarm name; a third with another lr is refused at join (exit 2, naming lr,
    before any round); a fourth joins late, at the swarm's round, and trains on from there with
    partners. The swarm is then stopped (finishing, leaving and coming back with a data directory:
    tests/network/test_open_swarm.py, in one process, where a start does not cost the seconds of imports
    a fresh process pays on this machine, which make a process's join time unpredictable)."""
    data, test = write_parts(tmp_path / "data", 4)
    config = tmp_path / "swarm.toml"
    config.write_text(tomli_w.dumps(CONFIG | {"rounds": 5000}))  # runs until stopped
    peers = Processes(tmp_path, config, data, test)
    try:
        peers.start("a", 0)
        peers.start("b", 1, "a")
        peers.until(lambda: peers.rounds_done("b") >= 2, 90, "two peers running")
        peers.start("odd", 2, "b", "--set", "lr=0.05")
        peers.start("late", 3, "a")
        assert peers.processes["odd"].wait(timeout=90) == 2
        peers.until(lambda: "joins at round" in peers.output("late"), 90, "the late peer joining")
        joined = int(re.search(r"joins at round (\d+)", peers.output("late"))[1])
        peers.until(lambda: peers.rounds_done("late") >= joined + 3, 60, "the late peer training")
    finally:
        peers.stop()
    refusal = peers.output("odd")
    assert "incompatible with open swarm 'cli-open'" in refusal and "lr: 0.2 there, 0.05 here" in refusal
    assert "round 1/" not in refusal
    assert joined > 2
    rows = re.findall(r"round (\d+)/\d+: .*received (\d+)", peers.output("late"))
    assert [int(r) for r, _ in rows[:3]] == [joined, joined + 1, joined + 2]
    assert all(int(received) > 0 for _, received in rows[:3])  # with partners from its first round
