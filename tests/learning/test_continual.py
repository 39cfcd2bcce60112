"""Continual learning: task schedules, forgetting, and EWC in the engine (parity, λ = 0, less forgetting)."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import ppaia
from ppaia import ExperimentConfig, ReferenceSimulation, Simulation
from ppaia.learning.continual import EWCSettings, TaskSchedule, forgetting

SMALL = {"peers": 6, "rounds": 3, "model": "mlp(hidden=[16])"}
HALVES = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


# --- schedule and metric --------------------------------------------------------------------------------


def test_tasks_split_the_rounds_evenly_in_order():
    schedule = TaskSchedule([[0, 1], [2, 3], [4, 5]], rounds=6)
    assert bool(schedule)
    assert [schedule.task_of(r) for r in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert [r for r in range(1, 7) if schedule.starts_task(r)] == [3, 5]
    assert schedule.task_of(0) == 0  # round 0 (the initial evaluation) belongs to the first task

    uneven = TaskSchedule(HALVES, rounds=7)
    tasks = [uneven.task_of(r) for r in range(1, 8)]
    assert tasks == sorted(tasks) and abs(tasks.count(0) - tasks.count(1)) <= 1
    assert [r for r in range(1, 8) if uneven.starts_task(r)] == [tasks.index(1) + 1]

    assert not TaskSchedule(None, rounds=5) and TaskSchedule(None, rounds=5).task_of(3) == 0
    assert not any(TaskSchedule(None, rounds=5).starts_task(r) for r in range(1, 6))


def test_restrict_keeps_only_the_tasks_classes():
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    parts = [np.array([0, 1, 2, 3, 4, 5]), np.array([6, 8, 10]), np.array([7, 9, 11])]
    schedule = TaskSchedule([[0, 1], [2, 3, 4, 5]], rounds=2)
    first = schedule.restrict(parts, labels, 0)
    assert [p.tolist() for p in first] == [[0, 1], [6], [7]]
    second = schedule.restrict(parts, labels, 1)
    assert [p.tolist() for p in second] == [[2, 3, 4, 5], [8, 10], [9, 11]]
    masks = schedule.test_masks(torch.as_tensor(labels))
    assert masks[0].tolist() == [label in (0, 1) for label in labels]
    assert (masks[0] ^ masks[1]).all()


def test_forgetting_is_the_mean_drop_from_each_finished_tasks_best():
    history = [
        {"task0_acc": 0.1, "task1_acc": 0.1, "task2_acc": 0.0},
        {"task0_acc": 0.9, "task1_acc": 0.2, "task2_acc": 0.0},
        {"task0_acc": 0.6, "task1_acc": 0.8, "task2_acc": 0.1},
        {"task0_acc": 0.5, "task1_acc": 0.7, "task2_acc": 0.9},
    ]
    assert forgetting(history, 0) == 0.0
    assert forgetting([], 2) == 0.0
    assert forgetting(history[:3], 1) == pytest.approx(0.9 - 0.6)
    assert forgetting(history, 1) == pytest.approx(0.9 - 0.5)
    assert forgetting(history, 2) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert forgetting([{"task0_acc": 0.3}, {"task0_acc": 0.7}], 1) == 0.0  # it improved


# --- EWC in the engine ----------------------------------------------------------------------------------


def test_ewc_with_strength_zero_changes_nothing():
    plain = ppaia.run(SMALL)
    zero = ppaia.run(SMALL | {"ewc": {"strength": 0, "samples": 20}})
    assert torch.equal(zero.params, plain.params)
    anchored = ppaia.run(SMALL | {"ewc": {"strength": 5, "samples": 20}})
    assert not torch.equal(anchored.params, plain.params)


PARITY_CASES = {
    "ewc-round": {"ewc": {"strength": 25, "samples": 50}},
    "update-dp": {"privacy": "update_dp(epsilon=8, clip=2)"},
    "tasks-ewc-task-fedavg": {
        "rounds": 4,
        "rule": "fedavg",
        "tasks": HALVES,
        "ewc": {"strength": 5, "samples": 50, "anchor": "task"},
    },
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_engine_matches_the_per_peer_reference(case):
    config = ExperimentConfig(**SMALL | PARITY_CASES[case])
    engine, reference = Simulation(config).run(), ReferenceSimulation(config).run()
    assert engine.params.isfinite().all()
    torch.testing.assert_close(engine.params, reference.params, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(engine.history, reference.history, strict=True):
        assert ours["acc_mean"] == pytest.approx(theirs["acc_mean"], abs=1e-3)
        assert ours["loss_mean"] == pytest.approx(theirs["loss_mean"], rel=1e-4)
        for key in ("task0_acc", "forgetting", "epsilon_max"):
            assert ours.get(key) == pytest.approx(theirs.get(key), abs=1e-3)


CONTINUAL = {
    "peers": 2,
    "rounds": 4,  # two rounds per task
    "rule": "fedavg",
    "partition": "iid",
    "model": "mlp(hidden=[16])",
    "lr": 0.1,
    "local_epochs": 2,
    "tasks": HALVES,
}


def test_ewc_anchored_at_the_task_reduces_forgetting():
    # Measured, seeds 0 to 3: without EWC forgetting 0.783 0.706 0.622 0.818 and task-0 accuracy
    # 0.161 0.272 0.339 0.160; with λ = 5: forgetting 0.356 0.544 0.289 0.453, task-0 accuracy
    # 0.589 0.433 0.672 0.525, task-1 accuracy 0.922 0.839 0.789 0.860. Two peers and four rounds make
    # one seed noisy (seed 1 gains 0.16), so the size of the effect is asserted on the mean over seeds.
    # (λ = 10 already diverges for seed 1: explicit SGD on the penalty needs lr·λ·max F < 2.)
    gains = []
    for seed in range(4):
        plain = ppaia.run(CONTINUAL | {"seed": seed}).final
        ewc = ppaia.run(CONTINUAL | {"seed": seed, "ewc": {"strength": 5, "anchor": "task"}}).final
        assert plain["forgetting"] > 0.5  # the second task overwrites the first
        assert ewc["forgetting"] < plain["forgetting"] and ewc["task0_acc"] > plain["task0_acc"]
        gains.append(
            (plain["forgetting"] - ewc["forgetting"], ewc["task0_acc"] - plain["task0_acc"], ewc["task1_acc"])
        )
    less_forgetting, task0_kept, task1 = torch.tensor(gains).mean(0).tolist()
    assert less_forgetting > 0.2 and task0_kept > 0.2
    assert task1 > 0.8  # and it still learns the new task


def test_task_anchor_needs_tasks_and_task_metrics_are_reported():
    with pytest.raises(ValidationError, match=r"ewc\.anchor = 'task' needs `tasks`"):
        ExperimentConfig(ewc={"anchor": "task"})
    with pytest.raises(ValidationError, match="tasks"):
        ExperimentConfig(rounds=1, tasks=HALVES)
    with pytest.raises(ValidationError):
        EWCSettings(strength=-1)
    assert ExperimentConfig(ewc={"anchor": "round"}).ewc.anchor == "round"

    result = ppaia.run(CONTINUAL | {"model": "logistic", "rounds": 2, "local_epochs": 1})
    for row in result.history:
        assert {"task0_acc", "task1_acc", "forgetting"} <= set(row)
        assert 0 <= row["task0_acc"] <= 1 and 0 <= row["task1_acc"] <= 1
    first, second = result.history[1], result.history[2]  # after task 0, after task 1
    assert first["task0_acc"] > 0.5 and first["task1_acc"] < 0.1  # task-1 classes not seen yet
    assert first["forgetting"] == 0.0
    assert second["forgetting"] == pytest.approx(
        max(row["task0_acc"] for row in result.history) - second["task0_acc"]
    )


def test_reported_sample_counts_cover_every_task():
    result = ppaia.run(
        {"peers": 2, "rounds": 2, "model": "logistic", "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]}
    )
    assert result.n_samples.tolist() == result.label_histogram.sum(1).tolist()


@pytest.mark.parametrize(
    "extra",
    [
        {"partition": "shards(2)", "rule": "fedavg(fraction=0.25)"},
        {"partition": "shards(1)", "rule": "consensus", "mixing": "data_size", "peers": 10},
    ],
)
def test_peers_with_no_data_in_a_task_do_not_break_count_weighted_rules(extra):
    result = ppaia.run({"peers": 4, "rounds": 4, "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]} | extra)
    assert result.params.isfinite().all()
