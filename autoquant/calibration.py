"""Calibration: one pass of representative data through the float model.

The pass records :class:`~autoquant.stats.TensorStats` for every tensor a backend may
quantize, so the qparams of *any* plan and observer can be computed afterwards without
running the model again (the tuner calibrates once per study).

Keys of :class:`~autoquant.stats.CalibrationStats`:

* graph mode (the backend returns a float ``torch.fx.GraphModule``):
  ``"node:<node name>"`` for the output of every node that is a floating-point tensor,
  and ``"in:<fqn>"`` for the first floating-point input of every quantizable module of
  the original model that the graph calls;
* module mode (the backend works module by module): ``"in:<fqn>"`` and ``"out:<fqn>"``
  for every quantizable module (LSTM/GRU: the first element of the output tuple).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from autoquant._data import batch_to, iter_batches
from autoquant.backends.base import Backend
from autoquant.backends.registry import get_backend
from autoquant.discovery import iter_quantizable
from autoquant.errors import CalibrationError
from autoquant.stats import DEFAULT_BINS, CalibrationStats, TensorStats

# CalibrationStats lives beside TensorStats (autoquant.stats); re-exported for old imports.
__all__ = ["CalibrationStats", "calibrate"]


def calibrate(
    model: nn.Module,
    calib_data: Any,
    *,
    backend: str | Backend = "x86",
    max_samples: int | None = 100,
    bins: int = DEFAULT_BINS,
) -> CalibrationStats:
    """Run ``calib_data`` once through ``model`` (eval mode, no grad) and record stats.

    ``model`` is left as it was: no hooks remain, every module's training flag is
    restored and no parameter or buffer changes (eval mode keeps BatchNorm statistics
    frozen). ``calib_data`` is anything :func:`autoquant._data.iter_batches` accepts;
    at most ``max_samples`` samples are used.

    Raises:
        CalibrationError: the data is empty or malformed, a batch contains NaN/Inf, or
            an op produces NaN/Inf (the error names the op and the batch).
    """
    if not isinstance(model, nn.Module):
        raise CalibrationError(
            f"`model` must be a torch.nn.Module, but got {type(model).__name__}."
        )
    be = get_backend(backend)
    # Where the statistics come from: the model itself on the CPU backends; a float32
    # copy on the GPU for backend="cuda" (batches follow the model's device below).
    model = be.calibration_model(model)
    quantizable = {fqn: (mod, op_type) for fqn, mod, op_type in iter_quantizable(model)}
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        graph = be.calibration_graph(model)
        if graph is not None:
            graph.eval()
        result = CalibrationStats(
            mode="module" if graph is None else "graph", backend=getattr(be, "name", "")
        )
        device = _device_of(model)
        with torch.no_grad():
            run = (
                _module_mode(model, quantizable, result, bins)
                if graph is None
                else _graph_mode(graph, quantizable, result, bins)
            )
            with run as step:
                for index, (args, kwargs, n) in enumerate(iter_batches(calib_data, max_samples)):
                    if device is not None:
                        args, kwargs = batch_to(args, kwargs, device)
                    _check_batch(args, kwargs, index)
                    step(args, kwargs, index)
                    result.n_samples += n
                    result.n_batches += 1
    finally:
        # Restore each module's own flag (model.train(flag) would overwrite mixed ones).
        for module, training in flags:
            module.training = training
    return result


def _device_of(model: nn.Module) -> torch.device | None:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None


def _check_batch(args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.is_floating_point():
            if not torch.isfinite(value).all():
                raise CalibrationError(
                    f"calibration batch {index} contains NaN/Inf; calibration data must be "
                    "finite (batches are counted from 0)."
                )


def _first_float_tensor(values: Any) -> Tensor | None:
    for v in values:
        if isinstance(v, Tensor) and v.is_floating_point():
            return v
    return None


def _record(
    result: CalibrationStats, key: str, x: Tensor, bins: int, what: str, index: int
) -> None:
    st = result.stats.get(key)
    if st is None:
        st = result.stats[key] = TensorStats(bins)
    if not st.update(x):
        raise CalibrationError(
            f"{what} produced NaN/Inf on calibration batch {index} (batches are counted "
            "from 0, the batch itself was finite). Check the model's float output on this "
            "batch; quantization cannot calibrate a range for non-finite values."
        )


# ------------------------------------------------------------------------- graph mode


class _Recorder(torch.fx.Interpreter):
    """Runs the backend's graph, recording every float tensor a node produces."""

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        quantizable: dict[str, tuple[nn.Module, str]],
        result: CalibrationStats,
        bins: int,
    ) -> None:
        super().__init__(gm)
        self.quantizable = quantizable
        self.result = result
        self.bins = bins
        self.index = 0

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op == "call_module" and n.target in self.quantizable:
            x = _first_float_tensor(
                self.env[a] for a in (*n.args, *n.kwargs.values()) if isinstance(a, torch.fx.Node)
            )
            if x is not None:
                _record(self.result, f"in:{n.target}", x, self.bins, self._what(n), self.index)
        out = super().run_node(n)
        # The output node only repeats its producer's value.
        if n.op != "output" and isinstance(out, Tensor) and out.is_floating_point():
            _record(self.result, f"node:{n.name}", out, self.bins, self._what(n), self.index)
        return out

    def _what(self, n: torch.fx.Node) -> str:
        if n.op == "call_module":
            return f"op {n.target!r} ({type(self.module.get_submodule(str(n.target))).__name__})"
        target = getattr(n.target, "__name__", str(n.target))
        return f"node {n.name!r} ({n.op} {target})"


