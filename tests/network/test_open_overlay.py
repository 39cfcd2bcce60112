"""An open swarm's overlay (:mod:`ppaia.network.overlay`): topology rules over links both ends agreed to.

The parity test runs the rule's own code on each peer's ego graph, as an open peer does, against the
simulator's plan over the whole graph. The others run on real sockets (127.0.0.1): hostile link
messages against a peer's real server and overlay, and small open swarms of in-process peers
(:class:`ppaia.network.host.Host`).
"""

from __future__ import annotations

import asyncio
import time

import networkx as nx
import pytest
import torch
from open_parts import CONFIG, write_parts
from test_open_swarm import SAMPLING, spec

import ppaia
from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.host import Host
from ppaia.network.identity import Identity
from ppaia.network.overlay import MISSES, Overlay, overlay_roles
from ppaia.network.peer import LOOPBACK
from ppaia.network.records import PeerRecord
from ppaia.network.sampling import View
from ppaia.network.strikes import Strikes
from ppaia.network.swarm import HOST
from ppaia.network.transfer import BanList, ModelServer, request_link
from ppaia.network.wire import MAX_DEGREE, LinkClaim, open_message, read_frame, seal, write_frame
from ppaia.rules import RULES, RoundContext, apply_plan
from ppaia.topology import MIXINGS, PeerGraph

DEGREE = 3


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[list[str], str]:
    return write_parts(tmp_path_factory.mktemp("overlay-data"), 6)


@pytest.mark.parametrize("rule", ["consensus", "trimmed_mean(beta=0.2)"])
def test_a_topology_rule_runs_on_an_overlay_of_agreed_links_with_the_same_weights_at_both_ends(
    parts, tmp_path, rule
):
    """6 peers of an open swarm, random_regular(k=3) in the config: every peer finishes, and in the
    last round every link was held at both ends, each end at most 3 links, with the same Metropolis
    weight 1/(1 + max(dᵢ, dⱼ)) at both ends."""
    data, test = parts
    cfg = ppaia.ExperimentConfig.model_validate(
        CONFIG | {"rule": rule, "topology": f"random_regular(k={DEGREE})", "rounds": 4}
    )

    async def scenario():
        host = Host(cfg, f"overlay-{rule[:9]}", wait=20.0, linger=30.0, sampling=SAMPLING)
        ports: dict[str, int] = {}
        for i in range(6):
            host.join(f"p{i}", spec(tmp_path, f"p{i}", data[i], test, None if i == 0 else "p0", ports))
        return host, await host.wait_all(120)

    host, outcome = asyncio.run(scenario())
    assert outcome == dict.fromkeys(outcome, None) and len(outcome) == 6, outcome
    rows = {peer.identity.peer_id: peer.status().membership.links for peer in host.peers.values()}
    for peer in host.peers.values():
        assert peer.progress.round == cfg.rounds
    agreed = 0
    for me, row in rows.items():
        assert 1 <= len(row) <= DEGREE, rows
        for other, weight in row.items():
            assert me in rows[other], (me, other, rows)  # symmetric: both ends held the link
            most = max(len(row), len(rows[other]))
            # Metropolis from the announced degrees; a link made elsewhere in the last round (a peer the
            # greedy build left short) may reach one end's degree a keep later: one less, for that round
            assert weight in (1 / (1 + most), 1 / most), rows
            agreed += weight == rows[other][me] == 1 / (1 + most)
    assert 2 * agreed >= sum(map(len, rows.values())), rows  # the lag touches one peer's links, not most


