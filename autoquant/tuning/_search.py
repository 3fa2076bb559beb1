"""``tune``: the accuracy-aware search loop on Optuna's ask/tell interface.

One study per call. Before the first trial (:mod:`~autoquant.tuning._study`): discover
the ops, build the space, calibrate once (only if the space holds static configs) and
evaluate the float baseline once. Each trial: the strategy proposes parameters, the
coordinator decides whether they need evaluating (an identical plan's result is reused;
with workers sharing a study, nobody evaluates a plan twice), the runner
(:mod:`~autoquant.tuning._runner`) builds the candidate from the shared calibration
statistics, runs the user's metric, measures latency and size, and the outcome is told to
the study. "Passes" and "better" come from :mod:`~autoquant.tuning.objective`. At most
the float model and one candidate are alive at a time: the best model is rebuilt from its
plan at the end (builds are deterministic).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from autoquant.errors import GoalNotMetWarning, TuningError
from autoquant.tuning import objective
from autoquant.tuning._runner import Runner
from autoquant.tuning._study import _start, _tell
from autoquant.tuning.callbacks import TuningCallback
from autoquant.tuning.config import TuningConfig
from autoquant.tuning.result import Metrics, TrialRecord, TuningResult
from autoquant.tuning.strategies import SAMPLE, get_strategy

__all__ = ["tune"]

log = logging.getLogger("autoquant.tuning")
# One line per finished trial, on its own logger so a display that reports trials itself
# (the command line's progress) can silence these without hiding the rest.
trial_log = logging.getLogger("autoquant.tuning.trials")


def tune(
    model: nn.Module,
    eval_fn: Callable[..., float],
    *,
    calib_data: Iterable[Any] | None,
    config: TuningConfig | None = None,
    example_inputs: Any = None,
    callbacks: Sequence[TuningCallback] = (),
    train_fn: Callable[..., Any] | None = None,
) -> TuningResult:
    """Search per-op quantization configs for the fastest model that meets the goal.

    Args:
        model: the float model (never modified).
        eval_fn: ``eval_fn(model) -> float``, the user's metric on their validation data.
            A two-argument ``eval_fn(model, report)`` receives a :class:`Reporter` and may
            call ``report(value_so_far, fraction_done)`` per batch, so hopeless trials
            stop early.
        calib_data: model inputs for calibration (``TuningConfig.calib_samples`` of them
            are used, once); None restricts the space to dynamic and weight-only.
        config: the goal, objective, strategy, budget and space.
        example_inputs: inputs for latency measurement (default: the first calibration
            batch).
        callbacks: :class:`~autoquant.tuning.callbacks.TuningCallback` objects (MLflow
            tracking, progress display) told about the start, every trial and the end.
        train_fn: ``train_fn(model)`` or ``train_fn(model, budget)``, fine-tunes a model
            in place, on a copy: a QAT model (needed when ``"qat"`` is in ``approaches``;
            see :mod:`autoquant.tuning._qat`), and each pruned float model
            (``prune_patterns`` in the space) before it is calibrated, after which zeroed
            weights are masked again.
    """
    import optuna

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}.")
    if not callable(eval_fn):
        raise TypeError(
            f"eval_fn must be callable as eval_fn(model) -> float, but got {eval_fn!r}."
        )
    config = config or TuningConfig()
    # A misspelt strategy fails here, before the model is discovered or calibrated.
    get_strategy(config.strategy)
    calib_data = _check_qat(config, calib_data, train_fn)
    engine = Runner(model, eval_fn, calib_data, config, example_inputs, train_fn=train_fn)
    log.info("%s", engine.space.describe())
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Heartbeats and stale-trial reaping are "experimental" in Optuna and meant for
            # Study.optimize; we drive them from the ask/tell loop on purpose (one warning
            # per ask otherwise).
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            study, baseline, strategy = _start(engine, model, calib_data, config, callbacks)
            if set(config.approaches) == {"qat"}:
                records, stop = [], "qat only"
            else:
                records, stop = _search(engine, strategy, study, baseline, callbacks)
            qat_models: dict[int, nn.Module] = {}
            from autoquant.tuning._qat import needs_qat_phase, run_qat_phase

            if needs_qat_phase(config, records):
                assert train_fn is not None
                records, qat_models = run_qat_phase(
                    engine, study, baseline, records, train_fn, callbacks
                )
    finally:
        optuna.logging.set_verbosity(verbosity)
    result = _result(engine, study, records, baseline, stop, qat_models)
    result.sensitivity = strategy.context.scores
    for cb in callbacks:
        cb.on_end(result)
    return result


def _search(
    engine: Runner,
    strategy: Any,
    study: Any,
    baseline: Metrics,
    callbacks: Sequence[TuningCallback] = (),
) -> tuple[list[TrialRecord], str]:
    """Ask, decide, evaluate, tell until the study's budget or the strategy ends.

    Returns every finished trial of the study (other workers' and earlier runs'
    included) and why the search stopped.
    """
    import optuna

    from autoquant.tuning._coordination import Coordinator, Decision

    config = engine.config
    coord = Coordinator(
        study,
        shared=config.storage is not None,
        max_trials=config.max_trials,
        heartbeat_interval=config.heartbeat_interval,
        meets=lambda accuracy: objective.passes(config, baseline.accuracy, accuracy),
        plan_of=engine.space.plan,
    )
    coord.refresh()
    if coord.records:
        log.info(
            "resuming study %r: %d finished trials, %d evaluations",
            config.study_name,
            len(coord.records),
            coord.evaluations,
        )
    asked = 0
    max_asks = 10 * config.max_trials + 50

    def finish(stop: str) -> tuple[list[TrialRecord], str]:
        coord.refresh()
        return [coord.records[n] for n in sorted(coord.records)], stop

    steps = strategy.steps()
    try:
        proposal = next(steps)
    except StopIteration:
        return finish("strategy proposed nothing")
    distributions = engine.space.distributions()
    while True:
        budget = coord.budget()
        evaluated = list(coord.by_plan.values())
        if budget == "done":
            return finish("max_trials")
        if engine.deadline is not None and time.monotonic() >= engine.deadline:
            return finish("timeout")
        if config.stop_on_first_pass and any(r.passed for r in evaluated):
            return finish("first pass")
        errors = sum(r.state == "error" for r in evaluated)
        if len(evaluated) >= 4 and errors / len(evaluated) > config.max_failure_rate:
            return finish(
                f"failure rate {errors}/{len(evaluated)} above "
                f"max_failure_rate={config.max_failure_rate}"
            )
        if budget == "full":  # the rest of the budget is in flight on other workers
            coord.pause()
            continue
        if asked >= max_asks:
            return finish("no new plans (the sampler keeps proposing evaluated ones)")
        # A dead worker's plan is enqueued again: ask for it before anything new, and
        # keep this worker's own proposal for the next ask.
        retry = budget == "retry"
        filling = (
            proposal is not SAMPLE
            and not retry
            and strategy.fill_while_waiting
            and coord.being_evaluated(engine.space.plan(proposal).hash)
        )
        if proposal is not SAMPLE and not filling and not retry:
            study.enqueue_trial(proposal)
        trial = study.ask(distributions)
        asked += 1
        plan = engine.space.plan(trial.params)
        record = TrialRecord(trial.number, dict(trial.params), plan, "error")
        try:
            with coord.heartbeat(trial):
                if retry and trial.user_attrs.get("retry_of") is None:
                    # Another worker asked for the retry first: this trial is not needed.
                    decision = Decision("surplus", reason="another worker took the retry")
                else:
                    decision = coord.decide(trial, plan, deadline=engine.deadline)
                if decision.action == "skipped":
                    record.state = "skipped"
                    record.error = "the all-float plan is the baseline, not a result"
                elif decision.action == "surplus":
                    record.state, record.error = "surplus", decision.reason
                elif decision.action == "cached":
                    previous = decision.previous
                    assert previous is not None
                    record.state, record.metrics = "cached", previous.metrics
                    record.error, record.cached_from = previous.error, previous.number
                    record.passed = previous.passed
                else:
                    record = engine.run_trial(trial, trial.number, baseline)
                _tell(study, trial, record, engine)
        except optuna.exceptions.UpdateFinishedTrialError:
            # This worker was silent too long (suspended, overloaded) and another one
            # marked its trial failed; the plan was enqueued again for someone to run.
            log.warning(
                "trial %d was marked failed by another worker (no heartbeat for %d s); "
                "its result is dropped",
                trial.number,
                3 * config.heartbeat_interval,
            )
            continue
        coord.add(record)
        _log_trial(record, coord.evaluations, config)
        passing = [r for r in coord.by_plan.values() if r.passed and r.metrics is not None]
        best = objective.best(passing, config) if passing else None  # what the result would pick
        for cb in callbacks:
            cb.on_trial(record, evaluations=coord.evaluations, best=best)
        if record.passed and config.stop_on_first_pass:
            return finish("first pass")
        if record.state == "surplus" or filling or retry:
            # The proposal was not tried (budget spent, or another worker is evaluating
            # it): offer it again; once its result is in, it is a cached trial.
            continue
        try:
            proposal = steps.send(record)
        except StopIteration:
            return finish("strategy finished")


def _log_trial(record: TrialRecord, evaluations: int, config: TuningConfig) -> None:
    m = record.metrics
    detail = record.error or ""
    if m is not None:
        detail = f"accuracy {m.accuracy:.6g} loss {m.loss:+.4f} latency {m.latency_ms:.3f} ms"
    fp32 = sum(c is None for c in record.plan.values())
    trial_log.info(
        "trial %d (%d/%d evaluated) %s: %s, %d ops fp32",
        record.number,
        evaluations,
        config.max_trials,
        record.state,
        detail,
        fp32,
    )


def _check_qat(
    config: TuningConfig, calib_data: Iterable[Any] | None, train_fn: Callable[..., Any] | None
) -> Iterable[Any] | None:
    """Refuse a QAT space without what it needs; keep one-shot calibration data."""
    from autoquant.errors import ConfigError

    if train_fn is not None and not callable(train_fn):
        raise ConfigError(
            f"train_fn must be callable as train_fn(model) or train_fn(model, budget), but "
            f"got {train_fn!r}."
        )
    if "qat" not in config.approaches:
        return calib_data
    if train_fn is None or not callable(train_fn):
        raise ConfigError(
            f"TuningConfig.approaches={config.approaches} includes 'qat', which fine-tunes "
            f"the model: pass train_fn=fn(model) or fn(model, budget) to tune() (got "
            f"{train_fn!r}), or drop 'qat' from approaches."
        )
    if calib_data is None:
        raise ConfigError(
            "approach 'qat' starts from static int8 plans and their calibration: pass "
            "calib_data= to tune()."
        )
    if iter(calib_data) is calib_data:  # a generator: QAT trials read it again
        from autoquant.qat._prepare import _keep_batches

        calib_data, _ = _keep_batches(calib_data, config.calib_samples)
    return calib_data


def _result(
    engine: Runner,
    study: Any,
    records: list[TrialRecord],
    baseline: Metrics,
    stop: str,
    qat_models: dict[int, nn.Module] | None = None,
) -> TuningResult:
    from autoquant.tuning._coordination import finished_by_this_worker

    config = engine.config
    scored = [r for r in records if r.metrics is not None and r.cached_from is None]
    if not scored:
        errors = "; ".join(sorted({r.error or r.state for r in records})[:5])
        raise TuningError(
            f"no trial produced a quantized model ({len(records)} trials, stopped: {stop}). "
            f"Errors: {errors or 'none recorded'}. Raise max_trials/timeout or fix the errors."
        )
    passing = [r for r in scored if r.passed]
    verified = []
    if passing and engine.table is not None and config.objective != "size":
        passing, verified = _verify(engine, study, passing, records)
    if passing:
        best = objective.best(passing, config)
    else:
        best = objective.most_accurate(scored)
        message = (
            f"no quantized model met the goal ({config.criterion} loss <= {config.tolerable_loss:g}); "
            f"returning the most accurate one found (trial {best.number}, loss "
            f"{best.metrics.loss:.4g}). Loosen tolerable_loss, widen the search, or raise max_trials."  # type: ignore[union-attr]
        )
        warnings.warn(message, GoalNotMetWarning, stacklevel=3)
        log.warning("%s", message)
    assert best.metrics is not None
    # A QAT trial's model cannot be rebuilt from its plan (it was trained): it was kept.
    best_model = (qat_models or {}).get(best.number)
    if best_model is None:
        best_model = engine.build(best.plan, candidate=False)
    if config.latency.mode == "deployed" and hasattr(best_model, "autoquant_info"):
        # Hand back what was timed: the compiled form (it compiles on its first call).
        from autoquant.quantizer import deploy

        deploy(best_model)
    return TuningResult(
        met=bool(passing),
        baseline=baseline,
        best=best.metrics,
        best_model=best_model,
        best_plan=best.plan,
        best_trial=best.number,
        trials=records,
        study=study,
        config=config,
        pareto=objective.pareto_front(records, config.objective),
        n_evaluations=sum(r.evaluated for r in records),
        calibration_passes=engine.calibration_passes,
        elapsed_s=time.monotonic() - engine.start,
        stopped_because=stop,
        finished_study=config.storage is None or finished_by_this_worker(study),
        float_baselines=engine.floats,
        verified=verified,
    )


def _verify(
    engine: Runner, study: Any, passing: list[TrialRecord], records: list[TrialRecord]
) -> tuple[list[TrialRecord], list[Any]]:
    """Deployed mode: the leading passing plans (by predicted latency) timed end to end;
    the choice is made among them on the measured latency (all passing plans, by the
    prediction, with ``latency_verify_top=0``). ``records`` get the measured metrics."""
    from autoquant.tuning._latency import verify_leaders

    top = engine.config.latency_verify_top
    if top == 0:
        return passing, []
    timed = verify_leaders(engine, study, passing, top)
    by_number = {r.number: r for r, _ in timed}
    records[:] = [by_number.get(r.number, r) for r in records]
    return [r for r, _ in timed], [v for _, v in timed]
