"""Diverging runs exit with code 3 naming the round and peers, and a sweep marks their cells; configs that
used to end in tracebacks (issue 10) exit with code 2 naming the field, sizes before anything is allocated."""

from __future__ import annotations

import csv
import json
import math

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import DIVERGED, app
from ppaia.config import SEED_MAX

runner = CliRunner()
QUICK = ["--set", "peers=4", "--set", "rounds=3"]
MEMORY = "the run needs at least"  # refused by the estimate, before anything was allocated


def invoke(tmp_path, settings: list[str], rounds: int = 3):
    arguments = ["run", "--set", "peers=4", "--set", f"rounds={rounds}", "--out", str(tmp_path / "out")]
    for setting in settings:
        arguments += ["--set", setting]
    return runner.invoke(app, arguments)


def text(result) -> str:
    """The output with its line wrapping undone."""
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    "settings",
    [
        ["lr=1e308"],
        ["lr=10", "batch_size=1"],
        ["lr=1e30", "optimizer=adam"],
        ["privacy=update_dp(clip=1e30, epsilon=1)"],  # noise σ ≈ 5e30 on every update
        ["attack=gaussian(sigma=1e30)", "attackers=[1]"],  # honest peers average it in
    ],
    ids=["huge-lr", "lr10-batch1", "adam-huge-lr", "huge-dp-noise", "gaussian-attacker"],
)
def test_a_diverging_run_exits_3_naming_round_and_peers_and_keeps_the_finite_rounds(tmp_path, settings):
    result = invoke(tmp_path, settings)
    assert result.exit_code == DIVERGED, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    diverged = summary["diverged"]
    round_, peers = diverged["round"], diverged["peers"]
    assert f"diverged in round {round_}: peer" in text(result) and diverged["phase"] in text(result)
    assert ", ".join(map(str, peers)) in text(result)
    assert peers and set(peers).isdisjoint(summary["attackers"])
    with open(tmp_path / "out" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["round"]) for row in rows] == list(range(round_))  # every round before it, no more
    assert all(math.isfinite(float(value)) for row in rows for value in row.values() if value)
    assert summary["round"] == round_ - 1 and all(map(math.isfinite, summary["peer_loss"]))
    if round_ > 1:  # the round before is genuinely fine: a run that stops there completes
        assert invoke(tmp_path / "before", settings, rounds=round_ - 1).exit_code == 0


def test_an_attacker_sending_noise_is_caught_where_it_spreads_first(tmp_path):
    result = invoke(tmp_path, ["attack=gaussian(sigma=1e30)", "attackers=[1]"])  # ring 0-1-2-3-0
    assert result.exit_code == DIVERGED
    diverged = json.loads((tmp_path / "out" / "summary.json").read_text())["diverged"]
    assert diverged == {"round": 1, "phase": "evaluation", "peers": [0, 2]}  # the attacker's neighbours


def test_a_run_that_does_not_diverge_records_none(tmp_path):
    assert invoke(tmp_path, [], rounds=1).exit_code == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["diverged"] is None


def test_a_sweep_marks_diverged_cells_and_still_reports_the_others(tmp_path):
    result = runner.invoke(
        app,
        ["sweep", "--grid", "lr=0.05,1e308", "--seeds", "2", *QUICK, "--out", str(tmp_path / "s")],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "s" / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    with open(tmp_path / "s" / "sweep.csv") as handle:
        cells = {cell["lr"]: cell for cell in csv.DictReader(handle)}
    good = [run for run in runs if run["lr"] == "0.05"]
    bad = [run for run in runs if run["lr"] == "1e+308"]
    assert [run["status"] for run in good] == ["completed"] * 2
    assert [(run["status"], run["diverged_round"], run["acc_mean"]) for run in bad] == [
        ("diverged", "1", "")
    ] * 2
    assert (cells["1e+308"]["status"], cells["1e+308"]["diverged"], cells["1e+308"]["acc_mean_mean"]) == (
        "diverged",
        "2",
        "",
    )
    assert (cells["0.05"]["status"], cells["0.05"]["diverged"]) == ("completed", "0")
    mean = sum(float(run["acc_mean"]) for run in good) / 2
    assert float(cells["0.05"]["acc_mean_mean"]) == pytest.approx(mean)
    assert "2 of 2 seeds diverged" in text(result)


@pytest.mark.parametrize(
    ("setting", "named"),  # the error starts with the field; a component's option follows
    [
        # seeds beyond what every consumer (scikit-learn's split: 32 bits) accepts
        (f"seed={SEED_MAX + 1}", ("seed",)),
        ("seed=9223372036854775807", ("seed",)),
        # privacy settings the accountant cannot meet: too small, too large, overflowing
        ("privacy=dp_sgd(target_epsilon=0.0001)", ("privacy.target_epsilon",)),
        ("privacy=dp_sgd(target_epsilon=1e100)", ("privacy.target_epsilon",)),
        ("privacy=update_dp(clip=1e-300, epsilon=1e-300)", ("privacy", "epsilon=1e-300")),
        ("privacy=update_dp(epsilon=1e308)", ("privacy", "epsilon=1e+308")),
        ("privacy=dp_sgd(noise_multiplier=1e200)", ("privacy", "noise_multiplier=1e+200")),
        # sizes no machine holds: refused by the estimate, before allocating
        ("model=mlp(hidden=[100000000])", ("model, peers", MEMORY)),
        ("model=mlp(hidden=[1000000000000])", ("model, peers", MEMORY)),
        ("model=cnn(channels=[1000000, 1000000])", ("model, peers", MEMORY)),
        ("dataset=synthetic(samples=50, test_samples=10, features=1000000000000)", ("dataset", MEMORY)),
        ("dataset=synthetic(samples=1000000000000)", ("dataset", MEMORY)),
        ("ewc.samples=1000000000000000", ("ewc.samples", MEMORY)),
    ],
)
def test_configs_that_used_to_end_in_tracebacks_exit_2_naming_the_field(
    tmp_path, monkeypatch, setting, named
):
    monkeypatch.setattr("ppaia.experiment.memory.available_memory", lambda: 2**33)  # any machine: 8 GiB
    result = invoke(tmp_path, [setting], rounds=1)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    field, *details = named
    assert text(result).startswith(f"error: {field}") and all(d in text(result) for d in details), (
        result.output
    )
    assert not (tmp_path / "out").exists()


def test_the_largest_seed_runs_on_the_default_dataset(tmp_path):
    assert invoke(tmp_path, [f"seed={SEED_MAX}"], rounds=1).exit_code == 0
