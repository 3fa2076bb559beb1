"""Plain records of a tuning run: metrics, one record per trial, the final result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autoquant.plan import Plan
    from autoquant.tuning.config import TuningConfig

__all__ = ["FloatBaselines", "Metrics", "TrialRecord", "TuningResult", "VerifiedPlan"]


@dataclass(frozen=True)
class Metrics:
    """What one model scored. ``loss`` follows the config's criterion (>0 = worse)."""

    accuracy: float
    loss: float
    latency_ms: float
    latency_p90_ms: float
    size_bytes: int
    simulated_ops: tuple[str, ...] = ()
    # With TuningConfig.latency_mode="deployed": the deployed latency the per-op table
    # predicts for this plan, and (for plans timed end to end before the final choice)
    # the measured deployed median. latency_ms is the measured one when there is one.
    predicted_latency_ms: float | None = None
    deployed_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "latency_ms": self.latency_ms,
            "latency_p90_ms": self.latency_p90_ms,
            "size_bytes": self.size_bytes,
            "simulated_ops": list(self.simulated_ops),
        }
        if self.predicted_latency_ms is not None:
            d["predicted_latency_ms"] = self.predicted_latency_ms
        if self.deployed_latency_ms is not None:
            d["deployed_latency_ms"] = self.deployed_latency_ms
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        """Inverse of :meth:`to_dict` (as stored in a study's attributes)."""
        return cls(
            accuracy=d["accuracy"],
            loss=d["loss"],
            latency_ms=d["latency_ms"],
            latency_p90_ms=d["latency_p90_ms"],
            size_bytes=d["size_bytes"],
            simulated_ops=tuple(d.get("simulated_ops", ())),
            predicted_latency_ms=d.get("predicted_latency_ms"),
            deployed_latency_ms=d.get("deployed_latency_ms"),
        )


