"""The quantization-aware training phase of ``tune`` (``"qat"`` in ``approaches``).

INC's order: the post-training search runs first; QAT trials run only when none of its
plans met the goal (or when ``"qat"`` is the only approach asked for). They start from
the most accurate post-training plan (its static ops become ``qat`` ops) and the study's
calibration statistics, and try the fine-tuning budgets of
:class:`~autoquant.tuning.config.QATSearchConfig` in order until one meets the goal.

A QAT trial = ``prepare_qat`` (a new model; the user's is never touched) -> the user's
``train_fn`` on it -> ``convert`` (the backend's static build) -> evaluate -> measure,
told to the study like any trial (params: ``qat_budget``; timings: ``train_s``). A
``train_fn`` that raises, or training that leaves NaN behind, fails that trial with its
message; the study goes on.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from autoquant.tuning import objective
from autoquant.tuning.result import Metrics, TrialRecord

__all__ = ["QAT_PARAM", "needs_qat_phase", "qat_plan", "run_qat_phase"]

log = logging.getLogger("autoquant.tuning")
QAT_PARAM = "qat_budget"


def qat_plan(plan: Any) -> Any:
    """``plan`` with its static ops as ``qat`` ops (what a QAT trial trains)."""
    changed = {
        f: c.replace(approach="qat")
        for f, c in plan.items()
        if c is not None and c.approach == "static"
    }
    return plan.with_configs(changed) if changed else plan


def needs_qat_phase(config: Any, records: Sequence[TrialRecord]) -> bool:
    if "qat" not in config.approaches:
        return False
    if set(config.approaches) == {"qat"}:
        return True
    return not any(r.passed for r in records if r.metrics is not None)


def _run_one(
    engine: Any,
    number: int,
    plan: Any,
    budget: Any,
    train_fn: Callable[..., Any],
    baseline: Metrics,
) -> tuple[TrialRecord, Any]:
    from autoquant.qat import QATConfig, convert, prepare_qat
    from autoquant.qat.train import call_train_fn

    record = TrialRecord(
        number=number, params={QAT_PARAM: budget.label()}, plan=plan, state="error"
    )
    config = engine.config
    t0 = time.perf_counter()
    converted = None
    try:
        qat = prepare_qat(
            engine.model,
            plan,
            engine.calib_data,
            backend=engine.backend,
            stats=engine.stats,
            config=QATConfig(
                learn_scales=config.qat.learn_scales,
                freeze_bn_at=config.qat.freeze_bn_at,
                max_samples=config.calib_samples,
            ),
            allow_saturation=True,  # the space already chose reduce_range where needed
        )
        t1 = time.perf_counter()
        call_train_fn(train_fn, qat, budget)
        t2 = time.perf_counter()
        converted = convert(qat)
        del qat
        t3 = time.perf_counter()
        accuracy = engine._evaluate(converted, None)
        t4 = time.perf_counter()
        if not math.isfinite(accuracy):
            raise FloatingPointError(f"eval_fn returned {accuracy}")
        record.metrics = engine._measure(converted, accuracy, baseline.accuracy)
        t5 = time.perf_counter()
        record.timings = {
            "prepare_s": t1 - t0,
            "train_s": t2 - t1,
            "build_s": t3 - t2,
            "eval_s": t4 - t3,
            "measure_s": t5 - t4,
        }
        record.passed = objective.passes(config, baseline.accuracy, accuracy)
        record.state = "pass" if record.passed else "fail"
    except Exception as exc:  # noqa: BLE001 - a failing trial must not end the study
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        record.state, record.error = "error", f"{type(exc).__name__}: {exc}{where}"
        converted = None
    record.timings["total_s"] = time.perf_counter() - t0
    return record, converted


def run_qat_phase(
    engine: Any,
    study: Any,
    baseline: Metrics,
    records: list[TrialRecord],
    train_fn: Callable[..., Any],
    callbacks: Sequence[Any] = (),
) -> tuple[list[TrialRecord], dict[int, Any]]:
    """Run the QAT trials; returns every record and the converted model of the best
    QAT trial (by trial number), which ``tune`` returns instead of rebuilding it."""
    from optuna.distributions import CategoricalDistribution

    from autoquant.tuning._coordination import Coordinator
    from autoquant.tuning._study import _tell

    config = engine.config
    scored = [r for r in records if r.metrics is not None and r.cached_from is None]
    ptq = [r for r in scored if QAT_PARAM not in r.params]
    if ptq and set(config.approaches) != {"qat"}:
        start = objective.most_accurate(ptq).plan
    else:
        start = engine.space.plan(engine.space.default_params())
    plan = qat_plan(start)
    budgets = config.qat.budgets()
    labels = [b.label() for b in budgets]
    done = {r.params.get(QAT_PARAM) for r in records if r.plan_hash == plan.hash}
    coord = Coordinator(
        study,
        shared=config.storage is not None,
        max_trials=config.max_trials,
        heartbeat_interval=config.heartbeat_interval,
        meets=lambda accuracy: objective.passes(config, baseline.accuracy, accuracy),
        plan_of=engine.space.plan,
    )
    log.info(
        "no post-training plan met the goal: %d QAT trial(s) from %s"
        if ptq
        else "QAT trials (%d) from %s",
        min(config.qat.trials, len(budgets)),
        f"trial {objective.most_accurate(ptq).number}'s plan" if ptq else "the default plan",
    )
    kept: dict[int, Any] = {}
    best: TrialRecord | None = None
    ran = 0
    for budget in budgets:
        if ran >= config.qat.trials:
            break
        if engine.deadline is not None and time.monotonic() >= engine.deadline:
            log.info("QAT phase stopped: timeout")
            break
        if budget.label() in done:
            continue  # resumed study / another worker ran it
        study.enqueue_trial({QAT_PARAM: budget.label()})
        trial = study.ask({QAT_PARAM: CategoricalDistribution(labels)})
        with coord.heartbeat(trial):
            record, converted = _run_one(engine, trial.number, plan, budget, train_fn, baseline)
            _tell(study, trial, record, engine)
        ran += 1
        records.append(record)
        log.info(
            "QAT trial %d (%s) %s: %s",
            record.number,
            budget.label(),
            record.state,
            record.error
            or f"accuracy {record.metrics.accuracy:.6g}, train {record.timings['train_s']:.1f} s",
        )
        if record.metrics is not None and converted is not None:
            better = best is None or (
                objective.best([best, record], config) is record
                if record.passed and best.passed
                else record.passed or (not best.passed and record.metrics.loss < best.metrics.loss)
            )
            if better:
                best, kept = record, {record.number: converted}
        passing = [r for r in records if r.passed and r.metrics is not None]
        overall = objective.best(passing, config) if passing else None
        evaluations = sum(r.evaluated for r in records)
        for cb in callbacks:
            cb.on_trial(record, evaluations=evaluations, best=overall)
        if record.passed:
            break
    return records, kept
