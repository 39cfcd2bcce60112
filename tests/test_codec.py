"""The shared safetensors codec: a model's spec, a received spec checked against the expected model, and
decoding of hostile bodies: every family of header field, layout and value an attacker can choose ends
in a BlobError from the check it breaks (fuzzed further in tests/network/test_fuzz.py).

Encoding and decoding in the ledger flow are covered there (tests/ledger/test_flow.py).
"""

import json
import struct
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_tensors
from safetensors_format import SAFETENSORS_BITS

from ppaia.codec import (
    DTYPE_CODES,
    BlobError,
    Expected,
    check_spec,
    decode,
    encode,
    expected_of,
    expected_spec,
    tensor_spec,
)

PARAMS = {
    "layer.weight": torch.zeros(3, 4),
    "layer.bias": torch.zeros(3),
    "steps": torch.zeros((), dtype=torch.int64),
}


def test_spec_names_dtypes_and_shapes_in_sorted_order() -> None:
    spec = tensor_spec(PARAMS)
    assert spec == {
        "layer.bias": ("float32", [3]),
        "layer.weight": ("float32", [3, 4]),
        "steps": ("int64", []),
    }
    assert list(spec) == sorted(PARAMS)
    assert expected_spec(expected_of(PARAMS)) == spec
    check_spec(spec, expected_of(PARAMS))


def test_spec_as_received_in_json_form_matches() -> None:
    received = {name: [dtype, shape] for name, (dtype, shape) in tensor_spec(PARAMS).items()}
    check_spec(received, expected_of(PARAMS))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer.weight": ("float32", [4, 3])}, r"'layer.weight' is described as float32 \[4, 3\]"),
        ({"layer.bias": ("float64", [3])}, "float64"),
        ({"extra": ("float32", [1])}, r"unknown \['extra'\]"),
        ({"steps": None}, r"missing \['steps'\]"),
    ],
)
def test_a_spec_that_differs_is_refused(change: dict, message: str) -> None:
    spec = tensor_spec(PARAMS) | change
    spec = {name: entry for name, entry in spec.items() if entry is not None}
    with pytest.raises(BlobError, match=message):
        check_spec(spec, expected_of(PARAMS))


