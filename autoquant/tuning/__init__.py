"""Accuracy-aware tuning on Optuna: search space, strategies, engine, results."""

from autoquant.tuning.callbacks import TuningCallback
from autoquant.tuning.config import OBJECTIVES, SEARCH_DIMENSIONS, TuningConfig
from autoquant.tuning.engine import GoalNotMetWarning, Reporter, TuningError, tune
from autoquant.tuning.result import Metrics, TrialRecord, TuningResult
from autoquant.tuning.space import FP32, SearchSpace
from autoquant.tuning.strategies import (
    Strategy,
    StrategyContext,
    available_strategies,
    get_strategy,
    register_strategy,
)

__all__ = [
    "FP32",
    "OBJECTIVES",
    "SEARCH_DIMENSIONS",
    "GoalNotMetWarning",
    "Metrics",
    "Reporter",
    "SearchSpace",
    "Strategy",
    "StrategyContext",
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
