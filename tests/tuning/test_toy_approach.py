"""The extension contract, from a test file alone: register an approach and its kernel,
then tune over it.

The toy approach ``toy_w8`` stores a Linear's weight as int8 (symmetric, one scale per
output row) and dequantizes it on every call: a real, working build function defined
here. Nothing in ``autoquant/`` names it; the fixture registers it (approach name and
preset, torch-free; one capability row on the ``x86`` backend carrying its builder) and
removes both afterwards, so other tests see the built-in tables only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autoquant as aq
from autoquant.approaches import approach_names, register_approach, unregister_approach
from autoquant.backends import Capability, SpecSupport, get_backend, register_capabilities
from autoquant.backends.capability import unregister_capabilities
from autoquant.config import OpConfig, QuantSpec
from autoquant.errors import ConfigError
from autoquant.tuning import TuningConfig, tune

from ._helpers import HOSTILE_LAYER, fast_config

TOY = "toy_w8"
TOY_KERNEL = "toy: int8 weight rows dequantized per call (test)"


class ToyW8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.q.float() * self.scale[:, None], self.bias)


def build_toy(module, fqn, cfg, cap, stats):
    assert stats is None  # the approach does not read calibration statistics
    return ToyW8Linear(module)


def toy_preset() -> OpConfig:
    return OpConfig(approach=TOY, weight=QuantSpec(dtype="int8", granularity="per_channel"))


@pytest.fixture
def toy_approach():
    register_approach(TOY, activations=False, preset=toy_preset)
    row = Capability(
        op_types=("Linear",),
        approach=TOY,
        weight=SpecSupport(dtypes=("int8",), schemes=("sym",), granularities=("per_channel",)),
        activation=None,
        kernel=TOY_KERNEL,
        build=build_toy,
    )
    register_capabilities("x86", [row])
    try:
        yield row
    finally:
        unregister_capabilities("x86", [row])
        unregister_approach(TOY)


def test_an_unregistered_approach_is_refused_by_name():
    assert TOY not in approach_names()
    with pytest.raises(ConfigError, match=TOY):
        TuningConfig(approaches=(TOY,))
    with pytest.raises(ConfigError, match=TOY):
        toy_preset()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_the_registered_row_builds_what_torch_ao_would_quantize(toy_approach):
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    qmodel = aq.quantize(nn.Sequential(linear), {"0": toy_preset()})
    info = aq.quant_info(qmodel)
    assert info.kernels == {"0": TOY_KERNEL} and info.simulated == () and info.mode == "eager"
    built = qmodel[0]
    assert isinstance(built, ToyW8Linear)
    # oracle: torch's own per-channel symmetric int8 quantization with the same scales
    ref = torch.quantize_per_channel(
        linear.weight.detach(), built.scale, torch.zeros(8, dtype=torch.long), 0, torch.qint8
    )
    assert torch.equal(built.q, ref.int_repr())
    x = torch.randn(4, 16)
    assert torch.allclose(built(x), F.linear(x, ref.dequantize(), linear.bias), atol=1e-6)
    # the row is in the backend's table (real kernels before the simulated fallback)
    caps = get_backend("x86").capabilities()
    assert toy_approach in caps
    assert caps.index(toy_approach) < min(i for i, c in enumerate(caps) if c.simulated)
    assert TOY_KERNEL in aq.capability_table(["x86"])


def test_tune_chooses_among_the_toy_approach(toy_approach, cancer):
    # objective "size": the toy kernel saves memory, not time (it dequantizes per call)
    result = tune(
        cancer.model,
        cancer.accuracy,
        calib_data=cancer.calib,
        config=fast_config(approaches=(TOY,), objective="size", max_trials=8),
    )
    # every Linear could take the toy config or stay fp32
    for trial in result.study.trials:
        for dist in trial.distributions.values():
            assert [str(c).split(" ")[0] for c in dist.choices] == [TOY, "fp32"]
    assert result.met and result.size_reduction > 1
    # the hostile layer loses accuracy under any int8 weights, the toy's included
    assert result.best_plan[HOSTILE_LAYER] is None
    toy_ops = [f for f, c in result.best_plan.items() if c is not None]
    assert toy_ops and all(result.best_plan[f].approach == TOY for f in toy_ops)
    kernels = aq.quant_info(result.best_model).kernels
    assert kernels == dict.fromkeys(toy_ops, TOY_KERNEL)
    assert all(isinstance(result.best_model.get_submodule(f), ToyW8Linear) for f in toy_ops)
