"""The one definition of "passes" and "better" (``autoquant.tuning.objective``): the
latency margin, ties going to the smaller model, exact sizes, the fallback when nothing
passes, the Pareto front, and that strategies use the same rule."""

from __future__ import annotations

import pytest

from autoquant.plan import Plan
from autoquant.tuning import TuningConfig, objective
from autoquant.tuning.result import Metrics, TrialRecord

PLAN = Plan({"fc": None}, {"fc": "Linear"})


def rec(number, latency, size, loss=0.0, passed=True, cached_from=None):
    m = Metrics(accuracy=1 - loss, loss=loss, latency_ms=latency, latency_p90_ms=latency,
                size_bytes=size)  # fmt: skip
    state = "pass" if passed else "fail"
    return TrialRecord(number, {}, PLAN, state, m, cached_from=cached_from, passed=passed)


def test_passes_is_the_config_goal():
    config = TuningConfig(tolerable_loss=0.01)
    assert objective.passes(config, 0.80, 0.792) and not objective.passes(config, 0.80, 0.79)
    assert not objective.passes(config, 0.80, float("nan"))


@pytest.mark.parametrize(
    ("name", "values"),
    [("latency", [2.0]), ("size", [300.0]), ("latency+size", [2.0, 300.0])],
)
def test_objective_values_are_what_optuna_minimises(name, values):
    config = TuningConfig(objective=name)
    assert objective.objective_values(config, rec(0, 2.0, 300).metrics) == values
    assert objective.n_objectives(config) == len(values)


def test_best_ties_latencies_within_the_margin_and_prefers_the_smaller_model():
    config = TuningConfig(min_latency_gain=0.03)
    fast_big, close_small, slow_tiny = rec(0, 1.00, 500), rec(1, 1.02, 400), rec(2, 1.10, 100)
    assert objective.best([fast_big, close_small, slow_tiny], config) is close_small
    assert objective.best([fast_big, slow_tiny], config) is fast_big
    # size is exact: smallest, then fastest
    size = TuningConfig(objective="size")
    assert objective.best([fast_big, close_small, slow_tiny], size) is slow_tiny


def test_better_needs_a_clear_latency_gain_but_any_size_gain():
    config = TuningConfig(min_latency_gain=0.03)
    old = rec(0, 1.00, 500)
    assert not objective.better(config, rec(1, 0.98, 100), old)  # within the noise
    assert objective.better(config, rec(1, 0.96, 900), old)
    assert objective.better(TuningConfig(objective="size"), rec(1, 5.0, 499), old)
    failing = rec(2, 0.5, 10, loss=0.2, passed=False)
    assert objective.better(config, old, failing) and not objective.better(config, failing, old)
    assert objective.better(config, rec(3, 9, 9, loss=0.1, passed=False), failing)
    assert objective.better(config, old, None)


def test_strategies_use_the_same_rule(cancer):
    from autoquant import discover, get_backend
    from autoquant.tuning import SearchSpace, StrategyContext, get_strategy

    config = TuningConfig()
    space = SearchSpace.build(
        cancer.model, discover(cancer.model), get_backend("x86"), config, calibrated=True
    )
    strategy = get_strategy("basic")(StrategyContext(space, config, rec(0, 1, 1).metrics, dict))
    old = rec(0, 1.00, 500)
    for new in (rec(1, 0.98, 100), rec(1, 0.96, 900), rec(2, 0.5, 10, loss=0.2, passed=False)):
        assert strategy.better(new, old) == objective.better(config, new, old)


def test_most_accurate_and_the_pareto_front():
    a, b = rec(0, 2.0, 100, loss=0.05, passed=False), rec(1, 1.0, 100, loss=0.05, passed=False)
    assert objective.most_accurate([a, b]) is b
    dominated, low_loss, fast = rec(2, 3.0, 50, loss=0.02), rec(3, 2.0, 90), rec(4, 1.0, 80, 0.01)
    copy = rec(5, 2.0, 90, cached_from=3)
    front = objective.pareto_front([dominated, low_loss, fast, copy], "latency")
    assert front == [low_loss, fast]  # sorted by (loss, latency); cached copies left out
    size_front = objective.pareto_front([dominated, low_loss, fast], "size")
    assert size_front == [low_loss, fast, dominated]
