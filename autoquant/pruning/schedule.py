"""Pruning schedules: one shot, or gradually over the fine-tuning budget.

``oneshot``: prune to the full ratio, then ``train_fn`` once on the whole budget.
``gradual``: the ratio rises over ``stages`` stages along the cubic schedule of Zhu &
Gupta (2017) (Intel Neural Compressor's "iterative" pruning),
``ratio_t = ratio * (1 - (1 - t/T)^3)`` for ``t = 1..T``, so most weights go early, while
the network can still recover, and the last stage removes few. Each stage prunes, then
runs ``train_fn`` on its slice of the budget (:func:`split_budget`) with the masks held
during training; the
last stage reaches the full ratio exactly; with ``ramp`` < 1 the stages take that share of
the budget and the rest fine-tunes at the full ratio. Channel-pruned layers shrink at
every stage (``channels="stage"``, the default: each stage removes channels so the layer
keeps what a one-shot prune to that stage's ratio keeps) or once at the end
(``channels="end"``: zeroed during the stages); see ``experiments/prune_quant/README.md``
for the measured comparison.

N:M patterns have a fixed ratio: they are applied at the last stage.

Masks are held during training: a forward pre-hook multiplies every pruned parameter by
its mask before each forward, and the masks are applied again after each stage, so a
``train_fn`` that knows nothing of pruning cannot revive a removed weight.

This module is torch-free (configs read it); :func:`autoquant.pruning.fine_tune.prune_and_train`
runs a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoquant.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "CHANNEL_TIMINGS",
    "PruneSchedule",
    "stage_ratios",
    "split_budget",
    "ramp_budget",
]

SCHEDULES = ("oneshot", "gradual")
#: When channel-pruned layers shrink in a gradual schedule: ``end`` (zeroed during the
#: stages, removed once at the end) or ``stage`` (removed at every stage).
CHANNEL_TIMINGS = ("end", "stage")


@dataclass(frozen=True, kw_only=True)
class PruneSchedule:
    """How pruning and fine-tuning interleave (see the module docstring).

    kind: ``oneshot`` or ``gradual``.
    stages: number of pruning stages of a gradual schedule (>= 2; ignored by oneshot).
    channels: ``stage`` (default) or ``end`` (gradual only): when channel-pruned layers
        shrink. Measured on the Fashion-MNIST CNN (``experiments/prune_quant/README.md``):
        at ratio 0.75 shrinking at every stage kept 2.6-5.8 points more accuracy in all
        six paired runs, at 0.5 shrinking at the end was ahead by up to 1.5 points in 4
        of 6, and every-stage shrinking trains 1.1-2.7x faster (smaller layers).
    ramp: share of the budget over which the ratio rises (gradual only, in (0, 1]); the
        rest fine-tunes at the full ratio (Zhu & Gupta stop pruning before training
        ends). 1.0: the last stage is the only training at the full ratio. The default
        0.5 kept more accuracy than 1.0 in 13 of 16 paired runs there.
    """

    kind: str = "oneshot"
    stages: int = 4
    channels: str = "stage"
    ramp: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(
                f"PruneSchedule.kind must be one of {list(SCHEDULES)}, but got {self.kind!r}. "
                "'gradual' raises the ratio over 'stages' stages of fine-tuning."
            )
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 2:
            raise ConfigError(
                f"PruneSchedule.stages must be an int >= 2, but got {self.stages!r}. "
                "For a single stage use kind='oneshot'."
            )
        if self.channels not in CHANNEL_TIMINGS:
            raise ConfigError(
                f"PruneSchedule.channels must be one of {list(CHANNEL_TIMINGS)}, but got "
                f"{self.channels!r}."
            )

        if (
            isinstance(self.ramp, bool)
            or not isinstance(self.ramp, (int, float))
            or not 0.0 < self.ramp <= 1.0
        ):
            raise ConfigError(
                f"PruneSchedule.ramp must be a number in (0, 1], but got {self.ramp!r}. "
                "It is the share of the budget over which the ratio rises."
            )

    def label(self) -> str:
        if self.kind == "oneshot":
            return "oneshot"
        label = f"gradual/{self.stages}/ramp{self.ramp:g}"
        return label + ("" if self.channels == "stage" else "/shrink-at-end")


def stage_ratios(ratio: float, stages: int) -> list[float]:
    """The cubic schedule: ratio after each of ``stages`` stages; the last is ``ratio``."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"stage_ratios: ratio must be in [0, 1), but got {ratio!r}.")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ConfigError(f"stage_ratios: stages must be an int >= 1, but got {stages!r}.")
    out = [ratio * (1.0 - (1.0 - t / stages) ** 3) for t in range(1, stages + 1)]
    out[-1] = ratio  # exactly, whatever the float rounding above
    return out


def ramp_budget(budget: Any, ramp: float) -> tuple[Any, Any | None]:
    """``budget`` cut into the part the ratio rises over and the rest (None when
    ``ramp`` is 1): epochs and the step cap in proportion, each at least one step."""
    from autoquant.qat.train import TrainBudget

    if ramp >= 1.0:
        return budget, None
    steps = None if budget.steps is None else max(1, round(budget.steps * ramp))
    rest = None if budget.steps is None else max(1, budget.steps - steps)  # type: ignore[operator]
    first = TrainBudget(epochs=budget.epochs * ramp, steps=steps, lr_scale=budget.lr_scale)
    last = TrainBudget(epochs=budget.epochs * (1 - ramp), steps=rest, lr_scale=budget.lr_scale)
    return first, last


def split_budget(budget: Any, stages: int) -> list[Any]:
    """``budget`` (a :class:`~autoquant.qat.train.TrainBudget`) cut into ``stages`` equal
    slices: epochs / stages each, the step cap shared out so the slices sum to it
    (at least one step each), the same learning-rate scale."""
    from autoquant.qat.train import TrainBudget

    epochs = budget.epochs / stages
    if budget.steps is None:
        return [TrainBudget(epochs=epochs, lr_scale=budget.lr_scale) for _ in range(stages)]
    base, extra = divmod(budget.steps, stages)
    return [
        TrainBudget(epochs=epochs, steps=max(1, base + (i < extra)), lr_scale=budget.lr_scale)
        for i in range(stages)
    ]
