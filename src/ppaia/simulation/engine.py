"""The peer-batched simulator: all peers' parameters are one ``[N, D]`` tensor.

Each round: the rule plans (who trains, who mixes with whom), the chosen peers train in one batched
computation, attackers (if any) replace what they send, the rule's mixing steps run over the peer axis,
and every peer is evaluated on the shared test set. :class:`Simulation` keeps training, cooperation and
evaluation as methods so that the reference executor can replace them with a plain per-peer loop and be
compared number for number.

A run stops at the first round in which an honest peer's parameters (after local training, or after
cooperation) or test loss stop being finite: every later number would be NaN, so the result records the
round, the phase and the peers where it started (:class:`Divergence`) and keeps the history up to the
last finite round. Attackers' rows are not checked: sending garbage is what some attacks do.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ppaia.attacks import Adversary, choose_attackers
from ppaia.config import ConfigError, ExperimentConfig
from ppaia.data import DataError, PartitionError, label_histogram
from ppaia.learning import BatchedEvaluator, BatchedTrainer, LocalData, ModelError, ParamLayout
from ppaia.learning.continual import TaskSchedule, forgetting
from ppaia.learning.ewc import Anchor, fisher_diagonal
from ppaia.learning.holdout import PeerLearning, split_holdout
from ppaia.learning.local import PrivateSteps, activation_size
from ppaia.privacy import PrivateTraining
from ppaia.rules import RoundContext, RoundPlan, apply_plan
from ppaia.seeding import Stream, derive_seed, generator
from ppaia.simulation.memory import check_fits, dataset_need, training_needs
from ppaia.simulation.metrics import METRIC_COLUMNS, local_phase, metrics_row, nonfinite_peers
from ppaia.topology import PeerGraph, TopologyError, build_graph

__all__ = ["METRIC_COLUMNS", "Divergence", "Phase", "RunResult", "Simulation", "run"]

BYTES_PER_VALUE = 4  # models travel as float32
PEERS_SHOWN = 10  # peers listed by name in a divergence message

RoundCallback = Callable[[int, dict[str, float] | None], None]


@contextmanager
def config_field(name: str) -> Iterator[None]:
    """Prefix a component's own error (data, partition, topology) with the config field it comes from."""
    try:
        yield
    except (DataError, PartitionError, TopologyError) as err:
        raise type(err)(f"{name}: {err}") from None


class Phase(enum.StrEnum):
    """The part of a round after which non-finite values were found."""

    TRAINING = "local training"
    COOPERATION = "cooperation"
    EVALUATION = "evaluation"


@dataclass(frozen=True)
class Divergence:
    """Where a run diverged: the round, the phase and the honest peers whose values were not finite."""

    round: int
    phase: Phase
    peers: list[int]

    def message(self) -> str:
        shown = ", ".join(map(str, self.peers[:PEERS_SHOWN]))
        if len(self.peers) > PEERS_SHOWN:
            shown += f" and {len(self.peers) - PEERS_SHOWN} more"
        who = f"peer {shown} has" if len(self.peers) == 1 else f"peers {shown} have"
        what = (
            "a non-finite test loss at" if self.phase is Phase.EVALUATION else "non-finite parameters after"
        )
        return f"diverged in round {self.round}: {who} {what} {self.phase}"

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "phase": str(self.phase), "peers": self.peers}


@dataclass
class RunResult:
    """What a run produced: the per-round history and the final state of every peer."""

    config: ExperimentConfig
    history: list[dict[str, float]]
    peer_accuracy: torch.Tensor
    peer_loss: torch.Tensor
    params: torch.Tensor
    n_samples: torch.Tensor
    label_histogram: np.ndarray
    attackers: torch.Tensor
    setup_s: float
    init_steps: int = 0
    snapshots: dict[str, list[tuple[int, torch.Tensor]]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    divergence: Divergence | None = None  # set when the run stopped early; history ends before it

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]

    def summary(self) -> dict[str, Any]:
        """Final metrics plus the per-peer final accuracy and loss (JSON-ready)."""
        return {
            **self.final,
            "peers": int(self.params.shape[0]),
            "params_per_model": int(self.params.shape[1]),
            "setup_s": round(self.setup_s, 4),
            "init_steps": self.init_steps,
            "init_bytes": self.history[0]["bytes_sent"],
            "attackers": self.attackers.nonzero().flatten().tolist(),
            "events": self.events,
            "diverged": None if self.divergence is None else self.divergence.to_json(),
            **(
                {"peer_epsilon": self.snapshots["epsilon"][-1][1].tolist()}
                if "epsilon" in self.snapshots
                else {}
            ),
            "peer_accuracy": self.peer_accuracy.tolist(),
            "peer_loss": self.peer_loss.tolist(),
            "peer_samples": self.n_samples.tolist(),
        }


