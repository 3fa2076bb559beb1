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

__all__ = ["Departure", "kernel_departures", "verify_kernels", "op_math", "MAX_STEPS"]

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


def op_math(module: nn.Module, qx: torch.Tensor) -> torch.Tensor:
    """Float math of one of our static modules on the uint8 input ``qx`` it received:
    dequantized input times dequantized weight plus bias, then its fused post-op."""
    from autoquant.backends._modules import StaticLinear
    from autoquant.qparams import dequantize

    x = (qx.float() - module.x_zp) * module.x_scale
    w = dequantize(module.weight_int, module.weight_qparams()).float()
    if isinstance(module, StaticLinear):
        y = F.linear(x, w, module.bias)
    else:
        conv = F.conv1d if module.dims == 1 else F.conv2d
        y = conv(x, w, module.bias, module.stride, module.padding, module.dilation, module.groups)
    if module.post_op == "relu":
        y = F.relu(y)
    elif module.post_op == "hardtanh":
        y = torch.clamp(y, *module.post_args)
    return y


def _compare(
    fqn: str, kernel: str, module: nn.Module, qx: torch.Tensor, out: torch.Tensor
) -> Departure:
    y = op_math(module, qx)
    if module.output_scale is not None:
        # uint8 output: steps of the op's own output qparams.
        scale, zp = module.y_scale, module.y_zp
        math_q = torch.clamp(torch.round(y / scale) + zp, 0, 255)
        diff = (out.float() - math_q).abs()
        real = (out.float() - zp) * scale
        rounded = (math_q - zp) * scale
    else:
        # float output (the kernel dequantizes): steps of a 255-level grid over the
        # output's range, as if it were quantized.
        scale = float(y.max() - y.min()) / 255 or 1.0
        real = out.float()
        diff = (real - y).abs() / scale
        rounded = y
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
    from autoquant.backends._modules import StaticConv, StaticLinear

    info = getattr(qmodel, "autoquant_info", None)
    kernels = dict(getattr(info, "kernels", {}) or {})
    found: list[Departure] = []
    handles = []

    def hook(fqn: str) -> Any:
        def run(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            qx = module.quantize_input(inputs[0])
            kernel = kernels.get(fqn, module.kernel)
            found.append(_compare(fqn, kernel, module, qx, output))

        return run

    try:
        for fqn, module in qmodel.named_modules():
            if fqn and isinstance(module, (StaticConv, StaticLinear)):
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
