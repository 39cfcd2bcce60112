"""FLoBC experiments: trainer/validator ratio, BSP vs SSP vs BAP with stragglers, reward-penalty on/off.

    .venv/bin/python examples/flobc.py ratio  [--seeds 3] [--rounds 30] [--out runs/flobc]
    .venv/bin/python examples/flobc.py sync   [--seeds 3] [--rounds 45] [--out runs/flobc]
    .venv/bin/python examples/flobc.py reward [--seeds 3] [--rounds 30] [--out runs/flobc] [--ledger]

All on digits (IID split, 20 % of each peer's data held out for the validators), MLP 64-64-10, SGD lr 0.05,
one local epoch per update; every peer is evaluated on the shared test set (all hold the global model).

* ratio: 10 peers, BSP; V = 1..7 validators (the last V peers), the others train.
* sync: 6 trainers + 3 validators; trainers 4 and 5 are stragglers (3 s per update, the others 1 s);
  bsp(period=1), ssp(period=1), bap(quota=1) and bap(quota=3); accuracy per version and per simulated second.
* reward: 6 trainers + 3 validators; trainer i adds N(0, (i·a)²) noise to its model (attack
  ``noisy(scale=a, graded=true)`` on peers 0..5); reward-penalty on/off, with and without the validators'
  gate (decay 0.9 vs 0). ``--ledger`` also records the first seed's a = 0.03 run on the in-process EVM.

Writes CSV tables and plots to --out; written up in docs/flobc.md.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from statistics import mean, stdev

from rich.console import Console
from rich.table import Table

from ppaia import RunResult
from ppaia.ledger import from_fixed, run_flobc_on_ledger
from ppaia.simulation.report import line_plot
from ppaia.simulation.sweep import sweep_runs, sweep_with_progress

BASE = {"dataset": "digits", "partition": "iid", "holdout": 0.2, "model": "mlp", "lr": 0.05}
SCHEMES = ["bsp(period=1)", "ssp(period=1)", "bap(quota=1)", "bap(quota=3)"]
NOISE = [0.0, 0.01, 0.03, 0.1]
REWARD_RULES = {
    "gate + reward-penalty": "flobc",
    "gate, uniform weights": "flobc(reward_penalty=false)",
    "no gate + reward-penalty": "flobc(decay=0)",
    "no gate, uniform weights": "flobc(decay=0, reward_penalty=false)",
}
console = Console(width=160)


def collect(base: dict, grid: dict, seeds: int) -> list[tuple[dict, RunResult]]:
    """Every (grid cell, seed) run, with one progress bar: (cell, result) pairs in grid order."""
    done: list[tuple[dict, RunResult]] = []
    sweep_with_progress(
        sweep_runs(base, grid, list(range(seeds))), on_run=lambda run, r: done.append((run.cell, r))
    )
    return done


def pick(done: list[tuple[dict, RunResult]], **cell) -> list[RunResult]:
    return [result for mine, result in done if all(mine[key] == value for key, value in cell.items())]


def spread(values: list[float]) -> str:
    return f"{mean(values):.4f} ± {stdev(values) if len(values) > 1 else 0.0:.4f}"


def mean_curve(results: list[RunResult], key: str = "acc_mean") -> list[float]:
    return [mean(result.history[r][key] for result in results) for r in range(len(results[0].history))]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def ratio(args: argparse.Namespace) -> None:
    rules = {v: f"flobc(validators={v})" for v in range(1, 8)}
    done = collect({**BASE, "peers": 10, "rounds": args.rounds}, {"rule": list(rules.values())}, args.seeds)
    early = args.rounds // 3
    table = Table(title=f"10 peers, BSP: test accuracy (mean ± std over {args.seeds} seeds)")
    for column in ("trainers : validators", "quorum", f"round {early}", f"round {args.rounds}"):
        table.add_column(column, justify="right")
    rows, lines = [], {}
    for v, rule in rules.items():
        results = pick(done, rule=rule)
        final = [r.final["acc_mean"] for r in results]
        at_early = [r.history[early]["acc_mean"] for r in results]
        quorum = results[0].config.rule.quorum
        table.add_row(f"{10 - v} : {v}", str(quorum), spread(at_early), spread(final))
        rows.append(
            {
                "trainers": 10 - v,
                "validators": v,
                "quorum": quorum,
                "acc_early": mean(at_early),
                "acc_final": mean(final),
                "acc_final_std": stdev(final) if len(final) > 1 else 0.0,
            }
        )
        lines[f"{10 - v}T : {v}V"] = (list(range(args.rounds + 1)), mean_curve(results))
    console.print(table)
    write_rows(args.out / "ratio.csv", rows)
    line_plot(
        lines,
        args.out / "ratio.png",
        xlabel="round (model version)",
        ylabel="test accuracy",
        title="FLoBC, 10 peers, BSP: trainers vs validators",
        ylim=(0, 1),
    )


def at_time(history: list[dict], seconds: float) -> float:
    """Accuracy of the last version released at or before `seconds` of simulated time."""
    released = [row for row in history[1:] if row["sim_time"] <= seconds + 1e-9]
    return (released[-1] if released else history[0])["acc_mean"]


def sync(args: argparse.Namespace) -> None:
    rules = {s: f"flobc(validators=3, sync='{s}', stragglers=2, slowdown=3)" for s in SCHEMES}
    done = collect({**BASE, "peers": 9, "rounds": args.rounds}, {"rule": list(rules.values())}, args.seeds)
    budget = args.rounds // 3  # simulated seconds in which BAP(quota=1) releases a third of the versions
    table = Table(
        title=f"6 trainers (2 stragglers, 3× slower) + 3 validators (mean ± std over {args.seeds} seeds)"
    )
    for column in (
        "scheme",
        f"version {budget}",
        f"t = {budget} s",
        f"version {args.rounds}",
        f"t of version {args.rounds}",
        "uploads / version",
        "staleness",
    ):
        table.add_column(column, justify="right")
    rows, by_version, by_time = [], {}, {}
    for scheme, rule in rules.items():
        results = pick(done, rule=rule)
        history = results[0].history  # the schedule does not depend on the seed
        model_bytes = 4 * int(results[0].params.shape[1])
        uploads = mean(row["bytes_sent"] / model_bytes - 9 for row in history[1:])  # less 9 downloads
        staleness = mean(row["staleness_mean"] for row in history[1:])
        row = {
            "scheme": scheme,
            "acc_at_version": mean(r.history[budget]["acc_mean"] for r in results),
            "acc_at_time": mean(at_time(r.history, budget) for r in results),
            "acc_final": mean(r.final["acc_mean"] for r in results),
            "time_final": history[-1]["sim_time"],
            "uploads_per_version": uploads,
            "staleness_mean": staleness,
        }
        table.add_row(
            scheme,
            spread([r.history[budget]["acc_mean"] for r in results]),
            spread([at_time(r.history, budget) for r in results]),
            spread([r.final["acc_mean"] for r in results]),
            f"{row['time_final']:g} s",
            f"{uploads:.2f}",
            f"{staleness:.2f}",
        )
        rows.append(row)
        curve = mean_curve(results)
        by_version[scheme] = (list(range(args.rounds + 1)), curve)
        by_time[scheme] = ([0.0] + [r["sim_time"] for r in history[1:]], curve)
    console.print(table)
    write_rows(args.out / "sync.csv", rows)
    line_plot(
        by_version,
        args.out / "sync_by_version.png",
        xlabel="model version",
        ylabel="test accuracy",
        title="FLoBC sync schemes: accuracy per version",
        ylim=(0, 1),
    )
    line_plot(
        by_time,
        args.out / "sync_by_time.png",
        xlabel="simulated time (s)",
        ylabel="test accuracy",
        title="FLoBC sync schemes: accuracy per simulated second",
        ylim=(0, 1),
    )


def reward(args: argparse.Namespace) -> None:
    attacks = {a: f"noisy(scale={a}, graded=true)" for a in NOISE}
    base = {**BASE, "peers": 9, "rounds": args.rounds, "attackers": list(range(6))}
    grid = {"attack": list(attacks.values()), "rule": list(REWARD_RULES.values())}
    done = collect(base, grid, args.seeds)
    table = Table(
        title=f"6 trainers (trainer i adds noise of scale i·a) + 3 validators, {args.rounds} rounds: "
        f"test accuracy (mean ± std over {args.seeds} seeds)"
    )
    table.add_column("rule")
    for a in NOISE:
        table.add_column(f"a = {a}", justify="right")
    rows = []
    for name, rule in REWARD_RULES.items():
        cells = []
        for a, attack in attacks.items():
            results = pick(done, rule=rule, attack=attack)
            final = [r.final["acc_mean"] for r in results]
            scores = [r.snapshots["score"][-1][1][:6].tolist() for r in results]
            cells.append(spread(final))
            rows.append(
                {
                    "rule": name,
                    "a": a,
                    "acc_mean": mean(final),
                    "acc_std": stdev(final) if len(final) > 1 else 0.0,
                    **{f"score_{i}": mean(s[i] for s in scores) for i in range(6)},
                }
            )
        table.add_row(name, *cells)
    console.print(table)
    write_rows(args.out / "reward.csv", rows)
    run = pick(done, rule="flobc", attack=attacks[0.03])[0]  # seed 0
    series = run.snapshots["score"]
    rounds = [r for r, _ in series]
    lines = {
        f"trainer {i} (noise {i * 0.03:.2f})": (rounds, [float(s[i]) for _, s in series]) for i in range(6)
    }
    line_plot(
        lines,
        args.out / "reward_scores.png",
        xlabel="round",
        ylabel="reward-penalty score",
        title="FLoBC scores, trainer i adds noise of scale 0.03·i (seed 0)",
        ylim=(0, 1),
    )
    if args.ledger:
        recorded = run_flobc_on_ledger(run.config)
        chain = [from_fixed(recorded.ledger.score(t)) for t in recorded.trainers]
        console.print("scores on chain after the last release:", " ".join(f"{s:.4f}" for s in chain))
        console.print(
            "scores in the simulation:              ", " ".join(f"{float(s):.4f}" for s in series[-1][1][:6])
        )
        console.print(
            f"versions released: {recorded.ledger.latest_version().version}, "
            f"updates recorded: {sum(len(r.update_ids) for r in recorded.releases)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["ratio", "sync", "reward"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None, help="default: 30 (ratio, reward), 45 (sync)")
    parser.add_argument("--out", type=Path, default=Path("runs/flobc"))
    parser.add_argument("--ledger", action="store_true", help="reward: also record one run on the EVM")
    args = parser.parse_args()
    args.rounds = args.rounds or (45 if args.experiment == "sync" else 30)
    {"ratio": ratio, "sync": sync, "reward": reward}[args.experiment](args)
    console.print(f"tables and plots in {args.out}")


if __name__ == "__main__":
    main()
