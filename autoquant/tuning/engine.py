"""``tune``: the accuracy-aware search loop on Optuna's ask/tell interface.

One study per call. Before the first trial: discover the ops, build the space, calibrate
once (only if the space holds static configs) and evaluate the float baseline once.
Each trial: the strategy proposes parameters, the engine turns them into a plan, reuses
the result of an identical plan if there is one, otherwise builds the candidate from the
shared calibration statistics, runs the user's metric, measures latency and size, and
records everything in the trial (user attrs, accuracy-loss constraint, objective
values). At most the float model and one candidate are alive at a time: the best model
is rebuilt from its plan at the end (builds are deterministic).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import math
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx
from torch import nn

from autoquant.errors import AutoQuantError, ConfigError
from autoquant.tuning.callbacks import TuningCallback
from autoquant.tuning.config import TuningConfig
from autoquant.tuning.result import Metrics, TrialRecord, TuningResult
from autoquant.tuning.space import FP32, SearchSpace
from autoquant.tuning.strategies import SAMPLE, StrategyContext, get_strategy

__all__ = ["tune", "GoalNotMetWarning", "TuningError", "Reporter"]

log = logging.getLogger("autoquant.tuning")
_CONSTRAINT = "accuracy_loss"  # loss - tolerable_loss: feasible when <= 0
_ALL_FLOAT = "all_float"  # 1 for the all-float plan (never a result), -1 otherwise


class GoalNotMetWarning(UserWarning):
    """No quantized model met the accuracy goal; the result holds the best one found."""


class TuningError(AutoQuantError, RuntimeError):
    """The search could not produce any quantized model (every trial failed)."""


class _Prune(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reporter:
    """Passed to ``eval_fn(model, report)`` so it can send partial results.

    Call ``report(value, fraction)`` after each batch with the metric on the data seen so
    far and the share of the evaluation done (0-1]. The trial stops early when the
    timeout has passed, or, with ``TuningConfig.metric_bounds`` set, when even a perfect
    score on the remaining data could not meet the goal.
    """

    def __init__(
        self,
        trial: Any,
        config: TuningConfig,
        baseline: float,
        deadline: float | None,
        multi: bool,
        prune_on_goal: bool = True,
    ) -> None:
        self._trial, self._config, self._baseline = trial, config, baseline
        self._deadline, self._multi = deadline, multi
        # Until one trial has run to the end, none is cut short for missing the goal:
        # when nothing can meet it, that trial is the model the result falls back to.
        self._prune_on_goal = prune_on_goal
        self.step = 0

    def __call__(self, value: float, fraction: float | None = None) -> None:
        self.step += 1
        if not self._multi and math.isfinite(value):
            self._trial.report(float(value), self.step)
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise _Prune("timeout during evaluation")
        bound = self._config.metric_bounds
        if self._prune_on_goal and bound is not None and fraction is not None and 0 < fraction < 1:
            reachable = value * fraction + bound * (1 - fraction)
            if not self._config.meets(self._baseline, reachable):
                raise _Prune(
                    f"cannot meet the goal: {value:.5g} on {fraction:.0%} of the data, at best "
                    f"{reachable:.5g} overall, target {self._config.target(self._baseline):.5g}"
                )


def _ignore_report(value: float, fraction: float | None = None) -> None:
    """The reporter given to a two-argument eval_fn for the float baseline."""


def _takes_reporter(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _first_inputs(calib_data: Iterable[Any]) -> Any:
    from autoquant._data import iter_batches

    for args, kwargs, _ in iter_batches(calib_data):
        if kwargs:
            return kwargs
        return args[0] if len(args) == 1 else args
    raise ConfigError("calib_data is empty; it is also where tune() takes its latency inputs.")


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"model output {type(out).__name__} holds no tensor")


def _drop(model: nn.Module | None) -> weakref.ref[nn.Module] | None:
    """Prepare a candidate to be freed by reference counting alone.

    A torch.fx GraphModule and its graph reference each other, so dropping the last
    reference would leave it for the cyclic GC; unlinking the graph's owner breaks that
    cycle. Returns a weak reference to check that the candidate is gone.
    """
    if model is None:
        return None
    for module in model.modules():
        if isinstance(module, torch.fx.GraphModule):
            graph = module.graph
            if getattr(graph, "_owning_module", None) is module:
                graph._owning_module = None
    return weakref.ref(model)


def _free(dropped: weakref.ref[nn.Module] | None) -> None:
    """Make sure a dropped candidate is gone before the next one is built.

    A full collection costs ~0.2 s in a process that holds torch, so it runs only when
    some other cycle kept the candidate alive.
    """
    if dropped is not None and dropped() is not None:
        gc.collect()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


class _Engine:
    def __init__(
        self,
        model: nn.Module,
        eval_fn: Callable[..., float],
        calib_data: Iterable[Any] | None,
        config: TuningConfig,
        example_inputs: Any,
    ) -> None:
        from autoquant.backends import get_backend
        from autoquant.discovery import discover

        self.model, self.eval_fn, self.config = model, eval_fn, config
        self.calib_data = calib_data
        self.backend = get_backend(config.backend)
        self.with_reporter = _takes_reporter(eval_fn)
        self.start = time.monotonic()
        self.deadline = None if config.timeout is None else self.start + config.timeout
        self.ops = discover(model)
        self.space = SearchSpace.build(
            model, self.ops, self.backend, config, calibrated=calib_data is not None
        )
        self.example = (
            example_inputs
            if example_inputs is not None
            else (_first_inputs(calib_data) if calib_data is not None else None)
        )
        if self.example is None:
            raise ConfigError(
                "tune() needs inputs to time the model: pass example_inputs= (or calib_data=)."
            )
        self.stats = None
        self.check_batch: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.calibration_passes = 0
        self.multi = config.objective == "latency+size"
        self.scored = 0  # trials with full metrics so far
        self.baseline_metrics: Metrics | None = None
        from autoquant.backends.base import BuildReuse

        self.reuse = BuildReuse()

    def calibrate(self) -> None:
        """The one calibration pass (only when the space holds static configs)."""
        if self.space.needs_calibration:
            from autoquant.calibration import calibrate
            from autoquant.quantizer import _peek_batch

            # One batch for the build self-check: a plan whose kernels depart from its
            # math fails its trial with the self-check's message.
            self.calib_data, self.check_batch = _peek_batch(self.calib_data)
            self.stats = calibrate(
                self.model,
                self.calib_data,
                backend=self.backend,
                max_samples=self.config.calib_samples,
            )
            self.calibration_passes += 1

    # -- measuring ---------------------------------------------------------------------
    def _evaluate(self, model: nn.Module, reporter: Reporter | None) -> float:
        with torch.inference_mode():
            value = self.eval_fn(model, reporter) if reporter is not None else self.eval_fn(model)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"eval_fn must return a number, but returned {value!r}") from None
        return value

    def _measure(self, model: nn.Module, accuracy: float, baseline: float | None) -> Metrics:
        from autoquant.measure import measure_latency, size_bytes

        lat = measure_latency(
            model,
            self.example,
            threads=self.config.latency_threads,
            warmup=self.config.latency_warmup,
            repeats=self.config.latency_repeats,
        )
        loss = 0.0 if baseline is None else self.config.loss(baseline, accuracy)
        return Metrics(
            accuracy, loss, lat.median_ms, lat.p90_ms, size_bytes(model), lat.simulated_ops
        )

    def baseline(self) -> Metrics:
        # Fix: a two-argument eval_fn(model, report) was called as eval_fn(model) here and
        # raised TypeError before the first trial. The baseline has no trial to report to
        # and is never pruned, so it gets a reporter that ignores what it is sent.
        accuracy = self._evaluate(self.model, _ignore_report if self.with_reporter else None)
        if not math.isfinite(accuracy):
            raise ConfigError(
                f"eval_fn returned {accuracy} for the float model; it must be finite."
            )
        self.baseline_metrics = self._measure(self.model, accuracy, None)
        return self.baseline_metrics

    def build(self, plan: Any, *, candidate: bool = True) -> nn.Module:
        """A trial candidate (shares float tensors and cached quantized ops, read-only),
        or with ``candidate=False`` an independent model (the result)."""
        from autoquant.backends._selfcheck import verify_kernels

        with warnings.catch_warnings():
            # Each trial would repeat the same build warnings; the first build showed them.
            warnings.simplefilter("ignore")
            built = self.backend.build(
                self.model, plan, self.stats, reuse=self.reuse if candidate else None
            )
            if self.check_batch is not None:
                verify_kernels(built, *self.check_batch)
        return built

    def sensitivity(self) -> dict[str, float]:
        """Relative output error with one unit quantized at its default config."""
        from autoquant._data import iter_batches

        inputs: list[Any] = []
        if self.calib_data is not None:
            for args, kwargs, _ in iter_batches(
                self.calib_data, max_samples=min(32, self.config.calib_samples)
            ):
                inputs.append(kwargs if kwargs else (args[0] if len(args) == 1 else args))
        else:
            inputs.append(self.example)
        with torch.inference_mode():
            reference = [_first_tensor(_call(self.model, x)).float() for x in inputs]
        all_fp32 = {name: FP32 for name in self.space.unit_names}
        scores: dict[str, float] = {}
        for name, unit in self.space.units.items():
            params = dict(all_fp32)
            params[name] = unit.default
            if self.deadline is not None and time.monotonic() > self.deadline:
                break  # out of time: unscored units count as insensitive
            candidate = self.build(self.space.plan(params))
            with torch.inference_mode():
                err = sum(
                    float((_first_tensor(_call(candidate, x)).float() - ref).pow(2).sum())
                    for x, ref in zip(inputs, reference, strict=True)
                )
            norm = sum(float(ref.pow(2).sum()) for ref in reference) or 1.0
            scores[name] = err / norm if math.isfinite(err) else math.inf
            dropped = _drop(candidate)
            candidate = None
            _free(dropped)
        return scores

    # -- one trial ---------------------------------------------------------------------
    def run_trial(self, trial: Any, number: int, baseline: Metrics) -> TrialRecord:
        params = dict(trial.params)
        plan = self.space.plan(params)
        record = TrialRecord(number=number, params=params, plan=plan, state="error")
        t0 = time.perf_counter()
        candidate = None
        try:
            candidate = self.build(plan)
            t1 = time.perf_counter()
            reporter = (
                Reporter(
                    trial,
                    self.config,
                    baseline.accuracy,
                    self.deadline,
                    self.multi,
                    prune_on_goal=self.scored > 0,
                )
                if self.with_reporter
                else None
            )
            accuracy = self._evaluate(candidate, reporter)
            t2 = time.perf_counter()
            if not math.isfinite(accuracy):
                raise FloatingPointError(f"eval_fn returned {accuracy}")
            record.metrics = self._measure(candidate, accuracy, baseline.accuracy)
            t3 = time.perf_counter()
            record.timings = {"build_s": t1 - t0, "eval_s": t2 - t1, "measure_s": t3 - t2}
            self.scored += 1
            record.passed = self.config.meets(baseline.accuracy, accuracy)
            record.state = "pass" if record.passed else "fail"
        except _Prune as exc:
            record.state, record.error = "pruned", exc.reason
        except Exception as exc:  # noqa: BLE001 - a failing trial must not end the study
            kind = "out of memory" if _is_oom(exc) else type(exc).__name__
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
            record.state, record.error = "error", f"{kind}: {exc}{where}"
        finally:
            # Drop the candidate before the next one is built: float model + one candidate.
            dropped = _drop(candidate)
            candidate = None
            _free(dropped)
        record.timings["total_s"] = time.perf_counter() - t0
        return record

    def objective_values(self, m: Metrics) -> list[float]:
        if self.config.objective == "size":
            return [float(m.size_bytes)]
        if self.multi:
            return [m.latency_ms, float(m.size_bytes)]
        return [m.latency_ms]


def _tell(study: Any, trial: Any, record: TrialRecord, engine: _Engine) -> None:
    import optuna

    trial.set_user_attr("plan_hash", record.plan_hash)
    trial.set_user_attr("state", record.state)
    trial.set_user_attr("fp32_ops", [f for f, c in record.plan.items() if c is None])
    # Fix: the resolved plan is stored for every trial (it was only stored for trials with
    # metrics), so a failed or pruned trial says exactly what it tried.
    trial.set_user_attr("plan", record.plan.to_dict())
    if record.cached_from is not None:
        trial.set_user_attr("cached_from", record.cached_from)
    if record.error:
        trial.set_user_attr("error", record.error[:2000])
    if record.state == "skipped":
        # The all-float plan: told with the baseline's values and an infeasible
        # "quantizes no op" constraint, so samplers learn that region is not a result
        # instead of proposing it again and again.
        assert engine.baseline_metrics is not None
        trial.set_constraint(_CONSTRAINT, -engine.config.tolerable_loss)
        trial.set_constraint(_ALL_FLOAT, 1.0)
        study.tell(trial, engine.objective_values(engine.baseline_metrics))
        return
    if record.metrics is None:
        pruned = record.state == "pruned"
        state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL
        study.tell(trial, state=state)
        return
    trial.set_user_attr("metrics", record.metrics.to_dict())
    trial.set_user_attr("timings", record.timings)
    trial.set_constraint(_CONSTRAINT, record.metrics.loss - engine.config.tolerable_loss)
    trial.set_constraint(_ALL_FLOAT, -1.0)
    study.tell(trial, engine.objective_values(record.metrics))


def _pareto(records: list[TrialRecord], objective: str) -> list[TrialRecord]:
    """Non-dominated evaluated trials over (loss, latency[, size])."""
    pts = [r for r in records if r.metrics is not None and r.cached_from is None]

    def key(r: TrialRecord) -> tuple[float, ...]:
        m = r.metrics
        assert m is not None
        if objective == "size":
            return (m.loss, float(m.size_bytes))
        if objective == "latency":
            return (m.loss, m.latency_ms)
        return (m.loss, m.latency_ms, float(m.size_bytes))

    front = []
    for r in pts:
        kr = key(r)
        dominated = any(
            all(a <= b for a, b in zip(key(o), kr, strict=True)) and key(o) != kr for o in pts
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=key)


def tune(
    model: nn.Module,
    eval_fn: Callable[..., float],
    *,
    calib_data: Iterable[Any] | None,
    config: TuningConfig | None = None,
    example_inputs: Any = None,
    callbacks: Sequence[TuningCallback] = (),
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
    """
    import optuna

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}.")
    if not callable(eval_fn):
        raise TypeError(
            f"eval_fn must be callable as eval_fn(model) -> float, but got {eval_fn!r}."
        )
    config = config or TuningConfig()
    engine = _Engine(model, eval_fn, calib_data, config, example_inputs)
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
            records, stop = _search(engine, strategy, study, baseline, callbacks)
    finally:
        optuna.logging.set_verbosity(verbosity)
    result = _result(engine, study, records, baseline, stop)
    result.sensitivity = strategy.context.scores
    for cb in callbacks:
        cb.on_end(result)
    return result


