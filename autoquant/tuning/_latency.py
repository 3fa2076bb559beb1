"""The per-op latency table: each (op, config) timed once in the deployed mode, shared.

Compiling every candidate costs seconds, so with ``TuningConfig.latency_mode="deployed"``
a plan's latency is *predicted*::

    predicted(plan) = float_ms - c * sum over quantized ops of calls(op) * (t(op, fp32) - t(op, cfg))

where ``float_ms`` is the float model's deployed (compiled) latency and ``t(op, cfg)`` is
the median latency of the op alone, built with the backend's row for ``cfg`` (through
``Backend.build`` on a one-op model, so static ops get their quantize/dequantize around
them) and compiled, on the op's real input (captured from the latency inputs with a
forward hook). ``calls(op)`` counts how often the op runs per forward pass.
``c = min(1, float_ms / S)``, with ``S`` the sum of every op's float time alone, keeps
the ops' share within the model's measured latency (see :func:`predict`).

Entries are keyed by what decides an op's speed, not by its name: the op's module
(``repr``: type, features, kernel, stride...), its input shapes and dtypes, the config,
the backend and the threads. The six identical layers of a transformer share entries.
Each entry is one study user attribute (``autoquant:optime:<sha>``), so it is written
once, read by every worker of the study (any storage: in-memory, RDB, journal, gRPC) and
reused by a resumed study. Entries are measured only when a plan needs them. Two workers
needing the same missing entry at once may both measure it; the later write wins and
either value is a real measurement.

The prediction ignores what only the whole graph shows: fusions across ops (a static op
followed by another keeps its activations int8 in a whole-graph build; alone it pays a
quantize and a dequantize) and cache effects. The leading plans are therefore timed end
to end before the final choice (``_search._verify``), which reports the predictor's error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autoquant.config import OpConfig
from autoquant.discovery import OpInfo
from autoquant.inputs import as_inputs, from_batch

__all__ = ["LatencyTable", "predict"]

log = logging.getLogger("autoquant.tuning")
_KEY = "autoquant:optime:"
# Bumped when what an entry measures changes (e.g. the deployed mode itself).
_VERSION = 1


def predict(
    float_ms: float,
    calls: Mapping[str, int],
    op_ms: Callable[[str, OpConfig | None], float],
    plan: Mapping[str, OpConfig | None],
) -> float:
    """Predicted deployed latency of ``plan`` (see the module docstring)::

        c * (sum over ops of calls * t(op, plan[op])) + (float_ms - c * S)
        = float_ms - c * sum over quantized ops of calls * (t(op, fp32) - t(op, cfg))

    with ``S`` the float ops' summed times alone and ``c = min(1, float_ms / S)``. Alone,
    an op can take longer than its share of the compiled model (on MiniLM the 36 Linear
    alone sum to ~2.5x the whole compiled model: in the graph, Inductor fuses their
    neighbours and keeps data in cache); ``c`` scales them down to fit inside the model's
    measured latency, so a prediction is never negative and the ranking of plans is
    the plain difference's. With ``S <= float_ms``, ``c = 1``: the plain difference.
    """
    total = sum(calls.get(fqn, 1) * op_ms(fqn, None) for fqn in plan)
    saved = 0.0
    for fqn, cfg in plan.items():
        if cfg is None:
            continue
        saved += calls.get(fqn, 1) * (op_ms(fqn, None) - op_ms(fqn, cfg))
    scale = min(1.0, float_ms / total) if total > 0 else 1.0
    return max(float_ms - scale * saved, 0.01 * float_ms)


class _One(nn.Module):
    """One op as a model of its own, under the name ``op``."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.op(*args, **kwargs)


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return [list(value.shape), str(value.dtype)]
    if isinstance(value, (tuple, list)):
        return [_describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    return repr(value)


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def capture_op_inputs(
    model: nn.Module, ops: list[OpInfo], example: Any
) -> tuple[dict[str, Any], dict[str, int]]:
    """Each op's input on its first call for ``example`` (as a model input object), and
    how many times each op is called in one forward pass. ``model`` is left as it was."""
    inputs: dict[str, Any] = {}
    calls: dict[str, int] = {op.fqn: 0 for op in ops}
    handles = []

    def hook(fqn: str) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls[fqn] += 1
            if fqn not in inputs:
                inputs[fqn] = from_batch(_detach(tuple(args)), _detach(dict(kwargs)))

        return pre

    was_training = model.training
    try:
        for op in ops:
            handles.append(
                model.get_submodule(op.fqn).register_forward_pre_hook(
                    hook(op.fqn), with_kwargs=True
                )
            )
        model.eval()
        args, kwargs = as_inputs(example)
        with torch.inference_mode():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return inputs, calls


class LatencyTable:
    """Per-op deployed latencies of one model, measured lazily and kept in ``study``.

    Args:
        model: the float model.
        ops: its quantizable ops (discovery).
        backend: the backend whose rows build the quantized ops.
        example: the latency inputs of the tuner (the op inputs are captured from them).
        config: the TuningConfig (latency threads, warmup, repeats).
        study: the Optuna study the entries are stored in (None: this object only).
    """

    def __init__(
        self,
        model: nn.Module,
        ops: list[OpInfo],
        backend: Any,
        example: Any,
        config: Any,
        study: Any = None,
    ) -> None:
        self.model, self.backend, self.config, self.study = model, backend, config, study
        self.op_types = {op.fqn: op.op_type for op in ops}
        self.inputs, self.calls = capture_op_inputs(model, ops, example)
        self._ms: dict[str, float] = {}  # entry key -> median ms
        self._stats: dict[str, Any] = {}  # fqn -> calibration statistics of the op alone
        self.measured = 0  # entries this object timed (not loaded)

    # -- keys ---------------------------------------------------------------------------
    def key(self, fqn: str, cfg: OpConfig | None) -> str:
        module = self.model.get_submodule(fqn)
        sig = {
            "v": _VERSION,
            "module": repr(module),
            "input": _describe(self.inputs.get(fqn)),
            "config": None if cfg is None else cfg.to_dict(),
            "backend": self.backend.name,
            "threads": self.config.latency_threads,
        }
        return hashlib.sha256(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()[
            :32
        ]

    # -- lookup -------------------------------------------------------------------------
    def _load(self, key: str) -> float | None:
        if key in self._ms:
            return self._ms[key]
        if self.study is None:
            return None
        entry = self.study.user_attrs.get(_KEY + key)
        if entry is None:
            return None
        # Every entry stored so far comes with the one read: fewer storage round trips.
        for name, value in self.study.user_attrs.items():
            if name.startswith(_KEY) and isinstance(value, Mapping):
                self._ms[name[len(_KEY) :]] = float(value["ms"])
        return self._ms.get(key)

    def op_ms(self, fqn: str, cfg: OpConfig | None) -> float:
        """The op's deployed median latency with ``cfg`` (None: float), measured once."""
        key = self.key(fqn, cfg)
        ms = self._load(key)
        if ms is None:
            ms = self._measure(fqn, cfg)
            self._ms[key] = ms
            self.measured += 1
            if self.study is not None:
                self.study.set_user_attr(
                    _KEY + key,
                    {
                        "ms": ms,
                        "op": fqn,
                        "op_type": self.op_types[fqn],
                        "config": "fp32" if cfg is None else cfg.short(),
                    },
                )
        return ms

    def predict(self, plan: Mapping[str, OpConfig | None], float_ms: float) -> float:
        return predict(float_ms, self.calls, self.op_ms, plan)

    def entries(self) -> dict[str, float]:
        """Every entry known here (measured or loaded), by key."""
        return dict(self._ms)

    # -- measuring ----------------------------------------------------------------------
    def _measure(self, fqn: str, cfg: OpConfig | None) -> float:
        import warnings

        from autoquant.measure import measure_deployed_latency
        from autoquant.plan import Plan

        if fqn not in self.inputs:
            # The latency inputs never reach this op: it costs nothing on them.
            return 0.0
        one = _One(self.model.get_submodule(fqn)).eval()
        if cfg is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tuner's builds showed them already
                one = self.backend.build(
                    one, Plan({"op": cfg}, {"op": self.op_types[fqn]}), self._op_stats(fqn, cfg)
                )
        stats = measure_deployed_latency(
            one,
            self.inputs[fqn],
            threads=self.config.latency_threads,
            warmup=self.config.latency_warmup,
            repeats=self.config.latency_repeats,
        )
        log.debug("latency table: %s %s %.4f ms", fqn, cfg, stats.median_ms)
        return stats.median_ms

    def _op_stats(self, fqn: str, cfg: OpConfig) -> Any:
        from autoquant.approaches import get_approach

        if not get_approach(cfg.approach).needs_calibration:
            return None
        if fqn not in self._stats:
            from autoquant.calibration import calibrate

            # The op's own input is its calibration: ranges do not change a kernel's speed.
            one = _One(self.model.get_submodule(fqn))
            x = self.inputs[fqn]
            # A tuple batch reads as (inputs, target): several positional inputs nest.
            batch = (x,) if isinstance(x, tuple) else x
            self._stats[fqn] = calibrate(one, [batch], backend=self.backend)
        return self._stats[fqn]


_VERIFIED = "autoquant:verified:"


def verify_leaders(engine: Any, study: Any, passing: list[Any], top: int) -> list[Any]:
    """Time the ``top`` passing plans with the lowest predicted latency end to end in
    the deployed mode; return their records with the measured latency as ``latency_ms``
    (``deployed_latency_ms``; the prediction stays in ``predicted_latency_ms``), and
    write each measurement to the study (``autoquant:verified:<plan hash>``), where a
    resumed study or another worker finds it instead of timing the plan again."""
    import dataclasses

    from autoquant.measure import measure_deployed_latency
    from autoquant.tuning._runner import _drop, _free
    from autoquant.tuning.result import VerifiedPlan

    config = engine.config
    distinct: dict[str, Any] = {}
    for r in sorted(passing, key=lambda r: (r.metrics.latency_ms, r.number)):
        distinct.setdefault(r.plan_hash, r)
    leaders = list(distinct.values())[:top]
    out = []
    for r in leaders:
        stored = study.user_attrs.get(_VERIFIED + r.plan_hash)
        if stored is not None:
            v = VerifiedPlan.from_dict(stored)
        else:
            model = engine.build(r.plan, candidate=False)
            lat = measure_deployed_latency(
                model,
                engine.example,
                threads=config.latency_threads,
                warmup=config.latency_warmup,
                repeats=config.latency_repeats,
            )
            dropped = _drop(model)
            model = None
            _free(dropped)
            predicted = r.metrics.predicted_latency_ms
            v = VerifiedPlan(
                trial=r.number,
                plan_hash=r.plan_hash,
                predicted_ms=float(predicted if predicted is not None else r.metrics.latency_ms),
                measured_ms=lat.median_ms,
                measured_p90_ms=lat.p90_ms,
                compile_error=lat.compile_error,
            )
            study.set_user_attr(_VERIFIED + r.plan_hash, v.to_dict())
        log.info(
            "verified trial %d: predicted %.3f ms, measured %.3f ms deployed (%+.1f%%)",
            r.number,
            v.predicted_ms,
            v.measured_ms,
            100 * v.error,
        )
        record = dataclasses.replace(
            r,
            metrics=dataclasses.replace(
                r.metrics,
                latency_ms=v.measured_ms,
                latency_p90_ms=v.measured_p90_ms,
                predicted_latency_ms=v.predicted_ms,
                deployed_latency_ms=v.measured_ms,
            ),
        )
        out.append((record, v))
    return out
