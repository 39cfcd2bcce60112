"""A peer's metrics.csv lists exactly the rounds its checkpoints hold, whatever round it was killed in."""

from __future__ import annotations

import csv

import pytest

from ppaia.network.progress import Progress, RoundRecord, forget_rounds_after, record_round


def rounds_in(folder) -> list[int]:
    with open(folder / "metrics.csv", newline="") as handle:
        return [int(row["round"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("checkpoint", [0, 1, 3, 5, 9])
def test_a_resumed_peer_forgets_the_rows_it_will_run_again(tmp_path, checkpoint):
    progress = Progress(accuracy=0.5, epsilon=1.0)
    for round_ in range(1, 6):
        record_round(tmp_path, 0, 8, RoundRecord(round_, 0.1, 0.1, 2, 0, 0, True), progress)
    forget_rounds_after(tmp_path, checkpoint)
    kept = list(range(1, min(checkpoint, 5) + 1))
    assert rounds_in(tmp_path) == kept
    # it runs the forgotten rounds again, appending to the same file under the same header
    for round_ in range(checkpoint + 1, 7):
        record_round(tmp_path, 0, 8, RoundRecord(round_, 0.1, 0.1, 2, 0, 0, True), progress)
    assert rounds_in(tmp_path) == kept + list(range(checkpoint + 1, 7))


def test_forgetting_without_a_metrics_file_is_a_no_op(tmp_path):
    forget_rounds_after(tmp_path, 3)
    assert not (tmp_path / "metrics.csv").exists()
