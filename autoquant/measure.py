"""Latency and model-size measurement.

Two numbers the tuner trades against accuracy:

* :func:`measure_latency` times a model's forward pass on fixed inputs and reports robust
  statistics (median and p90 rather than the mean, because a single descheduled call can
  double a mean on a shared CPU).
* :func:`size_bytes` counts the bytes of a model's state *as stored*: integer tensors at
  their integer width, plus the scales and zero points needed to read them back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from autoquant.inputs import as_inputs

__all__ = [
    "LatencyStats",
    "measure_latency",
    "compare_latency",
    "measure_deployed_latency",
    "size_bytes",
    "iter_state_tensors",
]


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of one forward call, in milliseconds.

    Attributes:
        median_ms: 50th percentile of the timed calls.
        p90_ms: 90th percentile (numpy's default linear interpolation).
        mean_ms: arithmetic mean.
        min_ms: fastest call; the closest to the kernel's own cost.
        runs: number of timed calls (warm-up calls excluded).
        threads: intra-op threads torch used during the measurement.
        batch_size: size of dim 0 of the first input tensor, or None if there is none.
        simulated_ops: ops of an autoquant-built model that ran as fake-quant on float
            kernels. When not empty, this latency is NOT quantized speed and must not be
            reported as such (:attr:`quantized_speed` is False).
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    threads: int
    batch_size: int | None
    simulated_ops: tuple[str, ...] = ()
    # measure_deployed_latency only: why the model could not be compiled and ran eager.
    compile_error: str | None = None

    @property
    def quantized_speed(self) -> bool:
        """True when every quantized op of the model ran on a real integer kernel."""
        return not self.simulated_ops


def batch_size_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Dim 0 of the first input tensor (None without one, or for a 0-d tensor)."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            # A 0-d tensor has no batch dimension.
            return int(v.shape[0]) if v.dim() > 0 else None
    return None


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    min_time_s: float = 0.0,
) -> LatencyStats:
    """Time ``model`` on ``example_inputs`` and return latency statistics.

    The model is put in eval mode (its previous mode is restored afterwards) and run under
    :func:`torch.inference_mode`. Each call is timed on its own with
    :func:`time.perf_counter`; at least ``repeats`` calls are timed, and more until
    ``min_time_s`` seconds of timed calls have passed.

    Args:
        model: the module to time.
        example_inputs: a Tensor (``model(x)``), a tuple/list of positional inputs
            (``model(*args)``) or a dict of keyword inputs (``model(**kwargs)``): the
            convention of :mod:`autoquant.inputs`.
        threads: intra-op threads for the measurement (``torch.set_num_threads``); the
            previous setting is restored afterwards. One thread is the default because
            it is the least noisy and the fairest comparison between kernels.
        warmup: untimed calls first (allocator, packing caches, lazy init).
        repeats: minimum number of timed calls.
        min_time_s: minimum total time of the timed calls.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, but got {threads!r}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, but got {warmup!r}.")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, but got {repeats!r}.")
    if min_time_s < 0:
        raise ValueError(f"min_time_s must be >= 0, but got {min_time_s!r}.")
    # Split once: the timed calls pay for the forward alone.
    args, kwargs = as_inputs(example_inputs)

    prev_threads = torch.get_num_threads()
    was_training = model.training
    times: list[float] = []
    try:
        torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                model(*args, **kwargs)
            spent = 0.0
            while len(times) < repeats or spent < min_time_s:
                t0 = time.perf_counter()
                model(*args, **kwargs)
                dt = time.perf_counter() - t0
                times.append(dt)
                spent += dt
    finally:
        torch.set_num_threads(prev_threads)
        model.train(was_training)

    ms = np.asarray(times, dtype=np.float64) * 1e3
    return LatencyStats(
        median_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        runs=len(times),
        threads=used_threads,
        batch_size=batch_size_of(args, kwargs),
        simulated_ops=tuple(getattr(getattr(model, "autoquant_info", None), "simulated", ())),
    )


