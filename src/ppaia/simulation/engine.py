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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ppaia.churn import ChurnRun
from ppaia.config import ConfigError, ExperimentConfig
from ppaia.devices import resolve_device
from ppaia.experiment import Setup
from ppaia.experiment.local import LocalPhase, round_context
from ppaia.learning.continual import forgetting
from ppaia.learning.ewc import Anchor
from ppaia.learning.local import PrivateSteps
from ppaia.privacy import PrivateTraining
from ppaia.rules import RoundContext, RoundPlan
from ppaia.simulation.axis import PeerAxis
from ppaia.simulation.metrics import (
    METRIC_COLUMNS,
    evaluated_peers,
    local_phase,
    metrics_row,
    nonfinite_peers,
    sampling_error,
)

__all__ = ["METRIC_COLUMNS", "Divergence", "Phase", "RoundView", "RunResult", "Simulation", "measure", "run"]

BYTES_PER_VALUE = 4  # models travel as float32
PEERS_SHOWN = 10  # peers listed by name in a divergence message

RoundCallback = Callable[[int, dict[str, float] | None], None]


@dataclass(frozen=True)
class RoundView:
    """What a round computed, for an observer that shows a run as it goes (``ppaia run --dashboard``):
    references to values the round computed anyway, nothing computed for it. `trainers` is the mask of
    peers that trained (None in round 0, the initial models); `row`, `accuracy`, `loss` and `state` (the
    rule's snapshot and the ε spent, as the run's `snapshots` keep them) are None / empty in a round
    that is not evaluated."""

    round: int
    plan: RoundPlan
    trainers: torch.Tensor | None
    row: dict[str, float] | None = None
    accuracy: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)


