"""Worst-case probes of the x86 int8 kernels: which ones add u8 x s8 pairs in int16.

int8 code without VNNI (and some kernels on any CPU, e.g. fbgemm's depthwise conv used before issue 10) multiplies uint8 activations by int8
weights with ``vpmaddubsw``, which adds each pair of products in saturating int16: two
products of 255 * 127 overflow it. Whether a kernel does so is a property of the kernel
on a given torch build, not of the CPU flags alone, so it is measured here with inputs
that make every pair overflow, and the capability table records the result.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

__all__ = ["ProbeResult", "probe_kernels"]


@dataclass(frozen=True)
class ProbeResult:
    kernel: str
    shape: str
    activation: str
    steps: float  # largest departure from the exact result, in output quantization steps

    @property
    def saturates(self) -> bool:
        # Rounding the output costs at most half a step; anything past 2 is the kernel.
        return self.steps > 2.0


def _u8(shape: tuple[int, ...], qmax: int) -> torch.Tensor:
    # scale 1: every element is the integer qmax (the top of the range)
    return torch.full(shape, qmax, dtype=torch.uint8)


def _conv(dims: int, cin: int, cout: int, k: int, groups: int, qmax: int) -> float:
    """oneDNN's int8 conv (the x86 static Conv rows), output quantized to uint8."""
    x = _u8((1, cin, *((8,) * dims)), qmax)
    w = torch.full((cout, cin // groups, *((k,) * dims)), 127, dtype=torch.int8)
    ones, zeros = torch.ones(cout), torch.zeros(cout, dtype=torch.long)
    stride, pad, dil = [1] * dims, [k // 2] * dims, [1] * dims
    # Padding k // 2 (the usual "same" conv).
    packed = torch.ops.onednn.qconv_prepack(w, ones, 1.0, 0, stride, pad, dil, groups, None)
    exact = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv1d
    ref = exact(x.float(), w.float(), None, 1, k // 2, 1, groups)
    scale = float(ref.max()) / 100.0  # the largest exact result -> integer 100
    y = torch.ops.onednn.qconv_pointwise(
        x,
        1.0,
        0,
        packed,
        ones,
        zeros,
        None,
        stride,
        pad,
        dil,
        groups,
        scale,
        0,
        torch.uint8,
        "none",
        [],
        "",
    )
    return float((y.float() * scale - ref).abs().max() / scale)


def _linear(cin: int, qmax: int) -> float:
    """oneDNN's int8 Linear (the x86 static Linear row), output quantized to uint8."""
    x = _u8((4, cin), qmax)
    w = torch.full((8, cin), 127, dtype=torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(w, None)
    exact = float(qmax * 127 * cin)
    y = torch.ops.onednn.qlinear_pointwise(
        x,
        1.0,
        0,
        packed,
        torch.ones(8),
        torch.zeros(8, dtype=torch.long),
        None,
        exact / 100.0,
        0,
        torch.uint8,
        "none",
        [],
        "",
    )
    return float((y.float() - 100.0).abs().max())


def _dynamic_linear(cin: int, reduce_range: bool, rows: int) -> float:
    """Our dynamic Linear: _int_mm at few rows, oneDNN's qlinear at many."""
    from torch import nn

    from autoquant.backends._modules import DynamicLinear
    from autoquant.qparams import QParams

    lin = nn.Linear(cin, 8, bias=False)
    q = torch.full((8, cin), 127, dtype=torch.int32)
    qp = QParams(
        scale=torch.ones(8),
        zero_point=torch.zeros(8, dtype=torch.long),
        qmin=-127,
        qmax=127,
        dtype="int8",
        axis=0,
    )
    mod = DynamicLinear(lin, q, qp, reduce_range=reduce_range)
    x = torch.ones(rows, cin)  # quantized per call to 255 (127 with reduce_range)
    y = mod(x)
    exact = 127.0 * cin
    # A float output: express the error in steps of a 100-level output as elsewhere.
    return float((y - exact).abs().max() / (exact / 100.0))


def probe_kernels() -> list[ProbeResult]:
    """Worst-case departure (output steps) of each int8 kernel the x86 backend builds."""
    out: list[ProbeResult] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for qmax, label in ((255, "uint8 full range"), (127, "uint8 reduce_range")):
            ql, qc = "onednn::qlinear_pointwise", "onednn::qconv_pointwise"
            rows = [
                (ql, "64->32", _linear(64, qmax)),
                (qc, "2d 1x1 64->64", _conv(2, 64, 64, 1, 1, qmax)),
                (qc, "2d 3x3 64->64", _conv(2, 64, 64, 3, 1, qmax)),
                (qc, "2d 3x3 144->144 groups=4", _conv(2, 144, 144, 3, 4, qmax)),
                (qc, "2d 3x3 256->256 groups=128", _conv(2, 256, 256, 3, 128, qmax)),
                (qc, "2d 3x3 depthwise 64", _conv(2, 64, 64, 3, 64, qmax)),
                (qc, "2d 3x3 depthwise 144", _conv(2, 144, 144, 3, 144, qmax)),
                (qc, "2d 5x5 depthwise 144", _conv(2, 144, 144, 5, 144, qmax)),
                (qc, "2d 3x3 depthwise 144->288", _conv(2, 144, 288, 3, 144, qmax)),
                (qc, "1d k3 32->32", _conv(1, 32, 32, 3, 1, qmax)),
                (qc, "1d k3 depthwise 144", _conv(1, 144, 144, 3, 144, qmax)),
            ]
            out += [ProbeResult(k, s, label, e) for k, s, e in rows]
            rr = qmax == 127
            out.append(
                ProbeResult(
                    "aten._int_mm (dynamic)", "64->8, 8 rows", label, _dynamic_linear(64, rr, 8)
                )
            )
            out.append(
                ProbeResult(
                    "onednn::qlinear_pointwise (dynamic)",
                    "64->8, 512 rows",
                    label,
                    _dynamic_linear(64, rr, 512),
                )
            )
    return out
