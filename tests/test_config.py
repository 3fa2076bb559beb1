"""Tests of autoquant.config: validation, immutability, hashing and dict/YAML round trips."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from autoquant.config import (
    APPROACHES,
    DTYPES,
    FLOAT_DTYPES,
    GRANULARITIES,
    OBSERVERS,
    SCHEMES,
    OpConfig,
    QuantSpec,
    dynamic_int8,
    static_int8,
    weight_only,
)
from autoquant.errors import AutoQuantError, ConfigError
from autoquant.pruning.spec import PruneSpec

# ----------------------------------------------------------------------------- validation

# (field, bad value, fragments the message must contain besides the field and the value:
# the allowed values, spelled as the error spells them)
BAD_SPEC_FIELDS: list[tuple[str, Any, list[str]]] = [
    ("dtype", "int3", [repr([*DTYPES, *FLOAT_DTYPES])]),
    ("dtype", None, [repr([*DTYPES, *FLOAT_DTYPES])]),
    ("scheme", "symmetric", [repr(list(SCHEMES))]),
    ("granularity", "per_row", [repr(list(GRANULARITIES))]),
    ("observer", "histogram", [repr(list(OBSERVERS))]),
    ("reduce_range", "yes", ["bool"]),
    ("reduce_range", 1, ["bool"]),
    ("axis", 1.5, ["int"]),
    ("axis", True, ["int"]),
    ("percentile", 0.0, ["(0, 100]"]),
    ("percentile", 100.5, ["(0, 100]"]),
    ("percentile", float("nan"), ["(0, 100]"]),
    ("averaging_constant", 0.0, ["(0, 1]"]),
    ("averaging_constant", 1.5, ["(0, 1]"]),
]


@pytest.mark.parametrize(("field", "value", "allowed"), BAD_SPEC_FIELDS)
def test_bad_spec_field_names_field_value_and_allowed(
    field: str, value: Any, allowed: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        QuantSpec(**{field: value})
    msg = str(info.value)
    assert f"QuantSpec.{field}" in msg
    assert repr(value) in msg
    for fragment in allowed:
        assert fragment in msg


@pytest.mark.parametrize("value", [1, 0, 1.5, "32", True, None])
def test_bad_group_size_with_per_group(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        QuantSpec(granularity="per_group", group_size=value)
    msg = str(info.value)
    assert "group_size" in msg and repr(value) in msg and ">= 2" in msg


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_group_size_forbidden_without_per_group(granularity: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantSpec(granularity=granularity, group_size=32)
    msg = str(info.value)
    assert "group_size" in msg and "32" in msg and "per_group" in msg and granularity in msg


# Non-numbers must be rejected as ConfigError, and numbers-in-disguise ("99", True) must
# not be stored as is (to_dict would then write a string or a bool to YAML).
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("percentile", "abc"),
        ("percentile", None),
        ("percentile", "99"),
        ("percentile", True),
        ("averaging_constant", "x"),
        ("averaging_constant", True),
    ],
)
def test_non_numeric_float_fields_rejected(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        QuantSpec(**{field: value})
    assert field in str(info.value) and repr(value) in str(info.value)


def test_bad_approach_names_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        OpConfig(approach="int8", weight=QuantSpec())
    msg = str(info.value)
    assert "OpConfig.approach" in msg and "'int8'" in msg and repr(list(APPROACHES)) in msg


@pytest.mark.parametrize("value", [None, "int8", 3])
def test_bad_weight_type(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        OpConfig(approach="weight_only", weight=value)
    msg = str(info.value)
    assert "OpConfig.weight" in msg and repr(value) in msg and "QuantSpec" in msg


def test_errors_are_config_and_value_errors() -> None:
    with pytest.raises(ConfigError) as info:
        QuantSpec(dtype="int3")
    assert isinstance(info.value, AutoQuantError) and isinstance(info.value, ValueError)


def test_weight_only_with_activation_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        OpConfig(approach="weight_only", weight=QuantSpec(), activation=QuantSpec(dtype="uint8"))
    msg = str(info.value)
    assert "OpConfig.activation" in msg and "weight_only" in msg and "None" in msg


@pytest.mark.parametrize("approach", ["static", "dynamic", "qat"])
def test_activation_required_except_weight_only(approach: str) -> None:
    with pytest.raises(ConfigError) as info:
        OpConfig(approach=approach, weight=QuantSpec())
    msg = str(info.value)
    assert "OpConfig.activation" in msg and repr(approach) in msg and "weight_only" in msg


@pytest.mark.parametrize("observer", ["kl", "percentile", "mse", "moving_average"])
def test_dynamic_with_calibrating_observer_suggests_static(observer: str) -> None:
    with pytest.raises(ConfigError) as info:
        OpConfig(
            approach="dynamic",
            weight=QuantSpec(),
            activation=QuantSpec(dtype="uint8", scheme="asym", observer=observer),
        )
    msg = str(info.value)
    assert repr(observer) in msg and "minmax" in msg and "approach='static'" in msg


def test_per_group_only_for_weight_only_weights() -> None:
    grouped = QuantSpec(dtype="int4", scheme="asym", granularity="per_group", group_size=32)
    with pytest.raises(ConfigError, match="per_group"):
        OpConfig(approach="static", weight=grouped, activation=QuantSpec(dtype="uint8"))
    with pytest.raises(ConfigError, match="per_group"):
        OpConfig(approach="static", weight=QuantSpec(), activation=grouped)
    OpConfig(approach="weight_only", weight=grouped)  # allowed


# ----------------------------------------------------------------------------- dataclass


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        QuantSpec("int8")  # type: ignore[misc]
    with pytest.raises(TypeError):
        OpConfig("weight_only", QuantSpec())  # type: ignore[misc]


def test_frozen() -> None:
    spec = QuantSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.dtype = "uint8"  # type: ignore[misc]
    cfg = static_int8()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.approach = "dynamic"  # type: ignore[misc]


def test_hashable_and_equal_by_value() -> None:
    assert static_int8() == static_int8()
    assert hash(static_int8()) == hash(static_int8())
    assert static_int8() != dynamic_int8()
    assert QuantSpec(dtype="uint8") == QuantSpec(dtype="uint8")
    assert (
        len({static_int8(), static_int8(), dynamic_int8(), weight_only("int4", group_size=32)}) == 3
    )
    assert {QuantSpec(): 1}[QuantSpec()] == 1


def test_replace_revalidates() -> None:
    assert QuantSpec().replace(dtype="uint8").dtype == "uint8"
    with pytest.raises(ConfigError):
        QuantSpec().replace(dtype="int3")


def test_nested_dicts_accepted() -> None:
    cfg = OpConfig(
        approach="static", weight={"dtype": "int8"}, activation={"dtype": "uint8", "scheme": "asym"}
    )
    assert cfg.weight == QuantSpec(dtype="int8")
    assert cfg.activation == QuantSpec(dtype="uint8", scheme="asym")


# ----------------------------------------------------------------------------- round trips

PRESETS = [static_int8(), dynamic_int8(), weight_only("int4", group_size=32)]


def _assert_round_trips(cfg: OpConfig) -> None:
    d = cfg.to_dict()
    assert OpConfig.from_dict(d) == cfg
    text = yaml.safe_dump(d, sort_keys=False)
    back = OpConfig.from_dict(yaml.safe_load(text))
    assert back == cfg and hash(back) == hash(cfg)
    if cfg.weight is not None:  # None: a pruned-but-float op
        assert (
            QuantSpec.from_dict(yaml.safe_load(yaml.safe_dump(cfg.weight.to_dict()))) == cfg.weight
        )


@pytest.mark.parametrize("cfg", PRESETS, ids=lambda c: c.short())
def test_presets_round_trip(cfg: OpConfig) -> None:
    _assert_round_trips(cfg)


def test_to_dict_has_every_field() -> None:
    d = weight_only("int4", group_size=32).to_dict()
    assert set(d) == {"approach", "weight", "activation"}
    assert d["activation"] is None
    assert list(d["weight"]) == [f.name for f in dataclasses.fields(QuantSpec)]
    assert d["weight"]["group_size"] == 32


@st.composite
def quant_specs(draw: st.DrawFn, *, allow_group: bool = True) -> QuantSpec:
    granularities = list(GRANULARITIES) if allow_group else ["per_tensor", "per_channel"]
    granularity = draw(st.sampled_from(granularities))
    return QuantSpec(
        dtype=draw(st.sampled_from(list(DTYPES))),
        scheme=draw(st.sampled_from(SCHEMES)),
        granularity=granularity,
        axis=draw(st.integers(-4, 4)),
        group_size=draw(st.integers(2, 4096)) if granularity == "per_group" else None,
        observer=draw(st.sampled_from(OBSERVERS)),
        reduce_range=draw(st.booleans()),
        percentile=draw(st.floats(0.0, 100.0, exclude_min=True)),
        averaging_constant=draw(st.floats(0.0, 1.0, exclude_min=True)),
    )


@st.composite
def op_configs(draw: st.DrawFn) -> OpConfig:
    approach = draw(st.sampled_from(APPROACHES))
    if approach == "float":  # pruned, not quantized: no specs, a PruneSpec
        return OpConfig(approach=approach, prune=PruneSpec(ratio=draw(st.floats(0.0, 0.99))))
    if approach == "weight_only":
        return OpConfig(approach=approach, weight=draw(quant_specs()))
    if approach == "bf16":
        return OpConfig(approach=approach, weight=draw(quant_specs()).replace(dtype="bf16"))
    weight = draw(quant_specs(allow_group=False))
    activation = draw(quant_specs(allow_group=False))
    if approach == "dynamic":
        activation = activation.replace(observer="minmax", granularity="per_tensor")
    return OpConfig(approach=approach, weight=weight, activation=activation)


@settings(max_examples=150, deadline=None)
@given(op_configs())
def test_random_configs_round_trip(cfg: OpConfig) -> None:
    _assert_round_trips(cfg)


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_spec_key_rejected_with_allowed_list() -> None:
    d = QuantSpec().to_dict() | {"bitz": 8}
    with pytest.raises(ConfigError) as info:
        QuantSpec.from_dict(d)
    msg = str(info.value)
    assert "bitz" in msg
    assert repr(sorted(f.name for f in dataclasses.fields(QuantSpec))) in msg


def test_unknown_op_config_key_rejected_with_allowed_list() -> None:
    d = static_int8().to_dict() | {"wieght": {}}
    with pytest.raises(ConfigError) as info:
        OpConfig.from_dict(d)
    msg = str(info.value)
    assert "wieght" in msg and repr(["activation", "approach", "prune", "weight"]) in msg


def test_unknown_nested_key_rejected() -> None:
    d = static_int8().to_dict()
    d["activation"]["observr"] = "kl"
    with pytest.raises(ConfigError, match="observr"):
        OpConfig.from_dict(d)


def test_from_dict_missing_required_keys() -> None:
    with pytest.raises(ConfigError, match="approach"):
        OpConfig.from_dict({"weight": {}})


@pytest.mark.parametrize("bad", [["int8"], "static", 3])
def test_from_dict_needs_a_mapping(bad: Any) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        OpConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="mapping"):
        QuantSpec.from_dict(bad)
