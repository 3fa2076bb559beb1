"""Study storage: URLs, secrets, and a stopped study resuming without re-running trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest
import torch
from tuning._helpers import fast_config, train_cancer

import autoquant as aq
from autoquant.storage import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    FlockLock,
    mask_url,
    open_storage,
)


def test_mask_url_hides_passwords_only() -> None:
    assert (
        mask_url("postgresql://aq:s3cr3t@db.example:5432/studies")
        == "postgresql://aq:***@db.example:5432/studies"
    )
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_url(None) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("journal://relative.log", "absolute path"),
        ("grpc://host", "grpc://host:port"),
        ("redis://localhost", "storage URL must be"),
    ],
)
def test_bad_storage_urls_fail_fast(url: str, message: str) -> None:
    with pytest.raises(aq.ConfigError, match=message):
        open_storage(url)


@pytest.mark.parametrize(
    "url", ["postgresql://aq@127.0.0.1:1/none", "postgresql://aq:in-the-url@127.0.0.1:1/none"]
)
def test_unreachable_database_is_a_clear_error_within_seconds(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    pytest.importorskip("psycopg2", reason="PostgreSQL driver not installed")
    monkeypatch.setenv(PASSWORD_ENV, "not-in-the-message")
    t0 = time.monotonic()
    with pytest.raises(aq.ConfigError) as exc:
        open_storage(url)  # port 1: nothing listens there
    assert time.monotonic() - t0 < 15
    message = str(exc.value)
    assert mask_url(url) in message
    assert "not-in-the-message" not in message and "in-the-url" not in message


# --- A real PostgreSQL server (the postgres_url fixture: skips unless AUTOQUANT_TEST_POSTGRES)


def _with(url: str, *, password: str | None = None, database: str | None = None) -> str:
    """``url`` with another password (empty string: none) and/or database name."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{password}@{host}" if password else f"{user}@{host}"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


