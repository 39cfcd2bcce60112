"""What a peer does with a reply it refused: count it, strike the sender, ban it after repeated strikes.

A failure that is the sender's doing is logged, counted by reason and strikes the sender's peer id, which
is banned for a while after repeated strikes (its models are not used, its requests refused: the
:class:`BanList` is shared with the peer's server). That includes a sender that starts a reply and then
trickles it (``slow_sender``), and a status that is not a valid one. A sender that is unreachable,
never starts a reply in time, closes the connection, or whose address now answers with another key, is
only looked up again: that happens to honest peers that crashed or moved.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.transfer import BanList

__all__ = ["LOOK_AGAIN", "Strikes"]

log = logging.getLogger(__name__)

# The sender may be gone, or moved (another key answers at its old address): look it up again, no strike.
LOOK_AGAIN = frozenset({Reason.UNREACHABLE, Reason.TIMEOUT, Reason.CLOSED, Reason.WRONG_SENDER})


class Strikes:
    """Peer `me`'s refusals of what other peers sent: `rejections` by reason, and the `bans`. The log
    names peer `index` as `names` says (an open swarm's peer: by its id, having no index)."""

    def __init__(self, me: int | str, bans: BanList | None = None, names: Callable[[int], str] = str) -> None:
        self.me = me
        self.names = names
        self.bans = bans if bans is not None else BanList()
        self.rejections: Counter[str] = Counter()  # by Reason

    def is_banned(self, peer_id: str | None) -> bool:
        """Whether the peer with id `peer_id` (None: not known yet) is banned now."""
        return peer_id is not None and self.bans.is_banned(peer_id)

    def reject(self, index: int, peer_id: str | None, err: ProtocolError, what: str = "model") -> bool:
        """Count the refusal `err` of a `what` from peer `index` (id `peer_id`, if pinned), strike the
        sender if it is to blame; whether its address is to be looked up again."""
        if err.reason in LOOK_AGAIN:
            if err.reason == Reason.WRONG_SENDER:  # counted (someone else answers there), not struck
                self.rejections[err.reason] += 1
            return True
        self.rejections[err.reason] += 1
        sender = self.names(index) if index >= 0 else (peer_id or "unknown")[:8]
        log.warning("peer %s: rejected a %s from peer %s (%s): %s", self.me, what, sender, err.reason, err)
        if peer_id is not None and self.bans.strike(peer_id, err.reason):
            log.warning("peer %s: peer %s (%s) is banned", self.me, sender, peer_id)
        return False
