"""Statistics of one float tensor collected over calibration batches.

Calibration runs the model once; the tuner then tries many observer configurations on
the same statistics. :class:`TensorStats` therefore keeps enough to compute the range of
*every* observer later without rerunning the model:

* running ``min`` / ``max`` (minmax),
* the per-batch mins and maxs (moving-average minmax for any averaging constant),
* a fine histogram over ``[min, max]`` (percentile, MSE and KL searches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["DEFAULT_BINS", "TensorStats", "CalibrationStats"]

DEFAULT_BINS = 2048
_FIELDS = ("min", "max", "count", "batch_mins", "batch_maxs", "hist")


class TensorStats:
    """Running statistics of one tensor over calibration batches.

    Attributes:
        min, max: running minimum and maximum (Python floats of float32 values, so they
            are bit-identical to what a ``torch.ao`` observer records).
        batch_mins, batch_maxs: min and max of every batch, in order.
        count: number of elements seen.
        hist: float64 histogram with ``bins`` equal-width bins over
            ``[hist_min, hist_max]`` (which equal ``[min, max]``). Mass is assumed uniform
            within a bin. While ``min == max`` every count sits in bin 0 (a point mass).
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
            raise ValueError(f"`bins` must be an int >= 2, but got {bins!r}.")
        self.bins = bins
        self.min = math.inf
        self.max = -math.inf
        self.batch_mins: list[float] = []
        self.batch_maxs: list[float] = []
        self.count = 0
        self.hist = torch.zeros(bins, dtype=torch.float64)

    # The histogram always spans exactly the observed range; these names say which range
    # a bin index refers to.
    @property
    def hist_min(self) -> float:
        return self.min

    @property
    def hist_max(self) -> float:
        return self.max

    @property
    def bin_width(self) -> float:
        return (self.max - self.min) / self.bins

    @property
    def n_batches(self) -> int:
        return len(self.batch_mins)

    @classmethod
    def from_tensor(cls, x: Tensor, bins: int = DEFAULT_BINS) -> TensorStats:
        """Statistics of a single tensor (one batch)."""
        stats = cls(bins)
        stats.update(x)
        return stats

    def update(self, x: Tensor) -> bool:
        """Add one batch.

        Returns False, and records nothing, when ``x`` contains NaN or Inf: a histogram
        of non-finite values means nothing, and the caller knows which op and batch to
        name in its error. Empty tensors are ignored (as ``torch.ao`` observers do).
        """
        x = x.detach()
        if x.numel() == 0:
            return True
        # float32 like torch.ao observers, so min/max and moving averages match them bit
        # for bit; it also sidesteps histc's patchy half/bfloat16 support.
        x = x.to(torch.float32)
        bmin_t, bmax_t = torch.aminmax(x)
        bmin, bmax = bmin_t.item(), bmax_t.item()
        # aminmax propagates NaN and Inf shows up as an extreme, so this one check covers
        # every non-finite element without another pass over x.
        if not (math.isfinite(bmin) and math.isfinite(bmax)):
            return False

        lo = min(self.min, bmin)
        hi = max(self.max, bmax)
        if self.count and (lo != self.min or hi != self.max):
            self.hist = self._rebinned(lo, hi)
        self.min, self.max = lo, hi
        if lo == hi:
            self.hist[0] += x.numel()
        else:
            self.hist += torch.histc(x, self.bins, min=lo, max=hi).to("cpu", torch.float64)
        self.batch_mins.append(bmin)
        self.batch_maxs.append(bmax)
        self.count += x.numel()
        return True

    def _rebinned(self, lo: float, hi: float) -> Tensor:
        """The current histogram re-binned onto ``bins`` equal bins over ``[lo, hi]``.

        ``[lo, hi]`` contains the current range. Mass is uniform within an old bin, so the
        new counts are differences of the old piecewise-linear CDF at the new edges, which
        conserves the total count.
        """
        if self.min == self.max:
            # Point mass: it goes, whole, into the new bin that contains it.
            new = torch.zeros(self.bins, dtype=torch.float64)
            index = int((self.min - lo) / (hi - lo) * self.bins)
            new[min(max(index, 0), self.bins - 1)] = self.hist.sum()
            return new
        edges = torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)
        # Clamp: float rounding in the differences can give -1e-13 where a bin is empty.
        return torch.diff(self.cdf(edges)).clamp_min_(0.0)

    def cdf(self, t: Tensor | float) -> Tensor:
        """Number of elements ``<= t`` (float64), interpolating linearly within a bin."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.count == 0:
            return torch.zeros_like(t)
        if self.min == self.max:
            return torch.where(t >= self.min, self.hist.sum(), 0.0).to(torch.float64)
        pos = ((t - self.min) / self.bin_width).clamp(0.0, float(self.bins))
        idx = pos.floor().long().clamp_(max=self.bins - 1)
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self.hist, 0)])
        return cum[idx] + (pos - idx) * self.hist[idx]

    def quantile(self, q: Tensor | float) -> Tensor:
        """Value below which a fraction ``q`` (in [0, 1]) of the elements lies.

        Inverse of :meth:`cdf`: linear interpolation within the bin where the CDF
        crosses ``q``. Returns a float64 tensor shaped like ``q``.
        """
        q = torch.as_tensor(q, dtype=torch.float64)
        if self.count == 0:
            return torch.full_like(q, math.nan)
        if self.min == self.max:
            return torch.full_like(q, self.min)
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self.hist, 0)])
        target = q.clamp(0.0, 1.0) * cum[-1]
        # First edge whose cumulative count reaches the target; the bin before it holds
        # the crossing, and has a positive count there, so the division is safe.
        right = torch.searchsorted(cum, target.reshape(-1), right=False).clamp_(1, self.bins)
        b = right - 1
        frac = (target.reshape(-1) - cum[b]) / self.hist[b].clamp_min(1e-300)
        value = self.min + (b + frac.clamp(0.0, 1.0)) * self.bin_width
        return value.clamp(self.min, self.max).reshape(q.shape)

    def to_tensors(self) -> dict[str, Tensor]:
        """Every field as a tensor (safetensors-compatible), for :meth:`from_tensors`."""
        return {
            "min": torch.tensor(self.min, dtype=torch.float64),
            "max": torch.tensor(self.max, dtype=torch.float64),
            "count": torch.tensor(self.count, dtype=torch.int64),
            "batch_mins": torch.tensor(self.batch_mins, dtype=torch.float64),
            "batch_maxs": torch.tensor(self.batch_maxs, dtype=torch.float64),
            "hist": self.hist.clone(),
        }

    @classmethod
    def from_tensors(cls, d: dict[str, Tensor]) -> TensorStats:
        """Inverse of :meth:`to_tensors`."""
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise ValueError(
                f"TensorStats tensors must have the keys {list(_FIELDS)}, but {missing} "
                f"are missing (got {sorted(d)})."
            )
        hist = d["hist"].detach().to("cpu", torch.float64).reshape(-1).clone()
        stats = cls(bins=hist.numel())
        stats.hist = hist
        stats.min = float(d["min"])
        stats.max = float(d["max"])
        stats.count = int(d["count"])
        stats.batch_mins = [float(v) for v in d["batch_mins"].reshape(-1).tolist()]
        stats.batch_maxs = [float(v) for v in d["batch_maxs"].reshape(-1).tolist()]
        return stats

    def __repr__(self) -> str:
        return (
            f"TensorStats(count={self.count}, batches={self.n_batches}, "
            f"min={self.min:.6g}, max={self.max:.6g}, bins={self.bins})"
        )


_META = "__meta__/"


@dataclass
class CalibrationStats:
    """Statistics of every observed tensor of one calibration pass.

    Keys are described in :mod:`autoquant.calibration` (which collects them).
    """

    mode: str
    stats: dict[str, TensorStats] = field(default_factory=dict)
    n_samples: int = 0
    n_batches: int = 0
    backend: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("graph", "module"):
            raise ValueError(f"`mode` must be 'graph' or 'module', but got {self.mode!r}.")

    def __getitem__(self, key: str) -> TensorStats:
        try:
            return self.stats[key]
        except KeyError:
            sample = sorted(self.stats)[:8]
            raise KeyError(
                f"no calibration statistics for {key!r} ({self.mode} mode, "
                f"{len(self.stats)} keys, e.g. {sample})."
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self.stats

    def __len__(self) -> int:
        return len(self.stats)

    def keys(self) -> list[str]:
        return list(self.stats)

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat ``{name: tensor}`` (safetensors-compatible) for :meth:`from_tensors`."""
        out: dict[str, Tensor] = {
            _META + "mode": _encode(self.mode),
            _META + "backend": _encode(self.backend),
            _META + "n_samples": torch.tensor(self.n_samples, dtype=torch.int64),
            _META + "n_batches": torch.tensor(self.n_batches, dtype=torch.int64),
        }
        for key, st in self.stats.items():
            for name, value in st.to_tensors().items():
                out[f"{key}/{name}"] = value
        return out

    @classmethod
    def from_tensors(cls, d: dict[str, Tensor]) -> CalibrationStats:
        """Inverse of :meth:`to_tensors`."""
        try:
            mode = _decode(d[_META + "mode"])
            backend = _decode(d[_META + "backend"])
            n_samples = int(d[_META + "n_samples"])
            n_batches = int(d[_META + "n_batches"])
        except KeyError as e:
            raise ValueError(
                f"calibration tensors must contain {_META}mode/backend/n_samples/n_batches, "
                f"but {e.args[0]!r} is missing."
            ) from None
        grouped: dict[str, dict[str, Tensor]] = {}
        for name, value in d.items():
            if name.startswith(_META):
                continue
            key, _, fld = name.rpartition("/")
            grouped.setdefault(key, {})[fld] = value
        stats = {k: TensorStats.from_tensors(v) for k, v in grouped.items()}
        return cls(
            mode=mode, stats=stats, n_samples=n_samples, n_batches=n_batches, backend=backend
        )


def _encode(s: str) -> Tensor:
    return torch.tensor(list(s.encode("utf-8")), dtype=torch.uint8)


def _decode(t: Tensor) -> str:
    return bytes(t.tolist()).decode("utf-8")
