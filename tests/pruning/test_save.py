"""Pruned + quantized models: prune first, calibrate the pruned model, save/load exactly,
and the saved file shrinks by what the bitmask + values format predicts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import autoquant as aq
from autoquant.config import dynamic_int8, prune_only, static_int8
from autoquant.errors import SerializationError
from autoquant.pruning import PruneSpec, prune_info, sparsity
from tests._models import MLP, ResidualCNN, settle_bn


def _tensors_bytes(path: Path) -> int:
    return (path / "tensors.safetensors").stat().st_size


def test_channel_pruned_static_int8_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 12, 12)
    model = settle_bn(ResidualCNN(), x).eval()
    calib = list(torch.randn(40, 1, 12, 12).split(10))
    plan = {
        "default": static_int8(),
        "conv1": static_int8().replace(prune=PruneSpec(pattern="channel", ratio=0.5)),
        "fc": prune_only(pattern="channel", ratio=0.5),  # the output layer: left whole
    }
    q = aq.quantize(model, plan, calib)
    report = prune_info(q)
    assert report is not None and report.ops["conv1"]["channels"] == [16, 8]
    assert "fc" in report.left_whole
    # Calibrated on the pruned model: the quantized op has the pruned shape.
    assert aq.quant_info(q).plan["fc"] is None
    out = aq.save(q, tmp_path / "m")
    back = aq.load(out, model=ResidualCNN)
    with torch.inference_mode():
        torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)
    assert prune_info(back).shapes == report.shapes
    assert model.conv1.out_channels == 16  # the float model is untouched


def test_sparse_weights_shrink_the_saved_file_as_claimed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP(d_in=256, hidden=256).eval()
    x = torch.randn(4, 256)
    dense = aq.quantize(model, {"default": dynamic_int8()})
    sparse_plan = {
        "default": dynamic_int8(),
        "fc1": dynamic_int8().replace(prune=PruneSpec(pattern="2:4")),
        "fc2": dynamic_int8().replace(prune=PruneSpec(pattern="unstructured", ratio=0.75)),
    }
    sparse = aq.quantize(model, sparse_plan)
    assert sparsity(sparse, ["fc1"])["fc1"] == pytest.approx(0.5)  # int8 zeros too
    a = aq.save(dense, tmp_path / "dense")
    b = aq.save(sparse, tmp_path / "sparse")
    # int8 weight of n elements: n bytes dense, ceil(n/8) + nnz bytes as mask + values.
    n1, n2 = model.fc1.weight.numel(), model.fc2.weight.numel()
    predicted = (n1 - (math.ceil(n1 / 8) + n1 // 2)) + (
        n2 - (math.ceil(n2 / 8) + n2 - int(0.75 * n2))
    )
    saved = _tensors_bytes(a) - _tensors_bytes(b)
    assert abs(saved - predicted) < 512  # safetensors header: two more tensor names each
    assert _tensors_bytes(b) < 0.6 * _tensors_bytes(a)
    back = aq.load(b, model=MLP(d_in=256, hidden=256))
    with torch.inference_mode():
        torch.testing.assert_close(back(x), sparse(x), rtol=0, atol=0)


def test_tampered_sparse_entry_is_refused(tmp_path: Path) -> None:
    import json

    from autoquant import _saved_format as fmt

    model = MLP(d_in=256, hidden=256).eval()
    plan = {"fc1": dynamic_int8().replace(prune=PruneSpec(pattern="2:4"))}
    out = aq.save(aq.quantize(model, plan), tmp_path / "m")
    meta = json.loads((out / "meta.json").read_text())
    name = next(iter(meta["sparse"]))
    meta["sparse"][name]["shape"] = [1, 2]
    (out / "meta.json").write_text(json.dumps(meta))
    fmt.write_checksums(out)  # a consistent but lying directory
    with pytest.raises(SerializationError, match="sparse tensor.*mask has the wrong size"):
        aq.load(out, model=MLP(d_in=256, hidden=256))
