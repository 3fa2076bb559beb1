"""The tracker interface: :class:`Tracker` (a tuning callback that records nothing) and
:class:`NoopTracker`, what :func:`~autoquant.tracking.make_tracker` returns when
tracking is off."""

from __future__ import annotations

from typing import Any

from autoquant.tuning.callbacks import TuningCallback

__all__ = ["Tracker", "NoopTracker"]


class Tracker(TuningCallback):
    """A tracker that records nothing: what :func:`make_tracker` returns when tracking is
    off. :class:`MlflowTracker` overrides every method."""

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    model_uri: str | None = None  # "models:/<name>/<version>" once the best model is registered

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """Log a directory's files (or one file) under ``artifact_path`` of the parent run."""

    def close(self, status: str = "FINISHED") -> None:
        """End the parent run if it is still open (idempotent); ``"FAILED"`` on error."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


class NoopTracker(Tracker):
    """Tracking off: every hook does nothing."""

    def __repr__(self) -> str:
        return "NoopTracker()"
