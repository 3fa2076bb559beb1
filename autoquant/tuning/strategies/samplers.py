"""Optuna samplers over the same space: ``tpe``, ``nsga2``, ``gp``, ``random``, ``bruteforce``.

A sampler alone would wander a space of 10^N plans, so each starts from enqueued warm
starts: the default plan, then the default plan with the 1, 2, 4, ... most sensitive
units in fp32 (sensitivity is cheap: no full evaluation). After those the sampler
proposes, seeded by ``TuningConfig.seed``; accuracy is a constraint
(``Trial.set_constraint``), the objective is latency and/or size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import optuna

from autoquant.tuning.strategies.base import SAMPLE, Steps, Strategy, register_strategy

__all__ = ["SamplerStrategy"]


class SamplerStrategy(Strategy):
    """Warm starts, then the Optuna sampler of the subclass."""

    warm_starts: ClassVar[bool] = True
    fill_while_waiting: ClassVar[bool] = True

    def steps(self) -> Steps:
        space = self.space
        default = space.default_params()
        first = yield default
        if self.warm_starts and not first.passed:
            scores = self.context.sensitivity()
            order = sorted(space.unit_names, key=lambda u: -scores.get(u, 0.0))
            k = 1
            while k < len(order):
                rec = yield space.with_fp32(default, order[:k])
                if rec.passed:
                    break
                k *= 2
        while not self.exhausted():
            yield SAMPLE

    def exhausted(self) -> bool:
        """Whether the sampler has nothing new left to propose (ends the strategy)."""
        return False


@register_strategy
class TPEStrategy(SamplerStrategy):
    name = "tpe"

    def sampler(self) -> optuna.samplers.BaseSampler:
        # With workers sharing the study, running trials count as bad ones ("constant
        # liar"), so parallel workers spread out instead of proposing the same region.
        return optuna.samplers.TPESampler(
            seed=self.config.seed,
            multivariate=True,
            n_startup_trials=5,
            constant_liar=self.config.storage is not None,
        )


@register_strategy
class NSGA2Strategy(SamplerStrategy):
    name = "nsga2"

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=self.config.seed, population_size=8)


@register_strategy
class GPStrategy(SamplerStrategy):
    name = "gp"

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=self.config.seed, n_startup_trials=5)


@register_strategy
class RandomStrategy(SamplerStrategy):
    name = "random"


@register_strategy
class BruteForceStrategy(SamplerStrategy):
    """Every plan once (small spaces only); no warm starts needed."""

    name = "bruteforce"
    warm_starts = False

    def sampler(self) -> optuna.samplers.BaseSampler:
        self._sampler = _AskTellBruteForceSampler(seed=self.config.seed)
        return self._sampler

    def exhausted(self) -> bool:
        sampler = getattr(self, "_sampler", None)
        return sampler is not None and sampler.exhausted


class _AskTellBruteForceSampler(optuna.samplers.BruteForceSampler):
    """Fix: Optuna's BruteForceSampler calls ``study.stop()`` once every plan was tried,
    and outside ``study.optimize`` (tune drives the study with ask/tell) ``stop`` raises
    RuntimeError from ``study.tell``, which crashed tune() on any space small enough to be
    exhausted. Here exhaustion is recorded instead, and the strategy ends the search."""

    exhausted = False

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise
            self.exhausted = True
