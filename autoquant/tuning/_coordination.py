"""Many workers, one study: who evaluates which plan, the shared budget, dead workers.

Every worker runs the same loop on the same Optuna study; the storage is the only thing
they share (no scheduler). The protocol, all through trial user attributes:

* After ``ask``, a worker *claims* its trial: ``plan_hash`` and ``state="claimed"``.
* It then decides, in trial-number order (it waits until every lower-numbered running
  trial has decided, so two workers never decide on stale views of each other): the
  plan was already evaluated → ``cached``; a lower-numbered trial (running or enqueued)
  or any evaluating trial holds the same plan → ``waiting`` for that result; the
  study's evaluations plus the other trials in flight already reach ``max_trials`` →
  ``surplus`` (told failed, costs nothing); otherwise ``evaluating``.
* While a worker holds a trial it beats: Optuna's own heartbeat on RDB storages (server
  clock), a ``heartbeat`` user attribute elsewhere (journal file: one machine, one
  clock). Before each ask and while waiting, workers mark trials silent for three
  intervals as failed, and enqueue the plan of a dead evaluation again (``retry_of``),
  unless someone else holds it. A waiter whose evaluator died takes its place. A worker
  whose own beats are late (the storage is slow for everyone) judges no one dead.
* A trial's outcome is written with ``state`` last: a trial counts as finished only when
  its ``state`` is final *and* its ``plan`` (and for pass/fail its ``metrics``) are there.
  A worker killed part-way through telling leaves a trial that is in flight until it is
  reaped and then a dead evaluation, run again; never counted, never lost.
* The budget slot of a dead evaluation stays taken until its plan runs again: a silent
  trial counts as in flight until it is reaped, a reaped one until its retry is
  enqueued, and an enqueued retry until it is asked (workers ask for retries first).

Single-process studies (in memory) run the same code without heartbeats or waits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from autoquant.plan import Plan
from autoquant.tuning.result import Metrics, TrialRecord

__all__ = [
    "Coordinator",
    "Decision",
    "FINAL_STATES",
    "EVALUATED_STATES",
    "beating",
    "beats_late",
    "finished_by_this_worker",
    "is_complete",
]

log = logging.getLogger("autoquant.tuning")

EVALUATED_STATES = ("pass", "fail", "pruned", "error")
FINAL_STATES = (*EVALUATED_STATES, "cached", "skipped", "surplus")
# Count against the budget while running: deciding, evaluating, or evaluated and being
# told (the final state is written a few storage calls before the trial finishes).
_IN_FLIGHT = ("claimed", "evaluating", *EVALUATED_STATES)
_HOLDING = ("evaluating", *EVALUATED_STATES)  # the plan's result is on its way
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # recorded on each trial it claims
GRACE_BEATS = 3  # a trial silent this many heartbeat intervals is dead


@dataclass
class Decision:
    """What a claimed trial does: ``evaluate``, ``cached`` (from ``previous``),
    ``skipped`` (the all-float plan) or ``surplus`` (the budget is used up)."""

    action: str
    previous: TrialRecord | None = None
    reason: str | None = None


@dataclass
class _View:
    """One read of the study."""

    running: list[Any] = field(default_factory=list)
    waiting: list[Any] = field(default_factory=list)
    dead: list[Any] = field(default_factory=list)  # failed evaluations, results lost
    retried: set[int] = field(default_factory=set)  # trial numbers with a retry enqueued


def is_complete(attrs: dict[str, Any]) -> bool:
    """Whether a trial's outcome was fully written (``state`` is written last; the other
    checks also catch trials torn by older versions, which wrote ``state`` first)."""
    state = attrs.get("state")
    if state not in FINAL_STATES or "plan" not in attrs:
        return False
    return state not in ("pass", "fail") or "metrics" in attrs


def is_dead_evaluation(t: Any) -> bool:
    """A failed trial whose plan was (being) evaluated but whose result was not written:
    its worker died mid-evaluation or mid-tell. Its plan must run again."""
    if t.state != TrialState.FAIL:
        return False
    attrs = t.user_attrs
    return attrs.get("state") in ("evaluating", *EVALUATED_STATES) and not is_complete(attrs)


def record_from_trial(t: Any, meets: Callable[[float], bool]) -> TrialRecord | None:
    """The TrialRecord of a finished autoquant trial (None for anything else)."""
    attrs = t.user_attrs
    if not is_complete(attrs):
        return None  # not written by autoquant, or its worker died before telling it
    m = attrs.get("metrics")
    metrics = None if m is None else Metrics.from_dict(m)
    return TrialRecord(
        number=t.number,
        params=dict(t.params),
        plan=Plan.from_dict(attrs["plan"]),
        state=attrs["state"],
        metrics=metrics,
        error=attrs.get("error"),
        cached_from=attrs.get("cached_from"),
        timings=dict(attrs.get("timings", {})),
        passed=metrics is not None and meets(metrics.accuracy),
    )


class Coordinator:
    """The study as every worker sees it, and this worker's side of the protocol."""

    def __init__(
        self,
        study: optuna.Study,
        *,
        shared: bool,
        max_trials: int,
        heartbeat_interval: float,
        meets: Callable[[float], bool],
        plan_of: Callable[[dict[str, Any]], Plan],
        poll_s: float = 0.2,
    ) -> None:
        self.study, self.shared, self.max_trials = study, shared, max_trials
        self.interval = float(heartbeat_interval)
        self.grace = GRACE_BEATS * self.interval
        self.meets, self.plan_of, self.poll_s = meets, plan_of, poll_s
        self.storage = study._storage  # noqa: SLF001 - Optuna exposes no public accessor
        self.native_heartbeat = shared and is_heartbeat_enabled(self.storage)
        self.records: dict[int, TrialRecord] = {}  # finished autoquant trials, any worker
        self.by_plan: dict[str, TrialRecord] = {}  # plan hash → its evaluation
        self._waiting_seen: dict[int, float] = {}  # enqueued trial → when first seen
        self._retried: set[int] = set()
        self._last_reap = -float("inf")

    # -- reading the study -------------------------------------------------------------
    def refresh(self) -> _View:
        view = _View()
        for t in self.study.get_trials(deepcopy=False):
            retry_of = t.user_attrs.get("retry_of")
            if retry_of is not None:
                view.retried.add(int(retry_of))
            if t.state == TrialState.RUNNING:
                view.running.append(t)
                if t.number not in self.records and is_complete(t.user_attrs):
                    # Its outcome is all written, only Optuna's tell is missing (or its
                    # worker died right there): it is this plan's evaluation, so no one
                    # takes the plan over from it.
                    record = record_from_trial(t, self.meets)
                    if record is not None:
                        self.add(record)
            elif t.state == TrialState.WAITING:
                view.waiting.append(t)
                self._waiting_seen.setdefault(t.number, time.monotonic())
            elif t.state in _FINISHED and t.number not in self.records:
                record = record_from_trial(t, self.meets)
                if record is not None:
                    self.add(record)
                elif is_dead_evaluation(t):
                    view.dead.append(t)
        return view

    def add(self, record: TrialRecord) -> None:
        self.records[record.number] = record
        if record.evaluated and record.plan_hash not in self.by_plan:
            self.by_plan[record.plan_hash] = record

    @property
    def evaluations(self) -> int:
        return len(self.by_plan)

    def in_flight(
        self, view: _View, exclude: int | None = None, plan_hash: str | None = None
    ) -> int:
        """Budget slots taken by evaluations not in yet: distinct plans (not evaluated
        yet, other than ``plan_hash``) of running trials (silent ones too: a dead
        worker's slot is kept until its plan runs again), of dead evaluations not
        retried yet, and of enqueued retries."""
        return len(self._plans_in_flight(view, exclude) - {plan_hash} - self.by_plan.keys())

    def _plans_in_flight(self, view: _View, exclude: int | None = None) -> set[Any]:
        plans: set[Any] = set()
        for t in view.running:
            if t.number == exclude:
                continue
            state = t.user_attrs.get("state")
            if state in _IN_FLIGHT:
                plans.add(t.user_attrs.get("plan_hash", ("trial", t.number)))
            elif state is None and t.user_attrs.get("retry_of") is not None:
                plans.add(self._hash_of(dict(t.params)))  # a retry, asked, not claimed yet
        for t in view.waiting:
            if t.user_attrs.get("retry_of") is not None:
                plans.add(self._hash_of(t.system_attrs.get("fixed_params") or {}))
        for t in view.dead:
            if t.number not in view.retried:
                plans.add(t.user_attrs.get("plan_hash", ("trial", t.number)))
        return plans

    def retry_waiting(self, view: _View) -> bool:
        """Whether a trial waits that must be asked for: a dead evaluation's retry, or
        a proposal enqueued by a worker that died before asking for it (waiting longer
        than the grace; it is told ``surplus``), so that none is left WAITING."""
        now = time.monotonic()
        return any(
            t.user_attrs.get("retry_of") is not None
            or now - self._waiting_seen.get(t.number, now) > self.grace
            for t in view.waiting
        )

    def being_evaluated(self, plan_hash: str) -> bool:
        """Whether another worker holds ``plan_hash`` right now (result not in yet)."""
        if not self.shared:
            return False
        view = self.refresh()
        if plan_hash in self.by_plan:
            return False
        return any(
            t.user_attrs.get("plan_hash") == plan_hash
            and t.user_attrs.get("state") in ("claimed", *_HOLDING)
            for t in view.running
            if not self._stale(t)
        )

    # -- the budget --------------------------------------------------------------------
    def budget(self) -> str:
        """``retry`` (a dead evaluation's plan is enqueued, or an abandoned proposal:
        ask for it), ``done`` (the study has max_trials evaluations), ``full`` (the rest
        are in flight on other workers: wait, one may die), or ``open``."""
        if not self.shared:
            self.refresh()
            return "done" if self.evaluations >= self.max_trials else "open"
        self.reap(force=False)
        view = self.refresh()
        if self.retry_waiting(view):
            return "retry"
        if self.evaluations >= self.max_trials:
            if any(is_complete(t.user_attrs) for t in view.running):
                return "full"  # told in a moment, or its dead worker's trial is reaped
            return "done"
        if self.evaluations + self.in_flight(view) >= self.max_trials:
            return "full"
        return "open"

    def pause(self) -> None:
        time.sleep(self.poll_s)

    # -- claiming a trial ----------------------------------------------------------------
    def decide(self, trial: optuna.Trial, plan: Plan, deadline: float | None = None) -> Decision:
        """Claim ``trial`` (holding ``plan``) and decide what it does.

        ``deadline`` (``time.monotonic()``): stop waiting for other workers then.
        """
        if self.shared:
            trial.set_user_attr("worker", WORKER)
        if not plan.quantized:
            return Decision("skipped")
        if not self.shared:
            self.refresh()
            previous = self.by_plan.get(plan.hash)
            return Decision("evaluate") if previous is None else Decision("cached", previous)
        trial.set_user_attr("plan_hash", plan.hash)
        trial.set_user_attr("state", "claimed")
        announced = "claimed"
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return Decision("surplus", reason="timeout while waiting for other workers")
            view = self.refresh()
            previous = self.by_plan.get(plan.hash)
            if previous is not None:
                return Decision("cached", previous)
            me = trial.number
            if any(
                t.number < me and t.user_attrs.get("state") in (None, "claimed")
                for t in view.running
                if not self._stale(t)
            ):
                self.reap(force=False)
                self.pause()  # a lower-numbered trial is deciding: let it go first
                continue
            if self._held_elsewhere(view, me, plan.hash):
                if announced != "waiting":
                    trial.set_user_attr("state", "waiting")
                    announced = "waiting"
                    log.info("trial %d waits for another worker's evaluation of its plan", me)
                self.reap(force=False)
                self.pause()
                continue
            if announced == "waiting":
                # Its evaluator died: decide again, visibly, before taking its place.
                trial.set_user_attr("state", "claimed")
                announced = "claimed"
                continue
            if self.evaluations + self.in_flight(view, me, plan.hash) >= self.max_trials:
                return Decision("surplus", reason="max_trials reached (the rest is in flight)")
            trial.set_user_attr("state", "evaluating")
            return Decision("evaluate")

    def _held_elsewhere(self, view: _View, me: int, plan_hash: str) -> bool:
        for t in view.running:
            if t.number == me or self._stale(t) or t.user_attrs.get("plan_hash") != plan_hash:
                continue
            if t.number < me or t.user_attrs.get("state") in _HOLDING:
                return True
        now = time.monotonic()
        for t in view.waiting:
            if t.number > me:
                continue
            first = self._waiting_seen.setdefault(t.number, now)
            if now - first > self.grace:
                continue  # enqueued by a worker that died before asking for it
            fixed = t.system_attrs.get("fixed_params")
            if fixed is not None and self._hash_of(fixed) == plan_hash:
                return True
        return False

    def _hash_of(self, params: dict[str, Any]) -> str | None:
        try:
            return self.plan_of(params).hash
        except Exception:  # noqa: BLE001 - someone else's enqueued params: not our plan
            return None

    # -- dead workers ------------------------------------------------------------------
    def _last_sign_of_life(self, t: Any) -> float:
        beat = t.user_attrs.get("heartbeat")
        start = t.datetime_start.timestamp() if t.datetime_start is not None else 0.0
        return max(float(beat) if beat is not None else 0.0, start)

    def _stale(self, t: Any) -> bool:
        if not self.shared:
            return False
        if self.native_heartbeat and "state" in t.user_attrs:
            return False  # it beats in Optuna's heartbeat table: fail_stale_trials judges it
        return time.time() - self._last_sign_of_life(t) > self.grace

    def reap(self, *, force: bool = True) -> None:
        """Fail the trials of dead workers; enqueue their plans again.

        ``force=False`` (inside wait loops) reaps at most twice per heartbeat interval.
        """
        if not self.shared:
            return
        now = time.monotonic()
        if not force and now - self._last_reap < self.interval / 2:
            return
        self._last_reap = now
        if beats_late():
            # This worker's own beats are late: the storage (or this machine) is slow,
            # so the others' beats may be late too. Judging them now would reap the live.
            log.info("own heartbeats are late; not judging other workers this time")
            return
        if self.native_heartbeat:
            optuna.storages.fail_stale_trials(self.study)
        # Journal trials, and on RDB trials that died before their first beat.
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not self._stale(t):
                continue
            silent = time.time() - self._last_sign_of_life(t)
            try:
                self.storage.set_trial_user_attr(
                    t._trial_id,  # noqa: SLF001
                    "error",
                    f"worker lost: no heartbeat for {silent:.0f} s",
                )
                self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
                log.warning("trial %d: worker lost (silent %.0f s), failed", t.number, silent)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # its worker finished it meanwhile, or another worker reaped it
        self._retry_dead()

    def _retry_dead(self) -> None:
        view = self.refresh()
        held = {t.user_attrs.get("plan_hash") for t in view.running}
        held |= {self._hash_of(t.system_attrs.get("fixed_params") or {}) for t in view.waiting}
        for t in view.dead:
            plan_hash = t.user_attrs.get("plan_hash")
            if (
                t.number in view.retried
                or t.number in self._retried
                or plan_hash in held
                or plan_hash in self.by_plan
            ):
                continue
            self._retried.add(t.number)
            held.add(plan_hash)
            self.study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            log.warning("trial %d died while evaluating; its plan is enqueued again", t.number)

    def heartbeat(self, trial: optuna.Trial) -> AbstractContextManager[None]:
        """Beat for ``trial`` until the block ends (shared storages only)."""
        if not self.shared:
            return nullcontext()
        trial_id = trial._trial_id  # noqa: SLF001 - needed by the storage heartbeat API

        def beat() -> None:
            if self.native_heartbeat:
                self.storage.record_heartbeat(trial_id)
            else:
                self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

        return beating(beat, self.interval, f"autoquant-heartbeat-{trial.number}")


