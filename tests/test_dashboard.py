"""A live view of a study: ``optuna-dashboard`` (the dashboard extra) served on the same
journal file autoquant's workers write, read back over its HTTP JSON API: every trial,
with autoquant's trial attributes, as the README shows them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("optuna_dashboard", reason="pip install 'autoquant[dashboard]'")

from tuning._helpers import fast_config, train_cancer  # noqa: E402

import autoquant  # noqa: E402

DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_optuna_dashboard_serves_autoquant_trials_from_the_journal(tmp_path: Path) -> None:
    task = train_cancer()
    log = tmp_path / "studies.log"
    result = autoquant.tune(
        task.model,
        task.accuracy,
        calib_data=task.calib,
        config=fast_config(
            max_trials=4,
            strategy="random",
            seed=0,
            storage=f"journal://{log}",
            study_name="cancer-live",
        ),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(DASHBOARD), str(log), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.3)
        (study,) = [s for s in studies if s["study_name"] == "cancer-live"]
        detail = _get(f"{base}/api/studies/{study['study_id']}")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    trials = detail["trials"]
    evaluated = [t for t in result.trials if t.state in ("pass", "fail", "pruned", "error")]
    assert len(trials) >= len(evaluated) and result.n_evaluations == 4
    by_number = {t["number"]: t for t in trials}
    for record in evaluated:
        shown = by_number[record.number]
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        # What a user watching the dashboard sees for each trial (README "Watching a study live").
        assert attrs["state"] == record.state
        assert attrs["plan_hash"] == record.plan.hash
        assert attrs["worker"].rsplit(":", 1)[1].isdigit()  # host:pid of the worker
        assert shown["state"] == "Complete"
        assert [float(v) for v in shown["values"]] == pytest.approx(
            [record.metrics.latency_ms], rel=1e-6
        )
    print(json.dumps(trials[0]["user_attrs"], indent=1))  # the README's example (pytest -s)
