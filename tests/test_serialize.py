"""save/load: no pickle, exact outputs, clear errors for damaged directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _models import MLP, LSTMClassifier, ResidualCNN, TinyTransformerBlock, settle_bn
from torch import nn

import autoquant as aq
from autoquant.config import OpConfig, QuantSpec


def _rnn_cfg() -> OpConfig:
    return OpConfig(
        approach="dynamic",
        weight=QuantSpec(dtype="int8"),
        activation=QuantSpec(dtype="uint8", scheme="asym", reduce_range=True),
    )


def _cases() -> dict[str, tuple]:
    torch.manual_seed(0)
    img = torch.randn(4, 1, 8, 8)
    ids = torch.randint(0, 100, (4, 12))
    return {
        "static-graph": (lambda: settle_bn(ResidualCNN(), img), {"default": aq.static_int8()}, img),
        "mixed-transformer": (
            lambda: TinyTransformerBlock().eval(),
            {
                "embed": aq.weight_only("int4", scheme="asym"),
                "[qkv]": aq.dynamic_int8(),
                "up": aq.weight_only("int4", group_size=32),
                "down": aq.static_int8(),
                "o": aq.weight_only("int8"),
            },
            ids,
        ),
        "simulated": (
            lambda: MLP().eval(),
            {
                "fc1": OpConfig(
                    approach="static",
                    weight=QuantSpec(dtype="int4"),
                    activation=QuantSpec(dtype="uint4", scheme="asym"),
                )
            },
            torch.randn(8, 64),
        ),
        "lstm": (
            lambda: LSTMClassifier().eval(),
            {"lstm": _rnn_cfg(), "fc": aq.dynamic_int8()},
            torch.randn(4, 6, 8),
        ),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_round_trip_gives_identical_outputs(case: str, tmp_path: Path) -> None:
    factory, rules, x = _cases()[case]
    torch.manual_seed(1)
    model = factory()
    qmodel = aq.quantize(model, rules, [x, x])
    aq.save(qmodel, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["meta.json", "plan.yaml", "tensors.safetensors"]
    # A differently initialised float model of the same architecture: every value that
    # matters must come from the saved files.
    torch.manual_seed(2)
    loaded = aq.load(tmp_path / "m", model=factory)
    with torch.no_grad():
        assert torch.equal(qmodel(x), loaded(x))
    assert aq.quant_info(loaded).plan == aq.quant_info(qmodel).plan
    assert aq.quant_info(loaded).kernels == aq.quant_info(qmodel).kernels
    # What size_bytes reports is what is stored (plus the safetensors header).
    stored = (tmp_path / "m" / "tensors.safetensors").stat().st_size
    assert 0 < stored - aq.size_bytes(qmodel) < 64 * 1024


def test_saved_files_are_not_pickles(tmp_path: Path) -> None:
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.dynamic_int8()})
    aq.save(qmodel, tmp_path)
    raw = (tmp_path / "tensors.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    json.loads(raw[8 : 8 + header_len])  # safetensors: a JSON header, then raw bytes
    assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")


def test_model_factory_path_is_used_when_no_model_given(tmp_path: Path) -> None:
    torch.manual_seed(0)
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.weight_only("int8")})
    aq.save(qmodel, tmp_path, model_factory="_models:MLP")
    loaded = aq.load(tmp_path)
    x = torch.randn(3, 64)
    assert torch.equal(qmodel(x), loaded(x))


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.dynamic_int8()})
    return aq.save(qmodel, tmp_path / "m")


def test_truncated_tensors_file_is_reported(saved: Path) -> None:
    path = saved / "tensors.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(aq.SerializationError, match="truncated or was modified"):
        aq.load(saved, model=MLP)


def test_tampered_tensor_byte_is_reported(saved: Path) -> None:
    path = saved / "tensors.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(aq.SerializationError, match="checksum mismatch"):
        aq.load(saved, model=MLP)


def test_tampered_plan_is_reported(saved: Path) -> None:
    plan = saved / "plan.yaml"
    plan.write_text(plan.read_text().replace("per_channel", "per_tensor", 1))
    with pytest.raises(aq.SerializationError, match="plan hash mismatch"):
        aq.load(saved, model=MLP)


def test_missing_and_corrupt_metadata(saved: Path) -> None:
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(aq.SerializationError, match="corrupt"):
        aq.load(saved, model=MLP)
    (saved / "meta.json").unlink()
    with pytest.raises(aq.SerializationError, match="meta.json is missing"):
        aq.load(saved, model=MLP)


def test_load_without_architecture_says_how_to_fix(saved: Path) -> None:
    with pytest.raises(aq.SerializationError, match="pass model="):
        aq.load(saved)


def test_wrong_architecture_is_reported(saved: Path) -> None:
    with pytest.raises((aq.SerializationError, aq.PlanError)):
        aq.load(saved, model=lambda: nn.Sequential(nn.Linear(64, 10)))


def test_save_rejects_models_not_built_by_autoquant(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not built by autoquant"):
        aq.save(MLP(), tmp_path)
