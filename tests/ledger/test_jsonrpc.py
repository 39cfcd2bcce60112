"""The same ledger code against a real local dev node (hardhat, installed by `make test` from npm) over
JSON-RPC on 127.0.0.1: the contract scenario and the publisher flow give the same results as in-process."""

import pytest
import torch

from ppaia import ExperimentConfig
from ppaia.ledger import Ledger, LedgerError, content_hash, run_publisher_flow
from ppaia.ledger.devchain import dev_node

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node_url():
    with dev_node() as url:
        yield url


def test_contract_scenario_over_json_rpc(node_url):
    ledger = Ledger.connect(node_url)
    owner, *others = ledger.accounts
    trainers, validators = others[:2], others[2:5]
    for account in trainers:
        ledger.register_trainer(account, sender=owner)
    for account in validators:
        ledger.register_validator(account, sender=owner)
    assert ledger.quorum() == 3
    update = ledger.submit_update(1, content_hash(b"update"), sender=trainers[0])
    for validator in validators[:2]:
        ledger.vote(update, True, 900_000, sender=validator)
    assert not ledger.is_accepted(update)
    with pytest.raises(LedgerError, match="already voted"):
        ledger.vote(update, True, 900_000, sender=validators[0])
    ledger.vote(update, True, 900_000, sender=validators[2])
    assert ledger.is_accepted(update)
    model = content_hash(b"model v1")
    assert ledger.propose_model(1, model, 910_000, sender=validators[0]) is None
    assert ledger.propose_model(1, model, 910_000, sender=validators[1]) is None
    assert ledger.propose_model(1, model, 910_000, sender=validators[2]) == 1
    assert ledger.latest_version().model_hash == model
    attached = Ledger.connect(node_url, ledger.contract.address)
    assert attached.latest_version() == ledger.latest_version()


def test_publisher_flow_over_json_rpc_equals_the_in_process_run(node_url):
    config = ExperimentConfig(peers=3, rounds=2, model="logistic", partition="iid")
    remote = run_publisher_flow(config, ledger=Ledger.connect(node_url))
    local = run_publisher_flow(config)
    assert torch.equal(remote.params, local.params)
    assert [r.model_hash for r in remote.rounds] == [r.model_hash for r in local.rounds]
    assert remote.ledger.latest_version().model_hash == remote.rounds[-1].model_hash
