"""Runs in a real MLflow sqlite store: one experiment per study, one parent run, one
nested run per trial, and the parent's artifacts and plots.

No mocks: ``autoquant.tune`` runs on the breast-cancer MLP of ``tuning._helpers`` with an
:class:`~autoquant.tracking.MlflowTracker` as callback (the ``tracked`` fixture), and
everything is read back with ``MlflowClient``.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from autoquant.plan import Plan
from autoquant.tracking import trial_params

from ._helpers import FACTORY, STUDY
from ._helpers import client as _client
from ._helpers import read_artifact as _read_artifact
from ._helpers import runs as _runs


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
