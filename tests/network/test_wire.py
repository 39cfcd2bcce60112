"""The wire protocol: frames bounded before they are read, messages accepted only if canonical, well-formed
and signed by the key of their sender."""

import asyncio
import json
import random
import string
import struct

import pytest

from ppaia.network.content import cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity, verify_signature
from ppaia.network.records import PeerRecord
from ppaia.network.wire import (
    DOMAIN,
    MAX_INFO_BYTES,
    LinkReply,
    ModelHeader,
    NotReadyReply,
    Request,
    StatusReply,
    canonical,
    open_message,
    read_frame,
    seal,
    signed_bytes,
    write_frame,
)

ME = Identity.generate()
OTHER = Identity.generate()
NONCE = "ab" * 16
CID = cid_of(b"model")
SPEC = {"w": ("float32", [3, 4]), "b": ("float32", [3])}
FIELDS = {
    "request": {"want": "model", "round": 3, "step": 1, "nonce": NONCE},
    "model": {
        "round": 3,
        "step": 1,
        "cid": CID,
        "size": 100,
        "chunk": 1 << 20,
        "tensors": SPEC,
        "nonce": NONCE,
    },
    "not_ready": {"round": 3, "step": 1, "latest": [2, 0], "nonce": NONCE},
    "status": {"nonce": NONCE, "info": {"peers": 4, "name": "p", "loss": 0.25, "ok": True, "x": None}},
    "view": {"nonce": NONCE, "records": ["00ff" * 8, "ab"]},
    "link": {"nonce": NONCE, "linked": True, "degree": 3},
}


def reason(data: bytes, **kwargs) -> str:
    with pytest.raises(ProtocolError) as caught:
        open_message(data, **kwargs)
    return caught.value.reason


def forge(obj: dict, signer: Identity = ME) -> bytes:
    """Canonical JSON of `obj` signed by `signer`, whatever `obj` holds (to reach the schema checks)."""
    unsigned = {name: value for name, value in obj.items() if name != "sig"}
    return canonical({**unsigned, "sig": signer.sign(signed_bytes(unsigned)).hex()})


def valid(kind: str = "request") -> dict:
    return json.loads(seal(ME, kind, **FIELDS[kind]))


def read(data: bytes, max_bytes: int, eof: bool = True) -> bytes:
    async def scenario() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        async with asyncio.timeout(2):
            return await read_frame(reader, max_bytes)

    return asyncio.run(scenario())


def frame_reason(data: bytes, max_bytes: int, eof: bool = True) -> str:
    with pytest.raises(ProtocolError) as caught:
        read(data, max_bytes, eof)
    return caught.value.reason


