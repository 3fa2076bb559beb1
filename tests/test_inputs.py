"""One meaning of "model inputs" for every caller (autoquant.inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoquant._data import iter_batches
from autoquant.inputs import as_inputs, call_model, first_tensor, from_batch


class TwoInputs(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"n": torch.tensor(a.shape[0]), "out": a if b is None else a + b}


def test_tensor_tuple_list_dict_follow_one_convention() -> None:
    model = TwoInputs()
    a, b = torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert torch.equal(call_model(model, a)["out"], a)
    assert torch.equal(call_model(model, (a, b))["out"], a + b)
    assert torch.equal(call_model(model, [a, b])["out"], a + b)
    assert torch.equal(call_model(model, {"a": a, "b": b})["out"], a + b)
    assert as_inputs([a, b]) == ((a, b), {})


def test_other_objects_are_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match="1-tuple"):
        as_inputs(3.0)


def test_from_batch_inverts_iter_batches() -> None:
    x, y = torch.randn(4, 3), torch.arange(4)
    model = TwoInputs()
    for batch in ([x], [(x, y)], [{"a": x}], [((x, x), y)]):
        ((args, kwargs, _),) = iter_batches(batch)
        inputs = from_batch(args, kwargs)
        assert torch.equal(call_model(model, inputs)["out"], model(*args, **kwargs)["out"])
    assert from_batch((x,), {}) is x


def test_first_tensor() -> None:
    t = torch.zeros(1)
    assert first_tensor(t) is t
    assert first_tensor((None, t)) is t
    assert first_tensor({"loss": None, "logits": t}) is t
    with pytest.raises(TypeError, match="holds no tensor"):
        first_tensor({"a": 1})
    with pytest.raises(TypeError, match="holds no tensor"):
        first_tensor(3)
