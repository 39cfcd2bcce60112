"""Every part of a round keeps the host/device split (ppaia.devices), checked on a machine without a GPU.

A GPU run fails where a tensor made on the host (a factory call without ``device=``, a draw from a CPU
generator, rule state) meets the parameters on the device. This machine has no second device, so the
test makes one: :class:`DeviceSplit`, a torch function mode, follows every tensor's side by where it came
from. The set-up's tensors start on the host; ``Setup.to(SHADOW)`` moves what the rounds compute with to
the shadow device (``cpu:0``: the same CPU, a device object that compares unequal to the host's), and
from then on a tensor is on the device if it was made with that device (``.to(d)``, ``device=d``, or
``x.device`` read from a device tensor, which answers ``cpu:0``), or computed from a device tensor. An
operation that mixes a device tensor with a host tensor of one element or more raises :class:`DeviceMix`,
with the exceptions CUDA makes: 0-d host tensors (CPU scalars), host indices inside ``x[...]``, and the
transfers themselves (``to``, ``cpu``, ``copy_``). (It is a little stricter than CUDA in one place: a host
value written into a device tensor, ``d[i] = h``, is refused, though CUDA copies it for a plain index.)
Drawing device values from a host generator and ``.numpy()`` of a device tensor are refused too, as on a
GPU. Inside ``torch.func`` transforms a wrapped tensor has the side of the tensor it wraps. A tensor the
mode did not see being made (what a torch.func transform or autograd returns) has no side and mixes with
either: the one blind spot, narrow since those are computed from the parameters.

Why not ``torch.set_default_device("meta")`` (the first idea): the host's own bookkeeping (each
round's plan, sample tables, the mixing step's layout) is legitimately made with default-device
factories, so under a meta default the linear rules, which run on a GPU, fail at once (e.g.
``mixing_step``'s ``torch.zeros(graph.n)``), and meta tensors hold no values to evaluate. Torch's lazy
backend (a real second device on the CPU) was tried too: it fails on its own in plain code
(``bmm`` of a ``split`` view: "Input tensor is not a lazy tensor").
"""

import enum
import json
import socket
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from ppaia import ExperimentConfig, Simulation
from ppaia.attacks.base import ATTACKS
from ppaia.privacy.mechanisms import PRIVACY
from ppaia.rules import RULES, CooperationRule
from ppaia.rules.consensus import Consensus
from ppaia.simulation.axis import PeerAxis
from ppaia.simulation.live import RoundRecorder
from ppaia.simulation.sharded import ShardedAxis, process_group

SHADOW = torch.device("cpu", 0)  # the stand-in device: the CPU, but not equal to torch.device("cpu")
DEVICE_OF = torch.Tensor.device.__get__
TRANSFERS = frozenset({torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.copy_})
INDEXING = frozenset({torch.Tensor.__getitem__, torch.Tensor.__setitem__})  # host indices are allowed
HOST_ONLY = frozenset({torch.Tensor.numpy, torch.Tensor.__array__})


class Side(enum.Enum):
    HOST = "host"
    DEVICE = "device"


class DeviceMix(AssertionError):
    """An operation a GPU run would refuse: host and device tensors mixed."""


def side_of(device: str | torch.device) -> Side:
    return Side.DEVICE if torch.device(device) == SHADOW else Side.HOST


