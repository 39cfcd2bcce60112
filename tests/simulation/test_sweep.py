"""Sweeps: grid parsing, early validation, mean, sample std and 95% CI per cell, and the CLI command."""

import csv
import re
import statistics

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.config import ConfigError
from ppaia.simulation.sweep import parse_grid_option, sweep, sweep_runs

BASE = {"peers": 4, "rounds": 2, "model": "logistic"}


def test_grid_values_split_on_top_level_commas_or_come_as_a_toml_list():
    assert parse_grid_option("rule=consensus,fedavg(fraction=0.5),trimmed_mean(beta=0.1)") == (
        "rule",
        ["consensus", "fedavg(fraction=0.5)", "trimmed_mean(beta=0.1)"],
    )
    assert parse_grid_option("peers=4,8") == ("peers", [4, 8])
    assert parse_grid_option("model.hidden=[[8], [16, 16]]") == ("model.hidden", [[8], [16, 16]])
    assert parse_grid_option('rule="krum(f=1)",median') == ("rule", ["krum(f=1)", "median"])
    with pytest.raises(ConfigError):
        parse_grid_option("peers")


def test_every_config_is_validated_before_any_run():
    with pytest.raises(ValidationError, match="peers"):
        sweep_runs(BASE, {"peers": [4, 0]}, [0])


def test_cells_summarise_their_seeds():
    runs = sweep_runs(BASE, {"rule": ["isolated", "consensus"], "model.name": ["logistic"]}, [0, 1, 2])
    assert len(runs) == 6 and {run.seed for run in runs} == {0, 1, 2}
    result = sweep(runs)
    assert [cell["rule"] for cell in result.cells] == ["isolated", "consensus"]
    for cell in result.cells:
        accuracies = [run["acc_mean"] for run in result.runs if run["rule"] == cell["rule"]]
        assert cell["seeds"] == 3
        assert cell["acc_mean_mean"] == pytest.approx(statistics.fmean(accuracies))
        assert cell["acc_mean_std"] == pytest.approx(statistics.stdev(accuracies))  # the sample std
        t975 = 0.95 / (2 * 0.975 * 0.025) ** 0.5  # Student's t quantile, 2 degrees of freedom, in closed form
        assert cell["acc_mean_ci95"] == pytest.approx(t975 * cell["acc_mean_std"] / 3**0.5)
    assert result.cells[0]["bytes_cumulative_mean"] == 0  # isolated sends nothing


def test_sweep_command_writes_tables(tmp_path):
    out = tmp_path / "sweep"
    arguments = [
        "sweep",
        "--grid",
        "rule=isolated,gossip",
        "--seeds",
        "2",
        "--set",
        "rounds=2",
        "--set",
        "peers=4",
        "--no-plots",  # drawn and checked in tests/cli/test_sweep_cli.py
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, arguments, terminal_width=150)
    assert result.exit_code == 0, result.output
    with open(out / "sweep.csv") as handle:
        cells = list(csv.DictReader(handle))
    assert [cell["rule"] for cell in cells] == ["isolated", "gossip"] and cells[0]["seeds"] == "2"
    with open(out / "runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert "±" in result.output


def test_sweep_command_rejects_a_bad_grid_value_without_running(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--grid", "lr=0.1,-1", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "lr" in result.output
    assert not (tmp_path / "s").exists()


def test_runs_from_different_grids_can_be_summarised_together(tmp_path):
    runs = sweep_runs(BASE, {"rule": ["consensus"], "topology": ["ring", "complete"]}, [0])
    runs += sweep_runs(BASE, {"rule": ["fedavg"]}, [0, 1])
    result = sweep(runs)
    assert [(cell["rule"], cell.get("topology"), cell["seeds"]) for cell in result.cells] == [
        ("consensus", "ring", 1),
        ("consensus", "complete", 1),
        ("fedavg", None, 2),
    ]
    result.write(tmp_path)
    with open(tmp_path / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[2]["rule"] == "fedavg" and rows[2]["topology"] == ""


def test_a_field_and_its_option_in_one_grid_keep_the_option():
    runs = sweep_runs(BASE, {"rule.steps": [1, 4], "rule": ["consensus"]}, [0])
    assert [run.config.rule.steps for run in runs] == [1, 4]


def test_sweep_command_shows_the_chosen_metric_and_rejects_unknown_ones(tmp_path):
    common = [
        "sweep",
        "--grid",
        "lr=0.05",
        "--seeds",
        "1",
        "--set",
        "rounds=1",
        "--set",
        "peers=4",
        "--no-plots",
    ]
    shown = CliRunner().invoke(app, [*common, "--metric", "loss_mean", "--out", str(tmp_path / "a")])
    assert shown.exit_code == 0 and "loss_mean" in shown.output
    assert re.search(r"│ 0\.05 │ 1 │ +\d+\.\d{4} │", shown.output)  # one seed: n=1, no interval
    unknown = CliRunner().invoke(app, [*common, "--metric", "accuracy", "--out", str(tmp_path / "b")])
    assert unknown.exit_code == 2 and "accuracy" in unknown.output
