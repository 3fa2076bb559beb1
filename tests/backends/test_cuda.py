"""The cuda backend, everything a CPU can check: the compute-capability filter, the
quantization/packing math of its modules against autoquant's own (and torchao's fp8
primitives as an oracle), whole-model builds with the same modules on the CPU, the plan
round trip, the plan -> torchao mapping and the errors without a GPU.

The modules call the real ops (``torch._int_mm``, ``torch._scaled_mm`` and the int4
``_for_cpu`` op have CPU kernels); the GPU itself is checked in test_cuda_gpu.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from autoquant.backends import get_backend
from autoquant.backends._build import quantized_weight
from autoquant.backends._cuda_modules import (
    FP8_MAX,
    Fp8Linear,
    Int4WeightOnlyLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    fp8_quantize,
    int8_sym_quantize,
    pack_int4_for_cuda,
    tinygemm_scales_and_zeros,
)
from autoquant.backends.cuda import (
    CudaBackend,
    min_compute_capability,
    rows_for_compute_capability,
    torchao_config,
    torchao_plan,
)
from autoquant.calibration import calibrate
from autoquant.config import OpConfig, QuantSpec, weight_only
from autoquant.errors import ConfigError, UnsupportedConfigError
from autoquant.plan import Plan
from autoquant.qparams import dequantize, qparams_from_range, quantize

INT8_CH = QuantSpec(dtype="int8", granularity="per_channel")


def dyn_int8(per_token: bool = True) -> OpConfig:
    gran = "per_channel" if per_token else "per_tensor"
    return OpConfig(
        approach="dynamic", weight=INT8_CH, activation=QuantSpec(dtype="int8", granularity=gran)
    )


def fp8(gran: str) -> OpConfig:
    spec = QuantSpec(dtype="fp8_e4m3", granularity=gran)
    return OpConfig(approach="dynamic", weight=spec, activation=spec)


def static_int8(dtype: str = "uint8", scheme: str = "asym") -> OpConfig:
    return OpConfig(
        approach="static", weight=INT8_CH, activation=QuantSpec(dtype=dtype, scheme=scheme)
    )


def _kind(cfg: OpConfig) -> str:
    return f"{cfg.approach}:{cfg.weight.dtype}"


def _row_kinds(rows: list) -> set[str]:
    return {f"{r.approach}:{d}" for r in rows for d in r.weight.dtypes}


# -- compute capability filter ----------------------------------------------------------
@pytest.mark.parametrize(
    ("cc", "fp8_expected"), [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True)]
)
def test_rows_follow_compute_capability(cc: tuple[int, int], fp8_expected: bool) -> None:
    rows = rows_for_compute_capability(*cc)
    kinds = _row_kinds(rows)
    assert {"static:int8", "dynamic:int8", "weight_only:int4"} <= kinds
    assert ("dynamic:fp8_e4m3" in kinds) is fp8_expected
    assert all(min_compute_capability(r) <= cc for r in rows)
    # the backend for that GPU lists exactly these real rows, then the simulated ones
    listed = CudaBackend(compute_capability=cc).capabilities()
    assert [c for c in listed if not c.simulated] == rows
    assert all(c.simulated for c in listed[len(rows) :])


def test_nothing_below_ampere_and_bad_input_refused() -> None:
    assert rows_for_compute_capability(7, 5) == []
    with pytest.raises(ValueError, match="major"):
        rows_for_compute_capability("9", 0)  # type: ignore[arg-type]


def test_sm80_refuses_fp8_plan_with_reason() -> None:
    model = nn.Sequential(nn.Linear(32, 32))
    plan = Plan.float(model).with_configs({"0": fp8("per_channel")})
    with pytest.raises(UnsupportedConfigError, match="fp8_e4m3"):
        CudaBackend(compute_capability=(8, 0)).check(plan, model)
    CudaBackend(compute_capability=(9, 0)).check(plan, model)  # runs on Hopper


def test_search_space_proposes_fp8_only_where_the_gpu_has_it() -> None:
    from autoquant.discovery import discover
    from autoquant.tuning.config import TuningConfig
    from autoquant.tuning.space import SearchSpace

    model = nn.Sequential(nn.Linear(32, 32))
    config = TuningConfig(
        backend="cuda", approaches=("dynamic",), search=("approach", "dtype", "granularity")
    )
    seen = {}
    for cc in ((8, 0), (9, 0)):
        space = SearchSpace.build(
            model, discover(model), CudaBackend(compute_capability=cc), config, calibrated=False
        )
        seen[cc] = {
            c.weight.dtype for u in space.units.values() for c in u.configs if c is not None
        }
    assert "fp8_e4m3" not in seen[(8, 0)] and "fp8_e4m3" in seen[(9, 0)]
    assert "int8" in seen[(8, 0)]


def test_module_limits_named() -> None:
    backend = CudaBackend(compute_capability=(9, 0))
    odd = nn.Linear(20, 24)
    cap = backend.find("Linear", fp8("per_tensor"))
    assert "divisible by 16" in backend.module_problem(odd, fp8("per_tensor"), cap)
    cap4 = backend.find("Linear", weight_only("int4", group_size=64))
    msg = backend.module_problem(nn.Linear(96, 16), weight_only("int4", group_size=64), cap4)
    assert "group_size=64" in msg and "[32]" in msg


# -- int8 math ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 40),
    st.floats(1e-3, 1e3),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_int8_activation_quantization_is_qparams_math(
    rows: int, cols: int, spread: float, per_row: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * spread + torch.randn(rows, 1, generator=g)
    q, scale = int8_sym_quantize(x, per_row=per_row)
    spec = QuantSpec(dtype="int8", scheme="sym")
    if per_row:
        qp = qparams_from_range(x.amin(1), x.amax(1), spec, axis=0)
    else:
        qp = qparams_from_range(x.min(), x.max(), spec)
    assert torch.equal(q.to(torch.int32), quantize(x, qp))
    assert torch.equal(scale.reshape(-1), qp.scale.reshape(-1).expand(scale.numel()))


def _lin(k: int, n: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n)


@pytest.mark.parametrize(
    ("per_token", "w_gran"), [(True, "per_channel"), (False, "per_channel"), (True, "per_tensor")]
)
def test_int8_dynamic_linear_is_dequantized_math(per_token: bool, w_gran: str) -> None:
    lin = _lin(64, 48)
    x = torch.randn(3, 5, 64)
    cfg = dyn_int8(per_token)
    cfg = cfg.replace(weight=cfg.weight.replace(granularity=w_gran))
    q, qp = quantized_weight(lin.weight, cfg)
    out = Int8DynamicLinear(lin, q, qp, per_token=per_token)(x)
    xq, xs = int8_sym_quantize(x.reshape(-1, 64), per_row=per_token)
    expect = F.linear(xq.float() * xs, dequantize(q, qp), lin.bias).reshape(3, 5, 48)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    assert (out - lin(x)).abs().max() < 0.05  # and it is a quantized Linear, not noise


@pytest.mark.parametrize(
    ("dtype", "scheme"), [("uint8", "asym"), ("int8", "sym"), ("int8", "asym")]
)
def test_int8_static_linear_zero_point_correction_is_exact(dtype: str, scheme: str) -> None:
    lin = _lin(64, 32, seed=1)
    x = torch.randn(17, 64) + 0.7  # off-centre: a non-trivial zero point
    cfg = static_int8(dtype, scheme)
    q, qp = quantized_weight(lin.weight, cfg)
    in_qp = qparams_from_range(x.min(), x.max(), cfg.activation)
    out = Int8StaticLinear(lin, q, qp, in_qp)(x)
    expect = F.linear(dequantize(quantize(x, in_qp), in_qp), dequantize(q, qp), lin.bias)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


# -- fp8 math ---------------------------------------------------------------------------
@pytest.mark.parametrize("per_row", [True, False])
def test_fp8_quantization_matches_torchao_primitives(per_row: bool) -> None:
    pytest.importorskip("torchao", reason="torchao (dev extra) is the fp8 oracle")
    from torchao.quantization.quant_primitives import (
        _choose_scale_float8,
        _quantize_affine_float8,
    )

    x = torch.randn(24, 64) * torch.logspace(-2, 2, 24).unsqueeze(1)
    q, scale = fp8_quantize(x, per_row=per_row)
    block = [1, 64] if per_row else [24, 64]
    ao_scale = _choose_scale_float8(x, block_size=block, float8_dtype=torch.float8_e4m3fn)
    ao_q = _quantize_affine_float8(x, ao_scale, torch.float8_e4m3fn)
    torch.testing.assert_close(scale.reshape(ao_scale.shape), ao_scale, rtol=0, atol=0)
    assert torch.equal(q.view(torch.uint8), ao_q.view(torch.uint8))
    assert q.float().abs().max() <= FP8_MAX


@pytest.mark.parametrize("rowwise", [True, False])
def test_fp8_linear_is_scaled_mm_of_its_fp8_values(rowwise: bool) -> None:
    lin = _lin(64, 32, seed=2)
    x = torch.randn(5, 64)
    mod = Fp8Linear(lin, rowwise=rowwise)
    xq, xs = fp8_quantize(x, per_row=rowwise)
    w = mod.weight_fp8.view(torch.float8_e4m3fn).float()
    ws = mod.weight_scale.reshape(-1, 1) if rowwise else mod.weight_scale
    expect = F.linear(xq.float() * xs, w * ws, lin.bias)
    # _scaled_mm writes bf16: within bf16 rounding of the fp8 math
    torch.testing.assert_close(mod(x), expect, rtol=1e-2, atol=1e-2)
    assert (mod(x) - lin(x)).abs().max() < 0.15


# -- int4 math --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "scheme", "gs"), [("int4", "asym", 32), ("uint4", "asym", 64), ("int4", "sym", 32)]
)
def test_tinygemm_scales_and_zeros_reproduce_our_dequantize(
    dtype: str, scheme: str, gs: int
) -> None:
    lin = _lin(128, 24, seed=3)
    cfg = weight_only(dtype, group_size=gs, scheme=scheme)
    q, qp = quantized_weight(lin.weight, cfg)
    offset, sz = tinygemm_scales_and_zeros(qp)
    unsigned = q + offset
    assert unsigned.min() >= 0 and unsigned.max() <= 15
    # tinygemm's dequantization, (q - 8) * scale + zero, group by group
    scale = sz[..., 0].t().repeat_interleave(gs, dim=1)
    zero = sz[..., 1].t().repeat_interleave(gs, dim=1)
    torch.testing.assert_close((unsigned - 8).float() * scale + zero, dequantize(q, qp))
    x = torch.randn(4, 128)
    out = Int4WeightOnlyLinear(lin, q, qp)(x)
    torch.testing.assert_close(out, F.linear(x, dequantize(q, qp), lin.bias), rtol=1e-4, atol=1e-4)


def test_cuda_int4_packing_puts_even_columns_in_the_high_nibble() -> None:
    q = torch.randint(0, 16, (16, 64), dtype=torch.int32)
    packed = pack_int4_for_cuda(q)
    assert packed.shape == (16, 32) and packed.dtype == torch.uint8
    assert torch.equal((packed >> 4).int(), q[:, ::2]) and torch.equal(
        (packed & 15).int(), q[:, 1::2]
    )


# -- modules save and reload as plain tensors ---------------------------------------------
def _modules_for(lin: nn.Linear, x: torch.Tensor) -> list[nn.Module]:
    q, qp = quantized_weight(lin.weight, dyn_int8())
    q4, qp4 = quantized_weight(lin.weight, weight_only("int4", group_size=32))
    in_qp = qparams_from_range(x.min(), x.max(), static_int8().activation)
    return [
        Int8DynamicLinear(lin, q, qp, per_token=True),
        Int8StaticLinear(lin, q, qp, in_qp),
        Fp8Linear(lin, rowwise=True),
        Int4WeightOnlyLinear(lin, q4, qp4),
    ]


def test_state_dict_round_trip_rebuilds_packed_forms() -> None:
    x = torch.randn(6, 64)
    saved = _modules_for(_lin(64, 32, seed=4), x)
    fresh = _modules_for(_lin(64, 32, seed=5), x)
    plain = {torch.int8, torch.uint8, torch.float32, torch.int64}
    for a, b in zip(saved, fresh, strict=True):
        state = a.state_dict()
        assert {t.dtype for t in state.values()} <= plain, type(a).__name__
        assert not torch.equal(a(x), b(x))
        b.load_state_dict(state)
        assert torch.equal(a(x), b(x)), type(a).__name__


# -- whole models with the same modules on the CPU -----------------------------------------
class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        self.d, self.head = nn.Linear(64, 64), nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        x = torch.relu(self.c(x))
        return self.head(torch.relu(self.d(x)))


def test_cpu_build_of_a_mixed_plan_runs_every_row() -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    data = [torch.randn(8, 64) for _ in range(4)]
    backend = CudaBackend(device="cpu", compute_capability=(9, 0), float_dtype="bfloat16")
    stats = calibrate(model, data, backend=backend)
    plan = Plan.float(model).with_configs(
        {
            "a": static_int8(),
            "b": dyn_int8(),
            "c": fp8("per_channel"),
            "d": weight_only("int4", group_size=32),
        }
    )
    qmodel = backend.build(model, plan, stats)
    info = qmodel.autoquant_info
    assert info.backend == "cuda" and info.simulated == ()
    assert set(info.kernels) == {"a", "b", "c", "d"}
    assert qmodel.head.weight.dtype == torch.bfloat16  # float ops in the float dtype
    assert model.head.weight.dtype == torch.float32  # the float model is untouched
    x = torch.randn(8, 64)
    out = qmodel(x)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    ref = model(x)
    assert (out - ref).norm() / ref.norm() < 0.1


def test_simulated_fallback_keeps_float32_qparams_and_casts_its_op() -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    backend = CudaBackend(device="cpu", compute_capability=(8, 0))
    stats = calibrate(model, [torch.randn(8, 64) for _ in range(2)], backend=backend)
    four_bit = OpConfig(
        approach="static",
        weight=QuantSpec(dtype="int4", granularity="per_channel"),
        activation=QuantSpec(dtype="uint4", scheme="asym"),
    )
    qmodel = backend.build(model, Plan.float(model).with_configs({"a": four_bit}), stats)
    assert qmodel.autoquant_info.simulated == ("a",)
    assert qmodel.a.input_scale.dtype == torch.float32
    assert qmodel.a.op.weight.dtype == torch.bfloat16
    x = torch.randn(4, 64)
    assert (qmodel(x) - model(x)).norm() / model(x).norm() < 0.3


def test_float_baseline_is_the_float_plan_in_bf16() -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    base = CudaBackend(device="cpu").float_baseline(model)
    assert base.autoquant_info.kernels == {}
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}
    x = torch.randn(4, 64)
    assert (base(x) - model(x)).norm() / model(x).norm() < 0.02


def test_device_latency_without_cuda_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from autoquant.backends.cuda import device_latency

    with pytest.raises(UnsupportedConfigError, match="needs an NVIDIA GPU"):
        device_latency(Stack(), torch.randn(2, 64))


def test_build_without_cuda_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the GPU tests cover the build")
    model = nn.Sequential(nn.Linear(32, 32))
    plan = Plan.float(model).with_configs({"0": dyn_int8()})
    with pytest.raises(UnsupportedConfigError, match=r"torch.cuda.is_available\(\) is False"):
        get_backend("cuda").build(model, plan, None)


def test_cli_backend_cuda_fails_before_loading_without_cuda(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [sys.executable, "-m", "autoquant.cli", "backend=cuda", "tracking=off",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "backend 'cuda' needs an NVIDIA GPU" in proc.stdout + proc.stderr
    assert "loading model" not in proc.stdout + proc.stderr


# -- configs and plans -----------------------------------------------------------------------
def test_fp8_spec_validation_and_plan_round_trip() -> None:
    with pytest.raises(ConfigError, match="scheme='sym'"):
        QuantSpec(dtype="fp8_e4m3", scheme="asym")
    model = Stack()
    plan = Plan.float(model).with_configs(
        {"a": fp8("per_channel"), "b": fp8("per_tensor"), "c": dyn_int8(True), "d": static_int8()}
    )
    back = Plan.from_yaml(plan.to_yaml())
    assert back == plan and back.hash == plan.hash
    assert (
        back["a"].weight.dtype == "fp8_e4m3" and back["c"].activation.granularity == "per_channel"
    )


# -- torchao mapping --------------------------------------------------------------------------
def test_plan_to_torchao_configs() -> None:
    pytest.importorskip("torchao", reason="the mapping targets torchao's configs (dev extra)")
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        PerTensor,
    )

    row = torchao_config(fp8("per_channel"))
    assert isinstance(row, Float8DynamicActivationFloat8WeightConfig)
    assert all(isinstance(g, PerRow) for g in row.granularity)
    tensor = torchao_config(fp8("per_tensor"))
    assert all(isinstance(g, PerTensor) for g in tensor.granularity)
    assert isinstance(torchao_config(dyn_int8(True)), Int8DynamicActivationInt8WeightConfig)
    int4 = torchao_config(weight_only("int4", group_size=64))
    assert isinstance(int4, Int4WeightOnlyConfig) and int4.group_size == 64
    # no torchao equivalent: per-tensor dynamic int8, static int8, mse ranges, float ops
    mse = weight_only("int4", group_size=64)
    mse = mse.replace(weight=mse.weight.replace(observer="mse"))
    for cfg in (dyn_int8(False), static_int8(), mse, None):
        assert torchao_config(cfg) is None
    model = Stack()
    plan = Plan.float(model).with_configs(
        {"a": static_int8(), "b": dyn_int8(), "c": fp8("per_tensor")}
    )
    mapped, left = torchao_plan(plan)
    assert set(mapped) == {"b", "c"} and left == ["a"]


def test_calibration_runs_a_float32_copy_on_the_backend_device() -> None:
    # backend="cuda" gathers statistics on its device through Backend.calibration_model
    # (here device="cpu", the path a GPU takes with device="cuda"): a float32 copy, so
    # the statistics equal the float32 model's and the caller's model is not touched.
    torch.manual_seed(0)
    model = Stack().eval()
    data = [torch.randn(8, 64) for _ in range(4)]
    backend = CudaBackend(device="cpu", compute_capability=(9, 0))
    want = calibrate(model, data, backend="simulated")
    got = calibrate(model, data, backend=backend)
    assert got.keys() == want.keys()
    for key in want.keys():
        assert (got[key].min, got[key].max) == (want[key].min, want[key].max)
        assert torch.equal(got[key].hist, want[key].hist)
    bf16_model = Stack().eval().to(torch.bfloat16)
    calibrate(bf16_model, data, backend=backend)
    assert bf16_model.head.weight.dtype == torch.bfloat16  # the caller's model is untouched
