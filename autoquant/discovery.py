"""Model discovery: which ops of a model can be quantized, and how big they are.

:func:`discover` lists every quantizable op (:data:`QUANTIZABLE_TYPES`) in model order as
an :class:`OpInfo`. With ``example_inputs`` it also measures each op's multiply-accumulate
count (MACs) per sample, from one forward pass observed through hooks. The model is never
modified: its train/eval flags are restored and every hook is removed afterwards.

MACs per sample, counted per call of the op (an op called twice counts twice):

* Linear: ``output.numel() / batch * in_features``
* Conv1d / Conv2d: ``output.numel() / batch * (in_channels / groups) * prod(kernel_size)``
* Embedding: 0 (a table lookup, no arithmetic)
* LSTM / GRU: ``seq_len * sum over layers and directions of gates * hidden * (in + hidden)``
  with ``gates`` = 4 (LSTM) or 3 (GRU), ``in`` = ``input_size`` for the first layer and
  ``hidden * directions`` for the others (plus the projection for an LSTM with
  ``proj_size``). For one layer this is ``gates * hidden * (input + hidden) * seq_len *
  directions``.

``batch`` is taken from the op's own input: dim 0 of its first tensor argument (1 for an
unbatched input), and for an RNN dim 0 when ``batch_first`` else dim 1. Taking it per op
rather than from the model's input keeps the count right for ops after a layout change
(e.g. a Linear head after a sequence-first RNN).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from autoquant.errors import PlanError
from autoquant.inputs import as_inputs

__all__ = ["QUANTIZABLE_TYPES", "OpInfo", "discover", "format_ops", "iter_quantizable"]

# Module type -> the op type name used in plans, rules and capability tables.
QUANTIZABLE_TYPES: dict[type[nn.Module], str] = {
    nn.Linear: "Linear",
    nn.Conv1d: "Conv1d",
    nn.Conv2d: "Conv2d",
    nn.Embedding: "Embedding",
    nn.LSTM: "LSTM",
    nn.GRU: "GRU",
}


def iter_quantizable(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(fqn, module, op_type)`` for every quantizable submodule, in model order.

    Exact type match on purpose: a subclass may override ``forward`` and would not
    behave like the op its quantized replacement implements.
    """
    for fqn, module in model.named_modules():
        op_type = QUANTIZABLE_TYPES.get(type(module))
        if op_type is not None:
            yield fqn, module, op_type


@dataclass(frozen=True)
class OpInfo:
    """One quantizable op of a model.

    Attributes:
        fqn: fully qualified module name (``model.get_submodule(fqn)`` returns it).
        op_type: a value of :data:`QUANTIZABLE_TYPES` (``Linear``, ``Conv2d``, ...).
        weight_shape: shape of the main weight (``weight``; ``weight_ih_l0`` for RNNs).
        n_params: number of parameters of the op (weights and biases).
        macs: multiply-accumulates per sample measured on the example inputs, or None
            when :func:`discover` was called without example inputs.
    """

    fqn: str
    op_type: str
    weight_shape: tuple[int, ...]
    n_params: int
    macs: int | None = None


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    weight = getattr(module, "weight", None)
    if weight is None:
        # RNNs have one weight per layer/direction; the first input weight identifies it.
        weight = getattr(module, "weight_ih_l0", None)
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else ()


