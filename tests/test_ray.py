"""Workers on Ray: ``hydra/launcher=ray_cluster`` on a real local Ray cluster (a head node
and a worker node, started with the commands the README gives, on 127.0.0.1), three jobs
of a sweep as three workers of one study on PostgreSQL. The guarantees the
``launch.workers`` tests check hold here too: one shared budget, no plan evaluated twice,
one MLflow parent run, and a worker killed mid-trial loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'autoquant[ray]')")
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher not installed")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from autoquant.storage import open_storage  # noqa: E402
from autoquant.tuning._coordination import is_complete, is_dead_evaluation  # noqa: E402

BIN = Path(sys.executable).parent
EVALUATED = ("pass", "fail", "pruned", "error")
MAX_TRIALS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(marker: str) -> list[int]:
    """Pids of processes whose command line names ``marker`` (this test's Ray temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
    return pids


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as one below
        )
    deadline = time.monotonic() + 120
    while b"Ray runtime started" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return proc


@contextlib.contextmanager
def local_ray_cluster(env: dict[str, str]) -> Iterator[str]:
    """A head node (1 CPU) and a worker node (2 CPUs) on 127.0.0.1; stopped afterwards,
    every process it started killed. Yields the head's address."""
    # Short: Ray puts unix sockets under it (108-byte limit).
    tmp = Path(tempfile.mkdtemp(prefix="aqray", dir="/tmp"))
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    common = ["--disable-usage-stats", f"--temp-dir={tmp}", "--node-ip-address=127.0.0.1"]
    try:
        procs.append(
            _start(
                ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", *common],
                tmp / "head.out",
                env,
            )
        )
        procs.append(
            _start([f"--address=127.0.0.1:{port}", "--num-cpus=2", *common], tmp / "node.out", env)
        )
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _ours(str(tmp)):  # Ray processes that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _is_ray_worker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        # Ray renames its worker processes after the task they run (ray::_run_job).
        return "ray::" in cmd or "default_worker.py" in cmd
    return False


def test_ray_workers_share_one_study_and_survive_a_killed_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore")
    sweep = tmp_path / "sweep"
    db = tmp_path / "mlflow.db"
    with local_ray_cluster(env) as address:
        args = [
            "-m",
            "hydra/launcher=ray_cluster",
            f"hydra.launcher.ray.init.address={address}",
            "study.worker=0,1,2",  # three jobs: three workers of one study
            f"storage.url={postgres_url}",
            "storage.heartbeat_interval=1",
            "strategy=random",
            f"tuning.max_trials={MAX_TRIALS}",
            "model=digits",
            "tuning.latency.repeats=300",  # ~1 s per trial (digits): time to catch one mid-way
            "output.progress=log",
            "output.save_model=false",
            f"tracking.uri=sqlite:///{db}",
            f"hydra.sweep.dir={sweep}",
        ]
        job = subprocess.Popen(
            [str(BIN / "autoquant"), *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            storage = open_storage(postgres_url)
            victim = None
            deadline = time.monotonic() + 180
            while victim is None:
                assert job.poll() is None, job.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "no trial was ever running"
                time.sleep(0.3)
                names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
                if not names:
                    continue
                for t in optuna.load_study(study_name=names[0], storage=storage).trials:
                    pid = int(t.user_attrs.get("worker", "x:0").rsplit(":", 1)[1])
                    if (
                        t.state == TrialState.RUNNING
                        and t.user_attrs.get("state") == "evaluating"
                        and _is_ray_worker(pid)
                    ):
                        victim = pid
                        break
            os.kill(victim, signal.SIGKILL)  # a Ray worker process, mid-trial
            out, _ = job.communicate(timeout=300)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    assert job.returncode == 0, out[-4000:]

    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert sorted(s["worker"] for s in summaries) == [0, 1, 2]  # Ray ran the killed job again
    assert {s["n_evaluations"] for s in summaries} == {MAX_TRIALS}  # one budget for the study
    assert len({s["mlflow_run_id"] for s in summaries}) == 1
    assert len({s["best_trial"] for s in summaries}) == 1

    trials = optuna.load_study(study_name=summaries[0]["study"], storage=storage).get_trials()
    counted = [
        t for t in trials if t.user_attrs.get("state") in EVALUATED and is_complete(t.user_attrs)
    ]
    plans = [t.user_attrs["plan_hash"] for t in counted]
    assert len(counted) == MAX_TRIALS and len(set(plans)) == MAX_TRIALS  # no plan twice
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dead = [t for t in trials if is_dead_evaluation(t)]
    assert dead and all(t.user_attrs["worker"].endswith(f":{victim}") for t in dead)
    for t in dead:  # the killed plan was run again by another worker, and counted once
        assert plans.count(t.user_attrs["plan_hash"]) == 1

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], max_results=1000)
    ]
    parents = [r for r in runs if r.data.tags.get("autoquant.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id == summaries[0]["mlflow_run_id"]
    numbers = [
        int(r.data.tags["trial"]) for r in runs if r.data.tags.get("autoquant.role") == "trial"
    ]
    assert len(numbers) == len(set(numbers))