@dataclass(frozen=True)
class FloatBaselines:
    """Median latency (ms) of the float model as a user could run it without autoquant:
    fp32 eager, fp32 compiled (the deployed mode) and bfloat16 compiled, measured once
    per study with the tuner's latency settings. ``bf16_accuracy`` is the user's metric
    on the bfloat16 model (eager), None when not measured."""

    fp32_eager_ms: float
    fp32_compiled_ms: float | None = None
    bf16_ms: float | None = None
    bf16_accuracy: float | None = None

    def latencies(self) -> dict[str, float]:
        out = {"fp32 eager": self.fp32_eager_ms}
        if self.fp32_compiled_ms is not None:
            out["fp32 compiled"] = self.fp32_compiled_ms
        if self.bf16_ms is not None:
            out["bf16 compiled"] = self.bf16_ms
        return out

    @property
    def fastest(self) -> tuple[str, float]:
        """(name, ms) of the fastest float baseline: what a speedup is measured against."""
        return min(self.latencies().items(), key=lambda kv: kv[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_eager_ms": self.fp32_eager_ms,
            "fp32_compiled_ms": self.fp32_compiled_ms,
            "bf16_ms": self.bf16_ms,
            "bf16_accuracy": self.bf16_accuracy,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FloatBaselines:
        return cls(
            fp32_eager_ms=d["fp32_eager_ms"],
            fp32_compiled_ms=d.get("fp32_compiled_ms"),
            bf16_ms=d.get("bf16_ms"),
            bf16_accuracy=d.get("bf16_accuracy"),
        )


@dataclass(frozen=True)
class VerifiedPlan:
    """A leading passing plan timed end to end in the deployed mode before the choice."""

    trial: int
    plan_hash: str
    predicted_ms: float
    measured_ms: float
    measured_p90_ms: float
    # Why the whole model could not be compiled and was timed eager (None: compiled).
    compile_error: str | None = None

    @property
    def error(self) -> float:
        """Relative error of the prediction: (predicted - measured) / measured."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "plan_hash": self.plan_hash,
            "predicted_ms": self.predicted_ms,
            "measured_ms": self.measured_ms,
            "measured_p90_ms": self.measured_p90_ms,
            "compile_error": self.compile_error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerifiedPlan:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class TrialRecord:
    """One trial: the plan it tried and what happened.

    state: ``pass`` (met the goal), ``fail`` (evaluated, missed the goal), ``pruned``
    (stopped early: could no longer meet the goal, or the timeout hit), ``error`` (build
    or evaluation raised, or returned NaN), ``cached`` (same plan as trial
    ``cached_from``; its metrics are reused, nothing was evaluated).
    """

    number: int
    params: dict[str, str]
    plan: Plan
    state: str
    metrics: Metrics | None = None
    error: str | None = None
    cached_from: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    passed: bool = False  # metrics meet the accuracy goal (also for cached trials)

    @property
    def plan_hash(self) -> str:
        return self.plan.hash

    @property
    def accuracy(self) -> float | None:
        return None if self.metrics is None else self.metrics.accuracy

    @property
    def evaluated(self) -> bool:
        """Whether this trial ran the user's evaluation (cached ones did not)."""
        return self.state in ("pass", "fail", "pruned", "error")

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "passed": self.passed,
            "plan_hash": self.plan_hash,
            "fp32_ops": [f for f, c in self.plan.items() if c is None],
            "metrics": None if self.metrics is None else self.metrics.to_dict(),
            "error": self.error,
            "cached_from": self.cached_from,
            "timings": dict(self.timings),
        }


@dataclass
class TuningResult:
    """The outcome of :func:`autoquant.tune`.

    ``best_model`` is never None: when no model met the goal (``met`` False) it is the
    most accurate quantized model found, and a warning said so.
    """

    met: bool
    baseline: Metrics
    best: Metrics
    best_model: nn.Module
    best_plan: Plan
    best_trial: int
    trials: list[TrialRecord]
    study: optuna.Study
    config: TuningConfig
    pareto: list[TrialRecord]
    n_evaluations: int
    calibration_passes: int
    elapsed_s: float
    stopped_because: str
    # Per-unit output error on calibration data with only that unit quantized (higher =
    # more sensitive), when the strategy computed it (sensitivity, sampler warm starts).
    sensitivity: dict[str, float] | None = None
    # Whether this worker finished the study: nothing of it is running and this worker
    # told its last trial. Every worker of a shared study reads the same final study, so
    # exactly one sees True (always True without a storage); trackers conclude on it.
    finished_study: bool = True
    # The float baselines (fp32 eager always; fp32 compiled and bf16 in deployed mode).
    float_baselines: FloatBaselines | None = None
    # Plans timed end to end in the deployed mode before the choice (deployed mode).
    verified: list[VerifiedPlan] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Against the fastest float baseline (fp32 eager, fp32 compiled, bf16)."""
        base = self.baseline.latency_ms
        if self.float_baselines is not None:
            base = self.float_baselines.fastest[1]
        return base / self.best.latency_ms

    @property
    def size_reduction(self) -> float:
        return self.baseline.size_bytes / self.best.size_bytes

    def summary(self) -> str:
        """A printable table: baseline vs best, trial states, ops kept in float."""
        states: dict[str, int] = {}
        for t in self.trials:
            states[t.state] = states.get(t.state, 0) + 1
        b, q = self.baseline, self.best
        fp32 = [f for f, c in self.best_plan.items() if c is None or not c.quantized]
        lines = [
            f"goal {'MET' if self.met else 'NOT MET'}: {self.config.criterion} loss <= "
            f"{self.config.tolerable_loss:g} ({self.config.strategy}, {len(self.trials)} trials, "
            f"{self.n_evaluations} evaluations, {self.elapsed_s:.1f} s, stopped: {self.stopped_because})",
            f"{'':<10}{'accuracy':>12}{'loss':>10}{'latency ms':>12}{'size KiB':>11}",
            f"{'fp32':<10}{b.accuracy:>12.5g}{0:>10.4f}{b.latency_ms:>12.3f}{b.size_bytes / 1024:>11.1f}",
            f"{'best':<10}{q.accuracy:>12.5g}{q.loss:>10.4f}{q.latency_ms:>12.3f}{q.size_bytes / 1024:>11.1f}",
            f"speedup {self.speedup:.2f}x, {self.size_reduction:.2f}x smaller; trial states: "
            + ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
            f"ops kept in fp32 ({len(fp32)}/{len(self.best_plan)}): {', '.join(fp32) if fp32 else 'none'}",
        ]
        report = getattr(self.best_model, "autoquant_pruning", None)
        if report is not None:
            pruned = [
                f"{f} {op['pattern']} sparsity {op['sparsity']:.2f}"
                + (
                    f" ({op['channels'][0]} -> {op['channels'][1]} channels)"
                    if "channels" in op
                    else ""
                )
                for f, op in report.ops.items()
            ]
            lines.append(f"pruned ops ({len(pruned)}): {', '.join(pruned) or 'none'}")
            if report.left_whole:
                lines.append(f"left whole (cannot be pruned safely): {report.left_whole}")
        if self.float_baselines is not None:
            fb = self.float_baselines
            name, ms = fb.fastest
            floats = ", ".join(f"{k} {v:.3f} ms" for k, v in fb.latencies().items())
            acc = "" if fb.bf16_accuracy is None else f"; bf16 accuracy {fb.bf16_accuracy:.5g}"
            lines.append(f"float baselines: {floats} (speedup vs fastest: {name}){acc}")
        for v in self.verified:
            lines.append(
                f"verified trial {v.trial}: predicted {v.predicted_ms:.3f} ms, measured "
                f"{v.measured_ms:.3f} ms deployed ({v.error:+.1%})"
                + ("" if v.compile_error is None else "; it could not compile and ran eager")
            )
        if q.simulated_ops:
            lines.append(f"SIMULATED ops (latency is not quantized speed): {list(q.simulated_ops)}")
        return "\n".join(lines)
