"""Tests of autoquant.plan: rule resolution, precedence, warnings, hashing, serialization."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from _models import MLP, ResidualCNN
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from autoquant.config import OpConfig, dynamic_int8, static_int8, weight_only
from autoquant.discovery import OpInfo, discover
from autoquant.errors import PlanError
from autoquant.plan import Plan, PlanWarning, resolve_plan

A = static_int8()
B = dynamic_int8()
C = weight_only("int8")
D = weight_only("int4", group_size=32)


def _ops(*spec: tuple[str, str]) -> list[OpInfo]:
    return [OpInfo(fqn, op_type, (1,), 1, None) for fqn, op_type in spec]


MLP_OPS = _ops(("fc1", "Linear"), ("fc2", "Linear"), ("fc10", "Linear"))
MIXED_OPS = _ops(
    ("embed", "Embedding"),
    ("fc1", "Linear"),
    ("fc2", "Linear"),
    ("fc10", "Linear"),
    ("layer.0.conv", "Conv2d"),
    ("layer.1.conv", "Conv2d"),
    ("layer.10.conv", "Conv2d"),
    ("layer.1.fc", "Linear"),
    ("rnn", "LSTM"),
)


def resolve(rules: Any, ops: Any = MLP_OPS, **kw: Any) -> Plan:
    """resolve_plan that fails the test on any PlanWarning unless the test expects one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanWarning)
        return resolve_plan(rules, ops, **kw)


# -- precedence ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        # exact > glob > type > default, each tier tested against all lower ones
        ({"default": A, "Linear": B, "fc*": C, "fc1": D}, {"fc1": D, "fc2": C, "fc10": C}),
        ({"fc1": D, "fc*": C, "Linear": B, "default": A}, {"fc1": D, "fc2": C, "fc10": C}),
        ({"default": A, "Linear": B, "fc?": C}, {"fc1": C, "fc2": C, "fc10": B}),
        ({"default": A, "Linear": B}, {"fc1": B, "fc2": B, "fc10": B}),
        ({"default": A}, {"fc1": A, "fc2": A, "fc10": A}),
        ({"default": A, "fc2": None}, {"fc1": A, "fc2": None, "fc10": A}),
        ({}, {"fc1": None, "fc2": None, "fc10": None}),
        # among globs the last one in rule order wins
        ({"fc*": A, "fc1*": B}, {"fc1": B, "fc2": A, "fc10": B}),
        ({"fc1*": B, "fc*": A}, {"fc1": A, "fc2": A, "fc10": A}),
        # None from a higher tier beats a config from a lower one
        ({"Linear": A, "fc1?": None}, {"fc1": A, "fc2": A, "fc10": None}),
    ],
)
def test_precedence(rules: dict[str, Any], expected: dict[str, OpConfig | None]) -> None:
    plan = resolve(rules)
    assert dict(plan) == expected
    assert list(plan) == ["fc1", "fc2", "fc10"]  # model order, not rule order


def test_exact_fc1_never_matches_fc10() -> None:
    plan = resolve({"fc1": A})
    assert plan["fc1"] == A and plan["fc10"] is None
    assert plan.quantized == ["fc1"]


def test_glob_question_mark_matches_one_char_and_whole_names() -> None:
    plan = resolve({"fc?": A})
    assert plan.quantized == ["fc1", "fc2"]
    plan = resolve({"layer.*": A}, MIXED_OPS)
    assert plan.quantized == ["layer.0.conv", "layer.1.conv", "layer.10.conv", "layer.1.fc"]
    plan = resolve({"layer.?.conv": A}, MIXED_OPS)
    assert plan.quantized == ["layer.0.conv", "layer.1.conv"]
    # "c*" is not a substring search: no fqn starts with "c"
    with pytest.warns(PlanWarning):
        assert resolve_plan({"c*": A}, MIXED_OPS).quantized == []


def test_dict_values_and_none_values() -> None:
    plan = resolve({"fc1": A.to_dict(), "fc2": None, "default": B.to_dict()})
    assert plan["fc1"] == A and isinstance(plan["fc1"], OpConfig)
    assert plan["fc2"] is None
    assert plan["fc10"] == B


