"""A local Ethereum dev node (hardhat, installed from npm into devchain/ by `make test`) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DEVCHAIN", "dev_node"]

DEVCHAIN = Path(__file__).resolve().parents[3] / "devchain"
HARDHAT = DEVCHAIN / "node_modules" / ".bin" / "hardhat"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    request = urllib.request.Request(
        url,
        data=json.dumps({"jsonrpc": "2.0", "method": "eth_chainId", "params": [], "id": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return "result" in json.loads(response.read())
    except (OSError, ValueError):  # not up yet, or something else answering on the port
        return False


@contextmanager
def dev_node(startup_seconds: float = 60) -> Iterator[str]:
    """Start a hardhat node on a free loopback port, yield its JSON-RPC URL, and stop it afterwards."""
    if not HARDHAT.exists():
        raise FileNotFoundError(
            f"{HARDHAT} is missing: `make test` installs the dev chain (npm ci in devchain/)"
        )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:  # the node's output, shown if it fails to start
        node = subprocess.Popen(
            [str(HARDHAT), "node", "--hostname", "127.0.0.1", "--port", str(port)],
            cwd=DEVCHAIN,
            env=os.environ | {"HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup_seconds
            while not _answers(url):
                if node.poll() is not None:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"the hardhat node exited while starting:\n{output}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the hardhat node did not answer within {startup_seconds} s")
                time.sleep(0.25)
            yield url
        finally:
            node.terminate()
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(timeout=10)