def test_decode_checks_bytes_against_the_spec_it_was_described_by() -> None:
    data = encode(PARAMS)
    decoded = decode(data, expected_of(PARAMS))
    assert tensor_spec(decoded) == tensor_spec(PARAMS)
    with pytest.raises(BlobError, match="not a safetensors model"):
        decode(data[: len(data) // 2], expected_of(PARAMS))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_values_are_found_however_the_sum_comes_out(dtype: torch.dtype) -> None:
    biggest = torch.finfo(dtype).max
    overflowing = torch.full((1000,), biggest, dtype=dtype)  # finite values whose sum overflows to inf
    assert decode(encode({"t": overflowing}), {"t": ((1000,), dtype)})["t"].isfinite().all()
    for bad in [[float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]]:
        values = torch.zeros(1000, dtype=dtype)
        values[: len(bad)] = torch.tensor(bad, dtype=dtype)
        with pytest.raises(BlobError, match="non-finite"):
            decode(encode({"t": values.flip(0)}), {"t": ((1000,), dtype)})


# ---- hostile bodies: every family of header and data a peer or a damaged file can present ----------

WEIGHT = "layer.weight"  # float32 [3, 4], the last 48 of the 68 data bytes
STRUCTURE = r"^not a safetensors model: "  # how every framing, header and layout error begins


def take_apart(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def assemble(header: Any, data: bytes, length: int | None = None) -> bytes:
    """A body of `header` (a JSON value, or its text as str or bytes) and `data`."""
    if not isinstance(header, str | bytes):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(header) if length is None else length) + header + data


HEADER, DATA = take_apart(encode(PARAMS))
START, STOP = HEADER[WEIGHT]["data_offsets"]
HEADER_TEXT = json.dumps(HEADER)


def changed(**fields: Any) -> dict[str, Any]:
    """HEADER with fields of the weight's entry changed."""
    return {**HEADER, WEIGHT: {**HEADER[WEIGHT], **fields}}


def laid_out(entries: dict[str, tuple[Any, Any, bytes]]) -> bytes:
    """A body whose tensors (name -> (dtype, shape, data)) lie back to back, as a writer lays them."""
    header, position = {}, 0
    for name, (dtype, shape, data) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [position, position + len(data)]}
        position += len(data)
    return assemble(header, b"".join(data for _, _, data in entries.values()))


def entries_of(header: dict[str, Any], data: bytes) -> dict[str, tuple[Any, Any, bytes]]:
    return {name: (e["dtype"], e["shape"], data[slice(*e["data_offsets"])]) for name, e in header.items()}


EXPECTED = expected_of(PARAMS)


def refused(data: Any, message: str, expected: Expected = EXPECTED) -> None:
    with pytest.raises(BlobError, match=message) as caught:
        decode(data, expected)
    assert len(str(caught.value)) < 400  # hostile values are quoted briefly


@pytest.mark.parametrize("dtype", list(SAFETENSORS_BITS))
def test_every_dtype_the_format_names_is_refused_unless_it_is_the_expected_one(dtype: str) -> None:
    """The issue's crash: a body declaring F8_E8M0 (or any dtype), its data sized to match."""
    entries = entries_of(HEADER, DATA)
    entries[WEIGHT] = (dtype, [3, 4], bytes(12 * SAFETENSORS_BITS[dtype] // 8))
    if dtype == "F32":
        assert decode(laid_out(entries), EXPECTED)[WEIGHT].dtype == torch.float32
    else:
        refused(laid_out(entries), rf"'layer.weight' has dtype '{dtype}', expected F32 \(torch.float32\)")


@pytest.mark.parametrize(
    "dtype",
    [
        "",
        "f32",
        "float32",
        "F32 ",
        " F32",
        "F8",
        "F128",
        "\u0000",
        "F32\u0000",
        "F" * 10_000,
        None,
        32,
        4.0,
        True,
        [],
        ["F32"],
        {"F32": 1},
    ],
)
def test_dtype_values_that_name_no_dtype_are_refused(dtype: Any) -> None:
    refused(assemble(changed(dtype=dtype), DATA), "'layer.weight' has dtype")


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
def test_every_dtype_the_codec_carries_round_trips(dtype: torch.dtype) -> None:
    params = {
        "matrix": torch.arange(-6, 6).reshape(3, 4).to(dtype),
        "scalar": torch.tensor(1).to(dtype),
        "empty": torch.zeros(0, 5, dtype=dtype),
    }
    data = encode(params)
    assert {entry["dtype"] for entry in take_apart(data)[0].values()} == {DTYPE_CODES[dtype]}
    decoded = decode(data, expected_of(params))
    assert all(torch.equal(decoded[name], params[name]) for name in params)
    assert all(decoded[name].dtype == dtype for name in params)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float8_e4m3fn, torch.float8_e8m0fnu], ids=str)
def test_dtypes_the_codec_does_not_carry_are_refused_on_both_sides(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="does not carry") as caught:
        encode({"t": torch.zeros(2).to(dtype)})
    assert type(caught.value) is ValueError  # a caller's mistake, not bad bytes
    with pytest.raises(ValueError, match="does not carry") as caught:
        decode(encode(PARAMS), {"t": ((2,), dtype)})
    assert type(caught.value) is ValueError


@pytest.mark.parametrize(
    "shape",
    [
        [4, 3],
        [3, 4, 1],
        [1, 3, 4],
        [12],
        [3],
        [],
        [3, 4, 0],
        [-3, -4],
        [-1, 4],
        [3, -4],
        [2**63, 4],
        [2**64, 0],
        [10**30, 10**30],
        [3.0, 4.0],
        [3, 4.0],
        ["3", 4],
        [3, None],
        None,
        12,
        "3,4",
        {},
        {"0": 3, "1": 4},
    ],
)
def test_a_declared_shape_other_than_the_expected_one_is_refused(shape: Any) -> None:
    refused(assemble(changed(shape=shape), DATA), "'layer.weight' has shape")


def test_json_booleans_are_not_integers_in_a_header() -> None:
    """Python counts True as 1: a shape [True, 2] must not pass for [1, 2], nor an offset False for 0."""
    expected = {"t": ((1, 2), torch.float32)}
    refused(laid_out({"t": ("F32", [True, 2], bytes(8))}), "has shape", expected)
    refused(
        assemble({"t": {"dtype": "F32", "shape": [1, 2], "data_offsets": [False, 8]}}, bytes(8)),
        "has data_offsets",
        expected,
    )
    assert decode(laid_out({"t": ("F32", [1, 2], bytes(8))}), expected)["t"].shape == (1, 2)


@pytest.mark.parametrize(
    "offsets",
    [
        [STOP, START],
        [START, STOP + 4],
        [START + 4, STOP],
        [START, START],
        [0, len(DATA)],
        [START, STOP - 1],
        [START],
        [START, STOP, STOP],
        [],
        [float(START), float(STOP)],
        [str(START), STOP],
        [START, None],
        None,
        START,
        {"0": START, "1": STOP},
        [-48, 0],
        [START, 2**64],
        [-(2**64), STOP],
    ],
)
def test_data_offsets_that_do_not_span_the_tensor_are_refused(offsets: Any) -> None:
    refused(assemble(changed(data_offsets=offsets), DATA), "'layer.weight' has data_offsets")


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([START + 4, STOP + 4], "starts at data byte 24, not 20"),  # a gap, and past the end
        ([START - 4, STOP - 4], "starts at data byte 16, not 20"),  # overlaps the bias
        ([0, 48], "starts at data byte 0, not 8"),  # overlaps everything
        ([STOP, STOP + 48], "starts at data byte 68, not 20"),  # beyond the data
        ([2**64, 2**64 + 48], rf"starts at data byte {2**64}, not 20"),
    ],
)
def test_spans_must_tile_the_data_exactly(offsets: list[int], message: str) -> None:
    refused(assemble(changed(data_offsets=offsets), DATA), STRUCTURE + f"tensor '.*' {message}|{message}")


