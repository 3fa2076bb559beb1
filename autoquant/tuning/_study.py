"""The study: opening it, the start-up every trial shares, telling it a trial's outcome.

Start-up happens once per study, not once per worker: the first worker (the "lead")
calibrates and measures the float baseline and stores both in the study
(:mod:`autoquant.tuning._study_state`); the others wait and load them. :func:`_tell`
writes a finished trial into the study: its user attributes (plan, state, metrics), the
accuracy constraint samplers read, and the objective values.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from autoquant import _faults
from autoquant.errors import ConfigError
from autoquant.tuning._runner import Runner
from autoquant.tuning.callbacks import TuningCallback
from autoquant.tuning.config import TuningConfig
from autoquant.tuning.result import Metrics, TrialRecord
from autoquant.tuning.strategies import StrategyContext, get_strategy

__all__: list[str] = []

log = logging.getLogger("autoquant.tuning")
_CONSTRAINT = "accuracy_loss"  # loss - tolerable_loss: feasible when <= 0
_ALL_FLOAT = "all_float"  # 1 for the all-float plan (never a result), -1 otherwise


def _tell(study: Any, trial: Any, record: TrialRecord, engine: Runner) -> None:
    """Write the trial's outcome, ``state`` last, then finish it.

    Each attribute is a separate storage write, and a worker can die between any two:
    readers (``_coordination.is_complete``) take a trial as finished only once its
    final ``state`` is there, and by then everything else is.
    """
    import optuna

    def put(key: str, value: Any) -> None:
        trial.set_user_attr(key, value)
        if record.evaluated:
            _faults.hit(f"tell:{key}")

    put("plan_hash", record.plan_hash)
    put("fp32_ops", [f for f, c in record.plan.items() if c is None])
    # Fix: the resolved plan is stored for every trial (it was only stored for trials with
    # metrics), so a failed or pruned trial says exactly what it tried.
    put("plan", record.plan.to_dict())
    if record.cached_from is not None:
        put("cached_from", record.cached_from)
    if record.error:
        put("error", record.error[:2000])
    if record.metrics is not None:
        put("metrics", record.metrics.to_dict())
        put("timings", record.timings)
    put("state", record.state)
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
    trial.set_constraint(_CONSTRAINT, record.metrics.loss - engine.config.tolerable_loss)
    trial.set_constraint(_ALL_FLOAT, -1.0)
    study.tell(trial, engine.objective_values(record.metrics))


def _start(
    engine: Runner,
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
            cb.on_start(
                space=engine.space,
                baseline=baseline,
                config=config,
                study=study,
                build=lambda plan: engine.build(plan, candidate=False),
            )
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


def _prepare(engine: Runner, study: Any, state: Any, lead: bool) -> tuple[Metrics, Any]:
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
        engine.floats = state.load_floats()
        log.info("fp32 baseline (from the study): accuracy %.6g", baseline.accuracy)
    else:
        baseline = engine.baseline()
        if state is not None:
            state.save_floats(engine.floats)
            state.save_baseline(baseline)
        log.info(
            "fp32 baseline: accuracy %.6g, latency %.3f ms, %d bytes",
            baseline.accuracy,
            baseline.latency_ms,
            baseline.size_bytes,
        )

    if engine.floats is not None and engine.floats.fp32_compiled_ms is not None:
        log.info(
            "float baselines: %s",
            ", ".join(f"{k} {v:.3f} ms" for k, v in engine.floats.latencies().items()),
        )
    if engine.deployed:
        from autoquant.tuning._latency import LatencyTable

        engine.table = LatencyTable(
            engine.model, engine.ops, engine.backend, engine.example, config, study
        )

    def sensitivity() -> dict[str, float]:
        scores = state.load_sensitivity() if state is not None else None
        if scores is None:
            scores = engine.sensitivity()
            if state is not None:
                state.save_sensitivity(scores)
        return scores

    strategy = get_strategy(config.strategy)(
        StrategyContext(
            engine.space, config, baseline, sensitivity, prune_sensitivity=engine.prune_sensitivity
        )
    )
    study.sampler = strategy.sampler()
    if lead:
        recorded = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()
        }
        recorded["storage"] = mask_url(config.storage)
        study.set_user_attr("baseline", baseline.to_dict())
        if engine.floats is not None:
            study.set_user_attr("float_baselines", engine.floats.to_dict())
        study.set_user_attr("config", recorded)
    return baseline, strategy
