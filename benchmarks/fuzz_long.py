"""The fuzz test's generators (tests/network/fuzzing.py) run for longer: hostile wire frames and
safetensors bodies, each through the reader and checks the test uses, counting any error other than the
project's own (ProtocolError, codec.BlobError, NotReady) and any body refused by the codec's safety net
rather than a named check.

Prints cases per second for each kind, the share of each outcome, and every escape (up to 10 shown) with
the seed and case number that reproduce it; exits 1 if anything escaped.

    python benchmarks/fuzz_long.py                      # 1,000,000 of each, seed 1
    python benchmarks/fuzz_long.py --cases 100000 --seed 7 --kind bodies
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers fuzzing imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "network"))
import fuzzing

SHOWN = 10


async def run(kind: str, cases: int, seed: int) -> list[str]:
    """Run `cases` of `kind`, print what came out, and return the escapes."""
    rng = random.Random(seed)
    make: Callable[[random.Random], bytes] = fuzzing.body if kind == "bodies" else fuzzing.frame
    outcomes: Counter[str] = Counter()
    escapes: list[str] = []
    tick = time.perf_counter()
    for case in range(cases):
        data = make(rng)
        try:
            outcome = fuzzing.body_outcome(data) if kind == "bodies" else await fuzzing.frame_outcome(data)
        except Exception as err:
            outcome = f"escaped {type(err).__name__}"
            escapes.append(
                f"{kind} seed {seed} case {case}: {type(err).__name__}: {err!s:.200} {data[:200]!r}"
            )
        if outcome == "unexpected":
            escapes.append(f"{kind} seed {seed} case {case}: caught by the safety net only {data[:200]!r}")
        outcomes[outcome] += 1
    seconds = time.perf_counter() - tick
    print(f"{kind}: {cases} cases in {seconds:.1f} s, {cases / seconds:,.0f} cases/s, {len(escapes)} escapes")
    for outcome, count in outcomes.most_common():
        print(f"  {outcome:20} {count:9}  {count / cases:7.2%}")
    return escapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000, help="cases of each kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kind", choices=["bodies", "frames", "both"], default="both")
    args = parser.parse_args()
    kinds = ["bodies", "frames"] if args.kind == "both" else [args.kind]
    escapes = [escape for kind in kinds for escape in asyncio.run(run(kind, args.cases, args.seed))]
    for escape in escapes[:SHOWN]:
        print(escape)
    sys.exit(1 if escapes else 0)


if __name__ == "__main__":
    main()
