"""Tests of autoquant.discovery: op listing, per-sample MACs, errors, no side effects."""

from __future__ import annotations

import pytest
import torch
from _models import (
    MLP,
    Conv1dNet,
    GRUClassifier,
    LSTMClassifier,
    ResidualCNN,
    TinyTransformerBlock,
)
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from autoquant.discovery import OpInfo, discover, format_ops
from autoquant.errors import PlanError


def _by_fqn(ops: list[OpInfo]) -> dict[str, OpInfo]:
    return {op.fqn: op for op in ops}


def test_mlp_ops_in_model_order_with_exact_macs() -> None:
    ops = discover(MLP(), torch.randn(3, 64))
    assert [(o.fqn, o.op_type) for o in ops] == [
        ("fc1", "Linear"),
        ("fc2", "Linear"),
        ("fc10", "Linear"),
    ]
    info = _by_fqn(ops)
    # Per sample a Linear does out_features * in_features MACs; batch 3 is divided out.
    assert info["fc1"].macs == 64 * 64
    assert info["fc2"].macs == 64 * 64
    assert info["fc10"].macs == 10 * 64
    assert info["fc10"].weight_shape == (10, 64)
    assert info["fc10"].n_params == 10 * 64 + 10


def test_macs_are_none_without_example_inputs() -> None:
    ops = discover(MLP())
    assert [o.macs for o in ops] == [None, None, None]
    assert ops[0] == OpInfo("fc1", "Linear", (64, 64), 64 * 64 + 64, None)


def test_conv1d_macs() -> None:
    ops = _by_fqn(discover(Conv1dNet(), torch.randn(2, 4, 20)))
    # padding=2 with kernel 5 keeps length 20: 16 out channels * 20 positions, each a
    # dot product over 4 in channels * 5 taps.
    assert ops["conv"].macs == 16 * 20 * 4 * 5
    assert ops["conv"].weight_shape == (16, 4, 5)
    assert ops["fc"].macs == 3 * 16


def test_residual_cnn_macs() -> None:
    ops = discover(ResidualCNN(), torch.randn(2, 1, 8, 8))
    assert [o.fqn for o in ops] == ["stem", "conv1", "conv2", "fc"]
    info = _by_fqn(ops)
    positions = 8 * 8  # padding=1 keeps 8x8
    assert info["stem"].macs == 16 * positions * 1 * 3 * 3
    assert info["conv1"].macs == 16 * positions * 16 * 3 * 3
    assert info["conv2"].macs == 16 * positions * 16 * 3 * 3
    assert info["fc"].macs == 10 * 16
    assert info["conv1"].n_params == 16 * 16 * 9 + 16


def test_grouped_conv2d_macs() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=4, stride=2))
    (op,) = discover(model, torch.randn(5, 8, 9, 9))
    # 9x9, kernel 3, stride 2 -> 4x4 outputs; each sees in_channels/groups = 2 channels.
    assert op.macs == 8 * 4 * 4 * 2 * 3 * 3


def test_lstm_and_gru_macs_batch_first() -> None:
    lstm = _by_fqn(discover(LSTMClassifier(), torch.randn(2, 5, 8)))
    assert lstm["lstm"].op_type == "LSTM"
    assert lstm["lstm"].macs == 4 * 32 * (8 + 32) * 5  # gates*hidden*(in+hidden)*seq_len
    assert lstm["lstm"].weight_shape == (4 * 32, 8)
    gru = _by_fqn(discover(GRUClassifier(), torch.randn(2, 5, 8)))
    assert gru["gru"].op_type == "GRU"
    assert gru["gru"].macs == 3 * 32 * (8 + 32) * 5
    assert gru["fc"].macs == 3 * 32


