"""Where a run's tensors live: the config's ``device`` (cpu, cuda, cuda:N, auto) made a torch device.

The config only checks the spelling (:class:`ppaia.config.ExperimentConfig`), so that a config written on
a GPU machine still loads anywhere; whether this machine has the device is checked here, when a run
starts, and refused as a config error naming the field.

What moves to the device: the samples, the parameters, the optimizer state and the mixing weights, i.e.
everything the per-round arithmetic reads. What stays on the host: the set-up's random draws (partition,
topology, initial models: so a seed gives the same run on any device), each round's plan (who mixes with
whom, drawn from CPU generators) and the integer bookkeeping (sample tables and counts); the host sends
index tensors to the device as a round needs them, and the device sends back only an evaluated round's
per-peer accuracy and loss.
"""

from __future__ import annotations

import os

import torch

from ppaia.config import ConfigError, ExperimentConfig

__all__ = ["check_device_support", "resolve_device"]


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """The device of `spec` (as the config validated it) on this machine; ConfigError if it has none.

    `local_rank`: the process's place among the ranks on this machine (torchrun's ``LOCAL_RANK``, read
    from the environment when None): with ``cuda`` (no index) or ``auto`` each rank takes GPU
    ``local_rank`` modulo the GPUs present, as one process per GPU is the usual layout.
    """
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = (
            "a CUDA build" if torch.backends.cuda.is_built() else f"a CPU-only build ({torch.__version__})"
        )
        raise ConfigError(
            f"device: {spec!r} asked for, but this machine has no usable CUDA device (torch is {built}); "
            "use device = 'cpu', or 'auto' to take a GPU only where there is one"
        )
    count = torch.cuda.device_count()
    if spec.startswith("cuda:"):
        index = int(spec.partition(":")[2])
        if index >= count:
            raise ConfigError(
                f"device: {spec!r}, but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
            )
        return torch.device("cuda", index)
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank % count)


def check_device_support(config: ExperimentConfig, device: torch.device) -> None:
    """ConfigError for what does not yet run on a GPU: the parts whose per-round arithmetic still mixes
    host tensors into the step (DP noise, attack messages, EWC's anchor, and the rules that gather each
    receiver's senders: learned trust, the robust and self-centred rules, FLoBC). Refused before any
    work rather than failing in round 1; the CPU runs them all."""
    if device.type == "cpu":
        return
    parts = [
        *(["privacy"] if config.privacy is not None else []),
        *(["attack"] if config.attack is not None else []),
        *(["ewc"] if config.ewc is not None else []),
        *([f"rule {config.rule.label()}"] if not config.rule.linear() else []),
    ]
    if parts:
        raise ConfigError(
            f"device: {device} runs training, evaluation and the linear rules (consensus, gossip, p2pl, "
            f"isolated, FedAvg's mean); {', '.join(parts)} run on the CPU only for now: use device = 'cpu'"
        )
