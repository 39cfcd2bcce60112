"""Paths in configs (issue 16, item 4): a run's config.toml re-runs from any folder, a config file's
relative paths mean the files next to it, and --set paths mean the working directory's — for every
component option that is a path, as a user meets it through the CLI."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.config import COMPONENT_FIELDS, ExperimentConfig, load_config
from ppaia.network.agreement import shared_config
from ppaia.paths import path_options

runner = CliRunner()
QUICK = ["--set", "peers=4", "--set", "rounds=1", "--set", "partition=iid"]
RING = "0 1\n1 2\n2 3\n3 0\n"

# every registered component with a path option, found from the schema (new ones are covered too)
PATH_COMPONENTS = [
    (field, cls.name, options)
    for field, registry in COMPONENT_FIELDS.items()
    for _, cls in registry
    if (options := path_options(cls))
]


def accuracies(run: Path) -> list[str]:
    with open(run / "metrics.csv", newline="") as handle:
        return [row["acc_mean"] for row in csv.DictReader(handle)]


def invoke(*arguments: str) -> str:
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 0, result.output
    return result.output


def test_path_options_are_found_on_every_file_reading_component() -> None:
    found = {(field, name): options for field, name, options in PATH_COMPONENTS}
    assert found == {
        ("dataset", "cifar10"): ["path"],
        ("dataset", "csv"): ["path", "test_path"],
        ("dataset", "fashion_mnist"): ["path"],
        ("dataset", "mnist"): ["path"],
        ("dataset", "npz"): ["path", "test_path"],
        ("topology", "edgelist"): ["path"],
    }


@pytest.mark.parametrize(("field", "registry"), list(COMPONENT_FIELDS.items()))
def test_every_option_named_like_a_path_is_a_path(field, registry) -> None:
    """An option called ``path`` or ``*_path`` that is plain text would be relative to wherever it is
    read: it must be declared UserPath."""
    for name, cls in registry:
        named = [option for option in cls.model_fields if option == "path" or option.endswith("_path")]
        assert set(named) <= set(path_options(cls)), f"{field} {name}: {named} not all UserPath"


def test_a_runs_config_reruns_from_another_folder(tmp_path, monkeypatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "lab.edges").write_text(RING)
    monkeypatch.chdir(a)
    invoke("run", *QUICK, "--set", "topology=edgelist(path='lab.edges')", "--out", "first")
    written = tomllib.loads((a / "first" / "config.toml").read_text())
    assert written["topology"] == {"name": "edgelist", "path": str(a / "lab.edges")}
    monkeypatch.chdir(b)
    invoke("run", str(a / "first" / "config.toml"), "--out", "again")
    assert accuracies(b / "again") == accuracies(a / "first")


@pytest.mark.parametrize("spelling", ["nets/../lab.edges", "{a}/lab.edges"])
def test_a_config_files_relative_paths_are_relative_to_its_folder(tmp_path, monkeypatch, spelling) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "data").mkdir(parents=True), b.mkdir()
    (a / "lab.edges").write_text(RING)
    (b / "lab.edges").write_text("0 1\n")  # a decoy where the command runs: it must not be read
    (a / "exp.toml").write_text(
        tomli_w.dumps(
            {
                "peers": 4,
                "rounds": 1,
                "partition": "iid",
                "topology": f"edgelist('{spelling.format(a=a)}')",
                "dataset": {"name": "npz", "path": "data/d.npz", "test_path": "data/d.npz"},
            }
        )
    )
    _npz(a / "data" / "d.npz")
    monkeypatch.chdir(b)
    invoke("run", "../a/exp.toml", "--out", "run")
    written = tomllib.loads((b / "run" / "config.toml").read_text())
    assert written["topology"]["path"] == str(a / "lab.edges")
    assert written["dataset"]["path"] == written["dataset"]["test_path"] == str(a / "data" / "d.npz")


def _npz(path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(40, 5)).astype(np.float32), y=np.arange(40) % 2)


def test_set_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "exp.toml").write_text(
        "peers = 4\nrounds = 1\npartition = 'iid'\ntopology = \"edgelist('lab.edges')\"\n"
    )
    (a / "lab.edges").write_text("0 1\n")  # disconnected on 4 peers: reading it would fail
    (b / "mine.edges").write_text(RING)
    monkeypatch.chdir(b)
    invoke("run", "../a/exp.toml", "--set", "topology.path=mine.edges", "--out", "run")
    assert tomllib.loads((b / "run" / "config.toml").read_text())["topology"]["path"] == str(b / "mine.edges")


def test_a_missing_file_is_named_by_its_absolute_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "exp.toml").write_text("peers = 4\ntopology = \"edgelist('lab.edges')\"\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "a/exp.toml", "--out", "run"])
    assert result.exit_code == 2
    assert f"{tmp_path / 'a' / 'lab.edges'} does not exist" in result.output


@pytest.mark.parametrize(("field", "name", "options"), PATH_COMPONENTS)
def test_every_path_option_resolves_against_the_config_and_survives_a_rewrite(
    tmp_path, monkeypatch, field, name, options
) -> None:
    """For each component that reads files: relative in the file -> absolute next to it, and the written
    config (to_toml) reads back the same from a third folder; ~ is the home folder."""
    home, a, b, c = (tmp_path / part for part in ("home", "a", "b", "c"))
    for folder in (home, a, b, c):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    values = {option: f"sub/{option}.file" for option in options}
    values[options[-1]] = "~/x/" + values[options[-1]]
    (a / "exp.toml").write_text(tomli_w.dumps({field: {"name": name, **values}}))
    monkeypatch.chdir(b)
    config = load_config("../a/exp.toml")
    expected = {option: str(a / f"sub/{option}.file") for option in options}
    expected[options[-1]] = str(home / "x" / f"sub/{options[-1]}.file")
    assert {option: getattr(getattr(config, field), option) for option in options} == expected
    (c / "config.toml").write_text(config.to_toml())
    monkeypatch.chdir(c)
    assert load_config("config.toml") == config


def test_peers_compare_path_options_by_file_name(tmp_path, monkeypatch) -> None:
    """Two peers whose configs sit in different folders (machines) hold different absolute paths and still
    agree on the shared config; a different file name is a difference."""
    configs = []
    for folder in ("alice", "bob"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "swarm.toml").write_text("topology = \"edgelist('lab.edges')\"\n")
        monkeypatch.chdir(tmp_path / folder)
        configs.append(load_config("swarm.toml"))
    assert configs[0].topology.path != configs[1].topology.path
    assert shared_config(configs[0]) == shared_config(configs[1])
    other = ExperimentConfig(topology="edgelist('other.edges')")
    assert shared_config(other)["topology"] != shared_config(configs[0])["topology"]
