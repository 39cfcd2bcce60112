"""`ppaia run` on a user's own CSV file with a writer column, split one writer per peer (by_group)."""

import csv
import json
from collections import Counter

import numpy as np
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from ppaia.cli.main import app

WRITERS = 8


def write_digits(path, rows: np.ndarray, writers: np.ndarray) -> None:
    x, y = load_digits(return_X_y=True)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([*(f"px{i}" for i in range(64)), "label", "writer"])
        out.writerows([*x[i].astype(int).tolist(), y[i], f"w{writers[i]}"] for i in rows)


def test_run_splits_a_csv_one_writer_per_peer(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the config's relative paths are found from the working directory
    n = len(load_digits().target)
    writers = np.random.default_rng(0).integers(0, WRITERS, n)
    rows = np.arange(n)
    # A separate test file keeps every row of the training file, so each peer holds all its writer's rows.
    write_digits(tmp_path / "digits.csv", rows[rows % 5 != 0], writers)
    write_digits(tmp_path / "digits_test.csv", rows[rows % 5 == 0], writers)
    (tmp_path / "exp.toml").write_text(
        f'peers = {WRITERS}\nrounds = 3\npartition = "by_group"\n'
        "dataset = \"csv(path='digits.csv', label_column='label', group_column='writer', "
        "test_path='digits_test.csv', shape=[1, 8, 8])\"\n"
    )
    result = CliRunner().invoke(app, ["run", "exp.toml", "--out", "out"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    counts = Counter(f"w{writers[i]}" for i in rows[rows % 5 != 0])
    assert summary["peer_samples"] == [counts[f"w{k}"] for k in range(WRITERS)]  # peer i holds writer i
    assert len(summary["peer_accuracy"]) == WRITERS
