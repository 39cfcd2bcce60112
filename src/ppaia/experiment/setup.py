"""Experiment set-up, apart from every loop that runs it.

:class:`Setup` builds, from a config and its seed, what an executor holds before its first round: the
data and its split, the model and its layout, the initial parameters, the rule, the attackers, the
privacy and EWC set-up and the evaluators. It builds either

- the whole batch (:meth:`Setup.batch`), for the simulator;
- a block of consecutive peers (:meth:`Setup.block`), one rank's share of a run sharded over processes;
- one peer's slice of it (:meth:`Setup.peer`), for a networked peer that replays row i of the
  simulator (``--partition i/N``) or a ledger client; or
- a peer that brings its own data (:meth:`Setup.own`): its samples are its own file, not a share of a
  global dataset.

A slice holds that peer's samples, its model, its initial row and its evaluator only. What it builds
about the others is a few integers per peer (the split's sample counts, the topology's links), never
a model, so a peer's memory and set-up time do not grow with the swarm. Every per-peer random draw
(initial model, held-out split, data order, DP noise, Fisher samples, attack noise) is keyed by the
peer's id, so peer i's slice starts equal to row i of the batch and, with every model received, stays
equal (the parity tests check it).
"""

from __future__ import annotations

import functools
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from ppaia.attacks import Adversary, choose_attackers
from ppaia.config import ConfigError, ExperimentConfig
from ppaia.data import DataError, Dataset, PartitionError, data_source, label_histogram
from ppaia.experiment.memory import check_fits, dataset_need, training_needs
from ppaia.learning import BatchedEvaluator, BatchedTrainer, LocalData, ModelError, ParamLayout
from ppaia.learning.continual import TaskSchedule
from ppaia.learning.holdout import PeerLearning, split_holdout
from ppaia.learning.init import Initialization
from ppaia.learning.local import PrivateSteps, activation_size
from ppaia.privacy import PrivateTraining
from ppaia.registry import SpecError
from ppaia.rules import CooperationRule
from ppaia.seeding import Stream, derive_seed
from ppaia.topology import PeerGraph, TopologyError, build_graph

__all__ = ["OwnData", "Setup", "config_field", "parts_of"]


@contextmanager
def config_field(name: str) -> Iterator[None]:
    """Prefix a component's own error (data, partition, topology) with the config field it comes from."""
    try:
        yield
    except (DataError, PartitionError, TopologyError) as err:
        raise type(err)(f"{name}: {err}") from None


@dataclass(frozen=True)
class OwnData:
    """A peer's own data: every row of `train` is its (training and held-out) data; `test`, if given, is
    the test set it reports accuracy on (else its held-out share)."""

    train: Dataset
    test: Dataset | None = None

    @classmethod
    def load(cls, data: str, test: str | None, seed: int) -> OwnData:
        """A peer's own data from its ``--data`` and ``--test`` specs (a .npz or .csv path, or a dataset
        spec): every row of each, none split off as a test set."""

        def load(spec: str, option: str) -> Dataset:
            try:
                return data_source(spec).model_copy(update={"test_fraction": 0.0}).load(seed)
            except (SpecError, ValidationError, DataError) as err:
                raise DataError(f"{option} {spec!r}: {err}") from None

        return cls(load(data, "--data"), None if test is None else load(test, "--test"))

    def __post_init__(self) -> None:
        train, test = self.train, self.test
        if len(train.y_train) == 0:
            raise DataError(f"own data {train.name!r}: no training rows")
        if test is None:
            return
        if test.input_shape != train.input_shape:
            raise DataError(
                f"test data {test.name!r}: input shape {test.input_shape} differs from the training data "
                f"{train.name!r}'s {train.input_shape}"
            )
        if test.n_classes != train.n_classes:
            raise DataError(
                f"test data {test.name!r}: {test.n_classes} classes, the training data {train.name!r} has "
                f"{train.n_classes} (set `classes` on both)"
            )


