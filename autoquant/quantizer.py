"""``quantize``: float model + plan (+ calibration data) -> a new quantized model."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from autoquant.backends.base import Backend, QuantizedModelInfo, get_backend
from autoquant.errors import CalibrationError
from autoquant.plan import Plan, PlanWarning, resolve_plan

if TYPE_CHECKING:
    from autoquant.calibration import CalibrationStats

__all__ = ["quantize", "quant_info"]


def quantize(
    model: nn.Module,
    plan: Plan | Mapping[str, Any],
    calib_data: Iterable[Any] | None = None,
    backend: str | Backend = "x86",
    *,
    stats: CalibrationStats | None = None,
    max_samples: int = 100,
) -> nn.Module:
    """Return a new model whose planned ops run quantized; ``model`` is never modified.

    Args:
        model: the float model (it is deep-copied; its parameters and mode stay as they are).
        plan: a resolved :class:`~autoquant.plan.Plan` or rules for
            :func:`~autoquant.plan.resolve_plan` (``{"Linear": static_int8(), "fc2": None}``).
        calib_data: model inputs for calibrating static ops: a DataLoader, a list of
            tensors, ``(input, target)`` batches or dicts of keyword inputs. Only needed
            when the plan has static ops and ``stats`` is not given.
        backend: backend name (``"x86"``, ``"simulated"``) or instance.
        stats: statistics from :func:`~autoquant.calibration.calibrate`, reused instead of
            running the calibration data again (the tuner calibrates once per study).
        max_samples: calibration samples used from ``calib_data`` (the usual 100).

    The result carries ``autoquant_info`` (see :func:`quant_info`): which kernel runs each
    op and which ops are simulated.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}.")
    be = get_backend(backend)
    # A given Plan is checked against the model's ops; rules are resolved once here.
    resolved = resolve_plan(plan, model)
    if not resolved.quantized:
        warnings.warn(
            "the plan quantizes no op; the returned model is a float copy.",
            PlanWarning,
            stacklevel=2,
        )
    # Reject configs the backend cannot run before calibrating or copying anything.
    be.check(resolved, model)
    needs_stats = any(cfg is not None and cfg.approach == "static" for cfg in resolved.values())
    if needs_stats and stats is None:
        if calib_data is None:
            first = next(f for f, c in resolved.items() if c is not None and c.approach == "static")
            raise CalibrationError(
                f"op {first!r} is planned as approach='static', which needs calibration data: "
                "pass calib_data= (an iterable of model inputs, ~100 samples) or stats=."
            )
        from autoquant.calibration import calibrate

        stats = calibrate(model, calib_data, backend=be, max_samples=max_samples)
    return be.build(model, resolved, stats)


def quant_info(model: nn.Module) -> QuantizedModelInfo:
    """The build record of a model returned by :func:`quantize` or :func:`load`."""
    info = getattr(model, "autoquant_info", None)
    if not isinstance(info, QuantizedModelInfo):
        raise TypeError(
            "model was not built by autoquant.quantize/load (it has no autoquant_info)."
        )
    return info
