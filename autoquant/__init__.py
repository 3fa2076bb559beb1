"""autoquant: accuracy-aware quantization tuning for PyTorch.

The configs and errors are imported eagerly (they are light); everything that needs
torch is imported on first use, so ``import autoquant`` (and the command line's
``--help``) stays fast. ``__all__`` lists what a user calls; the other names below
(``_LAZY``) stay importable from here for code that used them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoquant._lazy import lazy_attributes
from autoquant.config import OpConfig, QuantSpec, dynamic_int8, static_int8, weight_only
from autoquant.config import prune_only as prune_only

# Importable from here, not in __all__: the "X as X" form marks them as re-exports.
from autoquant.errors import AutoQuantError
from autoquant.errors import CalibrationError as CalibrationError
from autoquant.errors import ConfigError as ConfigError
from autoquant.errors import PlanError as PlanError
from autoquant.errors import QuantizationError as QuantizationError
from autoquant.errors import SerializationError as SerializationError
from autoquant.errors import UnsupportedConfigError as UnsupportedConfigError

# Pruning (autoquant.pruning documents it): importable from here, not in __all__.
from autoquant.pruning.schedule import PruneSchedule as PruneSchedule
from autoquant.pruning.spec import PruneSpec as PruneSpec

# name -> module that defines it: the __all__ names that need torch, and every name
# exported before __all__ was trimmed
_LAZY = {
    "quantize": "autoquant.quantizer",
    "quant_info": "autoquant.quantizer",
    "deploy": "autoquant.quantizer",
    "save": "autoquant.serialize",
    "load": "autoquant.serialize",
    "calibrate": "autoquant.calibration",
    "CalibrationStats": "autoquant.stats",
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
    "QuantizedModelInfo": "autoquant.backends.capability",
    "capabilities": "autoquant.backends.registry",
    "capability_table": "autoquant.backends.registry",
    "get_backend": "autoquant.backends",
    "register_backend": "autoquant.backends",
    "tune": "autoquant.tuning",
    "prune": "autoquant.pruning.apply",
    "prune_info": "autoquant.pruning.apply",
    "prune_and_train": "autoquant.pruning.fine_tune",
    "TuningConfig": "autoquant.tuning",
    "TuningResult": "autoquant.tuning",
    "GoalNotMetWarning": "autoquant.tuning",
    "TuningCallback": "autoquant.tuning",
    # quantization-aware training (prepare -> train -> convert), autoquant.qat
    "prepare_qat": "autoquant.qat",
    "convert": "autoquant.qat",
    "QATConfig": "autoquant.qat",
}

# What a user calls: the quantize / tune workflow, the configs it takes, what it returns,
# the warning and the base error to catch. Everything else of _LAZY stays importable from
# here (code written against the longer list keeps working) but is documented in its own
# module: the backend extension points in autoquant.backends, the result and statistics
# types in the modules that return them, TuningCallback in autoquant.tuning, the specific
# errors in autoquant.errors.
__all__ = [
    "AutoQuantError",
    "calibrate",
    "capabilities",
    "discover",
    "dynamic_int8",
    "GoalNotMetWarning",
    "load",
    "measure_latency",
    "OpConfig",
    "Plan",
    "quant_info",
    "quantize",
    "QuantSpec",
    "resolve_plan",
    "save",
    "size_bytes",
    "static_int8",
    "tune",
    "TuningConfig",
    "TuningResult",
    "weight_only",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from autoquant.backends import Backend as Backend
    from autoquant.backends import Capability as Capability
    from autoquant.backends import get_backend as get_backend
    from autoquant.backends import register_backend as register_backend
    from autoquant.backends.capability import QuantizedModelInfo as QuantizedModelInfo
    from autoquant.backends.registry import capabilities
    from autoquant.backends.registry import capability_table as capability_table
    from autoquant.calibration import calibrate
    from autoquant.discovery import OpInfo as OpInfo
    from autoquant.discovery import discover
    from autoquant.measure import LatencyStats as LatencyStats
    from autoquant.measure import measure_latency, size_bytes
    from autoquant.plan import Plan, resolve_plan
    from autoquant.plan import PlanWarning as PlanWarning
    from autoquant.pruning.apply import prune as prune
    from autoquant.pruning.apply import prune_info as prune_info
    from autoquant.pruning.fine_tune import prune_and_train as prune_and_train
    from autoquant.qat import QATConfig as QATConfig
    from autoquant.qat import convert as convert
    from autoquant.qat import prepare_qat as prepare_qat
    from autoquant.qparams import QParams as QParams
    from autoquant.quantizer import deploy as deploy
    from autoquant.quantizer import quant_info, quantize
    from autoquant.serialize import load, save
    from autoquant.stats import CalibrationStats as CalibrationStats
    from autoquant.stats import TensorStats as TensorStats
    from autoquant.tuning import GoalNotMetWarning, TuningConfig, TuningResult, tune
    from autoquant.tuning import TuningCallback as TuningCallback
