"""Issue 15: x86 static int8 on MobileNet-style blocks computes what the plan says.

Real kernels on an inverted residual and on a conv-BN-ReLU6 -> depthwise pair whose
pre-activation range is mostly negative: activation qparams come after the clamp (every
spelling). Since issue 10 the kernels are oneDNN's on plain tensors, which are exact at
full uint8 range, depthwise included (scripts/kernel_saturation.py), so depthwise convs
keep full-range activations; the build self-check still refuses a kernel that departs
from the math.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _models import ConvReLU6Depthwise, InvertedResidual, mostly_negative
from torch import nn

import autoquant as aq
from autoquant.backends import get_backend
from autoquant.backends._build import set_submodule
from autoquant.backends._modules import StaticConv
from autoquant.backends._saturation import probe_kernels
from autoquant.backends._selfcheck import kernel_departures, op_math
from autoquant.backends.base import module_kinds
from autoquant.backends.x86 import SaturationWarning

OBSERVERS = ("minmax", "kl", "mse", "percentile")


def _data(c: int = 24) -> tuple[list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(8, c, 10, 10) for _ in range(2)], torch.randn(8, c, 10, 10)


class _ConvMath(nn.Module):
    """A built int8 conv's math on float kernels: the uint8 input it really gets,
    dequantized, times its dequantized weight, its fused post-op, and the output
    rounded with the op's own output qparams when it hands uint8 on."""

    def __init__(self, q: nn.Module) -> None:
        super().__init__()
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q
        y = op_math(q, q.quantize_input(x))
        if q.output_scale is None:
            return y
        return torch.clamp(torch.round(y / q.y_scale) + q.y_zp, 0, 255).to(torch.uint8)


def _plan_math(qmodel: nn.Module) -> nn.Module:
    """The built graph with every int8 conv replaced by its math (borders unchanged)."""
    import copy

    ref = copy.deepcopy(qmodel)
    for name, module in list(ref.named_modules()):
        if isinstance(module, StaticConv):
            set_submodule(ref, name, _ConvMath(module))
    return ref


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


@pytest.mark.parametrize("make", [InvertedResidual, ConvReLU6Depthwise], ids=["ir", "pair"])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_real_kernels_match_the_math_for_every_observer(make, reduce_range) -> None:
    model = mostly_negative(make())
    calib, test = _data()
    with torch.no_grad():
        ref = model(test)
    stats = {b: aq.calibrate(model, calib, backend=b) for b in ("x86", "simulated")}
    for obs in OBSERVERS:
        cfg = aq.static_int8(observer=obs, reduce_range=reduce_range)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SaturationWarning)
            real = aq.quantize(model, {"Conv2d": cfg}, calib[:1], stats=stats["x86"])
            sim = aq.quantize(model, {"Conv2d": cfg}, stats=stats["simulated"], backend="simulated")
        with torch.no_grad():
            err_real = _rel(real(test), ref)
            err_math = _rel(_plan_math(real)(test), ref)
            err_sim = _rel(sim(test), ref)
        # Within 1.5x of the plan's math on float kernels: the same graph with each int8
        # conv computed in float from its dequantized input and weight and rounded with
        # its output qparams (before issue 15's fix: 100-1100x).
        assert err_real <= 1.5 * err_math + 1e-6, (obs, err_real, err_math)
        if make is InvertedResidual:
            # The simulated backend rounds op inputs only, not outputs; on the residual
            # block, where the output's own rounding is small, it stays close.
            assert err_real <= 3.0 * err_sim, (obs, err_real, err_sim)
        assert all(d.max_steps <= 1 for d in kernel_departures(real, (test,), {})), obs


