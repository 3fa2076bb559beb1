"""autoquant: accuracy-aware quantization tuning for PyTorch."""

from autoquant.config import OpConfig, QuantSpec, dynamic_int8, static_int8, weight_only
from autoquant.errors import (
    AutoQuantError,
    CalibrationError,
    ConfigError,
    PlanError,
    SerializationError,
    UnsupportedConfigError,
)

__all__ = [
    "AutoQuantError",
    "CalibrationError",
    "ConfigError",
    "OpConfig",
    "PlanError",
    "QuantSpec",
    "SerializationError",
    "UnsupportedConfigError",
    "dynamic_int8",
    "static_int8",
    "weight_only",
]
