"""SearchSpace: built from the backend's capability table and the model's ops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoquant.backends import get_backend
from autoquant.config import static_int8
from autoquant.discovery import discover
from autoquant.errors import ConfigError
from autoquant.tuning import FP32, SearchSpace, TuningConfig

X86 = get_backend("x86")


def build(model: nn.Module, calibrated: bool = True, **config) -> SearchSpace:
    return SearchSpace.build(
        model, discover(model), X86, TuningConfig(**config), calibrated=calibrated
    )


class Mixed(nn.Module):
    """A conv, a conv the int8 kernels cannot run (reflect padding), Linears with 64 and
    30 input features (int4 groups of 32 divide 64, not 30), and a LayerNorm (not
    quantizable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.refl = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.norm = nn.LayerNorm(64)
        self.fc64 = nn.Linear(64, 30)
        self.fc30 = nn.Linear(30, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.refl(self.conv(x)).flatten(1)[:, :64])
        return self.fc30(self.fc64(x))


@pytest.fixture(scope="module")
def mixed() -> nn.Module:
    torch.manual_seed(0)
    return Mixed().eval()


def _config_of(space: SearchSpace, unit: str, label: str):
    u = space.units[unit]
    return u.configs[u.labels.index(label)]


# -- units and choices ----------------------------------------------------------------------


def test_units_are_the_quantizable_ops_default_first_fp32_last(cancer):
    space = build(cancer.model)
    assert space.unit_names == ["fc1", "fc2", "fc3", "fc4"]
    assert len(space) == 4
    for name, unit in space.units.items():
        assert unit.fqns == (name,) and unit.op_type == "Linear"
        assert unit.labels[-1] == FP32 and unit.configs[-1] is None
        assert FP32 not in unit.labels[:-1] and None not in unit.configs[:-1]
        assert len(set(unit.labels)) == len(unit.labels)
        # default: the first approach of TuningConfig.approaches the op supports (static)
        assert unit.default == unit.labels[0]
        assert unit.configs[0].approach == "static"
        assert unit.configs[0] == static_int8()
        # every label is its config's short name, and every config has a real kernel
        for label, cfg in zip(unit.labels[:-1], unit.configs[:-1], strict=True):
            assert label == cfg.short()
            cap = X86.find("Linear", cfg)
            assert cap is not None and not cap.simulated
            assert X86.module_problem(cancer.model.get_submodule(name), cfg, cap) is None
    # the default search varies approach, scheme and observer only
    cfgs = space.units["fc1"].configs[:-1]
    assert {c.approach for c in cfgs} == {"static", "dynamic", "weight_only"}
    assert {c.weight.dtype for c in cfgs} == {"int8"}
    assert {c.weight.granularity for c in cfgs} == {"per_channel"}
    static = [c for c in cfgs if c.approach == "static"]
    assert {c.activation.observer for c in static} == {"minmax", "kl", "percentile", "mse"}
    assert {c.activation.scheme for c in static} == {"asym", "sym"}
    assert space.log10_size == pytest.approx(4 * math.log10(11))
    assert "4 units (tie=op)" in space.describe()


def test_choices_follow_the_search_dimensions_and_observers(cancer):
    space = build(cancer.model, search=("observer",), observers=("minmax", "percentile"))
    for unit in space.units.values():
        assert unit.labels[-1] == FP32
        cfgs = unit.configs[:-1]
        # 'approach' not searched: only the first approach, static; observers as listed
        assert {c.approach for c in cfgs} == {"static"}
        assert [c.activation.observer for c in cfgs] == ["minmax", "percentile"]


def test_default_follows_the_order_of_approaches(digits_model):
    space = build(digits_model, approaches=("dynamic", "static", "weight_only"))
    # Linear has a real dynamic kernel, Conv2d has not: its default falls to static
    assert space.units["fc1"].configs[0].approach == "dynamic"
    assert space.units["conv1"].configs[0].approach == "static"
    assert "dynamic" not in {c.approach for c in space.units["conv1"].configs if c}


def test_static_is_excluded_without_calibration_data(cancer, digits_model):
    space = build(cancer.model, calibrated=False)
    assert not space.needs_calibration
    for unit in space.units.values():
        assert {c.approach for c in unit.configs if c} == {"dynamic", "weight_only"}
        assert unit.configs[0].approach == "dynamic"
    assert build(cancer.model, calibrated=True).needs_calibration
    # convs only have static real kernels: without calibration they are not searched
    assert build(digits_model, calibrated=False).unit_names == ["fc1", "fc2"]


def test_tie_op_type_groups_ops_and_keeps_only_common_choices(digits_model, mixed):
    space = build(digits_model, tie="op_type")
    assert space.unit_names == ["Conv2d", "Linear"]
    assert space.units["Conv2d"].fqns == ("conv1", "conv2", "conv3")
    assert space.units["Linear"].fqns == ("fc1", "fc2")
    per_op = build(digits_model)
    assert space.units["Linear"].labels == per_op.units["fc1"].labels
    # one choice per type sets every op of that type
    plan = space.plan({"Conv2d": FP32, "Linear": space.units["Linear"].labels[1]})
    assert [plan[f] for f in ("conv1", "conv2", "conv3")] == [None] * 3
    assert plan["fc1"] == plan["fc2"] == space.units["Linear"].configs[1]

    # choices a single op cannot run are dropped from its whole group
    cfg = {"search": ("approach", "dtype", "granularity"), "approaches": ("weight_only",)}
    by_op = build(mixed, **cfg)
    by_type = build(mixed, tie="op_type", **cfg)
    int4 = [lab for lab in by_op.units["fc64"].labels if "int4" in lab]
    assert int4, by_op.units["fc64"].labels
    assert set(by_type.units["Linear"].labels) == set(by_op.units["fc30"].labels)
    assert not any("int4" in lab for lab in by_type.units["Linear"].labels)


def test_per_module_constraints_are_respected(mixed):
    space = build(mixed, search=("approach", "dtype", "granularity"))
    # int4 weight-only needs a group size dividing the input features: 64 yes, 30 no
    assert any(
        c is not None and c.weight.dtype in ("int4", "uint4") for c in space.units["fc64"].configs
    )
    assert all(
        c is None or c.weight.dtype == "int8" or c.approach != "weight_only"
        for c in space.units["fc30"].configs
    )
    for c in space.units["fc64"].configs:
        if c is not None and c.weight.group_size is not None:
            assert 64 % c.weight.group_size == 0
    # the reflect-padded conv has no int8 kernel: not searched, and stays float in plans
    assert "refl" not in space.units
    assert "norm" not in space.units
    plan = space.plan(space.default_params())
    assert plan["refl"] is None and plan["conv"] is not None
    assert list(plan) == ["conv", "refl", "fc64", "fc30"]
    # every choice the space offers is one the backend accepts for that very module
    for unit in space.units.values():
        for cfg in unit.configs[:-1]:
            X86.check(space.plan({unit.name: unit.labels[unit.configs.index(cfg)]}), mixed)


def test_include_simulated_adds_fake_quant_choices_only_when_asked(mixed):
    real = build(mixed)
    sim = build(mixed, include_simulated=True)
    for unit in real.units.values():
        for cfg in unit.configs[:-1]:
            assert not X86.find(unit.op_type, cfg).simulated
    simulated = [
        (u.name, c)
        for u in sim.units.values()
        for c in u.configs[:-1]
        if X86.find(u.op_type, c).simulated
    ]
    assert simulated
    # e.g. dynamic Conv2d exists only as fake-quant
    assert any(c.approach == "dynamic" for name, c in simulated if name == "conv")
    assert not any(c.approach == "dynamic" for c in real.units["conv"].configs if c)
    assert set(real.units["conv"].labels) < set(sim.units["conv"].labels)
    # the conv with reflect padding becomes searchable (fake-quant pads in float)
    assert "refl" in sim.units and "refl" not in real.units


def test_a_model_with_nothing_quantizable_is_a_config_error():
    model = nn.Sequential(nn.LayerNorm(8), nn.ReLU()).eval()
    with pytest.raises(ConfigError, match="no op of this model can be quantized"):
        build(model)
    # an LSTM has only dynamic kernels: with static alone there is nothing to search
    lstm = nn.Sequential(nn.LSTM(4, 8)).eval()
    with pytest.raises(ConfigError, match="approaches=\\('static',\\)"):
        build(lstm, approaches=("static",))
    assert build(lstm, approaches=("dynamic",)).units["0"].configs[0].approach == "dynamic"


# -- params <-> plan ------------------------------------------------------------------------


def test_params_to_plan(cancer):
    space = build(cancer.model)
    defaults = space.default_params()
    assert defaults == {u: space.units[u].default for u in space.unit_names}
    plan = space.plan(defaults)
    assert plan.quantized and list(plan) == ["fc1", "fc2", "fc3", "fc4"]
    assert all(plan[f] == space.units[f].configs[0] for f in plan)
    assert plan.op_types["fc1"] == "Linear"

    # missing units take their default; fp32 keeps an op in float
    partial = space.plan({"fc1": FP32, "fc3": space.units["fc3"].labels[-2]})
    assert partial["fc1"] is None
    assert partial["fc2"] == plan["fc2"]
    assert partial["fc3"] == space.units["fc3"].configs[-2]
    assert partial.hash != plan.hash

    # with_fp32 / fp32_units, and the all-float plan quantizes nothing
    all_fp32 = space.with_fp32(defaults, space.unit_names)
    assert space.fp32_units(all_fp32) == space.unit_names
    assert not space.plan(all_fp32).quantized
    assert defaults == space.default_params()  # with_fp32 copies

    # same params -> same plan hash (the cache key)
    assert space.plan(dict(defaults)).hash == plan.hash

    with pytest.raises(ConfigError, match="unit 'fc2' has no choice 'int3'; its choices are"):
        space.plan({"fc2": "int3"})


def test_distributions_are_categoricals_over_the_labels(cancer):
    space = build(cancer.model, tie="op_type")
    dists = space.distributions()
    assert list(dists) == ["Linear"]
    assert tuple(dists["Linear"].choices) == space.units["Linear"].labels
    assert space.units["Linear"].fqns == ("fc1", "fc2", "fc3", "fc4")
