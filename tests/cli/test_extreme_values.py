"""Every numeric config field at extreme values, through the command line: a run either happens (exit 0)
or is refused with a message naming the field (exit 2), never a traceback.

The cases are generated from the config model and the registries, so a new field or component option is
covered without editing this file. The fuzz goes through `ppaia sweep --no-plots` (one cell, one seed): it
validates and runs a config exactly as `ppaia run` does but draws no plots, which would make the ~700 cases
slow; `ppaia run`'s own outputs for extreme runs are tested in test_divergence.py.
"""

from __future__ import annotations

import csv
import typing

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.config import COMPONENT_FIELDS, NESTED_FIELDS, ExperimentConfig

# zero, negative, subnormal, the largest float, a large size, int64's largest, beyond int64, NaN, infinity
VALUES = (
    "0",
    "-1",
    "5e-324",
    "1e308",
    "100000000",
    "9223372036854775807",
    "18446744073709551616",
    "nan",
    "inf",
)
HUGE = {"100000000", "9223372036854775807"}
# Huge values of these only make a run long (rounds, epochs, Fisher samples, trust steps per round):
# legitimate, so they are not run here. (Consensus steps and gossip pairs are capped: a plan holds them.)
LONG_RUN = {"rounds", "local_epochs", "ewc.samples", "learned_trust:rule.steps"}
MEMORY = (
    2**30
)  # the machine the fuzz pretends to have, so that what is refused does not depend on the real one
BASE = ["peers=4", "rounds=1", "dataset=synthetic(samples=64, test_samples=16, features=4, classes=3)"]
# What some components need besides themselves to make a valid config (the fuzzed option then varies).
COMPANIONS = {
    "attack": ["attackers=0.25"],
    "attackers": ["attack=sign_flip"],
    "rule=learned_trust": ["holdout=0.2"],
    "model=cnn": ["dataset=digits"],
    "privacy=dp_sgd": ["privacy.noise_multiplier=1"],
}
REPLACES = {"privacy.target_epsilon": "privacy.noise_multiplier"}  # options that exclude a companion
LISTS = {"model.hidden": "[{}]", "model.channels": "[{}]", "tasks": "[[{}]]"}


def _numeric(annotation: object) -> bool:
    return annotation in (int, float) or any(_numeric(arg) for arg in typing.get_args(annotation))


def fields() -> list[tuple[str, str, list[str]]]:
    """(key, component, settings that make the key meaningful) for every numeric option of a config."""
    found = [
        (name, "", COMPANIONS.get(name, []))
        for name, info in ExperimentConfig.model_fields.items()
        if name not in COMPONENT_FIELDS and name not in NESTED_FIELDS and _numeric(info.annotation)
    ]
    for field, registry in COMPONENT_FIELDS.items():
        for name, cls in registry:
            if any(info.is_required() for info in cls.model_fields.values()):
                continue  # a file path or an import target: nothing to run without one
            setup = [f"{field}={name}", *COMPANIONS.get(field, []), *COMPANIONS.get(f"{field}={name}", [])]
            for option, info in cls.model_fields.items():
                key = f"{field}.{option}"
                if _numeric(info.annotation):
                    found.append((key, name, [s for s in setup if not s.startswith(f"{REPLACES.get(key)}=")]))
    for field, cls in NESTED_FIELDS.items():
        found += [
            (f"{field}.{name}", "", [])
            for name, info in cls.model_fields.items()
            if _numeric(info.annotation)
        ]
    return found


CASES = [
    pytest.param(key, setup, value, id=f"{component}:{key}={value}" if component else f"{key}={value}")
    for key, component, setup in fields()
    for value in VALUES
    if not ({key, f"{component}:{key}"} & LONG_RUN and value in HUGE)
]


@pytest.mark.slow
@pytest.mark.parametrize(("key", "setup", "value"), CASES)
def test_extreme_value_runs_or_is_refused_naming_the_field(tmp_path, monkeypatch, key, setup, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ppaia.experiment.memory.available_memory", lambda: MEMORY)
    settings = [*BASE, *setup, f"{key}={LISTS.get(key, '{}').format(value)}"]
    arguments = ["sweep", "--seeds", "1", "--no-plots", "--out", "out"]
    for setting in settings:
        arguments += ["--set", setting]
    result = CliRunner().invoke(app, arguments, terminal_width=500)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        field, option = key.split(".")[0], key.split(".")[-1]
        assert field in result.output or option in result.output, result.output
        assert not (tmp_path / "out").exists()
    else:
        with open(tmp_path / "out" / "runs.csv") as handle:
            (run,) = list(csv.DictReader(handle))
        assert run["status"] in ("completed", "diverged")


def test_the_generated_cases_cover_every_kind_of_field():
    keys = {key for key, _, _ in fields()}
    assert {"peers", "seed", "lr", "attackers", "tasks", "ewc.strength"} <= keys
    for field in COMPONENT_FIELDS:
        if field not in ("init", "mixing"):  # no numeric options
            assert any(key.startswith(f"{field}.") for key in keys), field
    assert len(CASES) > 500
