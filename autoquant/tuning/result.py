"""Plain records of a tuning run: metrics, one record per trial, the final result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autoquant.plan import Plan
    from autoquant.tuning.config import TuningConfig

__all__ = ["Metrics", "TrialRecord", "TuningResult"]


@dataclass(frozen=True)
class Metrics:
    """What one model scored. ``loss`` follows the config's criterion (>0 = worse)."""

    accuracy: float
    loss: float
    latency_ms: float
    latency_p90_ms: float
    size_bytes: int
    simulated_ops: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "latency_ms": self.latency_ms,
            "latency_p90_ms": self.latency_p90_ms,
            "size_bytes": self.size_bytes,
            "simulated_ops": list(self.simulated_ops),
        }

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
        )


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

    @property
    def speedup(self) -> float:
        return self.baseline.latency_ms / self.best.latency_ms

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
        if q.simulated_ops:
            lines.append(f"SIMULATED ops (latency is not quantized speed): {list(q.simulated_ops)}")
        return "\n".join(lines)
