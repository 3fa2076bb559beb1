"""Many worker processes on one study, on the journal file and on a real PostgreSQL.

Every worker is a real OS process (``_worker.py``: the breast-cancer MLP, real int8
builds) sharing nothing but the storage. Workers killed at each point of the protocol: ``test_faults.py``. PostgreSQL cases use the ``postgres_url``
fixture (a fresh database per test; skipped unless AUTOQUANT_TEST_POSTGRES is set,
which ``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import autoquant as aq
from autoquant.storage import open_storage

from ._helpers import fast_config, train_cancer

WORKER = Path(__file__).with_name("_worker.py")
EVALUATED = ("pass", "fail", "pruned", "error")


@pytest.fixture(params=["journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal://{tmp_path / 'study.log'}"
    return request.getfixturevalue("postgres_url")


def _start(url: str, study: str, seed: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, study, "--seed", str(seed), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials()


def _evaluated(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.user_attrs.get("state") in EVALUATED]


def test_three_workers_share_one_budget_without_duplicate_plans(storage_url: str) -> None:
    workers = [
        _start(storage_url, "shared", seed, "--max-trials", "9", "--sleep", "0.5")
        for seed in (1, 2, 3)
    ]
    results = [_finish(w) for w in workers]

    trials = _trials(storage_url, "shared")
    evaluated = _evaluated(trials)
    assert len(evaluated) == 9  # max_trials counts the study, not each worker
    hashes = [t.user_attrs["plan_hash"] for t in evaluated]
    assert len(set(hashes)) == 9  # no plan evaluated twice across workers
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # Warm start (the default plan) evaluated once in total; other copies are cached.
    default_runs = Counter(hashes)[trials[0].user_attrs["plan_hash"]]
    assert default_runs == 1
    # The work was shared, calibration ran once for the whole study.
    by_worker = Counter(t.user_attrs["worker"] for t in evaluated)
    assert len(by_worker) == 3, by_worker
    assert sum(r["calibration_passes"] for r in results) == 1
    assert {r["stopped_because"] for r in results} == {"max_trials"}
    assert {r["n_evaluations"] for r in results} == {9}  # each sees the whole study
    assert len({r["best_trial"] for r in results}) == 1


def test_restarted_study_does_not_rerun_finished_trials(storage_url: str) -> None:
    first = _finish(_start(storage_url, "restart", 1, "--max-trials", "3"))
    before = {t.user_attrs["plan_hash"] for t in _evaluated(_trials(storage_url, "restart"))}
    assert first["n_evaluations"] == 3 and len(before) == 3

    # Two workers resume it with a larger budget: only 3 new plans are evaluated.
    resumed = [_start(storage_url, "restart", s, "--max-trials", "6") for s in (2, 3)]
    results = [_finish(w) for w in resumed]
    evaluated = _evaluated(_trials(storage_url, "restart"))
    assert len(evaluated) == 6 and len({t.user_attrs["plan_hash"] for t in evaluated}) == 6
    assert before <= {t.user_attrs["plan_hash"] for t in evaluated}
    assert sum(r["calibration_passes"] for r in results) == 0  # shared from the first run


def test_a_study_refuses_another_model(tmp_path: Path) -> None:
    cancer = train_cancer()
    url = f"journal://{tmp_path / 'study.log'}"
    config = fast_config(strategy="random", max_trials=1, storage=url, study_name="mine")
    aq.tune(cancer.model, cancer.accuracy, calib_data=cancer.calib, config=config)
    other = train_cancer()
    other.model.fc2.weight.data.mul_(1.01)
    with pytest.raises(aq.ConfigError, match="different model"):
        aq.tune(other.model, other.accuracy, calib_data=other.calib, config=config)
    with pytest.raises(aq.ConfigError, match="objective"):
        aq.tune(
            cancer.model,
            cancer.accuracy,
            calib_data=cancer.calib,
            config=config.replace(objective="latency+size"),
        )


def test_workers_through_the_grpc_proxy(tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="the grpc extra is not installed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parents[2] / "scripts" / "grpc_proxy.py"),
            f"journal://{tmp_path / 'behind-proxy.log'}",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"grpc://127.0.0.1:{port}"
        workers = [_start(url, "proxied", s, "--max-trials", "4", "--sleep", "0.3") for s in (1, 2)]
        results = [_finish(w) for w in workers]
        evaluated = _evaluated(_trials(url, "proxied"))
        assert len(evaluated) == 4 and len({t.user_attrs["plan_hash"] for t in evaluated}) == 4
        assert sum(r["calibration_passes"] for r in results) == 1
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def test_workers_running_a_deterministic_strategy_wait_for_each_step(tmp_path: Path) -> None:
    # basic is sequential (each step needs the last): two workers follow the same steps,
    # one evaluates each plan and the other takes its result, and both end at the same
    # plan, which keeps the fixture's quantization-hostile fc1 in fp32 (speed refinement
    # may keep a tiny layer in fp32 too: that part depends on measured latency).
    url = f"journal://{tmp_path / 'study.log'}"
    extra = ("--strategy", "basic", "--max-trials", "12", "--tolerable-loss", "0.01")
    results = [_finish(w) for w in [_start(url, "basic", s, *extra) for s in (1, 2)]]
    evaluated = _evaluated(_trials(url, "basic"))
    hashes = [t.user_attrs["plan_hash"] for t in evaluated]
    assert len(hashes) == len(set(hashes))
    assert "fc1" in results[0]["fp32_ops"] and results[0]["fp32_ops"] == results[1]["fp32_ops"]
    assert results[0]["best_trial"] == results[1]["best_trial"]
    assert sum(r["calibration_passes"] for r in results) == 1
