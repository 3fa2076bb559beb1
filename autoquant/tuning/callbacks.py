"""Callbacks: how trackers and progress displays follow a tuning run.

Subclass :class:`TuningCallback` and override what you need; ``tune(callbacks=[...])``
calls every method in order. A callback that raises stops the search (the exception
propagates), so trackers should not swallow their own errors silently either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from autoquant.plan import Plan
    from autoquant.tuning.result import Metrics, TrialRecord, TuningResult
    from autoquant.tuning.space import SearchSpace

__all__ = ["TuningCallback"]


class TuningCallback:
    """No-op base: override ``on_start``, ``on_trial`` and/or ``on_end``."""

    def on_start(
        self,
        *,
        space: SearchSpace,
        baseline: Metrics,
        config: Any,
        study: Any,
        build: Callable[[Plan], nn.Module],
    ) -> None:
        """After calibration and the baseline, before the first trial.

        ``build(plan)`` returns a new, independent quantized model for ``plan`` from the
        study's calibration statistics (no recalibration), e.g. to save the best model so
        far while the search runs.
        """

    def on_trial(self, record: TrialRecord, *, evaluations: int, best: TrialRecord | None) -> None:
        """After each trial is told to the study; ``best`` is the best passing so far."""

    def on_end(self, result: TuningResult) -> None:
        """With the final result (best model rebuilt). ``result.finished_study`` tells
        whether this worker is the one that finished a shared study (always True for a
        study only this process works on)."""
