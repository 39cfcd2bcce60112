"""Evaluation at scale: one evaluation of 10,000 peers, before and after, in one run on one machine.

"Before" is the evaluator as it was (vmap over functional_call, F.cross_entropy on ``[P·S, C]`` logits,
copied below verbatim); "after" is :class:`ppaia.learning.BatchedEvaluator` (plain MLPs as batched GEMMs
in cache-sized chunks, scores with the classes in the middle). Also shown: the new evaluator's vmap path
(what any model other than a plain MLP takes) and the sampled estimate ``eval_peers = 1000`` (its
standard error and its actual error against the exact mean).

Workloads: the README's 10,000-peer case (``synthetic(test_samples=1000, features=32)``, MLP 32-64-10,
its models after 3 rounds of consensus on a ring) and the default digits test set (360 samples of 64
features, MLP 64-64-10, 10,000 distinct models around one initialisation). The methods are timed in
turn, `--repeats` times, and the medians of wall and CPU (process) time are printed. Other processes on a
shared machine slow every method's wall time; with more than one torch thread they slow many small
operations most (the threads wait for each other after each), so `--threads 1` compares the work alone.

    python benchmarks/eval_scale.py            # or: make bench
    python benchmarks/eval_scale.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.func import functional_call, vmap

from ppaia import ExperimentConfig, Simulation
from ppaia.data.datasets import DATASETS
from ppaia.learning import BatchedEvaluator, ParamLayout
from ppaia.learning.local import activation_size, peer_chunks
from ppaia.learning.models import MODELS
from ppaia.simulation.metrics import evaluated_peers, standard_error

TRAINED = {  # the README's 10,000-peer case (benchmarks/sim_speed.py), trained for a few rounds
    "dataset": "synthetic(samples=200000, test_samples=1000, features=32, classes=10)",
    "partition": "iid",
    "min_samples": 1,
    "model": "mlp(hidden=[64])",
    "rule": "consensus",
    "topology": "ring",
    "rounds": 3,
    "eval_every": 3,
}
SAMPLED = 1000  # eval_peers of the estimate
BEFORE, EXACT, GENERAL = (
    "before (vmap + F.cross_entropy)",
    "after, exact (plain MLP: GEMMs)",
    "after, exact (vmap path)",
)
ESTIMATE = f"after, eval_peers = {SAMPLED:,}"


class LegacyEvaluator:
    """The evaluator before this change (src/ppaia/learning/evaluate.py at fe09cb8), unchanged."""

    TEST_CHUNK = 2048

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.layout, self.x, self.y = model, ParamLayout.of(model), x, y
        self.per_sample = activation_size(model, tuple(x.shape[1:]))
        self._forward = vmap(self._logits, in_dims=(0, None))

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.layout.unflatten(flat), (x,))

    @torch.no_grad()
    def __call__(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_test = self.y.numel()
        correct = torch.zeros(params.shape[0])
        loss = torch.zeros(params.shape[0], dtype=torch.float64)
        for start in range(0, n_test, self.TEST_CHUNK):
            x, y = self.x[start : start + self.TEST_CHUNK], self.y[start : start + self.TEST_CHUNK]
            for chunk in peer_chunks(params.shape[0], y.numel(), self.per_sample):
                logits = self._forward(params[chunk], x)
                correct[chunk] += (logits.argmax(-1) == y).sum(1).float()
                targets = y.expand(logits.shape[0], -1)
                loss[chunk] += (
                    F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                    .view(logits.shape[:2])
                    .sum(1, dtype=torch.float64)
                )
        return correct / n_test, (loss / n_test).float()


class NotPlain(nn.Sequential):
    """The same layers, which the evaluator does not take for a plain MLP: its vmap path."""


def timed(evaluator: Callable[[torch.Tensor], object], params: torch.Tensor) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    evaluator(params)
    return time.perf_counter() - wall, time.process_time() - cpu


Workload = tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]  # model, test x and y, params


def trained(peers: int) -> Workload:
    """The README's case: `peers` models after 3 rounds of consensus on a ring (accuracies spread out)."""
    simulation = Simulation(ExperimentConfig(**TRAINED | {"peers": peers}))
    setup = simulation.setup
    return setup.model, setup.evaluator.x, setup.evaluator.y, simulation.run().params