@dataclass
class Setup:
    """One executor's part of an experiment: the rows of peers `ids` (all peers for the simulator).

    `counts` are every peer's training-sample counts (what rules weighting by data size read); the
    rows' own are ``data.counts``.
    """

    config: ExperimentConfig
    rule: CooperationRule
    dataset: Dataset
    ids: torch.Tensor
    counts: torch.Tensor
    graph: PeerGraph
    model: nn.Module
    layout: ParamLayout
    init: Initialization
    params: torch.Tensor
    adversary: Adversary | None
    honest: torch.Tensor
    data: LocalData
    schedule: TaskSchedule
    task_data: list[LocalData]
    learner: PeerLearning
    trainer: BatchedTrainer
    evaluator: BatchedEvaluator
    task_evaluators: list[BatchedEvaluator]
    histogram: np.ndarray
    train_counts: torch.Tensor  # the rows' training samples, whatever task they are on
    setup_s: float

    @property
    def n_peers(self) -> int:
        """Peers in the whole experiment (1 for a rule that pools all data on one model)."""
        return self.graph.n

    def evaluate(self, params: torch.Tensor, task: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's test accuracy and loss, on the whole test set or on one task's classes."""
        return (self.evaluator if task is None else self.task_evaluators[task])(params)

    def to(self, device: torch.device) -> Setup:
        """Move what the rounds compute with (samples, held-out and test sets, the initial parameters) to
        `device`, in place; the set-up's draws were made on the host, so a seed gives the same run on any
        device up to the device's arithmetic. A no-op for the CPU."""
        if device == self.params.device:
            return self
        moved = {id(data): data.to(device) for data in (self.data, *self.task_data)}
        self.data, self.task_data = moved[id(self.data)], [moved[id(data)] for data in self.task_data]
        self.trainer.data = self.data
        holdout = self.learner.holdout
        self.learner.holdout = moved[id(holdout)] if id(holdout) in moved else holdout.to(device)
        self.params = self.params.to(device)
        for evaluator in (self.evaluator, *self.task_evaluators):
            evaluator.to(device)
        if self.adversary is not None:
            self.adversary.to(device)
        return self

    def build_model(self) -> nn.Module:
        return _model_builder(self.config, self.dataset)()

    def private_training(self) -> PrivateTraining | None:
        """The rows' DP state (accountants), fresh; None without privacy."""
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
            ids=self.ids,
        )

    @classmethod
    def batch(cls, config: ExperimentConfig) -> Setup:
        """Every peer, for the simulator."""
        return _build(config, None, None)

    @classmethod
    def block(cls, config: ExperimentConfig, peers: range) -> Setup:
        """Peers `peers` (consecutive ids) of the simulator's experiment: one rank's share of a run
        sharded over processes (:mod:`ppaia.simulation.sharded`); their rows equal the batch's."""
        if config.rule.pooled:
            raise ConfigError(f"rule {config.rule.name!r} pools all data on one model; it has no peers")
        if not 0 <= peers.start < peers.stop <= config.peers or peers.step != 1:
            raise ConfigError(f"peer block {peers} is not a non-empty run of ids in 0..{config.peers - 1}")
        return _build(config, peers, None)

    @classmethod
    def peer(cls, config: ExperimentConfig, peer: int) -> Setup:
        """Peer `peer`'s slice of the simulator's experiment: its share of the split dataset."""
        if config.rule.pooled:
            raise ConfigError(f"rule {config.rule.name!r} pools all data on one model; it has no peers")
        if not 0 <= peer < config.peers:
            raise ConfigError(f"peer index {peer} is not in 0..{config.peers - 1}")
        return _build(config, peer, None)

    @classmethod
    def own(cls, config: ExperimentConfig, peer: int, data: OwnData, *, aggregates: bool = True) -> Setup:
        """Peer `peer` of `config.peers` with its own data (the config's dataset and split are unused).

        `aggregates` False: a peer that only trains (a FedAvg client of a server that weighs the clients'
        models), so the rule's need for the others' sample counts is not its own."""
        if config.rule.pooled:
            raise ConfigError(f"rule {config.rule.name!r} pools all data on one model; it has no peers")
        if not 0 <= peer < config.peers:
            raise ConfigError(f"peer index {peer} is not in 0..{config.peers - 1}")
        if aggregates and config.rule.reads_sample_counts(config.mixing):
            raise ConfigError(
                f"rule {config.rule.label()} with mixing {config.mixing.name!r} weighs every peer by its "
                "sample count, which a peer with its own data does not know of the others; use a rule "
                "and mixing that do not (e.g. consensus with metropolis, learned_trust)"
            )
        if data.test is None and config.holdout == 0:
            raise ConfigError(
                "a peer with its own data evaluates on a test set (--test) or on a held-out share of its "
                "data: give --test, or set holdout (e.g. 0.2)"
            )
        return _build(config, peer, data)