def _start(
    engine: _Engine,
    model: nn.Module,
    calib_data: Iterable[Any] | None,
    config: TuningConfig,
    callbacks: Sequence[TuningCallback],
) -> tuple[Any, Metrics, Any]:
    """Open the study; calibrate and measure the baseline here or load them from it."""
    study, created = _open_study(config, 2 if engine.multi else 1)
    state = None
    if config.storage is not None:
        from autoquant.tuning._study_state import StudyState, fingerprint

        state = StudyState(
            study,
            fingerprint(model, calib_data, config),
            heartbeat_interval=config.heartbeat_interval,
        )
        state.check()
    # One worker per study calibrates and measures the float baseline; the others wait
    # for it and load both from the study (see tuning/_study_state.py).
    lead = state is None or state.wait_until_ready(created=created)
    with state.preparing() if state is not None and lead else contextlib.nullcontext():
        baseline, strategy = _prepare(engine, study, state, lead)
        for cb in callbacks:
            cb.on_start(space=engine.space, baseline=baseline, config=config, study=study)
    return study, baseline, strategy


def _open_study(config: TuningConfig, n_objectives: int) -> tuple[Any, bool]:
    """The study, and whether this call created it (workers that load it don't)."""
    import optuna

    from autoquant.storage import open_storage

    directions = ["minimize"] * n_objectives
    storage = open_storage(config.storage, heartbeat_interval=config.heartbeat_interval)
    if storage is None:
        return optuna.create_study(directions=directions), True
    try:
        study = optuna.create_study(
            storage=storage, study_name=config.study_name, directions=directions
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=config.study_name, storage=storage)
    if len(study.directions) != n_objectives:
        raise ConfigError(
            f"study {config.study_name!r} has {len(study.directions)} objective(s), but "
            f"objective={config.objective!r} needs {n_objectives}. Use a new study_name "
            "or the study's objective."
        )
    return study, False


