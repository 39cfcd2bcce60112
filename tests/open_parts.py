"""What the open-swarm tests share: the swarm's config, from ``examples/open_swarm.toml`` (which the
benchmark and the acceptance run also use), and each peer's own data file (test helper)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import ppaia
from ppaia.network.openlaunch import write_own_data

EXAMPLE = Path(__file__).parents[1] / "examples" / "open_swarm.toml"
# the example's swarm, without its size and schedule (a test sets those), 12 rounds and k = 2
CONFIG = {
    key: value for key, value in tomllib.loads(EXAMPLE.read_text()).items() if key not in ("peers", "churn")
} | {"rounds": 12, "rule": "learned_trust(partners=2)"}


def write_parts(folder: Path, n: int, **changes) -> tuple[list[str], str]:
    """`n` peers' own data files (the config's split of digits: Dirichlet(1), at least 20 rows each, or as
    `changes` say) and the shared test file, as ``--data`` specs and the ``--test`` spec."""
    config = ppaia.ExperimentConfig.model_validate(CONFIG | {"peers": n, "min_samples": 20} | changes)
    return write_own_data(config, folder)