def parts_of(
    config: ExperimentConfig, dataset: Dataset, peer: int | range | None, own: OwnData | None
) -> tuple[list[np.ndarray], torch.Tensor, list[int]]:
    """The rows' sample indices (into the dataset's training rows), every peer's count, the row ids."""
    cfg = config
    if own is not None:
        part = np.arange(len(dataset.y_train))
        counts = torch.full((cfg.peers,), len(part), dtype=torch.long)  # the others' are unknown
        return [part], counts, [peer]
    labels = dataset.y_train.numpy()
    with config_field("partition"):
        parts = cfg.partition.split(
            labels,
            cfg.peers,
            derive_seed(cfg.seed, Stream.PARTITION),
            cfg.min_samples,
            groups=None if dataset.groups_train is None else dataset.groups_train.numpy(),
        )
    if cfg.rule.pooled:
        parts = [np.concatenate(parts)]
    counts = torch.tensor([len(p) - _held_count(len(p), cfg.holdout) for p in parts], dtype=torch.long)
    ids = list(range(len(parts)) if peer is None else [peer] if isinstance(peer, int) else peer)
    return [parts[i] for i in ids], counts, ids


def _held_count(size: int, fraction: float) -> int:
    """Samples a peer of `size` holds out (it keeps at least one to train on): as :func:`split_holdout`."""
    return min(int(size * fraction), size - 1)


def _model_builder(config: ExperimentConfig, dataset: Dataset) -> Callable[[], nn.Module]:
    """Builds the config's model for the dataset's inputs and classes (every peer's, and the init's)."""
    return functools.partial(config.model.build, dataset.input_shape, dataset.n_classes)


def _checked_model(config: ExperimentConfig, dataset: Dataset, rows: int, largest: int) -> nn.Module:
    """The model, once the rows' memory is known to fit and the model runs on the dataset's inputs."""
    shape, build = dataset.input_shape, _model_builder(config, dataset)
    check_fits(training_needs(config, build, shape, rows, largest))
    label = config.model.label()
    try:
        model = build()
    except ModelError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError) as err:
        raise ModelError(f"model {label}: cannot be built: {err}") from None
    if any(True for _ in model.buffers()):
        raise ModelError(
            f"model {label} has buffers (e.g. BatchNorm running statistics); peers are "
            "simulated as stacked parameters only: use GroupNorm/LayerNorm instead"
        )
    try:
        activation_size(model, shape)  # one forward pass of a blank input
    except (RuntimeError, ValueError, TypeError, OverflowError) as err:
        raise ModelError(f"model {label}: fails on inputs of shape {shape}: {err}") from None
    model.eval()  # what evaluates and scores held-out data: dropout off; the trainer trains its own copy
    _probe_batched(config, model, shape, dataset.n_classes)
    return model


