"""Stress the multi-worker guarantees: N workers on one study, random ``kill -9`` and restarts.

Each run starts ``--workers`` processes (this script with ``--worker``) on a fresh study
(a journal file in a temp directory, or a new PostgreSQL database), kills ``--kills`` of
them with SIGKILL at random moments and starts a replacement for each at once, waits for
every live worker to finish, then checks from the study and from the workers' logs:

* ``evals``: the study's counted evaluations (a final pass/fail/pruned/error state with
  its plan and metrics) == ``max_trials``;
* ``dup``: counted evaluations of a plan that was already counted (must be 0);
* ``left``: trials left RUNNING or WAITING (must be 0);
* ``agree``: every worker that finished reports the same evaluations and best trial;
* ``live extra``: metric computations by workers that were never killed, beyond what
  the study counts for them (must be 0: no live worker's result was dropped);
* ``killed extra``: metric computations by killed workers that the study does not count
  (at most one per kill: the plan it was evaluating, run again by someone else);
* ``calib``: calibration passes in the whole study (1, or 2 when the preparing worker
  was killed before it stored the calibration: ``calib ok`` says whether it is explained).

The task: an MLP on scikit-learn's digits (64 -> 64 -> 64 -> 10, three Linear ops, 7
choices each with ``tie="op"``: 343 plans), ``strategy="random"``, every plan passes
(``tolerable_loss=0.5``); ``eval_fn`` computes the real test accuracy (a few ms) after a
random 0-50 ms sleep. Kill moments are uniform in ``[-1 s, --kill-window]`` around the
first stored float baseline (negative: during preparation). Workers beat every
``--heartbeat`` s, so a killed trial is reaped after 3 beats.

Usage:
    .venv/bin/python scripts/stress_workers.py [--storages journal postgresql]
        [--workers 8] [--runs 20] [--kills 2] [--max-trials 30] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distributed import DEFAULT_PG, fresh_storage, pg_unreachable  # noqa: E402

EVALUATED = ("pass", "fail", "pruned", "error")


# -- worker mode -------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    import autoquant as aq
    import autoquant.calibration

    torch.set_num_threads(1)  # one thread: the same float results in every process

    def event(name: str) -> None:
        fd = os.open(args.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps({"pid": os.getpid(), "event": name}) + "\n").encode())
        finally:
            os.close(fd)

    real_calibrate = autoquant.calibration.calibrate

    def calibrate(*a: Any, **kw: Any) -> Any:
        stats = real_calibrate(*a, **kw)
        event("calibrate")
        return stats

    autoquant.calibration.calibrate = calibrate

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = np.random.RandomState(0).permutation(len(y))
    train, test = torch.tensor(order[:1300]), torch.tensor(order[1300:])
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    model.eval()
    x_test, y_test = x[test], y[test]
    rng = random.Random(os.getpid())

    def eval_fn(m: Any) -> float:
        trial = m is not model
        if trial:
            time.sleep(rng.uniform(0.0, args.eval_sleep))
        with torch.inference_mode():
            accuracy = float((m(x_test).argmax(1) == y_test).float().mean())
        event("evaluate" if trial else "baseline")
        return accuracy

    config = aq.TuningConfig(
        strategy="random",
        max_trials=args.max_trials,
        seed=args.seed,
        storage=args.storage,
        study_name="stress",
        heartbeat_interval=args.heartbeat,
        tolerable_loss=0.5,
        latency_repeats=3,
        latency_warmup=1,
        observers=("minmax", "percentile"),
        tie="op",
    )
    result = aq.tune(model, eval_fn, calib_data=list(x[train][:100].split(25)), config=config)
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "n_evaluations": result.n_evaluations,
                "best_trial": result.best_trial,
                "stopped_because": result.stopped_because,
            }
        ),
        flush=True,
    )


# -- one run -----------------------------------------------------------------------------
def _events(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(e["pid"], e["event"]) for e in map(json.loads, path.read_text().splitlines())]


def one_run(kind: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from autoquant.storage import open_storage
    from autoquant.tuning._coordination import is_complete

    fresh = fresh_storage(kind, args.pg_url, f"stress{index}")
    tmp = Path(tempfile.mkdtemp(prefix="aq-stress-"))
    events = tmp / "events.jsonl"
    rng = random.Random(args.seed * 1000 + index)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("AUTOQUANT_FAULT", None)
    seeds = iter(range(index * 100, index * 100 + 100))

    def start() -> subprocess.Popen[str]:
        cmd = [sys.executable, __file__, "--worker", "--storage", fresh.url]
        cmd += ["--seed", str(next(seeds)), "--max-trials", str(args.max_trials)]
        cmd += ["--heartbeat", str(args.heartbeat), "--eval-sleep", str(args.eval_sleep)]
        cmd += ["--events", str(events)]
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    t0 = time.monotonic()
    procs = [start() for _ in range(args.workers)]
    try:
        while not any(e == "baseline" for _, e in _events(events)):
            if time.monotonic() - t0 > args.timeout or all(p.poll() is not None for p in procs):
                raise RuntimeError("no worker stored a baseline")
            time.sleep(0.02)
        t_base = time.monotonic()
        kill_at = sorted(t_base + rng.uniform(-1.0, args.kill_window) for _ in range(args.kills))
        killed: list[int] = []
        for when in kill_at:
            time.sleep(max(0.0, when - time.monotonic()))
            alive = [p for p in procs if p.poll() is None and p.pid not in killed]
            if not alive:
                break
            victim = rng.choice(alive)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed.append(victim.pid)
            procs.append(start())  # the restart
        reports, failed = [], []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, args.timeout - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                failed.append(f"pid {p.pid}: still running after {args.timeout:.0f} s")
                continue
            if p.pid in killed:
                continue
            if p.returncode != 0:
                failed.append(f"pid {p.pid}: exit {p.returncode}: {err.strip()[-300:]}")
            else:
                reports.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.monotonic() - t0

        study = optuna.load_study(study_name="stress", storage=open_storage(fresh.url))
        trials = study.get_trials()
        counted = [
            t
            for t in trials
            if t.user_attrs.get("state") in EVALUATED and is_complete(t.user_attrs)
        ]
        plans = Counter(t.user_attrs["plan_hash"] for t in counted)
        by_pid = Counter(int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in counted)
        log = _events(events)
        computed = Counter(pid for pid, e in log if e == "evaluate")
        live_extra = sum(computed[p] - by_pid[p] for p in computed if p not in killed)
        killed_extra = sum(computed[p] - by_pid[p] for p in killed)
        calib_pids = [pid for pid, e in log if e == "calibrate"]
        # A second calibration is explained only by a killed first calibrator.
        calib_ok = len(calib_pids) == 1 or (len(calib_pids) == 2 and calib_pids[0] in killed)
        agree = len({(r["n_evaluations"], r["best_trial"]) for r in reports}) == 1
        return {
            "storage": kind,
            "run": index,
            "kills": len(killed),
            "evals": len(counted),
            "dup": sum(n - 1 for n in plans.values()),
            "left": sum(t.state.name in ("RUNNING", "WAITING") for t in trials),
            "agree": agree and not failed,
            "live_extra": live_extra,
            "killed_extra": killed_extra,
            "calib": len(calib_pids),
            "calib_ok": calib_ok,
            "trials": len(trials),
            "wall_s": wall,
            "failed": failed,
            "ok": (
                len(counted) == args.max_trials
                and all(n == 1 for n in plans.values())
                and not any(t.state.name in ("RUNNING", "WAITING") for t in trials)
                and agree
                and not failed
                and live_extra == 0
                and 0 <= killed_extra <= len(killed)
                and calib_ok
            ),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        fresh.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storages", nargs="+", default=["journal", "postgresql"])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--max-trials", type=int, default=30)
    parser.add_argument("--heartbeat", type=int, default=1)
    parser.add_argument("--eval-sleep", type=float, default=0.05)
    parser.add_argument("--kill-window", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget-s", type=float, default=None, help="per storage: start no run after this"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    # kill PID (SIGTERM) ends the runs through their clean-up: workers killed, storage removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cols = ["storage", "run", "kills", "evals", "dup", "left", "agree", "live_extra"]
    cols += ["killed_extra", "calib", "calib_ok", "trials", "wall_s", "ok"]
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
    rows = []
    for kind in args.storages:
        if kind == "postgresql" and (why := pg_unreachable(args.pg_url)):
            print(f"postgresql skipped: {why}", file=sys.stderr)
            continue
        t_kind = time.monotonic()
        for i in range(args.runs):
            if args.budget_s is not None and time.monotonic() - t_kind > args.budget_s:
                print(f"{kind}: time budget spent after {i} runs", file=sys.stderr)
                break
            row = one_run(kind, i, args)
            rows.append(row)
            cells = [f"{row[c]:.1f}" if c == "wall_s" else str(row[c]) for c in cols]
            print(
                ("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(cells), flush=True
            )
            for f in row["failed"]:
                print(f"    {f}", file=sys.stderr)
    print()
    for kind in args.storages:
        mine = [r for r in rows if r["storage"] == kind]
        if mine:
            print(
                f"{kind}: {sum(r['ok'] for r in mine)}/{len(mine)} runs held every invariant; "
                f"{sum(r['kills'] for r in mine)} kills, "
                f"{sum(r['killed_extra'] for r in mine)} killed plans re-run, "
                f"{sum(r['dup'] for r in mine)} duplicate evaluations, "
                f"{sum(r['live_extra'] for r in mine)} live results dropped, "
                f"median wall {sorted(r['wall_s'] for r in mine)[len(mine) // 2]:.1f} s"
            )
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
