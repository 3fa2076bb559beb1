"""A worker killed (SIGKILL) at each named point of the protocol; the README's
guarantees checked from the study afterwards, on the journal file and on PostgreSQL.

The victim arms one point with ``AUTOQUANT_FAULT`` (``autoquant/_faults.py``) and kills
itself there, so what it had written when it died is known. Every worker logs what it
computed (``_worker.py --events``: calibration passes, float baselines, evaluations of
the user's metric), including the victim up to its death. After the survivors finish:

* the study holds exactly ``max_trials`` evaluations, of distinct plans;
* nothing is left RUNNING or WAITING;
* each survivor computed the metric exactly as often as the study counts for it (none
  of its work was reaped and dropped); the victim computed it ``lost`` more times than
  counted, and that plan was evaluated again by a survivor (the documented re-run);
* calibration and the float baseline were computed once in the study, by anyone;
* all survivors return the same result.

Heartbeat 1 s (a dead trial is reaped after 3 s), 0.2 s evaluations, 4 trials.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoquant import _faults
from autoquant.storage import open_storage
from autoquant.tuning._coordination import is_complete, is_dead_evaluation
from autoquant.tuning._study_state import StudyState

WORKER = Path(__file__).with_name("_worker.py")
EVALUATED = ("pass", "fail", "pruned", "error")
MAX_TRIALS = 4


@pytest.fixture(params=["journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal://{tmp_path / 'study.log'}"
    return request.getfixturevalue("postgres_url")


def _start(
    url: str, seed: int, events: Path, fault: str | None = None, gate: Path | None = None
) -> subprocess.Popen[str]:
    """A worker; with ``gate``, it imports and trains, then waits for the file to exist."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("AUTOQUANT_FAULT", None)
    if fault is not None:
        env["AUTOQUANT_FAULT"] = fault
    args = ["--seed", str(seed), "--max-trials", str(MAX_TRIALS), "--sleep", "0.2"]
    if gate is not None:
        args += ["--gate", str(gate)]
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, "faults", *args, "--events", str(events)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 180) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _killed(proc: subprocess.Popen[str], timeout: float = 180) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, f"the fault point was not reached:\n{err[-3000:]}"


