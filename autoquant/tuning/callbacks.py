"""Callbacks: how trackers and progress displays follow a tuning run.

Subclass :class:`TuningCallback` and override what you need; ``tune(callbacks=[...])``
calls every method in order. A callback that raises stops the search (the exception
propagates), so trackers should not swallow their own errors silently either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoquant.tuning.result import Metrics, TrialRecord, TuningResult
    from autoquant.tuning.space import SearchSpace

__all__ = ["TuningCallback"]


class TuningCallback:
    """No-op base: override ``on_start``, ``on_trial`` and/or ``on_end``."""

    def on_start(self, *, space: SearchSpace, baseline: Metrics, config: Any, study: Any) -> None:
        """After calibration and the baseline, before the first trial."""

    def on_trial(self, record: TrialRecord, *, evaluations: int, best: TrialRecord | None) -> None:
        """After each trial is told to the study; ``best`` is the best passing so far."""

    def on_end(self, result: TuningResult) -> None:
        """With the final result (best model rebuilt)."""
