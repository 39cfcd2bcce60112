"""Setup.block: a rank's block of consecutive peers starts equal to those rows of the whole batch."""

import pytest
import torch

from ppaia import ExperimentConfig
from ppaia.config import ConfigError
from ppaia.experiment import Setup

CONFIG = {
    "peers": 7,
    "model": "mlp(hidden=[8])",
    "init": "independent",
    "holdout": 0.2,
    "rule": "learned_trust",
}


@pytest.mark.parametrize("block", [range(0, 3), range(3, 7), range(5, 6)])
def test_a_block_is_those_rows_of_the_batch(block):
    config = ExperimentConfig.model_validate(CONFIG)
    whole, part = Setup.batch(config), Setup.block(config, block)
    rows = list(block)
    assert torch.equal(part.ids, torch.tensor(rows))
    assert torch.equal(part.params, whole.params[rows])
    assert torch.equal(part.data.table, whole.data.table[rows][:, : part.data.table.shape[1]])
    assert torch.equal(part.data.counts, whole.data.counts[rows])
    assert torch.equal(part.learner.holdout.counts, whole.learner.holdout.counts[rows])
    assert torch.equal(part.counts, whole.counts)  # every peer's counts: what the plan reads
    assert (part.histogram == whole.histogram[rows]).all()


@pytest.mark.parametrize("block", [range(0, 0), range(5, 9), range(-1, 2), range(0, 6, 2)])
def test_a_block_outside_the_peers_is_refused(block):
    with pytest.raises(ConfigError, match="peer block"):
        Setup.block(ExperimentConfig.model_validate(CONFIG), block)


def test_a_pooling_rule_has_no_blocks():
    with pytest.raises(ConfigError, match="pools all data"):
        Setup.block(ExperimentConfig.model_validate({"rule": "centralized"}), range(0, 1))
