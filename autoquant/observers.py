"""Calibration algorithms: how a float clipping range is chosen for a tensor.

An observer turns statistics into a clipping range ``(lo, hi)``; the one formula that
maps a range to ``(scale, zero_point)`` lives in :func:`autoquant.qparams.qparams_from_range`.
Activations are observed through :class:`~autoquant.stats.TensorStats` gathered once by
calibration, so every observer can be tried without running the model again. Weights are
known exactly and are observed directly, per tensor, per channel or per group.

Observers (``QuantSpec.observer``):

* ``minmax``: the observed min and max.
* ``moving_average``: exponential moving average of per-batch min/max (activations).
* ``percentile``: the ``(100-p)`` and ``p`` percentiles, clipping rare outliers.
* ``mse``: the range minimising the expected squared quantize-dequantize error.
* ``kl``: TensorRT-style entropy calibration, minimising KL(P || Q) between the clipped
  histogram and its quantized version (activations).

New observers subclass :class:`Observer` and use :func:`register_observer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from autoquant.config import QuantSpec
from autoquant.errors import CalibrationError, ConfigError
from autoquant.qparams import (
    QParams,
    qparams_from_range,
    quant_range,
    reduce_for_granularity,
)
from autoquant.stats import TensorStats

__all__ = [
    "Observer",
    "register_observer",
    "get_observer",
    "available_observers",
    "activation_qparams",
    "weight_qparams",
]


class Observer:
    """Base class of calibration algorithms.

    Subclasses set ``name`` and implement :meth:`clip_range` (activations, from
    statistics). Those that also work on weights set ``supports_weights`` and implement
    :meth:`weight_clip_range`.
    """

    name: ClassVar[str]
    supports_weights: ClassVar[bool] = False

    def clip_range(self, stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
        """Float clipping range of an activation from its calibration statistics."""
        raise NotImplementedError

    def weight_clip_range(
        self, rows: Tensor, row_min: Tensor, row_max: Tensor, spec: QuantSpec
    ) -> tuple[Tensor, Tensor]:
        """Clipping range per row of ``rows`` (``[R, K]``: one row per channel/group).

        ``row_min`` / ``row_max`` are the exact per-row extremes (shape ``[R]``).
        """
        raise ConfigError(
            f"weight observer must be one of {available_observers(weights=True)}, "
            f"but got {self.name!r}."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_OBSERVERS: dict[str, type[Observer]] = {}


def register_observer(cls: type[Observer]) -> type[Observer]:
    """Class decorator adding an observer under its ``name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"an observer class must set a non-empty string `name`, but {cls.__name__} "
            f"has name={name!r}."
        )
    _OBSERVERS[name] = cls
    return cls


def available_observers(weights: bool = False) -> list[str]:
    """Registered observer names (only those usable on weights if ``weights``)."""
    return sorted(n for n, c in _OBSERVERS.items() if c.supports_weights or not weights)


def get_observer(name: str) -> Observer:
    """An instance of the observer registered under ``name``."""
    try:
        return _OBSERVERS[name]()
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise ConfigError(
            f"observer must be one of {available_observers()}, but got {name!r}."
        ) from None


# --------------------------------------------------------------------------- public API


def activation_qparams(stats: TensorStats, spec: QuantSpec) -> QParams:
    """Per-tensor qparams of an activation from its calibration statistics."""
    if spec.granularity != "per_tensor":
        raise ConfigError(
            "activation QuantSpec.granularity must be 'per_tensor' (activations are "
            f"quantized per_tensor), but got {spec.granularity!r}."
        )
    if stats.count == 0:
        raise CalibrationError(
            "cannot compute activation qparams from empty statistics: no calibration "
            "batch reached this tensor. Check that the calibration data exercises it."
        )
    lo, hi = get_observer(spec.observer).clip_range(stats, spec)
    return qparams_from_range(float(lo), float(hi), spec)


