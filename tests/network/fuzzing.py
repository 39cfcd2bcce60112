"""Seeded generators of hostile input and their outcomes, shared by test_fuzz.py and benchmarks/fuzz_long.py.

**Wire frames.** Valid messages (request, model header, not_ready, status) are mutated — bit flips,
inserted, deleted and duplicated bytes, truncation, length fields changed, JSON values swapped, tensor
specs changed, keys repeated, nesting deepened, numbers and strings in forms canonical JSON does not use
(re-signed half of the time, to get past the signature to the schema checks) — and fed to the frame
reader, message verification and header validation.

**Safetensors bodies.** A valid body of a model with every kind of tensor the codec carries (floats of
three widths, an integer scalar, bools, an empty tensor) is taken apart into header entries and data,
and changed the way an attacker who knows the format would: any dtype string the format names (and
others, and non-strings), wrong, negative, huge and non-integer shapes, offsets that overlap, leave gaps
or point outside, entries missing, added, renamed or of the wrong form, ``__metadata__`` of every type,
header text that is not canonical JSON, header lengths that lie, data cut short or extended, NaN, inf
and bool bytes other than 0 and 1. Half of the layouts are then made consistent again (offsets and
data sized to the declared dtype and shape) so that a body gets past the size checks to the dtype and
shape checks, as the body of the issue's ``F8_E8M0`` attack did. Byte-level mutations come on top.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import struct
from collections.abc import Callable
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors_format import SAFETENSORS_BITS

from ppaia import codec
from ppaia.network.content import cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.transfer import NotReady, check_header
from ppaia.network.wire import (
    ModelHeader,
    NotReadyReply,
    canonical,
    open_message,
    read_frame,
    seal,
    signed_bytes,
)

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
    seal(PEER, "request", want="link", round=0, step=0, nonce=NONCE, link={"op": "keep", "degree": 2}),
    seal(PEER, "link", nonce=NONCE, linked=True, degree=2),
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
    "6b" * 16,  # another request's nonce
    [],
    [1, 2],
    {},
    {"a": [1]},
    "\u00e9",
]

# ---- byte level ----------------------------------------------------------------------------------------


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


def json_text_mutation(rng: random.Random, text: str) -> str:
    """JSON `text` changed in a way that only a strict parser notices: a repeated key, deep nesting, a
    NaN or infinity, a number with thousands of digits or in float form, a lone surrogate, whitespace."""
    keys = re.findall(r'"[^"\\]*":', text)
    choice = rng.randrange(7)
    if choice == 0 and keys:  # the first member repeated (last one wins in a lax parser)
        member = rng.choice(keys)
        return text.replace("{", "{" + member + '"x",', 1)
    if choice == 1:  # the first member's value nested `depth` arrays deep
        depth = rng.choice([4, 33, 1000, 100_000])
        return text.replace(":", ":" + "[" * depth + "0" + "]" * depth + ',"y":', 1)
    if choice == 2:
        return re.sub(
            r"(?<=[:\[,])-?\d+", rng.choice(["NaN", "Infinity", "-Infinity", "1e400"]), text, count=1
        )
    if choice == 3:
        return re.sub(
            r"(?<=[:\[,])\d+", lambda number: number[0] + rng.choice([".0", "e0", "0" * 5000]), text
        )
    if choice == 4:
        return text.replace('":', '\\ud800":', 1)
    if choice == 5:
        return rng.choice([" ", "\ufeff", "\n"]) + text + rng.choice(["", " ", "x", "{}", "\x00"])
    return text.replace(",", rng.choice([", ", ",,", ",\t"]), 1)


# ---- wire frames ---------------------------------------------------------------------------------------

TORCH_DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "bool", "complex64", "float8_e8m0fnu"]


def with_length(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def resign(obj: dict[str, Any], signer: Identity) -> dict[str, Any]:
    unsigned = {name: value for name, value in obj.items() if name != "sig"}
    return {**unsigned, "sig": signer.sign(signed_bytes(unsigned)).hex()}


def swap_value(rng: random.Random, payload: bytes, signer: Identity) -> bytes:
    """A JSON value replaced: top level, one level down or inside a tensor spec; re-signed half of the
    time."""
    obj = json.loads(payload)
    key = rng.choice(sorted(obj))
    if key == "tensors" and rng.random() < 0.5:
        name = rng.choice(sorted(obj[key]))
        dtype, shape = obj[key][name]
        obj[key][name] = rng.choice(
            [
                [rng.choice(TORCH_DTYPES + list(SAFETENSORS_BITS) + BAD_DTYPES), shape],
                [dtype, rng.choice(shape_mutations(shape))],
                [dtype],
                [dtype, shape, 0],
            ]
        )
    elif isinstance(obj[key], dict) and obj[key] and rng.random() < 0.5:
        inner = rng.choice(sorted(obj[key]))
        obj[key][inner] = rng.choice(VALUES)
    elif rng.random() < 0.1:
        del obj[key]
    else:
        obj[key] = rng.choice(VALUES)
    return canonical(resign(obj, signer) if rng.random() < 0.5 else obj)


def mutate_frame(rng: random.Random, payload: bytes, signer: Identity = PEER) -> bytes:
    """A frame carrying a mutated `payload`, or a valid payload under a changed length field."""
    choice = rng.random()
    if choice < 0.25:
        return with_length(swap_value(rng, payload, signer))
    if choice < 0.35:
        return with_length(json_text_mutation(rng, payload.decode()).encode("utf-8", "surrogatepass"))
    if choice < 0.45:
        length = rng.choice(
            [0, 1, len(payload) - 1, len(payload) + 1, 2**31, 2**32 - 1, rng.randrange(2**32)]
        )
        return struct.pack(">I", max(length, 0)) + payload
    if choice < 0.6:
        return mutate(rng, with_length(payload))  # may hit the length field too
    return with_length(mutate(rng, payload))


def outcome(action: Callable[[], object]) -> str:
    """ "ok", "not_ready" or the ProtocolError's reason; any other exception escapes."""
    try:
        action()
    except ProtocolError as err:
        return err.reason
    except NotReady:
        return "not_ready"
    return "ok"