def _prepare(engine: _Engine, study: Any, state: Any, lead: bool) -> tuple[Metrics, Any]:
    """Calibration, baseline and strategy: computed here, or loaded from the study."""
    from autoquant.storage import mask_url

    config = engine.config
    stats = state.load_calibration() if state is not None else None
    if stats is not None:
        engine.stats = stats
    else:
        engine.calibrate()
        if state is not None and engine.stats is not None:
            state.save_calibration(engine.stats)
    baseline = state.load_baseline() if state is not None else None
    if baseline is not None:
        engine.baseline_metrics = baseline
        log.info("fp32 baseline (from the study): accuracy %.6g", baseline.accuracy)
    else:
        baseline = engine.baseline()
        if state is not None:
            state.save_baseline(baseline)
        log.info(
            "fp32 baseline: accuracy %.6g, latency %.3f ms, %d bytes",
            baseline.accuracy,
            baseline.latency_ms,
            baseline.size_bytes,
        )

    def sensitivity() -> dict[str, float]:
        scores = state.load_sensitivity() if state is not None else None
        if scores is None:
            scores = engine.sensitivity()
            if state is not None:
                state.save_sensitivity(scores)
        return scores

    strategy = get_strategy(config.strategy)(
        StrategyContext(engine.space, config, baseline, sensitivity)
    )
    study.sampler = strategy.sampler()
    if lead:
        recorded = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()
        }
        recorded["storage"] = mask_url(config.storage)
        study.set_user_attr("baseline", baseline.to_dict())
        study.set_user_attr("config", recorded)
    return baseline, strategy


