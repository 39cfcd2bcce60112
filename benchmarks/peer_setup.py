"""A networked peer's set-up does not grow with the swarm: one peer's slice against the whole batch.

For N = 10, 1,000 and 10,000 peers (one synthetic dataset of 30,000 samples with 64 features and 10
classes, whatever N; MLP 64-64-10, consensus on a ring, IID split), each in a fresh process so that its
time and peak memory are its own:

- peer: ``PeerLearner(config, N - 1)``, what ``ppaia peer --partition N-1/N`` builds (its share of
  the split dataset, its model, its initial row, its evaluator);
- batch: ``Setup.batch(config)``, what the simulator builds for all N peers (what every peer process
  built before it held only its own slice).

Prints seconds and peak resident memory (of the whole process, interpreter and torch included), and
the peer's figures at N against its figures at 10.

    python benchmarks/peer_setup.py
"""

from __future__ import annotations

import json
import subprocess
import sys

from rich.console import Console
from rich.table import Table

SIZES = (10, 1_000, 10_000)
CONFIG = {
    "dataset": "synthetic(samples=30000, features=64)",
    "partition": "iid",
    "min_samples": 1,
    "model": "mlp(hidden=[64])",
    "rule": "consensus",
    "topology": "ring",
    "rounds": 10,
}
PROBE = """
import json, resource, sys, time
started = time.perf_counter()
import ppaia
from ppaia.experiment import Setup
from ppaia.network.learner import PeerLearner
imported = time.perf_counter()
config = ppaia.ExperimentConfig.model_validate(json.loads(sys.argv[1]))
if sys.argv[2] == "peer":
    PeerLearner(config, config.peers - 1)
else:
    Setup.batch(config)
built = time.perf_counter()
print(json.dumps({"import_s": imported - started, "setup_s": built - imported,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def probe(peers: int, what: str) -> dict[str, float]:
    table = json.dumps({**CONFIG, "peers": peers})
    done = subprocess.run(
        [sys.executable, "-c", PROBE, table, what], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    results = {(n, what): probe(n, what) for n in SIZES for what in ("peer", "batch")}
    table = Table(title="set-up of one process: a peer's slice against the whole batch (30,000 samples)")
    for column in ("peers N", "peer set-up", "peer peak", "batch set-up", "batch peak", "peer vs N=10"):
        table.add_column(column, justify="right")
    base = results[(SIZES[0], "peer")]
    for n in SIZES:
        peer, batch = results[(n, "peer")], results[(n, "batch")]
        table.add_row(
            f"{n:,}",
            f"{peer['setup_s']:.2f} s",
            f"{peer['peak_mib']:.0f} MiB",
            f"{batch['setup_s']:.2f} s",
            f"{batch['peak_mib']:.0f} MiB",
            f"{peer['setup_s'] / base['setup_s']:.2f}× time, "
            f"{peer['peak_mib'] / base['peak_mib']:.2f}× memory",
        )
    Console(width=140).print(table)
    print(f"imports (interpreter + torch + ppaia), not counted above: {base['import_s']:.2f} s")


if __name__ == "__main__":
    main()