RoundObserver = Callable[[RoundView], None]


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
    """The batched loop over an experiment's whole batch (:meth:`Setup.batch`: every config error
    surfaces there), on the config's device.

    `axis` says which peers' rows this process holds and how per-peer values meet: by default all of
    them; a run sharded over ranks passes a :class:`ppaia.simulation.sharded.ShardedAxis`, and the same
    loop then runs on each rank's block (:meth:`Setup.block`)."""

    def __init__(self, config: ExperimentConfig, axis: PeerAxis | None = None) -> None:
        self.config = config
        self.axis = axis or PeerAxis()
        device = resolve_device(config.device)  # before the data is loaded: a missing GPU fails at once
        rows = self.axis.rows
        self.setup = (Setup.batch(config) if rows is None else Setup.block(config, rows)).to(device)
        self.rule = self.setup.rule
        self.honest = self.axis.gather(self.setup.honest)  # every peer's, for the metrics

    @property
    def n_peers(self) -> int:
        return self.setup.n_peers

    # The three phases of a round; the reference executor overrides them with per-peer loops.
    def train(
        self,
        params: torch.Tensor,
        round_: int,
        trainers: torch.Tensor,
        anchor: Anchor | None = None,
        private: PrivateSteps | None = None,
    ) -> torch.Tensor:
        return self.setup.trainer.train(params, round_, trainers, anchor=anchor, private=private)

    def cooperate(self, plan: RoundPlan, params: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        return self.axis.apply_plan(self.rule, plan, params, ctx)

    def evaluate(self, params: torch.Tensor, task: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-peer test accuracy and loss, on the whole test set or on one task's classes."""
        return self.setup.evaluate(params, task)

    def run(self, on_round: RoundCallback | None = None, observe: RoundObserver | None = None) -> RunResult:
        """Run every round; `on_round(round, metrics or None)` is called after each one, and `observe`
        with the round's :class:`RoundView`."""
        setup = self.setup
        cfg, params, honest, axis = self.config, setup.params.clone(), self.honest, self.axis
        self.rule.reset(self.n_peers, None if axis.rows is None else torch.tensor(axis.rows))
        phase = LocalPhase(setup, self.train)
        privacy = phase.privacy
        model_bytes = setup.layout.size * BYTES_PER_VALUE
        local = self.rule.reports_local_phase or cfg.eval_local_phase
        snapshots: dict[str, list[tuple[int, torch.Tensor]]] = {}
        history: list[dict[str, float]] = []
        total = setup.init.models_sent * model_bytes
        first, accuracy, loss = self.measure(0, params, history, privacy)
        first |= {"bytes_sent": total, "bytes_cumulative": total}
        history.append(first | (local_phase(accuracy, honest) if local else {}))
        if observe is not None:
            observe(RoundView(0, RoundPlan(), None, history[0], accuracy, loss))
        divergence = None
        churn = None if cfg.churn is None else ChurnRun(cfg.churn, self.n_peers, cfg.rounds, cfg.seed)
        if churn is not None and axis.rows is not None:
            raise ConfigError("churn: a join/leave schedule runs on one process, not sharded")
        started = time.perf_counter()
        for round_ in range(1, cfg.rounds + 1):
            evaluating = cfg.evaluates(round_)
            phase.enter(round_)
            ctx = round_context(setup, round_)
            if churn is not None:  # an open swarm's joins and leaves, partners sampled (ppaia.churn)
                ctx = churn.enter(round_, ctx, params)
            plan = self.rule.plan(ctx)
            if churn is not None:
                plan = churn.restrict(plan, round_)
            params = self.rule.prepare(params, plan, ctx)
            trainers = phase.trainers(plan.trainers, round_)
            params, held = phase.train(params, round_, trainers)
            if divergence := self._divergence(round_, Phase.TRAINING, params):
                break
            after_training = (
                local_phase(axis.gather(self.evaluate(params)[0]), honest) if local and evaluating else {}
            )
            params = self.cooperate(plan, phase.send(params, held, round_), ctx)
            if divergence := self._divergence(round_, Phase.COOPERATION, params):
                break
            sent = plan.models_sent() * model_bytes
            total += sent
            row, state = None, {}
            if evaluating:
                row, evaluated_accuracy, evaluated_loss = self.measure(round_, params, history, privacy)
                drawn = evaluated_peers(cfg, self.n_peers, round_)  # NaN for the others is no divergence
                if divergence := self._divergence(round_, Phase.EVALUATION, evaluated_loss, drawn):
                    break
                accuracy, loss = evaluated_accuracy, evaluated_loss
                row |= after_training | plan.info
                row |= {
                    "bytes_sent": sent,
                    "bytes_cumulative": total,
                    "wall_s": time.perf_counter() - started,
                }
                history.append(row)
                state = {name: value.clone() for name, value in self.rule.snapshot().items()}
                if privacy is not None:
                    state["epsilon"] = privacy.epsilon()
                state = axis.state(state)
                for name, value in state.items():
                    snapshots.setdefault(name, []).append((round_, value))
            if on_round is not None:
                on_round(round_, row)
            if observe is not None:
                evaluated = (accuracy, loss) if row is not None else (None, None)
                observe(RoundView(round_, plan, trainers, row, *evaluated, state))
        events = [] if privacy is None else axis.texts(privacy.events)
        return RunResult(  # on the host, whatever the device: what the outputs are written from
            cfg,
            history,
            accuracy.cpu(),
            loss.cpu(),
            axis.collect(params).cpu(),
            axis.gather(setup.train_counts),
            axis.gather(torch.from_numpy(setup.histogram)).numpy(),
            ~honest,
            setup.setup_s,
            setup.init.steps,
            snapshots,
            events,
            divergence,
        )

    def _divergence(
        self, round_: int, phase: Phase, values: torch.Tensor, among: torch.Tensor | None = None
    ) -> Divergence | None:
        """A divergence if some honest peer's row of `values` is not finite: this process's rows of the
        parameters (every process agrees on the outcome), or in evaluation every peer's losses; only
        the peers of mask `among`, when given, are looked at."""
        if phase is Phase.EVALUATION:
            peers = nonfinite_peers(values, self.honest if among is None else self.honest & among)
        else:
            peers = self.axis.peers(nonfinite_peers(values, self.setup.honest))
        return Divergence(round_, phase, peers) if peers else None

    def measure(
        self,
        round_: int,
        params: torch.Tensor,
        history: list[dict[str, float]],
        privacy: PrivateTraining | None,
    ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        return measure(self.setup, round_, params, history, privacy, self.evaluate, self.axis)


def measure(
    setup: Setup,
    round_: int,
    params: torch.Tensor,
    history: list[dict[str, float]],
    privacy: PrivateTraining | None,
    evaluate: Callable[[torch.Tensor, int | None], tuple[torch.Tensor, torch.Tensor]] | None = None,
    axis: PeerAxis | None = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """An evaluated round's metrics (the caller adds bytes and time) and each peer's accuracy and loss
    (NaN for the peers that `eval_peers` left out of the round: :func:`evaluated_peers`). `params` are
    the rows `axis` holds (default: every peer's); the results are every peer's."""
    evaluate, axis = evaluate or setup.evaluate, axis or PeerAxis()
    honest, schedule = axis.gather(setup.honest), setup.schedule
    drawn = evaluated_peers(setup.config, setup.n_peers, round_)
    mine = None if drawn is None else axis.local(drawn)
    rows = params if mine is None else params[mine.to(params.device)]

    def every_peer(task: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy and loss of every peer (NaN where not drawn) on the test set or one task's classes."""
        values = evaluate(rows, task)
        if mine is not None:
            values = (v.new_full(mine.shape, torch.nan).masked_scatter_(mine.to(v.device), v) for v in values)
        accuracy, loss = (axis.gather(v) for v in values)
        return accuracy, loss

    accuracy, loss = every_peer(None)
    distance = axis.consensus_distance(params, setup.honest)
    row = metrics_row(round_, accuracy, loss, params, honest, 0, 0, 0.0, drawn, distance=distance)
    if setup.config.eval_peers is not None:
        row |= sampling_error(accuracy, loss, honest, drawn)
    if schedule:
        drawn_honest = honest if drawn is None else honest & drawn
        for task in range(len(schedule.tasks)):
            row[f"task{task}_acc"] = every_peer(task)[0][drawn_honest.to(accuracy.device)].mean().item()
        row["forgetting"] = forgetting([*history, row], schedule.task_of(max(round_, 1)))
    if privacy is not None:
        epsilon = axis.gather(privacy.epsilon())
        row |= {"epsilon_mean": epsilon.mean().item(), "epsilon_max": epsilon.max().item()}
    return row, accuracy, loss


def run(
    config: ExperimentConfig | dict[str, Any] | None = None, on_round: RoundCallback | None = None
) -> RunResult:
    """Run one experiment from a config (the built-in default when None) and return its result."""
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.model_validate(config or {})
    return Simulation(config).run(on_round)
