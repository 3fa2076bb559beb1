"""A real ``mlflow server``: the sqlite run as the UI shows it, and a study tracked over
HTTP with artifacts proxied by the server."""

from __future__ import annotations

import json
import urllib.request
import warnings

import pytest
import torch
from _mlflow_server import running_mlflow_server

import autoquant
from autoquant.plan import Plan
from autoquant.tracking import TrackingConfig, make_tracker

from ._helpers import FACTORY
from ._helpers import client as _client
from ._helpers import read_artifact as _read_artifact
from ._helpers import runs as _runs
from ._helpers import tracked_config as _config


@pytest.fixture
def mlflow_server(tracked, tmp_path):
    """``mlflow server`` on the sqlite store the tracked run wrote (as ``mlflow ui`` would
    open it), serving new artifacts from ``tmp_path``; stopped at teardown."""
    with running_mlflow_server(tracked.uri, tmp_path) as url:
        yield url


def _get_json(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_http_tracking_server(mlflow_server, tracked, task, monkeypatch):
    import mlflow.pyfunc

    url = mlflow_server
    # What the UI shows of the sqlite run: its runs and, through the server, its artifacts.
    client = _client(url)
    parents, nested = _runs(client, tracked.tracker.experiment_id)
    assert [p.info.run_id for p in parents] == [tracked.tracker.run_id]
    assert len(nested) == len(tracked.result.trials)
    run_id = tracked.tracker.run_id
    listing = _get_json(f"{url}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}&path=plots")
    assert {f["path"] for f in listing["files"]} >= {"plots/accuracy_vs_latency.png"}
    with urllib.request.urlopen(
        f"{url}/get-artifact?path=plots/accuracy_vs_latency.png&run_uuid={run_id}", timeout=10
    ) as resp:
        assert resp.read(8) == b"\x89PNG\r\n\x1a\n"

    # A new study tracked over HTTP (artifacts proxied by the server).
    tracker = make_tracker(
        TrackingConfig(uri=url),
        study_name="cancer-http",
        run_config={"a": {"b": 1}},
        model_factory=FACTORY,
    )
    result = autoquant.tune(
        task.model, task.accuracy, calib_data=task.calib, config=_config(), callbacks=[tracker]
    )
    tracker.close()
    assert tracker.tracking_uri == url
    exp = client.get_experiment_by_name("cancer-http")
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    parents, nested = _runs(client, exp.experiment_id)
    assert [p.info.run_id for p in parents] == [tracker.run_id]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.params["a.b"] == "1"
    assert len(nested) == len(result.trials)
    some = nested[0]
    plan = Plan.from_yaml(_read_artifact(url, some.info.run_id, "plan.yaml").decode())
    assert plan.hash == some.data.params["plan_hash"]
    plots = {a.path for a in client.list_artifacts(tracker.run_id, "plots")}
    assert {"plots/accuracy_vs_latency.png", "plots/optimization_history.png"} <= plots
    version = client.get_model_version_by_alias("cancer-http", "best")
    assert version.run_id == tracker.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", FACTORY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mlflow.pyfunc.load_model("models:/cancer-http@best")
    x = task.x_test
    with torch.inference_mode():
        assert torch.equal(torch.as_tensor(loaded.predict(x.numpy())), result.best_model(x))
