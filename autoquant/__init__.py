"""autoquant: accuracy-aware quantization tuning for PyTorch.

The configs and errors are imported eagerly (they are light); everything that needs
torch is imported on first use, so ``import autoquant`` (and the command line's
``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autoquant.config import OpConfig, QuantSpec, dynamic_int8, static_int8, weight_only
from autoquant.errors import (
    AutoQuantError,
    CalibrationError,
    ConfigError,
    PlanError,
    QuantizationError,
    SerializationError,
    UnsupportedConfigError,
)

# public name -> module that defines it
_LAZY = {
    "quantize": "autoquant.quantizer",
    "quant_info": "autoquant.quantizer",
    "save": "autoquant.serialize",
    "load": "autoquant.serialize",
    "calibrate": "autoquant.calibration",
    "CalibrationStats": "autoquant.calibration",
    "TensorStats": "autoquant.stats",
    "discover": "autoquant.discovery",
    "OpInfo": "autoquant.discovery",
    "Plan": "autoquant.plan",
    "PlanWarning": "autoquant.plan",
    "resolve_plan": "autoquant.plan",
    "QParams": "autoquant.qparams",
    "measure_latency": "autoquant.measure",
    "LatencyStats": "autoquant.measure",
    "size_bytes": "autoquant.measure",
    "Backend": "autoquant.backends",
    "Capability": "autoquant.backends",
    "QuantizedModelInfo": "autoquant.backends.base",
    "capabilities": "autoquant.backends.base",
    "capability_table": "autoquant.backends.base",
    "get_backend": "autoquant.backends",
    "register_backend": "autoquant.backends",
    "tune": "autoquant.tuning",
    "TuningConfig": "autoquant.tuning",
    "TuningResult": "autoquant.tuning",
    "GoalNotMetWarning": "autoquant.tuning",
    "TuningCallback": "autoquant.tuning",
}

__all__ = [
    "AutoQuantError",
    "Backend",
    "calibrate",
    "CalibrationError",
    "CalibrationStats",
    "capabilities",
    "Capability",
    "capability_table",
    "ConfigError",
    "discover",
    "QuantizationError",
    "GoalNotMetWarning",
    "dynamic_int8",
    "get_backend",
    "LatencyStats",
    "load",
    "measure_latency",
    "OpConfig",
    "OpInfo",
    "Plan",
    "PlanError",
    "PlanWarning",
    "QParams",
    "quant_info",
    "quantize",
    "QuantizedModelInfo",
    "QuantSpec",
    "register_backend",
    "resolve_plan",
    "save",
    "SerializationError",
    "size_bytes",
    "static_int8",
    "TensorStats",
    "tune",
    "TuningCallback",
    "TuningConfig",
    "TuningResult",
    "UnsupportedConfigError",
    "weight_only",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'autoquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from autoquant.backends import Backend, Capability, get_backend, register_backend
    from autoquant.backends.base import QuantizedModelInfo, capabilities, capability_table
    from autoquant.calibration import CalibrationStats, calibrate
    from autoquant.discovery import OpInfo, discover
    from autoquant.measure import LatencyStats, measure_latency, size_bytes
    from autoquant.plan import Plan, PlanWarning, resolve_plan
    from autoquant.qparams import QParams
    from autoquant.quantizer import quant_info, quantize
    from autoquant.serialize import load, save
    from autoquant.stats import TensorStats
    from autoquant.tuning import (
        GoalNotMetWarning,
        TuningCallback,
        TuningConfig,
        TuningResult,
        tune,
    )