def _first_input(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The first tensor (or PackedSequence) an op was called with: its data input."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, (torch.Tensor, PackedSequence)):
            return value
    return None


def _batch(x: Any, unbatched_ndim: int) -> int:
    """Dim 0 of ``x``, or 1 when ``x`` has the unbatched rank (or is not a tensor)."""
    if not isinstance(x, torch.Tensor) or x.dim() <= unbatched_ndim or x.shape[0] == 0:
        return 1
    return int(x.shape[0])


def _rnn_step_macs(module: nn.RNNBase) -> int:
    """MACs of one time step over all layers and directions of an LSTM/GRU."""
    gates = 4 if isinstance(module, nn.LSTM) else 3
    hidden = module.hidden_size
    proj = getattr(module, "proj_size", 0) or 0
    state = proj or hidden  # size of the recurrent state fed back (h_t)
    dirs = 2 if module.bidirectional else 1
    total = 0
    for layer in range(module.num_layers):
        in_size = module.input_size if layer == 0 else state * dirs
        per_dir = gates * hidden * (in_size + state) + (hidden * proj if proj else 0)
        total += per_dir * dirs
    return total


def _op_macs(
    module: nn.Module, op_type: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], output: Any
) -> int:
    """Per-sample MACs of one call of a quantizable op."""
    x = _first_input(args, kwargs)
    if op_type == "Embedding":
        return 0
    if op_type == "Linear":
        assert isinstance(module, nn.Linear)
        return output.numel() * module.in_features // _batch(x, 1)
    if op_type in ("Conv1d", "Conv2d"):
        assert isinstance(module, nn.modules.conv._ConvNd)
        per_out = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        unbatched = 2 if op_type == "Conv1d" else 3
        return output.numel() * per_out // _batch(x, unbatched)
    if op_type in ("LSTM", "GRU"):
        assert isinstance(module, nn.RNNBase)
        step = _rnn_step_macs(module)
        if isinstance(x, PackedSequence):
            # data holds every valid time step of every sequence; batch_sizes[0] = batch.
            return step * int(x.data.shape[0]) // max(int(x.batch_sizes[0]), 1)
        if not isinstance(x, torch.Tensor):
            return 0
        if x.dim() == 2:  # unbatched (seq, feature)
            return step * int(x.shape[0])
        seq_len = x.shape[1] if module.batch_first else x.shape[0]
        return step * int(seq_len)
    raise AssertionError(f"no MAC formula for op type {op_type!r}")  # pragma: no cover


def _describe_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    parts = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            parts.append(f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}")
        elif isinstance(value, PackedSequence):
            parts.append(f"PackedSequence(data={tuple(value.data.shape)})")
    if not parts:
        return "no tensor input"
    return "input shape " + ", ".join(parts)


def _expectation(module: nn.Module) -> str:
    """What input a module expects, for error messages."""
    if isinstance(module, nn.Linear):
        return f"expects in_features={module.in_features} in the last input dim"
    if isinstance(module, nn.Conv1d):
        return (
            f"expects in_channels={module.in_channels}, input (batch, {module.in_channels}, length)"
        )
    if isinstance(module, nn.Conv2d):
        return (
            f"expects in_channels={module.in_channels}, input (batch, {module.in_channels}, H, W)"
        )
    if isinstance(module, nn.Embedding):
        return f"expects integer indices in [0, {module.num_embeddings})"
    if isinstance(module, nn.RNNBase):
        layout = "(batch, seq, feature)" if module.batch_first else "(seq, batch, feature)"
        return f"expects input_size={module.input_size} in the last input dim, input {layout}"
    return ""


