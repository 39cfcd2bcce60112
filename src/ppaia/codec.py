"""The safetensors codec for models on disk and on the wire: named tensors to bytes and back, checked.

Safetensors is a flat, code-free format (unlike pickle): an 8-byte little-endian header length, a JSON
header ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__"?}`` and the raw little-endian data.
Encoding is deterministic, so equal models have equal bytes and hence equal content ids.

Decoding reads untrusted bytes, so :func:`decode` does not hand them to a parser that knows every dtype
and layout the format allows: it reads the header itself, within bounds set by the model it expects,
requires exactly the expected names, dtypes and shapes and a data section that the tensors tile exactly,
and only then builds each tensor from its bytes with the *expected* dtype and shape (and checks the
values: finite floats, bools that are 0 or 1). What it checked is thus what it builds; no second
reading of the header can differ. Whatever else goes wrong is still a :class:`BlobError`.

A model is *described* by its spec (:func:`tensor_spec`): per tensor name, the dtype name and the shape.
Transfer headers carry the spec so a receiver can refuse the wrong model (:func:`check_spec`) before it
reads a single byte of the body.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import save as save_tensors

from ppaia import strict_json

__all__ = [
    "DTYPE_CODES",
    "BlobError",
    "Expected",
    "Spec",
    "check_spec",
    "decode",
    "encode",
    "expected_of",
    "expected_spec",
    "tensor_spec",
]

Expected = Mapping[str, tuple[tuple[int, ...] | torch.Size, torch.dtype]]
"""What a model must look like: tensor name -> (shape, dtype)."""

Spec = dict[str, tuple[str, list[int]]]
"""A model's description in JSON form: tensor name -> (dtype name, shape), e.g. ("float32", [64, 10])."""

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
"""The dtypes the codec carries, with their names in safetensors headers: real floats (whose values
:func:`decode` checks to be finite), integers and bools. Complex and 8-bit float models are refused."""

HEADER_LENGTH = struct.Struct("<Q")
HEADER_DEPTH = 3  # {name: {"shape": [...]}}: the deepest nesting a header has
HEADER_SLACK = 64 << 10  # room in a header beyond its entries, for whitespace and "__metadata__"
ENTRY_BYTES = 128  # bounds a header entry's JSON, plus 24 bytes per dimension and 12 per name character
ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
SHOWN = 5  # names quoted in an error message
SHOWN_CHARS = 40  # characters quoted from a hostile value


class BlobError(ValueError):
    """Bytes that are missing, do not match their content hash, or are not the expected model."""


def encode(params: Mapping[str, torch.Tensor]) -> bytes:
    """A model's named tensors as safetensors bytes; the same tensors always give the same bytes."""
    for tensor in params.values():
        _dtype_code(tensor.dtype)
    tensors = {name: params[name].detach().cpu().contiguous().clone() for name in sorted(params)}
    return save_tensors(tensors)


