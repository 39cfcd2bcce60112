"""The peer axis sharded over ranks with ``torch.distributed``: each rank holds a block of peers.

Rank r of R holds peers ``blocks[r]`` (consecutive ids, sizes differing by at most one): their data,
parameters and optimizer state (:meth:`ppaia.experiment.Setup.block`); the simulator's loop runs
unchanged on that block through a :class:`ShardedAxis`. Of the other peers a rank holds only the few
integers per peer the plan needs (sample counts, the topology's links). Every rank loads the dataset
and splits it as one process would (its block's sample tables index into it): the data is shared, the
per-peer state (N × D each) is not.

Why the result does not depend on R: every rank draws each round's plan itself, from the shared seed
and the whole topology, so all ranks hold the same plan; and every per-peer draw (data order, dropout
masks, DP noise, attack noise, held-out split, initial model) is keyed by the peer's global id
(:mod:`ppaia.seeding`), so a peer trains the same whichever rank holds it. Only summation orders
differ, within floating-point tolerance.

What crosses ranks, per mixing step of the plan (:meth:`ShardedAxis.apply_plan`):

- a *linear* step (the rule's ``combine`` is the weighted sum: consensus, gossip, p2pl, FedAvg's mean)
  whose result rows are fewer than the rows some rank would have to receive (FedAvg: one server row
  from every client) is an ``all_reduce``: each rank adds up its own senders' share of every result
  row, ``n_rows × D`` floats;
- any other step (sparse topologies, learned trust, the robust and self-centred rules, FedAvg with a
  robust aggregator) sends each rank exactly the rows its receivers read from other ranks, in one
  ``all_to_all`` (a ring: the two boundary rows; learned trust: its peers' partners on other ranks;
  a server-side robust aggregate: every client's row); a step nobody needs rows for sends nothing.

Per evaluated round each rank sends its peers' accuracy and loss (and flags, ε, a rule's snapshot
rows), and two sums for the consensus distance; the root (rank 0) gets the final parameters. Output
files are written by the root alone (the command line's job).

Started by ``torchrun`` (its environment: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), by
``ppaia run --ranks R`` (which starts torchrun), or by any launcher passing an ``init_method``. Gloo
carries CPU tensors; with a CUDA device NCCL carries the device's.
"""

from __future__ import annotations

import datetime
import importlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ppaia.config import ConfigError, ExperimentConfig
from ppaia.devices import resolve_device
from ppaia.rules import CooperationRule, RoundContext, RoundPlan
from ppaia.simulation.axis import PeerAxis
from ppaia.simulation.engine import BYTES_PER_VALUE, Simulation
from ppaia.topology.mixing import Mixing

__all__ = [
    "ShardedAxis",
    "Share",
    "check_shardable",
    "launched",
    "peer_blocks",
    "process_group",
    "sharded_simulation",
]

TIMEOUT = datetime.timedelta(minutes=10)  # a rank that waits longer on the others gives up, named
CHUNK_VALUES = 2**22  # float64 values a rank holds at once for the consensus distance (32 MiB)


