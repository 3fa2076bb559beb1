"""The x86 backend: every capability builds and runs its kernel; static graphs are sane."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
from _models import (
    MLP,
    Conv1dNet,
    GRUClassifier,
    LSTMClassifier,
    ResidualCNN,
    TinyTransformerBlock,
    settle_bn,
)
from torch import nn

import autoquant as aq
from autoquant.backends import get_backend
from autoquant.backends.base import Capability
from autoquant.config import OpConfig, QuantSpec

BACKEND = get_backend("x86")


def _profiled_ops(model: nn.Module, *args: torch.Tensor) -> set[str]:
    """Names of the aten/quantized ops that really ran (the kernel evidence)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            model(*args)
    return {e.key for e in prof.key_averages()}


def _config_for(cap: Capability, op_type: str) -> OpConfig:
    """A representative config that this capability (and no earlier one) serves."""
    w, a = cap.weight, cap.activation
    act_choices: list[QuantSpec | None] = [None]
    if a is not None:
        act_choices = [
            QuantSpec(dtype=d, scheme=s, observer=a.observers[0], reduce_range=a.reduce_range[0])
            for d in a.dtypes
            for s in reversed(a.schemes)
        ]
    for dtype, scheme, gran in itertools.product(w.dtypes, w.schemes, w.granularities):
        weight = QuantSpec(
            dtype=dtype,
            scheme=scheme,
            granularity=gran,
            group_size=32 if gran == "per_group" else None,
            observer=w.observers[0],
            reduce_range=w.reduce_range[0],
        )
        for act in act_choices:
            try:
                cfg = OpConfig(approach=cap.approach, weight=weight, activation=act)
            except aq.ConfigError:
                continue
            if BACKEND.find(op_type, cfg) is cap:
                return cfg
    raise AssertionError(f"no config reaches {cap}")


def _model_for(op_type: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], str]:
    torch.manual_seed(0)
    if op_type == "Linear":
        return MLP(d_in=64, hidden=64, d_out=32).eval(), (torch.randn(8, 64),), "fc2"
    if op_type == "Conv2d":
        x = torch.randn(4, 1, 8, 8)
        return settle_bn(ResidualCNN(), x), (x,), "conv1"
    if op_type == "Conv1d":
        return Conv1dNet().eval(), (torch.randn(4, 4, 16),), "conv"
    if op_type == "Embedding":
        return TinyTransformerBlock().eval(), (torch.randint(0, 100, (4, 12)),), "embed"
    if op_type == "LSTM":
        return LSTMClassifier().eval(), (torch.randn(4, 6, 8),), "lstm"
    if op_type == "GRU":
        return GRUClassifier().eval(), (torch.randn(4, 6, 8),), "gru"
    raise AssertionError(op_type)


# Kernel evidence: an op name that must show up in the profile for each real kernel
# (the dynamic row runs _int_mm for the 8-row test input, oneDNN's qlinear above 256).
_EVIDENCE = {
    ("static", "Linear"): "onednn::qlinear_pointwise",
    ("static", "Conv1d"): "onednn::qconv",
    ("static", "Conv2d"): "onednn::qconv",
    ("dynamic", "Linear"): "aten::_int_mm",
    ("weight_only", "Linear"): "aten::_weight_int",
    ("weight_only", "Embedding"): "aten::embedding",
    ("dynamic", "LSTM"): "aten::quantized_",
    ("dynamic", "GRU"): "aten::quantized_",
    ("bf16", "Linear"): "aten::linear",
    ("bf16", "Conv1d"): "aten::conv1d",
    ("bf16", "Conv2d"): "aten::conv2d",
}
_CASES = [(cap, op_type) for cap in BACKEND.capabilities() for op_type in cap.op_types]
# The one row torch.ao still runs (its kernel label says so); every other real row must
# build and run without touching quantized tensors or torch.ao.
_ON_TORCH_AO = {"LSTM", "GRU"}
_DEPRECATIONS = (r".*(quantized tensor|quint8|qint8|qint32|torch\.ao|deprecated).*",)


