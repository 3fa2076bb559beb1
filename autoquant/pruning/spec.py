"""``PruneSpec``: which weights of one op are removed, and how they are chosen.

Torch-free like :mod:`autoquant.config`: configs, plans and the search space read it
without importing torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoquant.errors import ConfigError

__all__ = ["PATTERNS", "CRITERIA", "SCOPES", "PruneSpec", "parse_nm"]

#: ``unstructured``: single weights; ``channel``: whole output channels (Conv filters,
#: Linear neurons, FFN intermediate neurons, attention heads), removed from the layer
#: and its consumers; ``N:M`` (e.g. ``2:4``): at most N nonzero weights in every M
#: consecutive weights of the reduction dimension.
PATTERNS = ("unstructured", "channel", "n:m")
#: ``magnitude``: |w| (channels: mean |w| of the channel); ``gradient``: |w * dL/dw|
#: (first-order Taylor, as in SNIP), needs gradients (a ``loss_fn`` or ``.grad`` set).
CRITERIA = ("magnitude", "gradient")
#: ``op``: ``ratio`` of this op's weights; ``global``: ``ratio`` of the weights of every
#: op with a global spec of the same pattern and criterion, ranked together.
SCOPES = ("op", "global")

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """``(N, M)`` of an ``"N:M"`` pattern, else None."""
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def _fail(field: str, value: Any, allowed: str, fix: str = "") -> ConfigError:
    return ConfigError(
        f"PruneSpec.{field} must be {allowed}, but got {value!r}." + (f" {fix}" if fix else "")
    )


@dataclass(frozen=True, kw_only=True)
class PruneSpec:
    """How one op is pruned (before it is calibrated and quantized).

    Args:
        pattern: ``unstructured``, ``channel`` or ``"N:M"`` such as ``"2:4"`` (N kept of
            every M; ratio (M-N)/M).
        ratio: share of the op's weights (``channel``: of its output channels) set to
            zero or removed, in [0, 1). The count is ``floor(ratio * total)``; a
            ``channel`` op keeps at least one channel. For ``N:M`` leave it None (it
            follows from N and M) or give exactly (M-N)/M.
        criterion: ``magnitude`` or ``gradient`` (see :data:`CRITERIA`).
        scope: ``op`` or ``global`` (see :data:`SCOPES`).
        fine_tune: how the pruned model was fine-tuned, set by the tuner (a
            :class:`~autoquant.qat.train.TrainBudget` label and the schedule, e.g.
            ``"epochs=1 lr_x1 gradual/4"``); None: not fine-tuned. :func:`prune` does not
            read it: it is part of the plan (and its hash) so that plans pruned alike but
            fine-tuned differently are different plans.
    """

    pattern: str = "unstructured"
    ratio: float | None = None
    criterion: str = "magnitude"
    scope: str = "op"
    fine_tune: str | None = None

    def __post_init__(self) -> None:
        if self.fine_tune is not None and (
            not isinstance(self.fine_tune, str) or not self.fine_tune.strip()
        ):
            raise _fail(
                "fine_tune",
                self.fine_tune,
                "None or a non-empty label",
                "It is set by the tuner (a TrainBudget label and the schedule).",
            )
        nm = parse_nm(self.pattern)
        if nm is None and self.pattern not in ("unstructured", "channel"):
            raise _fail(
                "pattern",
                self.pattern,
                "one of 'unstructured', 'channel' or an 'N:M' string such as '2:4'",
            )
        if self.criterion not in CRITERIA:
            raise _fail("criterion", self.criterion, f"one of {list(CRITERIA)}")
        if self.scope not in SCOPES:
            raise _fail("scope", self.scope, f"one of {list(SCOPES)}")
        if nm is not None:
            n, m = nm
            if not 0 < n < m:
                raise _fail(
                    "pattern",
                    self.pattern,
                    "'N:M' with 0 < N < M (N weights kept of every M)",
                    "For example '2:4' keeps 2 of every 4.",
                )
            object.__setattr__(self, "pattern", f"{n}:{m}")
            implied = (m - n) / m
            if self.ratio is None:
                object.__setattr__(self, "ratio", implied)
            elif not _is_number(self.ratio) or abs(float(self.ratio) - implied) > 1e-9:
                raise _fail(
                    "ratio",
                    self.ratio,
                    f"None or {implied:g} for pattern {self.pattern!r}",
                    "An N:M pattern fixes the ratio at (M-N)/M; drop ratio= or use pattern "
                    "'unstructured' for another ratio.",
                )
            if self.scope != "op":
                raise _fail(
                    "scope", self.scope, "'op' for an N:M pattern", "N:M groups are per op."
                )
            object.__setattr__(self, "ratio", float(implied))
            return
        if not _is_number(self.ratio) or not 0.0 <= float(self.ratio) < 1.0:
            raise _fail(
                "ratio",
                self.ratio,
                f"a number in [0, 1) for pattern {self.pattern!r}",
                "It is the share of weights (channels) removed; 0.5 removes half.",
            )
        object.__setattr__(self, "ratio", float(self.ratio))
        if self.scope == "global" and self.pattern != "unstructured":
            raise _fail(
                "scope",
                self.scope,
                "'op' for pattern 'channel'",
                "Global ranking is for pattern='unstructured'; give each op its channel ratio.",
            )

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, else None."""
        return parse_nm(self.pattern)

    @property
    def structured(self) -> bool:
        """Whether layers shrink (``channel``) rather than hold zeros."""
        return self.pattern == "channel"

    def replace(self, **changes: Any) -> PruneSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["fine_tune"] is None:
            del out["fine_tune"]  # plans without fine-tuning keep their hashes and files
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | PruneSpec) -> PruneSpec:
        if isinstance(data, PruneSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"A PruneSpec must be given as a mapping of its fields, but got "
                f"{type(data).__name__}: {data!r}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"PruneSpec got unknown field(s) {unknown}; allowed fields are {sorted(known)}."
            )
        return cls(**dict(data))

    def short(self) -> str:
        """Compact label, e.g. ``channel:0.5``, ``2:4``, ``unstructured:0.3/global``."""
        label = self.pattern if self.nm else f"{self.pattern}:{self.ratio:g}"
        if self.criterion != "magnitude":
            label += f"/{self.criterion}"
        if self.scope != "op":
            label += f"/{self.scope}"
        return label


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))
