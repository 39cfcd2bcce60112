"""The publisher of "federated learning on IPFS + Ethereum", as a process; its clients are trainers.

The publisher (an organisation) is the registry's only validator, so the quorum is one. It releases the
initial model as round 0, then per round r waits until every client submitted its round-r update (the
FedAvg barrier: every client takes part), fetches each blob by its recorded hash from whichever party
provides it, votes it valid with its test accuracy of it (so the chain records which updates went in),
aggregates them with the FedAvg rule's own server step (:func:`~ppaia.ledger.parties.rules.fedavg_aggregate`,
the sample-weighted mean; the clients' sample counts are declared off chain, as in FedAvg), serves the
new model and proposes it, which releases it at once.

Its view of the experiment (the layout, the test set it scores on, the initial model, the declared
counts) is client 0's set-up, as in :mod:`ppaia.ledger.flow`. The clients train on data files of their
own; the counts it weighs them by are those of the config's split, which the launcher wrote into those
files (a client started by hand with other data is weighed by its declared share, not its file). A
client that does not submit within the timeout, or whose blob no provider hands over, halts the run:
FedAvg needs every client's model.
"""

from __future__ import annotations

import torch

from ppaia.ledger.client import to_fixed
from ppaia.ledger.parties.party import Halted, Party
from ppaia.ledger.parties.rules import fedavg_aggregate
from ppaia.ledger.parties.storage import BlobUnavailable

__all__ = ["Publisher"]


class Publisher(Party):
    role = "publisher"

    def accuracy(self, model: torch.Tensor) -> float:
        """The publisher's test accuracy of `model`."""
        return float(self.setup.evaluator(model.unsqueeze(0))[0][0])

    async def release(self, round_: int, model: torch.Tensor) -> None:
        digest = await self.publish(model)
        score = to_fixed(await self.compute(self.accuracy, model))
        await self.chain(self.ledger.propose_model, round_, digest, score, sender=self.address)
        await self.release_of(round_)

    async def play(self) -> None:
        await self.registered(lambda s: s.validators, 0)
        clients = self.config.peers
        model = self.setup.params[0].clone()
        if self.state.release_of(0) is None:
            await self.release(0, model)
        for round_ in range(1, self.config.rounds + 1):
            if not await self.wait_for(lambda s, r=round_: len(s.updates_of(r)) >= clients):
                missing = clients - len(self.state.updates_of(round_))
                raise Halted(f"round {round_}: {missing} of {clients} clients did not submit an update")
            models = []
            for update in self.state.updates_of(round_)[:clients]:
                try:
                    trained = await self.fetch(update.digest)
                except BlobUnavailable as err:
                    raise Halted(f"round {round_}: update {update.id} cannot be fetched: {err}") from None
                score = to_fixed(await self.compute(self.accuracy, trained))
                await self.chain(self.ledger.vote, update.id, True, score, sender=self.address)
                models.append(trained)
            model = await self.compute(fedavg_aggregate, self.setup, round_, models)
            await self.release(round_, model)
