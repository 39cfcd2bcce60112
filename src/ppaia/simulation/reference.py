"""Reference executor: a plain loop over one `nn.Module` per peer, for checking the batched engine.

Training uses torch.optim and autograd per peer; cooperation runs each rule's per-peer form
(:func:`ppaia.rules.apply_step_per_peer`, what a networked peer does); evaluation runs each module.
Same config and seed give the same numbers as :class:`Simulation` within floating-point tolerance.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ppaia.learning import epoch_order
from ppaia.learning.dropout import dropout_keys, keyed_dropout
from ppaia.rules import RoundContext, RoundPlan, apply_step_per_peer
from ppaia.simulation.engine import Simulation

__all__ = ["ReferenceSimulation"]


class ReferenceSimulation(Simulation):
    """The same experiment as :class:`Simulation`, run peer by peer."""

    def __init__(self, config) -> None:
        super().__init__(config)
        if getattr(config.privacy, "record_level", False):
            raise NotImplementedError(
                "the reference executor does not implement DP-SGD (update-level DP is shared)"
            )
        self.modules = [self.setup.build_model() for _ in range(self.n_peers)]
        self.dropout = [keyed_dropout(module) for module in self.modules]  # the trainer's keyed masks

    def train(self, params, round_, trainers, anchor=None, private=None) -> torch.Tensor:
        cfg, data, layout = self.config, self.setup.data, self.setup.layout
        counts = data.counts
        params = params.clone()
        for peer in trainers.nonzero().flatten().tolist():
            module, source = layout.load(self.modules[peer], params[peer]), self.dropout[peer]
            optimizer = cfg.optimizer.torch_optimizer(module.parameters(), cfg.lr)
            samples = data.peer_samples(peer)
            for epoch in range(cfg.local_epochs):  # the peer's own order, drawn for its row alone
                order = epoch_order(counts[[peer]], data.ids[[peer]], cfg.seed, round_, epoch)[0]
                shuffled = samples[order[: counts[peer]]]
                for step, batch in enumerate(shuffled.split(cfg.batch_size)):
                    optimizer.zero_grad()
                    key = dropout_keys(cfg.seed, round_, epoch, step, data.ids[[peer]])[0]
                    with nullcontext() if source is None else source(key):
                        loss = F.cross_entropy(module(data.x[batch]), data.y[batch])
                    if anchor is not None:  # EWC by autograd: (λ/2)·Σ F (θ − θ*)²
                        flat = torch.cat([p.reshape(-1) for p in module.parameters()])
                        gap = flat - anchor.center[peer]
                        loss = loss + 0.5 * anchor.strength * (anchor.fisher[peer] * gap * gap).sum()
                    loss.backward()
                    optimizer.step()
            params[peer] = layout.flatten(module)
        return params

    def cooperate(self, plan: RoundPlan, params: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        models = list(params)
        for step in plan.steps:
            models = apply_step_per_peer(self.rule, step, models, ctx)
        return torch.stack(models)

    @torch.no_grad()
    def evaluate(self, params: torch.Tensor, task: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.setup.dataset.x_test, self.setup.dataset.y_test
        if task is not None:
            mask = self.setup.schedule.test_masks(y)[task]
            x, y = x[mask], y[mask]
        accuracy, loss = torch.zeros(len(params)), torch.zeros(len(params))
        for row, flat in enumerate(params):  # every peer's, or those `eval_peers` drew
            logits = self.setup.layout.load(self.modules[row], flat)(x)
            accuracy[row] = (logits.argmax(1) == y).float().mean()
            loss[row] = F.cross_entropy(logits, y)
        return accuracy, loss
