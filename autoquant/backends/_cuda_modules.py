"""Quantized Linear modules of the ``cuda`` backend, and the GPU latency helper.

* :class:`Int8DynamicLinear`: int8 activations quantized per call (one scale per token
  or per tensor) x int8 per-channel weights, ``torch._int_mm`` (int32 accumulation);
* :class:`Int8StaticLinear`: int8/uint8 activations with a calibrated scale and zero
  point x int8 weights, ``torch._int_mm`` plus an exact zero-point correction;
* :class:`Fp8Linear`: fp8 e4m3 activations and weights, per-tensor or row-wise scales,
  ``torch._scaled_mm`` (compute capability >= 8.9 on a GPU);
* :class:`Int4WeightOnlyLinear`: 4-bit per-group weights, bf16 activations, the tinygemm
  kernel (``aten._weight_int4pack_mm``).

As in :mod:`autoquant.backends._modules`, integer weights and scales are plain buffers
(fp8 weights as their bytes, ``uint8``), so ``state_dict`` holds ordinary tensors;
device-specific packed forms are rebuilt from the buffers after construction, after
``load_state_dict`` and after every move (``.to``/``.cuda``).

Every module also runs on the CPU with the same ops (``_int_mm`` and ``_scaled_mm`` have
CPU kernels, the int4 op its ``_for_cpu`` twin), which is how the quantization math is
tested on machines without a GPU. Weights are quantized by :mod:`autoquant.observers`;
dynamic int8 activations get exactly :mod:`autoquant.qparams`'s integers (sym:
``scale = absmax / 127.5``); static inputs use its formula in float32 without the fused
multiply-add rounding of its per-tensor path, so an exact tie may round one step apart.
fp8 follows the usual ``scale = amax / 448`` (torchao's ``_choose_scale_float8``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autoquant.qparams import QParams

__all__ = [
    "CudaQuantModule",
    "Int8DynamicLinear",
    "Int8StaticLinear",
    "Fp8Linear",
    "Int4WeightOnlyLinear",
    "FP8_MAX",
    "fp8_scale",
    "fp8_quantize",
    "int8_sym_quantize",
    "tinygemm_scales_and_zeros",
    "pack_int4_for_cuda",
    "cuda_latency",
]

_EPS = torch.finfo(torch.float32).eps
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448


# -- the quantization math (CPU-checkable) -------------------------------------------
def int8_sym_quantize(x: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of a 2-D tensor, one scale per row or one for all: (q int8, scale).

    The same integers as :func:`autoquant.qparams.quantize` with
    ``qparams_from_range(min, max, QuantSpec(dtype='int8', scheme='sym'))``: the range is
    widened to include 0, ``scale = absmax / 127.5`` floored at float32 epsilon, and
    ``q = clamp(round(x * (1 / scale)), -128, 127)`` in float32.
    """
    xf = x.float()
    absmax = xf.abs().amax(dim=1, keepdim=True) if per_row else xf.abs().amax().reshape(1, 1)
    scale = torch.clamp(absmax / 127.5, min=_EPS)
    q = torch.clamp(torch.round(xf * (1.0 / scale)), -128, 127).to(torch.int8)
    return q, scale


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """fp8 e4m3 scale for a float range: ``amax / 448``, floored at float32 epsilon."""
    return torch.clamp(amax.float() / FP8_MAX, min=_EPS)


