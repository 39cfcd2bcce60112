"""Byzantine peers where it is hard: sparse graphs × label skew × attacks × shares, every robust rule.

    .venv/bin/python examples/byzantine_sparse.py [--seeds 3] [--rounds 40] [--out runs/byzantine_sparse]
        [--rules consensus,median] [--graphs 'random_regular(k=6)'] [--skews iid,'shards(k=2)']
        [--attacks sign_flip,alie] [--shares 0,0.3] [--markdown tables.md] [--merge DIR DIR ...]

50 peers on digits, 20 % of each peer's data held out (every rule trains on the same data), MLP 64-64-10,
SGD lr 0.1, evaluated after the last round; attackers chosen by seed. The share 0 is the clean run: it is
run once per graph × skew × rule (labelled attack "none"), not once per attack. Prints, per graph × skew,
honest-peer accuracy (mean ± std over seeds) of each rule clean and under each attack at the largest share,
and, for every trimmed mean in the rules, how many honest peers' closed neighbourhoods (self + neighbours)
hold more attackers than the rule trims at each end: where they do, theory says the trimmed mean can fail.
Writes runs.csv and sweep.csv (as ``ppaia sweep`` does) and, with --markdown, the tables.

The sweep runs one config after another (there are no parallel workers) and keeps each run's folder in
--out as it ends, so the same command resumes an interrupted grid. Run slices in separate processes
(e.g. --rules or --graphs, each with its own --out; a cell two slices ran is kept once), then
``--merge DIR ...`` reads their sweep.csv and runs.csv, writes the union to --out and prints the tables.
Rule specs are passed through, so any registered rule can be named.

krum(f=2): at 30 % a peer of a 6-regular graph expects 0.3 · 6 = 1.8 attacking neighbours (2.1 in its
closed neighbourhood of 7), and Krum with n = 7 values needs n ≥ 2f + 3, so f = 2 is both the expected
number and the most Krum can assume.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch
from byzantine import parse_grid_list  # examples/ is on the path when this script runs

from ppaia import RULES, ExperimentConfig, SweepResult, build_graph
from ppaia.attacks import choose_attackers
from ppaia.seeding import Stream, derive_seed
from ppaia.simulation.sweep import DEFAULT_METRICS, SweepRun, sweep_runs, sweep_with_progress

GRAPHS = ["random_regular(k=6)", "small_world(k=6, p=0.1)"]
SKEWS = ["iid", "dirichlet(alpha=0.5)", "shards(k=2)"]
ATTACKS = ["sign_flip", "gaussian", "label_flip", "alie"]
SHARES = [0.0, 0.1, 0.2, 0.3]
RULES_ = [
    "consensus",
    "median",
    "trimmed_mean(beta=0.3)",
    "krum(f=2)",
    "clipped_gossip",
    "balance",
    "learned_trust",
    "learned_trust(faithful=true)",
]
CLEAN = "none"  # the attack label of the clean runs


def base_config(rounds: int) -> dict:
    return {"peers": 50, "rounds": rounds, "holdout": 0.2, "lr": 0.1, "eval_every": rounds}


def grid_runs(args: argparse.Namespace) -> list[SweepRun]:
    """The clean runs (once per graph × skew × rule) and the attacked runs, each with `args.seeds` seeds."""
    base, seeds = base_config(args.rounds), list(range(args.seeds))
    cells = {"topology": args.graphs, "partition": args.skews, "rule": args.rules}
    runs = []
    if any(share == 0 for share in args.shares):
        clean = sweep_runs(base, cells, seeds)
        runs += [
            SweepRun({**run.cell, "attack": CLEAN, "attackers": 0.0}, run.seed, run.config) for run in clean
        ]
    attacked = [share for share in args.shares if share > 0]
    if attacked:
        runs += sweep_runs(base, {**cells, "attack": args.attacks, "attackers": attacked}, seeds)
    return runs


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def merged(folders: list[Path]) -> SweepResult:
    """The union of several slices' outputs; a cell (or run) written by two slices is kept once."""
    keys = ["topology", "partition", "rule", "attack", "attackers"]
    tables = {}
    for name in ("runs.csv", "sweep.csv"):
        rows = {}
        for folder in folders:
            for row in read_csv(folder / name):
                rows.setdefault(tuple(row.get(key) for key in [*keys, "seed"]), row)
        tables[name] = list(rows.values())
    return SweepResult(keys, DEFAULT_METRICS, tables["runs.csv"], tables["sweep.csv"])


def accuracy(cells: list[dict], **where: str) -> tuple[float, float] | None:
    """(mean, std) of honest-peer accuracy in the cell matching `where` (attackers compared as numbers)."""
    for cell in cells:
        share = where.get("attackers")
        if all(cell[key] == value for key, value in where.items() if key != "attackers") and (
            share is None or float(cell["attackers"]) == float(share)
        ):
            if cell.get("honest_acc_mean_mean") in (None, ""):
                return None  # every seed diverged
            return float(cell["honest_acc_mean_mean"]), float(cell["honest_acc_mean_std"])
    return None