class Sink:
    """Stands in for a StreamWriter: collects what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def test_frames_round_trip() -> None:
    sink = Sink()
    asyncio.run(write_frame(sink, b"hello"))  # type: ignore[arg-type]
    asyncio.run(write_frame(sink, b""))  # type: ignore[arg-type]
    assert bytes(sink.data) == b"\x00\x00\x00\x05hello\x00\x00\x00\x00"
    assert read(bytes(sink.data), 5) == b"hello"


def test_an_oversized_frame_is_refused_from_its_length_without_reading_the_body() -> None:
    # no body and no end of stream: reading the body would wait until the 2 s bound
    assert frame_reason(struct.pack(">I", 1001), 1000, eof=False) == "oversized"
    assert frame_reason(struct.pack(">I", 2**32 - 1), 1 << 20, eof=False) == "oversized"


def test_a_stream_that_ends_early_is_truncated_or_closed() -> None:
    assert frame_reason(b"", 100) == "closed"
    assert frame_reason(b"\x00\x00", 100) == "truncated"
    assert frame_reason(struct.pack(">I", 10) + b"12345", 100) == "truncated"


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("request", Request),
        ("model", ModelHeader),
        ("not_ready", NotReadyReply),
        ("status", StatusReply),
        ("link", LinkReply),
    ],
)
def test_seal_and_open_round_trip(kind: str, cls: type) -> None:
    data = seal(ME, kind, **FIELDS[kind])
    message = open_message(data)
    assert isinstance(message, cls) and message.kind == kind
    assert message.sender == ME.peer_id and message.public_key == ME.public_key
    assert data == canonical(json.loads(data)), "sealed messages are canonical"
    for name, value in FIELDS[kind].items():
        got = getattr(message, name)
        if name == "tensors":
            assert got == {n: (d, s) for n, (d, s) in value.items()}
        elif name == "latest":
            assert got == tuple(value)
        else:
            assert got == value


def test_a_forged_signature_or_altered_field_fails_verification() -> None:
    obj = valid()
    obj["sig"] = ("0" if obj["sig"][0] != "0" else "1") + obj["sig"][1:]
    assert reason(canonical(obj)) == "bad_signature"
    obj = valid()
    obj["round"] = 4  # canonical and well formed, but not what was signed
    assert reason(canonical(obj)) == "bad_signature"
    obj = valid()
    obj["key"] = OTHER.public_key.hex()
    obj["sender"] = OTHER.peer_id  # another peer's identity on my signature
    assert reason(canonical(obj)) == "bad_signature"


def test_the_sender_must_be_the_keys_peer_id() -> None:
    obj = valid()
    obj["key"] = OTHER.public_key.hex()  # signed by OTHER, claiming to come from ME
    assert reason(forge(obj, OTHER)) == "bad_key"


def test_kinds_unknown_or_not_allowed_here() -> None:
    obj = valid()
    obj["kind"] = "gimme"
    assert reason(forge(obj)) == "unknown_kind"
    obj.pop("kind")
    assert reason(forge(obj)) == "unknown_kind"
    assert reason(seal(ME, "model", **FIELDS["model"]), kinds=("request",)) == "unexpected_kind"
    with pytest.raises(ValueError, match="unknown message kind"):
        seal(ME, "gimme")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("round", "3"),
        ("round", True),
        ("round", 3.0),
        ("round", -1),
        ("round", 2**41),
        ("round", None),
        ("want", "everything"),
        ("nonce", "ab" * 15),
        ("nonce", "AB" * 16),
        ("nonce", 5),
        ("sender", ME.peer_id[:-1]),
        ("key", ME.public_key.hex()[:-2]),
        ("extra", 1),
    ],
)
def test_fields_of_the_wrong_type_or_range_or_extra_are_malformed(field: str, value: object) -> None:
    obj = valid()
    obj[field] = value
    assert reason(forge(obj)) == "malformed"


@pytest.mark.parametrize("field", ["round", "nonce", "want", "sig", "key", "sender"])
def test_missing_fields_are_malformed(field: str) -> None:
    obj = valid()
    obj.pop(field)
    assert reason(forge(obj) if field != "sig" else canonical(obj)) == "malformed"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe{}",
        b"[1, 2]",
        b'"request"',
        b"{" * 100_000,
        b"[" * 100_000,
        b'{"domain":"ppaia/wire/1","kind":"request","round":NaN}',
        b'{"domain":"ppaia/wire/1","kind":"request","round":1e999}',
        b'{"domain":"ppaia/wire/1","kind":"request","round":' + b"9" * 5000 + b"}",
    ],
)
def test_bytes_that_are_no_json_object_are_malformed(data: bytes) -> None:
    assert reason(data) == "malformed"


def test_only_the_canonical_form_is_accepted() -> None:
    data = seal(ME, "request", **FIELDS["request"])
    obj = json.loads(data)
    assert reason(json.dumps(obj, sort_keys=True).encode()) == "malformed"  # spaces
    unsorted = dict(reversed(obj.items()))
    assert reason(json.dumps(unsorted, separators=(",", ":")).encode()) == "malformed"
    assert reason(data[:-1] + b',"round":3}') == "malformed"  # a duplicate key
    assert reason(data.replace(b'"model"', b'"\\u006dodel"')) == "malformed"  # an escape where none is due


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tensors": {"w": ["float32", [3, -4]]}}, "malformed"),
        ({"tensors": {"w": ["float32", [3], 1]}}, "malformed"),
        ({"tensors": {"w": ["float 32", [3]]}}, "malformed"),
        ({"tensors": {"": ["float32", [3]]}}, "malformed"),
        ({"tensors": {"w": ["float32", [1] * 17]}}, "malformed"),
        ({"size": -1}, "malformed"),
        ({"cid": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"}, "bad_cid"),
        ({"cid": "bafkreinotacid"}, "bad_cid"),
        ({"cid": CID.upper()}, "bad_cid"),  # a valid CID, but not in canonical base32
    ],
)
def test_model_header_fields_are_checked(change: dict, expected: str) -> None:
    obj = valid("model") | change
    assert reason(forge(obj)) == expected


def test_status_info_is_bounded() -> None:
    big = {"blob": "x" * MAX_INFO_BYTES}
    with pytest.raises(ValueError, match="cannot seal"):
        seal(ME, "status", nonce=NONCE, info=big)
    obj = valid("status") | {"info": big}
    assert reason(forge(obj)) == "malformed"


def test_seal_refuses_what_open_would_refuse() -> None:
    with pytest.raises(ValueError, match="cannot seal"):
        seal(ME, "request", want="model", round=-1, step=0, nonce=NONCE)
    with pytest.raises(ValueError, match="filled in by seal"):
        seal(ME, "request", want="model", round=1, step=0, nonce=NONCE, sender=OTHER.peer_id)


# ---------------------------------------------------------------------------------------------------
# domain separation: a signature made for anything else never verifies as a message


def signed_under(prefix: bytes, obj: dict, signer: Identity = ME) -> bytes:
    """`obj` (its own "sig" dropped) as canonical JSON, signed over `prefix` + its canonical JSON."""
    unsigned = {name: value for name, value in obj.items() if name != "sig"}
    return canonical({**unsigned, "sig": signer.sign(prefix + canonical(unsigned)).hex()})


def other_prefixes(kind: str) -> list[bytes]:
    """What else a key may have signed such bytes under: no tag at all (the untagged format), the other
    kinds' tags, other versions' and protocols' tags, near misses, and seeded random ones."""
    rng = random.Random(11)
    prefixes = [f"{DOMAIN}/{other}\n" for other in FIELDS if other != kind]
    prefixes += [f"{domain}/{kind}\n" for domain in ("ppaia/wire/0", "ppaia/wire/2", "ppaia/dht/1", "")]
    prefixes += [
        f"{DOMAIN}/{kind}",
        f"{DOMAIN}{kind}\n",
        f"{DOMAIN}/{kind}\n\n",
        f"{DOMAIN.upper()}/{kind}\n",
    ]
    prefixes += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 30))) for _ in range(12)]
    return [b"", *(prefix.encode() for prefix in prefixes)]


