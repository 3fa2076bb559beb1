"""The deployed latency mode: the per-op latency table (prediction math, stored in and
reloaded from a real JournalStorage study, shared with another process), the float
baselines recorded once per study, and the verified-leader step.

No assertion depends on a timing's value: only on where timings are stored, which ones
were measured, and how the tuner combines and compares them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

from autoquant.backends import get_backend
from autoquant.config import OpConfig
from autoquant.discovery import discover
from autoquant.plan import Plan
from autoquant.storage import open_storage
from autoquant.tuning import tune
from autoquant.tuning._latency import _KEY, LatencyTable, capture_op_inputs, predict

from ._helpers import CancerMLP, fast_config

ROOT = Path(__file__).resolve().parents[2]
DYNAMIC = OpConfig.from_dict(
    {
        "approach": "dynamic",
        "weight": {"dtype": "int8", "scheme": "sym", "granularity": "per_channel"},
        "activation": {"dtype": "uint8", "scheme": "asym", "granularity": "per_tensor"},
    }
)


def _deployed_config(url: str, **changes):
    # Dynamic configs only, one choice per op: the fewest table entries and compiles.
    base = dict(
        latency_mode="deployed",
        approaches=("dynamic",),
        search=("approach",),
        tolerable_loss=0.5,  # every plan passes: the leaders are chosen by latency alone
        max_trials=3,
        latency_repeats=3,
        latency_warmup=1,
        latency_verify_top=2,
        min_latency_gain=0.0,
        strategy="random",
        storage=url,
        study_name="deployed",
    )
    base.update(changes)
    return fast_config(**base)


# -- the prediction ------------------------------------------------------------------------


def test_prediction_subtracts_each_quantized_ops_saving_times_its_calls():
    table = {("a", None): 2.0, ("a", "q"): 1.0, ("b", None): 3.0, ("b", "q"): 1.5}
    table[("c", None)] = 0.5
    calls = {"a": 1, "b": 2, "c": 1}

    def op_ms(f, c):
        return table[(f, c)]

    # float ops alone sum to 2 + 2 * 3 + 0.5 = 8.5 <= 10: the plain difference,
    # 10 - 1 * (2 - 1) - 2 * (3 - 1.5) = 6; the float op c costs what it cost
    assert predict(10.0, calls, op_ms, {"a": "q", "b": "q", "c": None}) == pytest.approx(6.0)
    assert predict(10.0, calls, op_ms, {"a": None, "b": None, "c": None}) == 10.0
    # a quantized op slower than its float self makes the plan slower
    slower = {("a", None): 1.0, ("a", "q"): 4.0}
    assert predict(10.0, {"a": 1}, lambda f, c: slower[(f, c)], {"a": "q"}) == 13.0


def test_ops_slower_alone_than_the_model_are_scaled_into_it():
    """Float ops alone summing to more than the model (S = 40 > 10) are scaled by
    c = 10 / 40: the prediction is 10 - 0.25 * saving, never negative, same ranking."""
    table = {("a", None): 20.0, ("a", "q"): 2.0, ("b", None): 20.0, ("b", "q"): 10.0}

    def op_ms(f, c):
        return table[(f, c)]

    both = predict(10.0, {}, op_ms, {"a": "q", "b": "q"})
    only_a = predict(10.0, {}, op_ms, {"a": "q", "b": None})
    only_b = predict(10.0, {}, op_ms, {"a": None, "b": "q"})
    assert both == pytest.approx(10.0 - 0.25 * (18 + 10))  # 3.0
    assert only_a == pytest.approx(10.0 - 0.25 * 18)
    assert only_b == pytest.approx(10.0 - 0.25 * 10)
    assert 0 < both < only_a < only_b < 10.0
    # the plain difference would have predicted 10 - 28 < 0


def test_inputs_captured_per_op_and_calls_counted():
    model = CancerMLP().eval()
    shared = torch.nn.Sequential(model.fc2, torch.nn.ReLU(), model.fc2)  # fc2 called twice
    ops = discover(shared)
    inputs, calls = capture_op_inputs(shared, ops, torch.randn(5, 64))
    assert calls == {"0": 2}
    assert inputs["0"].shape == (5, 64)
    assert not any(m._forward_pre_hooks for m in shared.modules())


@pytest.fixture(params=["journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal://{tmp_path / 'study.log'}"
    return request.getfixturevalue("postgres_url")


def test_hand_made_table_in_a_stored_study_predicts_without_timing(storage_url):
    """Entries written into the study by hand are what the table reads back from the
    storage: nothing is timed, and the prediction is the formula over those entries."""
    model = CancerMLP().eval()
    ops = discover(model)
    study = optuna.create_study(storage=open_storage(storage_url), study_name="s")
    config = fast_config(latency_mode="deployed")
    table = LatencyTable(model, ops, get_backend("x86"), torch.randn(4, 30), config, study)
    hand = {"fc1": (1.0, 0.25), "fc2": (2.0, 0.5), "fc3": (2.0, 0.5), "fc4": (0.5, 0.75)}
    for fqn, (fp32_ms, q_ms) in hand.items():
        for cfg, ms in ((None, fp32_ms), (DYNAMIC, q_ms)):
            study.set_user_attr(_KEY + table.key(fqn, cfg), {"ms": ms, "op": fqn})
    # fc2 and fc3 are the same op on the same input shape: one entry serves both.
    assert table.key("fc2", DYNAMIC) == table.key("fc3", DYNAMIC)
    assert table.key("fc1", DYNAMIC) != table.key("fc2", DYNAMIC)

    reloaded = optuna.load_study(study_name="s", storage=open_storage(storage_url))
    fresh = LatencyTable(model, ops, get_backend("x86"), torch.randn(4, 30), config, reloaded)
    plan = Plan(
        {"fc1": DYNAMIC, "fc2": DYNAMIC, "fc3": None, "fc4": DYNAMIC},
        {op.fqn: op.op_type for op in ops},
    )
    # the float ops alone sum to 5.5 <= 6: 6 - (1 - 0.25) - (2 - 0.5) - (0.5 - 0.75) = 4.0
    assert fresh.predict(plan, 6.0) == pytest.approx(4.0)
    # within a 2.75 ms model they are scaled by 0.5: 2.75 - 0.5 * 2.0 = 1.75
    assert fresh.predict(plan, 2.75) == pytest.approx(1.75)
    assert fresh.measured == 0


# -- end to end on a journal study -----------------------------------------------------------


@pytest.fixture(scope="module")
def deployed_run(cancer, tmp_path_factory):
    url = f"journal://{tmp_path_factory.mktemp('deployed') / 'study.log'}"
    config = _deployed_config(url)
    result = tune(cancer.model, cancer.accuracy, calib_data=cancer.calib, config=config)
    return url, config, result


def test_float_baselines_measured_once_and_recorded(deployed_run, cancer):
    url, config, result = deployed_run
    fb = result.float_baselines
    assert fb is not None
    assert fb.fp32_eager_ms > 0 and fb.fp32_compiled_ms > 0 and fb.bf16_ms > 0
    assert fb.bf16_accuracy is not None and 0.5 < fb.bf16_accuracy <= 1.0
    # The all-float plan deployed is fp32 compiled; the speedup is against the fastest.
    assert result.baseline.latency_ms == fb.fp32_compiled_ms
    assert result.speedup == pytest.approx(fb.fastest[1] / result.best.latency_ms)
    assert fb.fastest[1] == min(fb.fp32_eager_ms, fb.fp32_compiled_ms, fb.bf16_ms)
    assert result.study.user_attrs["float_baselines"] == fb.to_dict()
    assert "float baselines: fp32 eager" in result.summary()
    # A second run on the study loads them: a re-measurement would not repeat every digit.
    again = tune(cancer.model, cancer.accuracy, calib_data=cancer.calib, config=config)
    assert again.float_baselines == fb


def test_every_trial_records_its_predicted_latency(deployed_run):
    _, _, result = deployed_run
    scored = [t for t in result.study.trials if "metrics" in t.user_attrs]
    assert scored
    for t in scored:
        m = t.user_attrs["metrics"]
        assert m["predicted_latency_ms"] == m["latency_ms"] == t.values[0]
    entries = {k: v for k, v in result.study.user_attrs.items() if k.startswith(_KEY)}
    # fc2 and fc3 share their entries: at most 3 distinct ops x (fp32, dynamic).
    assert 0 < len(entries) <= 6
    assert {v["config"] for v in entries.values()} <= {"fp32", DYNAMIC.short()}


def test_verified_leader_is_the_measured_fastest_passing_plan(deployed_run):
    _, config, result = deployed_run
    assert result.met and 1 <= len(result.verified) <= config.latency_verify_top
    fastest = min(result.verified, key=lambda v: v.measured_ms)
    assert result.best_trial == fastest.trial
    assert result.best.latency_ms == fastest.measured_ms == result.best.deployed_latency_ms
    assert result.best.predicted_latency_ms == fastest.predicted_ms
    # The leaders are the passing plans with the lowest predictions.
    predicted = sorted(
        {t.plan_hash: t.metrics.predicted_latency_ms for t in result.trials if t.passed}.values()
    )
    assert sorted(v.predicted_ms for v in result.verified) == predicted[: len(result.verified)]
    stored = {
        k: v for k, v in result.study.user_attrs.items() if k.startswith("autoquant:verified:")
    }
    assert {v["measured_ms"] for v in stored.values()} == {v.measured_ms for v in result.verified}
    assert "verified trial" in result.summary()


def test_another_process_reuses_the_table_without_timing(deployed_run):
    """A second process (a worker, or a resumed run) opens the journal study and predicts
    every trial's plan from the stored entries, timing nothing."""
    url, _, result = deployed_run
    expected = {
        t.number: t.metrics.predicted_latency_ms for t in result.trials if t.metrics is not None
    }
    plans = {t.number: t.plan.to_dict() for t in result.trials if t.metrics is not None}
    script = textwrap.dedent(
        f"""
        import json, sys
        import optuna, torch
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from tuning._helpers import CancerMLP, fast_config
        from autoquant.backends import get_backend
        from autoquant.discovery import discover
        from autoquant.plan import Plan
        from autoquant.storage import open_storage
        from autoquant.tuning._latency import LatencyTable

        study = optuna.load_study(study_name="deployed", storage=open_storage({url!r}))
        model = CancerMLP().eval()  # timings depend on shapes and configs, not weights
        config = fast_config(latency_mode="deployed", latency_repeats=3, latency_warmup=1)
        fp32 = study.user_attrs["float_baselines"]["fp32_compiled_ms"]
        table = LatencyTable(model, discover(model), get_backend("x86"), torch.randn(25, 30),
                             config, study)
        plans = json.loads(sys.stdin.read())
        out = {{n: table.predict(Plan.from_dict(p), fp32) for n, p in plans.items()}}
        print(json.dumps({{"predicted": out, "measured": table.measured}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(plans),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["measured"] == 0
    assert {int(k): v for k, v in got["predicted"].items()} == pytest.approx(expected)