def test_resolve_from_model_uses_discover() -> None:
    plan = resolve({"Conv2d": A}, ResidualCNN())
    assert plan.quantized == ["stem", "conv1", "conv2"]
    assert plan.op_types == {"stem": "Conv2d", "conv1": "Conv2d", "conv2": "Conv2d", "fc": "Linear"}


# -- errors and warnings ---------------------------------------------------------------


def test_typo_warns_with_nearest_names() -> None:
    with pytest.warns(PlanWarning, match=r"'fc_1'.*\['fc1'"):
        plan = resolve_plan({"fc_1": A}, MLP_OPS)
    assert plan.quantized == []


def test_unmatched_glob_and_missing_type_warn() -> None:
    with pytest.warns(PlanWarning, match=r"'conv\*'"):
        resolve_plan({"conv*": A}, MLP_OPS)
    with pytest.warns(PlanWarning, match="no LSTM op"):
        resolve_plan({"LSTM": B}, MLP_OPS)
    with pytest.warns(PlanWarning, match=r"\['Linear'\]"):
        resolve_plan({"linear": B}, MLP_OPS)


def test_warn_false_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = resolve_plan({"fc_1": A, "conv*": A, "LSTM": A, "fc2": B}, MLP_OPS, warn=False)
    assert plan.quantized == ["fc2"]


def test_non_quantizable_module_is_an_error_with_nearby_ops() -> None:
    with pytest.raises(
        PlanError, match=r"'bn1' \(BatchNorm2d\) is not quantizable.*'conv1', 'conv2'"
    ):
        resolve_plan({"bn1": A}, ResidualCNN())
    with pytest.raises(PlanError, match="'relu'"):
        resolve_plan({"relu": None}, MLP())


def test_container_key_suggests_a_glob() -> None:
    with pytest.raises(PlanError, match=r"container.*'layer\.1\.\*'"):
        resolve_plan({"layer.1": A}, MIXED_OPS)
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.ReLU())
    with pytest.raises(PlanError, match=r"'0\.\*'.*\['0\.0'\]"):
        resolve_plan({"0": A}, model)


def test_non_quantizable_type_is_an_error() -> None:
    with pytest.raises(PlanError, match="op type BatchNorm2d is not quantizable"):
        resolve_plan({"BatchNorm2d": A}, MLP_OPS)


def test_bad_rule_value_names_the_rule() -> None:
    with pytest.raises(PlanError, match=r"rule 'fc1': OpConfig\.approach must be one of"):
        resolve_plan({"fc1": {"approach": "bogus", "weight": {}}}, MLP_OPS)
    with pytest.raises(PlanError, match=r"rule 'default' must be an OpConfig.*but got int"):
        resolve_plan({"default": 8}, MLP_OPS)
    with pytest.raises(PlanError, match=r"rule 'fc\*': QuantSpec\.dtype"):
        resolve_plan({"fc*": {"approach": "weight_only", "weight": {"dtype": "int3"}}}, MLP_OPS)


def test_rules_none_or_wrong_type() -> None:
    with pytest.raises(PlanError, match="but got None"):
        resolve_plan(None, MLP_OPS)
    with pytest.raises(PlanError, match="but got list"):
        resolve_plan([("fc1", A)], MLP_OPS)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="rule keys must be strings"):
        resolve_plan({1: A}, MLP_OPS)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="ops must be a list of OpInfo"):
        resolve_plan({}, "fc1")  # type: ignore[arg-type]


def test_plan_as_rules_is_checked_and_returned() -> None:
    plan = resolve({"fc1": A})
    assert resolve_plan(plan, MLP_OPS) is plan
    with pytest.raises(PlanError, match=r"lacks \['embed'"):
        resolve_plan(plan, MIXED_OPS)
    wrong_type = Plan(
        {"fc1": None, "fc2": None, "fc10": None},
        {"fc1": "Linear", "fc2": "Conv1d", "fc10": "Linear"},
    )
    with pytest.raises(PlanError, match=r"op type for \['fc2'\]"):
        resolve_plan(wrong_type, MLP_OPS)


