"""The top-level namespace: a short __all__ of what users call, every name it ever
exported still importable, and ``import autoquant`` without torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import autoquant

# Every top-level name autoquant exported before __all__ was trimmed (issue 9).
_FORMER_ALL = {
    "AutoQuantError", "Backend", "calibrate", "CalibrationError", "CalibrationStats",
    "capabilities", "Capability", "capability_table", "ConfigError", "discover",
    "GoalNotMetWarning", "dynamic_int8", "get_backend", "LatencyStats", "load",
    "measure_latency", "OpConfig", "OpInfo", "Plan", "PlanError", "PlanWarning", "QParams",
    "quant_info", "quantize", "QuantizedModelInfo", "QuantSpec", "register_backend",
    "resolve_plan", "save", "SerializationError", "size_bytes", "static_int8",
    "TensorStats", "tune", "TuningCallback", "TuningConfig", "TuningResult",
    "UnsupportedConfigError", "weight_only",
}  # fmt: skip


def test_all_is_short_and_every_name_resolves() -> None:
    assert len(autoquant.__all__) <= 21
    assert len(set(autoquant.__all__)) == len(autoquant.__all__)
    assert set(autoquant.__all__) <= _FORMER_ALL
    for name in autoquant.__all__:
        assert getattr(autoquant, name) is not None, name


def test_former_names_stay_importable_from_the_top_level() -> None:
    import autoquant.backends
    import autoquant.errors
    import autoquant.tuning

    for name in sorted(_FORMER_ALL):
        assert name in dir(autoquant), name
        assert getattr(autoquant, name) is not None, name
    # The same objects as in their home modules.
    assert autoquant.register_backend is autoquant.backends.register_backend
    assert autoquant.TuningCallback is autoquant.tuning.TuningCallback
    assert autoquant.UnsupportedConfigError is autoquant.errors.UnsupportedConfigError


def test_import_autoquant_does_not_import_torch() -> None:
    code = "import sys, autoquant; print('torch' in sys.modules, len(autoquant.__all__))"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", str(len(autoquant.__all__))]