@pytest.mark.parametrize("kind", sorted(FIELDS))
def test_a_signature_made_under_another_tag_never_verifies(kind: str) -> None:
    obj = valid(kind)
    assert open_message(signed_under(f"{DOMAIN}/{kind}\n".encode(), obj)).kind == kind  # the one tag
    for prefix in other_prefixes(kind):
        assert reason(signed_under(prefix, obj)) == "bad_signature", prefix


def test_a_dht_record_signature_never_verifies_as_a_message() -> None:
    record = PeerRecord.create(ME, host="127.0.0.1", udp_port=4000, tcp_port=4000, now=1.0, ttl=30.0)
    for kind in FIELDS:
        obj = valid(kind) | {"sig": record.signature.hex()}
        assert reason(canonical(obj)) == "bad_signature"
        assert not verify_signature(ME.public_key, bytes.fromhex(valid(kind)["sig"]), record.body)


@pytest.mark.parametrize("domain", [None, "ppaia/wire/0", "ppaia/wire/2", "ppaia/dht/1", "", 1, [DOMAIN]])
def test_a_message_of_another_protocol_or_version_is_refused_as_such(domain: object) -> None:
    """Even validly signed under its own tag (or, without a domain, in the untagged format)."""
    for kind in FIELDS:
        obj = {name: value for name, value in valid(kind).items() if name != "domain"}
        if domain is not None:
            obj["domain"] = domain
        prefix = b"" if domain is None else f"{domain}/{kind}\n".encode()
        assert reason(signed_under(prefix, obj)) == "wrong_domain"


def test_seal_fills_in_the_domain() -> None:
    assert json.loads(seal(ME, "request", **FIELDS["request"]))["domain"] == DOMAIN
    with pytest.raises(ValueError, match="filled in by seal"):
        seal(ME, "request", **FIELDS["request"], domain="ppaia/wire/2")
