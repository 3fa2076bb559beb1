"""Quantization-aware training: ``prepare_qat`` -> train -> ``convert``.

See :mod:`autoquant.qat._prepare` for how a trained model reaches the backend's static
build, :mod:`autoquant.qat._modules` for what trains, :mod:`autoquant.qat._ste` for the
gradients, and :mod:`autoquant.qat.train` for the built-in fine-tuning loop.
"""

from __future__ import annotations

from autoquant.qat._prepare import (
    QATConfig,
    convert,
    float_model,
    is_qat_model,
    prepare_qat,
    stats_for_qparams,
)

__all__ = [
    "QATConfig",
    "prepare_qat",
    "convert",
    "float_model",
    "is_qat_model",
    "stats_for_qparams",
]