async def frame_outcome(data: bytes) -> str:
    """The outcome of reading one frame from a stream of `data` and verifying its message as a client
    that asked for (3, 1) of the EXPECTED model would."""
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


def frame(rng: random.Random) -> bytes:
    """One hostile frame (see the module docstring)."""
    return mutate_frame(rng, rng.choice(MESSAGES))


# ---- safetensors bodies --------------------------------------------------------------------------------

BAD_DTYPES: list[Any] = [
    "",
    "f32",
    "F32 ",
    "float32",
    "F128",
    "C128",
    "F8",
    "\u0000",
    "F" * 300,
    None,
    4,
    4.0,
    True,
    [],
    ["F32"],
    {},
]
BODY_PARAMS = {
    "w": torch.randn(4, 3, generator=torch.Generator().manual_seed(1)),
    "b": torch.zeros(4),
    "h": torch.randn(2, 2, generator=torch.Generator().manual_seed(2)).half(),
    "g": torch.randn(3, generator=torch.Generator().manual_seed(3)).bfloat16(),
    "steps": torch.tensor(7),
    "mask": torch.tensor([True, False, True]),
    "none": torch.zeros(0, 2),
}
BODY_EXPECTED = codec.expected_of(BODY_PARAMS)
MODEL_BODY = codec.encode(BODY_PARAMS)
NON_FINITE = {"F32": [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\xff"], "F16": [b"\x00\x7e"], "BF16": [b"\x80\x7f"]}

Entry = list[Any]  # [name, header entry (any JSON value once mutated), raw data bytes]


def take_apart(body: bytes) -> list[Entry]:
    """A valid body's tensors, in their order in the data section."""
    (length,) = struct.unpack_from("<Q", body)
    data = body[8 + length :]
    header = json.loads(body[8 : 8 + length])
    return [[name, entry, data[slice(*entry["data_offsets"])]] for name, entry in header.items()]


def dtype_of(entry: Any) -> str | None:
    """The dtype a header entry declares, if it is a string."""
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    return dtype if isinstance(dtype, str) else None


def declared_bytes(entry: Any) -> int | None:
    """The data size a header entry declares, if it declares a plausible one."""
    dtype = dtype_of(entry)
    if dtype not in SAFETENSORS_BITS:
        return None
    shape = entry.get("shape")
    if not (isinstance(shape, list) and all(type(n) is int and 0 <= n <= 4096 for n in shape)):
        return None
    size = math.ceil(math.prod(shape) * SAFETENSORS_BITS[dtype] / 8)
    return size if size <= 4096 else None


def make_consistent(rng: random.Random, entries: list[Entry]) -> None:
    """Data sized to what each entry declares, and offsets laid back to back over it."""
    position = 0
    for item in entries:
        size = declared_bytes(item[1])
        if size is not None:
            item[2] = (item[2] + rng.randbytes(size))[:size]
        if isinstance(item[1], dict):
            item[1]["data_offsets"] = [position, position + len(item[2])]
        position += len(item[2])


def shape_mutations(shape: list[Any]) -> list[Any]:
    shape = [n if type(n) is int else 1 for n in shape]  # it may have been mutated before
    return [
        [n + 1 for n in shape],
        shape[::-1],
        [*shape, 1],
        shape[:-1],
        [-1, *shape],
        [2**63],
        [2**64, 0],
        [10**30, 10**30],
        [0],
        [],
        [float(n) for n in shape] or [1.0],
        [bool(n) for n in shape] or [True],
        [str(n) for n in shape] or ["1"],
        [shape],
        None,
        4,
        "4,3",
        {},
    ]


def offset_mutations(rng: random.Random, offsets: list[Any], data_bytes: int) -> list[Any]:
    start, stop = (n if type(n) is int else 0 for n in offsets)  # they may have been mutated before
    k = rng.randint(1, 16)
    return [
        [stop, start],
        [start + k, stop + k],
        [start - k, stop - k],
        [start, stop + k],
        [0, data_bytes],
        [start, start],
        [-1, stop],
        [start, 2**64],
        [2**64, 2**64 + stop - start],
        [start],
        [start, stop, stop],
        [],
        [float(start), float(stop)],
        [str(start), stop],
        [True, stop],
        None,
        start,
        [rng.randrange(-4, data_bytes + 4), rng.randrange(-4, data_bytes + 4)],
    ]


def mutate_entries(rng: random.Random, entries: list[Entry], data_bytes: int) -> None:
    """One change an attacker who knows the format would make to a header entry or the tensor list."""
    if not entries:
        entries.append(["x", {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, bytes(4)])
        return
    dicts = [item for item in entries if isinstance(item[1], dict) and isinstance(item[1].get("shape"), list)]
    item = rng.choice(dicts or entries)
    entry = item[1]
    choice = rng.randrange(9) if dicts else 6
    if choice <= 1:
        entry["dtype"] = rng.choice(list(SAFETENSORS_BITS) + BAD_DTYPES)
    elif choice == 2:
        entry["shape"] = rng.choice(shape_mutations(entry["shape"]))
    elif choice == 3 and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2:
        entry["data_offsets"] = rng.choice(offset_mutations(rng, entry["data_offsets"], data_bytes))
    elif choice == 4:
        field = rng.choice(sorted(codec.ENTRY_FIELDS))
        if rng.random() < 0.5:
            entry.pop(field, None)
        else:
            entry[rng.choice([field.upper(), "x", ""])] = entry.get(field)
    elif choice == 5:
        item[1] = rng.choice([None, 1, "F32", [], [entry], {}])
    elif choice == 6:
        entries.remove(item)
    elif choice == 7:
        new_name = rng.choice(["x", "", "w ", "W", "\u00e9", "a" * 300, "__metadata__x", "w\u0000"])
        entries.append([new_name, dict(entry), item[2]])
    else:
        item[0] = rng.choice(["x", "", item[0] + " ", item[0].upper(), "\u00e9"])


METADATA: list[Any] = [{}, {"format": "pt"}, {"a": 1}, {"a": None}, [], "pt", None, 3, {"a": {"b": "c"}}]


def serialise(
    rng: random.Random, entries: list[Entry], metadata: list[Any], text_mutation: bool
) -> tuple[bytes, bytes]:
    """(header bytes, data bytes) as a writer would lay them out, the header text mutated if asked."""
    header = {str(name): entry for name, entry, _ in entries}
    if metadata:
        header = {"__metadata__": metadata[0], **header}
    text = json.dumps(
        header, separators=rng.choice([(",", ":"), (", ", ": ")]), ensure_ascii=rng.random() < 0.5
    )
    if text_mutation:
        text = json_text_mutation(rng, text)
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.5:
        raw += b" " * (-len(raw) % 8)  # safetensors pads its header to 8 bytes
    return raw, b"".join(item[2] for item in entries)


def mutate_data(rng: random.Random, entries: list[Entry]) -> None:
    """A NaN or infinity in a float tensor, a bool byte that is neither 0 nor 1, or bytes cut or added."""
    item = rng.choice(entries)
    dtype = dtype_of(item[1])
    if dtype in NON_FINITE and len(item[2]) >= 4:
        value = rng.choice(NON_FINITE[dtype])
        where = rng.randrange(len(item[2]) // len(value)) * len(value)
        item[2] = item[2][:where] + value + item[2][where + len(value) :]
    elif dtype == "BOOL" and item[2]:
        where = rng.randrange(len(item[2]))
        item[2] = item[2][:where] + bytes([rng.randint(2, 255)]) + item[2][where + 1 :]
    else:
        item[2] = rng.choice([item[2][: rng.randrange(len(item[2]) + 1)], item[2] + rng.randbytes(4)])


def random_model(rng: random.Random) -> bytes:
    """A valid body of some model: the expected names, dtypes and shapes, or something near them."""
    tensors = {}
    for name, (shape, dtype) in BODY_EXPECTED.items():
        if rng.random() < 0.1:
            continue  # a name missing
        if rng.random() < 0.1:
            dtype = rng.choice(sorted(codec.DTYPE_CODES, key=str))
        if rng.random() < 0.1:
            shape = rng.choice([(*shape, 1), (2,), ()])
        tensors[name] = torch.randint(0, 2, tuple(shape)).to(dtype)
    if rng.random() < 0.1:
        tensors["extra"] = torch.zeros(2)
    return codec.encode(tensors)


NEAR_MODELS = [random_model(random.Random(seed)) for seed in range(64)]  # encoding each anew is slow


def body(rng: random.Random) -> bytes:
    """One hostile body (see the module docstring)."""
    base = MODEL_BODY if rng.random() < 0.8 else rng.choice(NEAR_MODELS)
    entries = take_apart(base)
    metadata: list[Any] = []  # empty, or the one __metadata__ value (which may be None)
    data_bytes = sum(len(item[2]) for item in entries)
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        choice = rng.random()
        if choice < 0.65:
            mutate_entries(rng, entries, data_bytes)
        elif choice < 0.75:
            metadata = [rng.choice(METADATA)]
        elif entries:
            mutate_data(rng, entries)
    if rng.random() < 0.5:
        make_consistent(rng, entries)
    header, data = serialise(rng, entries, metadata, text_mutation=rng.random() < 0.1)
    length = len(header)
    if rng.random() < 0.1:
        length = rng.choice([0, 1, 7, length - 1, length + 1, length + len(data), 2**63, 2**64 - 1])
        length = rng.choice([length, rng.randrange(2**64)]) if rng.random() < 0.2 else max(length, 0)
    data = struct.pack("<Q", length) + header + data
    return mutate(rng, data) if rng.random() < 0.25 else data


def relabelled(dtype: Any, name: str = "w") -> bytes:
    """MODEL_BODY with tensor `name` declared as `dtype`, its data resized to match wherever the format
    gives that dtype a size: the form of the issue's ``F8_E8M0`` attack."""
    rng = random.Random(0)
    entries = take_apart(MODEL_BODY)
    next(item for item in entries if item[0] == name)[1]["dtype"] = dtype
    make_consistent(rng, entries)
    header, data = serialise(rng, entries, [], text_mutation=False)
    return struct.pack("<Q", len(header)) + header + data


BODY_CHECKS = {  # the check a decode error comes from, by its message (first match wins)
    "unexpected": r"^not a safetensors model \(",  # the safety net: a case the checks missed
    "short": "too short for a header length",
    "header_length": r"a header of \d+ bytes",
    "depth": "nested deeper",
    "repeated_key": "repeats the key",
    "not_json": "not a JSON object",
    "metadata": "__metadata__",
    "names": "tensor names differ",
    "entry": "has header entry",
    "dtype": "has dtype",
    "shape": "has shape",
    "offsets": "has data_offsets",
    "tiling": "starts at data byte|data bytes, not",
    "non_finite": "non-finite",
    "bool": "neither 0 nor 1",
}


def body_outcome(data: bytes) -> str:
    """ "ok", or the name of the check in BODY_CHECKS that refused `data`; any other exception escapes."""
    try:
        codec.decode(data, BODY_EXPECTED)
    except codec.BlobError as err:
        return next((name for name, pattern in BODY_CHECKS.items() if re.search(pattern, str(err))), str(err))
    return "ok"