# -- Plan as data ----------------------------------------------------------------------


def test_plan_is_immutable_and_replace_returns_new_plans() -> None:
    plan = resolve({"default": A})
    with pytest.raises(AttributeError):
        plan._configs = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan["fc1"] = None  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.op_types["fc1"] = "Conv2d"  # type: ignore[index]
    flipped = plan.replace(fc1=None)
    assert flipped["fc1"] is None and plan["fc1"] == A
    assert flipped.quantized == ["fc2", "fc10"]
    assert plan.with_configs({"fc2": B.to_dict()})["fc2"] == B
    with pytest.raises(PlanError, match=r"fc_1.*\['fc1'"):
        plan.replace(fc_1=None)


def test_float_plan() -> None:
    plan = Plan.float(MLP_OPS)
    assert dict(plan) == {"fc1": None, "fc2": None, "fc10": None}
    assert plan.quantized == []
    assert plan == Plan.float(MLP()) == resolve({})


def test_equality_hash_and_pickle() -> None:
    plan = resolve({"fc?": A})
    same = resolve({"fc1": A, "fc2": A})  # different rules, same resolved plan
    assert plan == same and hash(plan) == hash(same) and plan.hash == same.hash
    assert len({plan, same}) == 1
    assert plan != resolve({"fc?": B})
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert copy.deepcopy(plan) == plan
    assert plan != dict(plan)


def test_hash_independent_of_rule_order_and_value_form() -> None:
    one = resolve({"default": A, "fc1": B, "Linear": C})
    two = resolve({"Linear": C.to_dict(), "fc1": B.to_dict(), "default": A})
    assert one.hash == two.hash
    # 100 and 100.0 make equal configs, so they must hash alike too.
    pct = A.replace(activation=A.activation.replace(observer="percentile", percentile=100))  # type: ignore[union-attr]
    pct_f = A.replace(activation=A.activation.replace(observer="percentile", percentile=100.0))  # type: ignore[union-attr]
    assert resolve({"fc1": pct}).hash == resolve({"fc1": pct_f}).hash


def test_hash_differs_when_any_config_differs() -> None:
    base = resolve({"default": A})
    variants = [
        base.replace(fc10=None),
        base.replace(fc2=B),
        base.replace(fc1=A.replace(weight=A.weight.replace(reduce_range=True))),
        base.replace(fc1=A.replace(activation=A.activation.replace(scheme="sym"))),  # type: ignore[union-attr]
    ]
    hashes = {base.hash, *(v.hash for v in variants)}
    assert len(hashes) == 1 + len(variants)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)


def test_hash_is_stable_across_processes() -> None:
    plan = resolve({"default": A, "fc?": B, "fc10": None})
    code = (
        "from autoquant.config import static_int8, dynamic_int8\n"
        "from autoquant.discovery import OpInfo\n"
        "from autoquant.plan import resolve_plan\n"
        "ops = [OpInfo(f, 'Linear', (1,), 1, None) for f in ('fc1', 'fc2', 'fc10')]\n"
        "rules = {'fc10': None, 'fc?': dynamic_int8(), 'default': static_int8()}\n"
        "print(resolve_plan(rules, ops).hash)\n"
    )
    # A different hash seed would change any hash() based digest.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == plan.hash


