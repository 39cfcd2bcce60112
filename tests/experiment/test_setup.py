"""Experiment set-up: a peer's slice is row i of the batch, and a peer may bring its own data."""

import numpy as np
import pytest
import torch

import ppaia
from ppaia.data import DataError
from ppaia.experiment import OwnData, Setup

BASE = {"peers": 6, "rounds": 2, "model": "mlp(hidden=[8])", "partition": "dirichlet(0.5)", "seed": 4}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"init": "independent", "holdout": 0.25},
        {"init": "max_norm", "topology": "erdos_renyi(p=0.5)", "allow_disconnected": True},
        {"rule": "fedavg", "init": "independent"},
        {"attack": "label_flip", "attackers": [2, 5]},
        {"tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], "holdout": 0.2},
    ],
    ids=["default", "independent-holdout", "max_norm", "fedavg", "attackers", "tasks"],
)
def test_a_peers_slice_is_its_row_of_the_batch(change):
    config = ppaia.ExperimentConfig.model_validate({**BASE, **change})
    batch = Setup.batch(config)
    for peer in range(config.peers):
        part = Setup.peer(config, peer)
        assert part.ids.tolist() == [peer]
        assert torch.equal(part.params[0], batch.params[peer])
        assert torch.equal(part.counts, batch.counts)
        assert torch.equal(part.data.peer_samples(0), batch.data.peer_samples(peer))
        assert torch.equal(
            part.data.y[part.data.peer_samples(0)], batch.data.y[batch.data.peer_samples(peer)]
        )
        assert torch.equal(part.learner.holdout.peer_samples(0), batch.learner.holdout.peer_samples(peer))
        for task, data in enumerate(part.task_data):
            assert torch.equal(data.peer_samples(0), batch.task_data[task].peer_samples(peer))
        assert bool(part.honest[0]) == bool(batch.honest[peer])
        np.testing.assert_array_equal(part.histogram[0], batch.histogram[peer])


def write(folder, name, x, y):
    np.savez(folder / name, x=x, y=y)
    return f"npz(path='{folder / name}', classes=10)"


def test_a_peer_with_its_own_data_trains_and_evaluates_on_it(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 10, 50)
    own = OwnData.load(write(tmp_path, "mine.npz", x, y), write(tmp_path, "test.npz", x[:20], y[:20]), seed=0)
    config = ppaia.ExperimentConfig.model_validate({**BASE, "holdout": 0.2})
    setup = Setup.own(config, 3, own)
    assert setup.ids.tolist() == [3] and setup.data.counts.tolist() == [40]  # 10 of 50 held out
    assert setup.evaluator.y.numel() == 20  # its --test file
    no_test = Setup.own(config, 3, OwnData(own.train))
    assert no_test.evaluator.y.numel() == 10  # else its held-out share


def test_what_a_peer_with_its_own_data_refuses(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 10, 30)
    own = OwnData.load(write(tmp_path, "mine.npz", x, y), None, seed=0)
    config = ppaia.ExperimentConfig.model_validate(BASE)
    with pytest.raises(ppaia.ConfigError, match="give --test, or set holdout"):
        Setup.own(config, 0, own)
    for change in ({"rule": "fedavg"}, {"mixing": "data_size"}):
        with pytest.raises(ppaia.ConfigError, match="sample count"):
            Setup.own(ppaia.ExperimentConfig.model_validate({**BASE, "holdout": 0.2, **change}), 0, own)
    with pytest.raises(ppaia.ConfigError, match="peer index 6"):
        Setup.own(ppaia.ExperimentConfig.model_validate({**BASE, "holdout": 0.2}), 6, own)
    np.savez(tmp_path / "wide.npz", x=rng.normal(size=(5, 7)).astype(np.float32), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match="input shape"):
        OwnData.load(str(tmp_path / "mine.npz"), f"npz(path='{tmp_path / 'wide.npz'}', classes=10)", seed=0)
    np.savez(tmp_path / "three.npz", x=x[:5], y=np.array([0, 1, 2, 0, 1]))
    with pytest.raises(DataError, match="classes"):
        OwnData.load(str(tmp_path / "mine.npz"), str(tmp_path / "three.npz"), seed=0)
    with pytest.raises(DataError, match=r"--data 'nothing\.npz': .*no such file"):
        OwnData.load("nothing.npz", None, seed=0)


@pytest.mark.parametrize(
    "change",
    [{"rule": "fedavg"}, {"mixing": "data_size"}, {"rule": "p2pl(weights='data_size')"}],
    ids=["fedavg", "mixing-data_size", "p2pl-data_size"],
)
def test_rules_that_weigh_by_sample_count_are_refused_for_own_data(tmp_path, change):
    rng = np.random.default_rng(2)
    own = OwnData.load(
        write(tmp_path, "mine.npz", rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 10, 30)),
        None,
        0,
    )
    config = ppaia.ExperimentConfig.model_validate({**BASE, "holdout": 0.2, **change})
    with pytest.raises(ppaia.ConfigError, match="sample count"):
        Setup.own(config, 0, own)
    robust = ppaia.ExperimentConfig.model_validate(
        {**BASE, "holdout": 0.2, "rule": "fedavg(aggregator='median')"}
    )
    assert Setup.own(robust, 0, own).ids.tolist() == [0]  # a robust aggregate ignores the counts


def test_a_test_set_named_in_the_data_spec_is_the_peers_test_set(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 10, 40)
    np.savez(tmp_path / "both.npz", x=x, y=y, x_test=x[:7], y_test=y[:7])
    own = OwnData.load(f"npz(path='{tmp_path / 'both.npz'}', classes=10)", None, seed=0)
    setup = Setup.own(ppaia.ExperimentConfig.model_validate({**BASE, "holdout": 0.2}), 1, own)
    assert setup.evaluator.y.numel() == 7
