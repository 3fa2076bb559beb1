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
    SerializationError,
    UnsupportedConfigError,
)

# public name -> module that defines it
_LAZY = {
    "quantize": "autoquant.quantize",
    "quant_info": "autoquant.quantize",
    "save": "autoquant.serialize",
    "load": "autoquant.serialize",
    "calibrate": "autoquant.calibrate",
    "CalibrationStats": "autoquant.calibrate",
    "TensorStats": "autoquant.stats",
    "discover": "autoquant.discover",
    "OpInfo": "autoquant.discover",
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
    "get_backend": "autoquant.backends",
    "register_backend": "autoquant.backends",
}

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
    *sorted(_LAZY),
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
    from autoquant.backends.base import QuantizedModelInfo, capabilities
    from autoquant.calibrate import CalibrationStats, calibrate
    from autoquant.discover import OpInfo, discover
    from autoquant.measure import LatencyStats, measure_latency, size_bytes
    from autoquant.plan import Plan, PlanWarning, resolve_plan
    from autoquant.qparams import QParams
    from autoquant.quantize import quant_info, quantize
    from autoquant.serialize import load, save
    from autoquant.stats import TensorStats
