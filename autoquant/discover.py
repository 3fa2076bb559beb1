"""Model discovery: which ops of a model can be quantized, and how big they are."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["QUANTIZABLE_TYPES", "iter_quantizable"]

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
