"""Python side of the registry contract: deploy or attach, send transactions, read state.

One code path for every chain: :meth:`Ledger.in_process` runs an EVM inside this process (eth-tester's
py-evm backend), :meth:`Ledger.connect` talks to any JSON-RPC node; both go through :meth:`Ledger.on`.
Transactions are sent from accounts the node holds (``eth_accounts``); signing is the node's job. The
contract comes from the committed artifact.json, so no Vyper compiler is needed at run time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any, NamedTuple

from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import TransactionFailed
from web3 import EthereumTesterProvider, Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxReceipt

from ppaia.rules import flobc
from ppaia.rules.flobc import SCORE_SCALE

__all__ = [
    "SCORE_SCALE",
    "Ledger",
    "LedgerError",
    "Update",
    "Version",
    "content_hash",
    "from_fixed",
    "load_artifact",
    "to_fixed",
]

RAW_REVERT = re.compile(r"reverted(?: with reason string '([^']*)')?")


class LedgerError(ValueError):
    """A transaction or call the contract rejected; the message is the contract's revert reason."""


class Update(NamedTuple):
    """A trainer's submitted update (for `round`, trained from the release of `base_round`) and how
    validators judged it so far."""

    trainer: str
    round: int
    base_round: int
    update_hash: bytes
    valid_votes: int
    accepted: bool


class Version(NamedTuple):
    """A released model version; version 0 (all zero) means nothing has been released yet."""

    version: int
    model_hash: bytes
    score: int
    round: int


def to_fixed(x: float) -> int:
    """A score as the contract stores it: the nearest multiple of 1 / SCORE_SCALE (10**6, as in
    Registry.vy), by the FLoBC rule's own quantisation (:func:`ppaia.rules.flobc.to_fixed`), so that the
    simulator scores with the numbers a committee records. ValueError for a value that is not finite."""
    if not math.isfinite(x):
        raise ValueError(f"a fixed-point score is finite, not {x}")
    return int(flobc.to_fixed(x))


def from_fixed(value: int) -> float:
    """A stored fixed-point score back as a float."""
    return value / SCORE_SCALE


def content_hash(data: bytes) -> bytes:
    """SHA-256 of serialized model or update bytes: the 32-byte digest the ledger records."""
    return hashlib.sha256(data).digest()


def load_artifact() -> dict[str, Any]:
    """The committed ABI and bytecode (regenerate with ``python -m ppaia.ledger.compile``)."""
    return json.loads(files(__package__).joinpath("artifact.json").read_text())


def _reason(err: ContractLogicError | TransactionFailed) -> str:
    text = err.message if isinstance(err, ContractLogicError) else str(err.args[0])
    text = (text or "").removeprefix("execution reverted").removeprefix(":").strip()
    # eth-tester spells a revert without a message as the repr of its empty data
    return text if text not in ("", "b''") else "execution reverted without a message"


@contextmanager
def _reverts() -> Iterator[None]:
    """Re-raise a contract revert as LedgerError carrying the contract's message.

    JSON-RPC nodes surface reverts as web3's ContractLogicError, web3's eth-tester provider as
    eth-tester's TransactionFailed; both read ``execution reverted: <message>``. A transaction signed
    locally and sent raw is refused by the node as an RPC error instead (hardhat: ``reverted with reason
    string '<message>'``): a state change between the sender's read and its transaction, e.g. a round
    another validator's proposal just released.
    """
    try:
        yield
    except (ContractLogicError, TransactionFailed) as err:
        raise LedgerError(_reason(err)) from None
    except Web3RPCError as err:
        reason = RAW_REVERT.search(str(err))
        if reason is None:
            raise
        raise LedgerError(reason.group(1) or "execution reverted without a message") from None


def _send(w3: Web3, call: ContractFunction | ContractConstructor, sender: str) -> TxReceipt:
    """Send a transaction from `sender`, wait for it to be mined, and fail loudly if it reverted."""
    with _reverts():
        tx = call.transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    if receipt["status"] != 1:  # reverted on chain after gas estimation passed (state changed between)
        raise LedgerError(f"transaction {tx.to_0x_hex()} reverted")
    return receipt


