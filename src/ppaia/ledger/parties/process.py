"""Running a party as a process: the roles, and the process's own set-up (threads, logging, SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path

import torch

from ppaia.ledger.parties.party import Party, PartyOptions
from ppaia.ledger.parties.publisher import Publisher
from ppaia.ledger.parties.trainer import Trainer
from ppaia.ledger.parties.validator import Validator

__all__ = ["ROLES", "Role", "make_party", "party_process", "run_party"]


class Role(StrEnum):
    TRAINER = "trainer"
    VALIDATOR = "validator"
    PUBLISHER = "publisher"
    CLIENT = "client"  # the publisher flow's trainer


ROLES: dict[Role, type[Party]] = {
    Role.TRAINER: Trainer,
    Role.CLIENT: Trainer,
    Role.VALIDATOR: Validator,
    Role.PUBLISHER: Publisher,
}


def make_party(role: Role, options: PartyOptions) -> Party:
    """Set this process up for one party (one thread: many parties share a machine's cores; its log
    lines named by role and peer) and build the party: its keys, data, chain connection."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format=f"{role}-{options.peer} %(levelname)s %(message)s")
    return ROLES[role](options)


def run_party(party: Party) -> int:
    """Play `party` until the run ends and it is terminated (SIGTERM) or its lingering ends; its exit
    code (0: the run completed, 3: it halted, 1: it failed)."""

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await party.run()

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())
    return party.code


def party_process(role: Role, options: PartyOptions, log: Path) -> None:
    """The body of a launched party process: its output to `log`, then the party's run."""
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    sys.exit(run_party(make_party(role, options)))
