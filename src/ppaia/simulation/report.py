"""Writes a run's outputs: resolved config, metrics table, summary, per-peer table and plots.

Everything is written into a temporary folder beside `out` and renamed into place at the end, so a
failed run never leaves a half-written output folder.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

import torch

from ppaia.config import ExperimentConfig
from ppaia.provenance import provenance
from ppaia.simulation.engine import RunResult
from ppaia.simulation.plots import new_figure, save_figure, wrap_title

__all__ = ["OutputError", "check_output_dir", "densify", "describe", "line_plot", "write_outputs"]

TITLE_SIZE = 9  # titles name every option of the dataset, partition and rule


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


def write_outputs(
    result: RunResult, out: str | Path, staging: Path | None = None, plots: bool = True
) -> Path:
    """Write every output file of `result` into `out` (created; must not exist or be empty); without
    `plots`, every file but the images (drawing costs more than a tiny run: ``ppaia sweep --no-plots``).

    Files are written into `staging` (default: a fresh :func:`staging_dir`, removed on failure) which is
    then renamed to `out`, so `out` never holds a half-written run.
    """
    out = Path(out)
    own = staging is None
    staging = staging_dir(out) if staging is None else staging
    try:
        _write_all(result, staging, plots)
        check_output_dir(out)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        if own:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_all(result: RunResult, folder: Path, plots: bool) -> None:
    (folder / "config.toml").write_text(result.config.to_toml())
    with open(folder / "metrics.csv", "w", newline="") as handle:
        columns = dict.fromkeys(key for row in result.history for key in row)  # rules may add columns
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(result.history)
    summary = {**result.summary(), "provenance": provenance()}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
    if plots:
        _plot(result, folder)


def densify(matrix: torch.Tensor) -> torch.Tensor:
    """A sparse snapshot as a dense matrix with NaN where nothing is known (e.g. peers that never met)."""
    dense = torch.full(matrix.shape, float("nan"), dtype=matrix.dtype)
    dense[tuple(matrix.indices())] = matrix.values()
    return dense


def _write_series(name: str, series: list[tuple[int, torch.Tensor]], folder: Path) -> None:
    """Per-round state as a long table: a value per peer, or a sparse peer × partner matrix."""
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


def _heat_map(name: str, series: list[tuple[int, torch.Tensor]], described: str, folder: Path) -> None:
    """The last peer × partner matrix of a series (e.g. learned trust) as an image."""
    round_, matrix = series[-1]
    figure, axis = new_figure((5.5, 4.8))
    image = axis.imshow(densify(matrix).float().numpy(), cmap="viridis", vmin=0, interpolation="nearest")
    figure.colorbar(image, ax=axis, label=f"{name} (blank: never met)")
    axis.set(xlabel="partner", ylabel="peer")
    axis.set_title(wrap_title(f"{name} after round {round_} · {described}", 60), fontsize=TITLE_SIZE)
    save_figure(figure, folder / f"{name}.png")


def describe(config: ExperimentConfig, peers: int, leave_out: Collection[str] = ()) -> str:
    """What was run, for a plot title: dataset, partition, rule, peers and the attack if any (each as
    configured, with its options). `leave_out`: fields that a sweep varies (its legend names them)."""
    named = ("dataset", "partition", "rule")
    parts = [getattr(config, name).label() for name in named if name not in leave_out]
    if "peers" not in leave_out:
        parts.append(f"{peers} peers")
    if config.attack is not None and "attack" not in leave_out:
        share = config.attackers
        on = f"{share:.0%} of peers" if isinstance(share, float) else f"peers {share}"
        parts.append(f"attack {config.attack.label()}" + ("" if "attackers" in leave_out else f" on {on}"))
    return " · ".join(parts)


def _plot(result: RunResult, folder: Path) -> None:
    rounds = [row["round"] for row in result.history]
    described = describe(result.config, result.params.shape[0])
    title = wrap_title(described)

    _spread_plot(result, "acc", "test accuracy", title, folder / "accuracy.png")
    _spread_plot(result, "loss", "test loss", title, folder / "loss.png")
    for name, series in result.snapshots.items():
        if series[-1][1].dim() == 2:
            _heat_map(name, series, described, folder)

    timed = [row for row in result.history if "sim_time" in row]
    if timed:  # a rule on a simulated clock (FLoBC's sync schemes): accuracy per simulated second
        start = result.history[0]
        figure, axis = new_figure((6, 4))
        axis.plot(
            [0.0] + [row["sim_time"] for row in timed],
            [start["acc_mean"]] + [row["acc_mean"] for row in timed],
            marker="o" if len(timed) < 30 else None,
        )
        axis.set(xlabel="simulated time (s)", ylabel="test accuracy (mean)", ylim=(0, 1))
        axis.set_title(title, fontsize=TITLE_SIZE)
        save_figure(figure, folder / "accuracy_vs_time.png")

    figure, axis = new_figure((6, 4))
    distance = [row["consensus_distance"] for row in result.history]
    axis.plot(rounds, distance)
    if max(distance) > 0:
        axis.set_yscale("log")  # exact zeros (identical peers) are left out of a log axis
    axis.set(xlabel="round", ylabel="consensus distance (1/N)Σ‖θᵢ−θ̄‖²")
    axis.set_title(title, fontsize=TITLE_SIZE)
    save_figure(figure, folder / "consensus_distance.png")

    figure, axis = new_figure((6, 4))
    accuracy = result.peer_accuracy.tolist()
    axis.bar(range(len(accuracy)), accuracy, width=1.0 if len(accuracy) > 50 else 0.8)
    axis.set(xlabel="peer", ylabel="final test accuracy", ylim=(0, 1))
    axis.set_title(title, fontsize=TITLE_SIZE)
    save_figure(figure, folder / "peer_accuracy.png")


def _spread_plot(result: RunResult, prefix: str, ylabel: str, title: str, path: Path) -> None:
    """`prefix`_mean over peers against rounds, its min–max band, and the honest peers' mean if some
    peers attack (their own accuracy and loss would otherwise be averaged in)."""
    history = result.history
    rounds = [row["round"] for row in history]
    figure, axis = new_figure((6, 4))
    axis.plot(rounds, [row[f"{prefix}_mean"] for row in history], label="mean over peers")
    low, high = [row[f"{prefix}_min"] for row in history], [row[f"{prefix}_max"] for row in history]
    axis.fill_between(rounds, low, high, alpha=0.25, label="min–max")
    if bool(result.attackers.any()):
        axis.plot(rounds, [row[f"honest_{prefix}_mean"] for row in history], label="mean over honest peers")
    if prefix == "acc":
        axis.set_ylim(0, 1)
    elif min(low) > 0 and max(high) > 100 * min(low):
        axis.set_yscale("log")  # a loss spanning orders of magnitude (a high learning rate, attackers)
    axis.set(xlabel="round", ylabel=ylabel)
    axis.set_title(title, fontsize=TITLE_SIZE)
    axis.legend(loc="lower right" if prefix == "acc" else "upper right")
    save_figure(figure, path)


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
    figure, axis = new_figure((6.5, 4.2))
    for label, (x, y) in lines.items():
        axis.plot(x, y, marker="o" if len(x) < 12 else None, label=label)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim:
        axis.set_ylim(*ylim)
    axis.legend(fontsize=8)
    save_figure(figure, path)
