"""What "call the model with these inputs" means, everywhere in autoquant.

``example_inputs`` (for discovery, latency measurement, tuning) and every input autoquant
feeds a model use one convention, the one ``torch.export`` uses for its ``args``:

* a ``Tensor`` is the model's only positional input: ``model(x)``;
* a ``tuple`` or ``list`` holds positional inputs: ``model(*inputs)``;
* a ``dict`` (any mapping) holds keyword inputs: ``model(**inputs)``.

A model that takes one list as its single argument gets it wrapped: ``(my_list,)``.
Calibration *batches* are different: they follow the training-loop convention
``(input, target)`` and are read by :func:`autoquant._data.iter_batches`, which yields
``(args, kwargs)`` per batch; :func:`from_batch` turns those into model inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["as_inputs", "call_model", "first_tensor", "from_batch"]


def as_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)`` under the convention above."""
    import torch

    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise TypeError(
        "model inputs must be a Tensor (one positional input), a tuple or list (positional "
        f"inputs) or a dict (keyword inputs), but got {type(inputs).__name__}. A model "
        "that takes another object as its only argument: pass it as a 1-tuple."
    )


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model`` called with ``inputs`` (see the module docstring)."""
    args, kwargs = as_inputs(inputs)
    return model(*args, **kwargs)


def from_batch(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Model inputs for one batch as yielded by ``iter_batches``: the inverse of
    :func:`as_inputs` (a lone positional tensor stays a tensor)."""
    if kwargs:
        return dict(kwargs)
    return args[0] if len(args) == 1 and _is_tensor(args[0]) else tuple(args)


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor of a model's output: the output itself, the first tensor of a
    tuple/list, or the first tensor value of a dict (Hugging Face ``ModelOutput``
    included, which is a dict)."""
    if _is_tensor(output):
        return output
    values = output.values() if isinstance(output, Mapping) else output
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"model output {type(output).__name__} holds no tensor")
    for v in values:
        if _is_tensor(v):
            return v
    raise TypeError(f"model output {type(output).__name__} holds no tensor")


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