@pytest.mark.parametrize("extra", [-68, -48, -1, 1, 7, 4096])
def test_data_cut_short_or_extended_is_refused(extra: int) -> None:
    data = DATA[:extra] if extra < 0 else DATA + bytes(extra)
    refused(assemble(HEADER, data), STRUCTURE + rf"the tensors take 68 data bytes, not {len(data)}")


@pytest.mark.parametrize(
    "length",
    [0, 1, 7, 8, 2**32, 2**63, 2**64 - 1]  # absolute, and relative: into the data, past the end
    + [len(HEADER_TEXT) + change for change in [-1, -8, 1, 68, 69, 1000]],
)
def test_a_header_length_that_lies_is_refused(length: int) -> None:
    refused(assemble(HEADER_TEXT, DATA, length=length), STRUCTURE)


@pytest.mark.parametrize("size", [0, 1, 7])
def test_a_body_too_short_for_a_header_length_is_refused(size: int) -> None:
    refused(bytes(size), STRUCTURE + f"{size} bytes, too short for a header length")


def test_a_header_longer_than_the_model_can_need_is_refused_before_it_is_parsed() -> None:
    padded = json.dumps(HEADER) + " " * (1 << 20)  # valid JSON, but no honest writer pads so much
    refused(assemble(padded, DATA), STRUCTURE + r"a header of \d+ bytes, but this model's limit is")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "null",
        "1",
        '"F32"',
        " {}",
        "\ufeff{}",
        "{",
        '{"a":}',
        "{}x",
        "{}{}",
        '{"a":1,}',
        "{'a':1}",
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":-Infinity}',
        '{"a":' + "1" * 5000 + "}",
        '{"a":[[[[]]]]}',
        '{"a":' + "[" * 30_000 + "]" * 30_000 + "}",
        '{"a":' + "[" * 30_000 + "}",
        b"\xff\xfe{}",
        b'{"a\xc3":1}',
        b'{"\xed\xa0\x80":1}',
        b"{\x00}",
    ],
)
def test_a_header_that_is_not_a_json_object_is_refused(text: str | bytes) -> None:
    refused(assemble(text, DATA), STRUCTURE + "the header is not a JSON object")


@pytest.mark.parametrize(
    "text",
    [
        # a second entry for a tensor: a lax parser keeps the last one
        '{"layer.weight":{"dtype":"F8_E8M0","shape":[48],"data_offsets":[20,68]},' + json.dumps(HEADER)[1:],
        # a field twice within an entry
        json.dumps(HEADER).replace('"dtype": "F32"', '"dtype": "F8_E8M0", "dtype": "F32"', 1),
        '{"__metadata__":{},"__metadata__":{"a":"b"},' + json.dumps(HEADER)[1:],
        '{"__metadata__":{"a":"b","a":"c"},' + json.dumps(HEADER)[1:],
    ],
)
def test_a_header_that_repeats_a_key_is_refused(text: str) -> None:
    refused(assemble(text, DATA), "repeats the key")


