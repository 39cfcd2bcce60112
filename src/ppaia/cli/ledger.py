"""``ppaia ledger``: the ledger systems' parties as processes, a one-command launcher, and the auditor.

``ppaia ledger trainer|client|validator|publisher`` runs one party (see :mod:`ppaia.ledger.parties`),
``ppaia ledger launch`` a whole FLoBC or publisher system on one machine, and ``ppaia ledger audit``
checks a run from the chain and the blobs.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from web3 import Web3

from ppaia.cli.main import USER_ERRORS, app, console, fail
from ppaia.config import load_config
from ppaia.ledger.client import Ledger, LedgerError
from ppaia.ledger.parties.audit import AuditError, AuditRow
from ppaia.ledger.parties.chain import load_account
from ppaia.ledger.parties.chain import register as register_parties
from ppaia.ledger.parties.launch import LedgerSystem, Outcome, audit_chain, parties_of, system_config
from ppaia.ledger.parties.party import Behaviour, PartyOptions
from ppaia.ledger.parties.process import Role, make_party, run_party
from ppaia.network.errors import NetworkError

__all__ = ["ledger_app"]

ledger_app = typer.Typer(
    no_args_is_help=True, help="Ledger systems (FLoBC, publisher flow) as separate party processes."
)
app.add_typer(ledger_app, name="ledger")

LEDGER_ERRORS = (*USER_ERRORS, LedgerError, NetworkError)

ConfigOption = Annotated[Path, typer.Option(help="the experiment's TOML config (every party uses the same)")]
ChainOption = Annotated[str, typer.Option(help="the Ethereum JSON-RPC URL of the chain")]
ContractOption = Annotated[str, typer.Option(help="the registry contract's address")]
TimeoutOption = Annotated[float, typer.Option(help="longest wait on other parties, seconds")]


def _party_command(role: Role) -> None:
    def command(
        config: ConfigOption,
        peer: Annotated[int, typer.Option(help="this party's peer index in the config (its data)")],
        chain: ChainOption,
        contract: ContractOption,
        dir: Annotated[Path, typer.Option(help="this party's data directory (its keys)")],
        bootstrap: Annotated[list[str] | None, typer.Option(help="a DHT seed, host:port")] = None,
        dht_port: Annotated[int, typer.Option(help="UDP port of this party's DHT node (0: any)")] = 0,
        timeout: TimeoutOption = 30.0,
        poll: Annotated[float, typer.Option(help="seconds between reads of the chain")] = 0.1,
        throttle: Annotated[float, typer.Option(help="extra seconds per local update (a straggler)")] = 0.0,
        behaviour: Annotated[Behaviour, typer.Option(help="misbehave, for tests")] = Behaviour.HONEST,
        linger: Annotated[float, typer.Option(help="seconds to serve blobs after the run")] = math.inf,
        data: Annotated[
            str | None, typer.Option(help="this party's own data (.npz/.csv or spec; default: its share)")
        ] = None,
        test: Annotated[str | None, typer.Option(help="its test set, if it holds out no share")] = None,
    ) -> None:
        try:
            options = PartyOptions(
                system_config(load_config(config)),
                peer,
                dir,
                chain,
                Web3.to_checksum_address(contract),
                tuple(bootstrap or ()),
                dht_port,
                poll=poll,
                timeout=timeout,
                throttle=throttle,
                behaviour=behaviour,
                linger=linger,
                data=data,
                test=test,
            )
            party = make_party(role, options)
        except (*LEDGER_ERRORS, ValueError, OSError) as err:  # OSError: the chain cannot be reached
            raise fail(err) from None
        raise typer.Exit(run_party(party))

    command.__doc__ = f"Run one {role} process of a ledger system."
    ledger_app.command(str(role))(command)


for _role in Role:
    _party_command(_role)


def _pairs(items: list[str] | None, option: str, value: type) -> dict[int, object]:
    out = {}
    for item in items or []:
        peer, _, text = item.partition("=")
        try:
            out[int(peer)] = value(text)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: expected PEER=VALUE", param_hint=option) from None
    return out


def _audit_table(rows: list[AuditRow]) -> Table:
    table = Table(title="audit: every release checked")
    for column in ("round", "version", "accepted", "rejected", "model hash", "scores"):
        table.add_column(column)
    for row in rows:
        scores = " ".join(f"{s:.3f}" for s in row.scores)
        table.add_row(
            str(row.round),
            str(row.version),
            str(row.accepted),
            str(row.rejected),
            row.digest.hex()[:16],
            scores,
        )
    return table


@ledger_app.command()
def launch(
    config: ConfigOption,
    dir: Annotated[Path, typer.Option(help="folder for the parties' data directories")] = Path("ledger-run"),
    chain: Annotated[
        str | None, typer.Option(help="JSON-RPC URL (default: start a local hardhat node)")
    ] = None,
    throttle: Annotated[list[str] | None, typer.Option(help="PEER=SECONDS: a throttled trainer")] = None,
    behaviour: Annotated[list[str] | None, typer.Option(help="PEER=BEHAVIOUR: a misbehaving party")] = None,
    timeout: TimeoutOption = 30.0,
    within: Annotated[float, typer.Option(help="give up on the whole run after this many seconds")] = 3600.0,
    own_data: Annotated[
        bool, typer.Option(help="each party but the publisher reads a data file of its own (else: its share)")
    ] = True,
) -> None:
    """Start a whole FLoBC (rule = flobc) or publisher (any other rule) system, run it, audit it."""
    try:
        cfg = load_config(config)
        parties = parties_of(
            cfg, _pairs(throttle, "--throttle", float), _pairs(behaviour, "--behaviour", Behaviour)
        )
        with LedgerSystem(cfg, dir, parties, chain=chain, timeout=timeout, own_data=own_data) as system:
            console.print(f"registry {system.ledger.address} on {system.chain_url}; {len(parties)} parties")
            outcome = system.wait(within)
            console.print(f"run {outcome}: {len(system.state().releases)} versions released")
            console.print(_audit_table(system.audit()))
    except AuditError as err:
        console.print(f"[bold red]audit failed:[/] {err}")
        raise typer.Exit(1) from None
    except (*LEDGER_ERRORS, TimeoutError) as err:
        raise fail(err) from None
    if outcome is Outcome.HALTED:
        raise typer.Exit(3)


@ledger_app.command()
def deploy(chain: ChainOption) -> None:
    """Deploy a fresh registry from the node's first account (its owner); prints its address."""
    try:
        ledger = Ledger.connect(chain)
    except LEDGER_ERRORS as err:
        raise fail(err) from None
    console.print(ledger.address)