# what torch.func.vmap cannot batch in a forward pass, by a phrase of its error: what to do instead
_UNBATCHABLE = (
    (
        "random operation",
        "it draws random numbers in forward(); only torch.nn's dropout layers (Dropout, Dropout1d/2d/3d, "
        "AlphaDropout, FeatureAlphaDropout) are supported, with masks keyed per peer: use one of those "
        "instead of F.dropout, torch.rand/randn/bernoulli or a random layer of your own",
    ),
    (
        ".item()",
        "it reads tensor values in Python (`if x.sum() > 0`, .item(), .tolist(), float(x)), which differ "
        "per peer: use tensor ops such as torch.where",
    ),
    (
        "dynamic shape",
        "an op's output shape depends on the values (nonzero, masked_select, unique, boolean-mask "
        "indexing): use fixed-shape ops such as torch.where",
    ),
    (
        "in-place operation",
        "it updates in place a tensor from outside forward() (a buffer or a captured tensor): keep "
        "forward() free of side effects",
    ),
    ("doesn't have storage", "it leaves torch (.numpy(), .data_ptr()): keep forward() in torch ops"),
)
# source outside these is the user's: where a failure is reported
_NOT_USERS = tuple(
    str(folder.resolve())
    for folder in (
        Path(torch.__file__).parent,
        Path(__file__).parents[1],
        Path(sysconfig.get_paths()["stdlib"]),
    )
)


