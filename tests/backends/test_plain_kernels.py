"""Issue 10: the x86 kernels on plain tensors, bf16 per op, the deployed (compiled) form.

The new kernels are checked against the plan's math (hypothesis, torch.ao's quantize as
the oracle for the input rounding), saved models load with exactly equal outputs for
every kind of op, and the compiled model computes exactly what the eager one does.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _models import MLP, Conv1dNet, ResidualCNN, TinyTransformerBlock, settle_bn
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import autoquant as aq
from autoquant.backends._build import quantized_weight
from autoquant.backends._modules import DynamicLinear, StaticConv, StaticLinear
from autoquant.backends._selfcheck import kernel_departures
from autoquant.config import bf16
from autoquant.qparams import dequantize, qparams_from_range


def _step(y: torch.Tensor) -> float:
    """One quantization step of a 255-level grid over ``y``'s range."""
    return float(y.max() - y.min()) / 255 or 1.0


@settings(max_examples=25, deadline=None)
@given(
    k=st.sampled_from([8, 33, 64]),
    n=st.sampled_from([4, 17, 32]),
    rows=st.sampled_from([1, 5, 300]),
    seed=st.integers(0, 2**16),
    reduce_range=st.booleans(),
    per_channel=st.booleans(),
)
def test_dynamic_linear_is_within_one_step_of_the_simulated_math(
    k, n, rows, seed, reduce_range, per_channel
) -> None:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n).eval()
    x = torch.randn(rows, k) * 3 + 0.5
    cfg = aq.dynamic_int8(reduce_range=reduce_range, per_channel=per_channel)
    q, qp = quantized_weight(lin.weight, cfg)
    mod = DynamicLinear(lin, q, qp, reduce_range=reduce_range)
    # The plan's math: the input rounded with its own min/max qparams (torch's quantize
    # as the oracle of that rounding), times the dequantized weight.
    xqp = qparams_from_range(x.min(), x.max(), cfg.activation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xq = torch.quantize_per_tensor(
            x, float(xqp.scale), int(xqp.zero_point), torch.quint8
        ).dequantize()
    ref = F.linear(xq, dequantize(q, qp), lin.bias)
    with torch.no_grad():
        y = mod(x)
    assert float((y - ref).abs().max()) <= _step(ref), (rows, float((y - ref).abs().max()))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    op=st.sampled_from(["linear", "conv1d", "conv2d", "depthwise"]),
    post=st.sampled_from(["none", "relu", "hardtanh"]),
    int8_out=st.booleans(),
)
def test_static_kernels_are_within_one_step_of_the_plan_math(seed, op, post, int8_out) -> None:
    from autoquant.observers import activation_qparams
    from autoquant.stats import TensorStats

    assume(not (op == "conv1d" and post == "hardtanh"))  # the kernel fuses relu only
    torch.manual_seed(seed)
    if op == "linear":
        module, x = nn.Linear(24, 16), torch.randn(6, 24)
    elif op == "conv1d":
        module, x = nn.Conv1d(4, 8, 3, padding=1), torch.randn(2, 4, 12)
    elif op == "conv2d":
        module, x = nn.Conv2d(4, 8, 3, padding=1), torch.randn(2, 4, 7, 7)
    else:
        module, x = nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.randn(2, 16, 6, 6)
    module.eval()
    cfg = aq.static_int8()
    q, qp = quantized_weight(module.weight, cfg)
    in_qp = activation_qparams(TensorStats.from_tensor(x), cfg.activation)
    post_op = {"none": ("none", ()), "relu": ("relu", ()), "hardtanh": ("hardtanh", (0.0, 1.5))}
    with torch.no_grad():
        fx = module(x)
    out_qp = activation_qparams(TensorStats.from_tensor(fx), cfg.activation) if int8_out else None
    cls = StaticLinear if op == "linear" else StaticConv
    mod = cls(module, q, qp, in_qp, out_qp, post_op=post_op[post])
    # The plan's math, with torch.ao's quantize as the oracle of the input rounding.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xq = torch.quantize_per_tensor(
            x, float(in_qp.scale), int(in_qp.zero_point), torch.quint8
        ).dequantize()
    w = dequantize(q, qp).reshape(module.weight.shape)
    if op == "linear":
        ref = F.linear(xq, w, module.bias)
    else:
        conv = F.conv1d if op == "conv1d" else F.conv2d
        ref = conv(xq, w, module.bias, 1, 1, 1, module.groups)
    ref = F.relu(ref) if post == "relu" else ref.clamp(0, 1.5) if post == "hardtanh" else ref
    with torch.no_grad():
        y = mod(x)
    if int8_out:
        assert y.dtype == torch.uint8
        expect = torch.clamp(torch.round(ref / mod.y_scale) + mod.y_zp, 0, 255)
        assert float((y.float() - expect).abs().max()) <= 1
    else:
        assert float((y - ref).abs().max()) <= _step(ref)


