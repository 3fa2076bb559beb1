"""Progress of a tuning run: a bar on a terminal, plain log lines elsewhere (CI)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from autoquant.tuning.callbacks import TuningCallback

log = logging.getLogger("autoquant.progress")

__all__ = ["Progress"]


class Progress(TuningCallback):
    """``mode``: ``auto`` (bar on a terminal, else log lines), ``bar``, ``log`` or ``off``."""

    def __init__(self, *, mode: str = "auto", max_trials: int) -> None:
        if mode not in ("auto", "bar", "log", "off"):
            raise ValueError(
                f"output.progress must be one of auto, bar, log, off, but got {mode!r}."
            )
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.max_trials = mode, max_trials
        self._bar: Any = None
        self._start = time.monotonic()
        self._baseline: Any = None
        # This display reports every trial (bar or log line): the tuner's own per-trial
        # log lines would print each trial twice, so they are off until close().
        self._trial_log = logging.getLogger("autoquant.tuning.trials")
        self._trial_log_was = self._trial_log.disabled
        if mode != "off":
            self._trial_log.disabled = True

    def on_start(self, *, space: Any, baseline: Any, config: Any, study: Any, **_: Any) -> None:
        self._baseline = baseline
        if self.mode == "off":
            return
        log.info(
            "%d ops to tune (10^%.1f plans); fp32 baseline: metric %.6g, latency %.3f ms, "
            "%.1f KiB (calibration and baseline took %.1f s)",
            len(space),
            space.log10_size,
            baseline.accuracy,
            baseline.latency_ms,
            baseline.size_bytes / 1024,
            time.monotonic() - self._start,
        )
        self._start = time.monotonic()
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self.max_trials, desc="trials", unit="eval", file=sys.stderr)

    def on_trial(self, record: Any, *, evaluations: int, best: Any) -> None:
        if self.mode == "off":
            return
        best_text = "none yet"
        if best is not None and best.metrics is not None:
            speed = self._baseline.latency_ms / best.metrics.latency_ms
            best_text = (
                f"{best.metrics.accuracy:.5g} @ {best.metrics.latency_ms:.3f} ms ({speed:.2f}x)"
            )
        elapsed = time.monotonic() - self._start
        if self._bar is not None:
            self._bar.n = evaluations
            self._bar.set_postfix_str(f"last {record.state}, best {best_text}", refresh=True)
            return
        m = record.metrics
        detail = (
            f"metric {m.accuracy:.5g} loss {m.loss:+.4f} {m.latency_ms:.3f} ms"
            if m
            else (record.error or "")
        )
        log.info(
            "[%d/%d evals] trial %d %s: %s | best %s | %.0f s",
            evaluations,
            self.max_trials,
            record.number,
            record.state,
            detail,
            best_text,
            elapsed,
        )

    def close(self) -> None:
        self._trial_log.disabled = self._trial_log_was
        if self._bar is not None:
            self._bar.close()
            self._bar = None
