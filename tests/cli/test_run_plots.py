"""`ppaia run`'s plots name what was run (dataset, partition, rule, peers, attack) and include the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ppaia.cli.main import app

CONFIG = """
peers = 4
rounds = 2
partition = "shards(2)"
rule = "median"
dataset = "synthetic(samples=64, test_samples=32, features=4, classes=3)"
"""
PLOTS = ("accuracy.png", "loss.png", "consensus_distance.png", "peer_accuracy.png")


def titles(folder: Path) -> dict[str, str]:
    found = {}
    for name in PLOTS:
        with Image.open(folder / name) as image:
            image.load()
            assert image.format == "PNG"
            found[name] = image.text["Title"]
    return found


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ([], ()),
        (["attack=sign_flip", "attackers=0.25"], ("attack sign_flip(", "on 25% of peers")),
        (["attack=sign_flip", "attackers=[1]"], ("attack sign_flip(", "on peers [1]")),
    ],
)
def test_every_plot_title_names_what_was_run(tmp_path, monkeypatch, settings, named):
    monkeypatch.chdir(tmp_path)
    Path("exp.toml").write_text(CONFIG)
    arguments = ["run", "exp.toml", "--out", "r"]
    for setting in settings:
        arguments += ["--set", setting]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    for name, title in titles(Path("r")).items():
        parts = ("synthetic(samples=64", "shards(k=2)", "median", "4 peers", *named)
        for part in parts:
            assert part in title, (name, part, title)
        assert ("attack" in title) == bool(named), (name, title)
