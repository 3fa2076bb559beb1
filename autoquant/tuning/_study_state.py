"""What the workers of one study share and compute once: calibration, baseline (with the
float baselines: fp32 eager, fp32 compiled, bf16), scores.

All of it lives in the study's user attributes, keyed by a *fingerprint* of the model
(structure and weights), the calibration data and the settings that change what a
trial measures. One worker prepares them (calibration pass, float baseline); the others
wait for ``autoquant:ready`` and load them. Who prepares is settled by *claims*:

* A worker that finds no live claim writes its own, ``autoquant:preparer:<token>`` =
  ``{since, beat, worker}``, waits :data:`SETTLE_S` (longer than one storage write, so
  claims written at about the same time see each other) and reads them all again. The
  live claim with the smallest ``(since, token)`` wins; every worker reads the same
  claims and agrees. The others withdraw theirs and wait.
* The winner beats ``beat`` every heartbeat interval while it prepares. A claim silent
  for three intervals is dead: the waiting workers claim again (one takes over).

A later run on the same study name with a different model, data or settings is refused
(it would mix incomparable trials).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from autoquant import _faults
from autoquant.errors import ConfigError

__all__ = ["StudyState", "fingerprint"]

log = logging.getLogger("autoquant.tuning")
_PREFIX = "autoquant:"
_CLAIM = "preparer:"
# Claims written within this many seconds of each other see each other (a storage write
# takes milliseconds; the wait is paid once per worker start, only with a storage).
SETTLE_S = 0.3


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"  # as _coordination.WORKER


# Settings that change what a trial measures or which plans exist; the goal, strategy,
# budget and seed may differ between runs and workers of one study.
_FINGERPRINTED = (
    "backend",
    "calib_samples",
    "objective",
    "criterion",
    "higher_is_better",
    "search",
    "approaches",
    "observers",
    "tie",
    "include_simulated",
    "latency_threads",
    "latency_repeats",
    "latency_warmup",
    "latency_mode",
)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def fingerprint(model: nn.Module, calib_data: Iterable[Any] | None, config: Any) -> str:
    """sha256 over the model (class, structure, every parameter and buffer), the
    calibration samples tune() uses, and the measurement settings."""
    from autoquant._data import iter_batches

    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model}".encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    if calib_data is not None:
        for args, kwargs, n in iter_batches(calib_data, max_samples=config.calib_samples):
            h.update(f"batch:{n}".encode())
            for value in [*args, *(kwargs[k] for k in sorted(kwargs))]:
                if isinstance(value, torch.Tensor):
                    h.update(_tensor_bytes(value))
                else:
                    h.update(repr(value).encode())
    settings = {k: getattr(config, k) for k in _FINGERPRINTED}
    h.update(json.dumps(settings, sort_keys=True, default=list).encode())
    return h.hexdigest()


class StudyState:
    """The shared, computed-once part of a study (see the module docstring)."""

    def __init__(self, study: Any, fp: str, *, heartbeat_interval: float) -> None:
        self.study, self.fp = study, fp
        self.interval = float(heartbeat_interval)
        self.grace = 3 * self.interval
        self.token = uuid.uuid4().hex[:16]  # this worker's claim
        self._since: float | None = None

    def _attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    def get(self, name: str) -> Any:
        return self._attrs().get(_PREFIX + name)

    def put(self, name: str, value: Any) -> None:
        self.study.set_user_attr(_PREFIX + name, value)

    def check(self) -> None:
        """Refuse a study that was prepared for another model, data or settings."""
        existing = self.get("fingerprint")
        if existing is None:
            self.put("fingerprint", self.fp)
        elif existing != self.fp:
            raise ConfigError(
                f"study {self.study.study_name!r} was created for a different model, "
                "calibration data or measurement settings "
                f"(fingerprint {existing[:12]}, this run {self.fp[:12]}; fingerprinted "
                f"settings: {', '.join(_FINGERPRINTED)}). Use a new study_name, or run "
                "with the same model, data and settings."
            )

    # -- who prepares ------------------------------------------------------------------
    def _claims(self) -> dict[str, dict[str, Any]]:
        """Live preparer claims by token (not withdrawn, beaten within the grace)."""
        now = time.time()
        key = _PREFIX + _CLAIM
        return {
            name[len(key) :]: claim
            for name, claim in self._attrs().items()
            if name.startswith(key)
            and isinstance(claim, dict)
            and not claim.get("withdrawn")
            and now - float(claim.get("beat", 0.0)) <= self.grace
        }

    def _claim(self, **fields: Any) -> None:
        self.put(_CLAIM + self.token, {"worker": _worker(), **fields})

    def wait_until_ready(self, *, created: bool = False) -> bool:
        """Block while another worker prepares the study. Returns True when this worker
        must prepare it: its claim won (see the module docstring). ``created`` is kept
        for callers; the claims decide, whoever created the study."""
        announced = False
        while True:
            if self.get("ready"):
                return False
            if not self._claims():
                now = time.time()
                self._claim(since=now, beat=now)
                time.sleep(SETTLE_S)
                if self.get("ready"):
                    self._claim(since=now, beat=now, withdrawn=True)
                    return False
                claims = self._claims()
                first = min(claims, key=lambda k: (float(claims[k]["since"]), k), default=None)
                if first == self.token:
                    self._since = now
                    return True
                self._claim(since=now, beat=now, withdrawn=True)
            if not announced:
                log.info("waiting for another worker to calibrate and measure the baseline")
                announced = True
            time.sleep(0.25)

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Beat this worker's claim until the block ends, then mark the study ready."""
        from autoquant.tuning._coordination import beating

        since = self._since if self._since is not None else time.time()
        with beating(
            lambda: self._claim(since=since, beat=time.time()),
            self.interval,
            "autoquant-preparing",
        ):
            yield
        self.put("ready", True)

    # -- the shared values ---------------------------------------------------------------
    def load_calibration(self) -> Any:
        blob = self.get(f"calibration:{self.fp}")
        if blob is None:
            return None
        from safetensors.torch import load

        from autoquant.stats import CalibrationStats

        return CalibrationStats.from_tensors(load(zlib.decompress(base64.b64decode(blob))))

    def save_calibration(self, stats: Any) -> None:
        from safetensors.torch import save

        raw = zlib.compress(save(stats.to_tensors()), 6)
        self.put(f"calibration:{self.fp}", base64.b64encode(raw).decode("ascii"))
        _faults.hit("prepare")

    def load_baseline(self) -> Any:
        from autoquant.tuning.result import Metrics

        d = self.get(f"baseline:{self.fp}")
        return None if d is None else Metrics.from_dict(d)

    def save_baseline(self, metrics: Any) -> None:
        self.put(f"baseline:{self.fp}", metrics.to_dict())

    def load_floats(self) -> Any:
        from autoquant.tuning.result import FloatBaselines

        d = self.get(f"floats:{self.fp}")
        return None if d is None else FloatBaselines.from_dict(d)

    def save_floats(self, floats: Any) -> None:
        # Written before the baseline: a worker that finds the baseline finds these too.
        if floats is not None:
            self.put(f"floats:{self.fp}", floats.to_dict())

    def load_sensitivity(self) -> dict[str, float] | None:
        d = self.get(f"sensitivity:{self.fp}")
        return None if d is None else {k: float(v) for k, v in d.items()}

    def save_sensitivity(self, scores: dict[str, float]) -> None:
        # JSON has no inf: an unscorable unit is "infinitely sensitive" either way.
        self.put(f"sensitivity:{self.fp}", {k: min(v, 1e300) for k, v in scores.items()})
