"""Quantized replacement modules that call integer kernels directly (no torch.ao).

Every module keeps its integer weights and qparams as plain buffers, so ``state_dict``
holds ordinary tensors (safe to store with safetensors and to load with
``weights_only``); kernel-specific packed forms are rebuilt from those buffers after
construction and after ``load_state_dict``.

Each class states its ``kernel`` and whether it is ``simulated`` (fake-quant in float),
which the backend records in the model's metadata.
"""

from __future__ import annotations

import dataclasses
import warnings
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
    "SimulatedOp",
    "to_torch_qtensor",
]


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # torch 2.13 warns on every quantized-tensor creation that the API is deprecated; we
    # know, and the warning would flood users' logs once per layer.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        return fn(*args, **kwargs)


def to_torch_qtensor(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Wrap our integer weight as a torch quantized tensor (what fbgemm's prepack takes)."""
    tdtype = torch.qint8 if qp.qmin < 0 else torch.quint8
    ints = q.to(torch.int8 if tdtype == torch.qint8 else torch.uint8)
    if qp.axis is None:
        return _quiet(
            torch._make_per_tensor_quantized_tensor, ints, float(qp.scale), int(qp.zero_point)
        )
    return _quiet(
        torch._make_per_channel_quantized_tensor,
        ints,
        qp.scale.double(),
        qp.zero_point.long(),
        qp.axis,
    )


def _flatten_leading(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, x.shape[-1]), lead


class QuantModule(nn.Module):
    """Base of our quantized modules: weight buffers + a kernel label."""

    kernel: str = ""
    simulated: bool = False

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

    def _linear_prepack(self) -> Any:
        qweight = to_torch_qtensor(self.weight_int, self.weight_qparams())
        return torch.ops.quantized.linear_prepack(qweight, self.bias)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._pack()

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}" + (", simulated" if self.simulated else "")


class DynamicLinear(QuantModule):
    """int8 weights, activations quantized per call (fbgemm ``quantized::linear_dynamic``).

    Calls the op directly so ``reduce_range`` is ours to choose: torch.ao's dynamic
    Linear hard-codes ``reduce_range=True``, which costs accuracy on every CPU.
    """

    kernel = "quantized::linear_dynamic"

    def __init__(
        self, linear: nn.Linear, q: torch.Tensor, qp: QParams, *, reduce_range: bool
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = reduce_range
        self._register_weight(q, qp, torch.int8, linear)
        self._pack()

    def _pack(self) -> None:
        self._packed = self._linear_prepack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, self.reduce_range)


class _StaticBase(QuantModule):
    """Quantize the input with calibrated qparams, run the int8 op, dequantize the output.

    Used when the model cannot be traced: each op is its own quantized island.
    """

    def _register_io(self, in_qp: QParams, out_qp: QParams) -> None:
        for name, qp in (("input", in_qp), ("output", out_qp)):
            self.register_buffer(f"{name}_scale", qp.scale.reshape(()).clone().float())
            self.register_buffer(f"{name}_zero_point", qp.zero_point.reshape(()).clone().long())

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.quantize_per_tensor(
            x.float(), float(self.input_scale), int(self.input_zero_point), torch.quint8
        )


class StaticLinear(_StaticBase):
    kernel = "quantized::linear"

    def __init__(
        self, linear: nn.Linear, q: torch.Tensor, qp: QParams, in_qp: QParams, out_qp: QParams
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._register_weight(q, qp, torch.int8, linear)
        self._register_io(in_qp, out_qp)
        self._pack()

    def _pack(self) -> None:
        self._packed = self._linear_prepack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qx = _quiet(self._quantize_input, x)
        y = torch.ops.quantized.linear(
            qx, self._packed, float(self.output_scale), int(self.output_zero_point)
        )
        return y.dequantize()


class StaticConv(_StaticBase):
    """Conv1d / Conv2d on fbgemm's quantized conv kernels."""

    def __init__(
        self,
        conv: nn.Conv1d | nn.Conv2d,
        q: torch.Tensor,
        qp: QParams,
        in_qp: QParams,
        out_qp: QParams,
    ) -> None:
        super().__init__()
        self.dims = 1 if isinstance(conv, nn.Conv1d) else 2
        self.kernel = f"quantized::conv{self.dims}d"
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self._register_weight(q, qp, torch.int8, conv)
        self._register_io(in_qp, out_qp)
        self._pack()

    def _pack(self) -> None:
        qweight = to_torch_qtensor(self.weight_int, self.weight_qparams())
        prepack = getattr(torch.ops.quantized, f"conv{self.dims}d_prepack")
        self._packed = prepack(
            qweight,
            self.bias,
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qx = _quiet(self._quantize_input, x)
        op = getattr(torch.ops.quantized, f"conv{self.dims}d")
        y = op(qx, self._packed, float(self.output_scale), int(self.output_zero_point))
        return y.dequantize()


class WeightOnlyInt8Linear(QuantModule):
    """int8 symmetric per-channel weights, float activations (``aten._weight_int8pack_mm``)."""

    kernel = "aten._weight_int8pack_mm"

    def __init__(self, linear: nn.Linear, q: torch.Tensor, qp: QParams) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._register_weight(q, qp, torch.int8, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flatten_leading(x)
        y = torch.ops.aten._weight_int8pack_mm(
            x2.contiguous(), self.weight_int, self.weight_scale.to(x2.dtype)
        )
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