def decode(data: bytes, expected: Expected) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes, checked to be exactly `expected` (name -> (shape, dtype)), finite.

    Raises BlobError for any bytes that are not that model, and ValueError if `expected` holds a dtype
    the codec does not carry.
    """
    codes = {name: _dtype_code(dtype) for name, (_, dtype) in expected.items()}
    limit = _header_limit(expected)
    tensors = {}
    try:
        header, body = _split(memoryview(data), limit)
        spans = _spans(header, expected, codes)
        _check_tiling(spans, len(body))
        for name, (start, stop) in spans.items():
            shape, dtype = expected[name]
            tensors[name] = _tensor(body[start:stop], tuple(shape), dtype)
            _check_values(name, tensors[name])
    except BlobError:
        raise
    except Exception as err:  # a safety net only: the checks above are meant to leave nothing for it
        problem = f"unexpected {type(err).__name__}: {str(err)[:200]}"
        raise BlobError(f"not a safetensors model ({problem})") from None
    return tensors


def _dtype_code(dtype: torch.dtype) -> str:
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise ValueError(f"the codec does not carry {dtype} tensors") from None


def _header_limit(expected: Expected) -> int:
    """The longest header a body of the `expected` model can honestly have: far more than safetensors
    writes, yet small enough that parsing a hostile one costs little."""
    entries = sum(ENTRY_BYTES + 24 * len(shape) + 12 * len(name) for name, (shape, _) in expected.items())
    return HEADER_SLACK + entries


def _split(data: memoryview, limit: int) -> tuple[dict[str, Any], memoryview]:
    """The parsed JSON header object and the data section after it."""
    if len(data) < HEADER_LENGTH.size:
        raise BlobError(f"not a safetensors model: {len(data)} bytes, too short for a header length")
    (length,) = HEADER_LENGTH.unpack_from(data)
    available = len(data) - HEADER_LENGTH.size
    if length > min(limit, available):
        where = f"{available} bytes follow it" if length > available else f"this model's limit is {limit}"
        raise BlobError(f"not a safetensors model: a header of {length} bytes, but {where}")
    try:
        text = bytes(data[HEADER_LENGTH.size : HEADER_LENGTH.size + length]).decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("it does not start with '{'")
        header = strict_json.loads(text, HEADER_DEPTH)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BlobError(
            f"not a safetensors model: the header is not a JSON object: {str(err)[:200]}"
        ) from None
    return header, data[HEADER_LENGTH.size + length :]


def _spans(
    header: dict[str, Any], expected: Expected, codes: Mapping[str, str]
) -> dict[str, tuple[int, int]]:
    """Each expected tensor's (start, stop) in the data section, once its header entry has been found
    to be exactly the expected dtype and shape with a span of the size they need."""
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise BlobError(f"not a safetensors model: __metadata__ {_clip(metadata)} is not a map of strings")
    _check_names(header, expected)
    spans = {}
    for name, (shape, dtype) in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != ENTRY_FIELDS:
            raise BlobError(f"tensor {name!r} has header entry {_clip(entry)}, not {sorted(ENTRY_FIELDS)}")
        if entry["dtype"] != codes[name]:
            raise BlobError(
                f"tensor {name!r} has dtype {_clip(entry['dtype'])}, expected {codes[name]} ({dtype})"
            )
        if not _is_ints(entry["shape"]) or entry["shape"] != list(shape):
            raise BlobError(
                f"tensor {name!r} has shape {_shape_text(entry['shape'])}, expected {tuple(shape)}"
            )
        offsets = entry["data_offsets"]
        size = math.prod(shape) * dtype.itemsize
        if not (
            _is_ints(offsets) and len(offsets) == 2 and offsets[0] >= 0 and offsets[1] - offsets[0] == size
        ):
            raise BlobError(
                f"tensor {name!r} has data_offsets {_clip(offsets)}, expected a span of {size} bytes"
            )
        spans[name] = (offsets[0], offsets[1])
    return spans


def _check_names(header: Mapping[str, Any], expected: Expected) -> None:
    unknown = sorted(set(header) - set(expected))
    missing = sorted(set(expected) - set(header))
    if unknown or missing:
        raise BlobError(
            f"tensor names differ from the model's: unknown {_names(unknown)}, missing {_names(missing)}"
        )


def _check_tiling(spans: Mapping[str, tuple[int, int]], data_bytes: int) -> None:
    """Refuse unless the spans lie back to back from the start to the end of the data section: no gap,
    no overlap, no byte outside a tensor."""
    position = 0
    for start, stop, name in sorted((start, stop, name) for name, (start, stop) in spans.items()):
        if start != position:
            raise BlobError(
                f"not a safetensors model: tensor {name!r} starts at data byte {start}, not {position}"
            )
        position = stop
    if position != data_bytes:
        raise BlobError(f"not a safetensors model: the tensors take {position} data bytes, not {data_bytes}")


def _tensor(raw: memoryview, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor of its own (aligned, writable memory) holding `raw` as `dtype` values in `shape`. The
    data is little-endian, like the hosts this project runs on (a big-endian one would need a swap)."""
    if not raw:  # frombuffer refuses an empty buffer
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def _check_values(name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and not _all_finite(tensor):
        raise BlobError(f"tensor {name!r} has non-finite values (NaN or inf)")
    if tensor.dtype == torch.bool and bool((tensor.view(torch.uint8) > 1).any()):
        raise BlobError(f"tensor {name!r} has bool values that are neither 0 nor 1")


def _is_ints(value: object) -> bool:
    """Whether `value` is a JSON array of integers (not of bools, which Python counts as integers)."""
    return isinstance(value, list) and all(type(item) is int for item in value)


def _shape_text(shape: object) -> str:
    return _clip(tuple(shape)) if _is_ints(shape) else _clip(shape)  # type: ignore[arg-type]


def _clip(value: object) -> str:
    """A hostile value for a message, cut short so that it cannot flood the log."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _names(names: Sequence[str]) -> list[str]:
    return [name[:SHOWN_CHARS] for name in names[:SHOWN]]


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite. A finite sum proves it (NaN and ±inf never add up to a finite
    value) at a fraction of the cost of the elementwise test, which thus runs only if the sum overflows."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_spec(tensors: Mapping[str, torch.Tensor]) -> Spec:
    """The spec of named tensors: name -> (dtype name, shape), names sorted (as :func:`encode` orders)."""
    return {name: (_dtype_name(tensors[name].dtype), list(tensors[name].shape)) for name in sorted(tensors)}


def expected_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """The :data:`Expected` description of a model one holds, to check other peers' copies against."""
    return {name: (tensor.shape, tensor.dtype) for name, tensor in tensors.items()}


def expected_spec(expected: Expected) -> Spec:
    """The spec an :data:`Expected` model has, for comparison with a received spec."""
    return {name: (_dtype_name(expected[name][1]), list(expected[name][0])) for name in sorted(expected)}


def check_spec(spec: Mapping[str, tuple[str, Sequence[int]]], expected: Expected) -> None:
    """Raise BlobError unless `spec` (as received, e.g. in a header) describes exactly `expected`."""
    want = expected_spec(expected)
    unknown = sorted(set(spec) - set(want))
    missing = sorted(set(want) - set(spec))
    if unknown or missing:
        raise BlobError(f"tensor names differ from the model's: unknown {unknown[:5]}, missing {missing[:5]}")
    for name, (dtype, shape) in want.items():
        got_dtype, got_shape = spec[name]
        if got_dtype != dtype or list(got_shape) != shape:
            described = f"{got_dtype} {list(got_shape)}"
            raise BlobError(f"tensor {name!r} is described as {described}, expected {dtype} {shape}")
