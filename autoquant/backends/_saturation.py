"""Worst-case probes of the x86 int8 kernels: which ones add u8 x s8 pairs in int16.

fbgemm's AVX2 code (and some kernels on any CPU) multiplies uint8 activations by int8
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


def _qx(shape: tuple[int, ...], qmax: int) -> torch.Tensor:
    # scale 1: every element is the integer qmax (the top of the range)
    return torch.quantize_per_tensor(torch.full(shape, float(qmax)), 1.0, 0, torch.quint8)


def _qw(shape: tuple[int, ...]) -> torch.Tensor:
    scales = torch.ones(shape[0], dtype=torch.double)
    zps = torch.zeros(shape[0], dtype=torch.long)
    return torch.quantize_per_channel(torch.full(shape, 127.0), scales, zps, 0, torch.qint8)


def _conv(dims: int, cin: int, cout: int, k: int, groups: int, qmax: int) -> float:
    spatial = (8,) * dims
    x = _qx((1, cin, *spatial), qmax)
    w = _qw((cout, cin // groups, *((k,) * dims)))
    prepack = getattr(torch.ops.quantized, f"conv{dims}d_prepack")
    op = getattr(torch.ops.quantized, f"conv{dims}d")
    # Padding k // 2 (the usual "same" conv): fbgemm has dedicated depthwise kernels for it.
    packed = prepack(w, None, [1] * dims, [k // 2] * dims, [1] * dims, groups)
    exact = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv1d
    ref = exact(x.dequantize(), w.dequantize(), None, 1, k // 2, 1, groups)
    scale = float(ref.max()) / 100.0  # the largest exact result -> integer 100
    y = op(x, packed, scale, 0).dequantize()
    return float((y - ref).abs().max() / scale)


def _linear(cin: int, qmax: int) -> float:
    x = _qx((4, cin), qmax)
    packed = torch.ops.quantized.linear_prepack(_qw((8, cin)), None)
    exact = float(qmax * 127 * cin)
    y = torch.ops.quantized.linear(x, packed, exact / 100.0, 0).dequantize()
    return float((y - exact).abs().max() / (exact / 100.0))


def _dynamic_linear(cin: int, reduce_range: bool) -> float:
    x = torch.ones(4, cin)  # quantized per call to 255 (127 with reduce_range)
    packed = torch.ops.quantized.linear_prepack(_qw((8, cin)), None)
    y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range)
    exact = 127.0 * cin
    # A float output: express the error in steps of a 100-level output as elsewhere.
    return float((y - exact).abs().max() / (exact / 100.0))


def probe_kernels() -> list[ProbeResult]:
    """Worst-case departure (output steps) of each int8 kernel the x86 backend builds."""
    out: list[ProbeResult] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for qmax, label in ((255, "uint8 full range"), (127, "uint8 reduce_range")):
            rows = [
                ("quantized::linear", "64->32", _linear(64, qmax)),
                ("quantized::conv2d", "1x1 64->64", _conv(2, 64, 64, 1, 1, qmax)),
                ("quantized::conv2d", "3x3 64->64", _conv(2, 64, 64, 3, 1, qmax)),
                ("quantized::conv2d", "3x3 144->144 groups=4", _conv(2, 144, 144, 3, 4, qmax)),
                ("quantized::conv2d", "3x3 256->256 groups=128", _conv(2, 256, 256, 3, 128, qmax)),
                # torch's x86 engine sends groups <= 100 to oneDNN, more to fbgemm.
                ("quantized::conv2d", "3x3 depthwise 64", _conv(2, 64, 64, 3, 64, qmax)),
                ("quantized::conv2d", "3x3 depthwise 144", _conv(2, 144, 144, 3, 144, qmax)),
                ("quantized::conv2d", "5x5 depthwise 144", _conv(2, 144, 144, 5, 144, qmax)),
                ("quantized::conv2d", "3x3 depthwise 144->288", _conv(2, 144, 288, 3, 144, qmax)),
                ("quantized::conv1d", "k3 32->32", _conv(1, 32, 32, 3, 1, qmax)),
                ("quantized::conv1d", "k3 depthwise 144", _conv(1, 144, 144, 3, 144, qmax)),
            ]
            out += [ProbeResult(k, s, label, e) for k, s, e in rows]
            rr = qmax == 127
            out.append(
                ProbeResult("quantized::linear_dynamic", "64->8", label, _dynamic_linear(64, rr))
            )
    return out
