"""quantize(): the public entry point, its inputs and its guarantees."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _models import MLP, ResidualCNN, TinyTransformerBlock, settle_bn
from torch import nn

import autoquant as aq


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_input_model_is_never_modified() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    model = settle_bn(ResidualCNN(), x)
    model.train()  # unusual mode on purpose: it must survive
    before = copy.deepcopy(model.state_dict())
    modules_before = [type(m) for m in model.modules()]
    q = aq.quantize(model, {"default": aq.static_int8()}, [x])
    assert model.training
    assert _state_equal(before, model.state_dict())
    assert [type(m) for m in model.modules()] == modules_before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert q is not model and not q.training


def test_failing_quantize_leaves_model_untouched() -> None:
    model = MLP().eval()
    before = copy.deepcopy(model.state_dict())
    bad = torch.full((4, 64), float("nan"))
    with pytest.raises(aq.CalibrationError, match="NaN"):
        aq.quantize(model, {"Linear": aq.static_int8()}, [bad])
    assert _state_equal(before, model.state_dict())
    assert all(not m._forward_hooks for m in model.modules())


def test_nan_produced_inside_the_model_names_the_op() -> None:
    class Blowup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 4)
            self.fc2 = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.log(self.fc1(x) - 1e9))

    with pytest.raises(aq.CalibrationError, match="log"):
        aq.quantize(Blowup().eval(), {"Linear": aq.static_int8()}, [torch.randn(3, 4)])


def test_non_module_is_rejected() -> None:
    with pytest.raises(TypeError, match="must be a torch.nn.Module, but got dict"):
        aq.quantize({"fc": 1}, {"default": aq.dynamic_int8()})  # type: ignore[arg-type]


def test_rule_matching_nothing_warns_with_nearest_names() -> None:
    with pytest.warns(aq.PlanWarning, match="fc1"):
        aq.quantize(MLP().eval(), {"fc_1": aq.dynamic_int8(), "fc2": aq.dynamic_int8()})


def test_all_float_plan_warns_and_returns_a_float_copy() -> None:
    model = MLP().eval()
    with pytest.warns(aq.PlanWarning, match="quantizes no op"):
        q = aq.quantize(model, {"default": None})
    x = torch.randn(2, 64)
    assert torch.equal(q(x), model(x)) and q is not model


def test_dict_rules_and_resolved_plan_give_the_same_model() -> None:
    torch.manual_seed(0)
    model = TinyTransformerBlock().eval()
    rules = {
        "Linear": {
            "approach": "dynamic",
            "weight": {"dtype": "int8", "granularity": "per_channel"},
            "activation": {"dtype": "uint8", "scheme": "asym"},
        },
        "head": None,
    }
    plan = aq.resolve_plan(rules, model)
    ids = torch.randint(0, 100, (2, 7))
    a, b = aq.quantize(model, rules), aq.quantize(model, plan)
    assert aq.quant_info(a).plan == plan
    assert torch.equal(a(ids), b(ids))


def test_plan_for_another_model_is_rejected() -> None:
    plan = aq.resolve_plan({"default": aq.dynamic_int8()}, MLP())
    with pytest.raises(aq.PlanError, match="cover exactly"):
        aq.quantize(TinyTransformerBlock().eval(), plan)


def test_calibrate_once_then_reuse_stats_without_running_the_model() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    model = settle_bn(ResidualCNN(), x)
    calls = {"n": 0}

    def count(*_: object) -> None:
        calls["n"] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        stats = aq.calibrate(model, [x[:8], x[8:]])
        after_calibration = calls["n"]
        plans = [
            {"default": aq.static_int8()},
            {"default": aq.static_int8(observer="kl"), "fc": None},
            {"default": aq.static_int8(observer="percentile"), "stem": None},
        ]
        outs = [aq.quantize(model, rules, stats=stats)(x) for rules in plans]
    finally:
        handle.remove()
    assert calls["n"] == after_calibration, "quantize ran the float model again"
    assert all(torch.isfinite(o).all() for o in outs)


def test_observers_change_activation_qparams() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    x[0, 0] = 40.0  # one outlier
    model = MLP().eval()
    stats = aq.calibrate(model, [x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_mm = aq.quantize(model, {"fc1": aq.static_int8()}, stats=stats)
        pct = aq.static_int8(observer="percentile")
        pct = pct.replace(activation=pct.activation.replace(percentile=99.9))
        q_pc = aq.quantize(model, {"fc1": pct}, stats=stats)
    scale_mm = float(q_mm.fc1.input_scale)
    scale_pc = float(q_pc.fc1.input_scale)
    assert scale_pc < scale_mm / 4  # the percentile observer clips the outlier
