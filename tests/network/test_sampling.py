"""Peer sampling for open swarms: the view's bounds, what an exchange accepts, and hostile offers.

Real sockets on 127.0.0.1 for exchanges; the hostile parties are generated families (seeded), not one
example: forged, altered, foreign-kind, future-dated and undecodable records, lists over the bound, and
floods of validly signed records of made-up members.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest

from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.identity import Identity
from ppaia.network.records import PeerRecord, ProviderRecord
from ppaia.network.sampling import Sampler, View, verified_records
from ppaia.network.strikes import Strikes
from ppaia.network.transfer import ModelServer, exchange_view
from ppaia.network.wire import MAX_OFFER, seal

NOW = 1_000_000.0
LOOPBACK = frozenset({"127.0.0.1"})


def record(identity: Identity | None = None, host: str = "127.0.0.1", port: int = 40000, **kw) -> PeerRecord:
    kw.setdefault("now", NOW)
    kw.setdefault("ttl", 60.0)
    return PeerRecord.create(identity or Identity.generate(), host=host, udp_port=port, tcp_port=port, **kw)


def hostile_records(seed: int, count: int, now: float = NOW) -> list[bytes]:
    """Generated bad records, one family after another: a flipped signature byte, another key's
    signature, a changed port (body no longer signed), a provider record, issued beyond the clock skew,
    truncated bytes, random bytes."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        good = record(port=rng.randrange(1024, 65535), now=now)
        family = n % 7
        if family == 0:
            sig = bytearray(good.signature)
            sig[rng.randrange(len(sig))] ^= 1 << rng.randrange(8)
            out.append(dataclasses.replace(good, signature=bytes(sig)).signed)
        elif family == 1:
            other = Identity.generate()
            out.append(dataclasses.replace(good, signature=other.sign(good.body)).signed)
        elif family == 2:
            moved = dataclasses.replace(good, tcp_port=good.tcp_port ^ 1)
            out.append(dataclasses.replace(moved, signature=good.signature).signed)
        elif family == 3:
            provider = ProviderRecord.create(
                Identity.generate(),
                topic="s/members",
                host="127.0.0.1",
                udp_port=1,
                tcp_port=1,
                now=now,
                ttl=60,
            )
            out.append(provider.signed)
        elif family == 4:
            out.append(record(now=now + 3600).signed)
        elif family == 5:
            out.append(good.signed[: rng.randrange(1, len(good.signed))])
        else:
            out.append(rng.randbytes(rng.randrange(1, 400)))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_every_bad_record_refuses_the_offer_as_bad_record(seed):
    for bad in hostile_records(seed, 21):
        with pytest.raises(ProtocolError) as caught:
            verified_records([record().signed, bad], NOW)
        assert caught.value.reason == Reason.BAD_RECORD


def test_an_expired_record_is_dropped_without_blame():
    fresh, old = record(), record(now=NOW - 120, ttl=60)
    assert [r.peer_id for r in verified_records([fresh.signed, old.signed], NOW)] == [fresh.peer_id]


def test_the_view_is_bounded_and_one_member_per_address_and_a_hosts_share():
    view = View("me", size=8, shuffle=4, shared_hosts=LOOPBACK, rng=random.Random(0))
    for port in range(40000, 40020):
        view.verify(record(port=port), NOW)
    assert len(view) == 8
    # a second key at an address the view holds is not taken
    taken = next(iter(view.members.values())).address
    assert not view.verify(record(host=taken[0], port=taken[1]), NOW)
    # a host outside the shared ones gets at most a quarter of the view
    remote = View("me", size=8, rng=random.Random(0))
    accepted = sum(remote.verify(record(host="127.0.0.2", port=p), NOW) for p in range(41000, 41010))
    assert accepted == 2


def test_a_flood_of_candidates_never_enters_the_view_and_leaves_room_for_a_newcomer():
    rng = random.Random(1)
    view = View("me", size=16, rng=rng)
    honest = record(port=42000)
    hits = 0
    for _ in range(50):  # the newcomer arrives amid 4 offers of made-up members
        view.candidates.clear()
        floods = [[record(port=43000 + 8 * k + j) for j in range(MAX_OFFER)] for k in range(4)]
        view.learn(floods[0] + floods[1])
        view.learn([honest])
        view.learn(floods[2] + floods[3])
        assert len(view.candidates) <= 16 and not view.members
        hits += honest.peer_id in view.candidates
    assert hits >= 5  # random eviction: the flood cannot push the newcomer out for sure


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def sampler_on(identity: Identity, server: ModelServer, view: View, seeds=()) -> Sampler:
    sampler = Sampler(
        identity,
        view,
        lambda: PeerRecord.create(
            identity, host="127.0.0.1", udp_port=server.port, tcp_port=server.port, now=time.time(), ttl=60
        ),
        Strikes(0, server.bans),
        seeds=seeds,
        period=0.05,
    )
    server.view = sampler.answer
    server.max_request_bytes = 8192
    return sampler


