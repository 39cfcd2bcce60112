"""The safetensors codec for models on disk and on the wire: named tensors to bytes and back, checked.

Safetensors is a flat, code-free format (unlike pickle), so decoding untrusted bytes can only yield
tensors, which :func:`decode` then checks against the expected names, shapes and dtypes (and for
finiteness). Encoding is deterministic, so equal models have equal bytes and hence equal content ids.

A model is *described* by its spec (:func:`tensor_spec`): per tensor name, the dtype name and the shape.
Transfer headers carry the spec so a receiver can refuse the wrong model (:func:`check_spec`) before it
reads a single byte of the body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

__all__ = [
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


class BlobError(ValueError):
    """Bytes that are missing, do not match their content hash, or are not the expected model."""


def encode(params: Mapping[str, torch.Tensor]) -> bytes:
    """A model's named tensors as safetensors bytes; the same tensors always give the same bytes."""
    tensors = {name: params[name].detach().cpu().contiguous().clone() for name in sorted(params)}
    return save_tensors(tensors)


def decode(data: bytes, expected: Expected) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes, checked to be exactly `expected` (name -> (shape, dtype)), finite."""
    try:
        tensors = load_tensors(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise BlobError(f"not a safetensors model: {err}") from None
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown or missing:
        raise BlobError(f"tensor names differ from the model's: unknown {unknown}, missing {missing}")
    for name, (shape, dtype) in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise BlobError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if tensor.dtype != dtype:
            raise BlobError(f"tensor {name!r} has dtype {tensor.dtype}, expected {dtype}")
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise BlobError(f"tensor {name!r} has non-finite values (NaN or inf)")
    return {name: tensors[name] for name in expected}


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
