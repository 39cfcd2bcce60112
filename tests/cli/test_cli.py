"""The ppaia command line: outputs of a run, clear errors with exit code 2, and the registry listing."""

import csv
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ppaia import ExperimentConfig, load_config
from ppaia.cli.main import REGISTRIES, app

runner = CliRunner()
QUICK = ["--set", "rounds=2", "--set", "peers=4"]
FILES = {
    "config.toml",
    "metrics.csv",
    "summary.json",
    "peers.csv",
    "accuracy.png",
    "loss.png",
    "consensus_distance.png",
    "peer_accuracy.png",
    "report.html",
}


def test_run_writes_every_output_file(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *QUICK, "--set", "partition=iid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == FILES
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for column in (
        "acc_mean",
        "acc_min",
        "acc_max",
        "loss_mean",
        "consensus_distance",
        "bytes_sent",
        "wall_s",
    ):
        assert column in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["round"] == 2 and len(summary["peer_accuracy"]) == 4
    assert summary["acc_mean"] == pytest.approx(float(rows[-1]["acc_mean"]))
    resolved = load_config(out / "config.toml")
    assert resolved == ExperimentConfig(rounds=2, peers=4, partition="iid")
    assert "test accuracy mean" in result.output


def test_run_reads_a_config_file(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('peers = 5\nrounds = 1\nrule = "gossip(pairs=3)"\n[topology]\nname = "complete"\n')
    out = tmp_path / "out"
    assert runner.invoke(app, ["run", str(config), "--out", str(out)]).exit_code == 0
    assert load_config(out / "config.toml").rule.pairs == 3


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--set", "peers=0"], "peers"),
        (["--set", "colour=blue"], "colour"),
        (["--set", "lr=fast"], "lr"),
        (["--set", "rule=telepathy"], "rule"),
        (["--set", "partition=dirichlet(-1)"], "alpha"),
        (["--set", "dataset=mnist(path='/nonexistent/mnist')"], "/nonexistent/mnist"),
        (["--set", "peers=2000", "--set", "min_samples=5"], "2000"),
        (["--set", "topology=erdos_renyi(p=0.01)", "--set", "peers=40"], "allow_disconnected"),
        (["--set", "broken"], "key=value"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(tmp_path, arguments, named):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", *arguments, "--out", str(out)])
    assert result.exit_code == 2
    assert named in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_config_file_exits_2(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "nope.toml" in result.output


@pytest.mark.parametrize(
    "command", [["run", *QUICK], ["launch", "--timeout", "5"], ["launch", "--open", "--timeout", "5"]]
)
def test_existing_output_folder_is_not_overwritten(tmp_path, command):
    """Nor reused: an open swarm's peers would resume from the checkpoints of an earlier run there."""
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(app, [*command, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_list_shows_every_registered_component():
    result = runner.invoke(app, ["list"], terminal_width=200)
    assert result.exit_code == 0
    for _, registry in REGISTRIES:
        for name in registry.names():
            assert name in result.output


@pytest.mark.slow
def test_installed_entry_point_runs_end_to_end(tmp_path):
    out = tmp_path / "e2e"
    command = [sys.executable, "-m", "ppaia.cli.main", "run", "--set", "rounds=3", "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    assert {p.name for p in out.iterdir()} == FILES
