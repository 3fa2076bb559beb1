"""Accuracy-aware tuning on Optuna: config, search space, strategies, the search, results.

Follow one trial top-down: :mod:`~autoquant.tuning.config` (what to tune for, in sections
mirroring conf/), :mod:`~autoquant.tuning.space` (the choices per op),
:mod:`~autoquant.tuning._search` (``tune``: ask, decide, evaluate, tell),
:mod:`~autoquant.tuning._study` (study start-up and telling it outcomes),
:mod:`~autoquant.tuning._runner` (build, evaluate, measure one candidate),
:mod:`~autoquant.tuning.objective` (what passes, what is better, the Pareto front).

Names are imported on first use (PEP 562), so ``autoquant.tuning.config`` or
``autoquant.tuning.callbacks`` can be imported without torch or optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoquant._lazy import lazy_attributes

# public name -> module that defines it
_LAZY = {
    "FP32": "autoquant.tuning.space",
    "SearchSpace": "autoquant.tuning.space",
    "OBJECTIVES": "autoquant.tuning.config",
    "SEARCH_DIMENSIONS": "autoquant.tuning.config",
    "TuningConfig": "autoquant.tuning.config",
    "GoalConfig": "autoquant.tuning.config",
    "SpaceConfig": "autoquant.tuning.config",
    "BudgetConfig": "autoquant.tuning.config",
    "LatencyConfig": "autoquant.tuning.config",
    "StudyConfig": "autoquant.tuning.config",
    "TuningCallback": "autoquant.tuning.callbacks",
    "GoalNotMetWarning": "autoquant.errors",
    "TuningError": "autoquant.errors",
    "Reporter": "autoquant.tuning._runner",
    "tune": "autoquant.tuning._search",
    "Metrics": "autoquant.tuning.result",
    "TrialRecord": "autoquant.tuning.result",
    "TuningResult": "autoquant.tuning.result",
    "Strategy": "autoquant.tuning.strategies",
    "StrategyContext": "autoquant.tuning.strategies",
    "available_strategies": "autoquant.tuning.strategies",
    "get_strategy": "autoquant.tuning.strategies",
    "register_strategy": "autoquant.tuning.strategies",
}

__all__ = [
    "FP32",
    "OBJECTIVES",
    "SEARCH_DIMENSIONS",
    "BudgetConfig",
    "GoalConfig",
    "GoalNotMetWarning",
    "LatencyConfig",
    "Metrics",
    "Reporter",
    "SearchSpace",
    "SpaceConfig",
    "Strategy",
    "StrategyContext",
    "StudyConfig",
    "TrialRecord",
    "TuningCallback",
    "TuningConfig",
    "TuningError",
    "TuningResult",
    "available_strategies",
    "get_strategy",
    "register_strategy",
    "tune",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from autoquant.errors import GoalNotMetWarning, TuningError
    from autoquant.tuning._runner import Reporter
    from autoquant.tuning._search import tune
    from autoquant.tuning.callbacks import TuningCallback
    from autoquant.tuning.config import (
        OBJECTIVES,
        SEARCH_DIMENSIONS,
        BudgetConfig,
        GoalConfig,
        LatencyConfig,
        SpaceConfig,
        StudyConfig,
        TuningConfig,
    )
    from autoquant.tuning.result import Metrics, TrialRecord, TuningResult
    from autoquant.tuning.space import FP32, SearchSpace
    from autoquant.tuning.strategies import (
        Strategy,
        StrategyContext,
        available_strategies,
        get_strategy,
        register_strategy,
    )
