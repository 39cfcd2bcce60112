"""The shared safetensors codec: a model's spec, and a received spec checked against the expected model.

Encoding and checked decoding themselves are covered with the ledger flow (tests/ledger/test_flow.py).
"""

import pytest
import torch

from ppaia.codec import BlobError, check_spec, decode, encode, expected_of, expected_spec, tensor_spec

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
