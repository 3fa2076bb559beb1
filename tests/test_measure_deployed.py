"""measure_deployed_latency: the model timed in the deployed (compiled) mode, the compile
kept out of the timed calls, the model and torch's settings left as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoquant._deploy_mode import bf16_model, deployed
from autoquant.measure import measure_deployed_latency


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).train()


def test_deployed_model_computes_what_the_model_computes():
    model = _mlp().eval()
    x = torch.randn(8, 16)
    with torch.inference_mode():
        ref = model(x)
        got = deployed(model)(x)
        again = deployed(model)(x)  # a later call runs the compiled code as is
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-5)


def test_bf16_model_takes_and_returns_float32_and_leaves_the_model_alone():
    model = _mlp().eval()
    x = torch.randn(8, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        out = bf16_model(model)(x)
        ref = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)  # bf16 keeps 8 bits
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k])


def test_measure_deployed_counts_runs_and_restores_threads():
    model = _mlp()
    threads = torch.get_num_threads()
    stats = measure_deployed_latency(model, torch.randn(4, 16), threads=1, warmup=1, repeats=4)
    assert stats.runs >= 4 and stats.threads == 1 and stats.batch_size == 4
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert torch.get_num_threads() == threads
    assert stats.quantized_speed  # a float model has no simulated op
    assert model.training  # eval for the measurement, restored afterwards


def test_measure_deployed_rejects_bad_threads_before_compiling():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        measure_deployed_latency(_mlp(), torch.randn(4, 16), threads=0)