def _user_line(err: BaseException) -> str:
    """' (at file:line)' of the innermost frame in the user's code that raised `err`, '' if none."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(_NOT_USERS)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _probe_batched(config: ExperimentConfig, model: nn.Module, shape: tuple[int, ...], classes: int) -> None:
    """Run `model` once as the engine does, on 2 blank peers of 2 samples: train (every peer's pass under
    torch.func.vmap; DP-SGD's per-sample passes under a vmap in a vmap) and evaluate. A model it cannot
    run fails here, named, with what to change, rather than mid-run in a traceback."""
    label = f"model {config.model.label()}"
    x, y = torch.zeros(2, *shape), torch.zeros(2, dtype=torch.long)
    private = None
    if getattr(config.privacy, "record_level", False):
        private = PrivateSteps(1.0, torch.zeros(2), "shuffle", config.seed)
    try:
        with torch.no_grad():
            for size in (1, 2):  # DP-SGD's passes are of one sample
                _check_logits(label, model(x[:size]), size, classes)
        trainer = BatchedTrainer(
            model,
            LocalData.from_parts(x, y, [np.arange(2), np.arange(2)]),
            batch_size=2,
            epochs=1,
            optimizer=config.optimizer,
            lr=config.lr,
            seed=config.seed,
        )
        params = trainer.train(ParamLayout.of(model).flatten(model).repeat(2, 1), 0, private=private)
        BatchedEvaluator(model, x, y)(params)
    except ModelError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError, IndexError) as err:
        message = str(err).strip().split("\n")[0]
        hint = next((hint for phrase, hint in _UNBATCHABLE if phrase in message), message)
        raise ModelError(
            f"{label} cannot be trained with its peers batched (torch.func.vmap){_user_line(err)}: {hint}"
        ) from None
    if x._version:  # something wrote to the blank inputs (the evaluator passes views of the test set)
        raise ModelError(
            f"{label} changes its input in place (e.g. x.sub_(mean), or ReLU(inplace=True) on it), which "
            "would overwrite the test set: use out-of-place ops (x = x - mean)"
        )


def _check_logits(label: str, logits: object, size: int, classes: int) -> None:
    """Refuse a forward pass whose output is not logits of shape (batch, classes)."""
    if not isinstance(logits, torch.Tensor) or logits.shape != (size, classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(
            f"{label} returns {got} for a batch of {size}; it must return logits of shape (batch, classes) "
            f"= ({size}, {classes}) (e.g. a squeeze() drops a batch of 1)"
        )


def _check_tasks(config: ExperimentConfig, dataset: Dataset) -> None:
    classes = dataset.n_classes
    unknown = sorted({c for task in config.tasks or [] for c in task if c >= classes})
    if unknown:
        raise ConfigError(
            f"tasks: no class {', '.join(map(str, unknown))} in dataset {dataset.name!r} "
            f"(classes 0 to {classes - 1})"
        )


def _build(config: ExperimentConfig, peer: int | range | None, own: OwnData | None) -> Setup:
    started = time.perf_counter()
    cfg = config
    rule = cfg.rule.model_copy(deep=True)  # its learned state belongs to this executor
    if own is None:
        check_fits([dataset_need(cfg)])
        with config_field("dataset"):
            dataset = cfg.dataset.load(cfg.seed)
    else:
        dataset = own.train
    _check_tasks(cfg, dataset)
    parts, counts, row_ids = parts_of(cfg, dataset, peer, own)
    ids = torch.tensor(row_ids, dtype=torch.long)
    n = len(counts)
    train_parts, held_parts = split_holdout(
        parts, cfg.holdout, derive_seed(cfg.seed, Stream.HOLDOUT), row_ids
    )
    labels = dataset.y_train.numpy()
    histogram = label_histogram(labels, train_parts, dataset.n_classes)
    with config_field("topology"):
        graph = (
            build_graph(cfg.topology, n, derive_seed(cfg.seed, Stream.TOPOLOGY), cfg.allow_disconnected)
            if rule.uses_topology
            else PeerGraph(n, torch.zeros(2, 0, dtype=torch.long))
        )
    model = _checked_model(cfg, dataset, len(row_ids), max(len(part) for part in train_parts))
    layout = ParamLayout.of(model)

    build = _model_builder(cfg, dataset)
    # rules whose server broadcasts its model (FedAvg, FLoBC) start every peer from peer 0's draw
    sources = torch.zeros_like(ids) if rule.broadcasts_initial else ids
    init = cfg.init.initial_params(build, n, cfg.seed, graph, sources)
    params = init.params
    attackers = choose_attackers(n, cfg.attackers, cfg.seed)[ids]
    adversary = None
    y = dataset.y_train
    if cfg.attack is not None and not rule.pooled and attackers.any():
        adversary = Adversary(cfg.attack, attackers, params[attackers].clone(), cfg.seed, ids[attackers])
        own_samples = torch.as_tensor(np.concatenate([parts[k] for k in attackers.nonzero().flatten()]))
        y = adversary.poison(y, own_samples, dataset.n_classes)
    honest = torch.ones(len(row_ids), dtype=torch.bool) if adversary is None else adversary.honest
    data = LocalData.from_parts(dataset.x_train, y, train_parts, ids)
    schedule = TaskSchedule(cfg.tasks, cfg.rounds)
    task_data = [
        LocalData.from_parts(dataset.x_train, y, schedule.restrict(train_parts, labels, task), ids)
        for task in range(len(schedule.tasks))
    ]
    learner = PeerLearning(
        model, data if cfg.holdout == 0 else LocalData.from_parts(dataset.x_train, y, held_parts, ids), ids
    )
    trainer = BatchedTrainer(
        model,
        data,
        batch_size=cfg.batch_size,
        epochs=cfg.local_epochs,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        seed=cfg.seed,
    )
    if own is None:
        x_test, y_test = dataset.x_test, dataset.y_test
    elif own.test is not None:
        x_test, y_test = own.test.x_train, own.test.y_train
    elif len(dataset.y_test):  # its --data spec named a test set of its own (test_path, x_test)
        x_test, y_test = dataset.x_test, dataset.y_test
    else:  # its held-out share
        held = torch.as_tensor(held_parts[0], dtype=torch.long)
        x_test, y_test = dataset.x_train[held], y[held]
    evaluator = BatchedEvaluator(model, x_test, y_test)
    task_evaluators = [
        BatchedEvaluator(model, x_test[mask], y_test[mask]) for mask in schedule.test_masks(y_test)
    ]
    setup = Setup(
        cfg,
        rule,
        dataset,
        ids,
        counts,
        graph,
        model,
        layout,
        init,
        params,
        adversary,
        honest,
        data,
        schedule,
        task_data,
        learner,
        trainer,
        evaluator,
        task_evaluators,
        histogram,
        data.counts,
        0.0,
    )
    setup.private_training()  # privacy the accountant cannot meet fails at set-up (the search is cached)
    trainer.warm_up(params)  # torch.func's first call costs ~1 s: count it as set-up
    setup.setup_s = time.perf_counter() - started
    return setup
