"""The search (``autoquant.tuning.tune``, autoquant/tuning/_search.py) on real models trained in the
session: calibration and baseline once, memory, failures, timeout, pruning, cache,
what each Optuna trial records, and the unreachable goal.

Most studies run on the breast-cancer MLP whose ``fc1`` is quantization-hostile (see
``_helpers``): every plan quantizing ``fc1`` misses a 1% goal, every plan keeping it in
fp32 meets it. Budgets are small and latency runs are cheap (``fast_config``).
"""

from __future__ import annotations

import gc
import math
import time
import warnings
import weakref
from collections import Counter

import optuna
import pytest
import torch

from autoquant import quant_info
from autoquant.errors import ConfigError
from autoquant.plan import Plan
from autoquant.tuning import GoalNotMetWarning, Reporter, TuningError, tune

from ._helpers import HOSTILE_LAYER, fast_config

FAIL, PRUNED, COMPLETE = (
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.COMPLETE,
)


def quiet_tune(*args, **kwargs):
    """tune() when the goal may be missed on purpose (the warning is tested elsewhere)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GoalNotMetWarning)
        return tune(*args, **kwargs)


def evaluated(result):
    return [r for r in result.trials if r.evaluated]


# -- the goal is met when it is reachable ---------------------------------------------------


def test_goal_met_on_the_digits_cnn(digits_model, digits_data, digits_calib):
    from autoquant.examples.digits import accuracy

    x, y = digits_data["x_test"], digits_data["y_test"]
    result = tune(
        digits_model,
        lambda m: accuracy(m, x, y),
        calib_data=digits_calib,
        config=fast_config(strategy="basic", stop_on_first_pass=True, max_trials=4),
    )
    assert result.met and result.stopped_because == "first pass"
    assert result.baseline.accuracy == accuracy(digits_model, x, y)
    assert result.best.loss <= 0.01
    assert result.best_plan.quantized
    # the best model is rebuilt from its plan; builds are deterministic
    assert accuracy(result.best_model, x, y) == result.best.accuracy
    assert quant_info(result.best_model).plan.hash == result.best_plan.hash
    assert set(quant_info(result.best_model).kernels) == set(result.best_plan.quantized)
    assert result.calibration_passes == 1
    assert "goal MET" in result.summary()


# -- calibrate once, evaluate the baseline once ---------------------------------------------


class PassCounter:
    """Counts forward passes through the float model with forward pre-hooks.

    quantize() and calibration deep-copy the model, and a deep copy carries the hooks
    along (plain functions are shared by deepcopy, so the copies count into the same
    counters; a bound method would be copied together with its counters).

    * On the model itself: only passes where the hook's module *is* the float model count.
    * On ``fc1``: its copies inside the calibration graph and the fp32 ``fc1`` of
      candidates run the hook too, so this sees every float ``fc1`` pass of every copy; a
      pass is attributed to calibration batch ``b`` when fc1's input is
      ``calib[b] * in_scale``.
    """

    def __init__(self, task) -> None:
        model = task.model
        self.top: Counter[str] = Counter()
        self.fc1_calib: Counter[int] = Counter()

        def top_hook(module, args):
            if module is model:
                self.top["eval data" if args[0] is task.x_test else "other"] += 1

        def fc1_hook(module, args):
            x = args[0]
            for b, batch in enumerate(task.calib):
                if x.shape == batch.shape and torch.equal(x, batch * model.in_scale):
                    self.fc1_calib[b] += 1

        self.handles = [
            model.register_forward_pre_hook(top_hook),
            model.fc1.register_forward_pre_hook(fc1_hook),
        ]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize(
    ("approaches", "calibrations"), [(("static", "dynamic"), 1), (("dynamic",), 0)]
)
def test_calibration_runs_once_and_the_baseline_is_evaluated_once(cancer, approaches, calibrations):
    float_calls = []

    def eval_fn(model):
        float_calls.append(model is cancer.model)
        return cancer.accuracy(model)

    counter = PassCounter(cancer)
    try:
        # sensitivity also runs the first 32 calibration samples (batch 0 and 7 samples of
        # batch 1) through models for its cheap scores; batches 1-3 in full only ever go
        # through the model for calibration.
        result = tune(
            cancer.model,
            eval_fn,
            calib_data=cancer.calib,
            config=fast_config(strategy="sensitivity", max_trials=5, approaches=approaches),
        )
    finally:
        counter.close()
    assert result.calibration_passes == calibrations
    assert [counter.fc1_calib[b] for b in (1, 2, 3)] == [calibrations] * 3
    # the float model ran the user's metric once: the baseline
    assert counter.top["eval data"] == 1
    assert float_calls.count(True) == 1 and float_calls[0] is True
    assert len(float_calls) == 1 + result.n_evaluations
    assert result.met and result.best_plan[HOSTILE_LAYER] is None


def test_callbacks_build_plans_from_the_study_statistics_without_recalibrating(cancer):
    from autoquant.tuning import TuningCallback

    class SaveBest(TuningCallback):
        def on_start(self, *, build, **_):
            self.build, self.models = build, {}

        def on_trial(self, record, *, evaluations, best):
            if best is not None and best.plan_hash not in self.models:
                self.models[best.plan_hash] = self.build(best.plan)

    saver, counter = SaveBest(), PassCounter(cancer)
    try:
        result = tune(
            cancer.model,
            cancer.accuracy,
            calib_data=cancer.calib,
            config=fast_config(strategy="sensitivity", max_trials=5),
            callbacks=[saver],
        )
    finally:
        counter.close()
    assert result.met and result.calibration_passes == 1
    assert [counter.fc1_calib[b] for b in (1, 2, 3)] == [1, 1, 1]  # calibration only
    assert saver.models  # a passing trial was seen and built while the search ran
    x = cancer.calib[0]
    for plan_hash, built in saver.models.items():
        assert quant_info(built).plan.hash == plan_hash
    built = saver.build(result.best_plan)
    assert torch.equal(built(x), result.best_model(x))
    assert [counter.fc1_calib[b] for b in (1, 2, 3)] == [1, 1, 1]
    assert result.finished_study  # no storage: this process is the only worker


# -- memory: the float model plus one candidate ---------------------------------------------


def test_at_most_one_candidate_is_alive_during_an_evaluation(cancer):
    candidates: list[weakref.ref] = []
    alive_at_call: list[int] = []

    def eval_fn(model):
        # Collect first: torch.fx GraphModules are reference cycles, freed by the cyclic
        # GC, not on the last `del`. What is tested is that the engine keeps no reference.
        gc.collect()
        if model is not cancer.model:
            alive_at_call.append(sum(r() is not None for r in candidates))
            candidates.append(weakref.ref(model))
        return cancer.accuracy(model)

    result = tune(
        cancer.model,
        eval_fn,
        calib_data=cancer.calib,
        config=fast_config(strategy="random", max_trials=5),
    )
    assert result.n_evaluations == 5
    assert alive_at_call == [0] * 5  # no earlier candidate survives into the next trial
    del result
    gc.collect()
    assert all(r() is None for r in candidates)


def test_dropped_candidates_are_freed_without_waiting_for_the_cyclic_gc(cancer):
    candidates: list[weakref.ref] = []
    alive_at_call: list[int] = []

    def eval_fn(model):
        if model is not cancer.model:
            alive_at_call.append(sum(r() is not None for r in candidates))
            candidates.append(weakref.ref(model))
        return cancer.accuracy(model)

    gc.collect()
    gc.disable()
    try:
        tune(
            cancer.model,
            eval_fn,
            calib_data=cancer.calib,
            config=fast_config(strategy="random", max_trials=3, stop_on_first_pass=True),
        )
    finally:
        gc.enable()
        gc.collect()
    assert alive_at_call == [0] * len(alive_at_call)


# -- failures -------------------------------------------------------------------------------


def test_errors_nans_and_out_of_memory_are_recorded_and_the_study_goes_on(cancer):
    outcomes = [
        "ok",
        RuntimeError("boom in eval"),
        math.nan,
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        math.inf,
        "ok",
        "ok",
    ]
    calls = []

    def eval_fn(model):
        if model is cancer.model:
            return cancer.accuracy(model)
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome if isinstance(outcome, float) else cancer.accuracy(model)

    result = quiet_tune(
        cancer.model,
        eval_fn,
        calib_data=cancer.calib,
        config=fast_config(strategy="random", max_trials=8, max_failure_rate=1.0),
    )
    runs = evaluated(result)
    assert len(runs) == 8 and result.stopped_because == "max_trials"
    assert [r.state == "error" for r in runs] == [False, True, True, True, True, True, False, False]
    errors = [r.error for r in runs if r.state == "error"]
    assert errors[0].startswith("RuntimeError: boom in eval at ")
    assert "test_search.py:" in errors[0]  # where it was raised
    assert errors[1].startswith("FloatingPointError: eval_fn returned nan")
    assert errors[2].startswith("out of memory: ")
    assert errors[3].startswith("out of memory: CUDA out of memory")
    assert errors[4].startswith("FloatingPointError: eval_fn returned inf")
    by_number = {t.number: t for t in result.study.trials}
    for r in runs:
        trial = by_number[r.number]
        if r.state == "error":
            assert trial.state == FAIL and r.metrics is None
            assert trial.user_attrs["error"] == r.error
            assert trial.user_attrs["state"] == "error"
            assert Plan.from_dict(trial.user_attrs["plan"]) == r.plan
        else:
            assert trial.state == COMPLETE and r.metrics is not None
    # failed trials never become the result
    assert result.trials[result.best_trial].state in ("pass", "fail")


def test_too_many_failures_stop_the_study(cancer):
    candidates = 0

    def eval_fn(model):
        nonlocal candidates
        if model is not cancer.model:
            candidates += 1
            if candidates > 1:  # every candidate after the first fails
                raise ValueError("eval data went missing")
        return cancer.accuracy(model)

    result = quiet_tune(
        cancer.model,
        eval_fn,
        calib_data=cancer.calib,
        config=fast_config(strategy="random", max_trials=20, max_failure_rate=0.5),
    )
    # stops as soon as more than half of at least 4 evaluations failed: 3 of 4
    assert result.n_evaluations == 4
    assert result.stopped_because == "failure rate 3/4 above max_failure_rate=0.5"
    assert result.best_trial == 0 and result.best_model is not None


def test_every_trial_failing_is_a_tuning_error_that_lists_the_errors(cancer):
    def eval_fn(model):
        if model is cancer.model:
            return cancer.accuracy(model)
        raise KeyError("label column")

    with pytest.raises(TuningError, match="no trial produced a quantized model") as info:
        tune(cancer.model, eval_fn, calib_data=cancer.calib, config=fast_config())
    assert "KeyError: 'label column'" in str(info.value)
    assert "failure rate 4/4" in str(info.value)


def test_bad_inputs_fail_before_any_trial(cancer):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        tune(cancer.accuracy, cancer.accuracy, calib_data=cancer.calib)
    with pytest.raises(TypeError, match="eval_fn must be callable"):
        tune(cancer.model, 0.95, calib_data=cancer.calib)
    with pytest.raises(ConfigError, match="needs inputs to time the model"):
        tune(cancer.model, cancer.accuracy, calib_data=None)
    with pytest.raises(ConfigError, match="returned nan for the float model"):
        tune(cancer.model, lambda m: math.nan, calib_data=cancer.calib, config=fast_config())


def test_an_unknown_strategy_fails_before_the_model_is_touched(cancer):
    # Strategy names are checked where strategies are looked up (not in TuningConfig,
    # which stays free of the strategy registry): first thing in tune().
    calls = []

    def eval_fn(model):
        calls.append(model)
        return 1.0

    with pytest.raises(ConfigError) as info:
        tune(cancer.model, eval_fn, calib_data=cancer.calib, config=fast_config(strategy="grid"))
    msg = str(info.value)
    assert "TuningConfig.strategy" in msg and "'grid'" in msg and "'tpe'" in msg
    assert calls == []


def test_eval_fn_must_return_a_number(cancer):
    def eval_fn(model):
        return cancer.accuracy(model) if model is cancer.model else "0.9"

    result = quiet_tune(
        cancer.model,
        eval_fn,
        calib_data=cancer.calib,
        config=fast_config(strategy="random", max_trials=2, max_failure_rate=1.0),
    )
    # "0.9" converts; a dict does not
    assert all(r.state in ("pass", "fail") for r in evaluated(result))

    def eval_dict(model):
        return cancer.accuracy(model) if model is cancer.model else {"acc": 0.9}

    with pytest.raises(TuningError, match="eval_fn must return a number"):
        tune(cancer.model, eval_dict, calib_data=cancer.calib, config=fast_config())


def test_without_calibration_data_only_dynamic_and_weight_only_are_tried(cancer):
    result = tune(
        cancer.model,
        cancer.accuracy,
        calib_data=None,
        example_inputs=cancer.example,
        config=fast_config(strategy="sensitivity", max_trials=4),
    )
    assert result.calibration_passes == 0
    for r in evaluated(result):
        assert {c.approach for c in r.plan.values() if c is not None} <= {
            "dynamic",
            "weight_only",
        }
    assert result.met and result.best_plan[HOSTILE_LAYER] is None


# -- budget: max_trials and timeout ---------------------------------------------------------


def test_max_trials_counts_evaluations(cancer):
    calls = []
    result = quiet_tune(
        cancer.model,
        lambda m: calls.append(m) or cancer.accuracy(m),
        calib_data=cancer.calib,
        config=fast_config(strategy="random", max_trials=3),
    )
    assert result.n_evaluations == 3 and result.stopped_because == "max_trials"
    assert len(calls) == 1 + 3  # the baseline is not a trial


def test_stop_on_first_pass(cancer):
    result = tune(
        cancer.model,
        cancer.accuracy,
        calib_data=cancer.calib,
        config=fast_config(strategy="sensitivity", stop_on_first_pass=True, max_trials=10),
    )
    assert result.stopped_because == "first pass"
    assert result.trials[-1].passed and sum(r.passed for r in result.trials) == 1


def test_timeout_is_a_wall_clock_bound(cancer):
    # generous enough for the baseline and one trial on a loaded 2-core machine
    sleep_s, timeout = 0.25, 3.0

    def slow_eval(model):
        if model is not cancer.model:
            time.sleep(sleep_s)
        return cancer.accuracy(model)

    t0 = time.monotonic()
    result = quiet_tune(
        cancer.model,
        slow_eval,
        calib_data=cancer.calib,
        config=fast_config(strategy="random", max_trials=100, timeout=timeout),
    )
    wall = time.monotonic() - t0
    assert result.stopped_because == "timeout"
    assert 1 <= result.n_evaluations < 100
    # checked before every trial: at most one trial (sleep + build + measure) overruns it
    assert wall < timeout + sleep_s + 3.0, wall
    assert result.elapsed_s <= wall


def test_timeout_interrupts_an_evaluation_that_reports(cancer):
    # 5 s leaves room for the baseline and the quick first candidate on a loaded 2-core
    # machine (2 s did not); the slow candidates then take 9 x 0.25 s each.
    sleep_s, timeout = 0.25, 5.0
    n = cancer.n_batches()
    batches: list[int] = []  # batches run per candidate

    def eval_fn(model, report):
        if model is cancer.model:
            return cancer.batched_accuracy(model, report)
        batches.append(0)
        slow = len(batches) > 1  # the first candidate is quick, later ones take 9 x 0.25 s

        def on_batch(i):
            batches[-1] += 1
            if slow:
                time.sleep(sleep_s)

        return cancer.batched_accuracy(model, report, on_batch=on_batch)

    t0 = time.monotonic()
    result = quiet_tune(
        cancer.model,
        eval_fn,
        calib_data=cancer.calib,
        config=fast_config(strategy="random", max_trials=100, timeout=timeout),
    )
    wall = time.monotonic() - t0
    assert result.stopped_because == "timeout"
    interrupted = result.trials[-1]
    assert interrupted.state == "pruned"
    assert interrupted.error == "timeout during evaluation"
    assert batches[0] == n and 1 <= batches[-1] < n  # stopped mid-evaluation
    assert result.study.trials[-1].state == PRUNED
    # returns within the timeout plus one batch (and the final build); the batch count
    # above is what shows the evaluation was cut short (a full one takes 9 x 0.25 s)
    assert wall < timeout + sleep_s + 2.0, wall


# -- pruning ----------------------------------------------------------------------------------


def test_hopeless_trials_are_pruned_as_soon_as_the_goal_is_out_of_reach(cancer):
    n = cancer.n_batches()
    reports: list[list[tuple[float, float]]] = []

    def eval_fn(model, report):
        if model is cancer.model:
            assert not isinstance(report, Reporter)  # the baseline is never pruned
            return cancer.batched_accuracy(model, report)
        assert isinstance(report, Reporter)
        reports.append([])

        def send(value, fraction):
            reports[-1].append((value, fraction))
            report(value, fraction)

        return cancer.batched_accuracy(model, send)

    result = tune(
        cancer.model,
        eval_fn,
        calib_data=cancer.calib,
        config=fast_config(strategy="basic", metric_bounds=1.0, max_trials=25),
    )
    assert result.met and result.best_plan[HOSTILE_LAYER] is None
    runs = evaluated(result)
    assert len(runs) == len(reports)
    # The first trial runs to the end even though it is hopeless: with nothing scored
    # yet, it is the model an unreachable goal would fall back to.
    assert runs[0].state == "fail" and len(reports[0]) == n
    target = result.config.target(result.baseline.accuracy)
    pruned = [(r, sent) for r, sent in zip(runs, reports, strict=True) if r.state == "pruned"]
    assert pruned, [r.state for r in runs]
    by_number = {t.number: t for t in result.study.trials}
    for r, sent in pruned:
        assert r.plan[HOSTILE_LAYER] is not None  # only plans quantizing fc1 are hopeless
        assert len(sent) < n  # stopped before the last batch
        # ... at the first report where even perfect remaining samples miss the target
        reachable = [v * f + 1.0 * (1 - f) for v, f in sent]
        assert reachable[-1] < target
        assert all(x >= target for x in reachable[:-1])
        assert r.error.startswith("cannot meet the goal")
        trial = by_number[r.number]
        assert trial.state == PRUNED
        # partial results went to Optuna as intermediate values
        assert trial.intermediate_values == {i + 1: v for i, (v, _) in enumerate(sent)}
    for r, sent in zip(runs, reports, strict=True):
        if r.state != "pruned":
            assert len(sent) == n and r.metrics is not None


def test_unreachable_goal_with_pruning_still_returns_a_model(cancer):
    def eval_fn(model, report):
        # every quantized model scores half a point less, on every batch: unreachable
        penalty = 0.0 if model is cancer.model else 0.5
        send = lambda value, fraction: report(value - penalty, fraction)  # noqa: E731
        return cancer.batched_accuracy(model, send) - penalty

    result = quiet_tune(
        cancer.model,
        eval_fn,
        calib_data=cancer.calib,
        config=fast_config(strategy="random", metric_bounds=1.0, max_trials=3),
    )
    assert not result.met and result.best_model is not None


# -- the cache ---------------------------------------------------------------------------------


def test_duplicate_plans_hit_the_cache(digits_model, digits_data, digits_calib):
    from autoquant.examples.digits import accuracy

    x, y = digits_data["x_test"], digits_data["y_test"]
    calls = []
    # 2 units (Conv2d: static | fp32; Linear: static | dynamic | fp32): 5 quantized plans
    config = fast_config(
        strategy="random",
        tie="op_type",
        search=("approach",),
        approaches=("static", "dynamic"),
        max_trials=12,
        tolerable_loss=0.05,
    )
    result = tune(
        digits_model,
        lambda m: calls.append(m) or accuracy(m, x, y),
        calib_data=digits_calib,
        config=config,
    )
    runs = evaluated(result)
    hashes = [r.plan_hash for r in runs]
    assert len(hashes) == len(set(hashes)) == 5  # every plan evaluated exactly once
    assert len(calls) == 1 + 5
    assert result.n_evaluations == 5 <= config.max_trials
    assert result.stopped_because.startswith("no new plans")
    cached = [r for r in result.trials if r.state == "cached"]
    assert cached
    by_number = {t.number: t for t in result.study.trials}
    for r in cached:
        source = result.trials[r.cached_from]
        assert source.evaluated and source.plan_hash == r.plan_hash
        assert r.metrics == source.metrics and r.passed == source.passed
        assert by_number[r.number].user_attrs["cached_from"] == source.number
        assert by_number[r.number].user_attrs["metrics"] == source.metrics.to_dict()
    skipped = [r for r in result.trials if r.state == "skipped"]
    assert all(not r.plan.quantized for r in skipped)
    # The all-float plan is told to Optuna as an infeasible complete trial (so samplers
    # learn it is not a result) with the baseline's objective values.
    for r in skipped:
        trial = by_number[r.number]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.constraints["all_float"] == 1.0
        assert trial.values == [result.baseline.latency_ms]


# -- what each trial records -------------------------------------------------------------------


def test_trials_record_plan_metrics_and_the_accuracy_constraint(cancer):
    config = fast_config(strategy="sensitivity", max_trials=6)
    result = tune(cancer.model, cancer.accuracy, calib_data=cancer.calib, config=config)
    study = result.study
    assert len(study.trials) == len(result.trials)
    assert study.user_attrs["baseline"] == result.baseline.to_dict()
    assert study.user_attrs["config"]["strategy"] == "sensitivity"
    assert study.user_attrs["config"]["observers"] == ["minmax", "percentile"]
    for r, trial in zip(result.trials, study.trials, strict=True):
        attrs = trial.user_attrs
        assert attrs["plan_hash"] == r.plan_hash
        assert attrs["state"] == r.state
        assert Plan.from_dict(attrs["plan"]) == r.plan
        assert Plan.from_dict(attrs["plan"]).hash == r.plan_hash
        assert attrs["fp32_ops"] == [f for f, c in r.plan.items() if c is None]
        assert trial.params == r.params
        assert r.metrics is not None  # this study has no failures
        assert attrs["metrics"] == r.metrics.to_dict()
        assert trial.state == COMPLETE
        assert trial.values == [r.metrics.latency_ms]
        # accuracy is a constraint (feasible <= 0), stored the Optuna 5 way
        expected = r.metrics.loss - config.tolerable_loss
        assert trial.constraints == {"accuracy_loss": pytest.approx(expected), "all_float": -1.0}
        assert trial.system_attrs["constraints:accuracy_loss"] == pytest.approx(expected)
        assert (expected <= 0) == r.passed
        if r.evaluated:
            assert set(attrs["timings"]) == {"build_s", "eval_s", "measure_s", "total_s"}
        else:
            assert r.state == "cached" and attrs["cached_from"] == r.cached_from
    assert result.n_evaluations == sum(r.evaluated for r in result.trials)


# -- an unreachable goal -------------------------------------------------------------------------


def test_unreachable_goal_returns_the_best_quantized_model_and_says_so(cancer):
    with torch.inference_mode():
        reference = cancer.model(cancer.x_test)

    def fidelity(model):
        """-MSE of the logits against the float model's: 0 for the float model, < 0 for
        any quantized one, so an absolute loss of 0 is out of reach."""
        with torch.inference_mode():
            return -float((model(cancer.x_test) - reference).pow(2).mean())

    config = fast_config(
        strategy="basic",
        criterion="absolute",
        tolerable_loss=0.0,
        search=("approach",),
        approaches=("static", "dynamic"),
        max_trials=12,
    )
    with pytest.warns(GoalNotMetWarning, match="no quantized model met the goal") as record:
        result = tune(cancer.model, fidelity, calib_data=cancer.calib, config=config)
    assert len(record) == 1
    assert "returning the most accurate one found" in str(record[0].message)
    assert result.met is False
    assert result.best_model is not None
    assert result.best_plan.quantized  # never the all-float plan
    assert quant_info(result.best_model).kernels
    assert fidelity(result.best_model) == pytest.approx(result.best.accuracy)
    scored = [r for r in result.trials if r.metrics is not None and r.cached_from is None]
    assert all(r.plan.quantized and not r.passed for r in scored)
    assert result.best.loss == min(r.metrics.loss for r in scored) > 0
    assert result.stopped_because == "strategy finished"
    assert "goal NOT MET" in result.summary()
    for r in result.trials:
        if not r.plan.quantized:
            assert r.state == "skipped" and "all-float plan is the baseline" in r.error
