"""The cuda backend on a real GPU: kernels, packing, device I/O, save/load, calibration
on the device, torch.compile, torchao agreement. Skipped (with the reason) without CUDA;
``scripts/gpu_check.sh`` runs them. The CPU-checkable parts are in test_cuda.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason=f"needs an NVIDIA GPU: torch.cuda.is_available() is False (torch {torch.__version__})",
    ),
]

from test_cuda import Stack, dyn_int8, fp8, static_int8  # noqa: E402

import autoquant as aq  # noqa: E402
from autoquant.backends._build import quantized_weight  # noqa: E402
from autoquant.backends._cuda_modules import (  # noqa: E402
    Fp8Linear,
    Int4WeightOnlyLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    cuda_latency,
)
from autoquant.backends.cuda import (  # noqa: E402
    CudaBackend,
    apply_torchao,
    calibrate_on_device,
    rows_for_compute_capability,
)
from autoquant.config import weight_only  # noqa: E402
from autoquant.plan import Plan  # noqa: E402
from autoquant.qparams import qparams_from_range  # noqa: E402


def _cc() -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]


def _has_fp8() -> bool:
    return _cc() >= (8, 9)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm())


def test_rows_are_those_of_this_gpu() -> None:
    listed = [c for c in CudaBackend().capabilities() if not c.simulated]
    assert listed == rows_for_compute_capability(*_cc())


def _modules(lin: nn.Linear, x: torch.Tensor) -> dict[str, nn.Module]:
    q, qp = quantized_weight(lin.weight, dyn_int8())
    q4, qp4 = quantized_weight(lin.weight, weight_only("int4", group_size=128))
    in_qp = qparams_from_range(x.min(), x.max(), static_int8().activation)
    mods = {
        "int8 dynamic": Int8DynamicLinear(lin, q, qp, per_token=True),
        "int8 static": Int8StaticLinear(lin, q, qp, in_qp),
        "int4 weight-only": Int4WeightOnlyLinear(lin, q4, qp4),
    }
    if _has_fp8():
        mods["fp8 row-wise"] = Fp8Linear(lin, rowwise=True)
        mods["fp8 per-tensor"] = Fp8Linear(lin, rowwise=False)
    return mods


@pytest.mark.parametrize("batch", [1, 16, 33])
def test_gpu_kernels_compute_what_the_cpu_modules_compute(batch: int) -> None:
    """Same buffers, same input: the GPU kernels (cuBLASLt int8, _scaled_mm, tinygemm with
    its CUDA packing) agree with the CPU modules whose math test_cuda.py checks."""
    torch.manual_seed(0)
    lin = nn.Linear(512, 256)
    x = torch.randn(batch, 512).bfloat16().float()  # representable in bf16 exactly
    for name, mod in _modules(lin, x).items():
        cpu_out = mod(x)
        gpu_out = copy.deepcopy(mod).cuda()(x.cuda().bfloat16())
        assert gpu_out.dtype == torch.bfloat16 and gpu_out.is_cuda, name
        assert _rel(gpu_out, cpu_out) < 1e-2, name


def _mixed_plan(model: nn.Module) -> Plan:
    configs = {"a": static_int8(), "b": dyn_int8(), "d": weight_only("int4", group_size=32)}
    if _has_fp8():
        configs["c"] = fp8("per_channel")
    return Plan.float(model).with_configs(configs)


def _stack_and_data() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    return Stack().eval(), [torch.randn(8, 64) for _ in range(4)]


def test_built_model_runs_real_kernels_and_keeps_io_on_the_callers_side() -> None:
    model, data = _stack_and_data()
    stats = aq.calibrate(model, data, backend="cuda")
    qmodel = CudaBackend().build(model, _mixed_plan(model), stats)
    x = torch.randn(8, 64)
    host = qmodel(x)
    assert host.device.type == "cpu" and host.dtype == torch.float32
    dev = qmodel(x.cuda().bfloat16())
    assert dev.is_cuda and dev.dtype == torch.bfloat16
    assert _rel(host, model(x)) < 0.1
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        qmodel(x.cuda().bfloat16())
        torch.cuda.synchronize()
    ran = {e.key for e in prof.key_averages()}
    expected = {"aten::_int_mm", "aten::_weight_int4pack_mm"}
    if _has_fp8():
        expected.add("aten::_scaled_mm")
    assert expected <= ran, sorted(ran)
    assert all(p.is_cuda for p in qmodel.parameters())


def test_save_load_round_trip_on_gpu(tmp_path) -> None:
    model, data = _stack_and_data()
    qmodel = CudaBackend().build(model, _mixed_plan(model), aq.calibrate(model, data))
    aq.save(qmodel, tmp_path / "q")
    loaded = aq.load(tmp_path / "q", Stack)
    x = torch.randn(8, 64)
    assert torch.equal(loaded(x), qmodel(x))


def test_calibration_on_the_device_feeds_the_static_row() -> None:
    model, data = _stack_and_data()
    stats = calibrate_on_device(model, data)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put
    plan = Plan.float(model).with_configs({"a": static_int8(), "b": static_int8("int8", "sym")})
    qmodel = CudaBackend().build(model, plan, stats)
    x = torch.randn(8, 64)
    assert _rel(qmodel(x), model(x)) < 0.05


def test_compiled_model_matches_eager_and_is_timed_with_events() -> None:
    model, data = _stack_and_data()
    qmodel = CudaBackend().build(model, _mixed_plan(model), aq.calibrate(model, data))
    x = torch.randn(32, 64, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(qmodel)
    with torch.no_grad():
        assert _rel(compiled(x), qmodel(x)) < 1e-2
    timing = cuda_latency(lambda: compiled(x), warmup=5, repeats=20)
    assert timing["median_ms"] > 0


def test_device_latency_of_baseline_and_quantized_model() -> None:
    from autoquant.backends.cuda import device_latency

    model, data = _stack_and_data()
    backend = CudaBackend()
    base = backend.float_baseline(model)
    qmodel = backend.build(model, _mixed_plan(model), aq.calibrate(model, data))
    x = torch.randn(64, 64)  # host inputs: device_latency moves them first
    for built in (base, qmodel):
        assert device_latency(built, x, warmup=3, repeats=10)["median_ms"] > 0
    assert device_latency(qmodel, x, warmup=3, repeats=10, compiled=True)["median_ms"] > 0


def test_torchao_agrees_with_our_rows_where_it_fits() -> None:
    model, _ = _stack_and_data()
    configs = {"b": dyn_int8(), "d": weight_only("int4", group_size=32)}
    if _has_fp8():
        configs["c"] = fp8("per_channel")
    plan = Plan.float(model).with_configs(configs)
    ours = CudaBackend().build(model, plan, None)
    theirs = copy.deepcopy(model).cuda().bfloat16()
    applied = apply_torchao(theirs, plan)
    assert applied == sorted(configs)
    x = torch.randn(16, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        assert _rel(theirs(x), ours(x)) < 0.05
