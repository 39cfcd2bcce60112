"""The peer-batched simulator: all peers' parameters are one ``[N, D]`` tensor.

Each round: the rule plans (who trains, who mixes with whom), the chosen peers train in one batched
computation, the rule's mixing steps run over the peer axis, and every peer is evaluated on the shared
test set. :class:`Simulation` keeps these three phases as methods so that the reference executor can
replace them with a plain per-peer loop and be compared number for number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ppaia.config import ExperimentConfig
from ppaia.data import label_histogram
from ppaia.learning import BatchedEvaluator, BatchedTrainer, LocalData, ModelError, ParamLayout
from ppaia.rules import RoundContext, RoundPlan, apply_plan
from ppaia.seeding import Stream, derive_seed, generator
from ppaia.topology import PeerGraph, build_graph

__all__ = ["METRIC_COLUMNS", "RunResult", "Simulation", "run"]

METRIC_COLUMNS = (
    "round",
    "acc_mean",
    "acc_min",
    "acc_max",
    "acc_std",
    "loss_mean",
    "loss_min",
    "loss_max",
    "loss_std",
    "consensus_distance",
    "bytes_sent",
    "bytes_cumulative",
    "wall_s",
)

BYTES_PER_VALUE = 4  # models travel as float32

RoundCallback = Callable[[int, dict[str, float] | None], None]


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
    setup_s: float

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
            "peer_accuracy": self.peer_accuracy.tolist(),
            "peer_loss": self.peer_loss.tolist(),
            "peer_samples": self.n_samples.tolist(),
        }


def metrics_row(
    round_: int,
    accuracy: torch.Tensor,
    loss: torch.Tensor,
    params: torch.Tensor,
    sent: int,
    total: int,
    wall: float,
) -> dict[str, float]:
    """One row of ``metrics.csv``: spread of test accuracy and loss over peers, consensus distance, bytes."""
    wide = params.double()  # float64: identical peers give exactly 0
    spread = (wide - wide.mean(0)).square().sum(1).mean()
    row: dict[str, float] = {"round": round_}
    for name, values in (("acc", accuracy), ("loss", loss)):
        row |= {
            f"{name}_mean": values.mean().item(),
            f"{name}_min": values.min().item(),
            f"{name}_max": values.max().item(),
            f"{name}_std": values.std(unbiased=False).item(),
        }
    return row | {
        "consensus_distance": spread.item(),
        "bytes_sent": sent,
        "bytes_cumulative": total,
        "wall_s": wall,
    }


class Simulation:
    """Sets an experiment up (every config error surfaces here) and runs it."""

    def __init__(self, config: ExperimentConfig) -> None:
        started = time.perf_counter()
        self.config = cfg = config
        self.rule = cfg.rule
        self.dataset = cfg.dataset.load(cfg.seed)
        labels = self.dataset.y_train.numpy()
        parts = cfg.partition.split(
            labels, cfg.peers, derive_seed(cfg.seed, Stream.PARTITION), cfg.min_samples
        )
        if self.rule.pooled:
            parts = [np.concatenate(parts)]
        self.histogram = label_histogram(labels, parts, self.dataset.n_classes)
        self.data = LocalData.from_parts(self.dataset.x_train, self.dataset.y_train, parts)
        n = len(parts)
        if self.rule.uses_topology:
            topology_seed = derive_seed(cfg.seed, Stream.TOPOLOGY)
            self.graph = build_graph(cfg.topology, n, topology_seed, cfg.allow_disconnected)
        else:
            self.graph = PeerGraph(n, torch.zeros(2, 0, dtype=torch.long))
        self.model = self.build_model()
        if any(True for _ in self.model.buffers()):
            raise ModelError(
                f"model {cfg.model.label()} has buffers (e.g. BatchNorm running statistics); peers are "
                "simulated as stacked parameters only: use GroupNorm/LayerNorm instead"
            )
        self.layout = ParamLayout.of(self.model)
        self.init = cfg.init.initial_params(self.build_model, n, cfg.seed, self.graph)
        self.params = self.rule.initialize(self.init.params)
        self.trainer = BatchedTrainer(
            self.model,
            self.data,
            batch_size=cfg.batch_size,
            epochs=cfg.local_epochs,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            seed=cfg.seed,
        )
        self.evaluator = BatchedEvaluator(self.model, self.dataset.x_test, self.dataset.y_test)
        self.trainer.warm_up(self.params)  # torch.func's first call costs ~1 s: count it as set-up
        self.setup_s = time.perf_counter() - started

    def build_model(self) -> torch.nn.Module:
        return self.config.model.build(self.dataset.input_shape, self.dataset.n_classes)

    @property
    def n_peers(self) -> int:
        return self.graph.n

    # The three phases of a round; the reference executor overrides them with per-peer loops.
    def train(self, params: torch.Tensor, round_: int, trainers: torch.Tensor | None) -> torch.Tensor:
        return self.trainer.train(params, round_, trainers)

    def cooperate(self, plan: RoundPlan, params: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        return apply_plan(self.rule, plan, params, ctx)

    def evaluate(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.evaluator(params)

    def round_context(self, round_: int) -> RoundContext:
        cfg = self.config
        rule_randomness = generator(cfg.seed, Stream.RULE, round_)
        return RoundContext(round_, self.graph, self.data.counts, cfg.mixing, cfg.link_up, rule_randomness)

    def run(self, on_round: RoundCallback | None = None) -> RunResult:
        """Run every round; `on_round(round, metrics or None)` is called after each one."""
        cfg, params = self.config, self.params.clone()
        model_bytes = self.layout.size * BYTES_PER_VALUE
        total = 0
        accuracy, loss = self.evaluate(params)
        history = [metrics_row(0, accuracy, loss, params, 0, 0, 0.0)]
        started = time.perf_counter()
        for round_ in range(1, cfg.rounds + 1):
            ctx = self.round_context(round_)
            plan = self.rule.plan(ctx)
            params = self.cooperate(plan, self.train(params, round_, plan.trainers), ctx)
            sent = plan.models_sent() * model_bytes
            total += sent
            row = None
            if round_ % cfg.eval_every == 0 or round_ == cfg.rounds:
                accuracy, loss = self.evaluate(params)
                row = metrics_row(round_, accuracy, loss, params, sent, total, time.perf_counter() - started)
                history.append(row)
            if on_round is not None:
                on_round(round_, row)
        return RunResult(cfg, history, accuracy, loss, params, self.data.counts, self.histogram, self.setup_s)


def run(
    config: ExperimentConfig | dict[str, Any] | None = None, on_round: RoundCallback | None = None
) -> RunResult:
    """Run one experiment from a config (the built-in default when None) and return its result."""
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.model_validate(config or {})
    return Simulation(config).run(on_round)