def shown(value: tuple[float, float] | None) -> str:
    return "–" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def points(value: float) -> str:
    return f"{value * 100:+.1f}".replace("-", "−")


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * (len(header) - 1) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def accuracy_tables(cells: list[dict], args: argparse.Namespace) -> list[str]:
    """Per graph × skew: each rule clean, then under each attack at the largest share with its change."""
    share = max(args.shares)
    lines = []
    for graph in args.graphs:
        for skew in args.skews:
            lines += [f"### {graph} · {skew}: honest-peer accuracy (mean ± std, {args.seeds} seeds)", ""]
            header = ["rule", "clean"]
            for attack in args.attacks:
                header += [f"{attack} {share:.0%}", "Δ pts"]
            rows = []
            for rule in args.rules:
                at = {"topology": graph, "partition": skew, "rule": rule}
                clean = accuracy(cells, **at, attack=CLEAN)
                row = [rule, shown(clean)]
                for attack in args.attacks:
                    hit = accuracy(cells, **at, attack=attack, attackers=share)
                    both = hit is not None and clean is not None
                    row += [shown(hit), points(hit[0] - clean[0]) if both else "–"]
                rows.append(row)
            lines += markdown(header, rows)
    return lines


def drawn(graph: str, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The links ([2, E]) and the attacker mask of the run with this graph, attacker share and seed, drawn
    exactly as the simulator draws them for that config and seed."""
    config = ExperimentConfig.model_validate(
        base_config(1) | {"topology": graph, "attack": "sign_flip", "attackers": share, "seed": seed}
    )
    edges = build_graph(config.topology, config.peers, derive_seed(config.seed, Stream.TOPOLOGY)).edges
    return edges, choose_attackers(config.peers, config.attackers, config.seed)


def exposure(graph: str, share: float, seed: int, beta: float) -> tuple[float, float]:
    """For the run with this graph, attacker share and seed: the largest attacker share in an honest
    peer's closed neighbourhood, and the fraction of honest peers whose neighbourhood holds more attackers
    than trimmed_mean(beta) trims at each end (⌊beta · m⌋ of its m values; the rule's own rounding).

    The graph and the attackers are drawn exactly as the simulator draws them for that config and seed.
    """
    edges, attackers = drawn(graph, share, seed)
    n = len(attackers)
    closed = torch.eye(n, dtype=torch.float64)
    closed[edges[0], edges[1]] = closed[edges[1], edges[0]] = 1.0
    held, size = closed @ attackers.double(), closed.sum(1)
    honest = ~attackers
    exposed = held > torch.floor(size * beta + 1e-9)
    return float((held / size)[honest].max()), float(exposed[honest].double().mean())


def theory_tables(cells: list[dict], args: argparse.Namespace) -> list[str]:
    """Per graph and trimmed mean: neighbourhood attacker shares against the rule's honest accuracy."""
    lines = []
    for graph in args.graphs:
        for rule in [rule for rule in args.rules if rule.split("(")[0].strip() == "trimmed_mean"]:
            beta = RULES.create(rule).beta
            lines += [
                f"### {graph} · {rule}: attackers in honest closed neighbourhoods vs accuracy",
                "",
                f"Largest attacker share of an honest peer's closed neighbourhood and honest peers with more "
                f"attackers than the rule trims at each end (share > β = {beta}): mean over seeds "
                f"{', '.join(map(str, range(args.seeds)))}. Accuracy: the rule's clean accuracy at 0 %, else "
                "its worst attack.",
                "",
            ]
            rows = []
            for share in args.shares:
                seen = [exposure(graph, share, seed, beta) for seed in range(args.seeds)] if share else []
                row = [f"{share:.0%}"]
                row += [f"{statistics.fmean(values):.2f}" for values in zip(*seen, strict=True)] or ["0", "0"]
                for skew in args.skews:
                    at = {"topology": graph, "partition": skew, "rule": rule}
                    found = (
                        [(accuracy(cells, **at, attack=CLEAN), "clean")]
                        if share == 0
                        else [(accuracy(cells, **at, attack=a, attackers=share), a) for a in args.attacks]
                    )
                    found = [(value, name) for value, name in found if value is not None]
                    worst = min(found, key=lambda item: item[0][0], default=None)
                    row.append("–" if worst is None else f"{shown(worst[0])} ({worst[1]})")
                rows.append(row)
            header = ["attackers", "largest neighbourhood share", "honest peers > β", *args.skews]
            lines += markdown(header, rows)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/byzantine_sparse"))
    for name, default in [("rules", RULES_), ("graphs", GRAPHS), ("skews", SKEWS), ("attacks", ATTACKS)]:
        parser.add_argument(f"--{name}", type=parse_grid_list, default=default, help="comma-separated specs")
    parser.add_argument("--shares", type=parse_grid_list, default=SHARES, help="comma-separated shares")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument("--merge", type=Path, nargs="+", help="read these slices' outputs; run nothing")
    args = parser.parse_args()
    args.shares = sorted(float(share) for share in args.shares)

    if args.merge:
        result = merged(args.merge)
    else:  # each run's folder is kept in --out as it ends: the same command again resumes an interrupted grid
        result = sweep_with_progress(grid_runs(args), out=args.out, plots=False)
    if args.merge:  # the seeds the slices ran (always 0, 1, ...)
        args.seeds = len({run["seed"] for run in result.runs})
    result.write(args.out)
    lines = [*accuracy_tables(result.cells, args), *theory_tables(result.cells, args)]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    print(f"runs.csv and sweep.csv in {args.out}")


if __name__ == "__main__":
    main()
