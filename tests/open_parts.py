"""Own data files for open-swarm peers: a Dirichlet split of digits, one file per peer (test helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from ppaia.data import PARTITIONERS

CONFIG = {
    "rounds": 12,
    "seed": 3,
    "model": "mlp(hidden=[32])",
    "lr": 0.2,
    "local_epochs": 1,
    "batch_size": 16,
    "holdout": 0.2,
    "rule": "learned_trust(partners=2)",
}


def write_parts(folder: Path, n: int) -> tuple[list[str], str]:
    """`n` peers' own data files (Dirichlet(1) split of digits) and a shared test file, as specs."""
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:400], order[400:]
    mean, std = digits.data[train].mean(0), digits.data[train].std(0) + 1e-6
    x = ((digits.data - mean) / std).astype(np.float32)
    np.savez(folder / "test.npz", x=x[test], y=y[test])
    parts = PARTITIONERS.create("dirichlet(1.0)").split(y[train], n, seed=11, min_samples=20)
    specs = []
    for i, part in enumerate(parts):
        np.savez(folder / f"p{i}.npz", x=x[train[part]], y=y[train[part]])
        specs.append(f"npz(path='{folder}/p{i}.npz', classes=10)")
    return specs, f"npz(path='{folder}/test.npz', classes=10)"
