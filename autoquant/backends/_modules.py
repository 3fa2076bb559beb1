"""Quantized replacement modules that call integer kernels on plain tensors.

No quantized tensor (``torch.qint8``/``quint8``) and no ``torch.ao`` is involved: the
static and dynamic ops call oneDNN's int8 kernels (``torch.ops.onednn.qlinear_pointwise``,
``qconv*_pointwise``) and ``torch._int_mm`` on ``uint8``/``int8`` tensors with float
scales, the same kernels Inductor lowers PT2E graphs to, so a built model also runs
under ``torch.compile`` (see :mod:`autoquant.backends._deploy`).

Every module keeps its integer weights and qparams as plain buffers, so ``state_dict``
holds ordinary tensors (safe to store with safetensors and to load with
``weights_only``); kernel-specific packed forms (oneDNN's opaque weight tensors) are
rebuilt from those buffers after construction, after ``load_state_dict`` and on
``deepcopy``.

Each class states its ``kernel`` and whether it is ``simulated`` (fake-quant in float),
which the backend records in the model's metadata.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoquant.config import QuantSpec
from autoquant.qparams import QParams, dequantize, fake_quantize, qparams_from_range

__all__ = [
    "QuantModule",
    "DynamicLinear",
    "StaticLinear",
    "StaticConv",
    "WeightOnlyInt8Linear",
    "WeightOnlyInt4Linear",
    "WeightOnlyEmbedding",
    "BF16Op",
    "SimulatedOp",
    "quantize_u8",
]


def quantize_u8(
    x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int
) -> torch.Tensor:
    """Float -> uint8 with per-tensor qparams (one fused kernel under torch.compile).

    ``x * (1/scale)`` rounded half-to-even, as torch's own quantize computes it.
    """
    return torch.clamp(torch.round(x * (1.0 / scale) + zero_point), qmin, qmax).to(torch.uint8)


def _flatten_leading(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, x.shape[-1]), lead


class QuantModule(nn.Module):
    """Base of our quantized modules: weight buffers + a kernel label."""

    kernel: str = ""
    simulated: bool = False
    # Attributes rebuilt by _pack (oneDNN's packed weights cannot be deep-copied).
    _PACKED: tuple[str, ...] = ()

    def _register_weight(
        self, q: torch.Tensor, qp: QParams, store_dtype: torch.dtype, source: nn.Module
    ) -> None:
        """Integer weight, its qparams and the float bias of ``source`` as buffers."""
        bias = getattr(source, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())
        self.register_buffer("weight_int", q.to(store_dtype))
        self.register_buffer("weight_scale", qp.scale.clone().float())
        # Zero points lie in [qmin, qmax]: store them at the weights' own width (a
        # 32-bit zero point per 32-weight group would cost more than the 4-bit data).
        self.register_buffer("weight_zero_point", qp.zero_point.clone().to(store_dtype))
        self.w_qmin, self.w_qmax, self.w_axis = qp.qmin, qp.qmax, qp.axis
        self.w_group_size, self.w_dtype = qp.group_size, qp.dtype

    def weight_qparams(self) -> QParams:
        return QParams(
            scale=self.weight_scale,
            zero_point=self.weight_zero_point.long(),
            qmin=self.w_qmin,
            qmax=self.w_qmax,
            dtype=self.w_dtype,
            axis=self.w_axis,
            group_size=self.w_group_size,
        )

    def _pack(self) -> None:
        """Rebuild kernel-specific packed weights from the buffers (no-op by default)."""

    def _channel_scales(self) -> torch.Tensor:
        """One float scale per output channel (oneDNN takes a vector even per tensor)."""
        n = self.weight_int.shape[0]
        return self.weight_scale.float().reshape(-1).expand(n).contiguous()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._pack()

    def __deepcopy__(self, memo: dict[int, Any]) -> QuantModule:
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k not in self._PACKED:
                new.__dict__[k] = copy.deepcopy(v, memo)
        new._pack()
        return new

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}" + (", simulated" if self.simulated else "")


# Rows at or below this many use torch._int_mm (+ a fused integer epilogue), above it
# oneDNN's qlinear: measured at 384x384 and 384x1536, 1 thread, compiled (the report
# of issue 10): _int_mm is ~1.5x faster at 32 rows, oneDNN ~1.6x faster at 2048.
_INT_MM_MAX_ROWS = 256


class DynamicLinear(QuantModule):
    """int8 weights, activations quantized per call to uint8 from their min/max.

    ``reduce_range`` is ours to choose (torch.ao's dynamic Linear hard-codes it). The
    integer product runs on ``torch._int_mm`` for few rows and on oneDNN's
    ``qlinear_pointwise`` for many; both accumulate exactly in int32.
    """

    kernel = "onednn::qlinear_pointwise / aten._int_mm (dynamic uint8 x int8, plain tensors)"
    _PACKED = ("_packed",)

    def __init__(
        self, linear: nn.Linear, q: torch.Tensor, qp: QParams, *, reduce_range: bool
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = reduce_range
        self._register_weight(q, qp, torch.int8, linear)
        self._pack()

    def _pack(self) -> None:
        self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int, None)
        # _int_mm wants int8 x int8; the uint8 activation shifts by 128 and its zero
        # point with it, corrected by the weight's column sums.
        self.weight_t = self.weight_int.t().contiguous()
        self.col_sum = self.weight_int.sum(1, dtype=torch.int32)
        self.w_scales = self._channel_scales()
        self.w_zps = torch.zeros(self.out_features, dtype=torch.long)

    def input_qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-call (scale, zero point) of ``x``: asymmetric, range widened to hold 0."""
        qmax = 127 if self.reduce_range else 255
        lo, hi = torch.aminmax(x)
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale > 0, scale, 1.0)
        # -lo / scale lies in [0, qmax]: no clamp needed.
        return scale, torch.round(-lo / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Few ops, in place where possible: eagerly (tuning-time evaluation) each op
        # costs a dispatch; compiled, they fuse into one or two kernels either way.
        x2, lead = _flatten_leading(x.float())
        qmax = 127 if self.reduce_range else 255
        scale, zp = self.input_qparams(x2)
        q = torch.round(x2 / scale).add_(zp).clamp_(0, qmax)
        if x2.shape[0] <= _INT_MM_MAX_ROWS:
            acc = torch._int_mm(q.sub_(128).to(torch.int8), self.weight_t)
            acc.sub_((zp - 128).to(torch.int32) * self.col_sum)
            y = acc.float().mul_(scale * self.w_scales)
            if self.bias is not None:
                y.add_(self.bias)
        else:
            y = torch.ops.onednn.qlinear_pointwise.tensor(
                q.to(torch.uint8),
                scale,
                zp.long(),
                self._packed,
                self.w_scales,
                self.w_zps,
                self.bias,
                1.0,
                0,
                torch.float32,
                "none",
                [],
                "",
            )
        return y.reshape(*lead, self.out_features)


# Post-ops oneDNN fuses into the kernel: (name, scalars) for relu and clamps.
PostOp = tuple[str, tuple[float, ...]]


class _StaticBase(QuantModule):
    """Quantize the input with calibrated qparams (or take it already as uint8), run the
    int8 kernel with its fused post-op, and return float, or uint8 in the next op's
    input qparams when it is int8 too (requantization fused into the kernel).

    ``post_op``: ``("none", ())``, ``("relu", ())`` or ``("hardtanh", (lo, hi))``.
    """

    _PACKED = ("_packed",)

    def _register_io(
        self,
        in_qp: QParams,
        out_qp: QParams | None,
        post_op: PostOp,
        int8_input: bool,
    ) -> None:
        for name, qp in (("input", in_qp), ("output", out_qp)):
            if qp is None:
                self.register_buffer(f"{name}_scale", None)
                self.register_buffer(f"{name}_zero_point", None)
                continue
            self.register_buffer(f"{name}_scale", qp.scale.reshape(()).clone().float())
            self.register_buffer(f"{name}_zero_point", qp.zero_point.reshape(()).clone().long())
        self.in_qmin, self.in_qmax = in_qp.qmin, in_qp.qmax
        self.post_op, self.post_args = post_op[0], tuple(float(a) for a in post_op[1])
        self.int8_input = int8_input

    def _io_scalars(self) -> None:
        # Python numbers: torch.compile treats them as constants (no graph break).
        self.x_scale, self.x_zp = float(self.input_scale), int(self.input_zero_point)
        if self.output_scale is None:
            self.y_scale, self.y_zp, self.y_dtype = 1.0, 0, torch.float32
        else:
            self.y_scale, self.y_zp = float(self.output_scale), int(self.output_zero_point)
            self.y_dtype = torch.uint8
        self.w_scales = self._channel_scales()
        self.w_zps = torch.zeros(self.weight_int.shape[0], dtype=torch.long)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 input the kernel sees (``x`` itself when it arrives as uint8)."""
        if self.int8_input:
            return x
        return quantize_u8(x.float(), self.x_scale, self.x_zp, self.in_qmin, self.in_qmax)

    def extra_repr(self) -> str:
        io = f"in={'uint8' if self.int8_input else 'float'}, out={'uint8' if self.output_scale is not None else 'float'}"
        return f"kernel={self.kernel}, post_op={self.post_op}, {io}"


class StaticLinear(_StaticBase):
    kernel = "onednn::qlinear_pointwise (static uint8 x int8, plain tensors)"

    def __init__(
        self,
        linear: nn.Linear,
        q: torch.Tensor,
        qp: QParams,
        in_qp: QParams,
        out_qp: QParams | None = None,
        *,
        post_op: PostOp = ("none", ()),
        int8_input: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._register_weight(q, qp, torch.int8, linear)
        self._register_io(in_qp, out_qp, post_op, int8_input)
        self._pack()

    def _pack(self) -> None:
        self._io_scalars()
        self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q2, lead = _flatten_leading(self.quantize_input(x))
        y = torch.ops.onednn.qlinear_pointwise(
            q2,
            self.x_scale,
            self.x_zp,
            self._packed,
            self.w_scales,
            self.w_zps,
            self.bias,
            self.y_scale,
            self.y_zp,
            self.y_dtype,
            self.post_op,
            list(self.post_args),
            "",
        )
        return y.reshape(*lead, self.out_features)


class StaticConv(_StaticBase):
    """Conv1d / Conv2d on oneDNN's int8 conv (``onednn::qconv_pointwise``)."""

    def __init__(
        self,
        conv: nn.Conv1d | nn.Conv2d,
        q: torch.Tensor,
        qp: QParams,
        in_qp: QParams,
        out_qp: QParams | None = None,
        *,
        post_op: PostOp = ("none", ()),
        int8_input: bool = False,
    ) -> None:
        super().__init__()
        self.dims = 1 if isinstance(conv, nn.Conv1d) else 2
        if self.dims == 1 and post_op[0] not in ("none", "relu"):
            raise ValueError(
                f"oneDNN's int8 conv1d fuses only relu, not post_op={post_op[0]!r}; run the "
                "clamp as a separate op."
            )
        self.kernel = f"onednn::qconv{self.dims}d_pointwise (static uint8 x int8, plain tensors)"
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self._register_weight(q.reshape(conv.weight.shape), qp, torch.int8, conv)
        self._register_io(in_qp, out_qp, post_op, int8_input)
        self._pack()

    def _pack(self) -> None:
        self._io_scalars()
        self._packed = torch.ops.onednn.qconv_prepack(
            self.weight_int,
            self.w_scales,
            self.x_scale,
            self.x_zp,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qconv_pointwise(
            self.quantize_input(x),
            self.x_scale,
            self.x_zp,
            self._packed,
            self.w_scales,
            self.w_zps,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.y_scale,
            self.y_zp,
            self.y_dtype,
            self.post_op,
            list(self.post_args),
            "",
        )


class BF16Op(nn.Module):
    """Linear / Conv in bfloat16 (oneDNN's AVX512-BF16 kernels); float32 in and out.

    A per-op alternative to fp32 for ops int8 hurts too much: half the weight bytes and
    the CPU's bf16 dot products, with bf16's 8-bit mantissa as the only loss.
    """

    kernel = "aten linear/conv in bfloat16 (oneDNN AVX512-BF16)"
    simulated = False

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = copy.deepcopy(op).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x.to(torch.bfloat16)).float()

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


@torch.compiler.disable
def _int8pack_mm(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # Runs eagerly inside compiled models: Inductor (torch 2.13) fails to lower
    # _weight_int8pack_mm when its input is a fused pointwise result (AssertionError
    # on a Pointwise buffer), so the compiled graph breaks around this one call.
    return torch.ops.aten._weight_int8pack_mm(x, w, scales)


class WeightOnlyInt8Linear(QuantModule):
    """int8 symmetric per-channel weights, float activations (``aten._weight_int8pack_mm``)."""

    kernel = "aten._weight_int8pack_mm"

    def __init__(self, linear: nn.Linear, q: torch.Tensor, qp: QParams) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._register_weight(q, qp, torch.int8, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flatten_leading(x)
        y = _int8pack_mm(x2.contiguous(), self.weight_int, self.weight_scale.to(x2.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[rows, 2k] ints in [0, 15] -> [rows, k] uint8, low nibble = even column."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def _as_nibbles(q: torch.Tensor, qp: QParams) -> tuple[torch.Tensor, QParams]:
    """4-bit integers as packed unsigned nibbles plus matching qparams.

    Signed int4 [-8, 7] shifts to [0, 15]; the zero point moves with it, so the values
    represented do not change.
    """
    offset = -qp.qmin if qp.qmin < 0 else 0
    shifted = dataclasses.replace(
        qp,
        zero_point=qp.zero_point + offset,
        qmin=qp.qmin + offset,
        qmax=qp.qmax + offset,
        dtype="uint4",
    )
    return _pack_nibbles(q + offset), shifted


def _unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    low, high = p & 0x0F, p >> 4
    return torch.stack([low, high], dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)


class WeightOnlyInt4Linear(QuantModule):
    """4-bit per-group weights, float activations (``aten._weight_int4pack_mm_for_cpu``).

    The kernel computes ``(q - 8) * scale + zero`` with unsigned nibbles and a float
    ``zero``; our integer zero point maps onto it exactly: ``zero = (8 - zp) * scale``.
    Weights are stored as two nibbles per byte in our own layout and packed for the
    kernel at load time, so saved files do not depend on the kernel's tiling.
    """

    kernel = "aten._weight_int4pack_mm_for_cpu"
    _INNER_K_TILES = 2

    def __init__(self, linear: nn.Linear, q: torch.Tensor, qp: QParams) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._register_weight(*_as_nibbles(q, qp), torch.uint8, linear)
        self._pack()

    def _pack(self) -> None:
        q = _unpack_nibbles(self.weight_int).to(torch.int32)
        scale = self.weight_scale.float()
        zero = (8 - self.weight_zero_point.float()) * scale
        # The kernel wants N (output rows) in multiples of 16: pad with zero rows whose
        # outputs are sliced off in forward.
        pad = -self.out_features % 16
        if pad:
            q = torch.cat([q, q.new_zeros(pad, q.shape[1])])
            scale = torch.cat([scale, scale.new_ones(pad, scale.shape[1])])
            zero = torch.cat([zero, zero.new_zeros(pad, zero.shape[1])])
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.contiguous(), self._INNER_K_TILES
        )
        # Kernel layout: [k / group_size, n, 2] of (scale, zero).
        self._scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flatten_leading(x)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2.contiguous(), self._packed, self.w_group_size, self._scales_and_zeros
        )
        y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class WeightOnlyEmbedding(QuantModule):
    """Integer embedding table (8- or 4-bit, one scale per row); rows gathered as integers."""

    kernel = "embedding gather on int8/int4 table"

    def __init__(self, emb: nn.Embedding, q: torch.Tensor, qp: QParams) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self.padding_idx = emb.padding_idx
        self.nibbles = qp.dtype in ("int4", "uint4")
        if self.nibbles:
            self._register_weight(*_as_nibbles(q, qp), torch.uint8, emb)
        else:
            self._register_weight(q, qp, torch.int8 if qp.qmin < 0 else torch.uint8, emb)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight_int)
        if self.nibbles:
            rows = _unpack_nibbles(rows)
        scale = F.embedding(ids, self.weight_scale.unsqueeze(1))
        zp = F.embedding(ids, self.weight_zero_point.unsqueeze(1).to(torch.int32))
        return (rows.to(torch.int32) - zp).float() * scale


class SimulatedOp(nn.Module):
    """Fake-quant execution of a config with no integer kernel, for accuracy studies only.

    The wrapped float op runs with a quantize-dequantized weight; its input is
    fake-quantized with calibrated qparams (static) or per-call min/max (dynamic).
    Latency of this module is float latency plus overhead, never quantized speed.
    """

    simulated = True
    kernel = "simulated (fake-quant on float kernels)"

    def __init__(
        self,
        op: nn.Module,
        weight_q: torch.Tensor,
        weight_qp: QParams,
        *,
        input_qp: QParams | None = None,
        dynamic_spec: QuantSpec | None = None,
    ) -> None:
        super().__init__()
        self.op = op
        with torch.no_grad():
            op.weight.copy_(dequantize(weight_q, weight_qp).reshape(op.weight.shape))
        self.mode = "static" if input_qp is not None else "dynamic" if dynamic_spec else "none"
        self.dynamic_spec = dynamic_spec
        if input_qp is not None:
            self.register_buffer("input_scale", input_qp.scale.reshape(()).clone().float())
            self.register_buffer("input_zero_point", input_qp.zero_point.reshape(()).clone().long())
            self.in_qmin, self.in_qmax, self.in_dtype = input_qp.qmin, input_qp.qmax, input_qp.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "static":
            qp = QParams(
                scale=self.input_scale,
                zero_point=self.input_zero_point,
                qmin=self.in_qmin,
                qmax=self.in_qmax,
                dtype=self.in_dtype,
            )
            x = fake_quantize(x, qp)
        elif self.mode == "dynamic":
            assert self.dynamic_spec is not None
            x = fake_quantize(x, qparams_from_range(x.min(), x.max(), self.dynamic_spec))
        return self.op(x)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, {self.mode}"
