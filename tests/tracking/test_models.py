"""The best model in the registry: logged, registered, aliased (or not), and loaded
back with ``mlflow.pyfunc`` / ``mlflow.pytorch`` / ``autoquant.load``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from tuning._helpers import fast_config

import autoquant
from autoquant.tracking import TrackingConfig, make_tracker

from ._helpers import FACTORY, STUDY
from ._helpers import client as _client
from ._helpers import runs as _runs


def test_best_model_registered_with_alias_and_loads(tracked, monkeypatch):
    import mlflow.artifacts
    import mlflow.pyfunc

    result, uri, tracker = tracked.result, tracked.uri, tracked.tracker
    client = _client(uri)
    version = client.get_model_version_by_alias(STUDY, "best")
    assert version.run_id == tracker.run_id
    assert tracker.model_uri == f"models:/{STUDY}/{version.version}"
    assert version.tags["plan_hash"] == result.best_plan.hash
    assert version.tags["goal_met"] == "true"
    # The x86 backend's static models are torch.fx GraphModules: they neither pickle nor
    # torch.export, so they are logged in autoquant's own format (see autoquant.tracking).
    assert isinstance(result.best_model, torch.fx.GraphModule)
    assert version.tags["flavor"] == tracker.model_flavor == "autoquant"

    x = tracked.task.x_test
    with torch.inference_mode():
        expected = result.best_model(x)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # The files came from the server: the factory they name (a test module here, not one
    # of autoquant's examples) is imported only when the person loading allows it.
    monkeypatch.delenv("AUTOQUANT_TRUST_FACTORY", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(autoquant.SerializationError) as err:
            mlflow.pyfunc.load_model(f"models:/{STUDY}@best")
    assert FACTORY in str(err.value)
    assert "AUTOQUANT_TRUST_FACTORY=tuning._helpers" in str(err.value)
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "other.pkg, tuning._helpers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mlflow.pyfunc.load_model(f"models:/{STUDY}@best")
    assert torch.equal(torch.as_tensor(loaded.predict(x.numpy())), expected)
    with torch.inference_mode():
        assert torch.equal(loaded.get_raw_model()(x), expected)
    # The same files with autoquant.load alone, the architecture passed by hand.
    local = mlflow.artifacts.download_artifacts(f"models:/{STUDY}@best", tracking_uri=uri)
    from tuning._helpers import CancerMLP

    model = autoquant.load(Path(local) / "data" / "autoquant_model", model=CancerMLP())
    with torch.inference_mode():
        assert torch.equal(model(x), expected)


def test_eager_model_logs_without_pickle_and_missed_goal_moves_no_alias(tracked, task, monkeypatch):
    """Dynamic int8 builds eager modules whose packed oneDNN weights do not pickle, so
    the model is logged in autoquant's format (no pickle) and loads back as a pyfunc; a
    1% goal is not met by them: the version is registered but the alias 'best' is not
    set. A trial whose evaluation raises is a FAILED nested run. A failure after tune()
    (close("FAILED")) marks the finished parent run FAILED."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    uri = tracked.uri  # another experiment in the same store
    tracker = make_tracker(
        TrackingConfig(uri=uri, experiment="dyn", registered_model="dyn-model", plots=False),
        study_name="ignored-for-names",
        run_config={},
        model_factory=FACTORY,
    )
    calls = []

    def flaky_accuracy(model):
        calls.append(1)
        if len(calls) == 2:  # the first trial (call 1 is the float baseline)
            raise RuntimeError("evaluation crashed")
        return task.accuracy(model)

    with pytest.warns(autoquant.GoalNotMetWarning):
        result = autoquant.tune(
            task.model,
            flaky_accuracy,
            calib_data=task.calib,
            config=fast_config(max_trials=3, approaches=("dynamic",)),
            callbacks=[tracker],
        )
    tracker.close("FAILED")
    client = _client(uri)
    exp = client.get_experiment_by_name("dyn")
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    assert result.trials[0].state == "error"
    _, nested = _runs(client, exp.experiment_id)
    assert len(nested) == len(result.trials)
    crashed = next(r for r in nested if r.data.tags["trial"] == "0")
    assert crashed.info.status == "FAILED" and crashed.data.tags["state"] == "error"
    assert "evaluation crashed" in crashed.data.tags["error"]
    assert set(crashed.data.metrics) == {"trial_time_s"}  # no scores, only its wall time
    assert tracker.model_flavor == "autoquant"
    version = client.get_model_version("dyn-model", tracker.model_version)
    assert version.tags["goal_met"] == "false"
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("dyn-model", "best")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "tuning._helpers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mlflow.pyfunc.load_model(f"models:/dyn-model/{version.version}")
    x = task.x_test
    with torch.inference_mode():
        expected = result.best_model(x)
    assert torch.equal(torch.as_tensor(loaded.predict(x.numpy())), expected)
