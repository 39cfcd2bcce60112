"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), batched over peers.

After a peer has learnt a task it records the diagonal Fisher information F of its model on its own data
and its parameters θ* (the anchor). While it learns something else (e.g. from its neighbours), the penalty
(λ/2) Σ_i F_i (θ_i − θ*_i)² keeps the weights that mattered for the first task near their old values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ppaia.learning.layout import ParamLayout
from ppaia.learning.local import ELEMENT_BUDGET, LocalData, activation_size, peer_chunks
from ppaia.seeding import peer_uniform

__all__ = ["Anchor", "draw_fisher_samples", "ewc_gradient", "fisher_diagonal", "sampled_label"]


def draw_fisher_samples(
    data: LocalData, rows: torch.Tensor, samples: int, key: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws behind :func:`fisher_diagonal`, for the listed rows of `data` at once.

    Returns sample ids ``[P, samples]`` (uniform with replacement from each peer's own samples; a peer
    without samples gets ids that are never used) and uniforms ``[P, samples]`` in [0, 1) that pick the
    sampled labels (see :func:`sampled_label`). Both are drawn in every mode, so a seed gives the same
    sample ids whatever the mode. A peer's draws come from its own counter-based stream (`key`, its peer
    id): the same whichever other peers are listed with it.
    """
    counts, ids = data.counts[rows], data.ids[rows]
    draws = peer_uniform(key, ids, 2 * samples)  # [:samples] pick the samples, [samples:] the labels
    positions = (draws[:, :samples] * counts.unsqueeze(1)).long()
    positions = torch.minimum(positions, (counts - 1).clamp(min=0).unsqueeze(1))
    if data.table.shape[1] == 0:  # no peer has any sample
        sample_ids = torch.zeros(len(rows), samples, dtype=torch.long)
    else:
        sample_ids = data.table[rows].gather(1, positions)
    return sample_ids, draws[:, samples:]


def sampled_label(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The class ŷ ~ Categorical(softmax(logits)) picked by a uniform in [0, 1) (inverse CDF; vmap-safe)."""
    cdf = logits.detach().softmax(-1).cumsum(-1)
    return (cdf <= uniform.unsqueeze(-1)).sum(-1).clamp(max=logits.shape[-1] - 1)


def fisher_diagonal(
    model: nn.Module,
    params: torch.Tensor,
    data: LocalData,
    peers: torch.Tensor,
    *,
    samples: int,
    mode: Literal["sampled", "empirical"],
    key: int,
) -> torch.Tensor:
    """Diagonal Fisher information of each listed peer's model ([P, D]) on `samples` of its own data.

    `params` holds the flat parameters of `data`'s rows (``[N, D]``, row p = θ of peer ``data.ids[p]``)
    and `peers` the rows wanted (a boolean mask over the N rows is accepted too). For each of them,
    `samples` sample ids are drawn uniformly with replacement from the peer's own samples and
    ``F_p = mean over the draws of (∂ log p(ŷ | x; θ_p) / ∂θ)²``, where ŷ is sampled from the model's
    own prediction (``mode="sampled"``: the true Fisher, estimated as in the original EWC code) or is the
    true label (``mode="empirical"``). A peer with no samples gets F = 0. All randomness comes from
    `key` (e.g. ``derive_seed(seed, Stream.FISHER, round)``) and each peer's id (see
    :func:`draw_fisher_samples`).

    Per-sample gradients are one ``vmap`` (peers) of ``vmap`` (samples) of ``grad``, chunked over peers
    and samples so that peers × samples × (D + activations per sample) stays within the element budget.
    """
    if mode not in ("sampled", "empirical"):
        raise ValueError(f"mode must be 'sampled' or 'empirical', got {mode!r}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if peers.dtype == torch.bool:
        peers = peers.nonzero().flatten()
    layout = ParamLayout.of(model)
    device = params.device  # the draws are made on the host (keyed per peer) and sent here
    fisher = torch.zeros(len(peers), layout.size, dtype=params.dtype, device=device)
    if len(peers) == 0:
        return fisher
    ids, uniforms = draw_fisher_samples(data, peers, samples, key)
    ids, uniforms = ids.to(device), uniforms.to(device)

    def log_likelihood(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, layout.unflatten(flat), (x.unsqueeze(0),))[0]
        label = sampled_label(logits, u) if mode == "sampled" else y
        return logits.log_softmax(-1).gather(-1, label.unsqueeze(-1)).squeeze(-1)

    per_peer = vmap(grad(log_likelihood), in_dims=(None, 0, 0, 0))
    batched = vmap(per_peer)
    per_sample = layout.size + activation_size(model, tuple(data.x.shape[1:]))
    budget = ELEMENT_BUDGET
    sample_chunk = max(1, min(samples, budget // per_sample))
    live = (data.counts[peers] > 0).nonzero().flatten()  # peers without samples keep F = 0
    for chunk in peer_chunks(len(live), sample_chunk, per_sample, budget):
        rows = live[chunk].to(device)
        theta = params[peers.to(device)[rows]]
        total = torch.zeros(len(rows), layout.size, dtype=params.dtype, device=device)
        for start in range(0, samples, sample_chunk):
            window = slice(start, start + sample_chunk)
            picked = ids[rows, window]
            total += batched(theta, data.x[picked], data.y[picked], uniforms[rows, window]).square().sum(1)
        fisher[rows] = total / samples
    return fisher


def ewc_gradient(
    params: torch.Tensor, fisher: torch.Tensor, anchor: torch.Tensor, strength: float
) -> torch.Tensor:
    """Gradient of the EWC penalty (strength/2) · Σ F ⊙ (θ − θ*)², i.e. strength · F ⊙ (θ − θ*).

    Shapes broadcast (one peer ``[D]`` or many ``[P, D]``); the trainer adds this to the data gradient.
    """
    return strength * fisher * (params - anchor)


@dataclass(frozen=True)
class Anchor:
    """An EWC penalty (strength/2)·Σ F ⊙ (θ − θ*)² on each peer's local loss (rows = all peers)."""

    strength: float
    fisher: torch.Tensor
    center: torch.Tensor

    def gradient(self, params: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The penalty's gradient at `params`, the parameters of rows `rows` (indices, on the host)."""
        rows = rows.to(self.fisher.device)
        return ewc_gradient(params, self.fisher[rows], self.center[rows], self.strength)
