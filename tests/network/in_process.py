"""Every peer's learner in one process, passing models by hand as the network would (test helper)."""

import torch

import ppaia
from ppaia.network.learner import PeerLearner


def run_peers(config: ppaia.ExperimentConfig, drop: set[int] = frozenset()) -> torch.Tensor:
    """Every peer's final parameters (see :func:`run_learners`)."""
    return torch.stack([learner.params for learner in run_learners(config, drop)])


def run_learners(
    config: ppaia.ExperimentConfig, drop: set[int] = frozenset(), learners: list[PeerLearner] | None = None
) -> list[PeerLearner]:
    """Every peer's learner in one process, passing models by hand as the network would; peers in
    `drop` never send anything."""
    learners = learners or [PeerLearner(config, i) for i in range(config.peers)]
    for round_ in range(1, config.rounds + 1):
        roles = []
        for learner in learners:
            ctx = learner.context(round_)
            trains, steps = learner.roles(ctx)
            roles.append((ctx, steps))
            if trains:
                learner.train(round_)
        for step in range(len(roles[0][1])):
            published = {i: learner.params.clone() for i, learner in enumerate(learners) if i not in drop}
            results = {}
            for i, (learner, (ctx, steps)) in enumerate(zip(learners, roles, strict=True)):
                role = steps[step]
                if role.row is not None and role.server is None:
                    received = {j: published[j] for j in role.senders if j in published and j != i}
                    results[i] = learner.combine(role.row, received, ctx)
            for i, (learner, (_, steps)) in enumerate(zip(learners, roles, strict=True)):
                if steps[step].server is not None:
                    learner.params = results[steps[step].server].clone()
                elif i in results:
                    learner.params = results[i]
    return learners
