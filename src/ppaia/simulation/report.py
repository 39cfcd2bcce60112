"""Writes a run's outputs: resolved config, metrics table, summary, per-peer table and plots.

Everything is written into a temporary folder beside `out` and renamed into place at the end, so a
failed run never leaves a half-written output folder.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ppaia.simulation.engine import RunResult

__all__ = ["OutputError", "check_output_dir", "densify", "line_plot", "write_outputs"]


class OutputError(ValueError):
    """An output folder that cannot be used."""


def check_output_dir(out: Path) -> None:
    """Refuse an existing, non-empty folder (results are never overwritten or mixed)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"--out {out}: already exists and is not empty; choose a new folder")


def staging_dir(out: str | Path) -> Path:
    """A fresh hidden folder beside `out` to build outputs in (checked: `out` must be new or empty)."""
    out = Path(out)
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def write_outputs(result: RunResult, out: str | Path, staging: Path | None = None) -> Path:
    """Write every output file of `result` into `out` (created; must not exist or be empty).

    Files are written into `staging` (default: a fresh :func:`staging_dir`, removed on failure) which is
    then renamed to `out`, so `out` never holds a half-written run.
    """
    out = Path(out)
    own = staging is None
    staging = staging_dir(out) if staging is None else staging
    try:
        _write_all(result, staging)
        check_output_dir(out)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        if own:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_all(result: RunResult, folder: Path) -> None:
    (folder / "config.toml").write_text(result.config.to_toml())
    with open(folder / "metrics.csv", "w", newline="") as handle:
        columns = dict.fromkeys(key for row in result.history for key in row)  # rules may add columns
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(result.history)
    (folder / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    with open(folder / "peers.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        classes = [f"class_{c}" for c in range(result.label_histogram.shape[1])]
        writer.writerow(["peer", "samples", "accuracy", "loss", *classes])
        columns = zip(
            result.n_samples, result.peer_accuracy, result.peer_loss, result.label_histogram, strict=True
        )
        for peer, (count, acc, loss, counts) in enumerate(columns):
            writer.writerow([peer, int(count), f"{acc:.6f}", f"{loss:.6f}", *counts.tolist()])
    for name, series in result.snapshots.items():
        _write_series(name, series, folder)
    _plot(result, folder)


def densify(matrix: torch.Tensor) -> torch.Tensor:
    """A sparse snapshot as a dense matrix with NaN where nothing is known (e.g. peers that never met)."""
    dense = torch.full(matrix.shape, float("nan"), dtype=matrix.dtype)
    dense[tuple(matrix.indices())] = matrix.values()
    return dense


def _write_series(name: str, series: list[tuple[int, torch.Tensor]], folder: Path) -> None:
    """Per-round state as a long table: a value per peer, or a sparse peer × partner matrix (+ heat map)."""
    with open(folder / f"{name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        if series[-1][1].dim() == 1:
            writer.writerow(["round", "peer", name])
            for round_, values in series:
                writer.writerows((round_, peer, f"{value:.6g}") for peer, value in enumerate(values.tolist()))
            return
        writer.writerow(["round", "peer", "partner", name])
        for round_, matrix in series:
            pairs, values = matrix.indices().T.tolist(), matrix.values().tolist()
            writer.writerows((round_, i, j, f"{v:.6g}") for (i, j), v in zip(pairs, values, strict=True))
    round_, matrix = series[-1]
    figure, axis = _figure((5.5, 4.5))
    image = axis.imshow(densify(matrix).float().numpy(), cmap="viridis", vmin=0, interpolation="nearest")
    figure.colorbar(image, ax=axis, label=f"{name} (blank: never met)")
    axis.set(xlabel="partner", ylabel="peer", title=f"{name} after round {round_}")
    _save(figure, folder / f"{name}.png")


def _plot(result: RunResult, folder: Path) -> None:
    rounds = [row["round"] for row in result.history]
    title = f"{result.config.rule.label()} · {result.params.shape[0]} peers"

    figure, axis = _figure((6, 4))
    axis.plot(rounds, [row["acc_mean"] for row in result.history], label="mean over peers")
    axis.fill_between(
        rounds,
        [row["acc_min"] for row in result.history],
        [row["acc_max"] for row in result.history],
        alpha=0.25,
        label="min–max",
    )
    axis.set(xlabel="round", ylabel="test accuracy", title=title, ylim=(0, 1))
    axis.legend(loc="lower right")
    _save(figure, folder / "accuracy.png")

    timed = [row for row in result.history if "sim_time" in row]
    if timed:  # a rule on a simulated clock (FLoBC's sync schemes): accuracy per simulated second
        start = result.history[0]
        figure, axis = _figure((6, 4))
        axis.plot(
            [0.0] + [row["sim_time"] for row in timed],
            [start["acc_mean"]] + [row["acc_mean"] for row in timed],
            marker="o" if len(timed) < 30 else None,
        )
        axis.set(xlabel="simulated time (s)", ylabel="test accuracy (mean)", title=title, ylim=(0, 1))
        _save(figure, folder / "accuracy_vs_time.png")

    figure, axis = _figure((6, 4))
    distance = [row["consensus_distance"] for row in result.history]
    axis.plot(rounds, distance)
    if max(distance) > 0:
        axis.set_yscale("log")  # exact zeros (identical peers) are left out of a log axis
    axis.set(xlabel="round", ylabel="consensus distance (1/N)Σ‖θᵢ−θ̄‖²", title=title)
    _save(figure, folder / "consensus_distance.png")

    figure, axis = _figure((6, 4))
    accuracy = result.peer_accuracy.tolist()
    axis.bar(range(len(accuracy)), accuracy, width=1.0 if len(accuracy) > 50 else 0.8)
    axis.set(xlabel="peer", ylabel="final test accuracy", title=title, ylim=(0, 1))
    _save(figure, folder / "peer_accuracy.png")


def _figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure outside pyplot: it needs no GUI backend and leaves the user's backend alone."""
    figure = Figure(figsize=size)
    return figure, figure.subplots()


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def line_plot(
    lines: dict[str, tuple[list[float], list[float]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
) -> None:
    """One line per label, e.g. accuracy against rounds or against the share of attackers."""
    figure, axis = _figure((6.5, 4.2))
    for label, (x, y) in lines.items():
        axis.plot(x, y, marker="o" if len(x) < 12 else None, label=label)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim:
        axis.set_ylim(*ylim)
    axis.legend(fontsize=8)
    _save(figure, path)
