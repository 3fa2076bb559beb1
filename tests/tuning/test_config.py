"""TuningConfig: validation names the field, the value and what is allowed; the accuracy
goal (loss / target / meets) for relative and absolute criteria, both directions."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoquant.errors import ConfigError
from autoquant.tuning import (
    OBJECTIVES,
    SEARCH_DIMENSIONS,
    BudgetConfig,
    GoalConfig,
    LatencyConfig,
    SpaceConfig,
    StudyConfig,
    TuningConfig,
    available_strategies,
)

# -- validation ---------------------------------------------------------------------------

# (field, bad value, words the message must contain besides the field and the value)
BAD = [
    ("criterion", "relativ", ["'relative'", "'absolute'"]),
    ("tolerable_loss", -0.01, [">= 0"]),
    ("tolerable_loss", math.nan, [">= 0"]),
    ("tolerable_loss", math.inf, [">= 0"]),
    ("tolerable_loss", True, ["a number"]),
    ("tolerable_loss", "1%", ["a number"]),
    ("higher_is_better", 1, ["a bool"]),
    ("objective", "speed", [repr(o) for o in OBJECTIVES]),
    ("strategy", "", ["a strategy name"]),
    ("max_trials", 0, ["an int >= 1"]),
    ("max_trials", 2.0, ["an int >= 1"]),
    ("max_trials", True, ["an int >= 1"]),
    ("timeout", 0, ["None or a number of seconds > 0"]),
    ("timeout", -5.0, ["seconds > 0"]),
    ("timeout", "60", ["seconds > 0"]),
    ("stop_on_first_pass", "yes", ["a bool"]),
    ("max_failure_rate", 1.5, ["[0, 1]"]),
    ("max_failure_rate", "half", ["[0, 1]"]),
    ("search", ("approach", "bits"), ["'bits'", *[repr(d) for d in SEARCH_DIMENSIONS]]),
    ("search", "approach", ["a tuple or list"]),
    ("approaches", ("static", "fp16"), ["'static'", "'dynamic'", "'weight_only'"]),
    ("approaches", ("qat", "fp16"), ["'weight_only'", "'qat'"]),
    ("qat_epochs", (), ["non-empty"]),
    ("qat_lr_scales", (0.0,), ["> 0"]),
    ("qat_steps", 0, ["None or an int >= 1"]),
    ("qat_trials", 0, ["an int >= 1"]),
    ("qat_learn_scales", "yes", ["a bool"]),
    ("approaches", (), ["non-empty"]),
    ("observers", ("minmax", "entropy"), ["'kl'", "'percentile'"]),
    ("observers", (), ["non-empty"]),
    ("tie", "layer", ["'op'", "'op_type'"]),
    ("calib_samples", 0, ["an int >= 1"]),
    ("latency_threads", 0, ["an int >= 1"]),
    ("latency_repeats", 1.5, ["an int >= 1"]),
    ("latency_warmup", -1, ["an int >= 0"]),
    ("min_latency_gain", 1.0, ["[0, 1)"]),
    ("min_latency_gain", None, ["[0, 1)"]),
    ("latency_mode", "compiled", ["'eager'", "'deployed'"]),
    ("latency_verify_top", -1, ["an int >= 0"]),
    ("latency_verify_top", 2.0, ["an int >= 0"]),
    ("metric_bounds", "1.0", ["None or a finite number"]),
    ("metric_bounds", math.nan, ["finite"]),
    ("seed", 1.5, ["an int"]),
]


@pytest.mark.parametrize(("field", "value", "allowed"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_invalid_field_is_named_with_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as info:
        TuningConfig(**{field: value})
    msg = str(info.value)
    assert f"TuningConfig.{field}" in msg
    assert repr(value) in msg
    for word in allowed:
        assert word in msg, (word, msg)


def test_defaults_follow_inc_where_it_has_one():
    c = TuningConfig()
    assert (c.criterion, c.tolerable_loss, c.higher_is_better) == ("relative", 0.01, True)
    assert (c.max_trials, c.calib_samples, c.seed) == (100, 100, 1978)
    assert c.timeout is None and c.stop_on_first_pass is False
    assert c.strategy == "basic" and c.objective == "latency"


def test_sequences_become_tuples_and_replace_revalidates():
    c = TuningConfig(search=["approach"], approaches=["dynamic"], observers=["minmax"])
    assert c.search == ("approach",) and c.approaches == ("dynamic",)
    assert c.observers == ("minmax",)
    assert c.replace(max_trials=3).max_trials == 3
    with pytest.raises(ConfigError, match="TuningConfig.max_trials"):
        c.replace(max_trials=-1)
    d = c.to_dict()
    assert d["search"] == ("approach",) and d["seed"] == 1978


def test_sections_and_flat_keywords_are_one_config():
    flat = TuningConfig(tolerable_loss=0.005, max_trials=10, strategy="tpe", latency_threads=2)
    sections = TuningConfig(
        goal=GoalConfig(tolerable_loss=0.005),
        budget=BudgetConfig(max_trials=10, strategy="tpe"),
        latency=LatencyConfig(threads=2),
    )
    assert flat == sections and hash(flat) == hash(sections)
    assert flat.goal.tolerable_loss == flat.tolerable_loss == 0.005
    assert flat.latency.threads == flat.latency_threads == 2
    assert (flat.space, flat.study) == (SpaceConfig(), StudyConfig())
    # a flat keyword given with its section overrides that one field
    mixed = TuningConfig(budget=BudgetConfig(max_trials=10, seed=7), max_trials=3)
    assert (mixed.max_trials, mixed.seed) == (3, 7)
    # replace takes both; a replaced section is replaced whole
    assert flat.replace(budget=BudgetConfig()).max_trials == 100
    assert flat.replace(min_latency_gain=0.1).latency == LatencyConfig(threads=2, min_gain=0.1)
    with pytest.raises(FrozenInstanceError):
        flat.max_trials = 3  # type: ignore[misc]


def test_to_dict_keeps_the_flat_keys_mlflow_and_studies_record():
    d = TuningConfig(storage="sqlite:///x.db", study_name="s").to_dict()
    assert list(d) == [
        "criterion", "tolerable_loss", "higher_is_better", "objective", "strategy",
        "max_trials", "timeout", "stop_on_first_pass", "max_failure_rate", "search",
        "approaches", "observers", "tie", "include_simulated", "prune_patterns",
        "prune_ratios", "prune_schedule", "prune_stages", "prune_ramp", "prune_epochs",
        "prune_lr_scales", "calib_samples",
        "latency_threads", "latency_repeats", "latency_warmup", "min_latency_gain",
        "latency_mode", "latency_verify_top",
        "metric_bounds", "seed", "backend", "storage", "study_name", "heartbeat_interval",
        "qat_epochs", "qat_lr_scales", "qat_steps", "qat_trials", "qat_learn_scales",
        "qat_freeze_bn_at",
    ]  # fmt: skip
    assert TuningConfig(**d) == TuningConfig(storage="sqlite:///x.db", study_name="s")


def test_unknown_keywords_and_wrong_sections_are_named():
    with pytest.raises(TypeError, match="unknown setting 'max_trial'"):
        TuningConfig(max_trial=3)
    with pytest.raises(ConfigError, match="TuningConfig.goal must be a GoalConfig"):
        TuningConfig(goal=BudgetConfig())
    with pytest.raises(ConfigError, match=r"TuningConfig.min_latency_gain \(latency.min_gain\)"):
        LatencyConfig(min_gain=2.0)


def test_config_and_callbacks_import_without_torch_or_optuna():
    code = (
        "import sys, autoquant.tuning.config, autoquant.tuning.callbacks, autoquant.tuning;"
        "autoquant.tuning.TuningConfig(max_trials=2);"
        "print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_strategy_name_is_accepted():
    assert available_strategies() == sorted(
        ["basic", "sensitivity", "tpe", "nsga2", "gp", "random", "bruteforce"]
    )
    for name in available_strategies():
        assert TuningConfig(strategy=name).strategy == name


# -- the accuracy goal ----------------------------------------------------------------------


def test_relative_higher_is_better():
    c = TuningConfig(criterion="relative", tolerable_loss=0.01, higher_is_better=True)
    assert c.loss(0.80, 0.792) == pytest.approx(0.01)
    assert c.loss(0.80, 0.85) == pytest.approx(-0.0625)  # better than baseline: negative
    assert c.target(0.80) == pytest.approx(0.792)
    assert c.meets(0.80, 0.792) and c.meets(0.80, 0.80) and c.meets(0.80, 0.9)
    assert not c.meets(0.80, 0.7919)


def test_absolute_higher_is_better():
    c = TuningConfig(criterion="absolute", tolerable_loss=0.02)
    assert c.loss(0.80, 0.79) == pytest.approx(0.01)
    assert c.target(0.80) == pytest.approx(0.78)
    assert c.meets(0.80, 0.78) and not c.meets(0.80, 0.7799)


def test_relative_lower_is_better():
    # e.g. perplexity or error rate: a higher value is a loss
    c = TuningConfig(criterion="relative", tolerable_loss=0.05, higher_is_better=False)
    assert c.loss(20.0, 21.0) == pytest.approx(0.05)
    assert c.loss(20.0, 19.0) == pytest.approx(-0.05)
    assert c.target(20.0) == pytest.approx(21.0)
    assert c.meets(20.0, 21.0) and c.meets(20.0, 5.0) and not c.meets(20.0, 21.01)


def test_absolute_lower_is_better():
    c = TuningConfig(criterion="absolute", tolerable_loss=0.5, higher_is_better=False)
    assert c.loss(3.0, 3.25) == pytest.approx(0.25)
    assert c.target(3.0) == pytest.approx(3.5)
    assert c.meets(3.0, 3.5) and not c.meets(3.0, 3.51)


def test_relative_uses_the_magnitude_of_a_negative_baseline():
    # a negative log-likelihood style metric where higher is better
    c = TuningConfig(criterion="relative", tolerable_loss=0.1)
    assert c.loss(-2.0, -2.2) == pytest.approx(0.1)
    assert c.target(-2.0) == pytest.approx(-2.2)
    assert c.meets(-2.0, -2.2) and not c.meets(-2.0, -2.21)


def test_zero_baseline_and_non_finite_values():
    c = TuningConfig(criterion="relative", tolerable_loss=0.01)
    assert c.loss(0.0, 0.0) == 0.0
    assert c.loss(0.0, -0.1) == math.inf
    assert not c.meets(0.9, math.nan)
    assert not c.meets(0.9, math.inf)  # a metric that blew up is never a pass
    assert not c.meets(0.9, -math.inf)


def test_zero_tolerance_accepts_only_no_loss():
    c = TuningConfig(tolerable_loss=0)
    assert c.meets(0.95, 0.95) and c.meets(0.95, 0.96) and not c.meets(0.95, 0.9499)


@given(
    criterion=st.sampled_from(["relative", "absolute"]),
    higher=st.booleans(),
    baseline=st.floats(-1e3, 1e3, allow_nan=False).filter(lambda b: abs(b) > 1e-3),
    tol=st.floats(0.0, 10.0, allow_nan=False),
)
def test_target_is_exactly_the_boundary_of_meets(criterion, higher, baseline, tol):
    c = TuningConfig(criterion=criterion, tolerable_loss=tol, higher_is_better=higher)
    target = c.target(baseline)
    assert c.meets(baseline, target)
    assert c.loss(baseline, target) == pytest.approx(tol, abs=1e-9)
    assert c.meets(baseline, baseline)  # no change is never a loss
    step = 1e-6 * max(1.0, abs(target))
    worse = target - step if higher else target + step
    assert not c.meets(baseline, worse)
    # direction: moving the value the "good" way never loses
    better = baseline + 1.0 if higher else baseline - 1.0
    assert c.loss(baseline, better) < 0