def launched() -> bool:
    """Whether this process is one of several ranks started by torchrun (its environment says so)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def peer_blocks(n_peers: int, ranks: int) -> list[range]:
    """Consecutive blocks of peer ids, one per rank, sizes differing by at most one (the first larger)."""
    size, extra = divmod(n_peers, ranks)
    starts = [rank * size + min(rank, extra) for rank in range(ranks + 1)]
    return [range(starts[rank], starts[rank + 1]) for rank in range(ranks)]


def check_shardable(config: ExperimentConfig, ranks: int) -> None:
    """ConfigError unless `config` can run as `ranks` blocks of peers (before any rank starts)."""
    rule = config.rule
    if ranks < 1:
        raise ConfigError(f"--ranks {ranks}: need at least one rank")
    if ranks > config.peers:
        raise ConfigError(f"--ranks {ranks}: more ranks than peers ({config.peers}); every rank needs a peer")
    if rule.pooled:
        raise ConfigError(f"rule {rule.name!r} pools all data on one model: there is no peer axis to shard")
    if config.churn is not None:
        raise ConfigError("churn: a join/leave schedule runs in one process only (leave out --ranks)")
    if type(rule).prepare is not CooperationRule.prepare:
        raise ConfigError(
            f"rule {rule.label()} keeps models for the whole swarm between rounds (its releases): it runs "
            "in one process only (leave out --ranks)"
        )


@contextmanager
def process_group(
    device: torch.device, init_method: str | None = None, rank: int | None = None, world: int | None = None
) -> Iterator[None]:
    """Join the ranks for the span of the block (torchrun's environment when `init_method` is None),
    unless this process already has, and leave again. Gloo for CPU tensors, NCCL for CUDA ones."""
    if dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Before the group exists: imported later (a model's first call under a tracing mode imports it),
    # torch._dynamo's distributed modules keep the group alive past destroy_process_group, and Gloo's
    # worker threads then free their last work during interpreter shutdown: SIGABRT in a rank that
    # had finished (1 run in 10 or so on 2 loaded cores).
    importlib.import_module("torch._dynamo")
    backend = "gloo" if device.type == "cpu" else "cpu:gloo,cuda:nccl"
    dist.init_process_group(
        backend,
        init_method=init_method or "env://",
        rank=-1 if rank is None else rank,
        world_size=-1 if world is None else world,
        timeout=TIMEOUT,
    )
    try:
        yield
        dist.barrier()  # no rank leaves while another may still be receiving from it
    finally:
        dist.destroy_process_group()


def sharded_simulation(config: ExperimentConfig) -> Simulation:
    """This rank's part of a run sharded over the process group (joined: :func:`process_group`)."""
    check_shardable(config, dist.get_world_size())
    return Simulation(config, ShardedAxis(config.peers, resolve_device(config.device)))


@dataclass(frozen=True)
class Share:
    """One rank's part of a mixing step: the result rows its peers receive, over the senders they read.

    `step` is that part as a step of its own (its senders are the stacked rows of peers `senders`,
    sorted; its targets are peer ids), what a rule's ``combine`` takes; `senders` may lie on any rank."""

    step: Mixing
    senders: torch.Tensor

    @classmethod
    def of(cls, step: Mixing, block: range) -> Share | None:
        """The share of the peers in `block`; None when the step writes to none of them."""
        hit = (step.targets >= block.start) & (step.targets < block.stop)
        if not bool(hit.any()):
            return None
        rows = torch.unique(step.target_rows[hit])
        keep = torch.isin(step.rows, rows)
        senders, inverse = torch.unique(step.sender_peers()[keep], return_inverse=True)
        part = Mixing(
            torch.searchsorted(rows, step.rows[keep]),
            inverse,
            step.weights[keep],
            len(rows),
            step.targets[hit],
            torch.searchsorted(rows, step.target_rows[hit]),
            senders,
        )
        return cls(part, senders)

    def within(self, block: range) -> torch.Tensor:
        """The senders that `block` holds."""
        return self.senders[(self.senders >= block.start) & (self.senders < block.stop)]


class ShardedAxis(PeerAxis):
    """This rank's block of peers in the process group, and the collectives that join the blocks.

    `traffic` counts the payload bytes this rank has sent by purpose (``mixing``: rows and partial sums
    in cooperation; ``metrics``: everything evaluation, divergence checks and the final gather send).
    """

    def __init__(self, n_peers: int, device: torch.device) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.blocks = peer_blocks(n_peers, self.world)
        self.block = self.blocks[self.rank]
        self.widest = max(len(block) for block in self.blocks)
        self.device = device  # where the collectives' tensors live (NCCL carries CUDA tensors only)
        self.traffic = {"mixing": 0, "metrics": 0}

    @property
    def rows(self) -> range:
        return self.block

    @property
    def root(self) -> bool:
        return self.rank == 0

    def local(self, mask: torch.Tensor) -> torch.Tensor:
        return mask[self.block.start : self.block.stop]

    def _padded(self, values: torch.Tensor) -> torch.Tensor:
        """`values` ([block, ...]) on the collectives' device, padded to the widest block (a copy only
        when it must be); bool as uint8 (not every backend carries bools)."""
        values = values.to(self.device)
        if len(values) < self.widest:
            values = torch.cat([values, values.new_zeros((self.widest - len(values), *values.shape[1:]))])
        values = values.contiguous()
        return values.view(torch.uint8) if values.dtype == torch.bool else values

    def _joined(self, padded: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Room for every rank's `padded` in one tensor [ranks, widest, ...], and a view of each part."""
        whole = padded.new_empty((self.world, *padded.shape))
        return whole, list(whole.unbind(0))

    def _unpadded(self, whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of `whole` in peer order (a view when the blocks are equal), as `like`."""
        if all(len(block) == self.widest for block in self.blocks):
            joined = whole.flatten(0, 1)
        else:
            joined = torch.cat([part[: len(block)] for part, block in zip(whole, self.blocks, strict=True)])
        joined = joined.view(torch.bool) if like.dtype == torch.bool else joined
        return joined.to(like.device)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        padded = self._padded(values)
        whole, parts = self._joined(padded)
        dist.all_gather(parts, padded)
        self.traffic["metrics"] += padded.numel() * padded.element_size()
        return self._unpadded(whole, values)

    def collect(self, values: torch.Tensor) -> torch.Tensor:
        padded = self._padded(values)
        if not self.root:
            dist.gather(padded, None, dst=0)
            self.traffic["metrics"] += padded.numel() * padded.element_size()
            return values
        whole, parts = self._joined(padded)
        dist.gather(padded, parts, dst=0)
        return self._unpadded(whole, values)

    def peers(self, rows: Sequence[int]) -> list[int]:
        """A count first (one number: the usual answer is none), the flags only when some rank has any."""
        if not int(self._total(torch.tensor([len(rows)]))):
            return []
        mask = torch.zeros(len(self.block), dtype=torch.bool)
        mask[list(rows)] = True
        return self.gather(mask).nonzero().flatten().tolist()

    def texts(self, lines: list[str]) -> list[str]:
        every: list[list[str] | None] = [None] * self.world
        dist.all_gather_object(every, lines)
        return [line for part in every for line in part or []]

    def state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each entry made every peer's: a sparse one (learned trust: this block's rows) by joining the
        ranks' entries, a dense one of this block's rows (ε) by :meth:`gather`."""
        merged = {}
        for name, value in state.items():
            if value.is_sparse:
                parts: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.world
                dist.all_gather_object(parts, (value.indices().cpu(), value.values().cpu()))
                indices = torch.cat([part[0] for part in parts if part is not None], dim=1)
                values = torch.cat([part[1] for part in parts if part is not None])
                merged[name] = torch.sparse_coo_tensor(indices, values, value.shape).coalesce()
            elif value.dim() and value.shape[0] == len(self.block):
                merged[name] = self.gather(value)
            else:
                merged[name] = value
        return merged

    def _total(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over the ranks (on this rank's device)."""
        value = value.to(self.device)
        dist.all_reduce(value)
        self.traffic["metrics"] += value.numel() * value.element_size()
        return value

    def consensus_distance(self, params: torch.Tensor, honest: torch.Tensor) -> float:
        """As one process computes it, from two sums over the ranks; in float64 over chunks of rows, so
        that no float64 copy of the block is made (at 50,000 peers a rank it would be 2 GB each)."""
        chunks = honest.nonzero().flatten().to(params.device).split(max(1, CHUNK_VALUES // params.shape[1]))
        count = self._total(torch.tensor(float(honest.sum()), dtype=torch.float64))
        total = params.new_zeros(params.shape[1], dtype=torch.float64)
        for rows in chunks:
            total += params[rows].sum(0, dtype=torch.float64)
        mean = self._total(total) / count
        spread = params.new_zeros((), dtype=torch.float64)
        for rows in chunks:
            spread += (params[rows].double() - mean).square().sum()
        return (self._total(spread) / count).item()

    def apply_plan(
        self, rule: CooperationRule, plan: RoundPlan, params: torch.Tensor, ctx: RoundContext
    ) -> torch.Tensor:
        for step in plan.steps:
            params = self._apply_step(rule, step, params, ctx)
        return params

    def _apply_step(
        self, rule: CooperationRule, step: Mixing, params: torch.Tensor, ctx: RoundContext
    ) -> torch.Tensor:
        shares = [Share.of(step, block) for block in self.blocks]
        remote = [
            0 if share is None else len(share.senders) - len(share.within(block))
            for share, block in zip(shares, self.blocks, strict=True)
        ]
        if rule.linear() and step.n_rows < max(remote):
            return self._reduced(step, params)
        received = self._exchanged(shares, params) if max(remote) else None
        mine = shares[self.rank]
        if mine is None:
            return params
        out = self._combined(rule, mine, params, received, ctx)
        return self._write(params, mine.step, out)

    def _combined(
        self,
        rule: CooperationRule,
        mine: Share,
        params: torch.Tensor,
        received: torch.Tensor | None,
        ctx: RoundContext,
    ) -> torch.Tensor:
        """This block's result rows of the step, from its own rows and the `received` ones (the other
        ranks' senders, in sender order). A linear rule sums the two parts apart, copying no row; any
        other rule's ``combine`` reads its senders stacked."""
        start, device = self.block.start, params.device
        local = (mine.senders >= start) & (mine.senders < self.block.stop)
        if rule.linear():
            step, here = mine.step, local[mine.step.senders]

            def part(keep: torch.Tensor, senders: torch.Tensor) -> Mixing:
                return Mixing(
                    step.rows[keep], senders, step.weights[keep], step.n_rows, step.targets, step.target_rows
                )

            out = part(here, mine.senders[step.senders[here]] - start).weighted_sum(params)
            if received is not None and not bool(here.all()):
                position = torch.cumsum(~local, 0) - 1  # a remote sender's row in `received`
                out += part(~here, position[step.senders[~here]]).weighted_sum(received)
            return out
        own = params[(mine.senders[local] - start).to(device)]
        if received is None:
            return rule.combine(own, mine.step, ctx)
        before = int((mine.senders < start).sum())  # senders are sorted: those of lower ranks first
        return rule.combine(torch.cat([received[:before], own, received[before:]]), mine.step, ctx)

    def _write(self, params: torch.Tensor, step: Mixing, out: torch.Tensor) -> torch.Tensor:
        """Store result rows `out` of `step` into this block's peers among its targets; the result
        itself when it is every row of the block in order (consensus), as :meth:`Mixing.write` does."""
        start = self.block.start
        hit = (step.targets >= start) & (step.targets < self.block.stop)
        targets, target_rows = step.targets[hit] - start, step.target_rows[hit]
        every = torch.arange(len(self.block))
        whole = step.n_rows == len(targets) == len(every)
        if whole and torch.equal(targets, every) and torch.equal(target_rows, every):
            return out
        device = params.device
        return params.index_copy_(0, targets.to(device), out[target_rows.to(device)])

    def _reduced(self, step: Mixing, params: torch.Tensor) -> torch.Tensor:
        """A linear step as an all_reduce: each rank's senders' share of every result row, summed."""
        senders = step.sender_peers()
        here = (senders >= self.block.start) & (senders < self.block.stop)
        share = Mixing(
            step.rows[here],
            senders[here] - self.block.start,
            step.weights[here],
            step.n_rows,
            step.targets,
            step.target_rows,
        )
        total = share.weighted_sum(params).to(self.device)
        dist.all_reduce(total)
        self.traffic["mixing"] += total.numel() * total.element_size()
        return self._write(params, step, total.to(params.device))

    def _exchanged(self, shares: list[Share | None], params: torch.Tensor) -> torch.Tensor | None:
        """One all_to_all: each rank receives, from each other rank, the rows its share reads there.
        Returns the rows received (the other ranks' senders of this rank's share, in sender order; the
        ranks ascend with the ids they hold), None without a share."""
        start, device = self.block.start, params.device
        outgoing = [
            torch.empty(0, dtype=torch.long)
            if share is None or rank == self.rank
            else share.within(self.block) - start
            for rank, share in enumerate(shares)
        ]
        mine = shares[self.rank]
        incoming = [
            0 if mine is None or rank == self.rank else len(mine.within(block))
            for rank, block in enumerate(self.blocks)
        ]
        sent = params[torch.cat(outgoing).to(device)].to(self.device)
        received = sent.new_empty((sum(incoming), params.shape[1]))
        dist.all_to_all_single(received, sent, incoming, [len(rows) for rows in outgoing])
        self.traffic["mixing"] += sent.numel() * BYTES_PER_VALUE
        return None if mine is None else received.to(device)
