"""The most any rule can keep under attack on the sparse graphs of byzantine_sparse.py: honest peers that
exclude every attacker without a mistake.

    .venv/bin/python examples/byzantine_oracle.py [--seeds 3] [--share 0.3] [--rounds 40]
        [--graphs 'random_regular(k=6)'] [--skews 'dirichlet(alpha=0.5)'] [--out runs/byzantine_oracle]

For each graph × skew × seed it runs plain consensus twice on byzantine_sparse.py's set-up: clean, and on
the same graph with every link that touches an attacker removed (the attackers drawn by the seed, exactly
as in the attacked runs; an `edgelist` topology written to --out). Cut off, the attackers' models reach
nobody, whatever they send, so the second run is what a perfect detector would give the honest peers:
they lose the attackers' data and links, and an honest peer whose neighbours all attack learns alone.
Both runs are scored on the honest peers. The gap between them is spent before any rule makes a mistake:
a rule that must stay within 5 points of its clean accuracy under attack has only what is left.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from byzantine import parse_grid_list  # examples/ is on the path when this script runs
from byzantine_sparse import GRAPHS, base_config, drawn, markdown, points

from ppaia import ExperimentConfig, run


def honest_accuracy(config: dict, honest) -> float:
    return float(run(ExperimentConfig.model_validate(config)).peer_accuracy[honest].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--graphs", type=parse_grid_list, default=GRAPHS)
    parser.add_argument("--skews", type=parse_grid_list, default=["dirichlet(alpha=0.5)"])
    parser.add_argument("--out", type=Path, default=Path("runs/byzantine_oracle"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for graph in args.graphs:
        for skew in args.skews:
            clean, cut = [], []
            for seed in range(args.seeds):
                edges, attackers = drawn(graph, args.share, seed)
                honest = ~attackers
                path = args.out / f"{graph.split('(')[0]}-{args.share:g}-{seed}.edges"
                kept = [(u, v) for u, v in edges.T.tolist() if honest[u] and honest[v]]
                path.write_text("".join(f"{u} {v}\n" for u, v in kept))
                config = base_config(args.rounds) | {"topology": graph, "partition": skew, "seed": seed}
                clean.append(honest_accuracy(config, honest))
                config |= {"topology": f"edgelist(path='{path}')", "allow_disconnected": True}
                cut.append(honest_accuracy(config | {"attack": "sign_flip", "attackers": args.share}, honest))
                print(
                    f"{graph} · {skew} · seed {seed}: clean {clean[-1]:.3f}, attackers cut off {cut[-1]:.3f}"
                )
            rows.append(
                [
                    graph,
                    skew,
                    f"{statistics.fmean(clean):.3f} ± {statistics.stdev(clean) if len(clean) > 1 else 0:.3f}",
                    f"{statistics.fmean(cut):.3f} ± {statistics.stdev(cut) if len(cut) > 1 else 0:.3f}",
                    points(statistics.fmean(cut) - statistics.fmean(clean)),
                ]
            )
    header = ["graph", "skew", "consensus clean", f"attackers ({args.share:.0%}) cut off", "Δ pts"]
    print("\n".join(["", *markdown(header, rows)]))


if __name__ == "__main__":
    main()
