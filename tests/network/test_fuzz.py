"""Seeded mutation fuzzing: whatever bytes arrive, only ProtocolError (or a NotReady answer) comes out.

Valid frames (request, model header, not_ready, status) and a small model body are mutated —
bit flips, inserted, deleted and duplicated bytes, truncation, length fields changed, JSON values swapped
(with and without a fresh signature, to get past the signature to the schema checks) — and fed to the
frame reader, message verification, header validation and body verification; a live server gets a few
hundred mutated requests and must still serve afterwards.
"""

import asyncio
import hashlib
import json
import random
import struct
from collections import Counter
from collections.abc import Callable

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ppaia import codec
from ppaia.network.content import cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.transfer import BanList, ModelServer, NotReady, check_header, fetch_model, verify_body
from ppaia.network.wire import ModelHeader, NotReadyReply, canonical, open_message, read_frame, seal

SEED = 20_261_121


def fixed_identity(name: str) -> Identity:
    """An identity derived from `name`: Ed25519 signatures are deterministic, so the runs repeat exactly."""
    return Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest()))


PEER = fixed_identity("server")
NONCE = "5a" * 16
PARAMS = {"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), "b": torch.zeros(4)}
EXPECTED = codec.expected_of(PARAMS)
BODY = codec.encode(PARAMS)
SPEC = codec.tensor_spec(PARAMS)
MESSAGES = [
    seal(PEER, "request", want="model", round=3, step=1, nonce=NONCE),
    seal(
        PEER, "model", round=3, step=1, cid=cid_of(BODY), size=len(BODY), chunk=64, tensors=SPEC, nonce=NONCE
    ),
    seal(PEER, "not_ready", round=3, step=1, latest=[2, 0], nonce=NONCE),
    seal(PEER, "status", nonce=NONCE, info={"peers": 3, "latest": {"round": 2, "cid": cid_of(b"")}}),
]
VALUES = [
    None,
    True,
    0,
    -1,
    1,
    2**31,
    2**64,
    1.5,
    "",
    "x",
    "0" * 40,
    NONCE,
    [],
    [1, 2],
    {},
    {"a": [1]},
    "\u00e9",
]


def with_length(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def swap_value(rng: random.Random, payload: bytes, signer: Identity) -> bytes:
    """A JSON value (top level or one level down) replaced; re-signed half of the time."""
    obj = json.loads(payload)
    key = rng.choice(sorted(obj))
    if isinstance(obj[key], dict) and obj[key] and rng.random() < 0.5:
        inner = rng.choice(sorted(obj[key]))
        obj[key][inner] = rng.choice(VALUES)
    elif rng.random() < 0.1:
        del obj[key]
    else:
        obj[key] = rng.choice(VALUES)
    if rng.random() < 0.5:
        unsigned = {name: value for name, value in obj.items() if name != "sig"}
        obj["sig"] = signer.sign(canonical(unsigned)).hex()
    return canonical(obj)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """`data` with one to three random byte-level mutations."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(data) + 1)
        operation = rng.randrange(6)
        if operation == 0 and data:  # bit flips
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif operation == 1:  # insertion
            data[where:where] = rng.randbytes(rng.randint(1, 8))
        elif operation == 2:  # deletion
            del data[where : where + rng.randint(1, 16)]
        elif operation == 3:  # truncation
            del data[where:]
        elif operation == 4:  # duplication
            data[where:where] = data[where : where + rng.randint(1, 32)]
        elif data:  # a byte set to a value that matters to JSON or to lengths
            data[rng.randrange(len(data))] = rng.choice(b'{}[]",:0\\\x00\xff')
    return bytes(data)


def mutate_frame(rng: random.Random, payload: bytes, signer: Identity = PEER) -> bytes:
    """A frame carrying a mutated `payload`, or a valid payload under a changed length field."""
    choice = rng.random()
    if choice < 0.25:
        return with_length(swap_value(rng, payload, signer))
    if choice < 0.40:
        length = rng.choice(
            [0, 1, len(payload) - 1, len(payload) + 1, 2**31, 2**32 - 1, rng.randrange(2**32)]
        )
        return struct.pack(">I", max(length, 0)) + payload
    if choice < 0.55:
        return mutate(rng, with_length(payload))  # may hit the length field too
    return with_length(mutate(rng, payload))


def outcome(action: Callable[[], object]) -> str:
    """ "ok", "not_ready" or the ProtocolError's reason; any other exception escapes and fails the test."""
    try:
        action()
    except ProtocolError as err:
        return err.reason
    except NotReady:
        return "not_ready"
    return "ok"


async def frame_outcome(data: bytes) -> str:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    try:
        payload = await read_frame(reader, 64 << 10)
    except ProtocolError as err:
        return err.reason

    def verify() -> None:
        message = open_message(payload)
        if isinstance(message, ModelHeader | NotReadyReply):
            check_header(message, nonce=NONCE, round=3, step=1, expected=EXPECTED, max_bytes=1 << 20)

    return outcome(verify)


def test_mutated_messages_raise_only_protocol_errors() -> None:
    rng = random.Random(SEED)
    frames = [mutate_frame(rng, rng.choice(MESSAGES)) for _ in range(2500)]

    async def feed() -> Counter[str]:
        return Counter([await frame_outcome(frame) for frame in frames])

    outcomes = asyncio.run(feed())
    assert sum(outcomes.values()) == 2500
    # the mutations reach every layer: framing, JSON, schema, key, signature, CID and header checks
    for reason in [
        "oversized",
        "truncated",
        "malformed",
        "bad_signature",
        "bad_key",
        "unknown_kind",
        "bad_cid",
    ]:
        assert outcomes[reason] > 0, outcomes
    assert outcomes["ok"] > 0 and outcomes["replay"] + outcomes["wrong_version"] + outcomes["bad_tensors"] > 0


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
