"""Benchmark distributed tuning: trials per minute with 1, 2, 4 worker processes on one study.

Every measurement starts N worker processes at once (this same script with ``--worker``,
run by ``sys.executable``) on a fresh Optuna study, and each worker runs
``autoquant.tune`` on it with its own ``seed``; ``max_trials = N * --trials-per-worker``
is the budget of the whole study (the workers share it through the storage). The
evaluation has a fixed cost: ``eval_fn`` sleeps ``--eval-s`` seconds and then computes
the real accuracy, so a worker that is not waiting on the others spends almost all its
time in ``eval_fn``, and ideal scaling is N times the trials per minute of one worker.

The model is a small MLP on scikit-learn's bundled digits (64 -> 64 -> 64 -> 64 -> 64 ->
10, five Linear ops, 7 choices each with ``tie="op"``: 7^5 = 16807 plans, so random
plans almost never repeat; but every worker's strategy first proposes the default plan,
so with N workers N - 1 of them wait for one evaluation of it), trained in a fraction of a second with a fixed seed and one
thread. Every worker trains it again and checks that its weights hash to the value the
parent computed (``--expect``): all workers tune bit-identical weights.

After the workers exit, the study is read with Optuna and:

* evaluations: trials whose user attr ``state`` is pass/fail/pruned/error;
* window: from the first trial's ``datetime_start`` to the last trial's
  ``datetime_complete`` (any trial); trials/min = evaluations / window;
* efficiency: (trials/min with N workers) / (N * trials/min with 1 worker), same storage;
* wall: from launching the processes to the last one exiting (Python and torch imports,
  training, calibration, the float baseline, and tear-down included);
* start-up: launch -> the first trial of the slowest-starting worker;
* where the time went: the workers' time in the window split into evaluating (build +
  eval_fn + latency, from the trials' own ``timings``), waiting for another worker's
  evaluation of the same plan, the rest of each trial (claim/decide/tell), between
  trials, before a worker's first trial and after its last; and the set-up steps of a
  worker (interpreter start, imports and training, tune() until its first trial).

The script also checks the protocol: exactly ``max_trials`` evaluations, no plan
evaluated twice, no trial left running, the same weights and float baseline everywhere.

Storages: ``journal`` (Optuna JournalStorage, a file in a fresh temp directory) and
``postgresql`` (a fresh database per measurement, created and dropped with psycopg2 on
the server of ``--pg-url``; skipped with the reason when the server is unreachable: start
one with ``bash scripts/start_postgres.sh``).

Usage:
    .venv/bin/python scripts/bench_distributed.py [--workers 1 2 4]
        [--storages journal postgresql] [--eval-s 2.0] [--trials-per-worker 6] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

EVALUATED = ("pass", "fail", "pruned", "error")
DEFAULT_PG = os.environ.get(
    "AUTOQUANT_TEST_POSTGRES", "postgresql://autoquant:autoquant@127.0.0.1:5432/postgres"
)


# -- the model (built identically in the parent and in every worker) --------------------
def build_task() -> dict[str, Any]:
    """The digits MLP, trained with one thread and a fixed seed, its data and calibration."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    torch.set_num_threads(1)  # one thread: the same float results in every process
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = np.random.RandomState(0).permutation(len(y))
    train, test = torch.tensor(order[:1300]), torch.tensor(order[1300:])
    torch.manual_seed(0)
    width = 64
    model = nn.Sequential(
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):  # full-batch Adam: ~0.2 s, ~95% held-out accuracy
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    model.eval()
    x_test, y_test = x[test], y[test]

    def accuracy(m: nn.Module) -> float:
        with torch.inference_mode():
            return float((m(x_test).argmax(1) == y_test).float().mean())

    return {
        "model": model,
        "accuracy": accuracy,
        "calib": list(x[train][:100].split(25)),  # 100 training samples, 4 batches
        "fingerprint": fingerprint(model),
    }


