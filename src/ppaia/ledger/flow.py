"""The organisation-centred flow of "federated learning on IPFS + Ethereum", with every hash checked.

One publisher (an organisation) owns the registry contract and is its only validator, so the quorum is
one and each of its proposals releases a model version at once. The clients are registered trainers,
each with its own account. Models never go on chain: they are safetensors blobs in a content-addressed
store (:class:`~ppaia.ledger.blobs.BlobStore`, standing in for IPFS), and the ledger records their
SHA-256. Each round r = 1..R:

1. every client reads ``latest_version()`` from the ledger, fetches the blob of that hash from the store
   (verified against the hash), decodes and checks it, and trains it on its own data;
2. every client encodes its trained model, stores it, and records the hash with ``submit_update(r, h)``;
3. the publisher reads each submitted update back from the ledger (``update(id)``: trainer, round,
   hash), fetches and verifies each blob, decodes it, and aggregates them with the FedAvg rule's own
   server step (the sample-weighted mean; :func:`~ppaia.ledger.parties.rules.fedavg_aggregate`, as the
   ledger parties' publisher and audit compute it);
4. the publisher stores the new global model and proposes it with ``propose_model(r, h, score)``, where
   the score is its test accuracy in fixed point; with one validator that releases version r + 1.

Before round 1 the publisher releases the initial model as round 0 (version 1). The flow is FedAvg with
every client taking part in every round, trained exactly as the simulator trains it, so its numbers are
those of ``ppaia.run`` with ``rule = "fedavg"`` (``config.rule`` itself is not used).

Each client is built as a single peer's slice of the experiment (:meth:`Setup.peer`: its own samples,
model and trainer only) and trains the model it decoded from its own download. Simplifications, all
stated: every party runs in this one process; the publisher knows each client's sample count (declared
off chain, as in FedAvg); and the store is one in-memory object shared by everyone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ppaia.codec import BlobError, decode, encode
from ppaia.config import ExperimentConfig
from ppaia.experiment import Setup
from ppaia.learning import ParamLayout
from ppaia.ledger.blobs import BlobStore
from ppaia.ledger.client import Ledger, LedgerError, to_fixed
from ppaia.ledger.parties.rules import fedavg_aggregate
from ppaia.rules import RULES

__all__ = ["FlowError", "FlowResult", "RoundRecord", "run_publisher_flow"]


class FlowError(ValueError):
    """A configuration or ledger set-up the publisher flow cannot run."""


@dataclass(frozen=True)
class RoundRecord:
    """One released global model: round 0 is the initial model, round r the aggregate of round r.

    `trained_from` holds, per client, the content hash of the blob it downloaded and trained from in this
    round (empty for round 0); `update_ids` are the ledger ids of the updates averaged into this model.
    """

    round: int
    version: int
    model_hash: bytes
    accuracy: float
    score: int
    update_ids: tuple[int, ...] = ()
    trained_from: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class FlowResult:
    """Every release, plus the ledger and store they live in (for auditing) and the final global model."""

    rounds: list[RoundRecord]
    ledger: Ledger
    store: BlobStore
    publisher: str
    clients: tuple[str, ...]
    sample_counts: tuple[int, ...]
    layout: ParamLayout
    params: torch.Tensor  # the final global model, flat

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy

    def expected(self) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """What a model blob of this flow must contain: name -> (shape, dtype)."""
        return self.layout.expected()


def _unsupported(config: ExperimentConfig) -> list[str]:
    problems = []
    if config.attack is not None or config.attackers:
        problems.append("attack/attackers")
    if config.privacy is not None:
        problems.append("privacy")
    if config.ewc is not None:
        problems.append("ewc")
    if config.tasks:
        problems.append("tasks")
    return problems


def _setup_ledger(ledger: Ledger, peers: int) -> tuple[str, list[str]]:
    """Register the owner as the only validator and `peers` further accounts as trainers."""
    accounts = ledger.accounts
    if peers > len(accounts) - 1:
        raise FlowError(
            f"peers: each client needs its own account and the publisher one more; the node has "
            f"{len(accounts)} accounts, so at most {len(accounts) - 1} peers, got {peers}"
        )
    publisher = ledger.owner()
    if publisher not in accounts:
        raise FlowError(f"the ledger's owner {publisher} is not an account of this node")
    # checked before anything is written, so a refused ledger is left as it was
    if ledger.latest_version().version:
        raise FlowError("the ledger already holds released versions; the flow starts from a fresh contract")
    validators = [account for account in accounts if ledger.is_validator(account)]
    if validators not in ([], [publisher]):
        raise FlowError(f"the publisher must be the only validator (quorum 1); validators: {validators}")
    clients = [account for account in accounts if account != publisher][:peers]
    if not validators:
        ledger.register_validator(publisher, sender=publisher)
    for client in clients:
        if not ledger.is_trainer(client):
            ledger.register_trainer(client, sender=publisher)
    return publisher, clients


def run_publisher_flow(
    config: ExperimentConfig,
    ledger: Ledger | None = None,
    rounds: int | None = None,
    store: BlobStore | None = None,
) -> FlowResult:
    """Run the publisher/clients flow for `rounds` (default ``config.rounds``) on `ledger` (a fresh
    in-process EVM when None), with models in `store` (a fresh in-memory store when None)."""
    problems = _unsupported(config)
    if problems:
        raise FlowError(f"the publisher flow does not support {', '.join(problems)}")
    n_rounds = config.rounds if rounds is None else rounds
    if n_rounds < 1:
        raise FlowError(f"rounds: need at least 1, got {n_rounds}")
    if ledger is None:
        ledger = Ledger.in_process()
    store = BlobStore() if store is None else store
    publisher, clients = _setup_ledger(ledger, config.peers)

    # Each client holds its own slice; the publisher's view (the layout, the test set it scores on, the
    # initial model every client starts from, the declared sample counts) is client 0's set-up.
    config = config.model_copy(update={"rule": RULES.create("fedavg")})
    slices = [Setup.peer(config, i) for i in range(config.peers)]
    publisher_view = slices[0]
    layout, evaluator, counts = publisher_view.layout, publisher_view.evaluator, publisher_view.counts
    expected = layout.expected()
    global_params = publisher_view.params[0].clone()
    client_index = {client: i for i, client in enumerate(clients)}

    def release(round_: int, flat: torch.Tensor, update_ids=(), trained_from=()) -> RoundRecord:
        """The publisher stores the global model, scores it on its test set and proposes it."""
        model_hash = store.put(encode(layout.unflatten(flat)))
        accuracy = float(evaluator(flat.unsqueeze(0))[0][0])
        score = to_fixed(accuracy)
        version = ledger.propose_model(round_, model_hash, score, sender=publisher)
        if version is None:  # cannot happen with quorum 1, but never report an unreleased model
            raise LedgerError(f"round {round_}: the publisher's proposal released no version")
        return RoundRecord(
            round_, version, model_hash, accuracy, score, tuple(update_ids), tuple(trained_from)
        )

    records = [release(0, global_params)]
    for round_ in range(1, n_rounds + 1):
        # Clients: download the latest release named on the ledger, verify, decode, train, upload.
        latest = ledger.latest_version()
        blobs = [store.get(latest.model_hash) for _ in clients]  # each client's own verified download
        downloads = [latest.model_hash] * len(blobs)  # store.get verified each blob against this hash
        update_ids = []
        for client, blob, own in zip(clients, blobs, slices, strict=True):
            row = own.trainer.train(layout.join(decode(blob, expected)).unsqueeze(0), round_)[0]
            update_ids.append(
                ledger.submit_update(round_, store.put(encode(layout.unflatten(row))), sender=client)
            )

        # Publisher: read the updates from the ledger, fetch and verify their blobs, average them.
        received: dict[int, torch.Tensor] = {}
        for update_id in update_ids:
            update = ledger.update(update_id)
            if update.round != round_ or update.trainer not in client_index:
                raise FlowError(f"update {update_id} is not a round-{round_} update of a registered client")
            try:
                received[client_index[update.trainer]] = layout.join(
                    decode(store.get(update.update_hash), expected)
                )
            except BlobError as err:
                raise BlobError(f"update {update_id} from {update.trainer}: {err}") from None
        global_params = fedavg_aggregate(publisher_view, round_, [received[i] for i in range(len(clients))])
        records.append(release(round_, global_params, update_ids, downloads))

    return FlowResult(
        records,
        ledger,
        store,
        publisher,
        tuple(clients),
        tuple(int(c) for c in counts),
        layout,
        global_params,
    )