@ledger_app.command()
def account(dir: Annotated[Path, typer.Option(help="the party's data directory")]) -> None:
    """The Ethereum account of the party with data directory DIR (its key is created there at first)."""
    try:
        console.print(load_account(dir).address)
    except LEDGER_ERRORS as err:
        raise fail(err) from None


@ledger_app.command()
def register(
    chain: ChainOption,
    contract: ContractOption,
    trainer: Annotated[list[str] | None, typer.Option(help="a trainer's (client's) account")] = None,
    validator: Annotated[list[str] | None, typer.Option(help="a validator's (publisher's) account")] = None,
    quota: Annotated[int, typer.Option(min=1, help="updates per trainer and round: BAP's quota")] = 1,
) -> None:
    """As the registry's owner: set the quota, fund the parties' accounts and register their roles, in the
    order given."""
    try:
        ledger = Ledger(Web3(Web3.HTTPProvider(chain)), Web3.to_checksum_address(contract))
        checked = [[Web3.to_checksum_address(a) for a in accounts or []] for accounts in (trainer, validator)]
        register_parties(ledger, *checked, quota)
    except (*LEDGER_ERRORS, ValueError) as err:
        raise fail(err) from None
    console.print(f"{len(checked[0])} trainers and {len(checked[1])} validators registered")


@ledger_app.command()
def audit(
    config: ConfigOption,
    chain: ChainOption,
    contract: ContractOption,
    bootstrap: Annotated[list[str], typer.Option(help="a DHT seed of the run's parties, host:port")],
) -> None:
    """Check a run: quorums, voters, scores, and every release against its re-fetched updates."""
    try:
        ledger = Ledger(Web3(Web3.HTTPProvider(chain)), Web3.to_checksum_address(contract))
        rows = asyncio.run(audit_chain(ledger, system_config(load_config(config)), bootstrap))
    except AuditError as err:
        console.print(f"[bold red]audit failed:[/] {err}")
        raise typer.Exit(1) from None
    except LEDGER_ERRORS as err:
        raise fail(err) from None
    console.print(_audit_table(rows))
    last = rows[-1]
    console.print(f"{len(rows)} versions verified; latest {last.digest.hex()[:16]} (round {last.round})")
