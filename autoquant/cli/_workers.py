"""``launch.workers=N``: one command, N worker processes on this machine, one study.

The job becomes a supervisor: it starts N ``autoquant`` processes with the same
configuration (``study.worker=0..N-1``, each its own run directory under this one),
waits for them and reports. Workers share nothing but the study's storage, so a worker
that dies (``kill -9``, the OOM killer) takes nothing else down: the others mark its
trial failed, run its plan again and finish the study. (Hydra's joblib launcher does not
allow that: when one of its processes dies, loky terminates all of them.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

__all__ = ["supervise"]

log = logging.getLogger("autoquant")
_OWN = ("launch.workers", "study.worker", "hydra.run.dir", "output.progress")


def _worker_command(cfg: DictConfig, worker: int, run_dir: Path) -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    args = [sys.executable, "-m", "autoquant.cli"]
    for source in hc.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            args.append(f"--config-dir={source.path}")
    args.append(f"--config-name={hc.job.config_name}")
    args += [o for o in hc.overrides.task if o.lstrip("+~").split("=", 1)[0] not in _OWN]
    args += [
        f"study.worker={int(cfg.study.worker) + worker}",
        "launch.workers=1",
        "output.progress=log",
        f"hydra.run.dir={run_dir / f'worker-{worker}'}",
    ]
    return args


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def supervise(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``launch.workers`` workers on the configured study; return the study's summary
    (from the worker that finished it) with a ``workers`` section added."""
    n = int(cfg.launch.workers)
    run_dir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for i in range(n):
        out = run_dir / f"worker-{i}.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                _worker_command(cfg, i, run_dir), stdout=sink, stderr=subprocess.STDOUT, env=env
            )
        procs.append((i, proc, out))
        # Logged (not printed): the supervisor's own log says what it started.
        log.info("worker %d: pid %d, log %s", i, proc.pid, out)
    (run_dir / "workers.json").write_text(
        json.dumps([{"worker": i, "pid": p.pid, "log": str(o)} for i, p, o in procs], indent=2)
    )

    def forward(signum: int, _frame: Any) -> None:
        for _, p, _ in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for _, p, _ in procs):
            time.sleep(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    workers = []
    summaries = []
    for i, p, out in procs:
        summary_path = run_dir / f"worker-{i}" / "summary.json"
        ok = p.returncode == 0 and summary_path.exists()
        workers.append(
            {
                "worker": i,
                "pid": p.pid,
                "returncode": p.returncode,
                "status": "finished" if ok else _describe_exit(p.returncode),
                "log": str(out),
            }
        )
        if ok:
            summaries.append(json.loads(summary_path.read_text()))
            log.info("worker %d (pid %d) finished", i, p.pid)
        else:
            log.warning(
                "worker %d (pid %d) failed: %s; see %s", i, p.pid, _describe_exit(p.returncode), out
            )
    if not summaries:
        raise SystemExit(f"autoquant: all {n} workers failed; see {run_dir}/worker-*.out")
    # The worker that saw the most of the study (the last to finish) has its final view.
    final = max(summaries, key=lambda s: (s["n_trials"], s["elapsed_s"]))
    final = {**final, "workers": workers}
    (run_dir / "summary.json").write_text(json.dumps(final, indent=2))
    return final