@pytest.mark.parametrize("metadata", [{}, {"format": "pt"}, {"a": "", "b": "\u00e9"}])
def test_metadata_that_maps_strings_to_strings_is_accepted(metadata: dict[str, str]) -> None:
    decode(assemble({"__metadata__": metadata, **HEADER}, DATA), EXPECTED)
    decode(save_tensors(dict(PARAMS), metadata=metadata), EXPECTED)  # as the safetensors writer puts it


@pytest.mark.parametrize(
    "metadata", [{"a": 1}, {"a": None}, {"a": {"b": "c"}}, {"a": ["b"]}, [], ["a"], "pt", None, 0, True]
)
def test_metadata_of_another_form_is_refused(metadata: Any) -> None:
    refused(assemble({"__metadata__": metadata, **HEADER}, DATA), STRUCTURE + "__metadata__ .* is not a map")


@pytest.mark.parametrize(
    "entry",
    [
        None,
        1,
        "F32",
        [],
        ["F32", [3, 4], [20, 68]],
        {},
        *(
            {key: value for key, value in HEADER[WEIGHT].items() if key != missing}
            for missing in HEADER[WEIGHT]
        ),
        {**HEADER[WEIGHT], "extra": 1},
        {**HEADER[WEIGHT], "DTYPE": "F32"},
        {**HEADER[WEIGHT], "": None},
    ],
)
def test_a_header_entry_of_the_wrong_form_is_refused(entry: Any) -> None:
    refused(assemble({**HEADER, WEIGHT: entry}, DATA), "'layer.weight' has header entry")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({WEIGHT: None}, r"unknown \[\], missing \['layer.weight'\]"),
        ({"extra": "steps"}, r"unknown \['extra'\]"),
        ({"": "steps"}, r"unknown \[''\]"),
        ({"layer.weight ": WEIGHT, WEIGHT: None}, r"unknown \['layer.weight '\]"),
        ({"Layer.weight": WEIGHT, WEIGHT: None}, r"unknown \['Layer.weight'\]"),
        ({"layer.w\u00e9ight": WEIGHT, WEIGHT: None}, r"unknown \['layer.w\u00e9ight'\]"),
        ({"layer.weight\ud800": WEIGHT, WEIGHT: None}, r"unknown \['layer.weight\\ud800'\]"),
        ({"__metadata__x": "steps"}, r"unknown \['__metadata__x'\]"),
        (
            {f"t{i}": "steps" for i in range(300)},
            r"unknown \['t0', 't1', 't10', 't100', 't101'\], missing \[\]$",
        ),
        ({"x" * 10_000: "steps"}, r"unknown \['xxxxx"),
    ],
)
def test_tensor_names_must_be_exactly_the_models(names: dict[str, str | None], message: str) -> None:
    """Names added (as copies of a tensor, laid out consistently), missing or renamed."""
    entries = entries_of(HEADER, DATA)
    for name, source in names.items():
        if source is None:
            del entries[name]
        else:
            entries[name] = entries[source]
    refused(laid_out(entries), "tensor names differ from the model's: " + message)


@pytest.mark.parametrize("value", [2, 3, 127, 128, 255])
def test_bool_values_other_than_0_and_1_are_refused(value: int) -> None:
    expected = {"mask": ((4,), torch.bool)}
    assert decode(laid_out({"mask": ("BOOL", [4], bytes([0, 1, 1, 0]))}), expected)["mask"].tolist() == [
        False,
        True,
        True,
        False,
    ]
    refused(laid_out({"mask": ("BOOL", [4], bytes([0, 1, value, 0]))}), "'mask' has bool values", expected)


@pytest.mark.parametrize("data", [None, 42, "a string", [1, 2], object()])
def test_anything_else_still_ends_in_a_blob_error(data: Any) -> None:
    """The safety net: input the checks do not foresee (here, not even bytes) is still a BlobError."""
    refused(data, r"^not a safetensors model \(unexpected TypeError")


def test_decoded_tensors_own_their_memory() -> None:
    data = bytearray(encode(PARAMS))
    decoded = decode(data, EXPECTED)
    data[-48:] = b"\xff" * 48  # the caller reuses its buffer
    decoded[WEIGHT] += 1  # writable
    assert torch.equal(decoded[WEIGHT], torch.ones(3, 4))
