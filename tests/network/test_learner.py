"""A networked peer's learning half reproduces the simulator row by row (no sockets involved)."""

import pytest
import torch
from in_process import run_peers

import ppaia
from ppaia.network.learner import PeerLearner, unsupported

BASE = {"peers": 5, "rounds": 3, "partition": "dirichlet(1.0)", "model": "mlp(hidden=[16])", "seed": 2}


@pytest.mark.parametrize(
    "rule",
    ["consensus(steps=2)", "gossip", "fedavg(fraction=0.6)", "learned_trust(partners=2)", "median", "p2pl"],
)
def test_peers_passing_models_reproduce_the_simulator(rule):
    table = {**BASE, "rule": rule, "holdout": 0.2, "topology": "complete"}
    config = ppaia.ExperimentConfig.model_validate(table)
    expected = ppaia.run(config).params
    torch.testing.assert_close(run_peers(config), expected, rtol=1e-4, atol=1e-5)


def test_a_missing_neighbours_weight_goes_to_the_receiver():
    config = ppaia.ExperimentConfig.model_validate({**BASE, "rule": "consensus", "topology": "ring"})
    with_all = run_peers(config)
    without_2 = run_peers(config, drop={2})
    assert torch.isfinite(without_2).all()
    assert not torch.allclose(with_all[1], without_2[1])  # peer 1 lost a neighbour


def test_what_a_networked_peer_refuses():
    for change in ({"rule": "centralized"}, {"rule": "flobc", "holdout": 0.2}, {"privacy": "update_dp"}):
        config = ppaia.ExperimentConfig.model_validate({**BASE, **change})
        assert unsupported(config)
        with pytest.raises(ValueError, match="does not support"):
            PeerLearner(config, 0)
    with pytest.raises(ValueError, match="partition"):
        PeerLearner(ppaia.ExperimentConfig.model_validate(BASE), 5)


def test_broadcast_steps_are_computed_by_their_smallest_target():
    from ppaia.network.learner import step_role
    from ppaia.topology.mixing import Mixing

    # two result rows: row 0 (senders 1, 2) goes to peers 1 and 3, row 1 (sender 0) to peer 2
    step = Mixing(
        torch.tensor([0, 0, 1]),
        torch.tensor([1, 2, 0]),
        torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64),
        2,
        torch.tensor([1, 3, 2]),
        torch.tensor([0, 0, 1]),
    )
    assert step_role(step, 0).row is None and step_role(step, 0).server is None  # not a target
    server = step_role(step, 1)
    assert server.server is None and server.senders == [1, 2]
    assert step_role(step, 3).row is None and step_role(step, 3).server == 1
    assert step_role(step, 2).senders == [0]
