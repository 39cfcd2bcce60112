"""Model exchange on 127.0.0.1: whole verified models or an error, and a server that outlives bad clients."""

import asyncio
import contextlib
import dataclasses
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import torch
from statuses import serving, status_of

import ppaia
from ppaia import codec
from ppaia.network.content import cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.status import Latest, Phase
from ppaia.network.transfer import BanList, Fetched, ModelServer, NotReady, fetch_model, fetch_status
from ppaia.network.wire import Request, open_message, read_frame, seal, write_frame

HOST = "127.0.0.1"
SERVER = Identity.generate()
CLIENT = Identity.generate()
PARAMS = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.randn(3)}
EXPECTED = codec.expected_of(PARAMS)
TRANSPOSED = {"layer.weight": ("float32", [4, 3]), "layer.bias": ("float32", [3])}
STATUS_CONFIG = ppaia.ExperimentConfig(peers=3, rounds=5, model="logistic")
LENIENT = {"max_strikes": 10_000}  # for tests that misbehave on purpose yet must still be served


def run(scenario: Awaitable) -> object:
    async def bounded() -> object:
        async with asyncio.timeout(30):
            return await scenario

    return asyncio.run(bounded())


async def fetch(port: int, *, round: int = 1, step: int = 0, **options: object) -> Fetched:
    arguments: dict = {
        "identity": CLIENT,
        "round": round,
        "step": step,
        "expected": EXPECTED,
        "max_bytes": 1 << 30,
        "timeout": 5.0,
    }
    return await fetch_model(HOST, port, **(arguments | options))


