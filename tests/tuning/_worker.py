"""One tuning worker in its own process, for the distributed tests.

``python tests/tuning/_worker.py URL STUDY --seed S --max-trials N [--sleep S]`` tunes
the breast-cancer MLP (see ``_helpers``) on the shared study and writes a JSON line with
what it saw to stdout. ``--sleep`` adds a fixed cost to every evaluation (so a test can
kill a worker mid-trial); ``--mark DIR`` writes ``DIR/<pid>.evaluating`` while one runs;
``--gate FILE`` waits (imported and trained) until FILE exists; ``--events FILE`` appends one JSON line per calibration pass, float-baseline evaluation
and trial evaluation (``{"pid", "event"}``, written once the metric is computed), so a
test can count what each process computed, including one that was killed. Fault points
are armed with ``AUTOQUANT_FAULT`` (see ``autoquant/_faults.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (for tuning._helpers)

import torch  # noqa: E402

import autoquant as aq  # noqa: E402
from tuning._helpers import fast_config, train_cancer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=int, default=1)
    parser.add_argument("--mark", default=None)
    parser.add_argument("--tolerable-loss", type=float, default=0.5)
    parser.add_argument("--events", default=None)
    parser.add_argument("--gate", default=None, help="start tuning once this file exists")
    args = parser.parse_args()

    def event(name: str) -> None:
        if args.events is not None:
            line = json.dumps({"pid": os.getpid(), "event": name}) + "\n"
            fd = os.open(args.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())  # one small O_APPEND write: lines never mix
            finally:
                os.close(fd)

    import autoquant.calibration

    real_calibrate = autoquant.calibration.calibrate

    def calibrate(*a: object, **kw: object) -> object:
        stats = real_calibrate(*a, **kw)  # the real pass; logged once it is done
        event("calibrate")
        return stats

    autoquant.calibration.calibrate = calibrate
    torch.set_num_threads(1)  # identical float results in every worker process
    cancer = train_cancer()
    mark = None if args.mark is None else Path(args.mark) / f"{os.getpid()}.evaluating"

    def eval_fn(model: torch.nn.Module) -> float:
        trial = model is not cancer.model  # the float baseline is not a trial
        if mark is not None and trial:
            mark.write_text("")
        time.sleep(args.sleep)
        accuracy = cancer.accuracy(model)
        event("evaluate" if trial else "baseline")
        if mark is not None and trial:
            mark.unlink()
        return accuracy

    config = fast_config(
        strategy=args.strategy,
        max_trials=args.max_trials,
        seed=args.seed,
        storage=args.storage,
        study_name=args.study,
        heartbeat_interval=args.heartbeat,
        # 0.5 (default): every plan passes, for tests that count trials, not fallbacks
        tolerable_loss=args.tolerable_loss,
    )
    if args.gate is not None:  # imported and trained: wait for the test's go
        deadline = time.monotonic() + 120
        while not Path(args.gate).exists():
            if time.monotonic() > deadline:
                sys.exit(f"gate {args.gate} never opened")
            time.sleep(0.02)
    result = aq.tune(cancer.model, eval_fn, calib_data=cancer.calib, config=config)
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "stopped_because": result.stopped_because,
                "n_evaluations": result.n_evaluations,
                "calibration_passes": result.calibration_passes,
                "best_trial": result.best_trial,
                "fp32_ops": [f for f, c in result.best_plan.items() if c is None],
            }
        )
    )


if __name__ == "__main__":
    main()