def fingerprint(model: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- worker mode -------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    t_main = time.time()
    import autoquant as aq

    task = build_task()
    if args.expect and task["fingerprint"] != args.expect:
        sys.exit(
            f"worker {os.getpid()}: model fingerprint {task['fingerprint']} != expected "
            f"{args.expect}: this process did not build the same weights"
        )
    model, accuracy = task["model"], task["accuracy"]
    eval_s = args.eval_s

    def eval_fn(m: Any) -> float:
        if m is not model:  # the float baseline is not a trial: no fixed cost for it
            time.sleep(eval_s)
        return accuracy(m)

    config = aq.TuningConfig(
        strategy=args.strategy,
        max_trials=args.max_trials,
        seed=args.seed,
        storage=args.storage,
        study_name=args.study,
        heartbeat_interval=args.heartbeat,
        tolerable_loss=args.tolerable_loss,  # default 0.5: every plan passes
        latency_repeats=3,
        latency_warmup=1,
        observers=("minmax", "percentile"),  # kl/mse cost ~1 s per static build here
        tie="op",
    )
    t_ready = time.time()
    result = aq.tune(model, eval_fn, calib_data=task["calib"], config=config)
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "seed": args.seed,
                "fingerprint": task["fingerprint"],
                "baseline_accuracy": result.baseline.accuracy,
                "stopped_because": result.stopped_because,
                "n_evaluations": result.n_evaluations,
                "t_main": t_main,
                "t_ready": t_ready,
                "t_done": time.time(),
            }
        ),
        flush=True,
    )


# -- storages ----------------------------------------------------------------------------
def _pg_connect(admin_url: str) -> Any:
    import psycopg2

    return psycopg2.connect(admin_url, connect_timeout=5)


