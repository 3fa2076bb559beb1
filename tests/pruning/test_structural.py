"""Structural pruning removes channels and gives what the zeroed (masked) model gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoquant.examples.fashion_mnist import FashionCNN
from autoquant.pruning import PruneSpec, channel_groups, prune, resize_to
from tests._models import ResidualCNN, TinyTransformerBlock, settle_bn


class ConvBNConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def _settled(model: nn.Module, example: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    settle_bn(model, example)
    # Non-trivial BN affine parameters, so a missed BN slice would show.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _same_as_masked(model: nn.Module, specs: dict, x: torch.Tensor) -> tuple[nn.Module, object]:
    shrunk, report = prune(model, specs)
    masked, _ = prune(model, specs, mode="mask")
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), masked(x), rtol=1e-5, atol=1e-5)
    return shrunk, report


def test_conv_bn_conv_and_flatten_into_linear() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    model = _settled(ConvBNConv(), x)
    specs = {
        "conv1": PruneSpec(pattern="channel", ratio=0.5),
        "conv2": PruneSpec(pattern="channel", ratio=0.25),
    }
    shrunk, report = _same_as_masked(model, specs, x)
    assert shrunk.conv1.weight.shape == (8, 3, 3, 3) and shrunk.bn1.num_features == 8
    assert shrunk.conv2.weight.shape == (6, 8, 3, 3)
    assert shrunk.fc.weight.shape == (5, 6 * 16)  # flatten: 16 positions per channel
    assert report.ops["conv1"]["channels"] == [16, 8]
    assert model.conv1.weight.shape == (16, 3, 3, 3)  # the input model is untouched


def test_residual_block_ties_both_sides_of_the_add() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    model = _settled(ResidualCNN(), x)
    groups = channel_groups(model)
    assert sorted(groups["conv2"].producers) == ["conv2", "stem"]
    specs = {
        "conv2": PruneSpec(pattern="channel", ratio=0.5),
        "conv1": PruneSpec(pattern="channel", ratio=0.25),
    }
    shrunk, report = _same_as_masked(model, specs, x)
    assert shrunk.stem.out_channels == shrunk.conv2.out_channels == 8
    assert shrunk.conv1.in_channels == 8 and shrunk.conv1.out_channels == 12
    assert shrunk.fc.in_features == 8
    assert report.ops["stem"]["tied_to"] == "conv2"


def test_fashion_cnn_residual_group_and_unsafe_output_layer() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    model = _settled(FashionCNN(), x)
    specs = {
        "conv2": PruneSpec(pattern="channel", ratio=0.5),
        "conv4": PruneSpec(pattern="channel", ratio=0.5),
        "fc1": PruneSpec(pattern="channel", ratio=0.5),
        "fc2": PruneSpec(pattern="channel", ratio=0.5),
    }
    shrunk, report = _same_as_masked(model, specs, x)
    assert shrunk.conv3.weight.shape == (16, 16, 3, 3)  # in and out: both in the group
    assert shrunk.fc1.weight.shape == (64, 32 * 9)
    # The output layer cannot lose outputs: left whole and reported, never broken.
    assert "fc2" in report.left_whole and "output" in report.left_whole["fc2"]
    assert shrunk.fc2.weight.shape == (10, 64)


def test_transformer_ffn_neurons_and_unsafe_heads_reshape() -> None:
    torch.manual_seed(0)
    model = TinyTransformerBlock().eval()
    ids = torch.randint(0, 100, (3, 7))
    specs = {
        "up": PruneSpec(pattern="channel", ratio=0.75),
        "q": PruneSpec(pattern="channel", ratio=0.5),
    }
    shrunk, report = _same_as_masked(model, specs, ids)
    assert shrunk.up.out_features == 32 and shrunk.down.in_features == 32
    assert "q" in report.left_whole  # the view into heads is not sliced blindly


def test_resize_to_rebuilds_the_pruned_skeleton() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    model = _settled(ResidualCNN(), x)
    shrunk, report = prune(model, {"conv1": PruneSpec(pattern="channel", ratio=0.5)})
    skeleton = resize_to(ResidualCNN(), report.shapes)
    skeleton.load_state_dict(shrunk.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(skeleton.eval()(x), shrunk(x))


def test_bert_ffn_and_heads_match_masked() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 50, (2, 6))
    specs = {
        "encoder.layer.0.intermediate.dense": PruneSpec(pattern="channel", ratio=0.5),
        "encoder.layer.0.attention.self.value": PruneSpec(pattern="channel", ratio=0.5),
    }
    shrunk, _ = prune(model, specs)
    masked, _ = prune(model, specs, mode="mask")
    with torch.no_grad():
        torch.testing.assert_close(
            shrunk(input_ids=ids).last_hidden_state,
            masked(input_ids=ids).last_hidden_state,
            rtol=1e-5,
            atol=1e-5,
        )
    layer = shrunk.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 32
    assert layer.attention.self.query.out_features == 16  # 2 of 4 heads of 8
    assert layer.attention.output.dense.in_features == 16