class SeqFirstLSTM(nn.Module):
    def __init__(self, layers: int = 1, bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, num_layers=layers, bidirectional=bidirectional)
        self.fc = nn.Linear(16 * (2 if bidirectional else 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[-1])


def test_lstm_seq_first_uses_dim0_as_time() -> None:
    # (seq=7, batch=3, feature=8): seq_len must come from dim 0, batch from dim 1.
    ops = _by_fqn(discover(SeqFirstLSTM(), torch.randn(7, 3, 8)))
    assert ops["rnn"].macs == 4 * 16 * (8 + 16) * 7
    # The head sees (batch=3, 16), so its batch is dim 0 of its own input.
    assert ops["fc"].macs == 2 * 16


def test_stacked_bidirectional_lstm_macs() -> None:
    ops = _by_fqn(discover(SeqFirstLSTM(layers=2, bidirectional=True), torch.randn(6, 2, 8)))
    layer0 = 4 * 16 * (8 + 16)  # per direction
    layer1 = 4 * 16 * (2 * 16 + 16)  # input is both directions' hidden states
    assert ops["rnn"].macs == 2 * (layer0 + layer1) * 6


def test_packed_sequence_counts_valid_steps_per_sample() -> None:
    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 8, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = pack_padded_sequence(x, torch.tensor([6, 2]), batch_first=True)
            _, h = self.gru(packed)
            return h

    (op,) = discover(Packed(), torch.randn(2, 6, 4))
    # 6 + 2 valid steps over 2 sequences = 4 steps per sample on average.
    assert op.macs == 3 * 8 * (4 + 8) * 4


def test_transformer_linears_count_every_token_and_embedding_is_free() -> None:
    ops = _by_fqn(discover(TinyTransformerBlock(), torch.randint(0, 100, (2, 7))))
    assert ops["embed"].op_type == "Embedding"
    assert ops["embed"].macs == 0
    assert ops["q"].macs == 7 * 32 * 32
    assert ops["up"].macs == 7 * 128 * 32
    assert ops["down"].macs == 7 * 32 * 128
    assert ops["head"].macs == 4 * 32  # applied once per sample, after the mean over time


def test_tuple_and_dict_example_inputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    args = (torch.randn(2, 4), torch.randn(2, 5))
    by_tuple = [o.macs for o in discover(TwoInputs(), args)]
    by_dict = [o.macs for o in discover(TwoInputs(), {"x": args[0], "y": args[1]})]
    assert by_tuple == by_dict == [12, 15]


def test_list_example_inputs_are_positional_inputs() -> None:
    """One convention with measure_latency and tune (autoquant.inputs): a list holds
    positional inputs; a model whose only argument is a list gets it in a 1-tuple."""

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    class TakesList(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
            return sum(self.fc(x) for x in xs)

    x, y = torch.randn(2, 4), torch.randn(2, 5)
    assert [o.macs for o in discover(TwoInputs(), [x, y])] == [12, 15]
    assert [o.macs for o in discover(TakesList(), ([x, x, x],))] == [3 * 2 * 4]


def test_other_example_inputs_are_a_type_error_before_any_hook() -> None:
    model = MLP()
    with pytest.raises(TypeError, match=r"model inputs must be a Tensor.*got str.*1-tuple"):
        discover(model, "not a tensor")
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_reused_op_counts_every_call_and_unbatched_input() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    (op,) = discover(Twice(), torch.randn(4))  # 1-D input: a single sample
    assert op.macs == 2 * 4 * 4


def test_unused_op_has_zero_macs() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    assert [o.macs for o in discover(Skips(), torch.randn(2, 4))] == [16, 0]


def test_subclasses_of_quantizable_types_are_not_listed() -> None:
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(2, 2), MyLinear(2, 2))
    assert [o.fqn for o in discover(model)] == ["0"]


def test_wrong_input_shape_names_the_op_and_its_expectation() -> None:
    with pytest.raises(PlanError) as info:
        discover(MLP(), torch.randn(3, 32))
    msg = str(info.value)
    assert "'fc1'" in msg and "in_features=64" in msg and "(3, 32)" in msg


def test_wrong_input_deeper_in_the_model_names_that_op() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(PlanError, match=r"op '2' \(Linear\).*in_features=6.*\(1, 8\)"):
        discover(model, torch.randn(1, 4))


def test_wrong_channels_names_the_conv() -> None:
    with pytest.raises(PlanError, match=r"'stem'.*in_channels=1.*\(2, 3, 8, 8\)"):
        discover(ResidualCNN(), torch.randn(2, 3, 8, 8))


def test_failure_in_non_quantizable_module_names_it() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(6))
    with pytest.raises(PlanError, match=r"module '1' \(BatchNorm1d\)"):
        discover(model, torch.randn(2, 4))


def test_non_module_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, but got dict"):
        discover({"fc1": nn.Linear(2, 2)})  # type: ignore[arg-type]


def _snapshot(model: nn.Module) -> tuple[dict[str, bool], dict[str, torch.Tensor], int]:
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return flags, state, hooks


def _assert_same(
    model: nn.Module, before: tuple[dict[str, bool], dict[str, torch.Tensor], int]
) -> None:
    flags, state, hooks = _snapshot(model)
    assert flags == before[0]
    assert hooks == before[2] == 0
    assert state.keys() == before[1].keys()
    for key, value in state.items():
        assert torch.equal(value, before[1][key]), key


@pytest.mark.parametrize("bad", [False, True])
def test_model_is_not_modified(bad: bool) -> None:
    model = ResidualCNN()
    model.train()
    model.conv1.eval()  # mixed flags must come back exactly, not as model.train(True)
    before = _snapshot(model)
    x = torch.randn(2, 3 if bad else 1, 8, 8)
    if bad:
        with pytest.raises(PlanError):
            discover(model, x)
    else:
        discover(model, x)
    # In train mode the forward would have updated BatchNorm running stats.
    _assert_same(model, before)


def test_format_ops_table() -> None:
    text = format_ops(discover(ResidualCNN(), torch.randn(1, 1, 8, 8)))
    lines = text.splitlines()
    assert lines[0].split() == ["fqn", "type", "weight", "shape", "params", "MACs"]
    assert any(
        line.startswith("conv1") and "16x16x3x3" in line and "147,456" in line for line in lines
    )
    assert "total (4 ops)" in lines[-1]
    # Right-aligned numbers: every row has the same width up to the MACs column end.
    assert len({len(line) for line in lines if not line.startswith("-")}) == 1
    no_macs = format_ops(discover(MLP()))
    assert "fc10" in no_macs and no_macs.splitlines()[2].rstrip().endswith("-")
