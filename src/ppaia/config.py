"""Experiment configuration: a TOML file (or dict) validated by pydantic, plus ``--set key=value`` overrides.

Every pluggable field takes a registered component as ``"name"``, ``"name(arg, key=value)"`` or a table
``{name = "...", option = ...}``; errors name the field (and the option) that is wrong.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import tomli_w
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from ppaia.attacks import ATTACKS, Attack, attacker_count
from ppaia.churn import Churn
from ppaia.data import DATASETS, PARTITIONERS, DatasetSource, Partitioner
from ppaia.learning import INIT_POLICIES, MODELS, OPTIMIZERS, InitPolicy, ModelSpec, OptimizerSpec
from ppaia.learning.continual import EWCSettings
from ppaia.paths import path_options, resolve_path_options
from ppaia.plugins import load_plugins, recorded, resolve_entry, search_next_to
from ppaia.privacy import PRIVACY, PrivacyMechanism
from ppaia.registry import Component, Registry, SpecError, fits_int64
from ppaia.rules import RULES, CooperationRule
from ppaia.topology import MIXINGS, TOPOLOGIES, MixingWeights, Topology

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "apply_overrides",
    "format_validation_error",
    "load_config",
    "parse_value",
    "resolve_file_paths",
    "set_field",
    "with_plugins",
]


class ConfigError(ValueError):
    """A config file that cannot be read, or an override that cannot be applied."""


def _component(registry: Registry, prepare: Callable[[Any], Any] = lambda v: v) -> BeforeValidator:
    def build(value: Any) -> Component:
        try:
            return registry.create(prepare(value))
        except ValidationError as err:
            raise ValueError(
                f"{registry.kind} options: {format_validation_error(err, ' ', whole='')}"
            ) from None

    return BeforeValidator(build)


def _model_spec(value: Any) -> Any:
    """``"package.module:factory"`` names a user model factory."""
    if isinstance(value, str) and ":" in value:
        return {"name": "import", "target": value}
    return value


def _plugins(value: Any) -> Any:
    """Import the plugins (a module name or a .py file each) before any other field is validated."""
    entries = [value] if isinstance(value, str) else value
    if isinstance(entries, list | tuple) and all(isinstance(entry, str) for entry in entries):
        return load_plugins(entries)
    return value  # pydantic says what is wrong with it


_as_table = PlainSerializer(lambda component, info: component.spec(info.context), return_type=dict)

DatasetField = Annotated[DatasetSource, _component(DATASETS), _as_table]
PartitionField = Annotated[Partitioner, _component(PARTITIONERS), _as_table]
ModelField = Annotated[ModelSpec, _component(MODELS, _model_spec), _as_table]
InitField = Annotated[InitPolicy, _component(INIT_POLICIES), _as_table]
RuleField = Annotated[CooperationRule, _component(RULES), _as_table]
TopologyField = Annotated[Topology, _component(TOPOLOGIES), _as_table]
MixingField = Annotated[MixingWeights, _component(MIXINGS), _as_table]
OptimizerField = Annotated[OptimizerSpec, _component(OPTIMIZERS), _as_table]
AttackField = Annotated[Attack, _component(ATTACKS), _as_table]
PrivacyField = Annotated[PrivacyMechanism, _component(PRIVACY), _as_table]

COMPONENT_FIELDS: dict[str, Registry] = {
    "dataset": DATASETS,
    "partition": PARTITIONERS,
    "model": MODELS,
    "init": INIT_POLICIES,
    "rule": RULES,
    "topology": TOPOLOGIES,
    "mixing": MIXINGS,
    "optimizer": OPTIMIZERS,
    "attack": ATTACKS,
    "privacy": PRIVACY,
}
NESTED_FIELDS = {"ewc": EWCSettings, "churn": Churn}
DEVICE_SPEC = re.compile(r"cpu|auto|cuda(:[0-9]{1,4})?")
SEED_MAX = 2**32 - 1  # scikit-learn's random_state range, the narrowest of the seed's consumers


class ExperimentConfig(BaseModel):
    """One simulated experiment. The defaults are the built-in experiment (16 peers on digits)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    # first: validated (imported) before the fields that name what the plugins register
    plugins: Annotated[list[str], BeforeValidator(_plugins)] = Field(
        default=[], description="your modules to import first (names or .py files): they register components"
    )
    peers: int = Field(default=16, ge=1, description="number of peers")
    rounds: int = Field(default=40, ge=1, description="rounds of local training + cooperation")
    seed: int = Field(
        default=0, ge=0, le=SEED_MAX, description="seed of every random choice in the run (0 to 2^32 − 1)"
    )
    dataset: DatasetField = Field(default="digits", description="dataset by name")
    partition: PartitionField = Field(default="dirichlet(0.5)", description="how data is split over peers")
    min_samples: int = Field(default=2, ge=1, description="fewest training samples a peer may get")
    holdout: float = Field(
        default=0.0, ge=0, lt=1, description="share of each peer's data held out for rules that validate"
    )
    model: ModelField = Field(default="mlp", description="model by name, or 'package.module:factory'")
    init: InitField = Field(default="common", description="initial parameters of the peers")
    rule: RuleField = Field(default="consensus", description="cooperation rule")
    topology: TopologyField = Field(default="ring", description="communication graph")
    allow_disconnected: bool = Field(default=False, description="accept a disconnected topology")
    mixing: MixingField = Field(default="metropolis", description="mixing weights over the topology")
    link_up: float = Field(default=1.0, gt=0, le=1, description="probability that a link is up in a round")
    local_epochs: int = Field(default=1, ge=1, description="passes over local data per round")
    batch_size: int = Field(default=32, ge=1, description="mini-batch size")
    lr: float = Field(default=0.05, gt=0, description="learning rate")
    optimizer: OptimizerField = Field(default="sgd", description="sgd(momentum, weight_decay) or adam(...)")
    eval_every: int = Field(default=1, ge=1, description="evaluate every this many rounds (and the last)")
    eval_local_phase: bool = Field(default=False, description="also evaluate right after local training")
    eval_peers: int | None = Field(
        default=None,
        ge=2,
        description="estimate each evaluated round but the last from this many peers drawn at random "
        "(metrics.csv gives the standard errors); none: every peer, exactly",
    )
    attack: AttackField | None = Field(default=None, description="what Byzantine peers do")
    attackers: Annotated[float, Field(ge=0, lt=1)] | list[Annotated[int, Field(ge=0)]] = Field(
        default=0.0, description="share of peers that attack (chosen by seed), or the attackers' peer ids"
    )
    privacy: PrivacyField | None = Field(default=None, description="differential privacy of local training")
    ewc: EWCSettings | None = Field(
        default=None, description="Elastic Weight Consolidation against forgetting"
    )
    tasks: list[list[Annotated[int, Field(ge=0)]]] | None = Field(
        default=None, min_length=1, description="classes of each task, trained in turn (continual learning)"
    )
    churn: Churn | None = Field(
        default=None, description="join/leave schedule of an open swarm, with random partner sampling"
    )
    device: str = Field(
        default="cpu",
        description="where the peers' data, parameters and optimizer state live: cpu, cuda, cuda:N (GPU N) "
        "or auto (cuda if this machine has it, else cpu)",
    )

    _fits_int64 = field_validator("*")(fits_int64)

    @field_validator("device", mode="before")
    @classmethod
    def _device_spec(cls, value: Any) -> Any:
        """cpu, cuda, cuda:N or auto, whatever the case and spacing; whether this machine has it is checked
        when a run starts (:func:`ppaia.devices.resolve_device`): a config stays readable anywhere."""
        if not isinstance(value, str):
            return value  # pydantic says it is not a string
        text = value.strip().lower()
        if not DEVICE_SPEC.fullmatch(text):
            raise ValueError(
                f"{value!r:.40} is not a device: expected cpu, cuda, cuda:N (N a GPU index) or auto"
            )
        return text

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if isinstance(self.attackers, list):
            if (
                len(set(self.attackers)) != len(self.attackers)
                or max(self.attackers, default=0) >= self.peers
            ):
                raise ValueError(f"attackers: need distinct peer ids below peers={self.peers}")
            count = len(self.attackers)
        else:
            count = attacker_count(self.peers, self.attackers)
        if self.attack is None and self.attackers:
            raise ValueError("attackers: set `attack` to say what the attackers do")
        if count >= self.peers:
            raise ValueError(f"attackers: {self.attackers} of {self.peers} peers leaves no honest peer")
        if self.attackers and self.rule.pooled:
            raise ValueError(
                f"attackers: rule {self.rule.name!r} pools all data on one model; there are no peers"
            )
        if self.churn is not None:
            self.churn.check(self.peers)
        try:
            self.rule.check(self.peers)
        except ValueError as err:
            raise ValueError(f"rule: {self.rule.label()} with {self.peers} peers: {err}") from None
        if self.privacy is not None and getattr(self.rule, "needs_holdout", False):
            raise ValueError(
                f"privacy: rule {self.rule.label()} uses raw held-out records outside the privacy mechanism; "
                "the reported ε would not cover them"
            )
        if getattr(self.rule, "needs_holdout", False) and self.holdout == 0:
            raise ValueError(
                f"holdout: rule {self.rule.label()} judges models on each peer's held-out data; set holdout "
                "(e.g. 0.2) — judged on its own training data, a peer's own model always looks best"
            )
        if self.ewc is not None and getattr(self.privacy, "record_level", False):
            raise ValueError(
                "ewc: its Fisher is computed on raw records outside DP-SGD's clipping and noise, which would "
                "void the reported ε; use update_dp or leave ewc out"
            )
        if self.ewc is not None and self.ewc.anchor == "task" and not self.tasks:
            raise ValueError("ewc.anchor = 'task' needs `tasks`")
        if self.tasks and self.rounds < len(self.tasks):
            raise ValueError(
                f"tasks: {len(self.tasks)} tasks need at least as many rounds (rounds={self.rounds})"
            )
        if self.tasks and getattr(self.privacy, "target_epsilon", None) is not None:
            raise ValueError(
                "privacy.target_epsilon: not supported with `tasks` (set noise_multiplier instead)"
            )
        return self

    def evaluates(self, round_: int) -> bool:
        """Whether round `round_` is evaluated: every `eval_every` rounds, and the last one."""
        return round_ % self.eval_every == 0 or round_ == self.rounds

    def to_table(self, *, portable: bool = False) -> dict[str, Any]:
        """The fully resolved config as TOML-ready data (None options are left out). Its ``plugins``
        also name the modules of the components registered outside ppaia and of the factories it uses
        (:func:`ppaia.plugins.recorded`), so that it re-runs where nobody imported them first. Path
        options are absolute; `portable`: by their file name only, as peers on different machines
        compare them."""
        table = _drop_none(self.model_dump(mode="json", context={"portable": portable}))
        plugins = recorded([*self.plugins, *_modules(self)])
        if plugins:
            table["plugins"] = plugins
        else:
            del table["plugins"]
        return table

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_table())


