"""The `device` setting: its spelling checked in the config, its presence when a run starts, and a run
on the CPU whichever way it is asked for giving the default's numbers."""

import random
import string

import pytest
import torch
from pydantic import ValidationError

from ppaia import ExperimentConfig, Simulation
from ppaia.config import ConfigError
from ppaia.devices import resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def malformed_devices() -> list[str]:
    """Near misses of each accepted form, and seeded random strings (none of which is a device)."""
    near = [
        "gpu",
        "cuda:",
        "cuda:x",
        "cuda:-1",
        "cuda:1.5",
        "cuda:0:1",
        "cuda 0",
        "cpu:0",
        "mps",
        "",
        "autoo",
    ]
    draw = random.Random(15)
    alphabet = string.ascii_letters + string.digits + ":;.- _/\\'\"\x00é"
    noise = ["".join(draw.choices(alphabet, k=draw.randint(1, 12))) for _ in range(30)]
    return near + [text for text in noise if text.strip().lower() not in {"cpu", "auto", "cuda"}]


@pytest.mark.parametrize("spec", ["cpu", "CPU", " auto ", "cuda", "cuda:0", "Cuda:12"])
def test_accepted_spellings_are_normalised(spec):
    assert ExperimentConfig(device=spec).device == spec.strip().lower()


@pytest.mark.parametrize("spec", malformed_devices())
def test_a_malformed_device_is_a_config_error_naming_the_forms(spec):
    with pytest.raises(ValidationError, match="expected cpu, cuda, cuda:N"):
        ExperimentConfig(device=spec)


@pytest.mark.parametrize("value", [0, 1.5, True, ["cpu"], {"name": "cpu"}])
def test_a_device_that_is_not_text_is_refused(value):
    with pytest.raises(ValidationError, match="device"):
        ExperimentConfig(device=value)


def test_cpu_and_auto_resolve_to_the_cpu_without_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_refused_saying_what_to_use(spec):
    with pytest.raises(ConfigError, match=r"no usable CUDA device.*'cpu'.*'auto'"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["cpu", "auto"])
def test_a_cpu_run_gives_the_default_runs_numbers(spec):
    base = {"peers": 5, "rounds": 2, "model": "mlp(hidden=[8])", "rule": "gossip", "optimizer": "adam"}
    default = Simulation(ExperimentConfig.model_validate(base)).run()
    asked = Simulation(ExperimentConfig.model_validate({**base, "device": spec})).run()
    strip = [{k: v for k, v in row.items() if k != "wall_s"} for row in default.history]
    assert [{k: v for k, v in row.items() if k != "wall_s"} for row in asked.history] == strip
    assert torch.equal(asked.params, default.params)
    assert asked.params.device == torch.device("cpu")
