"""The memory estimate: what it counts, which fields it names, and that it refuses before allocating."""

from __future__ import annotations

import pytest

from ppaia.config import ConfigError, load_config
from ppaia.experiment.memory import FLOAT, Need, available_memory, check_fits, training_needs
from ppaia.learning import MODELS
from ppaia.simulation import Simulation

DIGITS = ((1, 8, 8), 10)


def needs(overrides: list[str], n_peers: int = 4, largest_part: int = 100) -> dict[tuple[str, ...], int]:
    config = load_config(None, overrides)
    build = lambda: config.model.build(*DIGITS)  # noqa: E731
    return {
        need.fields: need.bytes for need in training_needs(config, build, DIGITS[0], n_peers, largest_part)
    }


def test_available_memory_is_what_the_system_reports():
    assert 0 < available_memory() <= 2**50


def test_parameters_count_peers_copies_and_optimizer_state():
    params = sum(p.numel() for p in MODELS.create("mlp(hidden=[32])").build(*DIGITS).parameters())
    plain = needs(["model=mlp(hidden=[32])"])[("model", "peers")]
    assert plain == 4 * params * 3 * FLOAT  # start, working copy, gradients
    assert (
        needs(["model=mlp(hidden=[32])", "optimizer=sgd(momentum=0.9)"])[("model", "peers")] == plain // 3 * 4
    )
    assert needs(["model=mlp(hidden=[32])", "optimizer=adam"])[("model", "peers")] == plain // 3 * 5
    assert needs(["model=mlp(hidden=[32])"], n_peers=40)[("model", "peers")] == 10 * plain


def test_dp_sgd_and_ewc_add_their_buffers():
    assert ("privacy", "batch_size") in needs(["privacy=dp_sgd(noise_multiplier=1)"])
    assert ("privacy", "batch_size") not in needs(["privacy=update_dp"])
    fisher = needs(["ewc.samples=1000"])[("ewc.samples", "peers")]
    assert fisher == 2 * needs(["ewc.samples=500"])[("ewc.samples", "peers")] > 0


def test_a_batch_is_never_larger_than_a_peers_data():
    small, large = needs(["batch_size=1000"], largest_part=10), needs(["batch_size=10"], largest_part=10)
    assert small[("model", "batch_size")] == large[("model", "batch_size")]


@pytest.mark.parametrize("available", [0, 10, 10**6])
def test_check_fits_names_the_fields_of_the_parts_that_drive_the_need(available):
    parts = [
        Need(("model", "peers"), "parameters", 10**7),
        Need(("dataset",), "dataset", 10**5),  # under a tenth of the total: not named
        Need(("ewc.samples", "peers"), "fisher", 3 * 10**6),
    ]
    with pytest.raises(ConfigError) as caught:
        check_fits(parts, available=available)
    message = str(caught.value)
    assert message.startswith("model, peers, ewc.samples: the run needs at least")
    assert "parameters:" in message and "dataset:" in message  # every part is shown with its size
    check_fits(parts, available=sum(part.bytes for part in parts))  # exactly enough is enough


def test_a_model_no_machine_holds_is_refused_before_it_is_built(monkeypatch):
    config = load_config(None, ["peers=4", "model=mlp(hidden=[10000000000])"])
    spec = type(config.model)
    built, build = [], spec.build

    def recorded(self, *args):
        model = build(self, *args)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(spec, "build", recorded)
    monkeypatch.setattr(
        "ppaia.experiment.memory.available_memory", lambda: 2**40
    )  # 1 TiB, whatever runs this
    with pytest.raises(ConfigError, match=r"^model, peers: the run needs at least"):
        Simulation(config)
    assert built == ["meta"]  # sized on the meta device, never built for real