def _wait_for(events: Path, pid: int, name: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300  # a loaded shared machine: start-up can take minutes
    while not any(e == (pid, name) for e in _events(events)):
        assert proc.poll() is None or proc.returncode == -signal.SIGKILL, proc.communicate()[1]
        assert time.monotonic() < deadline, f"no {name!r} from pid {pid}"
        time.sleep(0.05)


def _events(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(e["pid"], e["event"]) for e in map(json.loads, path.read_text().splitlines())]


def _check(
    url: str, events: Path, victim: int, results: list[dict], lost: int | tuple[int, ...]
) -> None:
    trials = optuna.load_study(study_name="faults", storage=open_storage(url)).get_trials()
    counted = [
        t for t in trials if t.user_attrs.get("state") in EVALUATED and is_complete(t.user_attrs)
    ]
    plans = [t.user_attrs["plan_hash"] for t in counted]
    assert len(counted) == MAX_TRIALS, [(t.number, t.state, t.user_attrs) for t in trials]
    assert len(set(plans)) == MAX_TRIALS
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, left

    log = _events(events)
    computed = Counter(pid for pid, e in log if e == "evaluate")
    by_worker = Counter(int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in counted)
    for r in results:
        assert computed[r["pid"]] == by_worker[r["pid"]], (r["pid"], computed, by_worker)
    victim_lost = computed[victim] - by_worker[victim]
    assert victim_lost in ((lost,) if isinstance(lost, int) else lost), (computed, by_worker)
    assert sum(computed.values()) == MAX_TRIALS + victim_lost
    dead = [t for t in trials if is_dead_evaluation(t)]
    # A dead evaluation per lost metric; the victim may also die before computing it.
    assert victim_lost <= len(dead) <= 1, dead
    for t in dead:  # the killed plan was run again, and counted once
        assert t.user_attrs["worker"].endswith(f":{victim}")
        assert plans.count(t.user_attrs["plan_hash"]) == 1

    assert [e for _, e in log].count("calibrate") == 1, log
    assert [e for _, e in log].count("baseline") == 1, log
    assert {r["n_evaluations"] for r in results} == {MAX_TRIALS}
    assert {r["stopped_because"] for r in results} == {"max_trials"}
    assert len({r["best_trial"] for r in results}) == 1


@pytest.mark.parametrize(
    ("point", "lost"),
    [
        ("evaluate", 1),  # the metric is computed, nothing stored: run again
        ("tell:metrics", 1),  # plan and metrics written, state not: torn, run again
        ("tell:state", 0),  # the whole outcome written, not finished: counted as is
    ],
)
def test_worker_killed_during_a_trial(
    storage_url: str, tmp_path: Path, point: str, lost: int
) -> None:
    # The victim starts alone and prepares the study, so that its first trial (the
    # default plan) is an evaluation; the others join once the baseline is in.
    events, gate = tmp_path / "events.jsonl", tmp_path / "go"
    victim = _start(storage_url, 1, events, fault=point)
    survivors = [_start(storage_url, s, events, gate=gate) for s in (2, 3)]
    _wait_for(events, victim.pid, "baseline", victim)
    gate.touch()
    _killed(victim)
    _check(storage_url, events, victim.pid, [_finish(w) for w in survivors], lost)


def test_worker_killed_while_preparing(storage_url: str, tmp_path: Path) -> None:
    # Killed after storing the calibration, before the baseline: the two workers started
    # after it find its claim, wait until it is stale, and exactly one takes over.
    events, gate = tmp_path / "events.jsonl", tmp_path / "go"
    victim = _start(storage_url, 1, events, fault="prepare")
    survivors = [_start(storage_url, s, events, gate=gate) for s in (2, 3)]
    _killed(victim)
    gate.touch()
    results = [_finish(w) for w in survivors]
    _check(storage_url, events, victim.pid, results, 0)
    assert sum(r["calibration_passes"] for r in results) == 0  # loaded from the study
    assert [pid for pid, e in _events(events) if e == "calibrate"] == [victim.pid]


def test_worker_killed_holding_the_journal_lock(tmp_path: Path) -> None:
    # Three workers released together; the victim dies inside its 12th journal write
    # (set-up, a trial write or a heartbeat, whatever comes: ``lost`` is 0 or 1). The
    # kernel frees the flock at once: nobody stalls, so no live worker's trial is reaped
    # (each survivor's evaluations all count).
    url = f"journal://{tmp_path / 'study.log'}"
    events, gate = tmp_path / "events.jsonl", tmp_path / "go"
    victim = _start(url, 1, events, fault="storage_lock@12", gate=gate)
    survivors = [_start(url, s, events, gate=gate) for s in (2, 3)]
    gate.touch()
    _killed(victim)
    results = [_finish(w) for w in survivors]
    _check(url, events, victim.pid, results, (0, 1))
    # Optuna's symlink lock would stall every write for its 30 s grace: the study's
    # trial starts and ends show no pause near that long (load-proof, unlike wall time).
    trials = optuna.load_study(study_name="faults", storage=open_storage(url)).get_trials()
    moments = sorted(
        d.timestamp() for t in trials for d in (t.datetime_start, t.datetime_complete) if d
    )
    assert max(b - a for a, b in zip(moments, moments[1:], strict=False)) < 20


def test_fault_spec() -> None:
    assert _faults._parse(None) is None and _faults._parse("") is None
    assert _faults._parse("evaluate") == ("evaluate", 1)
    assert _faults._parse("tell:metrics@3") == ("tell:metrics", 3)


def _racing_preparers(url: str, n: int) -> list[bool]:
    """n threads, each with its own storage and StudyState, claim at the same moment."""
    barrier = threading.Barrier(n)
    won: list[bool] = []

    def one() -> None:
        study = optuna.load_study(study_name="prep", storage=open_storage(url))
        state = StudyState(study, "fp", heartbeat_interval=1)
        barrier.wait()
        prepares = state.wait_until_ready()
        won.append(prepares)
        if prepares:
            with state.preparing():  # beats its claim, then marks the study ready
                time.sleep(0.5)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return won


def test_one_preparer_among_workers_starting_together(storage_url: str) -> None:
    optuna.create_study(storage=open_storage(storage_url), study_name="prep")
    assert sorted(_racing_preparers(storage_url, 4)) == [False, False, False, True]


def test_a_stale_preparer_claim_is_taken_over_by_one(tmp_path: Path) -> None:
    url = f"journal://{tmp_path / 'study.log'}"
    study = optuna.create_study(storage=open_storage(url), study_name="prep")
    old = time.time() - 10  # a claim silent for 10 s > 3 beats of 1 s: its worker died
    study.set_user_attr("autoquant:preparer:dead", {"since": old, "beat": old, "worker": "x:1"})
    assert sorted(_racing_preparers(url, 3)) == [False, False, True]
