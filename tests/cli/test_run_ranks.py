"""`ppaia run --ranks R`: torchrun starts R ranks on this machine, each with a block of the peers, and
rank 0 writes the same output files as a run in one process."""

import csv
import json

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app

runner = CliRunner()
RUN = [
    "--set", "peers=5",
    "--set", "rounds=2",
    "--set", "rule=learned_trust(partners=2, steps=2)",
    "--set", "holdout=0.3",
    "--set", "topology=complete",
    "--set", "model=mlp(hidden=[8])",
]  # fmt: skip
TIMES = {"wall_s", "setup_s", "provenance"}  # what may differ between two runs of one config


def rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def assert_close_rows(got, expected):
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine.keys() - TIMES:
            if mine[key] == theirs[key]:
                continue
            assert float(mine[key]) == pytest.approx(float(theirs[key]), rel=1e-5, abs=1e-6), key


def assert_close_json(got, expected, where=""):
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected.keys() - TIMES:
            assert_close_json(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            assert_close_json(mine, theirs, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), where
    else:
        assert got == expected, where


@pytest.mark.slow
def test_two_ranks_write_the_files_of_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = runner.invoke(app, ["run", *RUN, "--out", "one"])
    assert one.exit_code == 0, one.output
    two = runner.invoke(app, ["run", *RUN, "--out", "two", "--ranks", "2"])
    assert two.exit_code == 0, two.output
    files = {path.name for path in (tmp_path / "one").iterdir()}
    assert {path.name for path in (tmp_path / "two").iterdir()} == files
    assert "trust.csv" in files
    assert (tmp_path / "two" / "config.toml").read_text() == (tmp_path / "one" / "config.toml").read_text()
    for name in ("metrics.csv", "peers.csv", "trust.csv"):
        assert_close_rows(rows(tmp_path / "two" / name), rows(tmp_path / "one" / name))
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("two", "one")]
    assert_close_json(*summaries)


@pytest.mark.parametrize(
    ("arguments", "phrase"),
    [
        (["--ranks", "6"], "more ranks than peers"),
        (["--ranks", "2", "--set", "rule=centralized"], "pools all data"),
        (["--ranks", "2", "--dashboard"], "--dashboard"),
        (["--ranks", "2", "--set", "device=gpu"], "device"),
    ],
)
def test_what_cannot_run_on_ranks_exits_2_before_starting_them(tmp_path, monkeypatch, arguments, phrase):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *RUN, *arguments, "--out", "out"])
    assert result.exit_code == 2, result.output
    assert phrase in result.output
    assert list(tmp_path.iterdir()) == []
