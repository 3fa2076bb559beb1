"""Range mapping: float range -> (scale, zero_point), and quantize / dequantize.

Convention (the same as PyTorch's ``torch.ao`` observers and its int8 kernels, so our
integers can be handed to those kernels and checked against them bit for bit):

* The float range is first widened to include 0: ``lo = min(x_min, 0)``,
  ``hi = max(x_max, 0)``. Zero padding, ReLU zeros and skipped connections must map
  to an exact integer, otherwise every padded border carries a bias.
* asym (affine)::

      scale      = (hi - lo) / (qmax - qmin)
      zero_point = clamp(qmin - round(lo / scale), qmin, qmax)

* sym (scale)::

      scale      = max(-lo, hi) / ((qmax - qmin) / 2)
      zero_point = 0 for signed dtypes, (qmin + qmax + 1) // 2 for unsigned ones

* ``scale`` is floored at float32 machine epsilon so a constant tensor still quantizes.
* quantize:   ``q = clamp(round(x * (1 / scale) + zero_point), qmin, qmax)``, round half
  to even, with the float32 reciprocal and the same float32 rounding of the sum as
  torch's kernels (fused multiply-add per tensor, separate steps per channel), so our
  integers equal ``torch.quantize_per_tensor`` / ``quantize_per_channel`` bit for bit.
* dequantize: ``x' = (q - zero_point) * scale``

The seed document's formulas (``Scale = 255 / |max - min|``, ``X_int8 = round(Scale *
X + ZeroPoint)`` with a fixed zero point for asym) are the informal picture: they use the
reciprocal scale, fix the zero point where it must be computed, and do not make zero
exactly representable. We implement the standard mapping above instead.

``reduce_range`` drops one bit of the integer range (int8 -> [-64, 63], uint8 ->
[0, 127]); on CPUs without VNNI the AVX2 int8 dot product sums pairs of u8*s8 products in
16 bits and saturates with full-range operands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoquant.config import DTYPES, QuantSpec
from autoquant.errors import ConfigError

__all__ = [
    "QParams",
    "quant_range",
    "qparams_from_range",
    "reduce_for_granularity",
    "quantize",
    "dequantize",
    "fake_quantize",
]

_EPS = torch.finfo(torch.float32).eps


def quant_range(dtype: str, reduce_range: bool = False) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a dtype, optionally with one bit less."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {list(DTYPES)}, but got {dtype!r}.")
    bits, signed = DTYPES[dtype]
    if reduce_range:
        bits -= 1
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters of one tensor.

    ``scale`` / ``zero_point`` are 0-d for per-tensor, shape ``[C]`` for per-channel
    (along ``axis``) and ``[rows, n_groups]`` for per-group (groups of ``group_size``
    along dim 1 of a 2-D tensor).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    dtype: str
    axis: int | None = None
    group_size: int | None = None

    @property
    def granularity(self) -> str:
        if self.group_size is not None:
            return "per_group"
        return "per_tensor" if self.axis is None else "per_channel"

    def _broadcast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (x viewed for broadcasting, scale, zero_point) with matching shapes."""
        if self.group_size is not None:
            if x.dim() != 2 or x.shape[1] % self.group_size:
                raise ConfigError(
                    f"per_group qparams need a 2-D tensor whose dim 1 is a multiple of "
                    f"group_size={self.group_size}, but got shape {tuple(x.shape)}."
                )
            xg = x.reshape(x.shape[0], -1, self.group_size)
            return xg, self.scale.unsqueeze(-1), self.zero_point.unsqueeze(-1)
        if self.axis is None:
            return x, self.scale, self.zero_point
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return x, self.scale.reshape(shape), self.zero_point.reshape(shape)


def qparams_from_range(
    min_val: torch.Tensor | float,
    max_val: torch.Tensor | float,
    spec: QuantSpec,
    *,
    axis: int | None = None,
    group_size: int | None = None,
) -> QParams:
    """Compute scale and zero point from a float range, elementwise over channels/groups."""
    lo = torch.as_tensor(min_val, dtype=torch.float32)
    hi = torch.as_tensor(max_val, dtype=torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"min/max shapes differ: {tuple(lo.shape)} vs {tuple(hi.shape)}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("cannot compute qparams from a non-finite range")
    qmin, qmax = quant_range(spec.dtype, spec.reduce_range)
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if spec.scheme == "sym":
        absmax = torch.maximum(-lo, hi)
        scale = absmax / ((qmax - qmin) / 2)
        scale = torch.maximum(scale, torch.tensor(_EPS))
        zp_value = 0 if spec.signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int64)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        scale = torch.maximum(scale, torch.tensor(_EPS))
        zero_point = qmin - torch.round(lo / scale).to(torch.int64)
        zero_point = torch.clamp(zero_point, qmin, qmax)
    return QParams(
        scale=scale,
        zero_point=zero_point,
        qmin=qmin,
        qmax=qmax,
        dtype=spec.dtype,
        axis=axis,
        group_size=group_size,
    )


def reduce_for_granularity(
    x: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor, int | None, int | None]:
    """Min and max of ``x`` at the spec's granularity: returns (min, max, axis, group_size)."""
    if spec.granularity == "per_tensor":
        return x.min(), x.max(), None, None
    if spec.granularity == "per_channel":
        axis = spec.axis if spec.axis >= 0 else x.dim() + spec.axis
        if not 0 <= axis < x.dim():
            raise ConfigError(
                f"QuantSpec.axis={spec.axis} is out of range for a tensor of shape "
                f"{tuple(x.shape)}."
            )
        flat = x.transpose(0, axis).reshape(x.shape[axis], -1)
        return flat.min(dim=1).values, flat.max(dim=1).values, axis, None
    gs = spec.group_size
    assert gs is not None
    if x.dim() != 2 or x.shape[1] % gs:
        raise ConfigError(
            f"QuantSpec.group_size={gs} must divide the reduction dimension of a 2-D weight, "
            f"but the weight has shape {tuple(x.shape)}. Pick a group_size that divides "
            f"{x.shape[-1]}."
        )
    g = x.reshape(x.shape[0], -1, gs)
    return g.amin(dim=-1), g.amax(dim=-1), None, gs


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Map float values to integers (returned as int32; callers narrow as needed)."""
    xv, scale, zp = qp._broadcast(x.float())
    inv = 1.0 / scale  # float32 reciprocal, as the kernels compute it
    if qp.axis is None and qp.group_size is None:
        # torch's per-tensor quantize rounds fma(x, inv, zp) once to float32; the float64
        # product of two float32 values is exact, so this reproduces it bit for bit.
        t = (xv.double() * inv.double() + zp.double()).float()
    else:
        # torch's per-channel quantize multiplies, rounds to float32, then adds.
        t = xv * inv + zp.float()
    q = torch.clamp(torch.round(t), qp.qmin, qp.qmax)
    return q.reshape(x.shape).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Map integers back to float32."""
    qv, scale, zp = qp._broadcast(q.to(torch.int64))
    return ((qv - zp).float() * scale).reshape(q.shape)


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """quantize then dequantize, in float: the simulation of an integer tensor."""
    return dequantize(quantize(x, qp), qp).to(x.dtype)