@pytest.mark.parametrize(
    ("cap", "op_type"), _CASES, ids=[f"{c.approach}-{t}-{c.kernel[:24]}" for c, t in _CASES]
)
def test_every_capability_builds_and_runs(cap: Capability, op_type: str) -> None:
    model, args, fqn = _model_for(op_type)
    cfg = _config_for(cap, op_type)
    before = copy.deepcopy(model.state_dict())
    calib = [args[0]] * 2
    with warnings.catch_warnings():
        if not cap.simulated and op_type not in _ON_TORCH_AO:
            # torch 2.13 deprecates quantized tensors and torch.ao: none may be touched.
            for message in _DEPRECATIONS:
                warnings.filterwarnings("error", message=message)
            warnings.filterwarnings("error", category=DeprecationWarning)
        qmodel = aq.quantize(model, {fqn: cfg}, calib)
        info = aq.quant_info(qmodel)
        assert (fqn in info.simulated) == cap.simulated
        ran = _profiled_ops(qmodel, *args)
        with torch.no_grad():
            ref, out = model(*args), qmodel(*args)
    if cap.simulated:
        assert not any(name.startswith(("quantized::", "onednn::q")) for name in ran)
    else:
        evidence = _EVIDENCE[(cap.approach, op_type)]
        assert any(name.startswith(evidence) for name in ran), (evidence, sorted(ran))
        if op_type not in _ON_TORCH_AO:
            assert not any(name.startswith("quantized::") for name in ran), sorted(ran)
    # The quantized model still computes the same function, approximately.
    rel = (out - ref).norm() / ref.norm()
    bits = min(cfg.weight.bits, cfg.activation.bits if cfg.activation else 8)
    assert rel < (0.05 if bits >= 8 else 0.35), rel
    # The input model is untouched.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_static_graph_folds_bn_fuses_relu_and_hands_uint8_between_int8_ops(
    digits_model: nn.Module, digits_data: dict, digits_calib: list
) -> None:
    from autoquant.backends._modules import StaticConv, StaticLinear

    qmodel = aq.quantize(digits_model, {"default": aq.static_int8()}, digits_calib)
    info = aq.quant_info(qmodel)
    assert info.mode == "graph"
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in qmodel.modules())
    static = {n: m for n, m in qmodel.named_modules() if isinstance(m, (StaticConv, StaticLinear))}
    assert static and all(
        "relu" in info.kernels[n] for n, m in static.items() if m.post_op == "relu"
    )
    assert any(m.post_op == "relu" for m in static.values())
    # Nothing in the graph calls torch's quantized ops or quantized tensors.
    assert "quantize_per_tensor" not in qmodel.code and "dequantize" not in qmodel.code
    # Where an int8 op feeds another directly, the tensor between them is uint8.
    for name, m in static.items():
        if m.output_scale is not None:
            assert any(o.int8_input for o in static.values()), name
    # Keeping conv2 in float leaves it a float conv.
    partial = aq.quantize(digits_model, {"default": aq.static_int8(), "conv2": None}, digits_calib)
    assert isinstance(partial.get_submodule("conv2"), nn.Conv2d)
    acc_fp32 = aq_accuracy(digits_model, digits_data)
    acc_int8 = aq_accuracy(qmodel, digits_data)
    assert acc_int8 >= acc_fp32 - 0.01, (acc_fp32, acc_int8)
    assert aq.size_bytes(qmodel) < aq.size_bytes(digits_model) / 3


def aq_accuracy(model: nn.Module, data: dict) -> float:
    from autoquant.examples.digits import accuracy

    return accuracy(model, data["x_test"], data["y_test"])


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        if y.mean() > 0:  # data-dependent branch
            y = y * 1.0
        return self.fc(y.flatten(1))


