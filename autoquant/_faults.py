"""Fault injection for tests: make this process ``kill -9`` itself at a named point.

The multi-worker guarantees (README, "Resuming and distributed search") are about what
happens when a worker dies at the worst moment. Tests arm one point per process through
the environment, read once at import::

    AUTOQUANT_FAULT=<point>[@<n>]     # SIGKILL the n-th time (default: 1st) <point> is hit

Points in the worker's protocol:

* ``storage_lock``: holding the journal file's lock (any write, any thread).
* ``tell:<attr>``: part-way through telling an evaluated trial, right after writing the
  trial attribute ``<attr>`` (``plan``, ``metrics``, ..., ``state`` is written last).
* ``prepare``: preparing the study, after the calibration is stored, before the
  baseline and ``ready``.
* ``evaluate``: the user's metric has been computed, nothing of it is stored yet.

Unarmed (the normal case) :func:`hit` is one comparison against None.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["hit", "ENV"]

ENV = "AUTOQUANT_FAULT"


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    point, _, nth = spec.partition("@")
    return point, int(nth) if nth else 1


_ARMED = _parse(os.environ.get(ENV))
_count = 0
_lock = threading.Lock()


def hit(point: str) -> None:
    """SIGKILL this process if ``point`` is the armed one and this is its n-th hit."""
    if _ARMED is None or point != _ARMED[0]:
        return
    global _count
    with _lock:
        _count += 1
        if _count == _ARMED[1]:
            os.kill(os.getpid(), signal.SIGKILL)
