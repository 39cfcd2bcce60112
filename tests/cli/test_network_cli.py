"""`ppaia status` against a running peer server, and the network commands' argument errors."""

import asyncio
import json
import threading

import torch
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.config import ExperimentConfig
from ppaia.network.agreement import Agreement
from ppaia.network.identity import Identity
from ppaia.network.status import Latest, PeerStatus, Phase
from ppaia.network.swarm import free_port
from ppaia.network.transfer import ModelServer

runner = CliRunner()


def test_status_prints_a_running_peers_signed_status():
    loop = asyncio.new_event_loop()
    server = ModelServer(Identity.generate(), port=free_port())
    server.status = lambda: PeerStatus(
        peer_id=server.identity.peer_id,
        index=1,
        round=7,
        rounds=9,
        step=0,
        phase=Phase.MIXING,
        accuracy=0.5,
        loss=1.25,
        latest=Latest.of(server.latest),
        agreement=Agreement.of(ExperimentConfig()),
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        server.publish(7, 0, {"w": torch.ones(3)})
        result = runner.invoke(app, ["status", f"127.0.0.1:{server.port}"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert info["round"] == 7 and info["phase"] == "mixing" and info["latest"]["round"] == 7
        assert info["accuracy"] == 0.5 and info["index"] == 1 and info["epsilon"] is None
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_unreachable_peers_and_bad_arguments_exit_2():
    result = runner.invoke(app, ["status", f"127.0.0.1:{free_port()}", "--timeout", "1"])
    assert result.exit_code == 2 and "Connect call failed" in result.output
    assert runner.invoke(app, ["status", "no-port"]).exit_code == 2
    result = runner.invoke(app, ["peer", "--partition", "5/4"])
    assert result.exit_code == 2 and "0 <= i < N" in result.output
    result = runner.invoke(app, ["launch", "--set", "rule=centralized", "--peers", "2"])
    assert result.exit_code == 2 and "does not support" in result.output
