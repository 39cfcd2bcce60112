"""`ppaia run --set device=...`: a malformed device or a GPU this machine lacks exits 2 with a clear
message and writes nothing; cpu and auto run."""

import pytest
import torch
from typer.testing import CliRunner

from ppaia.cli.main import app

runner = CliRunner()
QUICK = ["--set", "rounds=1", "--set", "peers=3", "--set", "partition=iid"]


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "'cuda:-1'", "cpu:0", "5", "'tpu'"])
def test_a_malformed_device_exits_2_naming_the_field(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, "--set", f"device={value}", "--out", "out"])
    assert result.exit_code == 2, result.output
    assert "device" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("value", ["cuda", "cuda:1", "CUDA"])
def test_cuda_on_a_machine_without_it_exits_2_before_any_work(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, "--set", f"device={value}", "--out", "out"])
    assert result.exit_code == 2, result.output
    assert "no usable CUDA device" in result.output
    assert list(tmp_path.iterdir()) == []


def test_auto_runs_on_what_the_machine_has(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, "--set", "device=auto", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert 'device = "auto"' in (tmp_path / "out" / "config.toml").read_text()
