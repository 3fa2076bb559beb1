"""Tests of autoquant.measure: latency statistics and stored-state size."""

from __future__ import annotations

import time

import pytest
import torch
from _models import MLP, LSTMClassifier
from torch import nn

from autoquant.measure import LatencyStats, iter_state_tensors, measure_latency, size_bytes


class Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


class TwoArgs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def _dynamic_int8(model: nn.Module, types: set[type[nn.Module]]) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(model, types, dtype=torch.qint8)


# ----------------------------------------------------------------------------- latency


def test_latency_stats_ordering_and_counts() -> None:
    stats = measure_latency(MLP(), torch.randn(8, 64), warmup=2, repeats=20)
    assert isinstance(stats, LatencyStats)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.min_ms <= stats.mean_ms
    assert stats.runs == 20
    assert stats.threads == 1
    assert stats.batch_size == 8


def test_thread_count_restored_and_model_mode_restored() -> None:
    before = torch.get_num_threads()
    model = MLP().train()
    # Ask for a count different from the current one so a missing restore is visible.
    wanted = 2 if before == 1 else 1
    stats = measure_latency(model, torch.randn(2, 64), threads=wanted, warmup=0, repeats=3)
    assert stats.threads == wanted
    assert torch.get_num_threads() == before
    assert model.training


def test_thread_count_restored_when_model_raises() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), torch.randn(1), threads=2 if before == 1 else 1)
    assert torch.get_num_threads() == before


def test_sleeping_model_measures_at_least_its_sleep() -> None:
    stats = measure_latency(Sleeper(0.002), torch.zeros(3, 1), warmup=1, repeats=10)
    assert stats.median_ms >= 2.0
    assert stats.min_ms >= 2.0


def test_min_time_extends_the_run() -> None:
    stats = measure_latency(Sleeper(0.001), torch.zeros(1), warmup=0, repeats=2, min_time_s=0.03)
    assert stats.runs > 2
    assert stats.runs * stats.mean_ms >= 30.0


def test_inputs_as_tuple_and_dict() -> None:
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    assert measure_latency(TwoArgs(), (x, y), repeats=3).batch_size == 5
    assert measure_latency(TwoArgs(), {"x": x, "y": y}, repeats=3).batch_size == 5
    assert measure_latency(TwoArgs(), [x, y], repeats=3).batch_size == 5  # a list: positional


def test_other_inputs_are_a_type_error_before_anything_runs() -> None:
    model = MLP().train()
    before = torch.get_num_threads()
    with pytest.raises(TypeError, match=r"model inputs must be a Tensor.*got str"):
        measure_latency(model, "not a tensor", threads=2 if before == 1 else 1)
    assert model.training and torch.get_num_threads() == before


def test_runs_under_inference_mode() -> None:
    seen: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_inference_mode_enabled())
            return x

    measure_latency(Probe(), torch.zeros(1), warmup=1, repeats=2)
    assert seen and all(seen)


@pytest.mark.parametrize(
    "kwargs", [{"threads": 0}, {"repeats": 0}, {"warmup": -1}, {"min_time_s": -1.0}]
)
def test_bad_arguments_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        measure_latency(MLP(), torch.randn(1, 64), **kwargs)


# ----------------------------------------------------------------------------- size


def test_float_linear_size_is_exact() -> None:
    assert size_bytes(nn.Linear(100, 50)) == (5000 + 50) * 4


def test_dynamic_int8_linear_counts_one_byte_per_weight() -> None:
    model = nn.Sequential(nn.Linear(100, 50))
    qmodel = _dynamic_int8(model, {nn.Linear})
    names = dict(iter_state_tensors(qmodel))
    weight = names["0._packed_params._packed_params.0.int_repr"]
    assert weight.dtype == torch.int8 and weight.shape == (50, 100)
    # int8 weights at 1 byte, float32 bias, the weight's float64 scale + int64 zero
    # point, and the module's (unused for dynamic) float32 output scale + int64 zero point.
    expected = 5000 * 1 + 50 * 4 + (8 + 8) + (4 + 8)
    assert size_bytes(qmodel) == expected
    ratio = size_bytes(model) / size_bytes(qmodel)
    assert 3.5 < ratio < 4.0


def test_per_channel_quantized_tensor_counts_its_scales() -> None:
    w = torch.randn(6, 10)
    qw = torch.quantize_per_channel(
        w,
        torch.rand(6, dtype=torch.float64) + 0.1,
        torch.zeros(6, dtype=torch.int64),
        0,
        torch.qint8,
    )
    assert size_bytes({"w": qw}) == 60 * 1 + 6 * 8 + 6 * 8


def test_dynamic_lstm_is_walked_through_script_objects() -> None:
    model = LSTMClassifier()
    qmodel = _dynamic_int8(model, {nn.LSTM, nn.Linear})
    int8 = [t for _, t in iter_state_tensors(qmodel) if t.dtype == torch.int8]
    # LSTM input-hidden and hidden-hidden weights (4*32 x 8 and 4*32 x 32) plus the fc.
    assert sorted(t.numel() for t in int8) == sorted([128 * 8, 128 * 32, 3 * 32])
    assert size_bytes(qmodel) < size_bytes(model) / 2


def test_metadata_is_not_counted() -> None:
    assert size_bytes({"dtype": torch.qint8, "n": 3, "name": "x", "none": None}) == 0


def test_latency_of_simulated_ops_is_flagged_not_quantized_speed() -> None:
    import autoquant as aq
    from autoquant.config import OpConfig, QuantSpec

    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(4, 16)
    real = aq.quantize(model, {"Linear": aq.dynamic_int8()})
    int4_act = OpConfig(
        approach="dynamic",
        weight=QuantSpec(dtype="int4"),
        activation=QuantSpec(dtype="uint4", scheme="asym"),
    )
    sim = aq.quantize(model, {"0": int4_act})
    assert measure_latency(real, x, repeats=3).quantized_speed
    stats = measure_latency(sim, x, repeats=3)
    assert stats.simulated_ops == ("0",) and not stats.quantized_speed
    assert measure_latency(model, x, repeats=3).quantized_speed  # float: nothing simulated


def test_compare_latency_times_every_model_on_every_input() -> None:
    from autoquant.measure import compare_latency

    fast = nn.Linear(8, 8).eval()
    slow = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)]).eval()
    inputs = {1: torch.randn(1, 8), 4: torch.randn(4, 8)}
    out = compare_latency({"fast": fast}, inputs, rounds=2, repeats=3)
    assert set(out) == {("fast", 1), ("fast", 4)} and all(v > 0 for v in out.values())
    big = {"x": torch.randn(16, 256)}
    ordered = compare_latency({"one": slow[:1], "eight": slow}, big, rounds=3, repeats=5)
    assert ordered[("one", "x")] < ordered[("eight", "x")]