async def failure(port: int, **options: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        await fetch(port, **options)
    return caught.value


def bit_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return got.keys() == want.keys() and all(
        got[name].dtype == want[name].dtype
        and codec.encode({"t": got[name]}) == codec.encode({"t": want[name]})
        for name in want
    )


Respond = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(respond: Respond) -> AsyncIterator[int]:
    """A server that answers each request with `respond`, then holds the connection open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = open_message(await read_frame(reader, 4096), kinds=("request",))
            assert isinstance(request, Request)
            await respond(request, writer)
            with contextlib.suppress(asyncio.CancelledError):  # cancelled when the test's loop ends
                await asyncio.sleep(30)  # the client must not wait for more than it was promised
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def header(request: Request, **change: object) -> bytes:
    """A signed model header answering `request` for PARAMS, with fields changed as given."""
    data = codec.encode(PARAMS)
    fields = {
        "round": request.round,
        "step": request.step,
        "cid": cid_of(data),
        "size": len(data),
        "chunk": 1 << 20,
        "tensors": codec.tensor_spec(PARAMS),
        "nonce": request.nonce,
    }
    return seal(SERVER, "model", **(fields | change))


def test_a_small_model_round_trips_bit_exact() -> None:
    async def scenario() -> None:
        async with ModelServer(SERVER) as server:
            version = server.publish(1, 0, PARAMS)
            got = await fetch(server.port, expect_sender=SERVER.peer_id)
            assert bit_exact(got.tensors, PARAMS)
            assert (got.sender, got.public_key, got.round, got.step) == (
                SERVER.peer_id,
                SERVER.public_key,
                1,
                0,
            )
            assert got.cid == version.cid and version.size == len(codec.encode(PARAMS))
            assert server.served == {"model": 1} and not server.rejections

    run(scenario())


def test_a_20_mb_model_arrives_in_chunks_bit_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    big = {"w": torch.randn(2500, 2000, generator=generator), "i": torch.arange(1000, dtype=torch.int64)}

    async def scenario() -> None:
        async with ModelServer(SERVER, chunk=1 << 20) as server:
            version = server.publish(7, 2, big)
            assert version.size > 20_000_000
            got = await fetch(server.port, round=7, step=2, expected=codec.expected_of(big))
            assert bit_exact(got.tensors, big)

    run(scenario())


def test_versions_not_held_are_answered_not_ready_with_the_latest() -> None:
    async def scenario() -> None:
        async with ModelServer(SERVER, keep=2) as server:
            with pytest.raises(NotReady) as caught:
                await fetch(server.port)
            assert caught.value.latest is None and caught.value.sender == SERVER.peer_id
            for step in range(3):
                server.publish(1, step, PARAMS)
            with pytest.raises(NotReady) as caught:
                await fetch(server.port, round=1, step=0)  # dropped: only the last 2 are kept
            assert caught.value.latest == (1, 2)
            with pytest.raises(NotReady):
                await fetch(server.port, round=2, step=0)  # not yet
            assert (await fetch(server.port, round=1, step=1)).step == 1
            assert server.served == {"not_ready": 3, "model": 1}

    run(scenario())


def test_publish_only_newer_versions() -> None:
    server = ModelServer(SERVER)
    server.publish(2, 1, PARAMS)
    for old in [(2, 1), (2, 0), (1, 5)]:
        with pytest.raises(ValueError, match="not newer"):
            server.publish(*old, PARAMS)
    with pytest.raises(ValueError, match="out of range"):
        server.publish(-1, 0, PARAMS)
    assert server.latest is not None and (server.latest.round, server.latest.step) == (2, 1)


def test_a_lying_server_is_caught_by_the_cid() -> None:
    async def scenario() -> None:
        async with ModelServer(SERVER) as server:
            version = server.publish(1, 0, PARAMS)
            altered = bytearray(version.data)
            altered[-1] ^= 0x01  # a bit of the last float: still a well-formed model
            server._versions[(1, 0)] = dataclasses.replace(version, data=bytes(altered))
            assert (await failure(server.port)).reason == "wrong_cid"

    run(scenario())


def test_nan_tensors_are_refused() -> None:
    poisoned = PARAMS | {"layer.bias": torch.tensor([0.0, float("nan"), 1.0])}

    async def scenario() -> None:
        async with ModelServer(SERVER) as server:
            server.publish(1, 0, poisoned)  # its own CID is right: only decoding can tell
            error = await failure(server.port)
            assert error.reason == "bad_tensors" and "non-finite" in str(error)

    run(scenario())


def test_a_header_of_the_wrong_model_or_size_is_refused_before_the_body() -> None:
    """The fake server sends a header and never the body: refusal must come at once, not at the timeout."""

    async def scenario() -> None:
        cases: list[tuple[Respond, dict, str]] = [
            (lambda r, w: write_frame(w, header(r, tensors=TRANSPOSED)), {}, "bad_tensors"),
            (lambda r, w: write_frame(w, header(r)), {"max_bytes": 100}, "oversized"),
            (lambda r, w: write_frame(w, header(r, size=1 << 40)), {}, "oversized"),
            (lambda r, w: write_frame(w, header(r, nonce="00" * 16)), {}, "replay"),
            (lambda r, w: write_frame(w, header(r, round=r.round + 1)), {}, "wrong_version"),
            (lambda r, w: write_frame(w, header(r)), {"expect_sender": CLIENT.peer_id}, "wrong_sender"),
            (
                lambda r, w: write_frame(w, seal(SERVER, "status", info={}, nonce=r.nonce)),
                {},
                "unexpected_kind",
            ),
        ]
        for respond, options, expected in cases:
            async with fake_server(respond) as port:
                tick = time.perf_counter()
                error = await failure(port, **options)
                assert error.reason == expected, error
                assert time.perf_counter() - tick < 2.0

    run(scenario())


def test_a_server_that_dies_mid_transfer_gives_an_error_and_nothing_else() -> None:
    async def half_then_die(request: Request, writer: asyncio.StreamWriter) -> None:
        data = codec.encode(PARAMS)
        await write_frame(writer, header(request, chunk=64))
        await write_frame(writer, data[:64])
        writer.write(struct.pack(">I", 64) + data[64:80])
        await writer.drain()
        writer.transport.abort()

    async def scenario() -> None:
        async with fake_server(half_then_die) as port:
            assert (await failure(port)).reason in {"truncated", "unreachable"}

    run(scenario())


def test_body_frames_larger_than_announced_are_refused() -> None:
    async def oversized_chunk(request: Request, writer: asyncio.StreamWriter) -> None:
        data = codec.encode(PARAMS)
        await write_frame(writer, header(request, chunk=16))
        await write_frame(writer, data)

    async def scenario() -> None:
        async with fake_server(oversized_chunk) as port:
            assert (await failure(port)).reason == "oversized"

    run(scenario())


def test_silence_times_out_and_a_closed_port_is_unreachable() -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        return None

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free_port = probe.getsockname()[1]

    async def scenario() -> None:
        async with fake_server(silent) as port:
            tick = time.perf_counter()
            assert (await failure(port, timeout=0.3)).reason == "timeout"
            assert time.perf_counter() - tick < 2.0
        assert (await failure(free_port)).reason == "unreachable"

    run(scenario())


def test_status_is_the_peers_own_with_its_newest_version_and_a_bare_server_answers_none() -> None:
    async def scenario() -> None:
        async with serving(ModelServer(SERVER), STATUS_CONFIG, 2) as server:
            status = await fetch_status(
                HOST, server.port, identity=CLIENT, timeout=5, expect_sender=SERVER.peer_id
            )
            assert status == status_of(SERVER, STATUS_CONFIG, 2) and status.latest is None
            version = server.publish(4, 1, PARAMS)
            status = await fetch_status(HOST, server.port, identity=CLIENT, timeout=5)
            assert status.latest == Latest(round=4, step=1, cid=version.cid, size=version.size)
            assert status.round == 4 and status.index == 2 and status.phase is Phase.MIXING
            with pytest.raises(ProtocolError) as caught:
                await fetch_status(
                    HOST, server.port, identity=CLIENT, timeout=5, expect_sender=CLIENT.peer_id
                )
            assert caught.value.reason == "wrong_sender"
        async with ModelServer(SERVER) as bare:  # no status to give: the request is refused
            with pytest.raises(ProtocolError) as caught:
                await fetch_status(HOST, bare.port, identity=CLIENT, timeout=5)
            assert caught.value.reason in {"closed", "unreachable"}  # refused: reset or closed
            assert bare.rejections == {"unexpected_kind": 1}

    run(scenario())


async def send_raw(port: int, data: bytes, *, hold: float = 0.0) -> bytes:
    """Send `data` (then, after `hold` seconds, end the stream) and return all the server answers."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(hold)
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


def test_the_server_counts_bad_clients_and_keeps_serving() -> None:
    request = seal(CLIENT, "request", want="model", round=1, step=0, nonce="cd" * 16)

    async def scenario() -> None:
        async with ModelServer(SERVER, request_timeout=0.3, bans=BanList(**LENIENT)) as server:
            server.publish(1, 0, PARAMS)
            frame = struct.pack(">I", len(request)) + request
            assert await send_raw(server.port, b"\x00\x00\x00\x10garbage garbage!") == b""
            assert await send_raw(server.port, struct.pack(">I", 1 << 30)) == b""
            assert await send_raw(server.port, frame[: len(frame) // 2]) == b""
            assert await send_raw(server.port, b"") == b""
            assert await send_raw(server.port, frame[:10], hold=1.0) == b""  # slow loris: cut off
            forged = frame.replace(b'"round":1', b'"round":2')
            assert await send_raw(server.port, forged) == b""
            reply = seal(  # a reply where a request is due
                CLIENT,
                "model",
                round=1,
                step=0,
                cid=server.latest.cid,
                size=1,
                chunk=1,
                tensors={},
                nonce="cd" * 16,
            )
            assert await send_raw(server.port, struct.pack(">I", len(reply)) + reply) == b""
            assert server.rejections == {
                "malformed": 1,
                "oversized": 1,
                "truncated": 1,
                "closed": 1,
                "slow_request": 1,
                "bad_signature": 1,
                "unexpected_kind": 1,
            }
            assert bit_exact((await fetch(server.port)).tensors, PARAMS)

    run(scenario())


def test_connections_are_bounded_in_number_and_requests_come_before_idlers() -> None:
    """Every slot held by a connection that says nothing: a fetch evicts one of them instead of being
    refused (the rest of the policy: tests/network/test_transfer_dos.py)."""

    async def scenario() -> None:
        async with ModelServer(
            SERVER, max_connections=2, request_timeout=30, bans=BanList(**LENIENT)
        ) as server:
            server.publish(1, 0, PARAMS)
            idle = [await asyncio.open_connection(HOST, server.port) for _ in range(2)]
            await asyncio.sleep(0.1)
            assert bit_exact((await fetch(server.port)).tensors, PARAMS)
            assert server.rejections == {"evicted": 1} and server.served == {"model": 1}
            assert await idle[0][0].read() == b""  # the oldest was evicted
            for _, writer in idle:
                writer.close()

    run(scenario())


def test_the_ban_list_counts_strikes_bans_and_forgives() -> None:
    now = [0.0]
    bans = BanList(max_strikes=3, ban_seconds=60, max_entries=3, clock=lambda: now[0])
    assert not bans.strike("a", "malformed") and not bans.strike("a", "malformed")
    assert not bans.is_banned("a")
    assert bans.strike("a", "bad_signature") and bans.is_banned("a") and bans.banned() == ["a"]
    now[0] = 59.0
    assert bans.is_banned("a")
    now[0] = 60.0
    assert not bans.is_banned("a") and bans.banned() == []
    bans.strike("b", "x")
    bans.strike("b", "x")
    now[0] = 130.0  # strikes expire a ban period after the first
    assert not bans.strike("b", "x") and not bans.strike("b", "x")
    for key in "cdefg":
        bans.strike(key, "x")
    assert len(bans._strikes) <= 3  # bounded memory


def test_a_misbehaving_address_is_banned_then_forgiven() -> None:
    now = [0.0]
    bans = BanList(max_strikes=3, ban_seconds=60, clock=lambda: now[0])

    async def scenario() -> None:
        async with ModelServer(SERVER, bans=bans) as server:
            server.publish(1, 0, PARAMS)
            for _ in range(3):
                await send_raw(server.port, b"\x00\x00\x00\x04junk")
            assert bans.is_banned(HOST)
            assert (await failure(server.port)).reason in {"closed", "unreachable"}
            assert server.rejections["banned"] == 1
            now[0] = 61.0
            assert bit_exact((await fetch(server.port)).tensors, PARAMS)

    run(scenario())


def test_a_banned_peer_id_is_refused() -> None:
    bans = BanList(max_strikes=1)

    async def scenario() -> None:
        async with ModelServer(SERVER, bans=bans) as server:
            server.publish(1, 0, PARAMS)
            bans.strike(CLIENT.peer_id, "sent a poisoned model")  # as the peer loop would
            assert (await failure(server.port)).reason in {"closed", "unreachable"}
            assert server.rejections == {"banned": 1} and not bans.is_banned(HOST)
            other = Identity.generate()
            assert bit_exact((await fetch(server.port, identity=other)).tensors, PARAMS)

    run(scenario())


def test_stop_ends_transfers_in_progress() -> None:
    async def scenario() -> None:
        server = ModelServer(SERVER, request_timeout=30)
        await server.start()
        _, writer = await asyncio.open_connection(HOST, server.port)  # says nothing
        await asyncio.sleep(0.05)
        tick = time.perf_counter()
        await server.stop()
        assert time.perf_counter() - tick < 1.0
        writer.close()

    run(scenario())