def _modules(value: Any) -> list[str]:
    """The modules of every component in `value` (a config, a component, a list), nested ones too."""
    found = value.modules() if isinstance(value, Component) else []
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found += _modules(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            found += _modules(item)
    return found


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def format_validation_error(err: ValidationError, separator: str = "\n", whole: str = "config") -> str:
    """One ``field.path: message`` line per problem (`whole` names a problem of the model as a whole)."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem["loc"]) or whole
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return separator.join(lines)


def parse_value(text: str) -> Any:
    """A TOML value (number, bool, list, quoted string), or the raw text (e.g. ``dirichlet(0.5)``)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def set_field(table: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `table` with `key` set; ``field.option`` sets one option of a component field."""
    result = dict(table)
    field, _, option = key.strip().partition(".")
    if not field:
        raise ConfigError(f"{key!r}: empty field name")
    if not option:
        result[field] = value
        return result
    if field in NESTED_FIELDS:
        current = result.get(field) or {}
        result[field] = {
            **(current.model_dump() if isinstance(current, BaseModel) else current),
            option: value,
        }
        return result
    if field not in COMPONENT_FIELDS:
        raise ConfigError(f"{key!r}: {field!r} is not a field with options")
    current = result.get(field, ExperimentConfig.model_fields[field].default)
    try:
        spec = COMPONENT_FIELDS[field].normalize(_model_spec(current) if field == "model" else current)
    except SpecError as err:
        raise ConfigError(f"{key!r}: {field}: {err}") from None
    result[field] = {**spec, option: value}
    return result


def apply_overrides(table: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``field=value`` overrides; ``field.option=value`` sets one option of a component field."""
    result = dict(table)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected key=value")
        try:
            result = set_field(result, key, parse_value(text.strip()))
        except ConfigError as err:
            raise ConfigError(f"--set {err}") from None
    return result


def with_plugins(table: Mapping[str, Any], entries: list[str], base: Path | None = None) -> dict[str, Any]:
    """A copy of `table` with `entries` added to its ``plugins``, a .py file's path made absolute
    against `base` (default: the working directory, as for ``--plugin``)."""
    result = dict(table)
    if not entries and "plugins" not in result:
        return result
    given = result.get("plugins", [])
    given = [given] if isinstance(given, str) else given
    if isinstance(given, list) and all(isinstance(entry, str) for entry in [*given, *entries]):
        result["plugins"] = [resolve_entry(entry, base) for entry in [*given, *entries]]
    return result


def resolve_file_paths(table: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a config file's `table` with its components' path options (:data:`ppaia.paths.UserPath`)
    made absolute against the file's folder `base`: a config means the files next to it, from wherever
    it is run (the command line's overrides, applied after, are relative to the working directory). A
    component that does not parse, or that no registry knows yet, is left for validation to report."""
    result = dict(table)
    for field, registry in COMPONENT_FIELDS.items():
        value = result.get(field)
        try:
            spec = registry.normalize(_model_spec(value) if field == "model" else value)
            cls = registry.get(str(spec["name"]))
        except SpecError:
            continue
        if path_options(cls):
            result[field] = resolve_path_options(spec, cls, base)
    return result


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, plugins: list[str] | None = None
) -> ExperimentConfig:
    """Read and validate a TOML experiment (the built-in default when `path` is None); `plugins`: more
    plugin entries (``--plugin``). The config's folder is searched for its user modules too."""
    table: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
        search_next_to(path)
        table = with_plugins(table, [], path.parent)
    table = with_plugins(table, plugins or [])
    if path is not None:
        _plugins(table.get("plugins", []))  # registered before the path options of what they register
        table = resolve_file_paths(table, path.absolute().parent)
    return ExperimentConfig.model_validate(apply_overrides(table, overrides or []))
