"""Fake quantization with straight-through gradients (and LSQ's learnable scale).

Forward: ``x' = (clamp(round(x / s) + z, qmin, qmax) - z) * s``, computed with
:func:`autoquant.qparams.quantize` / ``dequantize`` so the integers are exactly the ones a
static build computes from the same qparams.

Backward, straight-through estimator (Bengio et al. 2013, as torch.ao's fake-quant):
rounding passes the gradient through unchanged, clamping stops it, so
``dx = dy`` where ``qmin <= round(x / s) + z <= qmax`` and 0 elsewhere.

LSQ (Esser et al. 2020, "Learned Step Size Quantization") also learns ``s``: with
``v = x / s``, ``q = round(v) + z`` and a gradient scale ``g``,
``ds = g * sum(dy * (round(v) - v))`` inside the range and ``g * sum(dy * (qmin - z))`` /
``g * sum(dy * (qmax - z))`` below / above it. LSQ's ``g`` for an activation is
``1 / sqrt(features * qmax)``, features per sample (the caller passes it).
"""

from __future__ import annotations

import math

import torch

from autoquant.qparams import QParams, dequantize, quantize

__all__ = ["fake_quant_ste", "fake_quant_lsq"]


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, qp: QParams) -> torch.Tensor:  # type: ignore[override]
        q = quantize(x, qp)
        ctx.save_for_backward(_in_range(x, qp))
        return dequantize(q, qp).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def _in_range(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Where ``round(x / s) + z`` lies inside ``[qmin, qmax]`` (before the clamp)."""
    xv, scale, zp = qp._broadcast(x.detach().float())
    t = torch.round(xv * (1.0 / scale) + zp.float())
    return ((t >= qp.qmin) & (t <= qp.qmax)).reshape(x.shape).to(x.dtype)


def fake_quant_ste(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``dequantize(quantize(x, qp))`` with the straight-through gradient (module docstring)."""
    return _FakeQuantSTE.apply(x, qp)


class _FakeQuantLSQ(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero_point: int,
        qmin: int,
        qmax: int,
        grad_factor: float,
    ) -> torch.Tensor:
        v = x / scale
        r = torch.round(v)
        t = r + zero_point
        below, above = t < qmin, t > qmax
        q = t.clamp(qmin, qmax)
        ctx.save_for_backward(v, r, below, above)
        ctx.consts = (zero_point, qmin, qmax, grad_factor)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        v, r, below, above = ctx.saved_tensors
        zero_point, qmin, qmax, g = ctx.consts
        inside = ~(below | above)
        dx = grad * inside
        local = torch.where(inside, r - v, torch.zeros_like(v))
        local = torch.where(below, torch.full_like(v, float(qmin - zero_point)), local)
        local = torch.where(above, torch.full_like(v, float(qmax - zero_point)), local)
        ds = (grad * local).sum().reshape(()) * g
        return dx, ds, None, None, None, None


def fake_quant_lsq(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: int,
    qmin: int,
    qmax: int,
    grad_factor: float | None = None,
) -> torch.Tensor:
    """Per-tensor fake quantization whose ``scale`` (a 0-d tensor) gets LSQ's gradient,
    scaled by ``grad_factor`` (default ``1 / sqrt(numel * qmax)``)."""
    if grad_factor is None:
        grad_factor = 1.0 / math.sqrt(x.numel() * max(qmax, 1))
    return _FakeQuantLSQ.apply(x, scale, zero_point, qmin, qmax, grad_factor)