def fp8_quantize(x: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 e4m3 of a 2-D tensor with per-row (``[rows, 1]``) or per-tensor (0-d) scales."""
    xf = x.float()
    amax = xf.abs().amax(dim=1, keepdim=True) if per_row else xf.abs().amax()
    scale = fp8_scale(amax)
    q = torch.clamp(xf / scale, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def tinygemm_scales_and_zeros(qp: QParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Our per-group qparams as the int4 kernels' (unsigned q, ``[k/g, n, 2]`` scale/zero).

    tinygemm computes ``(q - 8) * scale + zero`` on unsigned nibbles with a float
    ``zero``; ours is ``(q - zp) * scale``. Signed int4 shifts to [0, 15] (zero point
    with it), then ``zero = (8 - zp) * scale`` gives the same values. Returns the shift
    to add to our integers and the stacked scales and zeros (float32).
    """
    offset = -qp.qmin if qp.qmin < 0 else 0
    zp = (qp.zero_point + offset).float()
    scale = qp.scale.float()
    zero = (8 - zp) * scale
    return torch.tensor(offset), torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()


def pack_int4_for_cuda(q: torch.Tensor) -> torch.Tensor:
    """[n, k] ints in [0, 15] -> [n, k/2] uint8 as ``_convert_weight_to_int4pack`` takes
    them on CUDA: the *high* nibble holds the even column (torchao packs it the same way;
    the CPU op takes the unpacked int32 matrix instead)."""
    q = q.to(torch.int32)
    return (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Storage layout (device independent): low nibble = even column."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def _unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([p & 0x0F, p >> 4], dim=-1).reshape(p.shape[0], p.shape[1] * 2)


def _flatten(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])


def _pad_rows(x: torch.Tensor, minimum: int, multiple: int) -> torch.Tensor:
    """Zero rows appended so the GEMM's M meets the kernel's shape rules (cuBLASLt's
    int8 GEMM wants M > 16, ``_scaled_mm`` M % 16 == 0); their outputs are sliced off."""
    m = x.shape[0]
    target = max(minimum, -(-m // multiple) * multiple)
    if target == m:
        return x
    return torch.cat([x, x.new_zeros(target - m, x.shape[1])])


# -- modules ---------------------------------------------------------------------------
class CudaQuantModule(nn.Module):
    """Base: weight buffers, a kernel label, packed forms rebuilt after loads and moves."""

    kernel: str = ""
    simulated: bool = False

    def _register_common(self, linear: nn.Linear) -> None:
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def _pack(self) -> None:
        """Rebuild device-specific forms from the buffers (no-op by default)."""

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._pack()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # .to()/.cuda() move the buffers; packed forms are per device, so repack. Scales
        # stay float32 whatever dtype the model is cast to (they are read as float32).
        out = super()._apply(fn, recurse)
        self._pack()
        return out

    def _finish(self, y: torch.Tensor, x: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


class Int8DynamicLinear(CudaQuantModule):
    """int8 activations quantized per call (per token or per tensor) x int8 weights."""

    kernel = "torch._int_mm (int8 x int8 -> int32), dynamic activation scales"

    def __init__(self, linear: nn.Linear, q: torch.Tensor, qp: QParams, *, per_token: bool) -> None:
        super().__init__()
        self._register_common(linear)
        self.per_token = per_token
        self.register_buffer("weight_int", q.to(torch.int8).contiguous())
        self.register_buffer(
            "weight_scale", qp.scale.float().reshape(-1).expand(self.out_features).clone()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flatten(x)
        q, s = int8_sym_quantize(x2, per_row=self.per_token)
        acc = torch._int_mm(_pad_rows(q, 17, 8), self.weight_int.t())[: q.shape[0]]
        y = acc.float() * s * self.weight_scale.float()
        return self._finish(y, x, lead)


class Int8StaticLinear(CudaQuantModule):
    """Calibrated int8/uint8 input (per tensor, sym or asym) x int8 per-channel weights.

    uint8 inputs are shifted by -128 into int8 (zero point with them), and the zero
    point is taken out after the integer GEMM: ``sum_k (qx - zp) w = qx @ w - zp * sum_k w``,
    exact in int32. The output stays in float (bf16 on the GPU): no requantization.
    """

    kernel = "torch._int_mm (int8 x int8 -> int32), calibrated activation scale"

    def __init__(self, linear: nn.Linear, q: torch.Tensor, qp: QParams, in_qp: QParams) -> None:
        super().__init__()
        self._register_common(linear)
        self.register_buffer("weight_int", q.to(torch.int8).contiguous())
        self.register_buffer(
            "weight_scale", qp.scale.float().reshape(-1).expand(self.out_features).clone()
        )
        self.register_buffer("input_scale", in_qp.scale.reshape(()).float().clone())
        self.register_buffer("input_zero_point", in_qp.zero_point.reshape(()).long().clone())
        self.in_qmin, self.in_qmax = in_qp.qmin, in_qp.qmax
        self.in_offset = 128 if in_qp.qmin >= 0 else 0
        self._pack()

    def _pack(self) -> None:
        self._weight_sum = self.weight_int.to(torch.int32).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flatten(x)
        inv = 1.0 / self.input_scale
        zp = self.input_zero_point
        q = torch.clamp(torch.round(x2.float() * inv + zp.float()), self.in_qmin, self.in_qmax)
        q = (q - self.in_offset).to(torch.int8)
        acc = torch._int_mm(_pad_rows(q, 17, 8), self.weight_int.t())[: q.shape[0]]
        acc = acc - (zp - self.in_offset).to(torch.int32) * self._weight_sum
        y = acc.float() * (self.input_scale * self.weight_scale.float())
        return self._finish(y, x, lead)


class Fp8Linear(CudaQuantModule):
    """fp8 e4m3 activations (scaled per call) x fp8 e4m3 weights, ``torch._scaled_mm``.

    ``rowwise``: one scale per token and per output channel; else one per tensor each.
    ``use_fast_accum`` (Hopper's fp8 fast accumulation) is on, as in torchao's inference
    default: the tensor cores promote partial sums to fp32 less often.
    """

    use_fast_accum = True

    kernel = "torch._scaled_mm (fp8 e4m3)"

    def __init__(self, linear: nn.Linear, *, rowwise: bool) -> None:
        super().__init__()
        self._register_common(linear)
        self.rowwise = rowwise
        w8, ws = fp8_quantize(linear.weight.detach(), per_row=rowwise)
        self.register_buffer("weight_fp8", w8.view(torch.uint8).contiguous())
        self.register_buffer("weight_scale", ws.reshape(-1).float().clone())
        self._pack()

    def _pack(self) -> None:
        self._w8 = self.weight_fp8.view(FP8_DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flatten(x)
        m = x2.shape[0]
        q, s = fp8_quantize(_pad_rows(x2, 16, 16), per_row=self.rowwise)
        if self.rowwise:
            sb = self.weight_scale.float().reshape(1, -1)
        else:
            sb = self.weight_scale.float().reshape(())
        y = torch._scaled_mm(
            q,
            self._w8.t(),
            scale_a=s,
            scale_b=sb,
            out_dtype=torch.bfloat16,
            use_fast_accum=self.use_fast_accum,
        )
        return self._finish(y[:m].float(), x, lead)


class Int4WeightOnlyLinear(CudaQuantModule):
    """4-bit per-group weights, float activations: tinygemm (bf16 on the GPU).

    Stored as two nibbles per byte in a device-independent layout; packed for the
    kernel of the device the module sits on (``_convert_weight_to_int4pack`` on CUDA,
    its ``_for_cpu`` twin on the CPU).
    """

    kernel = "aten._weight_int4pack_mm (tinygemm, bf16 activations)"

    def __init__(self, linear: nn.Linear, q: torch.Tensor, qp: QParams) -> None:
        super().__init__()
        self._register_common(linear)
        assert qp.group_size is not None
        self.group_size = qp.group_size
        offset, sz = tinygemm_scales_and_zeros(qp)
        self.register_buffer("weight_int", _pack_nibbles(q + offset))
        self.register_buffer("scales_and_zeros", sz)
        self._pack()

    def _inner_k_tiles(self) -> int:
        k = self.in_features
        return 8 if k % 128 == 0 else 4 if k % 64 == 0 else 2

    def _pack(self) -> None:
        q = _unpack_nibbles(self.weight_int).to(torch.int32)
        sz = self.scales_and_zeros.float()
        # N in multiples of 16 for both kernels: zero rows whose outputs are sliced off.
        pad = -self.out_features % 16
        if pad:
            q = torch.cat([q, q.new_zeros(pad, q.shape[1])])
            fill = torch.zeros(sz.shape[0], pad, 2, dtype=sz.dtype, device=sz.device)
            fill[..., 0] = 1.0
            sz = torch.cat([sz, fill], dim=1)
        if q.device.type == "cuda":
            self._packed = torch.ops.aten._convert_weight_to_int4pack(
                pack_int4_for_cuda(q).contiguous(), self._inner_k_tiles()
            )
            self._sz = sz.to(torch.bfloat16).contiguous()
        else:
            self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 2)
            self._sz = sz.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flatten(x)
        if x2.device.type == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(
                x2.to(torch.bfloat16).contiguous(), self._packed, self.group_size, self._sz
            )
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.contiguous(), self._packed, self.group_size, self._sz.to(x2.dtype)
            )
        return self._finish(y[:, : self.out_features].float(), x, lead)


# -- latency -------------------------------------------------------------------------------
def cuda_latency(fn: Callable[[], Any], *, warmup: int = 10, repeats: int = 50) -> dict[str, float]:
    """Median and spread (ms) of ``fn()`` on the current CUDA device, timed with CUDA events.

    ``fn`` runs ``warmup`` times first (compilation, cuBLAS heuristics, CUDA graph
    capture happen there), then the device is synchronized and each of ``repeats`` calls
    is bracketed by its own pair of events; the median is what counts.
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "cuda_latency needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). Time CPU models with autoquant.measure."
        )
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        pairs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in pairs)
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": times[0],
        "p10_ms": times[len(times) // 10],
        "p90_ms": times[(len(times) * 9) // 10 - 1 if len(times) >= 10 else -1],
        "repeats": float(repeats),
    }