@contextmanager
def _graph_mode(
    gm: torch.fx.GraphModule,
    quantizable: dict[str, tuple[nn.Module, str]],
    result: CalibrationStats,
    bins: int,
) -> Iterator[Any]:
    recorder = _Recorder(gm, quantizable, result, bins)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]

    def step(args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> None:
        recorder.index = index
        recorder.run(*_bind(placeholders, args, kwargs, index))

    yield step


def _bind(
    placeholders: list[torch.fx.Node], args: tuple[Any, ...], kwargs: dict[str, Any], index: int
) -> list[Any]:
    """Positional values for the graph's placeholders from a batch's args and kwargs."""
    if len(args) > len(placeholders):
        raise CalibrationError(
            f"calibration batch {index} gives {len(args)} positional inputs, but the traced "
            f"model takes {len(placeholders)}."
        )
    values = list(args)
    remaining = dict(kwargs)
    missing = []
    for node in placeholders[len(args) :]:
        name = str(node.target).lstrip("*")
        if name in remaining:
            values.append(remaining.pop(name))
        elif node.args:  # the placeholder's default value
            values.append(node.args[0])
        else:
            missing.append(name)
    if missing or remaining:
        problems = []
        if missing:
            problems.append(f"no value for the model input(s) {missing}")
        if remaining:
            problems.append(f"keyword inputs {sorted(remaining)} that the model does not take")
        raise CalibrationError(
            f"calibration batch {index} has " + " and ".join(problems) + "; the traced model's "
            f"inputs are {[str(p.target) for p in placeholders]}."
        )
    return values


# ------------------------------------------------------------------------ module mode


@contextmanager
def _module_mode(
    model: nn.Module,
    quantizable: dict[str, tuple[nn.Module, str]],
    result: CalibrationStats,
    bins: int,
) -> Iterator[Any]:
    state: dict[str, Any] = {"index": 0, "active": True}
    handles = []

    def make_hook(fqn: str, op_type: str) -> Any:
        what = f"op {fqn!r} ({op_type})"

        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            if not state["active"]:
                return
            index = state["index"]
            x = _first_float_tensor((*args, *kwargs.values()))
            if x is not None:
                key = f"in:{fqn}"
                st = result.stats.get(key)
                if st is None:
                    st = result.stats[key] = TensorStats(bins)
                if not st.update(x):
                    raise _UpstreamNonFinite(fqn, what)
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, Tensor) and out.is_floating_point():
                _record(result, f"out:{fqn}", out, bins, what, index)

        return hook

    try:
        for fqn, (module, op_type) in quantizable.items():
            handles.append(module.register_forward_hook(make_hook(fqn, op_type), with_kwargs=True))

        def step(args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> None:
            state["index"] = index
            try:
                model(*args, **kwargs)
            except _UpstreamNonFinite as e:
                # Only now pay for a second run, with a check on every module, to name
                # the producer instead of the quantizable op that received its output.
                state["active"] = False
                source = _find_nonfinite_source(model, args, kwargs)
                raise CalibrationError(
                    f"{source} produced NaN/Inf on calibration batch {index} (batches are "
                    f"counted from 0, the batch itself was finite); it reached the input of "
                    f"{e.what}. Quantization cannot calibrate a range for non-finite values."
                ) from None

        yield step
    finally:
        for h in handles:
            h.remove()


class _UpstreamNonFinite(Exception):
    """Internal: a quantizable op received NaN/Inf; caught outside the forward pass."""

    def __init__(self, fqn: str, what: str) -> None:
        super().__init__(what)
        self.fqn = fqn
        self.what = what


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _nonfinite(values: Any) -> bool:
    return any(
        t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in _tensors(values)
    )


def _find_nonfinite_source(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Rerun one batch checking every module; describe the first that made NaN/Inf.

    Forward hooks fire innermost-first, so the first module whose output is non-finite
    while its inputs are finite is the producer (or, when the culprit is a functional
    op, the module whose forward contains it).
    """
    found: list[str] = []
    handles = []

    def make_hook(fqn: str) -> Any:
        def hook(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], output: Any) -> None:
            if not found and _nonfinite(output) and not _nonfinite((a, kw)):
                kind = type(module).__name__
                if fqn:
                    found.append(f"op {fqn!r} ({kind})")
                else:
                    found.append(f"a functional op in the forward of the model ({kind})")

        return hook

    try:
        for fqn, module in model.named_modules():
            handles.append(module.register_forward_hook(make_hook(fqn), with_kwargs=True))
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else "an op upstream of it"