def test_yaml_and_dict_round_trip() -> None:
    plan = resolve({"default": A, "fc2": D, "fc10": None})
    assert Plan.from_yaml(plan.to_yaml()) == plan
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    data = plan.to_dict()
    assert data["version"] == 1
    assert data["ops"]["fc10"] == {"type": "Linear", "config": None}
    assert list(data["ops"]) == ["fc1", "fc2", "fc10"]
    # numeric-looking fqns (nn.Sequential children) must stay strings through YAML
    seq = resolve({"*": C}, discover(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))))
    back = Plan.from_yaml(seq.to_yaml())
    assert back == seq and list(back) == ["0", "2"]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2], "a plan must be a mapping"),
        ({"ops": {}}, "missing key 'version'"),
        ({"version": 1}, "missing key 'ops'"),
        ({"version": 2, "ops": {}}, r"'version' must be 1, but got 2"),
        ({"version": 1, "ops": {}, "extra": 1}, r"unknown key\(s\) \['extra'\]"),
        ({"version": 1, "ops": []}, "'ops' must be a mapping"),
        ({"version": 1, "ops": {"fc1": None}}, r"ops\['fc1'\] must be a mapping"),
        (
            {"version": 1, "ops": {"fc1": {"type": "Linear"}}},
            r"ops\['fc1'\] must have exactly the keys",
        ),
        (
            {"version": 1, "ops": {"fc1": {"type": "Dense", "config": None}}},
            r"ops\['fc1'\]\.type must be one of",
        ),
        (
            {
                "version": 1,
                "ops": {"fc1": {"type": "Linear", "config": {"approach": "x", "weight": {}}}},
            },
            r"ops\['fc1'\]\.config: OpConfig\.approach",
        ),
        (
            {"version": 1, "ops": {3: {"type": "Linear", "config": None}}},
            "op names must be strings",
        ),
    ],
)
def test_from_dict_errors_name_the_key(data: Any, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        Plan.from_dict(data)


def test_from_yaml_errors() -> None:
    with pytest.raises(PlanError, match="could not be parsed"):
        Plan.from_yaml("ops: [unclosed")
    with pytest.raises(PlanError, match="a plan must be a mapping"):
        Plan.from_yaml("- 1\n- 2\n")
    # safe_load only: python object tags are refused
    with pytest.raises(PlanError, match="could not be parsed"):
        Plan.from_yaml("!!python/object/apply:os.system ['true']")


def test_printing() -> None:
    plan = resolve({"fc1": A, "fc2": D})
    text = str(plan)
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "fqn"
    assert all(name in text for name in ("fc1", "fc2", "fc10"))
    assert A.short() in text and "w:int4/asym/g32/minmax" in text
    assert lines[-1].startswith("fc10") and lines[-1].endswith("| fp32")
    # columns aligned: the separators sit at the same offsets on every row
    assert len({line.index("|") for line in lines if "|" in line}) == 1
    assert repr(plan).startswith("Plan(3 ops, 2 quantized, hash=")


# -- property: resolution equals a reference implementation ------------------------------

KEY_POOL = [
    "default",
    "Linear",
    "Conv2d",
    "Embedding",
    "LSTM",
    "GRU",
    "fc1",
    "fc2",
    "fc10",
    "embed",
    "rnn",
    "layer.0.conv",
    "layer.1.fc",
    "fc?",
    "fc*",
    "fc1*",
    "layer.*",
    "layer.?.conv",
    "*conv",
    "*",
    "[fl]*",
    "*.1*",
    "nothing*",
]
VALUES = [A, B, C, D, None]


def _reference(rules: dict[str, OpConfig | None], op: OpInfo) -> OpConfig | None:
    """Straightforward restatement of the documented precedence."""
    if op.fqn in rules:
        return rules[op.fqn]
    globs = [k for k in rules if any(c in k for c in "*?[") and fnmatch.fnmatchcase(op.fqn, k)]
    if globs:
        return rules[globs[-1]]
    if op.op_type in rules:
        return rules[op.op_type]
    return rules.get("default")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(KEY_POOL), st.sampled_from(VALUES)),
        unique_by=lambda kv: kv[0],
        max_size=10,
    )
)
def test_resolution_matches_reference(pairs: list[tuple[str, OpConfig | None]]) -> None:
    rules = dict(pairs)
    plan = resolve_plan(rules, MIXED_OPS, warn=False)
    again = resolve_plan(dict(pairs), MIXED_OPS, warn=False)
    assert plan == again and plan.hash == again.hash
    assert list(plan) == [op.fqn for op in MIXED_OPS]
    for op in MIXED_OPS:
        assert plan[op.fqn] == _reference(rules, op), op.fqn