def test_untraceable_model_falls_back_to_module_mode_and_says_so() -> None:
    torch.manual_seed(0)
    model = _Untraceable().eval()
    x = torch.randn(16, 1, 8, 8)
    qmodel = aq.quantize(model, {"default": aq.static_int8()}, [x])
    info = aq.quant_info(qmodel)
    assert info.mode == "module"
    assert any("cannot trace" in note for note in info.notes)
    ran = _profiled_ops(qmodel, x)
    assert any(r.startswith("onednn::qconv") for r in ran), ran
    assert "onednn::qlinear_pointwise" in ran, ran
    rel = (qmodel(x) - model(x)).norm() / model(x).norm()
    assert rel < 0.05


def test_unsupported_config_is_rejected_before_any_work() -> None:
    model = LSTMClassifier().eval()
    with pytest.raises(aq.UnsupportedConfigError) as exc:
        aq.quantize(model, {"lstm": aq.dynamic_int8(), "fc": aq.dynamic_int8()})
    msg = str(exc.value)
    assert "lstm (LSTM)" in msg and "weight.granularity='per_channel'" in msg
    assert "per_tensor" in msg and "fc" not in msg.split("\n")[1]
    emb = TinyTransformerBlock().eval()
    with pytest.raises(
        aq.UnsupportedConfigError, match="approach='static' is not available for Embedding"
    ):
        aq.quantize(emb, {"embed": aq.static_int8()}, [torch.randint(0, 100, (2, 4))])
    qat = OpConfig(approach="qat", weight=QuantSpec(), activation=QuantSpec(dtype="uint8"))
    with pytest.raises(aq.UnsupportedConfigError, match="approach='qat'"):
        aq.quantize(MLP().eval(), {"fc1": qat})


def test_group_size_must_divide_features_and_error_suggests_sizes() -> None:
    model = nn.Sequential(nn.Linear(96, 32)).eval()
    with pytest.raises(
        aq.UnsupportedConfigError,
        match=r"group_size=64 must divide the op's 96 input features; pick one of \[32\]",
    ):
        aq.quantize(model, {"0": aq.weight_only("int4", group_size=64)})


def test_int4_linear_with_odd_output_features_pads_for_the_kernel() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(64, 10)).eval()
    q = aq.quantize(lin, {"0": aq.weight_only("int4", group_size=32)})
    x = torch.randn(3, 64)
    assert q(x).shape == (3, 10)
    assert (q(x) - lin(x)).norm() / lin(x).norm() < 0.2


def test_static_requires_calibration_data() -> None:
    with pytest.raises(aq.CalibrationError, match="needs calibration data"):
        aq.quantize(MLP().eval(), {"Linear": aq.static_int8()})


def test_dynamic_reduce_range_is_honoured() -> None:
    """Full-range dynamic int8 is more accurate than torch.ao's forced reduce_range."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(256, 256)).eval()
    x = torch.randn(64, 256)
    ref = lin(x)
    errs = {}
    for rr in (False, True):
        q = aq.quantize(lin, {"0": aq.dynamic_int8(reduce_range=rr)})
        assert q[0].reduce_range is rr
        errs[rr] = float((q(x) - ref).norm() / ref.norm())
    assert errs[False] < errs[True]


def test_mixed_plan_static_dynamic_weight_only_and_float() -> None:
    torch.manual_seed(0)
    model = TinyTransformerBlock().eval()
    ids = torch.randint(0, 100, (8, 12))
    rules = {
        "embed": aq.weight_only("int8"),
        "[qkv]": aq.dynamic_int8(),
        "up": aq.weight_only("int4", group_size=32),
        "down": aq.static_int8(),
        "head": None,
    }
    qmodel = aq.quantize(model, rules, [ids])
    info = aq.quant_info(qmodel)
    assert set(info.kernels) == {"embed", "q", "k", "v", "up", "down"}
    assert not info.simulated
    assert isinstance(qmodel.get_submodule("head"), nn.Linear)
    rel = (qmodel(ids) - model(ids)).norm() / model(ids).norm()
    assert rel < 0.1
