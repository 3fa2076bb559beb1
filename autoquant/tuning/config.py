"""TuningConfig: what "good enough" means and how long to look for it.

Five sections, each a frozen dataclass validated on its own, mirror the command line's
config groups (conf/, whose Hydra schema is derived from these classes):

* :class:`GoalConfig`: what passes and what is minimised (conf ``tuning.criterion``,
  ``tuning.tolerable_loss``, ``tuning.objective``; the metric's direction and bound come
  with the data: ``data.metric.higher_is_better``, ``data.metric.bounds``);
* :class:`SpaceConfig`: which choices each op has (conf ``space``);
* :class:`BudgetConfig`: how the search runs and when it stops (conf ``strategy`` and the
  budget keys of ``tuning``);
* :class:`LatencyConfig`: how latency is measured and compared (conf ``tuning.latency``);
* :class:`StudyConfig`: where the Optuna study lives (conf ``storage``, ``study.name``).

``TuningConfig`` holds one of each plus the backend name, and also takes (and exposes,
read-only) every setting by its flat name, e.g. ``TuningConfig(tolerable_loss=0.005,
max_trials=10)`` and ``config.tolerable_loss``; :data:`FLAT` says which section each flat
name lives in.

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

from autoquant.approaches import tunable_approaches
from autoquant.config import OBSERVERS
from autoquant.errors import ConfigError

__all__ = [
    "TuningConfig",
    "GoalConfig",
    "SpaceConfig",
    "BudgetConfig",
    "LatencyConfig",
    "StudyConfig",
    "QATSearchConfig",
    "SEARCH_DIMENSIONS",
    "OBJECTIVES",
]

# Fields of an op config the search can vary; the rest stay at the preset's value.
SEARCH_DIMENSIONS = ("approach", "dtype", "scheme", "granularity", "observer", "reduce_range")
OBJECTIVES = ("latency", "size", "latency+size")
LATENCY_MODES = ("eager", "deployed")
_CRITERIA = ("relative", "absolute")
_TIES = ("op", "op_type")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_int(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


# flat TuningConfig keyword -> (section attribute, field in that section), in the order
# to_dict() reports them (the keys MLflow runs and study attributes record).
FLAT: dict[str, tuple[str, str]] = {
    "criterion": ("goal", "criterion"),
    "tolerable_loss": ("goal", "tolerable_loss"),
    "higher_is_better": ("goal", "higher_is_better"),
    "objective": ("goal", "objective"),
    "strategy": ("budget", "strategy"),
    "max_trials": ("budget", "max_trials"),
    "timeout": ("budget", "timeout"),
    "stop_on_first_pass": ("budget", "stop_on_first_pass"),
    "max_failure_rate": ("budget", "max_failure_rate"),
    "search": ("space", "search"),
    "approaches": ("space", "approaches"),
    "observers": ("space", "observers"),
    "tie": ("space", "tie"),
    "include_simulated": ("space", "include_simulated"),
    "prune_patterns": ("space", "prune_patterns"),
    "prune_ratios": ("space", "prune_ratios"),
    "prune_schedule": ("space", "prune_schedule"),
    "prune_stages": ("space", "prune_stages"),
    "prune_ramp": ("space", "prune_ramp"),
    "prune_epochs": ("space", "prune_epochs"),
    "prune_lr_scales": ("space", "prune_lr_scales"),
    "calib_samples": ("budget", "calib_samples"),
    "latency_threads": ("latency", "threads"),
    "latency_repeats": ("latency", "repeats"),
    "latency_warmup": ("latency", "warmup"),
    "min_latency_gain": ("latency", "min_gain"),
    "latency_mode": ("latency", "mode"),
    "latency_verify_top": ("latency", "verify_top"),
    "metric_bounds": ("goal", "metric_bounds"),
    "seed": ("budget", "seed"),
    "backend": ("", "backend"),
    "storage": ("study", "storage"),
    "study_name": ("study", "study_name"),
    "heartbeat_interval": ("study", "heartbeat_interval"),
    "qat_epochs": ("qat", "epochs"),
    "qat_lr_scales": ("qat", "lr_scales"),
    "qat_steps": ("qat", "steps"),
    "qat_trials": ("qat", "trials"),
    "qat_learn_scales": ("qat", "learn_scales"),
    "qat_freeze_bn_at": ("qat", "freeze_bn_at"),
}
_FLAT_NAME = {pair: flat for flat, pair in FLAT.items()}


def _fail(section: str, field: str, value: Any, allowed: str) -> ConfigError:
    flat = _FLAT_NAME[(section, field)]
    also = f" ({section}.{field})" if flat != field else ""
    return ConfigError(f"TuningConfig.{flat}{also} must be {allowed}, but got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class GoalConfig:
    """What passes, and what is minimised among models that pass.

    criterion: ``relative`` (loss = (base - acc) / |base|) or ``absolute``
        (loss = base - acc); signs flip when ``higher_is_better`` is False.
    tolerable_loss: the largest loss accepted (0.01 = 1% relative).
    higher_is_better: direction of the user's metric.
    objective: ``latency`` (median ms), ``size`` (bytes as stored), or ``latency+size``
        (multi-objective; the result carries the Pareto front).
    metric_bounds: the best value a mean-over-samples metric can take (e.g. 1.0 for
        accuracy). With it, a trial reporting partial results is stopped as soon as
        even perfect remaining samples could not meet the goal. None: never prune.
    """

    criterion: str = "relative"
    tolerable_loss: float = 0.01
    higher_is_better: bool = True
    objective: str = "latency"
    metric_bounds: float | None = None

    def __post_init__(self) -> None:
        if self.criterion not in _CRITERIA:
            raise _fail("goal", "criterion", self.criterion, f"one of {list(_CRITERIA)}")
        if (
            not _is_number(self.tolerable_loss)
            or not math.isfinite(self.tolerable_loss)
            or self.tolerable_loss < 0
        ):
            raise _fail("goal", "tolerable_loss", self.tolerable_loss, "a number >= 0 (0.01 = 1%)")
        if not isinstance(self.higher_is_better, bool):
            raise _fail("goal", "higher_is_better", self.higher_is_better, "a bool")
        if self.objective not in OBJECTIVES:
            raise _fail("goal", "objective", self.objective, f"one of {list(OBJECTIVES)}")
        if self.metric_bounds is not None and (
            not _is_number(self.metric_bounds) or not math.isfinite(self.metric_bounds)
        ):
            # A NaN bound made every partial report look hopeless: every trial was pruned.
            raise _fail("goal", "metric_bounds", self.metric_bounds, "None or a finite number")

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


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """Which choices each op has.

    search: which op-config fields vary (subset of ``SEARCH_DIMENSIONS``); ``approach``
        lets an op switch between static/dynamic/weight-only.
    approaches: approaches the space may use, in order of preference (the first one an
        op supports is its default config).
    observers: activation observers searched when ``observer`` is in ``search``.
    tie: ``op`` (each op chooses on its own) or ``op_type`` (one choice per op type; a
        much smaller space).
    include_simulated: allow configs without a real kernel (fake-quant). Off by default:
        their latency is not quantized speed.
    prune_patterns: pruning patterns searched per op (``channel``, ``unstructured``,
        ``"N:M"`` such as ``"2:4"``); empty (the default): no pruning dimension.
    prune_ratios: ratios searched for ``channel`` and ``unstructured`` (each in (0, 1)).
    prune_schedule: how a pruned model is fine-tuned with ``tune(train_fn=)``:
        ``oneshot`` (pruned to its ratios, then trained once) or ``gradual`` (the ratios
        rise over ``prune_stages`` stages along the cubic schedule, training between,
        channels removed at every stage; see :mod:`autoquant.pruning.schedule`).
        ``gradual`` needs a ``train_fn``.
    prune_stages: stages of the gradual schedule (an int >= 2).
    prune_ramp: share of the fine-tuning budget over which a gradual schedule raises the
        ratio, in (0, 1]; the rest fine-tunes at the full ratio.
    prune_epochs, prune_lr_scales: the fine-tuning budgets of a pruned model (their
        product, each a :class:`~autoquant.qat.train.TrainBudget`; the first pair is the
        default). With more than one, the budget is a search dimension
        (``prune_budget``) of every plan that prunes; it needs a ``train_fn``.
    """

    search: tuple[str, ...] = ("approach", "scheme", "observer")
    approaches: tuple[str, ...] = ("static", "dynamic", "weight_only")
    observers: tuple[str, ...] = ("minmax", "kl", "percentile", "mse")
    tie: str = "op"
    include_simulated: bool = False
    prune_patterns: tuple[str, ...] = ()
    prune_ratios: tuple[float, ...] = (0.25, 0.5)
    prune_schedule: str = "oneshot"
    prune_stages: int = 4
    prune_ramp: float = 0.5
    prune_epochs: tuple[float, ...] = (1.0,)
    prune_lr_scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        from autoquant.pruning.schedule import SCHEDULES
        from autoquant.pruning.spec import parse_nm

        if self.prune_schedule not in SCHEDULES:
            raise _fail(
                "space",
                "prune_schedule",
                self.prune_schedule,
                f"one of {list(SCHEDULES)} (gradual: the ratio rises over prune_stages stages)",
            )
        if not _is_int(self.prune_stages, 2):
            raise _fail(
                "space",
                "prune_stages",
                self.prune_stages,
                "an int >= 2 (for one stage use prune_schedule='oneshot')",
            )
        if not _is_number(self.prune_ramp) or not 0.0 < self.prune_ramp <= 1.0:
            raise _fail(
                "space",
                "prune_ramp",
                self.prune_ramp,
                "a number in (0, 1] (the share of the budget over which the ratio rises)",
            )
        for field in ("prune_epochs", "prune_lr_scales"):
            value = getattr(self, field)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise _fail("space", field, value, "a non-empty tuple of numbers > 0")
            value = tuple(value)
            if not value or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in value):
                raise _fail("space", field, value, "a non-empty tuple of numbers > 0")
            if len(set(value)) != len(value):
                raise _fail("space", field, value, "a tuple of distinct numbers > 0")
            object.__setattr__(self, field, tuple(float(v) for v in value))

        for field in ("prune_patterns", "prune_ratios"):
            value = getattr(self, field)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise _fail("space", field, value, "a tuple or list")
            object.__setattr__(self, field, tuple(value))
        bad = [
            p
            for p in self.prune_patterns
            if p not in ("channel", "unstructured")
            and not (
                parse_nm(p) is not None and 0 < parse_nm(p)[0] < parse_nm(p)[1]  # type: ignore[index]
            )
        ]
        if bad:
            raise _fail(
                "space",
                "prune_patterns",
                self.prune_patterns,
                f"a subset of ['channel', 'unstructured', 'N:M' like '2:4'] ({bad} unknown)",
            )
        if any(not _is_number(r) or not 0 < r < 1 for r in self.prune_ratios) or (
            self.prune_patterns and not self.prune_ratios
        ):
            raise _fail(
                "space", "prune_ratios", self.prune_ratios, "a non-empty tuple of numbers in (0, 1)"
            )
        object.__setattr__(self, "prune_ratios", tuple(sorted(set(map(float, self.prune_ratios)))))
        for field in ("search", "approaches", "observers"):
            # Fix: a bare string was split into characters ("static" -> ('s', 't', ...)).
            value = getattr(self, field)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise _fail("space", field, value, "a tuple or list of names")
            object.__setattr__(self, field, tuple(value))
        bad = [d for d in self.search if d not in SEARCH_DIMENSIONS]
        if bad:
            raise _fail(
                "space",
                "search",
                self.search,
                f"a subset of {list(SEARCH_DIMENSIONS)} ({bad} unknown)",
            )
        # Approaches with a search-space preset (autoquant.approaches), plus "qat": it has
        # no per-op preset but its own phase of trials (autoquant.tuning._qat), run after
        # the post-training ones, or alone when it is the only approach asked for.
        tunable = (*tunable_approaches(), "qat")
        bad = [a for a in self.approaches if a not in tunable]
        if bad or not self.approaches:
            raise _fail(
                "space",
                "approaches",
                self.approaches,
                f"a non-empty subset of {list(tunable)}",
            )
        bad = [o for o in self.observers if o not in OBSERVERS]
        if bad or not self.observers:
            raise _fail(
                "space", "observers", self.observers, f"a non-empty subset of {list(OBSERVERS)}"
            )
        if self.tie not in _TIES:
            raise _fail("space", "tie", self.tie, f"one of {list(_TIES)}")
        if not isinstance(self.include_simulated, bool):
            raise _fail("space", "include_simulated", self.include_simulated, "a bool")

    def prune_budgets(self) -> list[Any]:
        """The fine-tuning budgets of pruned models, default first."""
        from autoquant.qat.train import TrainBudget

        return [
            TrainBudget(epochs=e, lr_scale=lr)
            for e in self.prune_epochs
            for lr in self.prune_lr_scales
        ]

    def schedule(self) -> Any:
        """The :class:`~autoquant.pruning.schedule.PruneSchedule` of pruned models."""
        from autoquant.pruning.schedule import PruneSchedule

        return PruneSchedule(
            kind=self.prune_schedule, stages=self.prune_stages, ramp=float(self.prune_ramp)
        )


@dataclass(frozen=True, kw_only=True)
class QATSearchConfig:
    """Quantization-aware training trials, run when ``"qat"`` is in ``approaches``.

    INC's order: post-training plans first; QAT trials only when none of them meets the
    goal, starting from the most accurate post-training plan and the study's calibration
    (or, when ``"qat"`` is the only approach, from the space's default plan). Each trial
    fine-tunes a copy with the user's ``train_fn`` under one budget.

    epochs, lr_scales: the fine-tuning budgets searched, in order (their product; the
        first pair is the default). A ``train_fn(model, budget)`` receives a
        :class:`~autoquant.qat.train.TrainBudget`; a one-argument ``train_fn`` runs its
        own schedule and the budget is only recorded.
    steps: cap on optimizer steps per trial (None: no cap).
    trials: QAT trials at most (not counted in ``max_trials``); they stop at the first
        budget that meets the goal.
    learn_scales, freeze_bn_at: the :class:`~autoquant.qat.QATConfig` of every trial.
    """

    epochs: tuple[float, ...] = (1.0, 3.0)
    lr_scales: tuple[float, ...] = (1.0, 0.3)
    steps: int | None = None
    trials: int = 4
    learn_scales: bool = False
    freeze_bn_at: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "lr_scales"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise _fail("qat", name, value, "a non-empty tuple of numbers > 0")
            value = tuple(value)
            if not value or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in value):
                raise _fail("qat", name, value, "a non-empty tuple of numbers > 0")
            object.__setattr__(self, name, value)
        if self.steps is not None and not _is_int(self.steps, 1):
            raise _fail("qat", "steps", self.steps, "None or an int >= 1")
        if not _is_int(self.trials, 1):
            raise _fail("qat", "trials", self.trials, "an int >= 1")
        if not isinstance(self.learn_scales, bool):
            raise _fail("qat", "learn_scales", self.learn_scales, "a bool")
        if not _is_int(self.freeze_bn_at, 0):
            raise _fail("qat", "freeze_bn_at", self.freeze_bn_at, "an int >= 0")

    def budgets(self) -> list[Any]:
        """The TrainBudgets searched, default first."""
        from autoquant.qat.train import TrainBudget

        return [
            TrainBudget(epochs=e, lr_scale=lr, steps=self.steps)
            for e in self.epochs
            for lr in self.lr_scales
        ]


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """How the search runs and when it stops.

    strategy: ``basic``, ``sensitivity``, ``tpe``, ``nsga2``, ``gp``, ``random``,
        ``bruteforce`` or a registered one (see :mod:`autoquant.tuning.strategies`; the
        name is checked where strategies are looked up, when ``tune`` starts).
    max_trials: evaluations of distinct plans, the float baseline not counted.
    timeout: wall-clock seconds for the whole search (None: no limit); checked before
        every trial and inside evaluations that report progress.
    stop_on_first_pass: stop at the first model that meets the goal.
    max_failure_rate: stop when more than this share of trials failed (after 4).
    calib_samples: calibration samples (one pass, reused by every trial).
    seed: sampler seed. The same seed replays the same trials when the strategy's
        decisions do not depend on measured latency (``objective="size"``, or strategies
        that compare accuracy only); with the latency objective, timing noise can change
        which plan a later step builds on.
    """

    strategy: str = "basic"
    max_trials: int = 100
    timeout: float | None = None
    stop_on_first_pass: bool = False
    max_failure_rate: float = 0.5
    calib_samples: int = 100
    seed: int = 1978

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or not self.strategy:
            raise _fail("budget", "strategy", self.strategy, "a strategy name")
        if not _is_int(self.max_trials, 1):
            raise _fail("budget", "max_trials", self.max_trials, "an int >= 1")
        if self.timeout is not None and (not _is_number(self.timeout) or not self.timeout > 0):
            raise _fail("budget", "timeout", self.timeout, "None or a number of seconds > 0")
        if not isinstance(self.stop_on_first_pass, bool):
            raise _fail("budget", "stop_on_first_pass", self.stop_on_first_pass, "a bool")
        # Fix (here and for min_gain, metric_bounds): a non-number raised a bare
        # TypeError from the comparison instead of a ConfigError naming the field.
        if not _is_number(self.max_failure_rate) or not (0.0 <= self.max_failure_rate <= 1.0):
            raise _fail("budget", "max_failure_rate", self.max_failure_rate, "a number in [0, 1]")
        if not _is_int(self.calib_samples, 1):
            raise _fail("budget", "calib_samples", self.calib_samples, "an int >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("budget", "seed", self.seed, "an int")


@dataclass(frozen=True, kw_only=True)
class LatencyConfig:
    """How latency is measured (see ``measure_latency``) and compared.

    threads, repeats, warmup: torch threads, timed calls (the median is kept), untimed
        calls first.
    min_gain: relative latency gain a strategy needs before it prefers one passing plan
        over another (medians on a shared CPU move by a few percent).
    mode: what a trial's latency is. ``eager``: each candidate is timed as built, in
        eager mode. ``deployed``: the latency a user deploying the model gets (compiled,
        see ``autoquant._deploy_mode``); it is predicted from a per-op latency table
        (each (op, config) timed once, alone, compiled, stored in the study), the float
        baselines include fp32 compiled and bf16, and the leading passing plans are
        timed end to end before the final choice.
    verify_top: with ``mode="deployed"``, how many of the leading passing plans (by
        predicted latency) are timed end to end before the choice; 0 chooses by the
        prediction alone.
    """

    threads: int = 1
    repeats: int = 20
    warmup: int = 3
    min_gain: float = 0.03
    mode: str = "eager"
    verify_top: int = 3

    def __post_init__(self) -> None:
        for field in ("threads", "repeats"):
            if not _is_int(getattr(self, field), 1):
                raise _fail("latency", field, getattr(self, field), "an int >= 1")
        if not _is_int(self.warmup, 0):
            raise _fail("latency", "warmup", self.warmup, "an int >= 0")
        if not _is_number(self.min_gain) or not (0.0 <= self.min_gain < 1.0):
            raise _fail("latency", "min_gain", self.min_gain, "a number in [0, 1)")
        if self.mode not in LATENCY_MODES:
            raise _fail(
                "latency",
                "mode",
                self.mode,
                f"one of {list(LATENCY_MODES)} (deployed: compiled, predicted per op)",
            )
        if not _is_int(self.verify_top, 0):
            raise _fail("latency", "verify_top", self.verify_top, "an int >= 0")


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """Where the Optuna study lives.

    storage: None (in memory), an RDB URL (``sqlite:///...``, ``postgresql://...``),
        ``journal:///absolute/path.log`` or ``grpc://host:port`` (see
        :mod:`autoquant.storage`).
    study_name: the study's name in the storage. With a storage, running again with the
        same name resumes: plans already evaluated are not evaluated again and count
        against ``max_trials``. Any number of processes (workers) may run ``tune`` on one
        study at once: ``max_trials`` counts the study's evaluations across all of them,
        and no plan is evaluated twice.
    heartbeat_interval: seconds between a worker's heartbeats while it holds a trial
        (shared storages only). A trial without a heartbeat for 3 intervals (its worker
        was killed) is marked failed by the other workers and retried.
    """

    storage: str | None = None
    study_name: str | None = None
    heartbeat_interval: int = 10

    def __post_init__(self) -> None:
        if self.storage is not None and not isinstance(self.storage, str):
            raise _fail("study", "storage", self.storage, "None or a storage URL string")
        if self.study_name is not None and (
            not isinstance(self.study_name, str) or not self.study_name
        ):
            raise _fail("study", "study_name", self.study_name, "None or a non-empty string")
        if not _is_int(self.heartbeat_interval, 1):
            raise _fail(
                "study", "heartbeat_interval", self.heartbeat_interval, "an int >= 1 (seconds)"
            )
        if self.storage is not None and self.study_name is None:
            raise _fail(
                "study",
                "study_name",
                None,
                "a name when storage is set (workers and resumed runs find the study by it)",
            )


_SECTIONS: dict[str, type] = {
    "goal": GoalConfig,
    "space": SpaceConfig,
    "budget": BudgetConfig,
    "latency": LatencyConfig,
    "study": StudyConfig,
    "qat": QATSearchConfig,
}


@dataclass(frozen=True, init=False)
class TuningConfig:
    """How to tune: one section per concern, plus the backend.

    ``TuningConfig(goal=GoalConfig(...), budget=BudgetConfig(...), ...)`` or, equally,
    flat keywords routed to their section: ``TuningConfig(tolerable_loss=0.005,
    max_trials=10, strategy="tpe")`` (both may be mixed; a flat keyword overrides the
    same field of a section given alongside). Every flat name is also a read-only
    attribute (``config.max_trials``). Defaults follow Intel Neural Compressor where it
    has one. Flat names, by section:

    goal: criterion, tolerable_loss, higher_is_better, objective, metric_bounds.
    space: search, approaches, observers, tie, include_simulated, prune_patterns,
        prune_ratios, prune_schedule, prune_stages, prune_ramp, prune_epochs,
        prune_lr_scales.
    budget: strategy, max_trials, timeout, stop_on_first_pass, max_failure_rate,
        calib_samples, seed.
    latency: latency_threads, latency_repeats, latency_warmup, min_latency_gain,
        latency_mode, latency_verify_top (``LatencyConfig.threads``, ``.repeats``,
        ``.warmup``, ``.min_gain``, ``.mode``, ``.verify_top``).
    study: storage, study_name, heartbeat_interval.
    qat: qat_epochs, qat_lr_scales, qat_steps, qat_trials, qat_learn_scales,
        qat_freeze_bn_at (``QATSearchConfig``; used when ``"qat"`` is in approaches).
    backend: quantization backend name (``x86``, ``simulated``, ``cuda``; see ``capabilities``).
    """

    goal: GoalConfig
    space: SpaceConfig
    budget: BudgetConfig
    latency: LatencyConfig
    study: StudyConfig
    qat: QATSearchConfig
    backend: str

    def __init__(
        self,
        *,
        goal: GoalConfig | None = None,
        space: SpaceConfig | None = None,
        budget: BudgetConfig | None = None,
        latency: LatencyConfig | None = None,
        study: StudyConfig | None = None,
        qat: QATSearchConfig | None = None,
        backend: str = "x86",
        **flat: Any,
    ) -> None:
        given = {
            "goal": goal,
            "space": space,
            "budget": budget,
            "latency": latency,
            "study": study,
            "qat": qat,
        }
        changes: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, value in flat.items():
            if key not in FLAT:
                raise TypeError(
                    f"TuningConfig got an unknown setting {key!r}. Settings: "
                    f"{', '.join(FLAT)} (or the sections {', '.join(_SECTIONS)})."
                )
            section, field = FLAT[key]
            changes[section][field] = value
        for name, cls in _SECTIONS.items():
            obj = given[name]
            if obj is None:
                obj = cls(**changes[name])
            elif not isinstance(obj, cls):
                raise ConfigError(f"TuningConfig.{name} must be a {cls.__name__}, but got {obj!r}.")
            elif changes[name]:
                obj = dataclasses.replace(obj, **changes[name])
            object.__setattr__(self, name, obj)
        if not isinstance(backend, str) or not backend:
            raise _fail("", "backend", backend, "a backend name")
        object.__setattr__(self, "backend", backend)

    def replace(self, **changes: Any) -> TuningConfig:
        """A copy with sections and/or flat settings changed (validated again)."""
        sections = {name: getattr(self, name) for name in _SECTIONS}
        sections.update((k, changes.pop(k)) for k in list(changes) if k in _SECTIONS)
        backend = changes.pop("backend", self.backend)
        return TuningConfig(**sections, backend=backend, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by its flat name (what tracking and study attributes record)."""
        return {flat: getattr(self, flat) for flat in FLAT}

    # -- the accuracy goal (GoalConfig's) ------------------------------------------------
    def loss(self, baseline: float, value: float) -> float:
        """Accuracy loss of ``value`` against ``baseline`` under this criterion (>0 = worse)."""
        return self.goal.loss(baseline, value)

    def target(self, baseline: float) -> float:
        """The worst metric value that still meets the goal."""
        return self.goal.target(baseline)

    def meets(self, baseline: float, value: float) -> bool:
        return self.goal.meets(baseline, value)


def _flat_property(section: str, field: str) -> property:
    def get(self: TuningConfig) -> Any:
        return getattr(getattr(self, section), field)

    get.__doc__ = f"``{section}.{field}`` (read-only)"
    return property(get)


for _flat, (_section, _field) in FLAT.items():
    if _section:
        setattr(TuningConfig, _flat, _flat_property(_section, _field))