def measure_deployed_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    min_time_s: float = 0.0,
) -> LatencyStats:
    """:func:`measure_latency` of ``model`` in the execution mode a user deploys
    (``autoquant._deploy_mode.deployed``: compiled). The compile happens in an untimed
    first call; the compiled code is released afterwards. A model that cannot be
    compiled is timed eager, as it would deploy, with ``compile_error`` saying why."""
    from autoquant._deploy_mode import deployed, release

    if threads < 1:
        raise ValueError(f"threads must be >= 1, but got {threads!r}.")
    args, kwargs = as_inputs(example_inputs)
    prev_threads = torch.get_num_threads()
    was_training = model.training
    try:
        fast = deployed(model)
        try:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                fast(*args, **kwargs)  # compiles
        finally:
            torch.set_num_threads(prev_threads)
        stats = measure_latency(
            fast,
            example_inputs,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            min_time_s=min_time_s,
        )
    finally:
        release()
        if model.training != was_training:
            model.train(was_training)
    # The wrapper has no autoquant_info of its own: report the model's simulated ops.
    simulated = tuple(getattr(getattr(model, "autoquant_info", None), "simulated", ()))
    return dataclasses.replace(
        stats, simulated_ops=simulated, compile_error=getattr(fast, "compile_error", None)
    )


def compare_latency(
    models: Mapping[str, nn.Module],
    inputs: Mapping[Any, Any],
    *,
    threads: int = 1,
    rounds: int = 3,
    repeats: int = 30,
) -> dict[tuple[str, Any], float]:
    """Median latency (ms) of every model on every input, measured side by side.

    Interleaved rounds: every (model, input) pair is timed in every round, so a slow
    spell on a shared CPU hits them all alike; each figure is the median of the rounds'
    medians. Keys are ``(model name, input key)``.
    """
    lat: dict[tuple[str, Any], list[float]] = {}
    for _ in range(rounds):
        for name, model in models.items():
            for key, x in inputs.items():
                stats = measure_latency(model, x, threads=threads, repeats=repeats)
                lat.setdefault((name, key), []).append(stats.median_ms)
    return {k: float(np.median(v)) for k, v in lat.items()}


def iter_state_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, plain tensor)`` for every tensor of a model's state, as stored.

    This is the definition of "the model's state" that :func:`size_bytes` counts, and that
    ``autoquant.save`` writes, tensor for tensor (same names, dtypes and shapes):

    * ``nn.Module``: walks ``obj.state_dict()``.
    * A plain tensor is yielded as is under its state_dict key.
    * A quantized tensor (``t.is_quantized``: qint8, quint8, qint32, ...) is yielded as
      ``{key}.int_repr`` (its integers at the storage width, e.g. 1 byte for qint8) plus
      ``{key}.scale`` and ``{key}.zero_point``. These are the tensors torch keeps next to
      the integers: a float64 / int64 scalar for per-tensor schemes, and the per-channel
      ``q_per_channel_scales()`` / ``q_per_channel_zero_points()`` vectors otherwise.
    * Packed params that appear in a state_dict as tuples or lists (e.g. the
      ``(weight, bias)`` of a dynamic quantized Linear) are walked recursively and named
      ``{key}.{index}``; dicts as ``{key}.{field}``.
    * TorchScript objects (e.g. the ``CellParamsBase`` of a dynamic quantized LSTM) are
      walked through their ``__getstate__()``, which is what torch itself serializes.
    * Anything else (a ``torch.dtype``, an int, a string, None) is metadata and holds no
      tensor bytes, so it is skipped.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.is_quantized:
            yield f"{prefix}.int_repr" if prefix else "int_repr", t.int_repr()
            if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                scale = torch.tensor(t.q_scale(), dtype=torch.float64)
                zero_point = torch.tensor(t.q_zero_point(), dtype=torch.int64)
            else:
                scale = t.q_per_channel_scales()
                zero_point = t.q_per_channel_zero_points()
            yield f"{prefix}.scale" if prefix else "scale", scale
            yield f"{prefix}.zero_point" if prefix else "zero_point", zero_point
        else:
            yield prefix, t
        return

    def child(name: object) -> str:
        return f"{prefix}.{name}" if prefix else str(name)

    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from iter_state_tensors(v, child(k))
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from iter_state_tensors(v, child(i))
    elif isinstance(obj, torch.ScriptObject):
        # Raises if the object cannot be serialized; better than silently counting 0.
        yield from iter_state_tensors(obj.__getstate__(), prefix)


def size_bytes(obj: Any) -> int:
    """Bytes of a model's state as stored: the sum of ``numel * element_size`` over
    :func:`iter_state_tensors` (see there for exactly what is counted).

    ``obj`` is usually an ``nn.Module``; a state_dict, a tensor or a tuple of them also
    works. Each state_dict entry counts in full even if two entries share storage (tied
    weights), because each is written out separately. Python-side metadata (dtype tags,
    config) and file-format headers are not counted.
    """
    return sum(t.numel() * t.element_size() for _, t in iter_state_tensors(obj))
