"""A researcher's own rule, dataset, partitioner, topology, attack and model, from the command line.

As the user met it: the installed ``ppaia`` command (not ``python -m``, which would put the working
directory on the import path) run in a temporary folder holding the files the test writes. Plugins come
from ``--plugin``, the ``plugins`` config key, a written run's config.toml (read from another folder)
and the ``ppaia.plugins`` entry points of installed packages (a real ``.dist-info`` on PYTHONPATH).
"""

import itertools
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app

PPAIA = str(Path(sys.executable).with_name("ppaia"))
QUICK = ["--set", "rounds=2", "--set", "peers=4"]
runner = CliRunner()

# One of each kind of component, as a researcher writes them, in one module.
COMPONENTS = '''
import networkx as nx
import numpy as np
import torch
from pydantic import Field

from ppaia.attacks import ATTACKS, Attack, AttackRound
from ppaia.data import DATASETS, PARTITIONERS, Dataset, DatasetSource, Partitioner
from ppaia.rules import RULES, CooperationRule, RoundContext, RoundPlan
from ppaia.topology import TOPOLOGIES, Topology, mixing_step


@RULES.register("lazy_consensus")
class LazyConsensus(CooperationRule):
    """Consensus every `period` rounds."""

    period: int = Field(default=2, ge=1)

    def plan(self, ctx: RoundContext) -> RoundPlan:
        if ctx.round % self.period:
            return RoundPlan()
        return RoundPlan(steps=[mixing_step(ctx.mixing, ctx.live_graph(), ctx.n_samples)])


@DATASETS.register("blobs")
class Blobs(DatasetSource):
    """Two Gaussian blobs in 4 dimensions."""

    samples: int = Field(default=200, gt=3)

    def load(self, seed: int) -> Dataset:
        generator = torch.Generator().manual_seed(seed)
        y = torch.arange(self.samples) % 2
        x = torch.randn(self.samples, 4, generator=generator) + 3 * y[:, None].float()
        cut = self.samples * 3 // 4
        return Dataset("blobs", x[:cut], y[:cut], x[cut:], y[cut:], 2)


@PARTITIONERS.register("round_robin")
class RoundRobin(Partitioner):
    """Sample i goes to peer i mod N."""

    def _assign(self, labels, n_peers, rng, min_samples):
        return np.arange(len(labels)) % n_peers


@TOPOLOGIES.register("double_ring")
class DoubleRing(Topology):
    """Each peer is linked to the two nearest on either side."""

    def graph(self, n: int, seed: int) -> nx.Graph:
        return nx.circulant_graph(n, [1, 2])


@ATTACKS.register("zeros")
class Zeros(Attack):
    """Sends zeros."""

    def message(self, now: AttackRound) -> torch.Tensor:
        return torch.zeros_like(now.trained)
'''
MODEL = """import math

from torch import nn


def make(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes))
"""
USES = {
    "rule": "lazy_consensus(period=2)",
    "dataset": "blobs(samples=120)",
    "partition": "round_robin",
    "topology": "double_ring",
    "attack": "zeros",
}
USE = [f"--set={field}={spec}" for field, spec in USES.items()] + ["--set=attackers=[3]", "--set=peers=5"]
NAMES = itertools.count()


def ppaia(*arguments: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it (PYTHONPATH cleared unless `env` sets it)."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | (env or {})
    return subprocess.run(
        [PPAIA, *arguments], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def error_line(completed: subprocess.CompletedProcess) -> str:
    """The one line a user error prints (no traceback)."""
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2 and len(lines) == 1, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    return lines[0]


def test_without_the_plugin_its_names_are_unknown_and_the_error_says_how_to_load_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, *USE])
    assert result.exit_code == 2
    for field, spec in USES.items():
        assert f"unknown {field.replace('partition', 'partitioner')} '{spec.split('(')[0]}'" in result.output
    assert "--plugin MODULE" in result.output


