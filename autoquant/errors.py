"""Exceptions (and the one warning) raised by autoquant.

Every error is meant for a person: it names the field or op, what was given, what is
allowed and how to fix it. All derive from :class:`AutoQuantError` so callers can catch
the family, and from the matching builtin (ValueError / TypeError) so generic handlers
still work.
"""

from __future__ import annotations

__all__ = [
    "AutoQuantError",
    "ConfigError",
    "PlanError",
    "UnsupportedConfigError",
    "CalibrationError",
    "SerializationError",
    "QuantizationError",
    "TuningError",
    "GoalNotMetWarning",
]


class AutoQuantError(Exception):
    """Base class of every autoquant error."""


class ConfigError(AutoQuantError, ValueError):
    """A QuantSpec / OpConfig field has a value that is not allowed."""


class PlanError(AutoQuantError, ValueError):
    """Plan rules are malformed or cannot be resolved against the model."""


class UnsupportedConfigError(AutoQuantError, ValueError):
    """The backend has no way to run a config the plan asks for."""


class CalibrationError(AutoQuantError, ValueError):
    """Calibration data is missing, empty, or produced non-finite values."""


class SerializationError(AutoQuantError, ValueError):
    """A saved model directory is missing, truncated, tampered with or incompatible."""


class TuningError(AutoQuantError, RuntimeError):
    """The search could not produce any quantized model (every trial failed)."""


class GoalNotMetWarning(UserWarning):
    """No quantized model met the accuracy goal; the result holds the best one found."""


class QuantizationError(AutoQuantError, RuntimeError):
    """A built model's integer kernel does not compute what its plan's math says."""