def discover(model: nn.Module, example_inputs: Any = None) -> list[OpInfo]:
    """List every quantizable op of ``model`` in model order.

    Args:
        model: the float model; it is not modified (train/eval flags are restored and
            every hook is removed, even when the forward fails).
        example_inputs: optional inputs for one forward pass used to measure MACs, as
            everywhere in autoquant (:mod:`autoquant.inputs`): a Tensor (one positional
            input), a tuple or list of positional inputs, or a dict of keyword inputs.
            Without it, every ``OpInfo.macs`` is None.

    Returns:
        One :class:`OpInfo` per quantizable op. An op that the forward never calls gets
        ``macs=0``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``example_inputs`` is none of
            the above (a model whose only argument is a list takes ``(my_list,)``).
        PlanError: the forward pass on ``example_inputs`` failed; the message names the
            module whose forward raised, what it expects and the input shape it received.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}.")
    entries = list(iter_quantizable(model))
    macs: dict[str, int] | None = None
    if example_inputs is not None:
        macs = _measure(model, entries, example_inputs)
    return [
        OpInfo(
            fqn=fqn,
            op_type=op_type,
            weight_shape=_weight_shape(module),
            n_params=sum(p.numel() for p in module.parameters()),
            macs=None if macs is None else macs[fqn],
        )
        for fqn, module, op_type in entries
    ]


def _measure(
    model: nn.Module, entries: list[tuple[str, nn.Module, str]], example_inputs: Any
) -> dict[str, int]:
    """Run one forward pass under hooks and return per-sample MACs by fqn."""
    args, kwargs = as_inputs(example_inputs)  # TypeError before any hook is installed
    macs = {fqn: 0 for fqn, _, _ in entries}
    # Modules whose forward has started but not returned, innermost last. Forward hooks
    # do not run when a forward raises, so after an exception the last entry is the
    # innermost module that failed.
    running: list[tuple[str, nn.Module, tuple[Any, ...], Mapping[str, Any]]] = []
    # First name of each module, the one iter_quantizable reports for a shared module.
    names = {id(m): fqn for fqn, m in model.named_modules()}
    handles = []
    flags = {m: m.training for m in model.modules()}

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        running.append((names.get(id(module), "?"), module, args, kwargs))

    def post_hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        # Search from the end rather than pop(): a child whose exception the parent
        # caught leaves a stale entry above this module's one.
        for i in range(len(running) - 1, -1, -1):
            if running[i][1] is module:
                fqn = running[i][0]
                del running[i:]
                break
        else:  # pragma: no cover - a post hook always follows its pre hook
            return
        op_type = QUANTIZABLE_TYPES.get(type(module))
        if op_type is not None and fqn in macs:
            macs[fqn] += _op_macs(module, op_type, args, kwargs, output)

    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        model.eval()
        with torch.no_grad():
            try:
                model(*args, **kwargs)
            except Exception as exc:
                raise _forward_error(running, exc) from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
    return macs


def _forward_error(
    running: list[tuple[str, nn.Module, tuple[Any, ...], Mapping[str, Any]]], exc: Exception
) -> PlanError:
    detail = f"{type(exc).__name__}: {exc}"
    if not running:
        return PlanError(
            f"the forward pass on example_inputs failed before any module ran ({detail})."
        )
    fqn, module, args, kwargs = running[-1]
    kind = type(module).__name__
    noun = "op" if type(module) in QUANTIZABLE_TYPES else "module"
    where = f"{noun} {fqn!r} ({kind})" if fqn else f"the model's own forward ({kind})"
    expects = _expectation(module)
    return PlanError(
        f"the forward pass on example_inputs failed in {where}"
        + (f", which {expects}" if expects else "")
        + f", but got {_describe_inputs(args, kwargs)}. Check example_inputs (shapes, dtypes, values). "
        f"Original error: {detail}"
    )


def format_ops(ops: Sequence[OpInfo]) -> str:
    """A printable table of ops: fqn, type, weight shape, params and MACs (``-`` if unknown)."""
    header = ("fqn", "type", "weight shape", "params", "MACs")
    rows = [
        (
            op.fqn,
            op.op_type,
            "x".join(str(d) for d in op.weight_shape) or "-",
            f"{op.n_params:,}",
            "-" if op.macs is None else f"{op.macs:,}",
        )
        for op in ops
    ]
    total_macs = None if any(op.macs is None for op in ops) else sum(op.macs or 0 for op in ops)
    footer = (
        f"total ({len(ops)} ops)",
        "",
        "",
        f"{sum(op.n_params for op in ops):,}",
        "-" if total_macs is None else f"{total_macs:,}",
    )
    widths = [max(len(r[i]) for r in (header, *rows, footer)) for i in range(len(header))]
    right = (False, False, False, True, True)  # numbers right-aligned so digits line up

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows), rule, line(footer)])
