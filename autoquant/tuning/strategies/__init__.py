"""Tuning strategies. Importing this package registers the built-in ones."""

from autoquant.tuning.strategies import basic as _basic  # noqa: F401
from autoquant.tuning.strategies import samplers as _samplers  # noqa: F401
from autoquant.tuning.strategies import sensitivity as _sensitivity  # noqa: F401
from autoquant.tuning.strategies.base import (
    SAMPLE,
    Strategy,
    StrategyContext,
    available_strategies,
    get_strategy,
    register_strategy,
)

__all__ = [
    "SAMPLE",
    "Strategy",
    "StrategyContext",
    "available_strategies",
    "get_strategy",
    "register_strategy",
]
