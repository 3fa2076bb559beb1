"""What "passes" and what is "better": the one definition the whole tuner uses.

* **passes**: a model's metric meets the accuracy goal (``TuningConfig.meets``: criterion,
  tolerable loss, direction).
* **the objective**: what is minimised among passing models, ``latency`` (median ms),
  ``size`` (bytes) or both (``latency+size``). :func:`objective_values` are the values
  Optuna's samplers see; :func:`primary` is the first of them (what strategies and plots
  compare).
* **better**: passing beats failing; among passing models the objective, where latency
  (noisy on a shared CPU) must win by ``min_latency_gain`` to count; among failing ones
  the accuracy loss. :func:`better` applies it to one step of a strategy (keep the new
  trial?), :func:`best` to a set (which trial is the result, or best so far?): latencies
  within ``min_latency_gain`` of the fastest tie, and among tied plans the smallest
  (most quantized) wins, then the fastest. Size is exact: no margin.
* **the Pareto front**: evaluated trials not dominated on (loss, objective...).

Strategies (``Strategy.better``), the search loop (best so far, told to callbacks), the
final choice and the tracking plots all read these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoquant.tuning.config import TuningConfig
    from autoquant.tuning.result import Metrics, TrialRecord

__all__ = [
    "best",
    "better",
    "most_accurate",
    "n_objectives",
    "objective_values",
    "pareto_front",
    "passes",
    "primary",
]


def passes(config: TuningConfig, baseline: float, value: float) -> bool:
    """Whether metric ``value`` meets the goal against the float model's ``baseline``."""
    return config.meets(baseline, value)


def n_objectives(config: TuningConfig) -> int:
    return 2 if config.objective == "latency+size" else 1


def objective_values(config: TuningConfig, m: Metrics) -> list[float]:
    """The values told to Optuna (all minimised)."""
    if config.objective == "size":
        return [float(m.size_bytes)]
    if config.objective == "latency+size":
        return [m.latency_ms, float(m.size_bytes)]
    return [m.latency_ms]


def primary(objective: str, m: Metrics) -> float:
    """The first objective: size in bytes for ``size``, else median latency in ms."""
    if objective == "size":
        return float(m.size_bytes)
    return m.latency_ms


def _margin(config: TuningConfig) -> float:
    # Latency medians on a shared CPU move by a few percent; sizes are exact.
    return 0.0 if config.objective == "size" else config.min_latency_gain


def better(config: TuningConfig, new: TrialRecord, old: TrialRecord | None) -> bool:
    """Whether ``new`` should replace ``old`` as a strategy's current best: passing beats
    failing; among passing, the objective by a clear margin; among failing, accuracy."""
    if new.metrics is None:
        return False
    if old is None or old.metrics is None:
        return True
    if new.passed != old.passed:
        return new.passed
    if new.passed:
        return primary(config.objective, new.metrics) < primary(config.objective, old.metrics) * (
            1 - _margin(config)
        )
    return new.metrics.loss < old.metrics.loss


def best(passing: Sequence[TrialRecord], config: TuningConfig) -> TrialRecord:
    """The best of passing trials (with metrics): the result, or the best so far.

    Plans within ``min_latency_gain`` of the fastest count as equally fast; among those
    the smallest (most quantized) wins, then the fastest. The size objective is exact.
    """
    metrics = {r.number: r.metrics for r in passing}
    if config.objective == "size":
        return min(
            passing, key=lambda r: (metrics[r.number].size_bytes, metrics[r.number].latency_ms)
        )
    fastest = min(metrics[r.number].latency_ms for r in passing)
    close = [r for r in passing if metrics[r.number].latency_ms <= fastest * (1 + _margin(config))]
    return min(close, key=lambda r: (metrics[r.number].size_bytes, metrics[r.number].latency_ms))


def most_accurate(scored: Sequence[TrialRecord]) -> TrialRecord:
    """When nothing passes: the smallest loss, then the fastest."""
    return min(scored, key=lambda r: (r.metrics.loss, r.metrics.latency_ms))  # type: ignore[union-attr]


def pareto_front(records: Sequence[TrialRecord], objective: str) -> list[TrialRecord]:
    """Non-dominated evaluated trials over (loss, latency[, size]) (cached repeats left out)."""
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