def weight_qparams(w: Tensor, spec: QuantSpec) -> QParams:
    """Qparams of a weight at the spec's granularity (per tensor, channel or group)."""
    observer = get_observer(spec.observer)
    if not observer.supports_weights:
        raise ConfigError(
            f"weight QuantSpec.observer must be one of {available_observers(weights=True)}, "
            f"but got {spec.observer!r} (it needs activation statistics over batches)."
        )
    w = w.detach().float()
    if w.numel() == 0:
        raise ConfigError("cannot compute qparams of an empty weight (numel == 0).")
    if not torch.isfinite(w).all():
        raise ConfigError("weight contains NaN/Inf; cannot compute its qparams.")
    # reduce_for_granularity validates axis / group_size and gives the exact extremes.
    mins, maxs, axis, group_size = reduce_for_granularity(w, spec)
    if spec.observer != "minmax":
        rows = _rows(w, spec, axis)
        lo, hi = observer.weight_clip_range(rows, mins.reshape(-1), maxs.reshape(-1), spec)
        mins, maxs = lo.reshape(mins.shape), hi.reshape(maxs.shape)
    return qparams_from_range(mins, maxs, spec, axis=axis, group_size=group_size)


def _rows(w: Tensor, spec: QuantSpec, axis: int | None) -> Tensor:
    """2-D view with one row per qparams entry, in reduce_for_granularity's order."""
    if spec.granularity == "per_tensor":
        return w.reshape(1, -1)
    if spec.granularity == "per_channel":
        assert axis is not None
        return w.transpose(0, axis).reshape(w.shape[axis], -1)
    assert spec.group_size is not None
    return w.reshape(-1, spec.group_size)


# --------------------------------------------------------------------------- observers