def pg_unreachable(admin_url: str) -> str | None:
    """None when we can create databases on the server, else why not."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    try:
        conn = _pg_connect(admin_url)
    except Exception as exc:  # noqa: BLE001 - any driver error means: not usable
        return f"cannot connect to {_mask(admin_url)}: {str(exc).strip().splitlines()[0]}"
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user")
            row = cur.fetchone()
        if not row or not row[0]:
            return f"the role of {_mask(admin_url)} may not create databases"
    finally:
        conn.close()
    return None


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _pg_ddl(admin_url: str, sql: str) -> None:
    conn = _pg_connect(admin_url)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@dataclass
class Fresh:
    """A fresh storage for one measurement: its URL and how to remove it."""

    url: str
    cleanup: Any
    where: str


def fresh_storage(kind: str, admin_url: str, tag: str) -> Fresh:
    if kind == "journal":
        tmp = Path(tempfile.mkdtemp(prefix=f"aq-bench-{tag}-"))
        path = tmp / "study.log"
        return Fresh(f"journal://{path}", lambda: shutil.rmtree(tmp, ignore_errors=True), str(path))
    db = f"aq_bench_{tag}_{uuid.uuid4().hex[:8]}"
    _pg_ddl(admin_url, f'CREATE DATABASE "{db}"')
    parts = urlsplit(admin_url)
    url = urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{db}"))

    def drop() -> None:
        _pg_ddl(admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    return Fresh(url, drop, f"database {db}")


# -- one measurement ---------------------------------------------------------------------
@dataclass
class Run:
    storage: str
    workers: int
    max_trials: int
    ok: bool = True
    problem: str = ""
    evaluations: int = 0
    other: dict[str, int] = field(default_factory=dict)
    window_s: float = float("nan")
    wall_s: float = float("nan")
    startup_s: float = float("nan")
    tpm: float = float("nan")
    efficiency: float = float("nan")
    # Shares of the workers' time in the window (sum over workers / (N * window)).
    shares: dict[str, float] = field(default_factory=dict)
    # Means over workers, seconds: launch -> main(), imports + training, tune() set-up.
    setup: dict[str, float] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)


def measure(kind: str, n: int, args: argparse.Namespace, expect: str, logdir: Path) -> Run:
    import optuna

    from autoquant.storage import open_storage

    run = Run(kind, n, n * args.trials_per_worker)
    tag = f"{kind[:2]}{n}w"
    store = fresh_storage(kind, args.pg_url, tag)
    study_name = f"bench-{kind}-{n}w"
    procs: list[tuple[subprocess.Popen[str], Path, Path]] = []
    try:
        t_launch = time.time()
        for i in range(n):
            out, err = logdir / f"{tag}-{i}.out", logdir / f"{tag}-{i}.err"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                "--storage",
                store.url,
                "--study",
                study_name,
                "--seed",
                str(1000 + i),
                "--max-trials",
                str(run.max_trials),
                "--eval-s",
                str(args.eval_s),
                "--heartbeat",
                str(args.heartbeat),
                "--strategy",
                args.strategy,
                "--tolerable-loss",
                str(args.tolerable_loss),
                "--expect",
                expect,
            ]
            with out.open("w") as fo, err.open("w") as fe:
                procs.append((subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True), out, err))
        deadline = time.monotonic() + args.timeout
        for p, _, _ in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        t_end = time.time()
        for p, out, err in procs:
            if p.poll() is None:
                p.kill()  # only processes this script started, by their own handle
                p.wait()
                run.ok = False
                run.problem += f"worker pid {p.pid} still running after {args.timeout} s; killed. "
            if p.returncode != 0:
                run.ok = False
                run.problem += f"worker pid {p.pid} exited with {p.returncode}. "
                print(f"--- stderr of worker pid {p.pid} ({err}) ---", file=sys.stderr)
                print(err.read_text()[-4000:], file=sys.stderr)
            lines = [ln for ln in out.read_text().splitlines() if ln.startswith("{")]
            if lines:
                run.reports.append(json.loads(lines[-1]))
        run.wall_s = t_end - t_launch

        storage = open_storage(store.url)
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # no worker got as far as creating the study
            run.ok = False
            run.problem += f"no study {study_name!r} in the storage. "
        else:
            _fill(run, study.get_trials(deepcopy=False), t_launch, expect)
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()  # close our connections before the database is dropped
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        store.cleanup()
    return run


def _ts(d: Any) -> float:
    return float(d.timestamp())


def _fill(run: Run, trials: list[Any], t_launch: float, expect: str) -> None:
    states: dict[str, int] = {}
    for t in trials:
        s = str(t.user_attrs.get("state"))
        states[s] = states.get(s, 0) + 1
    evaluated = [t for t in trials if t.user_attrs.get("state") in EVALUATED]
    run.evaluations = len(evaluated)
    run.other = {s: c for s, c in states.items() if s not in EVALUATED}
    done = [t for t in trials if t.datetime_start is not None and t.datetime_complete is not None]
    if not evaluated or not done:
        run.ok = False
        run.problem += f"no evaluations in the study (trial states: {states}). "
        return
    w0 = min(_ts(t.datetime_start) for t in done)
    w1 = max(_ts(t.datetime_complete) for t in done)
    run.window_s = w1 - w0
    run.tpm = 60.0 * run.evaluations / run.window_s

    # Where each worker's time in the window went.
    by_worker: dict[str, list[Any]] = {}
    for t in done:
        by_worker.setdefault(str(t.user_attrs.get("worker")), []).append(t)
    parts = dict.fromkeys(
        ("evaluating", "same-plan wait", "trial protocol", "between", "head", "tail"), 0.0
    )
    firsts = {}
    for w, ts in by_worker.items():
        ts.sort(key=lambda t: _ts(t.datetime_start))
        firsts[w] = _ts(ts[0].datetime_start)
        parts["head"] += _ts(ts[0].datetime_start) - w0
        parts["tail"] += w1 - _ts(ts[-1].datetime_complete)
        for a, b in zip(ts, ts[1:], strict=False):
            parts["between"] += _ts(b.datetime_start) - _ts(a.datetime_complete)
        for t in ts:
            d = _ts(t.datetime_complete) - _ts(t.datetime_start)
            if t.user_attrs.get("state") in EVALUATED:
                inside = float(t.user_attrs.get("timings", {}).get("total_s", 0.0))
                parts["evaluating"] += inside
                parts["trial protocol"] += d - inside
            else:
                parts["same-plan wait"] += d
    # Workers that never started a trial count as idle for the whole window.
    parts["head"] += max(0, run.workers - len(by_worker)) * run.window_s
    run.shares = {k: v / (run.workers * run.window_s) for k, v in parts.items()}
    run.startup_s = max(firsts.values()) - t_launch

    setup: dict[str, list[float]] = {
        "python": [],
        "import+train": [],
        "tune set-up": [],
        "exit": [],
    }
    for r in run.reports:
        first = next((v for w, v in firsts.items() if w.endswith(f":{r['pid']}")), None)
        setup["python"].append(r["t_main"] - t_launch)
        setup["import+train"].append(r["t_ready"] - r["t_main"])
        if first is not None:
            setup["tune set-up"].append(first - r["t_ready"])
        setup["exit"].append(r["t_done"] - w1)
    run.setup = {k: sum(v) / len(v) for k, v in setup.items() if v}

    workers = {w: i for i, w in enumerate(sorted(by_worker, key=lambda w: firsts[w]))}
    for t in sorted(done, key=lambda t: t.number):
        inside = t.user_attrs.get("timings", {}).get("total_s")
        run.timeline.append(
            f"trial {t.number:3d}  worker {workers[str(t.user_attrs.get('worker'))]}  "
            f"{_ts(t.datetime_start) - w0:6.2f} -> {_ts(t.datetime_complete) - w0:6.2f} s  "
            f"{t.user_attrs.get('state')!s:8s}"
            + ("" if inside is None else f"  in-trial {float(inside):.2f} s")
            + (
                f"  cached_from {t.user_attrs['cached_from']}"
                if "cached_from" in t.user_attrs
                else ""
            )
            + (f"  ({t.user_attrs['error']})" if t.user_attrs.get("state") == "surplus" else "")
        )
    # Correctness checks of the protocol, not only speed.
    if run.evaluations != run.max_trials:
        run.problem += f"{run.evaluations} evaluations, expected max_trials={run.max_trials}. "
    hashes = [t.user_attrs.get("plan_hash") for t in evaluated]
    if len(set(hashes)) != len(hashes):
        run.problem += f"{len(hashes) - len(set(hashes))} plan(s) evaluated twice. "
    running = [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    if running:
        run.problem += f"trials left RUNNING/WAITING: {running}. "
    prints = {r["fingerprint"] for r in run.reports}
    if prints and prints != {expect}:
        run.ok = False
        run.problem += f"workers tuned different models: {sorted(prints)} (expected {expect}). "
    bases = {r["baseline_accuracy"] for r in run.reports}
    if len(bases) > 1:
        run.problem += f"workers measured different float baselines: {sorted(bases)}. "
    if len(run.reports) != run.workers and run.ok:
        run.ok = False
        run.problem += f"{len(run.reports)} of {run.workers} workers reported a result. "


# -- output ------------------------------------------------------------------------------
def _f(v: float, fmt: str) -> str:
    return "-" if v != v else format(v, fmt)  # NaN -> "-"


def _table(columns: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print()


def report(runs: list[Run], eval_s: float, markdown: bool) -> None:
    if not runs:
        print("nothing measured")
        return
    columns = ["storage", "workers", "evals", "other trials", "window s", "trials/min"]
    columns += ["ideal", "efficiency", "start-up s", "wall s"]
    rows = []
    for r in runs:
        other = ", ".join(f"{s} {c}" for s, c in sorted(r.other.items())) or "0"
        rows.append(
            [
                r.storage,
                str(r.workers),
                f"{r.evaluations}/{r.max_trials}",
                other,
                _f(r.window_s, ".1f"),
                _f(r.tpm, ".1f"),
                _f(60.0 * r.workers / eval_s, ".0f"),
                _f(r.efficiency, ".2f"),
                _f(r.startup_s, ".1f"),
                _f(r.wall_s, ".1f"),
            ]
        )
    _table(columns, rows, markdown)
    print(
        "evals: evaluations / max_trials. other trials: the study's trials that were not "
        "evaluations (cached: its plan was evaluated by another trial, which it waited for; "
        "surplus: the budget was in flight elsewhere; skipped: the all-float plan). window: "
        "first trial start -> last trial end. trials/min: evals / window. ideal: N * 60 / "
        f"eval_s ({eval_s:g} s sleep per evaluation, nothing else). efficiency: trials/min / "
        "(N * trials/min of 1 worker, same storage). start-up: launch -> first trial of the "
        "slowest worker. wall: launch -> last worker exited.\n"
    )
    names = ["evaluating", "same-plan wait", "trial protocol", "between", "head", "tail"]
    steps = ["python", "import+train", "tune set-up", "exit"]
    columns = ["storage", "workers", *(f"{n} %" for n in names), *(f"{s} s" for s in steps)]
    rows = [
        [
            r.storage,
            str(r.workers),
            *(_f(100 * r.shares.get(n, float("nan")), ".1f") for n in names),
            *(_f(r.setup.get(s, float("nan")), ".1f") for s in steps),
        ]
        for r in runs
    ]
    _table(columns, rows, markdown)
    print(
        "Shares of the workers' time in the window (sum over workers / (N * window)): "
        "evaluating: inside evaluated trials' build + eval_fn + latency measurement "
        "(their `timings`); same-plan wait: trials that waited for another worker's "
        "evaluation of the same plan (cached) or ended as surplus; trial protocol: the "
        "rest of evaluated trials (claim, decide in trial order, heartbeat start, tell); "
        "between: from one trial's end to the worker's next ask (budget checks, reaping, "
        "refreshing the study, the sampler); head: window start -> the worker's first "
        "trial; tail: the worker's last trial end -> window end. Set-up, means over "
        "workers: python: launch -> the worker's main(); import+train: importing "
        "autoquant/torch and training the MLP; tune set-up: tune() until its first trial "
        "(discovery, calibration, float baseline, opening the study); exit: window end -> "
        "tune() returned."
    )
    for r in runs:
        if r.problem:
            print(f"PROBLEM {r.storage} {r.workers} workers: {r.problem.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--storages",
        nargs="+",
        default=["journal", "postgresql"],
        choices=["journal", "postgresql"],
    )
    parser.add_argument("--eval-s", type=float, default=2.0, help="sleep in every evaluation")
    parser.add_argument("--trials-per-worker", type=int, default=6)
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--heartbeat", type=int, default=10, help="heartbeat_interval, seconds")
    parser.add_argument(
        "--tolerable-loss",
        type=float,
        default=0.5,
        help="accuracy goal; the default passes every plan (a tight one makes the sampler "
        "strategies walk their warm starts, the same plans in every worker)",
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="server (and role) for PostgreSQL")
    parser.add_argument("--timeout", type=float, default=300.0, help="per measurement, seconds")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--logdir", default=None, help="keep the workers' stdout/stderr here")
    parser.add_argument("--timeline", action="store_true", help="print every trial's timeline")
    # Worker mode (used by the benchmark itself).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-trials", type=int, default=6, help=argparse.SUPPRESS)
    parser.add_argument("--expect", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    t0 = time.time()
    expect = build_task()["fingerprint"]
    print(f"model fingerprint {expect} (built in {time.time() - t0:.2f} s)")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; eval {args.eval_s:g} s, "
        f"{args.trials_per_worker} trials per worker, strategy {args.strategy}, "
        f"heartbeat {args.heartbeat} s, tolerable_loss {args.tolerable_loss:g}"
    )
    kinds = list(args.storages)
    if "postgresql" in kinds:
        why = pg_unreachable(args.pg_url)
        if why is not None:
            print(f"PostgreSQL skipped: {why}")
            kinds.remove("postgresql")
    logdir = Path(args.logdir) if args.logdir else Path(tempfile.mkdtemp(prefix="aq-bench-logs-"))
    logdir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    for kind in kinds:
        one: float | None = None
        for n in args.workers:
            r = measure(kind, n, args, expect, logdir)
            if n == 1 and r.ok:
                one = r.tpm
            if one is not None and r.ok:
                r.efficiency = r.tpm / (n * one)
            print(
                f"{kind:10s} {n} workers: {r.evaluations} evaluations in {r.window_s:.1f} s "
                f"-> {r.tpm:.1f}/min (wall {r.wall_s:.1f} s, load "
                f"{os.getloadavg()[0]:.2f}){'' if r.ok else '  FAILED: ' + r.problem}",
                flush=True,
            )
            if args.timeline:
                print("\n".join("    " + line for line in r.timeline), flush=True)
            runs.append(r)
    print(f"load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"worker logs: {logdir}")
    print()
    report(runs, args.eval_s, args.markdown)
    if any(r.problem for r in runs):
        sys.exit(1)  # a failed worker or a broken protocol check (see PROBLEM above)


if __name__ == "__main__":
    main()