def test_members_find_each_other_through_one_seed_by_exchanges():
    async def scenario():
        identities = [Identity.generate() for _ in range(10)]
        servers = [ModelServer(i, shared_addresses=LOOPBACK) for i in identities]
        for server in servers:
            await server.start()
        samplers = []
        for n, (identity, server) in enumerate(zip(identities, servers, strict=True)):
            view = View(identity.peer_id, size=5, shuffle=3, shared_hosts=LOOPBACK, rng=random.Random(n))
            seeds = () if n == 0 else (("127.0.0.1", servers[0].port),)
            samplers.append(await sampler_on(identity, server, view, seeds))
        for sampler in samplers:
            sampler.start()
        try:
            deadline = time.monotonic() + 15
            seen: set[str] = set()  # members some view held at some moment: everyone gets in
            while time.monotonic() < deadline:
                seen.update(*(s.view.ids() for s in samplers))
                if all(len(s.view) >= 3 for s in samplers) and len(seen) == 10:
                    break
                await asyncio.sleep(0.1)
            views = [set(s.view.ids()) for s in samplers]
            # dead members drop out: stop two, and within size × period (plus slack) nobody lists them
            dead = {identities[1].peer_id, identities[2].peer_id}
            for n in (1, 2):
                await samplers[n].stop()
                await servers[n].stop()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not any(dead & set(s.view.ids()) for n, s in enumerate(samplers) if n not in (1, 2)):
                    break
                await asyncio.sleep(0.1)
            left = [dead & set(s.view.ids()) for n, s in enumerate(samplers) if n not in (1, 2)]
        finally:
            for sampler in samplers:
                await sampler.stop()
            for server in servers:
                await server.stop()
        return views, seen, left

    views, seen, left = run(scenario())
    assert all(len(v) >= 3 for v in views), views
    assert all(len(v) <= 5 for v in views)  # nobody holds the whole list
    assert len(seen) == 10
    assert not any(left), left


@pytest.mark.parametrize("seed", range(2))
def test_hostile_offers_are_refused_and_struck_and_honest_exchanges_go_on(seed):
    async def scenario():
        honest, hostile = Identity.generate(), Identity.generate()
        server = ModelServer(honest, shared_addresses=LOOPBACK)
        await server.start()
        view = View(honest.peer_id, size=8, shared_hosts=LOOPBACK, rng=random.Random(seed))
        await sampler_on(honest, server, view)
        outcomes = []
        try:
            for bad in hostile_records(seed, 7, time.time()):
                now = record(hostile, port=45000, now=time.time()).signed
                try:
                    await exchange_view(
                        "127.0.0.1", server.port, identity=hostile, offer=[now, bad], timeout=5
                    )
                    outcomes.append("answered")
                except ProtocolError as err:
                    outcomes.append(err.reason)
            # an endless list is not a message at all
            many = [record(now=time.time()).signed.hex() for _ in range(MAX_OFFER + 1)]
            with pytest.raises(ValueError):
                seal(hostile, "request", want="view", round=0, step=0, nonce="ab" * 16, offer=many)
            # an honest member still exchanges
            friend = Identity.generate()
            sender, answer = await exchange_view(
                "127.0.0.1",
                server.port,
                identity=friend,
                offer=[record(friend, port=46000, now=time.time()).signed],
                timeout=5,
            )
        finally:
            await server.stop()
        return outcomes, sender, answer, view, server, hostile, friend

    outcomes, sender, answer, view, server, hostile, friend = run(scenario())
    assert all(o != "answered" for o in outcomes), outcomes  # the connection is refused, no reply
    # each bad offer is refused and struck; after 5 strikes the key is banned and refused outright
    assert server.rejections[Reason.BAD_RECORD] == 5 and server.rejections[Reason.BANNED] == 2
    assert server.bans.is_banned(hostile.peer_id)  # struck by its key, banned after repeated offers
    assert sender == server.identity.peer_id and answer
    assert friend.peer_id in view.candidates and hostile.peer_id not in view.members
