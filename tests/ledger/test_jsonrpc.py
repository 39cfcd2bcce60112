"""The same ledger code against a real local dev node (hardhat, installed by `make test` from npm) over
JSON-RPC on 127.0.0.1: the contract scenario and the publisher flow give the same results as in-process."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from ppaia import ExperimentConfig
from ppaia.ledger import Ledger, LedgerError, content_hash, run_publisher_flow

DEVCHAIN = Path(__file__).resolve().parents[2] / "devchain"
HARDHAT = DEVCHAIN / "node_modules" / ".bin" / "hardhat"
STARTUP_SECONDS = 60

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    request = urllib.request.Request(
        url,
        data=json.dumps({"jsonrpc": "2.0", "method": "eth_chainId", "params": [], "id": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return "result" in json.loads(response.read())
    except OSError:
        return False


@pytest.fixture(scope="module")
def node_url():
    assert HARDHAT.exists(), f"{HARDHAT} is missing: `make test` installs the dev chain (npm ci in devchain/)"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = os.environ | {"HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}
    node = subprocess.Popen(
        [str(HARDHAT), "node", "--hostname", "127.0.0.1", "--port", str(port)],
        cwd=DEVCHAIN,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not answers(url):
            assert node.poll() is None, "the hardhat node exited while starting"
            assert time.monotonic() < deadline, f"the hardhat node did not answer within {STARTUP_SECONDS} s"
            time.sleep(0.25)
        yield url
    finally:
        node.terminate()
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=10)


def test_contract_scenario_over_json_rpc(node_url):
    ledger = Ledger.connect(node_url)
    owner, *others = ledger.accounts
    trainers, validators = others[:2], others[2:5]
    for account in trainers:
        ledger.register_trainer(account, sender=owner)
    for account in validators:
        ledger.register_validator(account, sender=owner)
    assert ledger.quorum() == 3
    update = ledger.submit_update(1, content_hash(b"update"), sender=trainers[0])
    for validator in validators[:2]:
        ledger.vote(update, True, 900_000, sender=validator)
    assert not ledger.is_accepted(update)
    with pytest.raises(LedgerError, match="already voted"):
        ledger.vote(update, True, 900_000, sender=validators[0])
    ledger.vote(update, True, 900_000, sender=validators[2])
    assert ledger.is_accepted(update)
    model = content_hash(b"model v1")
    assert ledger.propose_model(1, model, 910_000, sender=validators[0]) is None
    assert ledger.propose_model(1, model, 910_000, sender=validators[1]) is None
    assert ledger.propose_model(1, model, 910_000, sender=validators[2]) == 1
    assert ledger.latest_version().model_hash == model
    attached = Ledger.connect(node_url, ledger.contract.address)
    assert attached.latest_version() == ledger.latest_version()


def test_publisher_flow_over_json_rpc_equals_the_in_process_run(node_url):
    config = ExperimentConfig(peers=3, rounds=2, model="logistic", partition="iid")
    remote = run_publisher_flow(config, ledger=Ledger.connect(node_url))
    local = run_publisher_flow(config)
    assert torch.equal(remote.params, local.params)
    assert [r.model_hash for r in remote.rounds] == [r.model_hash for r in local.rounds]
    assert remote.ledger.latest_version().model_hash == remote.rounds[-1].model_hash
