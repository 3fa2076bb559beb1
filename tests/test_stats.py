"""TensorStats: exact extremes, count-conserving histogram growth, torch.ao moving average."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.quantization import MovingAverageMinMaxObserver

from autoquant.stats import TensorStats


def _batches(seed: int, n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Growing spread and shifting centre so that most batches widen the range.
    return [torch.randn(64, 8, generator=g) * (1 + i) + 0.3 * i for i in range(n)]


def test_min_max_and_count_exact() -> None:
    batches = _batches(0)
    stats = TensorStats()
    for b in batches:
        assert stats.update(b)
    everything = torch.cat([b.flatten() for b in batches])
    assert stats.min == everything.min().item()
    assert stats.max == everything.max().item()
    assert stats.count == everything.numel()
    assert stats.batch_mins == [b.min().item() for b in batches]
    assert stats.batch_maxs == [b.max().item() for b in batches]
    assert (stats.hist_min, stats.hist_max) == (stats.min, stats.max)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scales=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=6),
    bins=st.sampled_from([2, 7, 64, 2048]),
)
def test_histogram_conserves_count_when_rebinning(
    seed: int, scales: list[float], bins: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    stats = TensorStats(bins)
    total = 0
    for s in scales:
        x = torch.randn(int(torch.randint(1, 300, (1,), generator=g)), generator=g) * s
        x = x + torch.randn(1, generator=g) * s
        stats.update(x)
        total += x.numel()
        assert stats.hist.numel() == bins
        assert (stats.hist >= 0).all()
        assert math.isclose(stats.hist.sum().item(), total, rel_tol=1e-9)
    assert stats.count == total


def test_histogram_mass_stays_in_place_after_rebinning() -> None:
    # Rebinning spreads each old bin uniformly, so the CDF at any point moves by at most
    # one old bin's count: check it against the exact empirical CDF.
    a, b = torch.rand(5000), torch.rand(5000) * 4 - 2
    stats = TensorStats(256)
    stats.update(a)
    stats.update(b)
    both = torch.cat([a, b])
    for t in (-1.5, -0.2, 0.0, 0.3, 0.77, 1.9):
        exact = (both <= t).sum().item()
        assert abs(stats.cdf(t).item() - exact) <= 5000 / 256 * 2 + 60


def test_constant_batches_then_growth() -> None:
    stats = TensorStats(16)
    stats.update(torch.full((10,), 2.0))
    stats.update(torch.full((5,), 2.0))
    assert stats.min == stats.max == 2.0
    assert stats.hist[0].item() == 15
    stats.update(torch.tensor([0.0, 4.0]))
    assert stats.hist.sum().item() == pytest.approx(17)
    # The point mass at 2.0 lands in the bin that contains 2.0 (bin 8 of [0, 4]).
    assert stats.hist[8].item() == pytest.approx(15)
    assert stats.quantile(0.5).item() == pytest.approx(2.0, abs=0.25)


@pytest.mark.parametrize("c", [0.01, 0.1, 0.5, 1.0])
def test_moving_average_matches_torch_ao(c: float) -> None:
    from autoquant.config import QuantSpec
    from autoquant.observers import get_observer

    batches = _batches(1, n=20)
    stats = TensorStats()
    obs = MovingAverageMinMaxObserver(averaging_constant=c)
    for b in batches:
        stats.update(b)
        obs(b)
    lo, hi = get_observer("moving_average").clip_range(
        stats, QuantSpec(observer="moving_average", averaging_constant=c)
    )
    # Same float32 recurrence on the same float32 batch extremes: bit-exact.
    assert lo == obs.min_val.item()
    assert hi == obs.max_val.item()


def test_quantile_inverts_cdf() -> None:
    x = torch.randn(20000, generator=torch.Generator().manual_seed(3))
    stats = TensorStats.from_tensor(x)
    qs = torch.tensor([0.001, 0.1, 0.5, 0.9, 0.999], dtype=torch.float64)
    values = stats.quantile(qs)
    assert torch.allclose(stats.cdf(values) / stats.count, qs, atol=1e-9)
    # Within a bin of the order statistics around q*n (in sparse tails the histogram
    # only knows which bin holds a sample, so the gap between samples is the limit).
    xs = x.double().sort().values
    for q, v in zip(qs.tolist(), values.tolist(), strict=True):
        k = int(q * x.numel())
        w = stats.bin_width
        assert xs[max(k - 1, 0)] - w <= v <= xs[min(k + 1, x.numel() - 1)] + w
    assert stats.quantile(0.0).item() == stats.min
    assert stats.quantile(1.0).item() == stats.max


def test_non_finite_batch_is_reported_not_recorded() -> None:
    stats = TensorStats.from_tensor(torch.arange(4.0))
    before = stats.to_tensors()
    assert stats.update(torch.tensor([1.0, float("nan")])) is False
    assert stats.update(torch.tensor([float("inf"), 0.0])) is False
    after = stats.to_tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert stats.update(torch.empty(0)) is True and stats.count == 4


def test_to_from_tensors_round_trip() -> None:
    stats = TensorStats(128)
    for b in _batches(2):
        stats.update(b)
    d = stats.to_tensors()
    assert all(isinstance(v, torch.Tensor) for v in d.values())
    back = TensorStats.from_tensors(d)
    assert back.bins == 128
    assert (back.min, back.max, back.count) == (stats.min, stats.max, stats.count)
    assert back.batch_mins == stats.batch_mins and back.batch_maxs == stats.batch_maxs
    assert torch.equal(back.hist, stats.hist)
    # An empty TensorStats round-trips too (inf/-inf extremes, empty lists).
    empty = TensorStats.from_tensors(TensorStats().to_tensors())
    assert empty.count == 0 and empty.min == math.inf and empty.batch_mins == []
    with pytest.raises(ValueError, match="missing"):
        TensorStats.from_tensors({"min": d["min"]})


def test_safetensors_round_trip(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    stats = TensorStats.from_tensor(torch.randn(100))
    path = tmp_path / "s.safetensors"
    safetensors_torch.save_file(stats.to_tensors(), str(path))
    back = TensorStats.from_tensors(safetensors_torch.load_file(str(path)))
    assert torch.equal(back.hist, stats.hist) and back.max == stats.max


def test_repr_and_bad_bins() -> None:
    assert "count=3" in repr(TensorStats.from_tensor(torch.ones(3)))
    with pytest.raises(ValueError, match="`bins` must be an int >= 2"):
        TensorStats(1)
