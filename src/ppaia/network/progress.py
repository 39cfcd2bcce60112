"""A peer's progress: what its status reports, and the record of each round it ran.

Each round is appended to ``<data-dir>/metrics.csv`` (the launcher and the benchmarks read its timings)
before the round's checkpoint is written, and a resumed peer drops the rows past its checkpoint (it runs
those rounds again), so the file lists exactly the rounds its checkpoints hold — a peer killed between
the two never leaves a round trained and counted (its ε spent) but missing from the file. Each round is
logged as one INFO line: a peer started by hand shows its progress on the console, and a launched
peer's ``peer.log`` holds the same lines — plain, timestamped log lines, not a live display, since a
peer's output is as often a log file as a terminal.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from ppaia.network.status import Phase

__all__ = ["Progress", "RoundRecord", "forget_rounds_after", "record_round"]

log = logging.getLogger(__name__)

METRICS_COLUMNS = ("round", "accuracy", "epsilon", "train_s", "mix_s", "received", "missing", "stale")


@dataclass
class Progress:
    """Where a peer stands: round and mixing step, phase, its last evaluation, its privacy spending,
    and the senders it left out and the stale models it used, over all rounds."""

    round: int = 0
    step: int = 0
    phase: Phase = Phase.STARTING
    accuracy: float | None = None
    loss: float | None = None
    epsilon: float | None = None
    missing: int = 0
    stale: int = 0


@dataclass(frozen=True)
class RoundRecord:
    """One round as a peer ran it: seconds of training and of mixing, models received, senders left
    out and stale models used; `evaluated` if the round ended with an evaluation."""

    round: int
    train_s: float
    mix_s: float
    received: int
    missing: int
    stale: int
    evaluated: bool


def record_round(data_dir: Path, me: int | str, rounds: int, record: RoundRecord, progress: Progress) -> None:
    """Append `record` to the peer's metrics.csv (with the accuracy of its last evaluation) and log it."""
    path = Path(data_dir) / "metrics.csv"
    new = not path.exists()
    accuracy = "" if progress.accuracy is None else f"{progress.accuracy:.6f}"
    epsilon = "" if progress.epsilon is None else f"{progress.epsilon:.6f}"
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(METRICS_COLUMNS)
        writer.writerow(
            [
                record.round, accuracy, epsilon, f"{record.train_s:.6f}", f"{record.mix_s:.6f}",
                record.received, record.missing, record.stale,
            ]
        )  # fmt: skip
    measured = ""
    if record.evaluated and progress.accuracy is not None and progress.loss is not None:
        measured = f": accuracy {progress.accuracy:.4f}, loss {progress.loss:.4f}"
    if progress.epsilon is not None:
        measured += f"{',' if measured else ':'} epsilon {progress.epsilon:.3f}"
    log.info(
        "peer %s: round %d/%d%s; %.2f s (train %.2f s, mix %.2f s); received %d, left out %d, stale %d",
        me, record.round, rounds, measured, record.train_s + record.mix_s, record.train_s, record.mix_s,
        record.received, record.missing, record.stale,
    )  # fmt: skip


def forget_rounds_after(data_dir: Path, round_: int) -> None:
    """Drop the metrics.csv rows of rounds after `round_` (a resumed peer's checkpoint): it runs them anew."""
    path = Path(data_dir) / "metrics.csv"
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= round_]
    if len(kept) < len(rows) - 1:
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows([rows[0], *kept])