def _all_kinds() -> tuple[nn.Module, dict, list[torch.Tensor]]:
    """A tiny model with one op of each real-kernel kind (static, dynamic, bf16, int4)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc1 = nn.Linear(8 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 64)
            self.fc3 = nn.Linear(64, 32)
            self.fc4 = nn.Linear(32, 32)
            self.fc5 = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu6(self.bn(self.conv(x)))
            x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = torch.relu(self.fc1(x.flatten(1)))
            return self.fc5(self.fc4(self.fc3(self.fc2(x))))

    x = torch.randn(4, 2, 8, 8)
    model = settle_bn(Net(), x)
    plan = {
        "conv": aq.static_int8(),
        "conv2": aq.static_int8(),
        "fc1": aq.static_int8(),  # reads conv2's uint8 through max-pool and flatten
        "fc2": aq.dynamic_int8(),
        "fc3": bf16(),
        "fc4": aq.weight_only("int4", group_size=32),
        "fc5": aq.weight_only("int8"),
    }
    return model, plan, [x, torch.randn(4, 2, 8, 8)]


def test_deployed_model_is_compiled_exact_and_round_trips(tmp_path) -> None:
    model, plan, calib = _all_kinds()
    eager = aq.quantize(model, plan, calib)
    info = aq.quant_info(eager)
    assert info.execution == "eager" and not info.simulated
    # uint8 from conv (fused ReLU6) to conv2, and from conv2 (fused ReLU) through the
    # max-pool and flatten to fc1: no float tensor between int8 ops.
    assert eager.conv.output_scale is not None and eager.conv2.output_scale is not None
    assert eager.conv2.int8_input and eager.fc1.int8_input and "max_pool_u8" in eager.code
    assert all(d.max_steps <= 1 for d in kernel_departures(eager, (calib[0],), {}))
    with torch.no_grad():
        ref = model(calib[1])
        assert (eager(calib[1]) - ref).norm() / ref.norm() < 0.1
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        want = eager(x)
    aq.deploy(eager)  # in place; compiles at the first call
    assert aq.quant_info(eager).execution.startswith("compiled")
    directory = aq.save(eager, tmp_path / "m")
    loaded = aq.load(directory, model=_all_kinds()[0])
    assert aq.quant_info(loaded).execution.startswith("compiled")
    assert loaded._compiled_call_impl is not None
    # The compiled model (Inductor, frozen weights) computes exactly what eager does.
    assert torch.equal(loaded(x), want)
    # And can be loaded eager on request.
    plain = aq.load(directory, model=_all_kinds()[0], compile=False)
    assert aq.quant_info(plain).execution == "eager" and torch.equal(plain(x), want)
    with pytest.raises(TypeError, match="no autoquant_info"):
        aq.deploy(model)


def _roundtrip(tmp_path, model: nn.Module, plan: dict, calib: list, x: torch.Tensor, name: str):
    q = aq.quantize(model, plan, calib)
    with torch.no_grad():
        want = q(x)
    loaded = aq.load(aq.save(q, tmp_path / name), model=model)
    with torch.no_grad():
        got = loaded(x)
    assert torch.equal(got, want), name
    assert aq.quant_info(loaded).kernels == aq.quant_info(q).kernels
    return loaded


def test_save_load_is_exact_for_every_plain_kernel_kind(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    cnn = settle_bn(ResidualCNN(), x)
    _roundtrip(tmp_path, cnn, {"default": aq.static_int8()}, [x], x, "static_graph")
    mlp, xm = MLP().eval(), torch.randn(8, 64)
    _roundtrip(tmp_path, mlp, {"Linear": aq.dynamic_int8()}, [xm], xm, "dynamic")
    _roundtrip(tmp_path, mlp, {"Linear": bf16()}, [xm], xm, "bf16")
    _roundtrip(tmp_path, mlp, {"fc1": aq.weight_only("int8"), "fc2": aq.weight_only("int4", group_size=32)}, [xm], xm, "weight_only")  # fmt: skip
    tiny, ids = TinyTransformerBlock().eval(), torch.randint(0, 100, (2, 6))
    _roundtrip(tmp_path, tiny, {"embed": aq.weight_only("int4")}, [ids], ids, "embedding")
    c1, x1 = Conv1dNet().eval(), torch.randn(4, 4, 16)
    _roundtrip(tmp_path, c1, {"Conv1d": aq.static_int8(), "Linear": bf16()}, [x1], x1, "conv1d")  # fmt: skip


def test_bf16_is_a_per_op_choice_next_to_int8_and_fp32() -> None:
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(8, 64)
    q = aq.quantize(model, {"fc1": bf16(), "fc2": aq.dynamic_int8()})
    info = aq.quant_info(q)
    assert "bfloat16" in info.kernels["fc1"] and q.fc1.op.weight.dtype == torch.bfloat16
    with torch.no_grad():
        ref = model(x)
        assert (q(x) - ref).norm() / ref.norm() < 0.02
    # Spelled in plans and YAML like any config.
    plan = info.plan
    assert aq.Plan.from_yaml(plan.to_yaml())["fc1"] == bf16()
    with pytest.raises(aq.ConfigError, match="approach='bf16' runs the op in bfloat16"):
        aq.OpConfig(approach="bf16", weight=aq.QuantSpec(dtype="int8"))
    with pytest.raises(aq.ConfigError, match="does not fit approach='static'"):
        aq.OpConfig(approach="static", weight=aq.QuantSpec(dtype="bf16"), activation=aq.QuantSpec(dtype="uint8"))  # fmt: skip


def test_the_search_space_offers_bf16_once_per_op() -> None:
    from autoquant.backends import get_backend
    from autoquant.discovery import discover
    from autoquant.tuning.config import TuningConfig
    from autoquant.tuning.space import SearchSpace

    model = MLP().eval()
    cfg = TuningConfig(approaches=("dynamic", "bf16"), search=("approach", "observer", "granularity"))  # fmt: skip
    space = SearchSpace.build(model, discover(model), get_backend("x86"), cfg, calibrated=False)
    for unit in space.units.values():
        assert [c for c in unit.configs if c is not None and c.approach == "bf16"] == [bf16()]


def test_bf16_on_a_cpu_without_it_is_refused_with_a_reason(monkeypatch) -> None:
    import autoquant.backends.x86 as x86

    # The CPU probe answers "no" (this CPU has AVX512-BF16; the error path is the subject).
    monkeypatch.setattr(x86, "cpu_has_bf16", lambda: False)
    with pytest.raises(
        aq.UnsupportedConfigError, match=r"runs \['fc1'\] in bf16.*Map these ops to None"
    ):
        aq.quantize(MLP().eval(), {"fc1": bf16()})


def test_asymmetric_int8_weights_fall_back_to_simulation_with_a_reason() -> None:
    """oneDNN takes no weight zero point: asym int8 weights have no real kernel."""
    cfg = aq.static_int8()
    cfg = cfg.replace(weight=cfg.weight.replace(scheme="asym"))
    from autoquant.backends import get_backend

    cap = get_backend("x86").find("Linear", cfg)
    assert cap is not None and cap.simulated