@register_observer
class MinMaxObserver(Observer):
    name = "minmax"
    supports_weights = True

    def clip_range(self, stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
        return stats.min, stats.max

    def weight_clip_range(
        self, rows: Tensor, row_min: Tensor, row_max: Tensor, spec: QuantSpec
    ) -> tuple[Tensor, Tensor]:
        return row_min, row_max


@register_observer
class MovingAverageObserver(Observer):
    """torch.ao ``MovingAverageMinMaxObserver``: min += c * (batch_min - min)."""

    name = "moving_average"

    def clip_range(self, stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
        c = float(spec.averaging_constant)
        # float32 tensor arithmetic with a Python-float constant, exactly as torch.ao
        # does, so the result is bit-identical to its observer over the same batches.
        mins = torch.tensor(stats.batch_mins, dtype=torch.float32)
        maxs = torch.tensor(stats.batch_maxs, dtype=torch.float32)
        lo, hi = mins[0], maxs[0]
        for i in range(1, len(mins)):
            lo = lo + c * (mins[i] - lo)
            hi = hi + c * (maxs[i] - hi)
        return lo.item(), hi.item()


@register_observer
class PercentileObserver(Observer):
    """Keep the central ``2p - 100`` percent: lo/hi at the ``100-p`` / ``p`` percentiles."""

    name = "percentile"
    supports_weights = True

    def clip_range(self, stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
        p = float(spec.percentile) / 100.0
        if p >= 1.0 or stats.min == stats.max:
            return stats.min, stats.max
        lo_q, hi_q = sorted((1.0 - p, p))
        q = stats.quantile(torch.tensor([lo_q, hi_q], dtype=torch.float64))
        return q[0].item(), q[1].item()

    def weight_clip_range(
        self, rows: Tensor, row_min: Tensor, row_max: Tensor, spec: QuantSpec
    ) -> tuple[Tensor, Tensor]:
        p = float(spec.percentile) / 100.0
        if p >= 1.0:
            return row_min, row_max
        lo_q, hi_q = sorted((1.0 - p, p))
        return _row_quantile(rows, lo_q), _row_quantile(rows, hi_q)


def _row_quantile(rows: Tensor, q: float) -> Tensor:
    """torch.quantile(rows, q, dim=1) ('linear'), via kthvalue: no input-size limit."""
    k = rows.shape[1]
    pos = q * (k - 1)
    k0 = min(int(math.floor(pos)), k - 1)
    frac = pos - k0
    v0 = rows.kthvalue(k0 + 1, dim=1).values
    if frac == 0.0:
        return v0
    v1 = rows.kthvalue(min(k0 + 2, k), dim=1).values
    return torch.lerp(v0, v1, frac)


@register_observer
class MSEObserver(Observer):
    """Range minimising the expected squared quantize-dequantize error.

    Activations: the error is integrated exactly over the histogram (uniform density
    within each bin) for the real quantization grid of each candidate range, including
    zero-point rounding and clamping. Asym: like torch.ao ``HistogramObserver``, the
    range is shrunk greedily from whichever end holds less mass, and the best range
    along that path is kept. Sym: a search over symmetric thresholds. Weights: per
    row, a grid of shrink factors of the min/max range.
    """

    name = "mse"
    supports_weights = True
    n_weight_candidates = 100

    def clip_range(self, stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
        if stats.min == stats.max:
            return stats.min, stats.max
        if spec.scheme == "sym":
            return _mse_symmetric(stats, spec)
        return _mse_asymmetric(stats, spec)

    def weight_clip_range(
        self, rows: Tensor, row_min: Tensor, row_max: Tensor, spec: QuantSpec
    ) -> tuple[Tensor, Tensor]:
        # Factors from 1 downwards: argmin keeps the first of equal errors, so ties keep
        # the wider (safer) range, and factor 1 is exactly minmax, so the result is never
        # worse than minmax on the weight itself.
        factors = torch.linspace(1.0, 0.5, self.n_weight_candidates)
        qp = qparams_from_range(
            row_min.reshape(1, -1) * factors.reshape(-1, 1),
            row_max.reshape(1, -1) * factors.reshape(-1, 1),
            spec,
        )
        # Same arithmetic as qparams.fake_quantize (float32 reciprocal, round half to
        # even, clamp), batched over candidates in chunks of ~4M elements.
        scale = qp.scale.unsqueeze(-1)  # [F, R, 1]
        inv = 1.0 / scale
        zp = qp.zero_point.unsqueeze(-1).float()
        chunk = max(1, (1 << 22) // rows.numel())
        errors = []
        for i in range(0, factors.numel(), chunk):
            sl = slice(i, i + chunk)
            q = rows.unsqueeze(0) * inv[sl]
            q.round_().add_(zp[sl]).clamp_(qp.qmin, qp.qmax).sub_(zp[sl]).mul_(scale[sl])
            errors.append(q.sub_(rows).square_().sum(dim=-1))
        best = torch.argmin(torch.cat(errors), dim=0)  # [R]
        best_f = factors[best]
        return row_min * best_f, row_max * best_f


def _bin_edges(stats: TensorStats) -> Tensor:
    return torch.linspace(stats.min, stats.max, stats.bins + 1, dtype=torch.float64)


def _error_primitive(y: Tensor, qmin: int, qmax: int) -> Tensor:
    """Primitive of ``(y - clamp(round(y), qmin, qmax))**2`` in integer units ``y``.

    Inside ``[qmin - .5, qmax + .5]`` the error is the periodic rounding error (each
    period integrates to 1/12); outside it grows as the squared distance to the clamp.
    Zero at ``qmin - .5``.
    """
    lower, upper = qmin - 0.5, qmax + 0.5
    yc = y.clamp(lower, upper)
    n = torch.floor(yc + 0.5)
    r = yc - n
    prim = (n - qmin) / 12.0 + (r**3 + 0.125) / 3.0
    above = ((y - qmax).clamp_min(0.5) ** 3 - 0.125) / 3.0
    below = ((qmin - y).clamp_min(0.5) ** 3 - 0.125) / 3.0
    return prim + above - below


def _expected_sq_error(stats: TensorStats, lo: Tensor, hi: Tensor, spec: QuantSpec) -> Tensor:
    """Expected total squared quantization error over the histogram, per candidate range."""
    qp = qparams_from_range(lo.float(), hi.float(), spec)
    scale = qp.scale.double().reshape(-1, 1)
    zp = qp.zero_point.double().reshape(-1, 1)
    y = _bin_edges(stats).reshape(1, -1) / scale + zp  # [C, bins + 1]
    prim = _error_primitive(y, qp.qmin, qp.qmax)
    density = stats.hist / stats.bin_width
    # \int_bin (x - Q(x))^2 dx = scale^3 * (prim(y_right) - prim(y_left)).
    return (torch.diff(prim, dim=1) * density).sum(dim=1) * scale.reshape(-1) ** 3


def _argmin_coarse_to_fine(
    evaluate: Callable[[Tensor], Tensor], n: int, coarse: int = 64, chunk: int = 32
) -> int:
    """Index in ``range(n)`` minimising ``evaluate(indices)``: a coarse grid, then
    repeated 8x finer grids around the best point so far.

    The error along a shrink path is close to unimodal (clipping error rises, rounding
    error falls), so about a hundred evaluations replace n. ``evaluate`` runs on chunks
    of indices so its ``[chunk, bins]`` temporaries stay in cache. Ties resolve to the
    smallest index (the widest range).
    """

    def best_of(idx: Tensor) -> int:
        values = torch.cat([evaluate(part) for part in idx.split(chunk)])
        return int(idx[int(torch.argmin(values))])

    stride = max(1, -(-n // coarse))
    idx = torch.arange(0, n, stride)
    if idx[-1] != n - 1:
        idx = torch.cat([idx, torch.tensor([n - 1])])
    best = best_of(idx)
    while stride > 1:
        finer = max(1, stride // 8)
        idx = torch.arange(max(0, best - stride), min(n, best + stride + 1), finer)
        best = best_of(idx)
        stride = finer
    return best


def _mse_symmetric(stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
    absmax = max(-stats.min, stats.max)
    n = 4 * stats.bins
    thresholds = absmax * torch.arange(1, n + 1, dtype=torch.float64) / n
    thresholds[-1] = absmax

    def evaluate(idx: Tensor) -> Tensor:
        t = thresholds[idx]
        return _expected_sq_error(stats, -t, t, spec)

    t = thresholds[_argmin_coarse_to_fine(evaluate, n)].item()
    # Report the clipped extremes, not +-t: qparams only depend on max(|lo|, hi), and the
    # side that had no data beyond t must not pretend it did.
    return max(stats.min, -t), min(stats.max, t)


def _mse_asymmetric(stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
    lo_path, hi_path = _shrink_path(stats)

    def evaluate(idx: Tensor) -> Tensor:
        return _expected_sq_error(stats, lo_path[idx], hi_path[idx], spec)

    best = _argmin_coarse_to_fine(evaluate, lo_path.numel())
    return _refine_2d(stats, spec, lo_path[best].item(), hi_path[best].item())


def _refine_2d(
    stats: TensorStats, spec: QuantSpec, lo: float, hi: float, rounds: int = 3
) -> tuple[float, float]:
    """Local grid search around ``(lo, hi)``, moving both ends independently.

    The shrink path couples the ends through the data's mass; the true optimum also
    depends on where the zero point's rounding lands, so a final 9x9 search (half a
    quantization step apart, then an eighth) recovers the last few percent of error.
    """
    qmin, qmax = quant_range(spec.dtype, spec.reduce_range)
    lo_min, lo_max = stats.min, min(0.0, stats.max)
    hi_min, hi_max = max(0.0, stats.min), stats.max
    offsets = torch.arange(-4, 5, dtype=torch.float64)
    step = 2 * (hi - lo) / (qmax - qmin)
    best_err = _expected_sq_error(stats, torch.tensor([lo]), torch.tensor([hi]), spec).item()
    for _ in range(rounds):
        los = (lo + offsets * step).clamp(lo_min, lo_max)
        his = (hi + offsets * step).clamp(hi_min, hi_max)
        grid_lo = los.repeat_interleave(his.numel())
        grid_hi = his.repeat(los.numel())
        err = torch.cat(
            [
                _expected_sq_error(stats, a, b, spec)
                for a, b in zip(grid_lo.split(32), grid_hi.split(32), strict=True)
            ]
        )
        i = int(torch.argmin(err))
        if err[i].item() < best_err:
            best_err, lo, hi = err[i].item(), grid_lo[i].item(), grid_hi[i].item()
        step /= 4
    return lo, hi


def _shrink_path(stats: TensorStats) -> tuple[Tensor, Tensor]:
    """Clipping ranges obtained by trimming bins from the end holding less mass.

    Mass is compared over a window of about one quantization step (8 of 2048 bins), so
    isolated empty bins in a sparse tail do not steer the path. Ends never move past
    zero: the range is widened to include zero anyway, so such moves change nothing.
    """
    bins, w = stats.bins, stats.bin_width
    hist = stats.hist.tolist()
    cum = [0.0]
    for h in hist:
        cum.append(cum[-1] + h)
    window = max(1, bins // 256)
    # Largest start (bins kept are [start, end]) whose left edge is still <= 0, and
    # smallest end whose right edge is still >= 0.
    start_max = min(bins - 1, max(0, math.floor(-stats.min / w))) if stats.min < 0 else 0
    end_min = max(0, math.ceil(-stats.min / w) - 1) if stats.max > 0 else bins - 1
    start, end = 0, bins - 1
    starts, ends = [start], [end]
    while start < end:
        can_left = start < start_max
        can_right = end > end_min
        if not (can_left or can_right):
            break
        left_mass = cum[min(start + window, end + 1)] - cum[start]
        right_mass = cum[end + 1] - cum[max(end + 1 - window, start)]
        if can_left and can_right and left_mass == right_mass:
            # Equal mass (typically both empty): trim the end farther from zero.
            move_left = -(stats.min + start * w) >= stats.min + (end + 1) * w
        else:
            move_left = can_left and (not can_right or left_mass < right_mass)
        if move_left:
            start += 1
        else:
            end -= 1
        starts.append(start)
        ends.append(end)
    s = torch.tensor(starts, dtype=torch.float64)
    e = torch.tensor(ends, dtype=torch.float64)
    lo = stats.min + s * w
    hi = stats.min + (e + 1) * w
    # Untrimmed ends are the exact extremes (no float drift from the edge formula).
    lo = torch.where(s == 0, torch.tensor(stats.min, dtype=torch.float64), lo)
    hi = torch.where(e == bins - 1, torch.tensor(stats.max, dtype=torch.float64), hi)
    return lo, hi


@register_observer
class KLObserver(Observer):
    """Entropy calibration (TensorRT): minimise KL(P || Q) over clipping thresholds.

    P is the histogram kept by a candidate range, with the clipped mass added to its end
    bins; Q is that histogram (without outliers) merged into the available integer
    levels and expanded back over the non-empty bins. Sym, non-negative or
    non-positive tensors: a threshold on ``|x|`` (levels on one side of zero). Asym
    tensors with both signs: both ends are scaled by the same factor.
    """

    name = "kl"
    eps = 1e-4  # stands in for empty bins of Q where P has mass (outliers), as MXNet does

    def clip_range(self, stats: TensorStats, spec: QuantSpec) -> tuple[float, float]:
        if stats.min == stats.max:
            return stats.min, stats.max
        qmin, qmax = quant_range(spec.dtype, spec.reduce_range)
        levels = qmax - qmin + 1
        one_sided = spec.scheme == "sym" or stats.min >= 0 or stats.max <= 0
        # A sym grid has half its levels on each side of zero; an asym range [0, t]
        # (or [-t, 0], or [lo, hi] across zero) gets all of them.
        n_levels = levels // 2 if spec.scheme == "sym" else levels
        # The statistics' own resolution (2048 bins: TensorRT's 16 bins per level for
        # sym int8). Finer re-binning only adds sampling noise to P.
        bins = stats.bins
        # The statistics' bin holding zero, if zero is inside the data's range.
        zero_span: tuple[float, float] | None = None
        if stats.min <= 0.0 <= stats.max:
            k = min(int(-stats.min / stats.bin_width), bins - 1)
            zero_span = (stats.min + k * stats.bin_width, stats.min + (k + 1) * stats.bin_width)
        if one_sided:
            lo_full, hi_full = 0.0, max(-stats.min, stats.max)
            # Histogram of |x| over [0, absmax]: mass in [-t, t] at each edge t.
            edges = hi_full * torch.arange(bins + 1, dtype=torch.float64) / bins
            hist = torch.diff(stats.cdf(edges) - stats.cdf(-edges)).clamp_min(0.0)
            zero_pos = 0.0
            if zero_span is not None:
                zero_span = (0.0, max(abs(zero_span[0]), abs(zero_span[1])))
        else:
            lo_full, hi_full = stats.min, stats.max
            hist = stats.hist
            zero_pos = -stats.min / stats.bin_width
        width_all = (hi_full - lo_full) / bins
        first = min(n_levels, bins)
        if one_sided:
            # A threshold below the smallest |x| keeps no data: P collapses into its
            # outlier bin and KL reads ~0. Thresholds start where the data does.
            smallest = stats.min if stats.min > 0 else (-stats.max if stats.max < 0 else 0.0)
            first = max(first, min(bins, math.ceil(smallest / width_all) + 1))
        widths = torch.arange(first, bins + 1)
        # Scaling both ends by width/bins keeps zero at the same relative position.
        starts = torch.round(zero_pos * (1.0 - widths.double() / bins)).long()
        starts = starts.clamp(min=0).minimum(bins - widths)
        # Reference bins covering the zero bin of the statistics (see _kl_divergence);
        # the |x| histogram splits that bin's spike of exact zeros over two bins.
        zero_bins = (0, -1)  # empty
        if zero_span is not None:
            zero_bins = (
                max(0, math.floor((zero_span[0] - lo_full) / width_all)),
                min(bins - 1, math.ceil((zero_span[1] - lo_full) / width_all) - 1),
            )

        def evaluate(idx: Tensor) -> Tensor:
            return _kl_divergence(hist, starts[idx], widths[idx], n_levels, zero_bins, self.eps)

        # Widest first in the index order so ties keep the wider range.
        order = torch.arange(widths.numel() - 1, -1, -1)
        best = int(order[_argmin_coarse_to_fine(lambda i: evaluate(order[i]), order.numel())])
        width, start = int(widths[best]), int(starts[best])
        lo = lo_full if start == 0 else lo_full + start * width_all
        hi = hi_full if start + width == bins else lo_full + (start + width) * width_all
        if not one_sided:
            return lo, hi
        if spec.scheme == "sym":
            return max(stats.min, -hi), min(stats.max, hi)
        return (0.0, hi) if stats.min >= 0 else (-hi, 0.0)


def _kl_divergence(
    hist: Tensor,
    starts: Tensor,
    widths: Tensor,
    n_levels: int,
    zero_bins: tuple[int, int],
    eps: float,
) -> Tensor:
    """KL(P || Q) for each candidate window ``hist[start : start + width]``.

    The bins holding zero (``zero_bins``, inclusive) form a level of their own in Q:
    zero is exactly representable, so the spike of exact zeros (ReLU outputs, padding)
    survives quantization. Smearing it over a whole level, as plain TensorRT does, makes
    every wide range look bad and drives the threshold far too low on ReLU activations.
    """
    bins = hist.numel()
    n_cand = starts.numel()
    j = torch.arange(bins).reshape(1, -1)
    valid = j < widths.reshape(-1, 1)  # [C, bins]
    idx = (starts.reshape(-1, 1) + j).clamp(max=bins - 1)
    kept = torch.where(valid, hist[idx], 0.0)  # in-range counts, without outliers
    cum = torch.cat([torch.zeros(1, dtype=hist.dtype), torch.cumsum(hist, 0)])
    below = cum[starts]
    above = cum[-1] - cum[starts + widths]
    p = kept.clone()
    p[:, 0] += below
    p.scatter_add_(1, (widths - 1).reshape(-1, 1), above.reshape(-1, 1))
    nonzero = p > 0
    # Merge the window's bins into n_levels levels, then spread each level's mass evenly
    # over its non-empty bins.
    level = (j * n_levels) // widths.reshape(-1, 1)
    pos = starts.reshape(-1, 1) + j
    level = torch.where((pos >= zero_bins[0]) & (pos <= zero_bins[1]), n_levels, level)
    level = torch.where(valid, level, n_levels + 1)
    mass = torch.zeros(n_cand, n_levels + 2, dtype=hist.dtype).scatter_add_(1, level, kept)
    slots = torch.zeros(n_cand, n_levels + 2, dtype=hist.dtype).scatter_add_(
        1, level, nonzero.to(hist.dtype)
    )
    q = torch.where(nonzero, (mass / slots.clamp_min(1.0)).gather(1, level), 0.0)
    q = torch.where(nonzero & (q == 0), eps, q)
    p = p / p.sum(dim=1, keepdim=True)
    q = q / q.sum(dim=1, keepdim=True)
    terms = torch.where(nonzero, p * torch.log(p / q.clamp_min(1e-300)), 0.0)
    return terms.sum(dim=1)
