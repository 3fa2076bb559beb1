"""Build-time self-check: do the real integer kernels compute what the plan's math says?

One calibration batch runs through the built model; for every static integer op the
input it really received (already quantized) is pushed through the op's math in float,
dequantized input times dequantized weight plus bias, with the op's fused ReLU, and
rounded with the op's own output qparams. A correct kernel lands within rounding of
that (integer accumulation is exact, requantization may round the other way), so an op
whose output departs by more than ``max_steps`` quantization steps is refused: the
kernel, not the plan, is wrong there (e.g. int16 pair saturation).

The check is op by op, so each op is compared on exactly the input the real model gave
it and an error upstream is not blamed on the ops after it. Dynamic and weight-only ops
are not checked (their kernels take float inputs and were measured exact, see
``scripts/kernel_saturation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoquant.errors import QuantizationError

__all__ = ["Departure", "kernel_departures", "verify_kernels", "MAX_STEPS"]

# Module classes whose math the check knows (torch.ao's and autoquant's static ops).
_CHECKED = {
    "Conv1d",
    "Conv2d",
    "Linear",
    "ConvReLU1d",
    "ConvReLU2d",
    "LinearReLU",
    "StaticConv",
    "StaticLinear",
}
MAX_STEPS = 4  # more than this many output steps away from the math is a kernel fault


@dataclass(frozen=True)
class Departure:
    """How far one op's real output is from its math on one batch."""

    fqn: str
    kernel: str
    max_steps: float  # largest |real - math| in output quantization steps
    frac_off: float  # share of output elements more than MAX_STEPS away
    rel_error: float  # ||real - exact float math|| / ||exact float math||
    expected_rel_error: float  # the same for the math rounded with the op's qparams

    def describe(self) -> str:
        return (
            f"op {self.fqn!r} (kernel {self.kernel}): its int8 output departs from the plan's "
            f"math by up to {self.max_steps:.0f} quantization steps ({self.frac_off:.1%} of "
            f"the outputs by more than {MAX_STEPS}); relative error {self.rel_error:.4g} vs "
            f"{self.expected_rel_error:.4g} expected from rounding"
        )


def _op_math(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The float math of a torch quantized conv/linear (fused ReLU included), or None."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    if not isinstance(module, (nnq.Conv1d, nnq.Conv2d, nnq.Linear)):
        return None
    w = module.weight().dequantize()
    b = module.bias()
    if isinstance(module, (nnq.Conv1d, nnq.Conv2d)):
        if module.padding_mode != "zeros":
            return None
        conv = F.conv1d if isinstance(module, nnq.Conv1d) else F.conv2d
        y = conv(x, w, b, module.stride, module.padding, module.dilation, module.groups)
    elif isinstance(module, nnq.Linear):
        y = F.linear(x, w, b)
    else:
        return None
    if isinstance(module, (nniq.ConvReLU1d, nniq.ConvReLU2d, nniq.LinearReLU)):
        y = F.relu(y)
    return y


def _ours_math(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float, int] | None:
    """Math of autoquant's own static modules (module mode): input, float op, out qparams."""
    from autoquant.backends._modules import StaticConv, StaticLinear
    from autoquant.qparams import dequantize

    if not isinstance(module, (StaticConv, StaticLinear)):
        return None
    qx = torch.quantize_per_tensor(
        x.float(), float(module.input_scale), int(module.input_zero_point), torch.quint8
    ).dequantize()
    w = dequantize(module.weight_int, module.weight_qparams()).float()
    if isinstance(module, StaticLinear):
        y = F.linear(qx, w, module.bias)
    else:
        conv = F.conv1d if module.dims == 1 else F.conv2d
        y = conv(qx, w, module.bias, module.stride, module.padding, module.dilation, module.groups)
    return y, float(module.output_scale), int(module.output_zero_point)


def _compare(
    fqn: str,
    kernel: str,
    real_q: torch.Tensor,
    y: torch.Tensor,
    scale: float,
    zp: int,
    qmin: int,
    qmax: int,
) -> Departure:
    math_q = torch.clamp(torch.round(y / scale) + zp, qmin, qmax)
    diff = (real_q.float() - math_q).abs()
    real = (real_q.float() - zp) * scale
    rounded = (math_q - zp) * scale
    norm = float(y.norm()) or 1.0
    return Departure(
        fqn=fqn,
        kernel=kernel,
        max_steps=float(diff.max()) if diff.numel() else 0.0,
        frac_off=float((diff > MAX_STEPS).float().mean()) if diff.numel() else 0.0,
        rel_error=float((real - y).norm()) / norm,
        expected_rel_error=float((rounded - y).norm()) / norm,
    )


def kernel_departures(
    qmodel: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Departure]:
    """Run one batch through ``qmodel`` and measure every static integer op against its math."""
    info = getattr(qmodel, "autoquant_info", None)
    kernels = dict(getattr(info, "kernels", {}) or {})
    found: list[Departure] = []
    handles = []

    def hook(fqn: str) -> Any:
        def run(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            x, kernel = inputs[0], kernels.get(fqn, type(module).__name__)
            if x.is_quantized and isinstance(output, torch.Tensor) and output.is_quantized:
                y = _op_math(module, x.dequantize())
                if y is not None:
                    found.append(
                        _compare(
                            fqn,
                            kernel,
                            output.int_repr(),
                            y,
                            output.q_scale(),
                            output.q_zero_point(),
                            0,
                            255,
                        )
                    )
            elif not x.is_quantized:
                ours = _ours_math(module, x)
                if ours is not None:
                    y, scale, zp = ours
                    real_q = torch.round(output / scale) + zp
                    found.append(_compare(fqn, kernel, real_q, y, scale, zp, 0, 255))

        return run

    try:
        for fqn, module in qmodel.named_modules():
            if fqn and type(module).__module__.startswith(
                (
                    "torch.ao.nn.quantized.modules",
                    "torch.ao.nn.intrinsic.quantized",
                    "autoquant.backends._modules",
                )
            ):
                if type(module).__name__ in _CHECKED:
                    handles.append(module.register_forward_hook(hook(fqn)))
        if not handles:
            return found  # no static integer op: nothing to check, no forward pass
        with torch.no_grad():
            qmodel(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return found


def verify_kernels(
    qmodel: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Departure]:
    """Raise :class:`QuantizationError` naming every op whose kernel departs from its math."""
    checked = kernel_departures(qmodel, args, kwargs)
    bad = [d for d in checked if d.max_steps > MAX_STEPS]
    if bad:
        raise QuantizationError(
            f"the built model's integer kernels do not compute what the plan says for "
            f"{len(bad)} op(s) (checked on one calibration batch):\n"
            + "\n".join("  - " + d.describe() for d in bad)
            + "\nKeep these ops float, or set reduce_range=True on their activation spec "
            "(a kernel that adds product pairs in int16 cannot take full-range uint8)."
        )
    return checked
