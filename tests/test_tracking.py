"""MLflow tracking against real MLflow stores: a sqlite file and a real ``mlflow server``.

No mocks: ``autoquant.tune`` runs on the breast-cancer MLP of ``tuning._helpers`` with an
:class:`~autoquant.tracking.MlflowTracker` as callback, and everything is read back with
``MlflowClient``, ``mlflow.pyfunc`` / ``mlflow.pytorch`` and the server's HTTP API.

Creating the schema of a fresh MLflow sqlite database takes ~7 s here (alembic
migrations), so all sqlite tests share the store the ``tracked`` fixture creates, and the
server test serves that same store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from _mlflow_server import running_mlflow_server
from tuning._helpers import fast_config, train_cancer  # tests/ is on sys.path (rootdir)

import autoquant
from autoquant.errors import ConfigError
from autoquant.plan import Plan
from autoquant.tracking import TrackingConfig, make_tracker, trial_params

FACTORY = "tuning._helpers:CancerMLP"
STUDY = "cancer-study"
RUN_CONFIG = {
    "model": {"name": "cancer-mlp", "factory": {"_target_": FACTORY}},
    "tuning": {"tolerable_loss": 0.1, "search": ["approach", "scheme"]},
    "note": "x" * 900,  # longer than an MLflow param may be
    "empty": {},
}


def _config(**changes):
    """Static only, one choice per op type, random sampler: a 1% goal is missed by the
    minmax-observer plans (loss 0.123) and met by the percentile ones (0.092); the seed
    gives pass, fail, cached and skipped (all-float) trials in 7 trials."""
    base = dict(
        strategy="random",
        tie="op_type",
        seed=0,
        approaches=("static",),
        max_trials=4,
        tolerable_loss=0.1,
    )
    base.update(changes)
    return fast_config(**base)


@pytest.fixture(scope="module")
def task():
    return train_cancer()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, task):
    """One tracked tune() into a fresh sqlite store (its directory does not exist yet),
    used the way the CLI does (log_artifacts, close)."""
    root = tmp_path_factory.mktemp("tracked")
    store = root / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    cwd = root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # nothing may land in the working directory
        tracker = make_tracker(
            TrackingConfig(uri=uri), study_name=STUDY, run_config=RUN_CONFIG, model_factory=FACTORY
        )
        result = autoquant.tune(
            task.model,
            task.accuracy,
            calib_data=task.calib,
            config=_config(),
            callbacks=[tracker],
        )
        summary = root / "summary.json"
        summary.write_text(json.dumps({"met": result.met}))
        tracker.log_artifacts(str(summary))
        autoquant.save(result.best_model, root / "model", model_factory=FACTORY)
        tracker.log_artifacts(str(root / "model"), "autoquant_model")
        tracker.close("FINISHED")
        tracker.close("FINISHED")  # idempotent
    return types.SimpleNamespace(
        tracker=tracker, result=result, uri=uri, store=store, cwd=cwd, task=task
    )


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(client, experiment_id):
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, nested


def _read_artifact(uri, run_id, path) -> bytes:
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri)
    return Path(local).read_bytes()


# -- config and helpers (fast) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled", "yes"),
        ("uri", ""),
        ("uri", "mlruns"),
        ("uri", "file:///tmp/mlruns"),
        ("uri", "C:\\mlruns"),
        ("experiment", ""),
        ("log_model", 1),
        ("registered_model", 3),
        ("plots", None),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"TrackingConfig\.{field} "):
        TrackingConfig(**{field: value})


def test_config_accepts_tracking_uris():
    for uri in (
        "sqlite:///mlflow.db",
        "http://127.0.0.1:5000",
        "postgresql://u@h/db",
        "databricks",
    ):
        assert TrackingConfig(uri=uri).uri == uri
    with pytest.raises(TypeError):
        make_tracker(TrackingConfig(), study_name="s", run_config=[])
    with pytest.raises(ValueError, match="study_name"):
        make_tracker(TrackingConfig(), study_name="", run_config={})


def test_disabled_tracker_imports_no_mlflow_and_writes_nothing(tmp_path):
    """In a fresh process: a disabled tracker follows a real tune() without importing
    mlflow or creating a file; an enabled one imports mlflow only when the run starts."""
    code = textwrap.dedent(
        """
        import os, sys, warnings
        warnings.simplefilter("ignore")
        import torch, autoquant
        from autoquant.tracking import TrackingConfig, make_tracker

        tracker = make_tracker(TrackingConfig(enabled=False), study_name="s", run_config={"a": 1})
        model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
        calib = [torch.randn(4, 8) for _ in range(2)]
        config = autoquant.TuningConfig(
            max_trials=2, latency_repeats=1, latency_warmup=0, calib_samples=8
        )
        autoquant.tune(model, lambda m: 1.0, calib_data=calib, config=config, callbacks=[tracker])
        tracker.log_artifacts("summary.json")
        tracker.close("FAILED")
        assert tracker.run_id is None and tracker.tracking_uri is None, tracker
        enabled = make_tracker(TrackingConfig(uri="sqlite:///x.db"), study_name="s", run_config={})
        assert enabled.run_id is None
        enabled.close()  # never started: nothing to end
        print(sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")))
        print(sorted(os.listdir(".")))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    modules, files = out.stdout.strip().splitlines()[-2:]
    assert modules == "[]"
    assert files == "[]"
    assert list(tmp_path.iterdir()) == []


# -- the sqlite store ---------------------------------------------------------------------


def test_one_experiment_one_parent_one_nested_run_per_trial(tracked):
    result, tracker = tracked.result, tracked.tracker
    states = Counter(t.state for t in result.trials)
    # The fixture's premise: every kind of trial the tracker handles differently.
    assert {"pass", "fail", "cached", "skipped"} <= set(states), states
    client = _client(tracked.uri)
    exp = client.get_experiment_by_name(STUDY)
    assert exp is not None and exp.experiment_id == tracker.experiment_id
    # Artifacts live next to the database, not in the working directory.
    assert exp.artifact_location.startswith((tracked.store / "mlartifacts").as_uri())
    assert list(tracked.cwd.iterdir()) == []
    parents, nested = _runs(client, exp.experiment_id)
    assert [p.info.run_id for p in parents] == [tracker.run_id]
    assert len(nested) == len(result.trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in nested} == {tracker.run_id}
    assert sorted(int(r.data.tags["trial"]) for r in nested) == list(range(len(result.trials)))
    assert all(r.info.status != "RUNNING" for r in nested)

    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == STUDY
    p, m, tags = parent.data.params, parent.data.metrics, parent.data.tags
    assert p["model.name"] == "cancer-mlp"
    assert p["model.factory._target_"] == FACTORY
    assert p["tuning.search"] == '["approach", "scheme"]'
    assert p["empty"] == "{}"
    assert len(p["note"]) == 500 and p["note"].endswith("[truncated]")
    assert tags["autoquant.truncated_params"] == "note"
    assert p["tuner.strategy"] == "random" and p["tuner.tie"] == "op_type"
    assert p["space.units"] == "1"
    assert m["baseline.accuracy"] == pytest.approx(result.baseline.accuracy)
    assert m["baseline.latency_ms"] == pytest.approx(result.baseline.latency_ms)
    assert m["best.accuracy"] == pytest.approx(result.best.accuracy)
    assert m["best.latency_ms"] == pytest.approx(result.best.latency_ms)
    assert m["best.speedup"] == pytest.approx(result.speedup)
    assert m["met"] == 1.0 and m["n_trials"] == len(result.trials)
    assert m["n_evaluations"] == result.n_evaluations
    assert m["goal.target"] == pytest.approx(result.config.target(result.baseline.accuracy))
    assert m["trials.cached"] == states["cached"]
    assert m["tracking.overhead_s_per_trial"] > 0
    assert tags["best_trial"] == str(result.best_trial)
    assert tags["stopped_because"] == result.stopped_because
    assert result.summary().splitlines()[0] in tags["mlflow.note.content"]
    history = client.get_metric_history(tracker.run_id, "search.evaluations")
    assert sorted(h.step for h in history) == list(range(len(result.trials)))
    assert max(h.value for h in history) == result.n_evaluations


def test_nested_runs_hold_params_metrics_tags_and_plan(tracked):
    result, uri = tracked.result, tracked.uri
    client = _client(uri)
    _, nested = _runs(client, tracked.tracker.experiment_id)
    by_number = {int(r.data.tags["trial"]): r for r in nested}
    base = result.baseline
    for record in result.trials:
        run = by_number[record.number]
        p, m, tags = run.data.params, run.data.metrics, run.data.tags
        assert run.info.run_name == f"trial-{record.number:03d}"
        assert tags["state"] == record.state
        assert tags["strategy"] == "random"
        assert tags["passed"] == str(record.passed).lower()
        assert p["plan_hash"] == record.plan_hash
        fp32 = [f for f, c in record.plan.items() if c is None]
        assert p["fp32_ops"] == str(len(fp32))
        assert p["fp32_ops.Linear"] == str(len(fp32))
        labels = Counter("fp32" if c is None else c.short() for c in record.plan.values())
        assert p["op_type.Linear"] == labels.most_common(1)[0][0]
        assert p == {k: str(v) for k, v in trial_params(record).items()}
        plan = Plan.from_yaml(_read_artifact(uri, run.info.run_id, "plan.yaml").decode())
        assert plan.hash == record.plan_hash
        if record.state == "cached":
            assert tags["cached_from"] == str(record.cached_from)
            assert "trial_time_s" not in m  # nothing was run
        else:
            assert "cached_from" not in tags
        if record.metrics is None:
            assert record.state == "skipped" and m == {}
            assert "all-float" in tags["error"]
            continue
        q = record.metrics
        assert m["accuracy"] == pytest.approx(q.accuracy)
        assert m["loss"] == pytest.approx(q.loss)
        assert m["latency_ms"] == pytest.approx(q.latency_ms)
        assert m["latency_p90_ms"] == pytest.approx(q.latency_p90_ms)
        assert m["size_bytes"] == q.size_bytes
        assert m["speedup"] == pytest.approx(base.latency_ms / q.latency_ms)
        if record.cached_from is None:
            assert m["trial_time_s"] == pytest.approx(record.timings["total_s"])
            assert {"build_s", "eval_s", "measure_s"} <= set(m)
        assert run.info.status == "FINISHED"


def test_parent_artifacts_plots_and_cli_style_artifacts(tracked):
    result, uri, run_id = tracked.result, tracked.uri, tracked.tracker.run_id
    client = _client(uri)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {
        "summary.txt",
        "best_plan.yaml",
        "trials.json",
        "run_config.yaml",
        "tuning_config.json",
        "search_space.txt",
        "plots",
        "model",
        "summary.json",
        "autoquant_model",
    } <= top
    plots = {a.path: a.file_size for a in client.list_artifacts(run_id, "plots")}
    expected = {
        "plots/accuracy_vs_latency.png",
        "plots/fp32_fallback.png",
        "plots/optimization_history.png",
    }
    if result.sensitivity:  # the strategy computed per-op sensitivities: they are plotted
        expected.add("plots/sensitivity.png")
    assert set(plots) == expected
    for path in plots:
        assert _read_artifact(uri, run_id, path)[:8] == b"\x89PNG\r\n\x1a\n"
    trials = json.loads(_read_artifact(uri, run_id, "trials.json"))
    assert [t["number"] for t in trials] == [t.number for t in result.trials]
    best_plan = Plan.from_yaml(_read_artifact(uri, run_id, "best_plan.yaml").decode())
    assert best_plan.hash == result.best_plan.hash
    assert "tracking_errors" not in " ".join(client.get_run(run_id).data.tags)


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


def test_picklable_model_uses_pytorch_flavor_and_missed_goal_moves_no_alias(
    tracked, task, monkeypatch
):
    """Dynamic int8 builds eager modules, which mlflow.pytorch pickles; a 1% goal is not
    met by them: the version is registered but the alias 'best' is not set. A trial whose
    evaluation raises is a FAILED nested run. A failure after tune() (close("FAILED"))
    marks the finished parent run FAILED."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    uri = tracked.uri  # another experiment in the same store
    tracker = make_tracker(
        TrackingConfig(uri=uri, experiment="dyn", registered_model="dyn-model", plots=False),
        study_name="ignored-for-names",
        run_config={},
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
    assert tracker.model_flavor == "pytorch"
    version = client.get_model_version("dyn-model", tracker.model_version)
    assert version.tags["goal_met"] == "false"
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("dyn-model", "best")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mlflow.pytorch.load_model(f"models:/dyn-model/{version.version}")
    x = task.x_test
    with torch.inference_mode():
        assert torch.equal(model(x), result.best_model(x))


# -- a real tracking server ---------------------------------------------------------------


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


def test_pyfunc_trusts_exactly_the_bundled_example_factories(monkeypatch) -> None:
    """The factories the pyfunc loader imports by default are those of the CLI's bundled
    model configs, and AUTOQUANT_TRUST_FACTORY only widens that."""
    import yaml

    from autoquant import tracking
    from autoquant._saved_format import factory_allowed

    conf = Path(tracking.__file__).parent / "conf" / "model"
    bundled = set()
    for path in conf.glob("*.yaml"):
        target = yaml.safe_load(path.read_text())["factory"]["_target_"]
        module, _, attr = target.rpartition(".")
        bundled.add(f"{module}:{attr}")
    assert bundled == set(tracking.PYFUNC_TRUSTED_FACTORIES)
    monkeypatch.delenv("AUTOQUANT_TRUST_FACTORY", raising=False)
    trust = tracking._pyfunc_trust()
    assert all(factory_allowed(f, trust) for f in bundled)
    assert not factory_allowed("autoquant.examples.digits:main", trust)
    assert not factory_allowed("autoquant.cli:main", trust)
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "mypkg")
    assert factory_allowed("mypkg.models:build", tracking._pyfunc_trust())
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "*")
    assert tracking._pyfunc_trust() is True
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "not a module")
    with pytest.raises(ValueError, match="AUTOQUANT_TRUST_FACTORY='not a module'"):
        tracking._pyfunc_trust()
