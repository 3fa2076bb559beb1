"""TuningConfig: what "good enough" means and how long to look for it.

Defaults follow Intel Neural Compressor's accuracy-aware tuning where it has one
(relative criterion, 1% tolerable loss, higher is better, 100 trials, 100 calibration
samples, seed 1978) and differ where its users were hurt by it: ``timeout`` is a real
wall-clock bound, and by default the search keeps going for the fastest passing model
instead of stopping at the first (``stop_on_first_pass=False``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from autoquant.config import APPROACHES, OBSERVERS
from autoquant.errors import ConfigError

__all__ = ["TuningConfig", "SEARCH_DIMENSIONS", "OBJECTIVES"]

# Fields of an op config the search can vary; the rest stay at the preset's value.
SEARCH_DIMENSIONS = ("approach", "dtype", "scheme", "granularity", "observer", "reduce_range")
OBJECTIVES = ("latency", "size", "latency+size")
_CRITERIA = ("relative", "absolute")
_TIES = ("op", "op_type")
# Fix: "qat" is in autoquant.config.APPROACHES but has no preset in the search space (and
# no backend runs it); TuningConfig accepted it and tune() then failed with KeyError 'qat'.
_TUNABLE_APPROACHES = tuple(a for a in APPROACHES if a != "qat")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _fail(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"TuningConfig.{field} must be {allowed}, but got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class TuningConfig:
    """How to tune.

    Accuracy goal:
        criterion: ``relative`` (loss = (base - acc) / |base|) or ``absolute``
            (loss = base - acc); signs flip when ``higher_is_better`` is False.
        tolerable_loss: the largest loss accepted (0.01 = 1% relative).
        higher_is_better: direction of the user's metric.
    Objective (minimised among models that meet the goal):
        objective: ``latency`` (median ms), ``size`` (bytes as stored), or
            ``latency+size`` (multi-objective; the result carries the Pareto front).
    Strategy and exit policy:
        strategy: ``basic``, ``sensitivity``, ``tpe``, ``nsga2``, ``gp``, ``random``,
            ``bruteforce`` (see :mod:`autoquant.tuning.strategies`).
        max_trials: evaluations of distinct plans, the float baseline not counted.
        timeout: wall-clock seconds for the whole search (None: no limit); checked
            before every trial and inside evaluations that report progress.
        stop_on_first_pass: stop at the first model that meets the goal.
        max_failure_rate: stop when more than this share of trials failed (after 4).
    Search space:
        search: which op-config fields vary (subset of ``SEARCH_DIMENSIONS``);
            ``approach`` lets an op switch between static/dynamic/weight-only.
        approaches: approaches the space may use, in order of preference (the first one
            an op supports is its default config).
        observers: activation observers searched when ``observer`` is in ``search``.
        tie: ``op`` (each op chooses on its own) or ``op_type`` (one choice per op type;
            a much smaller space).
        include_simulated: allow configs without a real kernel (fake-quant). Off by
            default: their latency is not quantized speed.
    Measurement:
        calib_samples: calibration samples (one pass, reused by every trial).
        latency_threads, latency_repeats, latency_warmup: see ``measure_latency``.
        min_latency_gain: relative latency gain a strategy needs before it prefers one
            passing plan over another (medians on a shared CPU move by a few percent).
        metric_bounds: the best value a mean-over-samples metric can take (e.g. 1.0 for
            accuracy). With it, a trial reporting partial results is stopped as soon as
            even perfect remaining samples could not meet the goal. None: never prune.
    Study storage:
        storage: where the Optuna study lives (see :mod:`autoquant.storage`): None (in
            memory), an RDB URL (``sqlite:///...``, ``postgresql://...``),
            ``journal:///absolute/path.log`` or ``grpc://host:port``.
        study_name: the study's name in the storage. With a storage, running again
            with the same name resumes: plans already evaluated are not evaluated again
            and count against ``max_trials``. Any number of processes (workers) may
            run ``tune`` on one study at once: ``max_trials`` counts the study's
            evaluations across all of them, and no plan is evaluated twice.
        heartbeat_interval: seconds between a worker's heartbeats while it holds a trial
            (shared storages only). A trial without a heartbeat for 3 intervals (its
            worker was killed) is marked failed by the other workers and retried.
    Reproducibility:
        seed: sampler seed. The same seed replays the same trials when the strategy's
            decisions do not depend on measured latency (``objective="size"``, or
            strategies that compare accuracy only); with the latency objective, timing
            noise can change which plan a later step builds on.
        backend: quantization backend name.
    """

    criterion: str = "relative"
    tolerable_loss: float = 0.01
    higher_is_better: bool = True
    objective: str = "latency"
    strategy: str = "basic"
    max_trials: int = 100
    timeout: float | None = None
    stop_on_first_pass: bool = False
    max_failure_rate: float = 0.5
    search: tuple[str, ...] = ("approach", "scheme", "observer")
    approaches: tuple[str, ...] = ("static", "dynamic", "weight_only")
    observers: tuple[str, ...] = ("minmax", "kl", "percentile", "mse")
    tie: str = "op"
    include_simulated: bool = False
    calib_samples: int = 100
    latency_threads: int = 1
    latency_repeats: int = 20
    latency_warmup: int = 3
    min_latency_gain: float = 0.03
    metric_bounds: float | None = None
    seed: int = 1978
    backend: str = "x86"
    storage: str | None = None
    study_name: str | None = None
    heartbeat_interval: int = 10

    def __post_init__(self) -> None:
        if self.criterion not in _CRITERIA:
            raise _fail("criterion", self.criterion, f"one of {list(_CRITERIA)}")
        if (
            isinstance(self.tolerable_loss, bool)
            or not isinstance(self.tolerable_loss, (int, float))
            or not math.isfinite(self.tolerable_loss)
            or self.tolerable_loss < 0
        ):
            raise _fail("tolerable_loss", self.tolerable_loss, "a number >= 0 (0.01 = 1%)")
        if not isinstance(self.higher_is_better, bool):
            raise _fail("higher_is_better", self.higher_is_better, "a bool")
        if self.objective not in OBJECTIVES:
            raise _fail("objective", self.objective, f"one of {list(OBJECTIVES)}")
        from autoquant.tuning.strategies import available_strategies

        if self.strategy not in available_strategies():
            raise _fail("strategy", self.strategy, f"one of {available_strategies()}")
        if (
            isinstance(self.max_trials, bool)
            or not isinstance(self.max_trials, int)
            or self.max_trials < 1
        ):
            raise _fail("max_trials", self.max_trials, "an int >= 1")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not self.timeout > 0
        ):
            raise _fail("timeout", self.timeout, "None or a number of seconds > 0")
        if not isinstance(self.stop_on_first_pass, bool):
            raise _fail("stop_on_first_pass", self.stop_on_first_pass, "a bool")
        # Fix (here and for min_latency_gain, metric_bounds): a non-number raised a bare
        # TypeError from the comparison instead of a ConfigError naming the field.
        if not _is_number(self.max_failure_rate) or not (0.0 <= self.max_failure_rate <= 1.0):
            raise _fail("max_failure_rate", self.max_failure_rate, "a number in [0, 1]")
        for field in ("search", "approaches", "observers"):
            # Fix: a bare string was split into characters ("static" -> ('s', 't', ...)).
            if isinstance(getattr(self, field), str):
                raise _fail(field, getattr(self, field), "a tuple or list of names")
        object.__setattr__(self, "search", tuple(self.search))
        object.__setattr__(self, "approaches", tuple(self.approaches))
        object.__setattr__(self, "observers", tuple(self.observers))
        bad = [d for d in self.search if d not in SEARCH_DIMENSIONS]
        if bad:
            raise _fail(
                "search", self.search, f"a subset of {list(SEARCH_DIMENSIONS)} ({bad} unknown)"
            )
        bad = [a for a in self.approaches if a not in _TUNABLE_APPROACHES]
        if bad or not self.approaches:
            raise _fail(
                "approaches", self.approaches, f"a non-empty subset of {list(_TUNABLE_APPROACHES)}"
            )
        bad = [o for o in self.observers if o not in OBSERVERS]
        if bad or not self.observers:
            raise _fail("observers", self.observers, f"a non-empty subset of {list(OBSERVERS)}")
        if self.tie not in _TIES:
            raise _fail("tie", self.tie, f"one of {list(_TIES)}")
        for field in ("calib_samples", "latency_threads", "latency_repeats"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(field, value, "an int >= 1")
        if (
            isinstance(self.latency_warmup, bool)
            or not isinstance(self.latency_warmup, int)
            or self.latency_warmup < 0
        ):
            raise _fail("latency_warmup", self.latency_warmup, "an int >= 0")
        if not _is_number(self.min_latency_gain) or not (0.0 <= self.min_latency_gain < 1.0):
            raise _fail("min_latency_gain", self.min_latency_gain, "a number in [0, 1)")
        if self.metric_bounds is not None and (
            not _is_number(self.metric_bounds) or not math.isfinite(self.metric_bounds)
        ):
            # A NaN bound made every partial report look hopeless: every trial was pruned.
            raise _fail("metric_bounds", self.metric_bounds, "None or a finite number")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("seed", self.seed, "an int")
        self._check_storage()

    def _check_storage(self) -> None:
        if self.storage is not None and not isinstance(self.storage, str):
            raise _fail("storage", self.storage, "None or a storage URL string")
        if self.study_name is not None and (
            not isinstance(self.study_name, str) or not self.study_name
        ):
            raise _fail("study_name", self.study_name, "None or a non-empty string")
        if (
            isinstance(self.heartbeat_interval, bool)
            or not isinstance(self.heartbeat_interval, int)
            or self.heartbeat_interval < 1
        ):
            raise _fail("heartbeat_interval", self.heartbeat_interval, "an int >= 1 (seconds)")
        if self.storage is not None and self.study_name is None:
            raise _fail(
                "study_name",
                None,
                "a name when storage is set (workers and resumed runs find the study by it)",
            )

    def replace(self, **changes: Any) -> TuningConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- the accuracy goal ---------------------------------------------------------------
    def loss(self, baseline: float, value: float) -> float:
        """Accuracy loss of ``value`` against ``baseline`` under this criterion (>0 = worse)."""
        drop = baseline - value if self.higher_is_better else value - baseline
        if self.criterion == "absolute":
            return drop
        return drop / abs(baseline) if baseline != 0 else (0.0 if drop == 0 else math.inf)

    def target(self, baseline: float) -> float:
        """The worst metric value that still meets the goal."""
        margin = self.tolerable_loss * (abs(baseline) if self.criterion == "relative" else 1.0)
        return baseline - margin if self.higher_is_better else baseline + margin

    def meets(self, baseline: float, value: float) -> bool:
        return math.isfinite(value) and self.loss(baseline, value) <= self.tolerable_loss + 1e-12