# This process's beating threads: name -> (interval, monotonic time of the last good beat).
_BEATS: dict[str, tuple[float, float]] = {}
_BEATS_LOCK = threading.Lock()
LATE_BEATS = 1.5  # a beat this many intervals after the last good one is late


def beats_late() -> bool:
    """Whether any beating thread of this process has not beaten for 1.5 intervals."""
    now = time.monotonic()
    with _BEATS_LOCK:
        return any(now - last > LATE_BEATS * iv for iv, last in _BEATS.values())


@contextmanager
def beating(beat: Callable[[], None], interval: float, name: str) -> Iterator[None]:
    """Call ``beat`` now and every ``interval`` seconds in a thread until the block ends.

    A failed beat is logged and skipped: it only delays what others conclude (the trial
    finished meanwhile, or the storage hiccuped), it must not stop the work beating.
    Until the next good beat, :func:`beats_late` may report this thread late.
    """
    stop = threading.Event()
    key = f"{name}:{id(stop)}"

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat()
            except Exception:  # noqa: BLE001
                if stop.is_set():
                    return
                log.debug("%s: a beat failed", name, exc_info=True)
                continue
            with _BEATS_LOCK:
                if key in _BEATS:
                    _BEATS[key] = (interval, time.monotonic())

    beat()
    with _BEATS_LOCK:
        _BEATS[key] = (interval, time.monotonic())
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        with _BEATS_LOCK:
            _BEATS.pop(key, None)
        thread.join(timeout=5)


def finished_by_this_worker(study: optuna.Study) -> bool:
    """Whether this worker finished the study: nothing is running and it told the
    study's last trial. Every worker reads the same final study, so exactly one of them
    concludes it is the last."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials):
        return False
    done = [t for t in trials if t.datetime_complete is not None and "worker" in t.user_attrs]
    if not done:
        return True
    last = max(done, key=lambda t: (t.datetime_complete, t.number))
    return last.user_attrs["worker"] == WORKER
