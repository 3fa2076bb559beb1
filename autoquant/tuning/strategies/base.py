"""Strategy extension point: a strategy proposes plans; the engine evaluates them.

A strategy is a generator (:meth:`Strategy.steps`) that yields the next parameters to
try (one label per unit of the search space) and receives the
:class:`~autoquant.tuning.result.TrialRecord` of that try. Yielding :data:`SAMPLE` hands
the choice to the strategy's Optuna sampler; returning ends the search. Deterministic
orders (INC's basic, sensitivity) and Optuna's samplers fit the same loop, share the
trial cache, and are recorded in the same study.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, ClassVar

from autoquant.tuning import objective

if TYPE_CHECKING:
    import optuna

    from autoquant.tuning.config import TuningConfig
    from autoquant.tuning.result import Metrics, TrialRecord
    from autoquant.tuning.space import SearchSpace

__all__ = [
    "SAMPLE",
    "Strategy",
    "StrategyContext",
    "Steps",
    "register_strategy",
    "get_strategy",
    "available_strategies",
]


class _Sample:
    def __repr__(self) -> str:
        return "SAMPLE"


SAMPLE = _Sample()
Proposal = dict[str, str] | _Sample
Steps = Generator[Proposal, "TrialRecord", None]


class StrategyContext:
    """What a strategy may read: the space, the goal, the baseline, cheap sensitivities."""

    def __init__(
        self,
        space: SearchSpace,
        config: TuningConfig,
        baseline: Metrics,
        sensitivity: Callable[[], dict[str, float]],
        prune_sensitivity: Callable[[], dict[str, dict[str, float]]] | None = None,
    ) -> None:
        self.space = space
        self.config = config
        self.baseline = baseline
        self._sensitivity = sensitivity
        self._scores: dict[str, float] | None = None
        self._prune_sensitivity = prune_sensitivity
        self._prune_scores: dict[str, dict[str, float]] | None = None

    def prune_sensitivity(self) -> dict[str, dict[str, float]]:
        """Per pruning unit and label, higher = more sensitive: output error on
        calibration data of the float model with only that op pruned that way. Computed
        once, cached; empty without pruning units."""
        if self._prune_scores is None:
            fn = self._prune_sensitivity
            self._prune_scores = fn() if fn is not None and self.space.prune_units else {}
        return self._prune_scores

    @property
    def scores(self) -> dict[str, float] | None:
        """The sensitivity scores if a strategy asked for them, else None."""
        return self._scores

    def sensitivity(self) -> dict[str, float]:
        """Per-unit score, higher = more sensitive: output error on calibration data
        when only that unit is quantized (its default config). Computed once, cached;
        no full evaluation is spent on it."""
        if self._scores is None:
            self._scores = self._sensitivity()
        return self._scores


class Strategy(ABC):
    """Base class of tuning strategies."""

    name: ClassVar[str]
    # With workers sharing a study: while another worker evaluates the plan this strategy
    # proposed, evaluate sampled plans instead of waiting (samplers: warm starts are only
    # hints). Deterministic orders (basic, sensitivity) wait: each step needs the last.
    fill_while_waiting: ClassVar[bool] = False

    def __init__(self, context: StrategyContext) -> None:
        self.context = context
        self.space = context.space
        self.config = context.config

    def sampler(self) -> optuna.samplers.BaseSampler:
        """The sampler that answers :data:`SAMPLE` (and is seeded for replay)."""
        import optuna

        return optuna.samplers.RandomSampler(seed=self.config.seed)

    @abstractmethod
    def steps(self) -> Steps:
        """Yield parameters (or SAMPLE), receive each trial's record; return to stop."""

    # -- helpers shared by strategies --------------------------------------------------
    def better(self, new: TrialRecord, old: TrialRecord | None) -> bool:
        """Passing beats failing; among passing, the objective (latency by a clear
        margin); among failing, accuracy (see :func:`autoquant.tuning.objective.better`)."""
        return objective.better(self.config, new, old)

    def prune_refinement(
        self, params: dict[str, str], record: TrialRecord
    ) -> Generator[Proposal, TrialRecord, tuple[dict[str, str], TrialRecord]]:
        """Once a plan passes: prune each op as far as the goal allows.

        Ops are taken least sensitive first (their output error at their largest ratio,
        from :meth:`StrategyContext.prune_sensitivity`); for each, its choices are tried
        from the largest ratio down, and the first that passes and is better (faster by
        the objective's margin) is kept. When the fine-tuning budget is searched
        (``prune_budget``), a choice that fails is tried again with the other budgets in
        their configured order (default first), and the first that passes is its budget:
        fine-tuning is spent only where the pruning needs it. Returns the best
        parameters and record.
        """
        from autoquant.tuning.space import BUDGET_PARAM

        units = self.space.prune_units
        best_params, best = dict(params), record
        if not units or not best.passed:
            return best_params, best
        scores = self.context.prune_sensitivity()

        def ratio(unit: str, label: str) -> float:
            spec = units[unit].specs[units[unit].labels.index(label)]
            return 0.0 if spec is None else float(spec.ratio)

        def worst(unit: str) -> float:
            s = scores.get(unit, {})
            return max(s.values()) if s else 0.0

        for unit in sorted(units, key=worst):
            labels = [lab for lab in units[unit].labels if lab != units[unit].default]
            # Largest ratio first; equal ratios least sensitive first.
            labels.sort(key=lambda lab, u=unit: (-ratio(u, lab), scores.get(u, {}).get(lab, 0.0)))
            for label in labels:
                candidate = dict(best_params)
                candidate[unit] = label
                rec = yield candidate
                for budget in self.space.budgets if self.space.budget_searched else ():
                    if rec.passed:
                        break
                    if budget == candidate[BUDGET_PARAM]:
                        continue
                    retry = {**candidate, BUDGET_PARAM: budget}
                    rec2 = yield retry
                    if rec2.passed:
                        candidate, rec = retry, rec2
                if rec.passed and self.better(rec, best):
                    best_params, best = candidate, rec
                    break
        return best_params, best

    def speed_refinement(self, params: dict[str, str], record: TrialRecord) -> Steps:
        """Once a plan passes: keep an op in fp32 where that is faster and still passes.

        Quantized kernels are not always faster (tiny layers pay quantize/dequantize,
        some weight-only kernels are slower than fp32), so this is measured, op by op,
        smallest ops first, within the trial budget.
        """
        macs = {op.fqn: op.macs or op.n_params for op in self.space.ops}
        order = sorted(
            (u for u in self.space.unit_names if params[u] != "fp32"),
            key=lambda u: sum(macs[f] for f in self.space.units[u].fqns),
        )
        best_params, best = dict(params), record
        for unit in order:
            candidate = self.space.with_fp32(best_params, [unit])
            if not any(v != "fp32" for v in candidate.values()):
                continue
            rec = yield candidate
            if rec.passed and self.better(rec, best):
                best_params, best = candidate, rec
        return None


_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a strategy under its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_strategies() -> list[str]:
    return sorted(_REGISTRY)


def get_strategy(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        from autoquant.errors import ConfigError

        raise ConfigError(
            f"TuningConfig.strategy must be one of {available_strategies()}, but got "
            f"{name!r}. A new strategy registers itself with @register_strategy."
        ) from None
