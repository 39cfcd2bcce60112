"""Experiment configs: defaults, TOML files, --set overrides, errors that name the field, round trips."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from ppaia.config import ConfigError, ExperimentConfig, apply_overrides, format_validation_error, load_config
from ppaia.rules import RULES


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_text(**fields: object) -> str:
    with pytest.raises(ValidationError) as info:
        ExperimentConfig(**fields)
    return format_validation_error(info.value)


def test_default_config_is_the_built_in_experiment() -> None:
    config = ExperimentConfig()
    assert config.peers == 16
    assert config.dataset.name == "digits"
    assert config.partition.label() == "dirichlet(alpha=0.5)"
    assert (config.rule.name, config.topology.name, config.mixing.name) == ("consensus", "ring", "metropolis")


def test_load_config_without_a_path_is_the_default() -> None:
    assert load_config() == ExperimentConfig()


def test_load_config_reads_strings_and_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'peers = 8\nrule = "gossip(pairs=3)"\ntopology = "torus"\nlr = 0.1\n\n'
        '[partition]\nname = "dirichlet"\nalpha = 0.2\n\n[model]\nname = "mlp"\nhidden = [8, 4]\n',
    )
    config = load_config(path)
    assert config.peers == 8 and config.lr == 0.1
    assert config.rule.name == "gossip" and config.rule.pairs == 3
    assert config.topology.name == "torus" and config.topology.periodic
    assert config.partition.alpha == 0.2
    assert config.model.hidden == [8, 4]


def test_load_config_applies_overrides_on_top_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'peers = 8\n[rule]\nname = "consensus"\nsteps = 2\n')
    config = load_config(path, ["peers=10", "rule.steps=5"])
    assert config.peers == 10 and config.rule.steps == 5


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ("peers=100", "peers", 100),
        ("link_up = 0.5", "link_up", 0.5),
        ("allow_disconnected=true", "allow_disconnected", True),
        ("partition=dirichlet(0.1)", "partition", "dirichlet(0.1)"),
        ("rule.steps=3", "rule", {"name": "consensus", "steps": 3}),
        ("model.hidden=[8, 8]", "model", {"name": "mlp", "hidden": [8, 8]}),
        ('dataset="synthetic"', "dataset", "synthetic"),
        ("dataset='synthetic'", "dataset", "synthetic"),
        ('rule="gossip(pairs=2)"', "rule", "gossip(pairs=2)"),
    ],
)
def test_apply_overrides_parses_values(override: str, field: str, expected: object) -> None:
    result = apply_overrides({}, [override])
    assert result[field] == expected
    assert ExperimentConfig.model_validate(result)  # and the result is a valid config


def test_override_results_in_the_configured_components() -> None:
    config = load_config(None, ["partition=dirichlet(0.1)", "rule.steps=3", "model.hidden=[8, 8]"])
    assert config.partition.alpha == 0.1
    assert config.rule.name == "consensus" and config.rule.steps == 3
    assert config.model.hidden == [8, 8]


def test_override_option_merges_into_an_existing_table() -> None:
    result = apply_overrides({"rule": {"name": "gossip", "pairs": 2}}, ["rule.pairs=4"])
    assert result["rule"] == {"name": "gossip", "pairs": 4}


def test_apply_overrides_does_not_mutate_its_input() -> None:
    table = {"peers": 3}
    apply_overrides(table, ["peers=4"])
    assert table == {"peers": 3}


def test_override_option_of_a_default_with_positional_args() -> None:
    assert load_config(None, ["partition.alpha=0.1"]).partition.alpha == 0.1


@pytest.mark.parametrize("override", ["peers", "=3", " = 3"])
def test_override_without_key_or_equals_sign_raises(override: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, [override])


def test_override_option_of_unknown_field_raises() -> None:
    with pytest.raises(ConfigError, match="'nope'"):
        apply_overrides({}, ["nope.x=1"])


def test_override_option_of_an_imported_model_is_validated_by_name() -> None:
    table = apply_overrides({"model": "pkg.mod:factory"}, ["model.x=1"])
    assert table["model"] == {"name": "import", "target": "pkg.mod:factory", "x": 1}
    with pytest.raises(ValidationError) as caught:
        ExperimentConfig.model_validate(table)
    assert "model" in format_validation_error(caught.value) and "x" in format_validation_error(caught.value)


def test_override_option_of_unparsable_spec_raises() -> None:
    with pytest.raises(ConfigError, match="rule"):
        apply_overrides({"rule": "not a spec("}, ["rule.steps=2"])


def test_unknown_top_level_key_is_named() -> None:
    assert "colour" in error_text(colour="blue")


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"peers": "many"}, "peers"),
        ({"peers": 0}, "peers"),
        ({"link_up": 1.5}, "link_up"),
        ({"link_up": 0}, "link_up"),
        ({"lr": -1}, "lr"),
        ({"allow_disconnected": "maybe"}, "allow_disconnected"),
    ],
)
def test_bad_value_names_the_field(fields: dict, name: str) -> None:
    text = error_text(**fields)
    assert text.startswith(f"{name}: ")
    assert text.count("\n") == 0  # exactly one problem


def test_every_problem_gets_its_own_line() -> None:
    lines = error_text(peers=0, lr=-1).splitlines()
    assert [line.split(":")[0] for line in lines] == ["peers", "lr"]


def test_unknown_component_names_the_field_and_lists_known_ones() -> None:
    text = error_text(rule="nope")
    assert text.startswith("rule: ") and "'nope'" in text
    assert all(name in text for name in RULES.names())


def test_bad_component_option_names_field_and_option() -> None:
    text = error_text(partition="dirichlet(-1)")
    assert text.startswith("partition: ") and "alpha" in text


def test_unparsable_component_spec_names_the_field() -> None:
    assert error_text(topology="ring(").startswith("topology: ")


def test_model_given_as_a_factory_path_is_an_import_model() -> None:
    config = ExperimentConfig(model="mypackage.models:build")
    assert config.model.name == "import" and config.model.target == "mypackage.models:build"


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["rule=gossip", "topology=erdos_renyi(0.4)", "mixing=data_size", "optimizer=adam"],
        [
            "rule=gossip(pairs=5)",
            "model=pkg.mod:make",
            "dataset=mnist(path='data/mnist')",
            "partition=shards(k=3)",
        ],
        ["rule=fedavg(0.5)", "topology=grid(rows=2, periodic=true)", "peers=8", "model=cnn"],
    ],
)
def test_to_toml_round_trips(tmp_path: Path, overrides: list[str]) -> None:
    config = load_config(None, overrides)
    again = load_config(write(tmp_path, config.to_toml()))
    assert again == config
    assert again.to_toml() == config.to_toml()


def test_to_toml_leaves_out_none_options() -> None:
    config = load_config(None, ["rule=gossip"])
    assert config.rule.pairs is None
    assert "pairs" not in config.to_toml()
    assert config.to_table()["rule"] == {"name": "gossip"}


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: no such config file"):
        load_config(tmp_path / "absent.toml")


def test_invalid_toml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "peers = = 3\n", name="broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(path)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        ExperimentConfig().peers = 3  # type: ignore[misc]