def test_every_kind_of_plugin_component_and_a_model_factory_in_the_working_directory_run(tmp_path):
    """`--plugin mycomponents` and ``model=mymodels:make``, both .py files where the user is: no
    PYTHONPATH, and the written config names both files, so that it re-runs from anywhere."""
    (tmp_path / "mycomponents.py").write_text(COMPONENTS)
    (tmp_path / "mymodels.py").write_text(MODEL)
    result = ppaia(
        "run", "--plugin", "mycomponents", *QUICK, *USE, "--set", "model=mymodels:make", "--out", "runs/a",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = tomllib.loads((tmp_path / "runs/a/config.toml").read_text())
    assert written["plugins"] == [str(tmp_path / "mycomponents.py"), str(tmp_path / "mymodels.py")]
    assert written["model"] == {"name": "import", "target": "mymodels:make"}
    assert {field: written[field]["name"] for field in USES} == {
        field: spec.split("(")[0] for field, spec in USES.items()
    }


@pytest.mark.slow
def test_a_config_a_python_run_wrote_with_its_own_components_reruns_from_the_cli_elsewhere(tmp_path):
    study, elsewhere = folder(tmp_path / "study"), folder(tmp_path / "elsewhere")
    (study / "mycomponents.py").write_text(COMPONENTS)
    (study / "experiment.py").write_text(
        "import mycomponents  # registers lazy_consensus, blobs, ...\n"
        "import ppaia\n\n"
        f"result = ppaia.run({{**{USES!r}, 'attackers': [3], 'rounds': 2, 'peers': 5}})\n"
        "ppaia.write_outputs(result, 'runs/python')\n"
    )
    python = subprocess.run(
        [sys.executable, "experiment.py"], cwd=study, capture_output=True, text=True, timeout=300
    )
    assert python.returncode == 0, python.stderr
    config = study / "runs/python/config.toml"
    assert tomllib.loads(config.read_text())["plugins"] == [str(study / "mycomponents.py")]

    again = ppaia("run", str(config), "--out", "again", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    summaries = [
        json.loads((out / "summary.json").read_text()) for out in (config.parent, elsewhere / "again")
    ]
    assert summaries[0]["acc_mean"] == summaries[1]["acc_mean"]  # the same run again


def write_distribution(site: Path, package: str, module: str, source: str) -> None:
    """An installed package (its .dist-info, as pip writes it) whose entry point names `module`."""
    info = folder(site / f"{package}-0.1.dist-info")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ppaia.plugins]\n{package} = {module}\n")
    (site / f"{module}.py").write_text(source)


def test_list_shows_what_plugins_and_installed_packages_register(tmp_path):
    study, site = folder(tmp_path / "study"), folder(tmp_path / "site")
    (study / "mycomponents.py").write_text(COMPONENTS)
    write_distribution(
        site,
        "ppaia_ring_plugin",
        "ring_plugin",
        "from ppaia.topology import TOPOLOGIES, Topology\nimport networkx as nx\n\n"
        "@TOPOLOGIES.register('installed_ring')\nclass R(Topology):\n    '''A ring, from a package.'''\n"
        "    def graph(self, n, seed):\n        return nx.cycle_graph(n)\n",
    )
    listed = ppaia(
        "list", "--plugin", "mycomponents", cwd=study, env={"PYTHONPATH": str(site), "COLUMNS": "200"}
    )
    assert listed.returncode == 0, listed.stderr
    for name in ["lazy_consensus", "blobs", "round_robin", "double_ring", "zeros", "installed_ring"]:
        assert name in listed.stdout
    assert "Consensus every `period` rounds." in listed.stdout


def test_a_plugin_that_fails_to_import_is_one_line_naming_it_and_the_exception(tmp_path):
    site = folder(tmp_path / "site")
    write_distribution(site, "ppaia_broken_plugin", "broken_plugin", "raise RuntimeError('no licence')\n")
    line = error_line(ppaia("run", *QUICK, cwd=tmp_path, env={"PYTHONPATH": str(site)}))
    assert "'broken_plugin'" in line and "ppaia_broken_plugin" in line and "RuntimeError: no licence" in line


@pytest.mark.parametrize(
    ("source", "entry", "message"),
    [
        ("raise ValueError('bad input')\n", "{m}", "importing '{m}' failed: ValueError: bad input"),
        ("import no_such_dependency_xyz\n", "{m}", "importing '{m}' failed: No module named"),
        ("def f(:\n", "{m}.py", "importing '{m}' failed: SyntaxError"),
        ("", "absent_plugin_xyz", "no module 'absent_plugin_xyz'; put absent_plugin_xyz.py in the working"),
        ("", "absent_dir/{m}.py", "no such file"),
        ("", "absent_pkg_xyz.rules", "no module 'absent_pkg_xyz.rules'"),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_a_user_error_naming_it(
    tmp_path, monkeypatch, source, entry, message
):
    monkeypatch.chdir(tmp_path)
    name = f"user_plugin_{next(NAMES)}"
    (tmp_path / f"{name}.py").write_text(source)
    for command in (["run", *QUICK], ["list"], ["sweep", "--seeds", "1", *QUICK]):
        result = runner.invoke(app, [*command, "--plugin", entry.format(m=name)])
        assert result.exit_code == 2, result.output
        line = " ".join(result.output.split())  # the console may wrap it
        assert f"{entry.format(m=name)}'" in line and message.format(m=name) in line  # (made absolute)
    sys.modules.pop(name, None)


LABGRAPH = '''from ppaia.topology import TOPOLOGIES
from ppaia.topology.graphs import EdgeList


@TOPOLOGIES.register("lab_graph")
class LabGraph(EdgeList):
    """The lab's own links."""
'''


def test_plugins_in_a_config_file_are_found_next_to_it_with_their_path_options(tmp_path):
    """``plugins = ["lib/labgraph.py"]`` and a path option of the topology it registers, unquoted, are
    both relative to the config file, which runs from another folder. (A subprocess: registering in
    this process would change the registries other tests compare.)"""
    study, elsewhere = folder(tmp_path / "study"), folder(tmp_path / "elsewhere")
    (folder(study / "lib") / "labgraph.py").write_text(LABGRAPH)
    (study / "lab.edges").write_text("0 1\n1 2\n2 3\n3 0\n0 2\n")
    (study / "exp.toml").write_text(
        'plugins = ["lib/labgraph.py"]\ntopology = "lab_graph(path=lab.edges)"\nrounds = 2\npeers = 4\n'
    )
    result = ppaia("run", "../study/exp.toml", "--out", "out", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    written = tomllib.loads((elsewhere / "out/config.toml").read_text())
    assert written["plugins"] == [str(study / "lib/labgraph.py")]
    assert written["topology"] == {"name": "lab_graph", "path": str(study / "lab.edges")}


# --------------------------------------------------------------------------------------------------
# Item 3: model = "mymodels:make" with mymodels.py where the user is (or next to the config)


def test_a_model_factory_next_to_the_config_is_found_from_another_folder(tmp_path, monkeypatch):
    name = f"user_models_{next(NAMES)}"
    study = folder(tmp_path / "study")
    (study / f"{name}.py").write_text(MODEL)
    (study / "exp.toml").write_text(f'model = "{name}:make"\nrounds = 2\npeers = 4\n')
    monkeypatch.chdir(folder(tmp_path / "elsewhere"))
    result = runner.invoke(app, ["run", str(study / "exp.toml"), "--out", "out"])
    assert result.exit_code == 0, result.output
    sys.modules.pop(name, None)


def test_a_model_factory_nowhere_to_be_found_says_where_it_looked_and_what_helps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, "--set", "model=nowhere_models_xyz:make"])
    assert result.exit_code == 2
    line = " ".join(result.output.split())  # the console may wrap it
    assert "model 'nowhere_models_xyz:make': no module 'nowhere_models_xyz'" in line
    assert f"working directory ({tmp_path})" in line and "PYTHONPATH" in line and "--plugin" in line


def test_a_model_file_given_with_plugin_is_found_from_anywhere(tmp_path, monkeypatch):
    name = f"user_models_{next(NAMES)}"
    (folder(tmp_path / "models") / f"{name}.py").write_text(MODEL)
    monkeypatch.chdir(folder(tmp_path / "elsewhere"))
    result = runner.invoke(
        app, ["run", *QUICK, "--plugin", f"../models/{name}.py", "--set", f"model={name}:make", "--out", "o"]
    )
    assert result.exit_code == 0, result.output
    sys.modules.pop(name, None)


# --------------------------------------------------------------------------------------------------
# Item 5: unquoted paths


def test_an_unquoted_edge_list_path_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lab.edges").write_text("0 1\n1 2\n2 3\n3 0\n")
    result = runner.invoke(app, ["run", *QUICK, "--set", "topology=edgelist(path=lab.edges)", "--out", "o"])
    assert result.exit_code == 0, result.output
    written = tomllib.loads((tmp_path / "o/config.toml").read_text())
    assert written["topology"] == {"name": "edgelist", "path": str(tmp_path / "lab.edges")}


def test_an_ambiguous_bare_value_says_to_quote_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, "--set", "topology=edgelist(path=my edges.txt)"])
    assert result.exit_code == 2 and "quote it: path='my edges.txt'" in " ".join(result.output.split())


# --------------------------------------------------------------------------------------------------
# On peers


@pytest.mark.slow
def test_launch_passes_a_plugin_rule_on_to_its_peers(tmp_path):
    (tmp_path / "myrules.py").write_text(COMPONENTS)
    arguments = ["--peers", "2", "--timeout", "150", "--set", "rounds=2", "--set", "partition=iid"]
    launched = ppaia(
        "launch", "--plugin", "myrules", *arguments, "--set", "rule=lazy_consensus(period=2)", "--out", "o",
        cwd=tmp_path,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert tomllib.loads((tmp_path / "o/config.toml").read_text())["rule"]["name"] == "lazy_consensus"
    for log in (tmp_path / "o/peers").glob("*/peer.log"):
        assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_sweep_runs_a_plugin_rule_against_a_built_in_one(tmp_path):
    (tmp_path / "myrules.py").write_text(COMPONENTS)
    swept = ppaia(
        "sweep", "--plugin", "myrules", "--grid", 'rule=["lazy_consensus(period=2)", "consensus"]',
        "--seeds", "1", *QUICK, "--out", "sweep", cwd=tmp_path,
    )  # fmt: skip
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "lazy_consensus" in (tmp_path / "sweep/sweep.csv").read_text()