def _search(
    engine: _Engine,
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

    from autoquant.tuning._coordination import Coordinator

    config = engine.config
    coord = Coordinator(
        study,
        shared=config.storage is not None,
        max_trials=config.max_trials,
        heartbeat_interval=config.heartbeat_interval,
        meets=lambda accuracy: config.meets(baseline.accuracy, accuracy),
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
        filling = (
            proposal is not SAMPLE
            and strategy.fill_while_waiting
            and coord.being_evaluated(engine.space.plan(proposal).hash)
        )
        if proposal is not SAMPLE and not filling:
            study.enqueue_trial(proposal)
        trial = study.ask(distributions)
        asked += 1
        plan = engine.space.plan(trial.params)
        record = TrialRecord(trial.number, dict(trial.params), plan, "error")
        try:
            with coord.heartbeat(trial):
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
        best = _choose(passing, config) if passing else None  # what the result would pick
        for cb in callbacks:
            cb.on_trial(record, evaluations=coord.evaluations, best=best)
        if record.passed and config.stop_on_first_pass:
            return finish("first pass")
        if record.state == "surplus" or filling:
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
    log.info(
        "trial %d (%d/%d evaluated) %s: %s, %d ops fp32",
        record.number,
        evaluations,
        config.max_trials,
        record.state,
        detail,
        fp32,
    )


def _choose(passing: list[TrialRecord], config: TuningConfig) -> TrialRecord:
    """The best passing trial.

    Latency medians on a shared CPU move by a few percent, so plans within
    ``min_latency_gain`` of the fastest count as equally fast; among those the smallest
    (most quantized) wins, then the fastest. The size objective is exact.
    """
    metrics = {r.number: r.metrics for r in passing}
    if config.objective == "size":
        return min(
            passing, key=lambda r: (metrics[r.number].size_bytes, metrics[r.number].latency_ms)
        )
    fastest = min(metrics[r.number].latency_ms for r in passing)
    close = [
        r
        for r in passing
        if metrics[r.number].latency_ms <= fastest * (1 + config.min_latency_gain)
    ]
    return min(close, key=lambda r: (metrics[r.number].size_bytes, metrics[r.number].latency_ms))


def _result(
    engine: _Engine, study: Any, records: list[TrialRecord], baseline: Metrics, stop: str
) -> TuningResult:
    config = engine.config
    scored = [r for r in records if r.metrics is not None and r.cached_from is None]
    if not scored:
        errors = "; ".join(sorted({r.error or r.state for r in records})[:5])
        raise TuningError(
            f"no trial produced a quantized model ({len(records)} trials, stopped: {stop}). "
            f"Errors: {errors or 'none recorded'}. Raise max_trials/timeout or fix the errors."
        )
    passing = [r for r in scored if r.passed]
    if passing:
        best = _choose(passing, config)
    else:
        best = min(scored, key=lambda r: (r.metrics.loss, r.metrics.latency_ms))  # type: ignore[union-attr]
        message = (
            f"no quantized model met the goal ({config.criterion} loss <= {config.tolerable_loss:g}); "
            f"returning the most accurate one found (trial {best.number}, loss "
            f"{best.metrics.loss:.4g}). Loosen tolerable_loss, widen the search, or raise max_trials."  # type: ignore[union-attr]
        )
        warnings.warn(message, GoalNotMetWarning, stacklevel=3)
        log.warning("%s", message)
    assert best.metrics is not None
    return TuningResult(
        met=bool(passing),
        baseline=baseline,
        best=best.metrics,
        best_model=engine.build(best.plan, candidate=False),
        best_plan=best.plan,
        best_trial=best.number,
        trials=records,
        study=study,
        config=config,
        pareto=_pareto(records, config.objective),
        n_evaluations=sum(r.evaluated for r in records),
        calibration_passes=engine.calibration_passes,
        elapsed_s=time.monotonic() - engine.start,
        stopped_because=stop,
    )
