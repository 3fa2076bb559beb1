"""prepare_qat -> train -> convert on the digits CNN, real x86 kernels, real data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import autoquant as aq
from autoquant.config import QuantSpec
from autoquant.qat import QATConfig, convert, float_model, prepare_qat, stats_for_qparams
from autoquant.qat._modules import QATOp
from autoquant.qat._ste import fake_quant_lsq, fake_quant_ste
from autoquant.qat.train import TrainBudget
from autoquant.qparams import QParams, qparams_from_range

PLAN = {"default": aq.static_int8()}


def _qp(scale: float, zp: int, qmin: int, qmax: int) -> QParams:
    return QParams(torch.tensor(scale), torch.tensor(zp), qmin, qmax, "uint8")


def test_ste_gradient_is_exact_on_a_hand_computed_case() -> None:
    # s = 0.5, z = 1, range [0, 4]: x / s = [-2, 0.52, 1.48, 6] -> round + z = [-1, 2, 2, 7];
    # the first and last are clamped (to 0 and 4), the middle two pass the gradient.
    x = torch.tensor([-1.0, 0.26, 0.74, 3.0], requires_grad=True)
    y = fake_quant_ste(x, _qp(0.5, 1, 0, 4))
    assert y.tolist() == [-0.5, 0.5, 0.5, 1.5]
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0]


def test_lsq_scale_gradient_is_exact_and_matches_torch() -> None:
    x = torch.tensor([-1.0, 0.26, 0.74, 3.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    y = fake_quant_lsq(x, s, 1, 0, 4, 0.25)
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # LSQ: d/ds = (qmin - z) below, round(v) - v inside, (qmax - z) above, times
    # g = 1 / sqrt(numel * qmax) = 1 / 4 (passed explicitly):  (-1*1 + 0.48*2 - 0.48*3 + 3*4) / 4 = 2.63
    assert s.grad.item() == pytest.approx(2.63, abs=1e-6)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0]
    # torch's learnable fake-quant (grad_factor = g) as an oracle
    x2 = x.detach().clone().requires_grad_(True)
    s2 = torch.tensor([0.5], requires_grad=True)
    z2 = torch.tensor([1.0], requires_grad=True)
    y2 = torch._fake_quantize_learnable_per_tensor_affine(x2, s2, z2, 0, 4, 0.25)
    y2.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(y.detach(), y2.detach())
    assert s2.grad.item() == pytest.approx(s.grad.item(), abs=1e-6)


def test_stats_for_qparams_give_back_the_qparams() -> None:
    from autoquant.observers import activation_qparams

    for scheme, lo, hi in [("asym", -0.37, 5.1), ("sym", -2.0, 0.7), ("asym", 0.0, 3.3)]:
        spec = QuantSpec(dtype="uint8", scheme=scheme)
        qp = qparams_from_range(lo, hi, spec)
        back = activation_qparams(stats_for_qparams(qp, spec), spec)
        assert int(back.zero_point) == int(qp.zero_point)
        assert float(back.scale) == pytest.approx(float(qp.scale), rel=1e-6)


def _int_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("observer", ["minmax", "percentile"])
def test_convert_without_training_reproduces_static_ptq(
    observer, digits_model, digits_calib, digits_data
):
    plan = {"default": aq.static_int8(observer=observer)}
    ptq = aq.quantize(digits_model, plan, digits_calib)
    qat = prepare_qat(digits_model, plan, digits_calib)
    converted = convert(qat)
    x = digits_data["x_test"][:200]
    a, b = _int_outputs(ptq, x), _int_outputs(converted, x)
    # the output layer's quantization step: any difference stays within one of them
    step = float(ptq.fc2.scale) if hasattr(ptq.fc2, "scale") else 1e-6
    assert (a - b).abs().max().item() <= step + 1e-6
    info = aq.quant_info(converted)
    assert info.kernels == aq.quant_info(ptq).kernels
    assert not info.simulated
    assert any("converted from QAT" in n for n in info.notes)


def test_prepare_leaves_the_model_untouched_and_trains(digits_model, digits_calib, digits_data):
    from autoquant.examples.digits import accuracy, train_batches
    from autoquant.qat.train import TrainLoop

    before = copy.deepcopy(digits_model.state_dict())
    qat = prepare_qat(
        digits_model,
        {"default": aq.static_int8()},
        digits_calib,
        config=QATConfig(learn_scales=("fc*",)),
    )
    assert qat.training and isinstance(qat.conv1, QATOp) and qat.conv1.bn_fqn == "bn1"
    scale0 = qat.fc1.act.scale.item()
    TrainLoop(data=train_batches, optimizer="adam", lr=1e-4)(qat, TrainBudget(steps=20))
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert qat.fc1.act.scale.item() != scale0  # LSQ learned it
    assert qat.conv1.act.scale.item() == float(
        prepare_qat(digits_model, PLAN, digits_calib).conv1.act.scale
    )
    converted = convert(qat)
    acc = accuracy(converted, digits_data["x_test"], digits_data["y_test"])
    assert acc > 0.9


def test_qat_model_runs_on_real_kernels_and_round_trips(
    tmp_path, digits_model, digits_calib, digits_data
):
    from autoquant.examples.digits import DigitsCNN, train_fn

    qat = prepare_qat(digits_model, PLAN, digits_calib, config=QATConfig(learn_scales=True))
    train_fn()(qat, TrainBudget(steps=10))
    converted = convert(qat)
    info = aq.quant_info(converted)
    assert set(info.kernels) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert all("onednn::q" in k for k in info.kernels.values()) and not info.simulated
    aq.save(converted, tmp_path / "m")
    loaded = aq.load(tmp_path / "m", model=DigitsCNN())
    x = digits_data["x_test"][:64]
    assert torch.equal(_int_outputs(converted, x), _int_outputs(loaded, x))


def test_learned_activation_qparams_reach_the_kernel(digits_model, digits_calib):
    from autoquant.examples.digits import train_batches
    from autoquant.qat.train import TrainLoop

    qat = prepare_qat(digits_model, PLAN, digits_calib, config=QATConfig(learn_scales=True))
    TrainLoop(data=train_batches, optimizer="adam", lr=1e-4)(qat, TrainBudget(steps=20))
    learned = qat.conv1.act.qparams()
    converted = convert(qat)
    # conv1's kernel quantizes its input with these qparams (the static module's buffer)
    scales = [float(b) for n, b in converted.named_buffers() if n.endswith("input_scale")]
    assert any(s == pytest.approx(float(learned.scale), rel=1e-6) for s in scales), (
        scales,
        learned,
    )


def test_bn_freezing_and_folding_against_a_float_reference() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    model.eval()
    with torch.no_grad():  # non-trivial BN statistics
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    calib = [torch.randn(4, 3, 10, 10) for _ in range(4)]
    qat = prepare_qat(model, {"0": aq.static_int8()}, calib, config=QATConfig(freeze_bn_at=2))
    op = qat[0]
    assert op.bn is not None and op.bn_fqn == "1"
    # float reference: conv with folded weights, fake-quantized the same way
    bn = model[1]
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = model[0].weight * factor.reshape(-1, 1, 1, 1)
    b = (model[0].bias - bn.running_mean) * factor + bn.bias
    x = torch.randn(2, 3, 10, 10)
    qat.eval()
    with torch.no_grad():
        x_fq = op.act(x)
        ref = torch.relu(nn.functional.conv2d(x_fq, op.weight_fake_quant(w), b))
        out = qat(x)
    assert torch.allclose(out, ref, atol=1e-5)
    # BN follows the batches for freeze_bn_at steps, then stops
    qat.train()
    means = []
    for _ in range(4):
        qat(torch.randn(8, 3, 10, 10) + 2)
        means.append(op.bn.running_mean.clone())
    assert not torch.equal(means[0], bn.running_mean)
    assert not torch.equal(means[1], means[0])
    assert torch.equal(means[2], means[1]) and torch.equal(means[3], means[2])
    # convert hands conv and BN back to the build, which folds them
    back = float_model(qat)
    assert isinstance(back[1], nn.BatchNorm2d) and torch.equal(back[1].running_mean, means[-1])
    converted = convert(qat)
    qat.eval()
    with torch.no_grad():
        diff = (converted(x) - qat(x)).abs().max().item()
    assert diff < 0.1, diff


def test_first_batches_initialise_without_calib_data(digits_model, digits_data):
    from autoquant.examples.digits import train_fn

    qat = prepare_qat(digits_model, PLAN)
    assert not bool(qat.conv1.act.initialized)
    train_fn()(qat, TrainBudget(steps=3))
    assert bool(qat.conv1.act.initialized)
    converted = convert(qat)
    assert not aq.quant_info(converted).simulated


def test_nan_after_training_is_refused(digits_model, digits_calib):
    qat = prepare_qat(digits_model, PLAN, digits_calib)
    with torch.no_grad():
        qat.fc1.op.weight[0, 0] = float("nan")
    with pytest.raises(aq.QuantizationError, match="NaN"):
        convert(qat)


def test_convert_refuses_a_float_model(digits_model):
    with pytest.raises(TypeError, match="prepare_qat"):
        convert(digits_model)


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it (module-mode build)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.sum() > -1e9:  # always true, but fx cannot know
            x = torch.relu(self.fc1(x))
        return self.fc2(x)


def test_untraceable_model_converts_module_by_module(digits_data) -> None:
    from autoquant.examples.digits import train_batches
    from autoquant.qat.train import TrainLoop

    torch.manual_seed(0)
    model = _Untraceable().eval()
    calib = list(digits_data["x_train"][:100].split(25))
    ptq = aq.quantize(model, PLAN, calib)
    qat = prepare_qat(model, PLAN, calib)
    assert aq.quant_info(ptq).mode == "module"
    x = digits_data["x_test"][:64]
    assert torch.equal(_int_outputs(ptq, x), _int_outputs(convert(qat), x))
    TrainLoop(data=train_batches, lr=1e-2)(qat, TrainBudget(steps=10))
    converted = convert(qat)
    assert aq.quant_info(converted).mode == "module" and not aq.quant_info(converted).simulated


def test_mixed_plan_keeps_each_approach(digits_model, digits_calib) -> None:
    plan = {"Conv2d": aq.static_int8(), "fc1": aq.dynamic_int8(), "fc2": None}
    qat = prepare_qat(digits_model, plan, digits_calib)
    assert qat.fc1.act is None and isinstance(qat.fc2, nn.Linear)
    info = aq.quant_info(convert(qat))
    ptq_info = aq.quant_info(aq.quantize(digits_model, plan, digits_calib))
    assert info.kernels == ptq_info.kernels and "fc2" not in info.kernels
    assert info.plan["fc1"].approach == "dynamic"