@pytest.mark.parametrize("act", ["module", "relu6", "hardtanh", "clamp"])
def test_every_relu6_spelling_folds_into_the_producers_qparams(act) -> None:
    model = mostly_negative(InvertedResidual(act=act))
    calib, _ = _data()
    q = aq.quantize(model, {"Conv2d": aq.static_int8()}, calib)
    # Every spelling of ReLU6 is fused into the expand conv, which hands uint8 to the
    # depthwise conv in ReLU6's [0, max] range: zero point 0, not the pre-activation
    # range's ~180.
    assert q.expand.post_op == "hardtanh" and q.expand.post_args == (0.0, 6.0)
    assert q.dw.int8_input and q.expand.y_zp == 0
    stats = aq.calibrate(model, calib)
    hi = max(float(v.max) for k, v in stats.stats.items() if k.startswith("node:"))
    assert q.expand.y_scale < hi / 127  # far finer than the pre-activation range allows


def test_depthwise_convs_keep_full_range_on_the_exact_kernels() -> None:
    model = mostly_negative(InvertedResidual())
    calib, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaturationWarning)
        q = aq.quantize(model, {"Conv2d": aq.static_int8()}, calib)
    plan = aq.quant_info(q).plan
    assert not plan["dw"].activation.reduce_range
    # The depthwise conv's input (the expand conv's uint8 output) uses all 8 bits.
    seen = {}
    q.dw.register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        q(calib[0])
    assert seen["x"].dtype == torch.uint8 and int(seen["x"].max()) > 127
    (d,) = [d for d in kernel_departures(q, (calib[0],), {}) if d.fqn == "dw"]
    assert d.max_steps <= 1


def _saturating() -> tuple[nn.Module, list[torch.Tensor]]:
    """The depthwise conv fbgemm's int16 pair sums overflowed on (before issue 10)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(144, 144, 3, padding=1, groups=144)).eval()
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.0)
    return model, [torch.rand(4, 144, 8, 8) * 0.3 + 0.7 for _ in range(2)]


def test_self_check_passes_the_former_worst_case_and_refuses_a_faulty_kernel() -> None:
    from autoquant.backends._selfcheck import verify_kernels

    model, calib = _saturating()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaturationWarning)
        q = aq.quantize(model, {"Conv2d": aq.static_int8()}, calib)
    (d,) = kernel_departures(q, (calib[0],), {})
    assert d.max_steps <= 1
    # A kernel that computes something else (its packed weight swapped for another
    # op's) is refused by the check on real data.
    conv = q.get_submodule("0")
    conv.weight_int.copy_(torch.flip(conv.weight_int, dims=[0]))
    conv._packed = torch.ops.onednn.qconv_prepack(
        conv.weight_int,
        conv.w_scales,
        conv.x_scale,
        conv.x_zp,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        None,
    )
    conv.weight_int.copy_(torch.flip(conv.weight_int, dims=[0]))
    with pytest.raises(aq.QuantizationError, match=r"op '0' \(kernel .*qconv.*quantization steps"):
        verify_kernels(q, (calib[0],), {})


def test_self_check_reads_a_generator_once() -> None:
    model, calib = _saturating()
    q = aq.quantize(model, {"Conv2d": aq.static_int8()}, (b for b in calib))
    assert aq.quant_info(q).kernels


def test_capability_rows_agree_with_the_measured_kernels() -> None:
    backend = get_backend("x86")
    rows = probe_kernels()
    assert rows and not [r for r in rows if r.saturates], [r for r in rows if r.saturates]
    # No measured kernel saturates, so no row claims to.
    assert not [c for c in backend.capabilities() if c.saturates]
    assert module_kinds(nn.Conv2d(8, 8, 3, groups=8)) == {"depthwise"}
    assert module_kinds(nn.Conv2d(8, 8, 3, groups=2)) == {"grouped"}


def test_the_tuner_proposes_full_range_for_depthwise_on_exact_kernels() -> None:
    from autoquant.discovery import discover
    from autoquant.tuning.config import TuningConfig
    from autoquant.tuning.space import SearchSpace

    model = mostly_negative(InvertedResidual())
    backend = get_backend("x86")
    cfg = TuningConfig(search=("approach", "observer", "reduce_range"), tie="op")
    space = SearchSpace.build(model, discover(model), backend, cfg, calibrated=True)
    (dw_unit,) = [u for u in space.units.values() if "dw" in u.fqns]
    statics = [c for c in dw_unit.configs if c is not None and c.approach == "static"]
    assert any(not c.activation.reduce_range for c in statics)