class Ledger:
    """A deployed registry contract; every state change names the account (`sender`) that makes it."""

    def __init__(self, w3: Web3, address: str) -> None:
        if not w3.eth.get_code(address):
            raise LedgerError(f"no contract at {address}")
        self.w3 = w3
        self.contract = w3.eth.contract(address=address, abi=load_artifact()["abi"])

    @classmethod
    def on(cls, w3: Web3, address: str | None = None) -> Ledger:
        """Attach to the registry at `address`, or deploy a new one owned by the node's first account."""
        if address is None:
            artifact = load_artifact()
            factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
            address = _send(w3, factory.constructor(), w3.eth.accounts[0])["contractAddress"]
        return cls(w3, address)

    @classmethod
    def in_process(cls, accounts: int = 10) -> Ledger:
        """A fresh in-process EVM with `accounts` funded accounts and a newly deployed registry; the owner
        is ``accounts[0]``."""
        genesis = PyEVMBackend.generate_genesis_state(num_accounts=accounts)
        return cls.on(Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend(genesis_state=genesis)))))

    @classmethod
    def connect(cls, url: str, address: str | None = None) -> Ledger:
        """The registry on the JSON-RPC node at `url` (HTTP), deployed there first if no `address`."""
        return cls.on(Web3(Web3.HTTPProvider(url)), address)

    @property
    def address(self) -> str:
        return self.contract.address

    @property
    def accounts(self) -> list[str]:
        """The node's accounts, usable as `sender`."""
        return list(self.w3.eth.accounts)

    def _call(self, name: str, *args: Any) -> Any:
        with _reverts():
            return self.contract.functions[name](*args).call()

    def _transact(self, name: str, *args: Any, sender: str) -> TxReceipt:
        return _send(self.w3, self.contract.functions[name](*args), sender)

    def owner(self) -> str:
        return self._call("owner")

    def quorum(self) -> int:
        """Validators needed to accept an update or release a model: ⌊2V/3⌋ + 1."""
        return self._call("quorum")

    def is_trainer(self, account: str) -> bool:
        return self._call("is_trainer", account)

    def is_validator(self, account: str) -> bool:
        return self._call("is_validator", account)

    def register_trainer(self, trainer: str, *, sender: str) -> None:
        """Owner only; an account is a trainer or a validator, never both."""
        self._transact("register_trainer", trainer, sender=sender)

    def register_validator(self, validator: str, *, sender: str) -> None:
        """Owner only; an account is a trainer or a validator, never both."""
        self._transact("register_validator", validator, sender=sender)

    def quota(self) -> int:
        """Updates a trainer may submit per round (1 unless the owner set more)."""
        return self._call("quota")

    def set_quota(self, quota: int, *, sender: str) -> None:
        """Owner only, before the first update: let each trainer submit up to `quota` updates per round
        (BAP's resubmissions), one quota for every round."""
        self._transact("set_quota", quota, sender=sender)

    def submit_update(self, round: int, update_hash: bytes, *, base: int | None = None, sender: str) -> int:
        """Record a trainer's update for a round (at most the quota per trainer and round), trained from
        the model released for round `base` (default round − 1: a fresh update; older: a stale one, which
        asynchronous sync schemes aggregate); returns the update id."""
        base = round - 1 if base is None else base
        receipt = self._transact("submit_update", round, update_hash, base, sender=sender)
        (event,) = self.contract.events.UpdateSubmitted().process_receipt(receipt, errors=DISCARD)
        return event["args"]["update_id"]

    def vote(self, update_id: int, valid: bool, score: int, *, sender: str) -> None:
        """A validator's verdict on an update, with a fixed-point score (see :func:`to_fixed`)."""
        self._transact("vote", update_id, valid, score, sender=sender)

    def is_accepted(self, update_id: int) -> bool:
        """Whether a quorum of validators voted the update valid (final once true)."""
        return self._call("is_accepted", update_id)

    def update(self, update_id: int) -> Update:
        trainer, round_, base, update_hash, valid_votes, accepted = self._call("get_update", update_id)
        return Update(trainer, round_, base, bytes(update_hash), valid_votes, accepted)

    def propose_model(self, round: int, model_hash: bytes, score: int, *, sender: str) -> int | None:
        """A validator's proposed model for a round; the version it released, or None if no quorum yet.

        A version's score is the mean of its supporters' fixed-point scores, rounded toward zero.
        """
        receipt = self._transact("propose_model", round, model_hash, score, sender=sender)
        released = self.contract.events.ModelReleased().process_receipt(receipt, errors=DISCARD)
        return released[0]["args"]["version"] if released else None

    def version(self, number: int) -> Version:
        model_hash, score, round_ = self._call("get_version", number)
        return Version(number, bytes(model_hash), score, round_)

    def latest_version(self) -> Version:
        number, model_hash, score, round_ = self._call("latest_version")
        return Version(number, bytes(model_hash), score, round_)

    def set_score(self, trainer: str, score: int, *, sender: str) -> None:
        """Record a trainer's reward-penalty score (validators only; the last one set is kept)."""
        self._transact("set_score", trainer, score, sender=sender)

    def score(self, trainer: str) -> int:
        """A trainer's last recorded fixed-point score (0 if none was set)."""
        return self._call("scores", trainer)