def digits(peers: int) -> Workload:
    """The default dataset and model, with `peers` distinct models around one initialisation (digits
    has too few training images for 10,000 peers to train)."""
    data = DATASETS.create("digits").load(0)
    torch.manual_seed(0)
    model = MODELS.create("mlp(hidden=[64])").build(tuple(data.x_test.shape[1:]), data.n_classes).eval()
    layout = ParamLayout.of(model)
    g = torch.Generator().manual_seed(0)
    return (
        model,
        data.x_test,
        data.y_test,
        layout.flatten(model) + 0.3 * torch.randn(peers, layout.size, generator=g),
    )


WORKLOADS = {"synthetic, trained · MLP 32-64-10": trained, "digits · MLP 64-64-10": digits}


def gemm_flops(model: nn.Module, peers: int, samples: int) -> int:
    """FLOPs of one evaluation's linear layers: 2 per multiply-add, every peer on every test sample."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return 2 * macs * peers * samples


def measure(
    name: str, make: Callable[[int], Workload], peers: int, repeats: int, drawn: torch.Tensor
) -> list[list[str]]:
    """The table rows of one workload: each method's median wall and CPU seconds and what it gives."""
    model, x, y, params = make(peers)
    flops = gemm_flops(model, peers, y.numel())
    before, after = LegacyEvaluator(model, x, y), BatchedEvaluator(model, x, y)
    general = BatchedEvaluator(NotPlain(*model.children()), x, y)
    assert after.layers is not None and general.layers is None
    methods = {BEFORE: (before, params), EXACT: (after, params), GENERAL: (general, params)}
    methods[ESTIMATE] = (after, params[drawn])
    for evaluator in (before, after, general):  # warm-up: vmap's first call
        evaluator(params[:100])
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in methods}
    for _ in range(repeats):  # in turn, so that load from elsewhere hits every method alike
        for label, (evaluator, batch) in methods.items():
            times[label].append(timed(evaluator, batch))
    results = {label: evaluator(batch) for label, (evaluator, batch) in methods.items()}
    sample = results[ESTIMATE][0]
    base = statistics.median(wall for wall, _ in times[BEFORE])
    out = []
    for label, samples in times.items():
        wall, cpu = statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)
        work = flops * (len(sample) / peers if label == ESTIMATE else 1)
        if label == ESTIMATE:
            error, exact = standard_error(sample, peers), results[EXACT][0].mean()
            note = f"acc_mean {sample.mean():.4f} ± {error:.4f} (SE); exact {exact:.4f}"
        else:
            note = "the reference" if label == BEFORE else _agreement(*results[BEFORE], *results[label])
        out.append(
            [
                name,
                label,
                f"{wall:.3f}",
                f"{cpu:.3f}",
                f"{work / wall / 1e9:.1f}",
                f"{base / wall:.1f}×",
                note,
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch's threads (default: its own choice, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=170)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load average before: {os.getloadavg()[0]:.1f}",
        style="dim",
    )
    table = Table(title=f"one evaluation of {args.peers:,} peers (medians of {args.repeats})")
    for column in ("workload", "method", "wall s", "CPU s", "GFLOP/s (wall)", "vs before", "agreement"):
        table.add_column(column, justify="left" if column in ("workload", "method", "agreement") else "right")
    drawn = evaluated_peers(ExperimentConfig(peers=args.peers, rounds=2, eval_peers=SAMPLED), args.peers, 1)
    for name, make in WORKLOADS.items():
        for row in measure(name, make, args.peers, args.repeats, drawn):
            table.add_row(*row)
        console.print(f"measured {name}", style="dim")
    console.print(table)
    console.print(f"load average after: {os.getloadavg()[0]:.1f}", style="dim")


def _agreement(acc_0, loss_0, acc_1, loss_1) -> str:
    """How far the new numbers are from the old: accuracy and relative loss, worst peer."""
    relative = ((loss_1 - loss_0).abs() / loss_0.abs()).max().item()
    return f"|Δacc| ≤ {(acc_1 - acc_0).abs().max():.4f}, rel. |Δloss| ≤ {relative:.0e}"


if __name__ == "__main__":
    main()