@pytest.mark.parametrize(
    "rule", ["consensus(steps=2)", "p2pl", "median", "trimmed_mean(beta=0.3)", "clipped_gossip"]
)
@pytest.mark.parametrize(
    "graph", [nx.random_regular_graph(3, 8, seed=1), nx.gnp_random_graph(9, 0.4, seed=2)]
)
def test_a_peers_overlay_row_is_its_row_of_the_simulators_round_on_the_same_graph(rule, graph):
    """Every peer, knowing only its neighbours (at positions of its own) and the degrees they announce,
    mixes to exactly what the simulator computes for it over the whole graph."""
    rule = RULES.create(rule)
    whole = PeerGraph.from_networkx(graph)
    n, degree = whole.n, whole.degree()
    metropolis = MIXINGS.create("metropolis")
    ctx = RoundContext(1, whole, torch.ones(n, dtype=torch.long), metropolis, 1.0, torch.Generator())
    params = torch.randn(n, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = apply_plan(rule, rule.plan(ctx), params.clone(), ctx)

    def position(j: int) -> int:  # where a peer keeps neighbour j: not its index in the graph
        return 5 + 2 * j

    hoods = {peer: whole.neighbours(peer).tolist() for peer in range(n)}
    roles = {
        peer: overlay_roles(rule, ctx, {position(j): int(degree[j]) for j in hoods[peer]})
        for peer in range(n)
    }
    current = params.clone()
    for step in range(len(roles[0])):  # every peer runs its own row of each step over what it received
        mixed = current.clone()
        for peer in range(n):
            row = roles[peer][step].row
            have = {0: current[peer]} | {position(j): current[j] for j in hoods[peer]}
            mixed[peer] = rule.combine(torch.stack([have[int(s)] for s in row.sender_ids]), row, ctx)[0]
        current = mixed
    torch.testing.assert_close(current, expected)


def record_of(identity: Identity, port: int, now: float | None = None) -> PeerRecord:
    now = time.time() if now is None else now
    return PeerRecord.create(identity, host=HOST, udp_port=port, tcp_port=port, now=now, ttl=60)


async def honest_overlay(bans: BanList) -> tuple[Overlay, ModelServer, Identity]:
    """A peer's overlay of degree :data:`DEGREE` answering link requests through its real server, both
    striking into `bans`."""
    me = Identity.generate()
    server = ModelServer(me, HOST, 0, bans=bans, max_request_bytes=8192, shared_addresses=LOOPBACK)

    async def vet(peer_id: str) -> bool:
        return True

    overlay = Overlay(
        me,
        View(me.peer_id, size=8, shuffle=4),
        lambda: record_of(me, server.port),
        Strikes(0, bans),
        degree=DEGREE,
        usable=lambda peer_id: not bans.is_banned(peer_id),
        vet=vet,
        timeout=2.0,
    )
    server.link = overlay.answer
    await server.start()
    return overlay, server, me


async def say(server: ModelServer, to: Identity, who: Identity, op: str, degree: int, offer=None):
    """`who`'s link claim to the peer `to` serving at `server`: its answer (linked, degree)."""
    claim = LinkClaim(op=op, degree=degree)
    offer = [record_of(who, 1).signed] if offer is None and op == "propose" else offer or []
    reply = await request_link(
        HOST, server.port, identity=who, claim=claim, offer=offer, timeout=2.0, expect_sender=to.peer_id
    )
    return reply.linked, reply.degree


def out_of_range(op: str) -> list[int]:
    """Every degree a link `op` may carry on the wire that is out of range in a swarm of degree 3."""
    low, high = (0, DEGREE - 1) if op == "drop" else (1, DEGREE)
    return [d for d in range(MAX_DEGREE + 1) if not low <= d <= high]


def test_hostile_link_requests_are_refused_struck_and_logged_and_never_exceed_a_peers_degree(caplog):
    """Against a peer's real server and overlay: every out-of-range degree of every op, keeps and drops
    of a link never agreed (once told), proposals without the proposer's own valid record, a proposal
    flood, and more proposers than slots. Each refusal is a ProtocolError of the server's (the client
    gets no answer), a strike (one bans here) and a log line; the peer keeps serving and never holds
    more than its degree."""

    async def scenario():
        bans = BanList(max_strikes=1)
        overlay, server, me = await honest_overlay(bans)
        refused: list[tuple[Identity, Reason]] = []

        async def refuse(reason: Reason, op: str, degree: int, offer=None, who=None) -> None:
            who = who or Identity.generate()
            with pytest.raises(ProtocolError):
                await say(server, me, who, op, degree, offer)
            refused.append((who, reason))

        try:
            for op in ("propose", "keep", "drop"):
                for degree in out_of_range(op):
                    await refuse(Reason.BAD_LINK, op, degree)
            stranger = Identity.generate()  # claims a link the peer never agreed to
            assert await say(server, me, stranger, "keep", 2) == (False, 0)  # told: no strike yet
            await refuse(Reason.BAD_LINK, "keep", 2, who=stranger)
            other = Identity.generate()
            assert await say(server, me, other, "keep", 1) == (False, 0)
            await refuse(Reason.BAD_LINK, "drop", 0, who=other)
            await refuse(Reason.BAD_LINK, "propose", 1, offer=[])
            await refuse(Reason.BAD_LINK, "propose", 1, offer=[record_of(Identity.generate(), 1).signed])
            who = Identity.generate()
            twice = [record_of(who, 1).signed, record_of(Identity.generate(), 1).signed]
            await refuse(Reason.BAD_LINK, "propose", 1, offer=twice, who=who)
            forged = Identity.generate()
            stale = record_of(forged, 1, now=time.time() + 3600).signed  # from the future
            await refuse(Reason.BAD_RECORD, "propose", 1, offer=[stale], who=forged)
            proposers = [Identity.generate() for _ in range(3 * DEGREE)]
            answers = [await say(server, me, p, "propose", 1) for p in proposers]
            assert [linked for linked, _ in answers] == [True] * DEGREE + [False] * (2 * DEGREE)
            assert max(degree for _, degree in answers) == DEGREE == len(overlay.links)
            await refuse(Reason.LINK_FLOOD, "propose", 1, who=proposers[-1])  # again, right away
            assert await say(server, me, proposers[0], "keep", 2) == (True, DEGREE)  # still serving
            return refused, server.rejections, bans, overlay
        finally:
            await server.stop()

    with caplog.at_level("WARNING"):
        refused, rejections, bans, overlay = asyncio.run(scenario())
    for who, _ in refused:
        assert bans.is_banned(who.peer_id)
    for reason in {reason for _, reason in refused}:
        assert rejections[reason] == sum(r == reason for _, r in refused)
        assert f"rejected connection from 127.0.0.1: {reason}" in caplog.text
    assert len(overlay.links) == DEGREE


@pytest.mark.parametrize("op", ["propose", "keep"])
def test_hostile_link_answers_are_refused_struck_and_never_make_a_link(op):
    """An honest peer's overlay asking a member that answers its proposal, or its keep, with every
    degree out of range: no link (or the link dropped), a ``bad_link`` strike."""

    async def scenario():
        cases = [(True, d) for d in out_of_range("keep")] + [
            (False, d) for d in range(DEGREE + 1, MAX_DEGREE + 1)
        ]
        hostile = Identity.generate()
        answer = {"propose": (True, 1), "keep": (True, 1), "drop": (False, 0)}

        def link(sender, claim, offer):
            return answer[claim.op]

        server = ModelServer(hostile, HOST, 0, link=link, max_request_bytes=8192)
        await server.start()
        outcomes = []
        try:
            for bad in cases:
                overlay, own_server, _ = await honest_overlay(BanList(max_strikes=1))
                await own_server.stop()
                overlay.view.verify(record_of(hostile, server.port), time.time())
                answer[op] = bad
                await overlay.tick()  # proposes, and keeps once linked
                await overlay.tick()
                answer.update(propose=(True, 1), keep=(True, 1))
                outcomes.append((overlay.links.copy(), overlay.strikes))
        finally:
            await server.stop()
        return hostile, outcomes

    hostile, outcomes = asyncio.run(scenario())
    for case, (links, strikes) in enumerate(outcomes):
        assert hostile.peer_id not in links, case
        assert strikes.rejections[Reason.BAD_LINK] == 1 and strikes.is_banned(hostile.peer_id)


def test_links_to_a_peer_that_left_are_dropped_and_replaced_from_the_view():
    """Three peers' overlays of degree 1 on their real servers: a and b link; b leaves (its server
    closes), and after MISSES unanswered keeps a drops the link and links with c, the other member of
    its view."""

    async def scenario():
        peers = [await honest_overlay(BanList()) for _ in range(3)]
        (a, _, a_id), (b, b_server, b_id), (c, c_server, c_id) = peers
        for overlay, _, _ in peers:
            overlay.degree = 1
        try:
            a.view.verify(record_of(b_id, b_server.port), time.time())
            await a.tick()
            assert set(a.links) == {b_id.peer_id} and set(b.links) == {a_id.peer_id}
            a.view.verify(record_of(c_id, c_server.port), time.time())
            await b_server.stop()
            for _ in range(MISSES - 1):
                await a.tick()
                assert set(a.links) == {b_id.peer_id}  # one keep missed: not yet
            await a.tick()
            return set(a.links) == {c_id.peer_id} and set(c.links) == {a_id.peer_id}
        finally:
            for _, server, _ in peers:
                await server.stop()

    assert asyncio.run(scenario())


@pytest.mark.parametrize(
    ("unrequested", "reason"),
    [
        ("another nonce", Reason.REPLAY),  # an accept recorded from another exchange
        ("another kind", Reason.UNEXPECTED_KIND),
        ("another signer", Reason.WRONG_SENDER),
    ],
)
def test_an_accept_that_answers_no_request_of_this_peer_is_refused(unrequested, reason):
    """A member whose server answers a proposal with an accept that is not the answer to it: nothing is
    linked, and the refusal is counted (struck, but for another signer: then someone else answers at
    the member's address, which is looked up again)."""
    member, other = Identity.generate(), Identity.generate()

    async def scenario():
        async def answer(reader, writer):
            request = open_message(await read_frame(reader, 8192), kinds=("request",))
            signer, nonce = (other if unrequested == "another signer" else member), request.nonce
            if unrequested == "another nonce":
                nonce = "0" * 32
            if unrequested == "another kind":
                reply = seal(signer, "view", nonce=nonce, records=[])
            else:
                reply = seal(signer, "link", nonce=nonce, linked=True, degree=1)
            await write_frame(writer, reply)
            writer.close()

        server = await asyncio.start_server(answer, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        bans = BanList(max_strikes=1)
        overlay, own, _ = await honest_overlay(bans)
        try:
            overlay.view.verify(record_of(member, port), time.time())
            await overlay.tick()
            return overlay.links, overlay.strikes.rejections, bans.is_banned(member.peer_id)
        finally:
            server.close()
            await own.stop()

    links, rejections, banned = asyncio.run(scenario())
    assert not links and rejections[reason] == 1
    assert banned == (reason != Reason.WRONG_SENDER)
