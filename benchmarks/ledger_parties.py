"""FLoBC with 9 party processes on a local hardhat node: wall time per released version, where it goes.

6 trainers and 3 validators (digits, logistic model, BSP; trainers 4 and 5 throttled by THROTTLE seconds
per update) release ROUNDS versions after the initial one, as separate processes started by
:class:`ppaia.ledger.parties.launch.LedgerSystem`. Printed:

- wall time per released version (from the initial release to the last, over ROUNDS), and the start-up
  (processes, data, DHT) before the initial release;
- the share of the parties' time (summed over all 9, from start of play to its end) spent on chain
  transactions (sent, mined, receipt read, over JSON-RPC), blob transfers (DHT lookup, fetch, verify,
  serve, provide) and compute (training, scoring); the rest is waiting on others: polling the chain's
  events ("reads", listed too), barriers, throttles, timeouts;
- blob fetches, and how many were served by a party other than the blob's author (an update's author is
  its trainer; a model's authors are the validators, which each compute it);
- the audit's wall time.

    .venv/bin/python benchmarks/ledger_parties.py [--rounds 10] [--throttle 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from ppaia.config import ExperimentConfig
from ppaia.ledger.parties.launch import LedgerSystem, parties_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--throttle", type=float, default=0.5)
    args = parser.parse_args()
    config = ExperimentConfig.model_validate(
        {
            "dataset": "digits",
            "partition": "iid",
            "holdout": 0.2,
            "model": "logistic",
            "lr": 0.05,
            "peers": 9,
            "rounds": args.rounds,
            "rule": "flobc(validators=3, sync='bsp(period=3)', stragglers=2)",
        }
    )
    parties = parties_of(config, throttle={4: args.throttle, 5: args.throttle})
    with tempfile.TemporaryDirectory() as root, LedgerSystem(config, root, parties) as system:
        started = time.monotonic()
        seen: dict[int, float] = {}
        while len(seen) <= args.rounds:
            for release in system.state().releases:
                seen.setdefault(release.round, time.monotonic())
            if system.halted():
                raise SystemExit(f"the run halted at version {len(seen)}")
            time.sleep(0.1)
        audit_started = time.monotonic()
        rows = system.audit()
        audit_s = time.monotonic() - audit_started
        state = system.state()
        system.stop()
        stats = system.stats()

    per_version = (seen[args.rounds] - seen[0]) / args.rounds
    print(f"9 parties, {args.rounds} rounds, BSP, trainers 4 and 5 throttled {args.throttle:g} s per update")
    print(f"start-up to the initial release: {seen[0] - started:.1f} s")
    print(f"wall time per released version: {per_version:.2f} s")
    total = sum(s["seconds"].get("play", 0.0) for s in stats.values())
    for what in ("chain", "transfer", "compute", "reads"):
        spent = sum(s["seconds"].get(what, 0.0) for s in stats.values())
        print(f"  {what:9s} {spent:7.1f} party-s  {spent / total:6.1%} of {total:.1f} party-s")
    peer_of = {s["account"]: s["peer_id"] for s in stats.values()}
    validators = {peer_of[v] for v in state.validators}
    authors = {u.digest.hex(): {peer_of[u.trainer]} for u in state.updates.values()}
    fetches = [f for s in stats.values() for f in s["fetches"]]
    by_others = sum(f["provider"] not in authors.get(f["digest"], validators) for f in fetches)
    print(
        f"blob fetches: {len(fetches)}, served by a party other than the author: {by_others} "
        f"({by_others / len(fetches):.0%})"
    )
    print(f"audit: {len(rows)} versions verified in {audit_s:.1f} s")


if __name__ == "__main__":
    main()