class Simulation:
    """Sets an experiment up (every config error surfaces here) and runs it."""

    def __init__(self, config: ExperimentConfig) -> None:
        started = time.perf_counter()
        self.config = cfg = config
        self.rule = cfg.rule.model_copy(deep=True)  # its learned state belongs to this simulation
        check_fits([dataset_need(cfg)])
        with config_field("dataset"):
            self.dataset = cfg.dataset.load(cfg.seed)
        self._check_tasks()
        labels = self.dataset.y_train.numpy()
        with config_field("partition"):
            parts = cfg.partition.split(
                labels, cfg.peers, derive_seed(cfg.seed, Stream.PARTITION), cfg.min_samples
            )
        if self.rule.pooled:
            parts = [np.concatenate(parts)]
        n = len(parts)
        train_parts, held_parts = split_holdout(parts, cfg.holdout, derive_seed(cfg.seed, Stream.HOLDOUT))
        self.histogram = label_histogram(labels, train_parts, self.dataset.n_classes)
        with config_field("topology"):
            self.graph = self._graph(n)
        self.model = self._checked_model(n, max(len(part) for part in train_parts))
        self.layout = ParamLayout.of(self.model)
        self.init = cfg.init.initial_params(self.build_model, n, cfg.seed, self.graph)
        self.params = self.rule.initialize(self.init.params)
        self.adversary = self._adversary(n)
        y = self.dataset.y_train
        if self.adversary is not None:
            own = torch.as_tensor(
                np.concatenate([parts[i] for i in self.adversary.attackers.nonzero().flatten()])
            )
            y = self.adversary.poison(y, own, self.dataset.n_classes)
        self.honest = torch.ones(n, dtype=torch.bool) if self.adversary is None else self.adversary.honest
        self.data = LocalData.from_parts(self.dataset.x_train, y, train_parts)
        self.train_counts = self.data.counts  # all of a peer's training data, whatever task it is on
        self.schedule = TaskSchedule(cfg.tasks, cfg.rounds)
        self.task_data = [
            LocalData.from_parts(self.dataset.x_train, y, self.schedule.restrict(train_parts, labels, task))
            for task in range(len(self.schedule.tasks))
        ]
        self.learner = PeerLearning(
            self.model,
            self.data if cfg.holdout == 0 else LocalData.from_parts(self.dataset.x_train, y, held_parts),
        )
        self.trainer = BatchedTrainer(
            self.model,
            self.data,
            batch_size=cfg.batch_size,
            epochs=cfg.local_epochs,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            seed=cfg.seed,
        )
        x_test, y_test = self.dataset.x_test, self.dataset.y_test
        self.evaluator = BatchedEvaluator(self.model, x_test, y_test)
        self.task_evaluators = [
            BatchedEvaluator(self.model, x_test[mask], y_test[mask])
            for mask in self.schedule.test_masks(y_test)
        ]
        self.private_training()  # privacy the accountant cannot meet fails at set-up (the search is cached)
        self.trainer.warm_up(self.params)  # torch.func's first call costs ~1 s: count it as set-up
        self.setup_s = time.perf_counter() - started

    def _graph(self, n: int) -> PeerGraph:
        cfg = self.config
        if not self.rule.uses_topology:
            return PeerGraph(n, torch.zeros(2, 0, dtype=torch.long))
        return build_graph(cfg.topology, n, derive_seed(cfg.seed, Stream.TOPOLOGY), cfg.allow_disconnected)

    def _adversary(self, n: int) -> Adversary | None:
        cfg = self.config
        attackers = choose_attackers(n, cfg.attackers, cfg.seed)
        if cfg.attack is None or self.rule.pooled or not attackers.any():
            return None
        return Adversary(cfg.attack, attackers, self.params[attackers].clone(), cfg.seed)

    def build_model(self) -> torch.nn.Module:
        return self.config.model.build(self.dataset.input_shape, self.dataset.n_classes)

    def _checked_model(self, n_peers: int, largest_part: int) -> torch.nn.Module:
        """The model, once the run's memory is known to fit and the model runs on the dataset's inputs."""
        cfg, shape = self.config, self.dataset.input_shape
        check_fits(training_needs(cfg, self.build_model, shape, n_peers, largest_part))
        try:
            model = self.build_model()
        except ModelError:
            raise
        except (RuntimeError, ValueError, TypeError, OverflowError) as err:
            raise ModelError(f"model {cfg.model.label()}: cannot be built: {err}") from None
        if any(True for _ in model.buffers()):
            raise ModelError(
                f"model {cfg.model.label()} has buffers (e.g. BatchNorm running statistics); peers are "
                "simulated as stacked parameters only: use GroupNorm/LayerNorm instead"
            )
        try:
            activation_size(model, shape)  # one forward pass of a blank input
        except (RuntimeError, ValueError, TypeError, OverflowError) as err:
            raise ModelError(f"model {cfg.model.label()}: fails on inputs of shape {shape}: {err}") from None
        return model

    def _check_tasks(self) -> None:
        classes = self.dataset.n_classes
        unknown = sorted({c for task in self.config.tasks or [] for c in task if c >= classes})
        if unknown:
            raise ConfigError(
                f"tasks: no class {', '.join(map(str, unknown))} in dataset {self.config.dataset.label()} "
                f"(classes 0 to {classes - 1})"
            )

    @property
    def n_peers(self) -> int:
        return self.graph.n

    # The three phases of a round; the reference executor overrides them with per-peer loops.
    def train(
        self,
        params: torch.Tensor,
        round_: int,
        trainers: torch.Tensor,
        anchor: Anchor | None = None,
        private: PrivateSteps | None = None,
    ) -> torch.Tensor:
        return self.trainer.train(params, round_, trainers, anchor=anchor, private=private)

    def cooperate(self, plan: RoundPlan, params: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        return apply_plan(self.rule, plan, params, ctx)

    def evaluate(self, params: torch.Tensor, task: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-peer test accuracy and loss, on the whole test set or on one task's classes."""
        return (self.evaluator if task is None else self.task_evaluators[task])(params)

    def round_context(self, round_: int) -> RoundContext:
        cfg = self.config
        rule_randomness = generator(cfg.seed, Stream.RULE, round_)
        return RoundContext(
            round_, self.graph, self.train_counts, cfg.mixing, cfg.link_up, rule_randomness, self.learner
        )

    def enter_round(self, round_: int, privacy: PrivateTraining | None) -> None:
        """Switch every peer to the current task's data when tasks change."""
        if self.schedule and (round_ == 1 or self.schedule.starts_task(round_)):
            self.data = self.trainer.data = self.task_data[self.schedule.task_of(round_)]
            if privacy is not None:
                privacy.use_counts(self.data.counts)

    def anchor(self, params: torch.Tensor, round_: int, anchor: Anchor | None) -> Anchor | None:
        """EWC's θ* and Fisher: at every round's start, or at the end of each finished task."""
        ewc = self.config.ewc
        if ewc is None:
            return None
        if ewc.anchor == "task":
            if not self.schedule.starts_task(round_):
                return anchor
            data = self.task_data[self.schedule.task_of(round_) - 1]  # the task just finished
        else:
            data = self.data
        fisher = fisher_diagonal(
            self.model,
            params,
            data,
            torch.arange(self.n_peers),
            samples=ewc.samples,
            mode=ewc.fisher,
            generator=generator(self.config.seed, Stream.FISHER, round_),
        )
        return Anchor(ewc.strength, fisher, params.clone())

    def private_training(self) -> PrivateTraining | None:
        cfg = self.config
        if cfg.privacy is None:
            return None
        return PrivateTraining(
            cfg.privacy,
            self.train_counts,
            batch_size=cfg.batch_size,
            epochs=cfg.local_epochs,
            rounds=cfg.rounds,
            seed=cfg.seed,
        )

    def run(self, on_round: RoundCallback | None = None) -> RunResult:
        """Run every round; `on_round(round, metrics or None)` is called after each one."""
        cfg, params, adversary = self.config, self.params.clone(), self.adversary
        self.rule.reset(self.n_peers)
        if adversary is not None:
            adversary.reset()
        privacy = self.private_training()
        model_bytes = self.layout.size * BYTES_PER_VALUE
        local = self.rule.reports_local_phase or cfg.eval_local_phase
        snapshots: dict[str, list[tuple[int, torch.Tensor]]] = {}
        history: list[dict[str, float]] = []
        total = self.init.models_sent * model_bytes
        first, accuracy, loss = self.measure(0, params, history, privacy)
        first |= {"bytes_sent": total, "bytes_cumulative": total}
        history.append(first | (local_phase(accuracy, self.honest) if local else {}))
        anchor = divergence = None
        started = time.perf_counter()
        for round_ in range(1, cfg.rounds + 1):
            evaluating = cfg.evaluates(round_)
            self.enter_round(round_, privacy)
            ctx = self.round_context(round_)
            plan = self.rule.plan(ctx)
            params = self.rule.prepare(params, plan, ctx)
            trainers = torch.ones(self.n_peers, dtype=torch.bool) if plan.trainers is None else plan.trainers
            if adversary is not None:
                trainers = adversary.trainers(trainers)
            if privacy is not None:
                trainers = privacy.allowed(trainers, round_)
            anchor = self.anchor(params, round_, anchor)
            needs_held = adversary is not None or (privacy is not None and privacy.releases_updates)
            held = params.clone() if needs_held else None
            params = self.train(params, round_, trainers, anchor, privacy and privacy.private_steps())
            if privacy is not None:
                params = privacy.release(held, params, trainers, round_)
                privacy.spend(trainers)
            if divergence := self._divergence(round_, Phase.TRAINING, params):
                break
            after_training = (
                local_phase(self.evaluate(params)[0], self.honest) if local and evaluating else {}
            )
            if adversary is not None:
                params = adversary.send(params, held[adversary.attackers], round_)
            params = self.cooperate(plan, params, ctx)
            if divergence := self._divergence(round_, Phase.COOPERATION, params):
                break
            sent = plan.models_sent() * model_bytes
            total += sent
            row = None
            if evaluating:
                row, evaluated_accuracy, evaluated_loss = self.measure(round_, params, history, privacy)
                if divergence := self._divergence(round_, Phase.EVALUATION, evaluated_loss):
                    break
                accuracy, loss = evaluated_accuracy, evaluated_loss
                row |= after_training | plan.info
                row |= {
                    "bytes_sent": sent,
                    "bytes_cumulative": total,
                    "wall_s": time.perf_counter() - started,
                }
                history.append(row)
                for name, value in self.rule.snapshot().items():
                    snapshots.setdefault(name, []).append((round_, value.clone()))
                if privacy is not None:
                    snapshots.setdefault("epsilon", []).append((round_, privacy.epsilon()))
            if on_round is not None:
                on_round(round_, row)
        events = [] if privacy is None else privacy.events
        return RunResult(
            cfg,
            history,
            accuracy,
            loss,
            params,
            self.train_counts,
            self.histogram,
            ~self.honest,
            self.setup_s,
            self.init.steps,
            snapshots,
            events,
            divergence,
        )

    def _divergence(self, round_: int, phase: Phase, values: torch.Tensor) -> Divergence | None:
        """A divergence if some honest peer's row of `values` (parameters or losses) is not finite."""
        peers = nonfinite_peers(values, self.honest)
        return Divergence(round_, phase, peers) if peers else None

    def measure(
        self,
        round_: int,
        params: torch.Tensor,
        history: list[dict[str, float]],
        privacy: PrivateTraining | None,
    ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """An evaluated round's metrics (the caller adds bytes and time) and each peer's accuracy and loss."""
        accuracy, loss = self.evaluate(params)
        row = metrics_row(round_, accuracy, loss, params, self.honest, 0, 0, 0.0)
        if self.schedule:
            for task in range(len(self.schedule.tasks)):
                row[f"task{task}_acc"] = self.evaluate(params, task)[0][self.honest].mean().item()
            row["forgetting"] = forgetting([*history, row], self.schedule.task_of(max(round_, 1)))
        if privacy is not None:
            epsilon = privacy.epsilon()
            row |= {"epsilon_mean": epsilon.mean().item(), "epsilon_max": epsilon.max().item()}
        return row, accuracy, loss


def run(
    config: ExperimentConfig | dict[str, Any] | None = None, on_round: RoundCallback | None = None
) -> RunResult:
    """Run one experiment from a config (the built-in default when None) and return its result."""
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.model_validate(config or {})
    return Simulation(config).run(on_round)
