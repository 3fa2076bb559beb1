"""Which weights or channels go: masks from scores, exact counts per pattern.

Scores are computed on a weight (``magnitude``: |w|; ``gradient``: |w * grad|). A mask
is a bool tensor of the weight's shape, True = kept. Counts are exact:
``floor(ratio * total)`` weights (channels) are removed; ties are broken by position
(``torch.sort`` is stable), so masks are deterministic.
"""

from __future__ import annotations

import math

import torch

from autoquant.errors import ConfigError

__all__ = [
    "weight_scores",
    "unstructured_mask",
    "global_unstructured_masks",
    "nm_mask",
    "nm_fits",
    "channel_scores",
    "keep_channels",
]


def weight_scores(weight: torch.Tensor, criterion: str, grad: torch.Tensor | None) -> torch.Tensor:
    w = weight.detach().float()
    if criterion == "magnitude":
        return w.abs()
    if grad is None:
        raise ConfigError(
            "PruneSpec.criterion='gradient' needs gradients of the op's weight, but none "
            "were given. Pass loss_fn= to prune() (or train_fn= to tune()), or use "
            "criterion='magnitude'."
        )
    return (w * grad.detach().float()).abs()


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` lowest scores of a 1-D tensor (stable on ties)."""
    return torch.sort(scores, stable=True).indices[:count]


def unstructured_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    flat = scores.reshape(-1)
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[_lowest(flat, math.floor(ratio * flat.numel()))] = False
    return mask.reshape(scores.shape)


def global_unstructured_masks(
    scores: dict[str, torch.Tensor], ratio: float
) -> dict[str, torch.Tensor]:
    """One ranking over all ``scores``: ``floor(ratio * total)`` weights go in all."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[_lowest(flat, math.floor(ratio * flat.numel()))] = False
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = mask[start : start + size].reshape(scores[n].shape)
        start += size
    return out


def _groups_view(t: torch.Tensor) -> torch.Tensor:
    # N:M groups run along the reduction dimension: the weight's input side, which for
    # a Conv is (in_channels, kh, kw) flattened, as sparse tensor cores group it.
    return t.reshape(t.shape[0], -1)


def nm_fits(weight_shape: torch.Size | tuple[int, ...], m: int) -> bool:
    cols = math.prod(weight_shape[1:]) if len(weight_shape) > 1 else 0
    return cols > 0 and cols % m == 0


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive weights along the input side."""
    if not nm_fits(scores.shape, m):
        raise ConfigError(
            f"an {n}:{m} pattern needs the weight's reduction size divisible by {m}, but "
            f"the weight has shape {tuple(scores.shape)}. Use pattern 'unstructured' for it."
        )
    rows = _groups_view(scores)
    groups = rows.reshape(rows.shape[0], -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., :n], True)
    return mask.reshape(scores.shape)


def channel_scores(
    weight: torch.Tensor, criterion: str, grad: torch.Tensor | None, *, axis: int = 0
) -> torch.Tensor:
    """Mean score of each output channel (``axis``) of ``weight``."""
    s = weight_scores(weight, criterion, grad)
    s = s.movedim(axis, 0)
    return s.reshape(s.shape[0], -1).mean(dim=1)


def keep_channels(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted indices of the channels kept: all but the ``floor(ratio * C)`` lowest,
    and never fewer than one."""
    c = scores.numel()
    drop = min(math.floor(ratio * c), c - 1)
    gone = set(_lowest(scores, drop).tolist())
    return torch.tensor([i for i in range(c) if i not in gone], dtype=torch.long)
