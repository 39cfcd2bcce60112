"""``ppaia peer`` processes started by hand: what a peer shows on the console, ``ppaia status`` while a
finished peer lingers, and a peer started with another config refused by name and never mixed with.
Every process is killed in a ``finally``; every wait is bounded."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.status import PeerStatus, Phase
from ppaia.network.swarm import HOST, free_port
from ppaia.network.transfer import fetch_status

runner = CliRunner()
SMALL = ["--set", "model=logistic", "--set", "partition=iid", "--set", "topology=ring", "--threads", "1"]


class Peers:
    """`ppaia peer` processes, each with its own data directory and output file under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: dict[int, subprocess.Popen] = {}
        self.ports: dict[int, int] = {}

    def start(self, index: int, total: int, *args: str, seed: int | None = None) -> None:
        """Start peer `index` of `total` on a free port (bootstrapping from peer `seed`'s)."""
        self.ports[index] = free_port()
        command = [
            sys.executable, "-m", "ppaia", "peer", "--partition", f"{index}/{total}",
            "--listen", f"{HOST}:{self.ports[index]}", "--data-dir", str(self.root / f"d{index}"), *args,
        ]  # fmt: skip
        if seed is not None:
            command += ["--bootstrap", f"{HOST}:{self.ports[seed]}"]
        with open(self.root / f"{index}.out", "wb") as out:
            self.processes[index] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def output(self, index: int) -> str:
        return (self.root / f"{index}.out").read_text(errors="replace")

    def rows(self, index: int) -> list[dict[str, str]]:
        path = self.root / f"d{index}" / "metrics.csv"
        if not path.exists():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def wait(self, timeout: float) -> dict[int, int]:
        deadline = time.monotonic() + timeout
        return {i: p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for i, p in self.processes.items()}

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout} s\n{self.tails()}")
            time.sleep(0.1)

    def tails(self) -> str:
        return "\n".join(
            f"--- peer {i}\n" + "\n".join(self.output(i).splitlines()[-15:]) for i in self.processes
        )


@contextmanager
def peers(root: Path) -> Iterator[Peers]:
    started = Peers(root)
    try:
        yield started
    finally:
        for process in started.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def status(port: int) -> PeerStatus | None:
    try:
        return asyncio.run(fetch_status(HOST, port, identity=Identity.generate(), timeout=1.0))
    except ProtocolError:
        return None


@pytest.mark.slow
def test_peers_started_by_hand_show_progress_refuse_another_config_by_name_and_answer_status_lingering(
    tmp_path,
):
    """Peers 0 and 1 of 3 run the default seed and lr, peer 2 `--set seed=1 --set lr=0.2`.

    - Peer 2 finds both, names the differing fields and, once both refused it too, stops (exit 2)
      without training. Peers 0 and 1 refuse it by name and never wait for it or take a model from it.
    - Each peer shows on the console its id, addresses and swarm, then a line per round.
    - Peer 1 is stopped (SIGSTOP: alive to the kernel, silent to the protocol) after peer 0's second
      round, so peer 0 finishes without it and lingers, asking after it; meanwhile `ppaia status` shows
      it finished."""
    rounds = 12
    with peers(tmp_path) as started:
        common = [*SMALL, "--set", f"rounds={rounds}"]
        started.start(0, 3, *common, "--wait", "30")
        started.start(1, 3, *common, "--wait", "30", seed=0)
        started.start(2, 3, *common, "--wait", "60", "--set", "seed=1", "--set", "lr=0.2", seed=0)
        started.until(lambda: len(started.rows(0)) >= 2, 120, "peer 0's second round")
        started.processes[1].send_signal(signal.SIGSTOP)
        port = started.ports[0]
        started.until(lambda: (s := status(port)) is not None and s.phase is Phase.FINISHED, 60, "finished")
        result = runner.invoke(app, ["status", f"{HOST}:{port}", "--timeout", "2"])
        codes = {i: started.processes[i].wait(timeout=60) for i in (0, 2)}  # 0 lingers until 1 fails 3 times
    assert codes == {0: 0, 2: 2}, started.tails()

    odd = started.output(2)
    assert "error: peer 2 runs another config than every peer it found" in odd
    for index in (0, 1):
        assert f"peer {index}: lr: 0.05 there, 0.2 here; seed: 0 there, 1 here" in odd, odd
    assert "round 1/" not in odd and started.rows(2) == []  # it never trained, nor served a round
    for index in (0, 1):
        log = started.output(index)
        refusals = re.findall(r"refusing peer 2 \([0-9a-f]{40}\): it runs another config \((.*)\)", log)
        assert refusals == ["lr: 0.2 there, 0.05 here; seed: 1 there, 0 here"], log
        assert "from peer 2" not in log  # never waited for it

    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["phase"] == "finished" and shown["round"] == rounds and shown["index"] == 0
    assert 0 <= shown["accuracy"] <= 1 and shown["loss"] > 0 and shown["latest"]["round"] == rounds
    assert shown["refused"] == [2] and shown["missing"] >= rounds  # peer 2 every round, then peer 1 too
    console = started.output(0)
    assert re.search(
        rf"peer 0 \({shown['peer_id']}\) listens on TCP {HOST}:{port} \(models\) and UDP {HOST}:{port} "
        rf"\(the DHT\): others join it with --bootstrap {HOST}:{port}; swarm 'ppaia' of 3 peers, "
        rf"{rounds} rounds, shared config [0-9a-f]{{16}}",
        console,
    ), console
    lines = re.findall(
        r"peer 0: round (\d+)/12: accuracy (\d\.\d{4}), loss (\d+\.\d{4}); \d+\.\d\d s \(train [\d.]+ s, "
        r"mix [\d.]+ s\); received ([01]), left out ([12])",
        console,
    )
    assert [int(line[0]) for line in lines] == list(range(1, rounds + 1)), console
    assert lines[0][3:] == ("1", "1") and lines[-1][3:] == ("0", "2")  # peer 1 at first, then nobody
    assert float(lines[-1][1]) == pytest.approx(shown["accuracy"], abs=1e-4)
