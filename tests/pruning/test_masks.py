"""Exact counts per pattern, N:M masks exactly the pattern, specs refused clearly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import autoquant as aq
from autoquant.config import OpConfig, prune_only, static_int8
from autoquant.errors import ConfigError
from autoquant.pruning import PruneSpec, prune, sparsity
from tests._models import MLP


@settings(max_examples=30, deadline=None)
@given(
    ratio=st.floats(0.0, 0.99),
    shape=st.tuples(st.integers(1, 24), st.integers(1, 40)),
    seed=st.integers(0, 2**16),
)
def test_unstructured_zeroes_exactly_floor_ratio_times_size(ratio, shape, seed) -> None:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(shape[1], shape[0]))
    # Distinct magnitudes: no weight starts at zero, so the count is the mask's alone.
    model[0].weight.data = torch.randn(shape).abs().add_(0.01) * torch.sign(torch.randn(shape))
    pruned, report = prune(model, {"0": PruneSpec(pattern="unstructured", ratio=ratio)})
    w = pruned[0].weight
    assert int((w == 0).sum()) == math.floor(ratio * w.numel())
    kept = w[w != 0].abs()
    gone = model[0].weight[w == 0].abs()
    if kept.numel() and gone.numel():
        assert gone.max() <= kept.min()  # the smallest magnitudes went
    assert report.ops["0"]["sparsity"] == pytest.approx(math.floor(ratio * w.numel()) / w.numel())


@pytest.mark.parametrize("pattern,kept", [("2:4", 2), ("1:4", 1), ("3:8", 3)])
def test_nm_keeps_exactly_n_of_every_m(pattern: str, kept: int) -> None:
    torch.manual_seed(0)
    m = int(pattern.split(":")[1])
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 6, 3))  # reduction 72 = 9 groups of 8
    pruned, report = prune(model, {"0": PruneSpec(pattern=pattern)})
    groups = pruned[0].weight.reshape(6, -1).reshape(6, -1, m)
    assert ((groups != 0).sum(-1) == kept).all()
    # Within each group the largest magnitudes stay.
    orig = model[0].weight.reshape(6, -1).reshape(6, -1, m).abs()
    kept_min = torch.where(groups != 0, orig, torch.inf).amin(-1)
    gone_max = torch.where(groups == 0, orig, -torch.inf).amax(-1)
    assert (gone_max <= kept_min).all()
    assert report.ops["0"]["sparsity"] == pytest.approx(1 - kept / m)


def test_nm_on_a_misfit_weight_is_left_whole_and_reported() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    pruned, report = prune(model, {"0": PruneSpec(pattern="2:4")})
    assert "0" in report.left_whole and "divisible by 4" in report.left_whole["0"]
    torch.testing.assert_close(pruned[0].weight, model[0].weight)


def test_global_scope_ranks_all_ops_together() -> None:
    torch.manual_seed(0)
    model = MLP()
    model.fc1.weight.data *= 10  # fc1's weights are larger: fc2 loses more
    spec = PruneSpec(pattern="unstructured", ratio=0.5, scope="global")
    pruned, _ = prune(model, {"fc1": spec, "fc2": spec})
    zeros = {n: int((getattr(pruned, n).weight == 0).sum()) for n in ("fc1", "fc2")}
    total = model.fc1.weight.numel() + model.fc2.weight.numel()
    assert sum(zeros.values()) == total // 2
    assert zeros["fc2"] > zeros["fc1"]


def test_gradient_criterion_uses_loss_fn_and_refuses_without() -> None:
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(16, 64)
    spec = {"fc1": PruneSpec(pattern="unstructured", ratio=0.5, criterion="gradient")}
    with pytest.raises(ConfigError, match="criterion='gradient' needs gradients.*loss_fn"):
        prune(model, spec)
    pruned, _ = prune(model, spec, loss_fn=lambda m: m(x).pow(2).mean())
    assert sparsity(pruned, ["fc1"])["fc1"] == pytest.approx(0.5)
    assert model.fc1.weight.grad is None  # the given model is untouched


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"pattern": "blocks"},
            r"PruneSpec.pattern must be one of 'unstructured', 'channel' or an 'N:M'.*'blocks'",
        ),
        (
            {"pattern": "4:2"},
            r"PruneSpec.pattern must be 'N:M' with 0 < N < M.*'4:2'.*'2:4' keeps 2",
        ),
        (
            {"ratio": 1.0},
            r"PruneSpec.ratio must be a number in \[0, 1\) for pattern 'unstructured', but got 1.0.*0.5 removes half",
        ),
        ({"ratio": "half"}, r"PruneSpec.ratio must be a number"),
        (
            {"pattern": "channel"},
            r"PruneSpec.ratio must be a number in \[0, 1\) for pattern 'channel', but got None",
        ),
        (
            {"pattern": "2:4", "ratio": 0.3},
            r"PruneSpec.ratio must be None or 0.5 for pattern '2:4'.*drop ratio=",
        ),
        (
            {"criterion": "taylor", "ratio": 0.5},
            r"PruneSpec.criterion must be one of \['magnitude', 'gradient'\], but got 'taylor'",
        ),
        ({"scope": "layer", "ratio": 0.5}, r"PruneSpec.scope must be one of \['op', 'global'\]"),
        (
            {"pattern": "channel", "scope": "global", "ratio": 0.5},
            r"PruneSpec.scope must be 'op' for pattern 'channel'",
        ),
    ],
)
def test_bad_specs_are_refused_naming_field_value_and_fix(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        PruneSpec(**kwargs)


def test_opconfig_carries_prune_and_round_trips() -> None:
    cfg = static_int8().replace(prune=PruneSpec(pattern="channel", ratio=0.25))
    assert OpConfig.from_dict(cfg.to_dict()) == cfg
    assert "prune:channel:0.25" in cfg.short()
    flt = prune_only(pattern="2:4")
    assert flt == OpConfig(approach="float", prune=aq.PruneSpec(pattern="2:4"))
    assert OpConfig.from_dict(flt.to_dict()) == flt and not flt.quantized
    # Without pruning the dict (and so every plan hash) is what it was.
    assert "prune" not in static_int8().to_dict()
    with pytest.raises(
        ConfigError, match="OpConfig.prune must be a PruneSpec when approach='float'"
    ):
        OpConfig(approach="float")
    with pytest.raises(ConfigError, match="must be None when approach='float'"):
        OpConfig(approach="float", weight=static_int8().weight, prune=PruneSpec(ratio=0.5))
    with pytest.raises(ConfigError, match="PruneSpec got unknown field"):
        OpConfig.from_dict({"approach": "float", "prune": {"ratio": 0.5, "amount": 1}})