class DeviceSplit(TorchFunctionMode):
    """Follows each tensor's side (host or shadow device) and raises :class:`DeviceMix` on a mix."""

    def __init__(self) -> None:
        super().__init__()
        self.sides: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def side(self, tensor: torch.Tensor) -> Side | None:
        """Its side; a torch.func wrapper has the side of what it wraps; None: not seen being made (the
        outputs of torch.func transforms and autograd), which takes the side it is used with."""
        while (side := self.sides.get(tensor)) is None and torch._C._functorch.is_functorch_wrapped_tensor(
            tensor
        ):
            tensor = torch._C._functorch.get_unwrapped(tensor)
        return side

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == DEVICE_OF:
            return SHADOW if self.side(args[0]) is Side.DEVICE else func(*args)
        leaves = tree_leaves((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        sides = [self.side(t) for t in tensors]
        target = self._target(func, args, kwargs)
        name = getattr(func, "__qualname__", repr(func))
        if (Side.DEVICE in sides or target is Side.DEVICE) and func not in TRANSFERS:
            indices = tree_leaves(args[1]) if func in INDEXING else []
            host = [
                tuple(t.shape)
                for t, side in zip(tensors, sides, strict=True)
                if side is Side.HOST and t.dim() > 0 and not any(t is index for index in indices)
            ]
            if host:
                raise DeviceMix(f"{name} mixes device tensors with host tensors of shapes {host}")
            if any(isinstance(leaf, torch.Generator) for leaf in leaves):
                raise DeviceMix(f"{name} draws device values from a host generator")
        if func in HOST_ONLY and Side.DEVICE in sides:
            raise DeviceMix(f"{name} of a device tensor")
        out = func(*args, **kwargs)
        if target is not None:
            side = target
        elif Side.DEVICE in sides:
            side = Side.DEVICE
        elif Side.HOST in sides or not tensors:
            side = Side.HOST  # made from host tensors, or by a factory without a device
        else:
            return out
        if any(out is t for t in tensors):  # in place, or a transfer that had nothing to move here
            if func not in TRANSFERS or self.side(out) == side:
                return out
            out = out.clone()  # on a real device the transfer copies; the source keeps its side
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.sides[t] = side
        return out

    def _target(self, func, args, kwargs) -> Side | None:
        """The side an operation names for its result (`.to`, `.cpu`, a ``device=`` argument), if any."""
        if func is torch.Tensor.cpu:
            return Side.HOST
        if func is torch.Tensor.to:
            like = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else kwargs.get("other")
            if like is not None:
                return self.side(like) or Side.HOST
            device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            return None if device is None else side_of(device)
        device = kwargs.get("device")
        return None if device is None else side_of(device)


def shadow_run(
    config: ExperimentConfig,
    rule: CooperationRule | None = None,
    live: Path | None = None,
    axis: PeerAxis | None = None,
):
    """The run of `config` with its rounds on the shadow device, under :class:`DeviceSplit` (with `rule`
    in place of the config's, if given; recording each round to `live` as the dashboard does, if given;
    on `axis`, if given)."""
    with DeviceSplit():
        simulation = Simulation(config, axis)
        simulation.rule = rule or simulation.rule
        simulation.setup.to(SHADOW)
        if live is None:
            return simulation.run()
        recorder = RoundRecorder(live, simulation)
        result = simulation.run(observe=recorder.record)
        recorder.close()
        return result


def _bugs():
    """What a GPU would refuse, each as (name, f(device tensor [4, 3]))."""
    return {
        "factory without device": lambda d: d + torch.zeros(3),
        "tensor of a list": lambda d: d * torch.tensor([1.0, 2.0, 3.0]),
        "comparison with a host range": lambda d: torch.arange(3) < d[0],
        "host state updated from the device": lambda d: torch.zeros(4).add_(d.sum(1)),
        "host mask in where": lambda d: torch.where(torch.ones(4, 3, dtype=torch.bool), d, 0.0),
        "device index into host": lambda d: torch.arange(5)[d.long()[:, 0]],
        "gather with host index": lambda d: d.gather(1, torch.zeros(4, 1, dtype=torch.long)),
        "cat": lambda d: torch.cat([d, torch.ones(1, 3)]),
        "sparse with host indices": lambda d: torch.sparse_coo_tensor(torch.zeros(2, 3).long(), d[0]),
        "inside vmap": lambda d: torch.func.vmap(lambda row: row * torch.ones(3))(d),
        "inside grad": lambda d: torch.func.vmap(torch.func.grad(lambda r: (r * torch.arange(3)).sum()))(d),
        "host generator": lambda d: torch.randn(
            3, generator=torch.Generator().manual_seed(0), device=d.device
        ),
        "numpy": lambda d: d.numpy(),
    }


def _fine():
    """What a GPU runs: explicit devices, transfers, CPU scalars, host indices, host math after .cpu()."""
    return {
        "device=": lambda d: d + torch.zeros(3, device=d.device),
        "to(device)": lambda d: d * torch.arange(3).to(d.device),
        "to(other)": lambda d: d + torch.ones(3).to(d),
        "new_full": lambda d: d + d.new_full((3,), 2.0),
        "zeros_like": lambda d: d + torch.zeros_like(d),
        "cpu scalar": lambda d: d * torch.tensor(2.0),
        "host index": lambda d: d[torch.tensor([0, 2])],
        "host mask": lambda d: d[torch.tensor([True, False, True, False])],
        "host index set": lambda d: d.index_fill(0, torch.tensor([1]).to(d.device), 0.0),
        "back to the host": lambda d: d.sum(1).cpu() + torch.zeros(4),
        "item": lambda d: torch.full((2,), d.max().item()),
        "vmap over the device": lambda d: torch.func.vmap(lambda row: row * torch.ones(3, device=row.device))(
            d
        ),
    }


@pytest.mark.parametrize("bug", _bugs().values(), ids=list(_bugs()))
def test_the_split_refuses_what_a_gpu_refuses(bug):
    with DeviceSplit():
        on_device = torch.arange(12.0).view(4, 3).to(SHADOW)
        with pytest.raises(DeviceMix):
            bug(on_device)


@pytest.mark.parametrize("fine", _fine().values(), ids=list(_fine()))
def test_the_split_runs_what_a_gpu_runs(fine):
    with DeviceSplit():
        on_device = torch.arange(12.0).view(4, 3).to(SHADOW)
        assert on_device.device == SHADOW
        fine(on_device)


BASE = {"peers": 5, "rounds": 2, "model": "logistic", "batch_size": 512, "holdout": 0.2}


def _builtin(registry, package: str) -> list[str]:
    """The names registered by ppaia itself (not by a plugin another test registered)."""
    return [name for name, component in registry if component.__module__.startswith(package)]


QUICKER = {"learned_trust": "learned_trust(steps=2)"}  # each step backtracks up to 30 times
PRIVACY_CASES = {
    "update_dp": {"privacy": "update_dp(clip=2, epsilon=8, budget=20)"},
    "dp_sgd": {"privacy": "dp_sgd(noise_multiplier=1.0)"},
    "dp_sgd-shuffle": {"privacy": "dp_sgd(noise_multiplier=1.0, sampling='shuffle')"},
}
CASES = {
    **{f"rule-{name}": {"rule": QUICKER.get(name, name)} for name in _builtin(RULES, "ppaia.rules")},
    "fedavg-krum": {"rule": "fedavg(aggregator='krum(f=1)')"},
    "fedavg-trimmed-attacked": {
        "rule": "fedavg(aggregator='trimmed_mean')",
        "attack": "sign_flip",
        "attackers": 0.4,
    },
    **{f"attack-{name}": {"attack": name, "attackers": 0.4} for name in _builtin(ATTACKS, "ppaia.attacks")},
    "attack-noisy-graded": {"attack": "noisy(graded=true)", "attackers": 0.4},
    **PRIVACY_CASES,
    "ewc-task": {"ewc": {"strength": 1}, "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
    "ewc-round": {"ewc": {"strength": 1, "anchor": "round"}},
    "cnn-adam-sampled": {"model": "cnn(channels=[2])", "optimizer": "adam", "eval_peers": 3},
    "churn-median": {"churn": {"initial": 0.6, "arrival": 0.5}, "rule": "median", "rounds": 3},
}


def test_the_privacy_cases_cover_every_mechanism():
    named = {case["privacy"].partition("(")[0] for case in PRIVACY_CASES.values()}
    assert named == set(_builtin(PRIVACY, "ppaia.privacy"))


@pytest.mark.parametrize("fields", CASES.values(), ids=list(CASES))
def test_a_round_on_the_device_mixes_nothing_from_the_host(fields):
    """Each part of a round (every rule, FedAvg with a robust server, every attack, every DP mechanism,
    EWC, sampled evaluation, churn) runs with its rounds on the shadow device without a mix."""
    config = ExperimentConfig.model_validate({**BASE, **fields})
    result = shadow_run(config)
    assert result.divergence is None
    assert [row["round"] for row in result.history] == list(range(config.rounds + 1))


def test_the_live_record_of_a_round_on_the_device(tmp_path):
    """``ppaia run --dashboard``'s record reads each round's per-peer values and the rule's state."""
    config = ExperimentConfig.model_validate({**BASE, "rule": "learned_trust(steps=1)"})
    shadow_run(config, live=tmp_path / "live.jsonl")
    records = [json.loads(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert [len(record["accuracy"]) for record in records[1:-1]] == [config.peers] * (config.rounds + 1)
    assert "trust" in records[-2]["matrices"]


@pytest.mark.parametrize(
    "fields",
    [
        {"rule": "learned_trust(steps=1)"},
        {"rule": "clipped_gossip", "attack": "gaussian", "attackers": 0.4, "privacy": "update_dp(clip=2)"},
    ],
    ids=["learned-trust", "clipped-attack-dp"],
)
def test_a_sharded_round_on_the_device(fields):
    """The sharded axis (one Gloo rank here: its collectives, gathers and state) on the shadow device."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ExperimentConfig.model_validate({**BASE, **fields, "eval_peers": 3})
    with process_group(torch.device("cpu"), f"tcp://127.0.0.1:{port}", 0, 1):
        sharded = shadow_run(config, axis=ShardedAxis(config.peers, SHADOW))
    assert torch.equal(sharded.params, Simulation(config).run().params)


class HostRow(Consensus):
    """Consensus with the slip a rule's author can make: a tensor made without ``device=``."""

    def combine(self, params, step, ctx):
        return step.weighted_sum(params) + torch.zeros(params.shape[1])


def test_a_rule_that_makes_a_tensor_on_the_host_is_caught_in_the_round():
    config = ExperimentConfig.model_validate(BASE)
    with pytest.raises(DeviceMix, match=r"add mixes .* shapes \[\(650,\)\]"):
        shadow_run(config, HostRow())
    on_the_host = Simulation(config)
    on_the_host.rule = HostRow()
    assert on_the_host.run().divergence is None  # where everything is on the host, nothing shows


def test_the_split_changes_no_number():
    """A run with many parts at once gives on the shadow device the host's numbers, bit for bit: the
    check only watches (one run, not one per case above, to keep the suite short)."""
    fields = {
        "rule": "median",
        "attack": "stale(age=1)",
        "attackers": 0.4,
        "privacy": "dp_sgd(noise_multiplier=1.0)",
        "optimizer": "adam",
        "eval_peers": 3,
    }
    config = ExperimentConfig.model_validate({**BASE, **fields})
    shadow, host = shadow_run(config), Simulation(config).run()
    strip = [{k: v for k, v in row.items() if k != "wall_s"} for row in host.history]
    assert [{k: v for k, v in row.items() if k != "wall_s"} for row in shadow.history] == strip
    assert torch.equal(shadow.params, host.params)
