"""Seeded mutation fuzzing: whatever bytes arrive, only the project's own errors come out.

The generators are in fuzzing.py (shared with benchmarks/fuzz_long.py, which runs them for longer):
20,000 mutated wire frames go through the frame reader, message verification and header validation;
20,000 mutated safetensors bodies through the codec's decoder, which must refuse each bad one from a
named check (never its safety net); a live server gets a few hundred mutated requests and must still
serve afterwards; and a client fetches a few hundred mutated bodies from a hostile server that signs a
correct header, CID and size for each.
"""

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import fuzzing
import torch
from fuzzing import (
    BODY,
    BODY_CHECKS,
    BODY_EXPECTED,
    BODY_PARAMS,
    EXPECTED,
    NONCE,
    PARAMS,
    PEER,
    SEED,
    body_outcome,
    fixed_identity,
    frame_outcome,
    mutate,
    mutate_frame,
    outcome,
)
from safetensors_format import SAFETENSORS_BITS

from ppaia import codec
from ppaia.network.content import cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.transfer import BanList, ModelServer, fetch_model, verify_body
from ppaia.network.wire import open_message, read_frame, seal, write_frame

FRAMES = 20_000
BODIES = 20_000


def test_mutated_frames_raise_only_protocol_errors() -> None:
    rng = random.Random(SEED)
    frames = [fuzzing.frame(rng) for _ in range(FRAMES)]

    async def feed() -> Counter[str]:
        return Counter([await frame_outcome(frame) for frame in frames])

    outcomes = asyncio.run(feed())
    assert sum(outcomes.values()) == FRAMES
    # the mutations reach every layer: framing, JSON, schema, key, signature, CID and header checks
    for reason in [
        "oversized",
        "truncated",
        "malformed",
        "bad_signature",
        "bad_key",
        "unknown_kind",
        "bad_cid",
        "replay",
        "wrong_version",
        "bad_tensors",
        "not_ready",
        "ok",
    ]:
        assert outcomes[reason] > 0, outcomes


def test_mutated_safetensors_bodies_are_refused_by_a_named_check() -> None:
    rng = random.Random(SEED + 3)
    outcomes = Counter(body_outcome(fuzzing.body(rng)) for _ in range(BODIES))
    assert outcomes["unexpected"] == 0, outcomes  # the safety net caught nothing: the checks did
    assert set(outcomes) <= {*BODY_CHECKS, "ok"}, outcomes
    # every check refused something, and some mutated bodies were still the valid model
    for check in set(BODY_CHECKS) - {"unexpected"} | {"ok"}:
        assert outcomes[check] > 0, (check, outcomes)


def test_mutated_bodies_raise_only_protocol_errors() -> None:
    rng = random.Random(SEED + 1)
    outcomes: Counter[str] = Counter()
    for _ in range(1500):
        body = mutate(rng, BODY)
        outcomes[outcome(lambda body=body: verify_body(cid_of(body), body, EXPECTED))] += 1
        assert outcome(lambda body=body: verify_body(cid_of(BODY), body, EXPECTED)) in {"wrong_cid", "ok"}
    assert outcomes["bad_tensors"] > 1000, outcomes
    assert set(outcomes) <= {"bad_tensors", "ok"}


async def send(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(5):
            await reader.read()
    except ConnectionError:
        pass  # the server may close on us while we still write
    finally:
        writer.close()


def test_a_live_server_survives_mutated_requests() -> None:
    rng = random.Random(SEED + 2)
    client = fixed_identity("client")
    request = seal(client, "request", want="model", round=1, step=0, nonce=NONCE)
    streams = [mutate_frame(rng, request, client) for _ in range(300)]

    async def scenario() -> None:
        async with asyncio.timeout(60):
            async with ModelServer(PEER, request_timeout=0.5, bans=BanList(max_strikes=10_000)) as server:
                server.publish(1, 0, PARAMS)
                for data in streams:
                    await send(server.port, data)
                assert server.rejections.total() + server.served.total() == len(streams)
                assert server.rejections["internal"] == 0 and len(server.rejections) >= 4
                fetched = await fetch_model(
                    "127.0.0.1",
                    server.port,
                    identity=client,
                    round=1,
                    step=0,
                    expected=EXPECTED,
                    max_bytes=1 << 20,
                    timeout=5,
                )
                assert all(torch.equal(fetched.tensors[name], PARAMS[name]) for name in PARAMS)

    asyncio.run(scenario())


async def hostile_server(bodies: Iterator[bytes]) -> asyncio.Server:
    """A server that answers each request with the next of `bodies` under a correctly signed header
    (the expected spec, the body's own CID and size), so that only the body itself can be at fault."""
    spec = codec.tensor_spec(BODY_PARAMS)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = open_message(await read_frame(reader, 1 << 10), kinds=("request",))
        data = next(bodies)
        header = seal(
            PEER,
            "model",
            round=request.round,  # type: ignore[attr-defined]
            step=request.step,  # type: ignore[attr-defined]
            cid=cid_of(data),
            size=len(data),
            chunk=256,
            tensors=spec,
            nonce=request.nonce,  # type: ignore[attr-defined]
        )
        await write_frame(writer, header)
        for start in range(0, len(data), 256):
            await write_frame(writer, data[start : start + 256])
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_a_client_refuses_hostile_bodies_behind_a_valid_header() -> None:
    """Every dtype the safetensors format names, declared with consistent sizes (the issue's F8_E8M0
    crash), then 200 generated bodies: fetch_model returns the model or raises bad_tensors."""
    rng = random.Random(SEED + 4)
    bodies = [fuzzing.relabelled(dtype) for dtype in SAFETENSORS_BITS]
    bodies += [fuzzing.body(rng) for _ in range(200)]
    client = fixed_identity("client")

    async def scenario() -> Counter[str]:
        outcomes: Counter[str] = Counter()
        async with asyncio.timeout(60):
            server = await hostile_server(iter(bodies))
            port = server.sockets[0].getsockname()[1]
            async with server:
                for _ in bodies:
                    fetch = fetch_model(
                        "127.0.0.1",
                        port,
                        identity=client,
                        round=1,
                        step=0,
                        expected=BODY_EXPECTED,
                        max_bytes=1 << 20,
                        timeout=5,
                    )
                    try:
                        await fetch
                        outcomes["ok"] += 1
                    except ProtocolError as err:
                        outcomes[err.reason] += 1
        return outcomes

    outcomes = asyncio.run(scenario())
    assert set(outcomes) <= {"ok", "bad_tensors"} and outcomes["bad_tensors"] >= len(SAFETENSORS_BITS) - 1
    assert outcomes["ok"] >= 1  # the body relabelled "F32", and some generated ones, are the valid model
