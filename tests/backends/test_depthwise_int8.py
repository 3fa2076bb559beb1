"""Issue 15: x86 static int8 on MobileNet-style blocks computes what the plan says.

Real kernels on an inverted residual and on a conv-BN-ReLU6 -> depthwise pair whose
pre-activation range is mostly negative: activation qparams come after the clamp (every
spelling), depthwise convs get 7-bit activations (their fbgemm kernel adds pairs in
int16), and the build self-check refuses a kernel that departs from the math.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _models import ConvReLU6Depthwise, InvertedResidual, mostly_negative
from torch import nn

import autoquant as aq
from autoquant.backends import get_backend
from autoquant.backends._saturation import probe_kernels
from autoquant.backends._selfcheck import kernel_departures
from autoquant.backends.base import module_kinds
from autoquant.backends.x86 import SaturationWarning

OBSERVERS = ("minmax", "kl", "mse", "percentile")


def _data(c: int = 24) -> tuple[list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(8, c, 10, 10) for _ in range(2)], torch.randn(8, c, 10, 10)


class _ConvMath(nn.Module):
    """A built quantized conv's math on float kernels: dequantized input and weight,
    float conv (+ fused ReLU), rounded with the op's own output qparams."""

    def __init__(self, q: nn.Module) -> None:
        super().__init__()
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q
        y = F.conv2d(
            x.dequantize(),
            q.weight().dequantize(),
            q.bias(),
            q.stride,
            q.padding,
            q.dilation,
            q.groups,
        )
        if "ReLU" in type(q).__name__:
            y = F.relu(y)
        return torch.quantize_per_tensor(y, q.scale, q.zero_point, torch.quint8)


def _plan_math(qmodel: nn.Module) -> nn.Module:
    """The built graph with every int8 conv replaced by its math (borders unchanged)."""
    import copy

    ref = copy.deepcopy(qmodel)
    for name, module in list(ref.named_modules()):
        if type(module).__module__.startswith("torch.ao.nn") and hasattr(module, "weight"):
            setattr(ref, name, _ConvMath(module))
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SaturationWarning)
        q = aq.quantize(model, {"Conv2d": aq.static_int8()}, calib)
    # The expand conv's output is quantized with ReLU6's [0, max] range: zero point 0,
    # not the pre-activation range's ~180, so the depthwise conv sees 0..127.
    assert q.expand.zero_point == 0
    stats = aq.calibrate(model, calib)
    hi = max(float(v.max) for k, v in stats.stats.items() if k.startswith("node:"))
    assert q.expand.scale < hi / 127  # far finer than the pre-activation range allows


def test_depthwise_convs_get_reduce_range_unless_the_user_asks_otherwise() -> None:
    model = mostly_negative(InvertedResidual())
    calib, _ = _data()
    with pytest.warns(SaturationWarning, match=r"\['dw'\]"):
        q = aq.quantize(model, {"Conv2d": aq.static_int8()}, calib)
    plan = aq.quant_info(q).plan
    assert plan["dw"].activation.reduce_range and not plan["expand"].activation.reduce_range
    # The depthwise conv's input (the expand conv's output, through ReLU6) uses 7 bits.
    seen = {}
    q.dw.register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        q(calib[0])
    assert int(seen["x"].int_repr().max()) <= 127
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaturationWarning)
        kept = aq.quantize(model, {"Conv2d": aq.static_int8()}, calib, allow_saturation=True)
    assert not aq.quant_info(kept).plan["dw"].activation.reduce_range


def _saturating() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(144, 144, 3, padding=1, groups=144)).eval()
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.0)
    return model, [torch.rand(4, 144, 8, 8) * 0.3 + 0.7 for _ in range(2)]


def test_self_check_refuses_a_saturating_build() -> None:
    model, calib = _saturating()
    with pytest.raises(aq.QuantizationError, match=r"op '0' \(kernel .*Conv2d.*quantization steps"):
        aq.quantize(model, {"Conv2d": aq.static_int8()}, calib, allow_saturation=True)
    # The same plan with reduce_range (the default for depthwise) builds and is exact.
    with pytest.warns(SaturationWarning):
        q = aq.quantize(model, {"Conv2d": aq.static_int8()}, calib)
    (d,) = kernel_departures(q, (calib[0],), {})
    assert d.max_steps <= 1
    # Opting out of the check returns the faulty model (for diagnosis).
    bad = aq.quantize(
        model, {"Conv2d": aq.static_int8()}, calib, allow_saturation=True, self_check=False
    )
    (d,) = kernel_departures(bad, (calib[0],), {})
    assert d.max_steps > 20 and d.rel_error > 10 * d.expected_rel_error


def test_self_check_reads_a_generator_once() -> None:
    model, calib = _saturating()
    with pytest.warns(SaturationWarning):
        q = aq.quantize(model, {"Conv2d": aq.static_int8()}, (b for b in calib))
    assert aq.quant_info(q).kernels


def test_capability_rows_agree_with_the_measured_kernels() -> None:
    backend = get_backend("x86")
    rows = probe_kernels()
    for row in rows:
        if row.activation.endswith("reduce_range"):
            assert not row.saturates, row  # 7-bit activations never overflow
    # Measured saturating kernels are exactly the depthwise convs the table names.
    sat = {r.shape for r in rows if r.saturates}
    assert sat and all("depthwise" in s for s in sat)
    (cap,) = [c for c in backend.capabilities() if c.saturates]
    assert cap.op_types == ("Conv2d",) and cap.saturates == ("depthwise",)
    assert module_kinds(nn.Conv2d(8, 8, 3, groups=8)) == {"depthwise"}
    assert module_kinds(nn.Conv2d(8, 8, 3, groups=2)) == {"grouped"}


def test_the_tuner_never_proposes_full_range_for_depthwise() -> None:
    from autoquant.discovery import discover
    from autoquant.tuning.config import TuningConfig
    from autoquant.tuning.space import SearchSpace

    model = mostly_negative(InvertedResidual())
    backend = get_backend("x86")
    for tie in ("op", "op_type"):
        cfg = TuningConfig(search=("approach", "observer", "reduce_range"), tie=tie)
        space = SearchSpace.build(model, discover(model), backend, cfg, calibrated=True)
        dw_units = [u for u in space.units.values() if "dw" in u.fqns]
        assert len(dw_units) == 1
        statics = [c for c in dw_units[0].configs if c is not None and c.approach == "static"]
        assert statics and all(c.activation.reduce_range for c in statics)
        others = [u for u in space.units.values() if "expand" in u.fqns][0]
        assert any(c is not None and not c.activation.reduce_range for c in others.configs)
