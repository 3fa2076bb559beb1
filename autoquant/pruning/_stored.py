"""Compressed storage of sparse tensors in a saved model: bitmask + nonzero values.

A tensor with enough zeros (pruned weights, also as the integers of quantized weights)
is written as ``<name>.sparse_mask`` (one bit per element, packed into uint8, LSB first)
and ``<name>.sparse_values`` (the nonzero elements in order); ``meta.json["sparse"]``
records its shape and dtype. Only tensors this makes at least 10% smaller are
compressed, so dense models are saved exactly as before. Everything read back is
checked (sizes, dtypes, bit count) before the dense tensor is rebuilt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from autoquant.errors import SerializationError

__all__ = ["compress", "decompress", "MASK", "VALUES"]

MASK, VALUES = ".sparse_mask", ".sparse_values"
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_DTYPES = {
    str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8)
}
_MIN_ELEMENTS = 64
_MIN_GAIN = 0.10


def _pack(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    return (flat.reshape(-1, 8) * _BITS).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    bits = (packed.to(torch.int32)[:, None] >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:n].bool()


def compress(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors to write (sparse ones as mask + values) and the ``sparse`` meta entry."""
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, t in tensors.items():
        if str(t.dtype) not in _DTYPES or t.dim() < 2 or t.numel() < _MIN_ELEMENTS:
            out[name] = t
            continue
        nonzero = t != 0
        nnz = int(nonzero.sum())
        dense = t.numel() * t.element_size()
        packed = math.ceil(t.numel() / 8) + nnz * t.element_size()
        if packed > (1 - _MIN_GAIN) * dense:
            out[name] = t
            continue
        out[name + MASK] = _pack(nonzero)
        out[name + VALUES] = t.reshape(-1)[nonzero.reshape(-1)].contiguous()
        meta[name] = {"shape": list(t.shape), "dtype": str(t.dtype)}
    return out, meta


def decompress(
    tensors: Mapping[str, torch.Tensor], meta: Any, src: Path
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compress`, refusing anything that does not add up."""
    if not isinstance(meta, dict):
        raise SerializationError(f"{src}/meta.json: 'sparse' must be a mapping, got {meta!r}.")
    out = {k: v for k, v in tensors.items() if not k.endswith((MASK, VALUES))}
    for name, entry in meta.items():
        where = f"{src}/meta.json: sparse tensor {name!r}"
        if (
            not isinstance(entry, dict)
            or set(entry) != {"shape", "dtype"}
            or entry["dtype"] not in _DTYPES
            or not isinstance(entry["shape"], list)
            or not all(type(s) is int and s >= 0 for s in entry["shape"])
        ):
            raise SerializationError(f"{where} has a bad entry {entry!r}.")
        mask, values = tensors.get(name + MASK), tensors.get(name + VALUES)
        if mask is None or values is None:
            raise SerializationError(f"{where}: its mask or values are missing from the tensors.")
        n = math.prod(entry["shape"])
        dtype = _DTYPES[entry["dtype"]]
        if mask.dtype != torch.uint8 or mask.dim() != 1 or mask.numel() != math.ceil(n / 8):
            raise SerializationError(f"{where}: the mask has the wrong size or dtype.")
        bits = _unpack(mask, n)
        if values.dtype != dtype or values.dim() != 1 or values.numel() != int(bits.sum()):
            raise SerializationError(
                f"{where}: {values.numel()} values of {values.dtype} for {int(bits.sum())} "
                f"set bits of {dtype}."
            )
        dense = torch.zeros(n, dtype=dtype)
        dense[bits] = values
        out[name] = dense.reshape(entry["shape"])
    extra = [k for k in tensors if k.endswith((MASK, VALUES)) and k.rsplit(".", 1)[0] not in meta]
    if extra:
        raise SerializationError(f"{src}: sparse tensors {extra[:5]} have no 'sparse' entry.")
    return out
