"""``quantize``: float model + plan (+ calibration data) -> a new quantized model."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from autoquant.backends.base import Backend
from autoquant.backends.capability import QuantizedModelInfo, require_stats, stats_needed_by
from autoquant.backends.registry import get_backend
from autoquant.errors import CalibrationError
from autoquant.plan import Plan, PlanWarning, resolve_plan

if TYPE_CHECKING:
    from autoquant.stats import CalibrationStats

__all__ = ["quantize", "quant_info", "deploy"]


def quantize(
    model: nn.Module,
    plan: Plan | Mapping[str, Any],
    calib_data: Iterable[Any] | None = None,
    backend: str | Backend = "x86",
    *,
    stats: CalibrationStats | None = None,
    max_samples: int = 100,
    allow_saturation: bool = False,
    self_check: bool = True,
    compile: bool = False,
) -> nn.Module:
    """Return a new model whose planned ops run quantized; ``model`` is never modified.

    Args:
        model: the float model (it is deep-copied; its parameters and mode stay as they are).
        plan: a resolved :class:`~autoquant.plan.Plan` or rules for
            :func:`~autoquant.plan.resolve_plan` (``{"Linear": static_int8(), "fc2": None}``).
        calib_data: model inputs for calibrating static ops: a DataLoader, a list of
            tensors, ``(input, target)`` batches or dicts of keyword inputs. Only needed
            when the plan has static ops and ``stats`` is not given.
        backend: backend name (``"x86"``, ``"simulated"``, ``"cuda"``) or instance.
        stats: statistics from :func:`~autoquant.calibration.calibrate`, reused instead of
            running the calibration data again (the tuner calibrates once per study).
        max_samples: calibration samples used from ``calib_data`` (the usual 100).
        allow_saturation: keep full-range uint8 activations on ops whose kernel adds
            product pairs in int16 (``Capability.saturates``, e.g. depthwise Conv2d on
            x86). By default such ops get ``reduce_range=True`` and a
            :class:`~autoquant.backends.x86.SaturationWarning` says which.
        self_check: with ``calib_data`` at hand, run its first batch through the built
            model and refuse (:class:`~autoquant.errors.QuantizationError`) any integer
            op whose output departs from the plan's math by more than a few
            quantization steps (:mod:`autoquant.backends._selfcheck`).
        compile: return the deployed form (:func:`deploy`: ``torch.compile`` with
            Inductor and frozen weights, compiled at the first call of each input
            shape, which takes seconds; outputs equal the eager model's). False (the
            default) returns the eager model, on the same integer kernels; deploy it
            later with :func:`deploy`.

    The result carries ``autoquant_info`` (see :func:`quant_info`): which kernel runs each
    op and which ops are simulated.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}.")
    be = get_backend(backend)
    # A given Plan is checked against the model's ops; rules are resolved once here.
    resolved = resolve_plan(plan, model)
    # Pruning comes first: the pruned model is what gets calibrated and quantized.
    from autoquant.pruning.apply import prune, split_plan

    specs, resolved = split_plan(resolved)
    report = None
    if specs:
        if stats is not None and any(s.structured for s in specs.values()):
            raise CalibrationError(
                "stats= were given with a plan that removes channels (pattern='channel'); "
                "statistics must come from the pruned model. Pass calib_data= instead, "
                "or calibrate autoquant.pruning.prune(model, plan)[0]."
            )
        model, report = prune(model, specs)
        resolved = resolve_plan(resolved, model)
    if not resolved.quantized and report is None:
        warnings.warn(
            "the plan quantizes no op; the returned model is a float copy.",
            PlanWarning,
            stacklevel=2,
        )
    # Reject configs the backend cannot run before calibrating or copying anything.
    be.check(resolved, model)
    if not allow_saturation:
        resolved, switched = be.avoid_saturation(resolved, model)
        if switched:
            from autoquant.backends.x86 import SaturationWarning

            warnings.warn(
                f"ops {list(switched)} run on a kernel that adds uint8 x int8 product pairs "
                "in int16, which full-range uint8 activations overflow: they use "
                "reduce_range=True. Pass allow_saturation=True to keep the plan as given "
                "(the build self-check then verifies the kernels on a calibration batch).",
                SaturationWarning,
                stacklevel=2,
            )
    check_batch = None
    if calib_data is not None and self_check:
        calib_data, check_batch = _peek_batch(calib_data)
    if stats_needed_by(resolved) and stats is None:
        if calib_data is None:
            require_stats(resolved, stats)
        from autoquant.calibration import calibrate

        stats = calibrate(model, calib_data, backend=be, max_samples=max_samples)
    qmodel = be.build(model, resolved, stats)
    if check_batch is not None:
        from autoquant.backends._selfcheck import verify_kernels

        verify_kernels(qmodel, *check_batch)
    if compile:
        deploy(qmodel)
    if report is not None:
        qmodel.autoquant_pruning = report
    return qmodel


def deploy(qmodel: nn.Module, *, dynamic: bool | None = None) -> nn.Module:
    """Make a model built by autoquant run compiled (Inductor, frozen weights), in place.

    Returns ``qmodel`` itself: same class, attributes and ``state_dict`` keys; its calls
    go through ``torch.compile`` under ``torch.no_grad`` and ``quant_info(qmodel)
    .execution`` says ``"compiled (torch.compile inductor, freezing)"``. Each new input
    shape compiles once (seconds); outputs equal the eager model's. ``dynamic`` goes to
    ``torch.compile``. Weights are frozen at the first call: after changing them, call
    :func:`deploy` again. See :mod:`autoquant.backends._deploy`.
    """
    from autoquant.backends._deploy import deploy as _deploy

    return _deploy(qmodel, dynamic=dynamic)


def _peek_batch(data: Any) -> tuple[Any, tuple[tuple[Any, ...], dict[str, Any]] | None]:
    """The first batch of ``data`` for the self-check, and ``data`` still whole.

    A one-shot iterator (a generator) gives its first element up here, so it is chained
    back in front for calibration.
    """
    import itertools

    from autoquant._data import iter_batches

    if iter(data) is data:
        try:
            first = next(data)
        except StopIteration:
            return iter(()), None
        data = itertools.chain([first], data)
        source: Any = [first]
    else:
        source = data
    try:
        # 8 samples are plenty to catch a kernel fault and keep the check cheap.
        args, kwargs, _ = next(iter_batches(source, 8))
    except (StopIteration, CalibrationError):
        return data, None  # calibration reports malformed or empty data itself
    return data, (args, kwargs)


def quant_info(model: nn.Module) -> QuantizedModelInfo:
    """The build record of a model returned by :func:`quantize` or :func:`load`."""
    info = getattr(model, "autoquant_info", None)
    if not isinstance(info, QuantizedModelInfo):
        raise TypeError(
            "model was not built by autoquant.quantize/load (it has no autoquant_info)."
        )
    return info
