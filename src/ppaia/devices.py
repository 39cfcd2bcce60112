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

Every part of a round follows that split: training (DP-SGD's clipping and noise, EWC's penalty),
attackers' messages, update-level DP, and every rule, the gathering ones included (learned trust, the
robust and self-centred rules, FLoBC, FedAvg with a robust server). Their keyed random draws (DP and
attack noise, Fisher samples) are made on the host like every other draw and sent over, so a seed gives
the same noise on any device; small per-rule bookkeeping stays on the host too (learned trust's matrix,
FLoBC's scores and verdicts), and only the round's few rows of it cross. ``tests/test_device_clean.py``
checks this split on a CPU-only machine.
"""

from __future__ import annotations

import os

import torch

from ppaia.config import ConfigError

__all__ = ["resolve_device"]


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
