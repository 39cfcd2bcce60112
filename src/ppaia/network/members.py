"""The members file: which peer id plays each swarm index (`ppaia peer --members FILE`).

A swarm with a members file is closed: a peer follows, for index i, only the key the file lists, and
finds it through that key's own `peer:` record, so a claim to play index i signed by any other key is
never even looked at. `ppaia launch` creates every peer's key up front and writes this file. Without
one, a peer pins the first holder of an index as the DHT's storing nodes agree on it (see
`ppaia.network.dht.Providers`).

The format is TOML, one line per index::

    [members]
    0 = "3f9a…"  # 40 hex characters: the peer id (first 20 bytes of SHA-256 of its public key)
    1 = "b07c…"
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Sequence
from pathlib import Path

from ppaia.network.errors import NetworkError

__all__ = ["MembersError", "initial_pins", "read_members", "write_members"]


class MembersError(NetworkError):
    """A members file that is unreadable, malformed, or does not list exactly the swarm's indices."""


def _peer_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 40 and set(value) <= set(string.hexdigits)


def read_members(path: str | Path, peers: int) -> tuple[str, ...]:
    """The peer id of each index 0..peers-1 (lower-case hex), from the members file at `path`."""
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("members")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise MembersError(f"members file {path}: {err}") from None
    if not isinstance(table, dict):
        raise MembersError(f'members file {path}: expected a [members] table of index = "peer id"')
    expected = {str(index) for index in range(peers)}
    if set(table) != expected:
        missing, extra = sorted(expected - set(table), key=int), sorted(set(table) - expected)
        raise MembersError(
            f"members file {path}: must list indices 0..{peers - 1} exactly (missing {missing}, "
            f"unexpected {extra})"
        )
    bad = {index: value for index, value in table.items() if not _peer_id(value)}
    if bad:
        raise MembersError(f"members file {path}: not a 40-hex-character peer id: {bad}")
    ids = tuple(table[str(index)].lower() for index in range(peers))
    if len(set(ids)) != peers:
        raise MembersError(f"members file {path}: one peer id is listed for two indices")
    return ids


def write_members(path: str | Path, peer_ids: Sequence[str]) -> None:
    """Write the members file listing `peer_ids[i]` for index i."""
    lines = ["# ppaia swarm members: swarm index = peer id", "[members]"]
    lines += [f'{index} = "{peer_id}"' for index, peer_id in enumerate(peer_ids)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def initial_pins(members: Sequence[str], peers: int, index: int, peer_id: str) -> dict[int, str]:
    """The pins (index -> peer id) a peer starts with: every member, or none without a members list.
    MembersError if the list does not cover `peers` indices or names another key for this peer's own
    `index` (it would refuse its own models' senders and be refused by the others)."""
    if not members:
        return {}
    if len(members) != peers:
        raise MembersError(f"the members list names {len(members)} peers, the swarm has {peers}")
    if members[index] != peer_id:
        raise MembersError(
            f"the members list gives index {index} to {members[index]}, but this peer's key is {peer_id}"
        )
    return dict(enumerate(members))
