"""Normalising calibration / evaluation data into model calls.

Users hand over whatever they train with: a DataLoader, a list of tensors, ``(input,
target)`` pairs, or Hugging Face style dicts of keyword inputs. :func:`iter_batches`
turns each batch into ``(args, kwargs, n_samples)`` for ``model(*args, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from autoquant.errors import CalibrationError
from autoquant.inputs import as_inputs

__all__ = ["iter_batches"]

_ACCEPTED = (
    "an iterable of batches (a torch DataLoader, a list of tensors, (input, target) "
    "tuples/lists, or dicts of keyword inputs) or a single Tensor"
)


def iter_batches(
    data: Any, max_samples: int | None = None
) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], int]]:
    """Yield ``(args, kwargs, n_samples)`` per batch of ``data``.

    * a Tensor batch is the model's only positional input;
    * a tuple/list batch is ``(input, target, ...)``: only its first element is fed to
      the model (a tuple/list first element gives several positional inputs, a dict
      first element gives keyword inputs);
    * a dict batch is passed as keyword inputs.

    ``n_samples`` is the size of dim 0 of the batch's first tensor. With
    ``max_samples``, iteration stops once that many samples were yielded, and the last
    batch is cut along dim 0 so that exactly ``max_samples`` are used. A single Tensor
    (or dict) given as ``data`` is one batch.
    """
    if max_samples is not None and (
        not isinstance(max_samples, int) or isinstance(max_samples, bool) or max_samples < 1
    ):
        raise CalibrationError(
            f"`max_samples` must be a positive int or None, but got {max_samples!r}."
        )
    if isinstance(data, (Tensor, Mapping)):
        data = [data]
    if isinstance(data, (str, bytes)):
        raise CalibrationError(
            f"calibration data must be {_ACCEPTED}, but got {type(data).__name__}."
        )
    try:
        iterator = iter(data)
    except TypeError:
        raise CalibrationError(
            f"calibration data must be {_ACCEPTED}, but got {type(data).__name__}."
        ) from None

    seen = 0
    for index, batch in enumerate(iterator):
        args, kwargs = _split(batch, index)
        n = _batch_size(args, kwargs)
        if n is None:
            raise CalibrationError(
                f"calibration batch {index} must contain at least one Tensor, but got "
                f"{_describe(batch)}."
            )
        if n == 0:
            continue  # an empty batch carries no information; skip rather than fail
        if max_samples is not None and seen + n > max_samples:
            take = max_samples - seen
            args = tuple(_head(a, n, take) for a in args)
            kwargs = {k: _head(v, n, take) for k, v in kwargs.items()}
            n = take
        yield args, kwargs, n
        seen += n
        if max_samples is not None and seen >= max_samples:
            # Return before pulling another batch: the source may be endless or costly.
            return
    if seen == 0:
        raise CalibrationError(
            "calibration data is empty: it yielded no batch with samples. Pass a few "
            "batches of representative model inputs (e.g. 100 samples)."
        )


def _split(batch: Any, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, (Tensor, Mapping)):
        return as_inputs(batch)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise CalibrationError(
                f"calibration batch {index} must be a Tensor, a dict or a non-empty "
                "(input, target) tuple/list, but got an empty "
                f"{type(batch).__name__}."
            )
        first = batch[0]
        if isinstance(first, (Tensor, Mapping, tuple, list)):
            return as_inputs(first)
        return (first,), {}
    raise CalibrationError(
        f"calibration batch {index} must be a Tensor, an (input, target) tuple/list or "
        f"a dict of keyword inputs, but got {type(batch).__name__}."
    )


def _first_input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The first tensor among a batch's model inputs (its dim 0 is the batch size)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value
    return None


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    t = _first_input_tensor(args, kwargs)
    if t is None:
        return None
    return int(t.shape[0]) if t.dim() else 1


def _head(value: Any, n: int, take: int) -> Any:
    """First ``take`` samples of a batched tensor; anything else passes unchanged."""
    if isinstance(value, Tensor) and value.dim() and value.shape[0] == n:
        return value[:take]
    return value


def _describe(batch: Any) -> str:
    if isinstance(batch, (tuple, list)):
        inner = ", ".join(type(b).__name__ for b in batch[:4])
        return f"{type(batch).__name__}({inner}{', ...' if len(batch) > 4 else ''})"
    return type(batch).__name__


def batch_to(
    args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Move the batch's top-level tensors to ``device`` (no-op when already there)."""

    def move(v: Any) -> Any:
        return v.to(device) if isinstance(v, Tensor) and v.device != device else v

    return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}