def test_postgres_storage_round_trips_a_trial(postgres_url: str) -> None:
    storage = open_storage(postgres_url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    study = optuna.create_study(storage=storage, study_name="round-trip", direction="maximize")
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("plan_hash", "abc123")
    study.tell(trial, 2 * x)

    # Another "worker": its own connection, nothing shared with the first.
    again = optuna.load_study(study_name="round-trip", storage=open_storage(postgres_url))
    (loaded,) = again.trials
    assert loaded.state == optuna.trial.TrialState.COMPLETE
    assert loaded.params == {"x": x} and loaded.value == pytest.approx(2 * x)
    assert loaded.user_attrs == {"plan_hash": "abc123"}
    assert again.direction == optuna.study.StudyDirection.MAXIMIZE


# Run by each worker process: import everything, say "ready", wait for "go" (so that all
# start at once), then open the storage and create-or-load the study.
_WORKER = """
import json, sys
import optuna
from autoquant.storage import open_storage
print("ready", flush=True)
sys.stdin.readline()
storage = open_storage(sys.argv[1])
study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
print(json.dumps({"study_id": storage.get_study_id_from_name("s")}), flush=True)
"""


def test_workers_opening_a_fresh_postgres_database_at_once(postgres_url: str) -> None:
    # Each would create Optuna's tables; without open_storage's retry, all but one fail on
    # "duplicate key ... pg_type" / "already exists" (reproduced on every run).
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, postgres_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        for w in workers:  # go
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (_, err) in zip(workers, results, strict=True):
        assert w.returncode == 0, err[-3000:]
    ids = {json.loads(out)["study_id"] for out, _ in results}
    assert len(ids) == 1  # one study, loaded by the other two
    summaries = optuna.get_all_study_summaries(open_storage(postgres_url))
    assert [s.study_name for s in summaries] == ["s"]


def test_wrong_postgres_password_is_a_quick_error_without_the_password(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)
    url = _with(postgres_url, password="Wr0ng-Passw0rd")
    t0 = time.monotonic()
    with pytest.raises(aq.ConfigError, match="password authentication failed") as exc:
        open_storage(url)
    assert time.monotonic() - t0 < 5
    assert mask_url(url) in str(exc.value)
    assert "Wr0ng-Passw0rd" not in str(exc.value)
    # The same with the wrong password coming from the environment.
    monkeypatch.setenv(PASSWORD_ENV, "Env-Wr0ng")
    with pytest.raises(aq.ConfigError, match="password authentication failed") as exc:
        open_storage(_with(postgres_url, password=""))
    assert "Env-Wr0ng" not in str(exc.value)


def test_missing_postgres_database_is_a_clear_error(postgres_url: str) -> None:
    url = _with(postgres_url, database="aq_no_such_database")
    with pytest.raises(aq.ConfigError, match='database "aq_no_such_database" does not exist'):
        open_storage(url)


@pytest.mark.parametrize("source", [PASSWORD_ENV, PASSWORD_FILE_ENV])
def test_postgres_password_from_the_environment(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    password = urlsplit(postgres_url).password
    assert password, "AUTOQUANT_TEST_POSTGRES must carry the role's password"
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)
    if source == PASSWORD_ENV:
        monkeypatch.setenv(PASSWORD_ENV, password)
    else:
        (tmp_path / "pw").write_text(password + "\n")
        monkeypatch.setenv(PASSWORD_FILE_ENV, str(tmp_path / "pw"))
    url = _with(postgres_url, password="")
    assert urlsplit(url).password is None
    study = optuna.create_study(storage=open_storage(url), study_name="from-env")
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    assert len(optuna.load_study(study_name="from-env", storage=open_storage(url)).trials) == 2


def test_storage_requires_a_study_name() -> None:
    with pytest.raises(aq.ConfigError, match="study_name"):
        aq.TuningConfig(storage="sqlite:///x.db")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_stopped_study_resumes_without_rerunning_finished_trials(tmp_path: Path, kind: str) -> None:
    cancer = train_cancer()
    url = (
        f"journal://{tmp_path / 'study.log'}"
        if kind == "journal"
        else f"sqlite:///{tmp_path / 'study.db'}"
    )
    calls: list[str] = []

    def eval_fn(model: torch.nn.Module) -> float:
        calls.append("eval")
        return cancer.accuracy(model)

    config = fast_config(strategy="basic", storage=url, study_name="resume-me", max_trials=3)
    first = aq.tune(cancer.model, eval_fn, calib_data=cancer.calib, config=config)
    assert first.stopped_because == "max_trials" and first.n_evaluations == 3
    first_hashes = [t.plan_hash for t in first.trials if t.evaluated]
    calls.clear()
    # "Restart" with a larger budget: the 3 finished plans are known, 3 new ones run.
    second = aq.tune(
        cancer.model, eval_fn, calib_data=cancer.calib, config=config.replace(max_trials=6)
    )
    evaluated_now = [t for t in second.trials if t.evaluated and t.plan_hash not in first_hashes]
    # Baseline and calibration come from the study; only the new plans are evaluated.
    assert len(calls) == len(evaluated_now) and second.calibration_passes == 0
    assert second.baseline == first.baseline
    assert len(evaluated_now) == 3
    assert second.n_evaluations == 6
    hashes = [t.plan_hash for t in second.trials if t.evaluated]
    assert len(hashes) == len(set(hashes)) == 6
    assert second.study.study_name == "resume-me"
    assert second.study.user_attrs["config"]["storage"] == url


def test_journal_lock_is_freed_at_once_when_its_holder_is_killed(tmp_path: Path) -> None:
    # A process SIGKILLs itself while holding the journal's lock (fault point
    # ``storage_lock``). Optuna's default symlink lock would stay behind and block every
    # writer for 30 s; the flock dies with its holder.
    url = f"journal://{tmp_path / 'study.log'}"
    code = (
        "import optuna; from autoquant.storage import open_storage; "
        f"optuna.create_study(storage=open_storage({url!r}), study_name='killed')"
    )
    env = {**os.environ, "AUTOQUANT_FAULT": "storage_lock"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    t0 = time.monotonic()
    study = optuna.create_study(storage=open_storage(url), study_name="after")
    study.set_user_attr("written", True)
    assert time.monotonic() - t0 < 5
    assert optuna.load_study(study_name="after", storage=open_storage(url)).user_attrs


def test_journal_lock_excludes_threads_of_one_process(tmp_path: Path) -> None:
    lock = FlockLock(str(tmp_path / "study.log"))
    lock.acquire()
    got = threading.Event()

    def other() -> None:
        lock.acquire()
        got.set()
        lock.release()

    thread = threading.Thread(target=other)
    thread.start()
    assert not got.wait(0.3)  # blocked while this thread holds it
    lock.release()
    assert got.wait(10)
    thread.join()
