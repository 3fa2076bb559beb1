"""The trial runner: one candidate at a time, built, evaluated, measured, freed.

:class:`Runner` holds what every trial of one ``tune`` call shares (the float model,
the user's ``eval_fn``, the search space, the calibration statistics, the build reuse
cache) and runs one trial's plan: build the candidate from the shared statistics, run
the user's metric (with a :class:`Reporter` that can stop a hopeless trial early),
measure latency and size, drop the candidate. It also runs the float baseline and the
cheap per-unit sensitivity scores. It knows nothing of studies or strategies.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import logging
import math
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx
from torch import nn

from autoquant import _faults
from autoquant.errors import ConfigError
from autoquant.inputs import call_model, first_tensor, from_batch
from autoquant.tuning import objective
from autoquant.tuning.config import TuningConfig
from autoquant.tuning.result import FloatBaselines, Metrics, TrialRecord
from autoquant.tuning.space import FP32, SearchSpace

__all__ = ["Reporter", "Runner"]

log = logging.getLogger("autoquant.tuning")


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
            if not objective.passes(self._config, self._baseline, reachable):
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
        return from_batch(args, kwargs)
    raise ConfigError("calib_data is empty; it is also where tune() takes its latency inputs.")


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


class Runner:
    def __init__(
        self,
        model: nn.Module,
        eval_fn: Callable[..., float],
        calib_data: Iterable[Any] | None,
        config: TuningConfig,
        example_inputs: Any,
        train_fn: Callable[[nn.Module], None] | None = None,
    ) -> None:
        from autoquant.backends import get_backend
        from autoquant.discovery import discover

        self.model, self.eval_fn, self.config = model, eval_fn, config
        self.train_fn = train_fn
        # prune key -> (pruned float model, its statistics, its build reuse): calibration
        # statistics depend on the pruning part of a plan, so they are cached by it. Two
        # entries: consecutive trials mostly vary one dimension at a time.
        self._pruned: dict[str, tuple[nn.Module, Any, Any]] = {}
        self.calib_data = calib_data
        self.backend = get_backend(config.backend)
        self.with_reporter = _takes_reporter(eval_fn)
        self.start = time.monotonic()
        self.deadline = None if config.timeout is None else self.start + config.timeout
        self.ops = discover(model)
        self.space = SearchSpace.build(
            model,
            self.ops,
            self.backend,
            config,
            calibrated=calib_data is not None,
            fine_tune=train_fn is not None,
        )
        if config.prune_patterns and train_fn is None:
            budgets = config.space.prune_budgets()
            if config.prune_schedule == "gradual":
                raise ConfigError(
                    "TuningConfig.prune_schedule='gradual' fine-tunes pruned models between "
                    "pruning stages, but tune() got no train_fn. Pass train_fn=, or use "
                    "prune_schedule='oneshot'."
                )
            if len(budgets) > 1:
                raise ConfigError(
                    f"TuningConfig.prune_epochs={config.prune_epochs} x prune_lr_scales="
                    f"{config.prune_lr_scales} give {len(budgets)} fine-tuning budgets to "
                    "search, but tune() got no train_fn to spend them. Pass train_fn=, or "
                    "give one epoch count and one lr scale."
                )
        # Fine-tuning time of the pruned model the last build used (record.timings).
        self.last_train_s: float | None = None
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
        self.multi = objective.n_objectives(config) > 1
        self.scored = 0  # trials with full metrics so far
        self.baseline_metrics: Metrics | None = None
        # Deployed latency mode: the float baselines and the per-op latency table (set
        # when the study is open, see _study._prepare).
        self.deployed = config.latency_mode == "deployed"
        self.floats: FloatBaselines | None = None
        self.table: Any = None
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
            if self.space.prune_units and iter(self.calib_data) is self.calib_data:
                # Each pruned model is calibrated again: a one-shot iterator is kept.
                self.calib_data = list(self.calib_data)
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

    def _measure(
        self, model: nn.Module, accuracy: float, baseline: float | None, plan: Any = None
    ) -> Metrics:
        from autoquant.measure import size_bytes

        if plan is not None and self.table is not None:
            # Deployed mode: the plan's compiled latency, predicted from the per-op table.
            assert self.floats is not None and self.floats.fp32_compiled_ms is not None
            ms = self.table.predict(plan, self.floats.fp32_compiled_ms)
            loss = 0.0 if baseline is None else self.config.loss(baseline, accuracy)
            simulated = tuple(getattr(getattr(model, "autoquant_info", None), "simulated", ()))
            return Metrics(
                accuracy, loss, ms, ms, size_bytes(model), simulated, predicted_latency_ms=ms
            )
        # The backend times its own models (wall clock on the CPU, CUDA events on a GPU).
        lat = self.backend.latency(
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
        # The float reference on this device (the model itself on the CPU; its float dtype
        # on the GPU for backend="cuda").
        reference = self.backend.baseline_model(self.model)
        accuracy = self._evaluate(reference, _ignore_report if self.with_reporter else None)
        if not math.isfinite(accuracy):
            raise ConfigError(
                f"eval_fn returned {accuracy} for the float model; it must be finite."
            )
        metrics = self._measure(reference, accuracy, None)
        reference = None
        self.floats = FloatBaselines(fp32_eager_ms=metrics.latency_ms)
        if self.deployed:
            self.floats = self._float_baselines(metrics.latency_ms)
            # The all-float plan deployed is fp32 compiled: trials are compared with it.
            ms = self.floats.fp32_compiled_ms
            metrics = dataclasses.replace(metrics, latency_ms=ms, deployed_latency_ms=ms)
        self.baseline_metrics = metrics
        return metrics

    def _float_baselines(self, eager_ms: float) -> FloatBaselines:
        """fp32 compiled and bf16 compiled latency, and the bf16 model's metric."""
        from autoquant._deploy_mode import bf16_model
        from autoquant.measure import measure_deployed_latency

        def deployed_ms(model: nn.Module) -> float:
            return measure_deployed_latency(
                model,
                self.example,
                threads=self.config.latency_threads,
                warmup=self.config.latency_warmup,
                repeats=self.config.latency_repeats,
            ).median_ms

        compiled = deployed_ms(self.model)
        bf16, bf16_ms, bf16_acc = None, None, None
        try:
            bf16 = bf16_model(self.model)
            bf16_ms = deployed_ms(bf16)
            value = self._evaluate(bf16, _ignore_report if self.with_reporter else None)
            bf16_acc = value if math.isfinite(value) else None
        except Exception as exc:  # noqa: BLE001 - a model without bf16 kernels has no bf16 baseline
            log.warning("no bf16 baseline: %s: %s", type(exc).__name__, exc)
        finally:
            bf16 = None
        return FloatBaselines(
            fp32_eager_ms=eager_ms,
            fp32_compiled_ms=compiled,
            bf16_ms=bf16_ms,
            bf16_accuracy=bf16_acc,
        )

    def build(self, plan: Any, *, candidate: bool = True) -> nn.Module:
        """A trial candidate (shares float tensors and cached quantized ops, read-only),
        or with ``candidate=False`` an independent model (the result).

        A plan that prunes is built from its pruned float model (pruned, fine-tuned
        with ``train_fn`` and calibrated once per distinct pruning part)."""
        from autoquant.backends._selfcheck import verify_kernels
        from autoquant.pruning.apply import split_plan

        specs, quant_plan = split_plan(plan)
        model, stats, reuse = self.model, self.stats, self.reuse
        report = None
        self.last_train_s = None
        if specs:
            model, stats, reuse = self._pruned_model(specs)
            self.last_train_s = getattr(model, "autoquant_train_s", None)
            report = model.autoquant_pruning
        with warnings.catch_warnings():
            # Each trial would repeat the same build warnings; the first build showed them.
            warnings.simplefilter("ignore")
            built = self.backend.build(model, quant_plan, stats, reuse=reuse if candidate else None)
            if self.check_batch is not None:
                verify_kernels(built, *self.check_batch)
        if report is not None:
            built.autoquant_pruning = report
        return built

    def _pruned_model(self, specs: dict[str, Any]) -> tuple[nn.Module, Any, Any]:
        from autoquant.backends.base import BuildReuse
        from autoquant.pruning.apply import prune, prune_key

        key = prune_key(specs)
        if key in self._pruned:
            return self._pruned[key]
        if self.train_fn is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruned, report = prune(self.model, specs)
        else:
            from autoquant.pruning.fine_tune import prune_and_train
            from autoquant.qat.train import TrainBudget

            # The space wrote the budget into every spec of the plan (one fine-tuning run).
            label = next(
                (s.fine_tune for s in specs.values() if s.fine_tune), TrainBudget().label()
            )
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruned, report = prune_and_train(
                    self.model,
                    specs,
                    self.train_fn,
                    schedule=self.config.space.schedule(),
                    budget=TrainBudget.parse(label),
                )
            pruned.autoquant_train_s = time.perf_counter() - t0
        pruned.eval()
        stats = None
        if self.stats is not None:
            from autoquant.calibration import calibrate

            stats = calibrate(
                pruned, self.calib_data, backend=self.backend, max_samples=self.config.calib_samples
            )
            self.calibration_passes += 1
        if len(self._pruned) >= 2:
            self._pruned.pop(next(iter(self._pruned)))
        self._pruned[key] = (pruned, stats, BuildReuse())
        return self._pruned[key]

    def prune_sensitivity(self) -> dict[str, dict[str, float]]:
        """Per pruning unit and label: relative output error on calibration data of the
        float model with only that op pruned that way (no quantization, no evaluation)."""
        from autoquant.pruning.apply import prune

        inputs = self._sensitivity_inputs()
        with torch.inference_mode():
            reference = [first_tensor(call_model(self.model, x)).float() for x in inputs]
        norm = sum(float(ref.pow(2).sum()) for ref in reference) or 1.0
        scores: dict[str, dict[str, float]] = {}
        for name, unit in self.space.prune_units.items():
            scores[name] = {unit.default: 0.0}
            for label, spec in zip(unit.labels[1:], unit.specs[1:], strict=True):
                if self.deadline is not None and time.monotonic() > self.deadline:
                    return scores
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pruned, _ = prune(self.model, {unit.fqn: spec})
                with torch.inference_mode():
                    err = sum(
                        float((first_tensor(call_model(pruned, x)).float() - ref).pow(2).sum())
                        for x, ref in zip(inputs, reference, strict=True)
                    )
                scores[name][label] = err / norm if math.isfinite(err) else math.inf
        return scores

    def _sensitivity_inputs(self) -> list[Any]:
        from autoquant._data import iter_batches

        inputs: list[Any] = []
        if self.calib_data is not None:
            for args, kwargs, _ in iter_batches(
                self.calib_data, max_samples=min(32, self.config.calib_samples)
            ):
                inputs.append(from_batch(args, kwargs))
        else:
            inputs.append(self.example)
        return inputs

    def sensitivity(self) -> dict[str, float]:
        """Relative output error with one unit quantized at its default config."""
        from autoquant._data import iter_batches

        inputs: list[Any] = []
        if self.calib_data is not None:
            for args, kwargs, _ in iter_batches(
                self.calib_data, max_samples=min(32, self.config.calib_samples)
            ):
                inputs.append(from_batch(args, kwargs))
        else:
            inputs.append(self.example)
        with torch.inference_mode():
            reference = [first_tensor(call_model(self.model, x)).float() for x in inputs]
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
                    float((first_tensor(call_model(candidate, x)).float() - ref).pow(2).sum())
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
            train_s = self.last_train_s
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
            _faults.hit("evaluate")
            t2 = time.perf_counter()
            if not math.isfinite(accuracy):
                raise FloatingPointError(f"eval_fn returned {accuracy}")
            record.metrics = self._measure(candidate, accuracy, baseline.accuracy, plan)
            t3 = time.perf_counter()
            record.timings = {"build_s": t1 - t0, "eval_s": t2 - t1, "measure_s": t3 - t2}
            if train_s is not None:
                # The pruned model's fine-tuning (once per pruning part and budget; a later
                # trial built from the cached model reports the same time).
                record.timings["train_s"] = train_s
            self.scored += 1
            record.passed = objective.passes(self.config, baseline.accuracy, accuracy)
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
        return objective.objective_values(self.config, m)
