"""tune() with "qat": INC's order, budgets as trials, failures as failed trials (digits)."""

from __future__ import annotations

import warnings

import pytest
import torch

import autoquant as aq
from autoquant.errors import ConfigError, GoalNotMetWarning
from autoquant.qat.train import TrainLoop
from autoquant.tuning import TuningConfig, tune
from autoquant.tuning._qat import QAT_PARAM, qat_plan


def _config(**changes):
    base = dict(
        latency_repeats=2,
        latency_warmup=0,
        observers=("minmax",),
        search=("approach",),
        max_trials=3,
        qat_epochs=(1.0,),
        qat_lr_scales=(1.0, 0.5),
        qat_steps=3,
        qat_trials=2,
    )
    base.update(changes)
    return TuningConfig(**base)


@pytest.fixture(scope="module")
def loop():
    from autoquant.examples.digits import train_batches

    return TrainLoop(data=train_batches, lr=1e-3)


@pytest.fixture(scope="module")
def logits_metric(digits_model, digits_data):
    """Minus the mean distance to the float logits: every quantized model loses some."""
    x = digits_data["x_test"][:128]
    with torch.no_grad():
        ref = digits_model(x)

    def metric(model):
        with torch.no_grad():
            return -float((model(x) - ref).abs().mean())

    return metric


def test_qat_runs_only_after_ptq_fails_from_the_best_ptq_plan(
    digits_model, digits_calib, logits_metric, loop
):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    cfg = _config(criterion="absolute", tolerable_loss=1e-9, approaches=("static", "qat"))
    with pytest.warns(GoalNotMetWarning):
        result = tune(
            digits_model, logits_metric, calib_data=digits_calib, config=cfg, train_fn=loop
        )
    ptq = [r for r in result.trials if QAT_PARAM not in r.params and r.metrics is not None]
    qat = [r for r in result.trials if QAT_PARAM in r.params]
    assert ptq and len(qat) == 2
    assert min(r.number for r in qat) > max(r.number for r in ptq)
    best_ptq = min(ptq, key=lambda r: (r.metrics.loss, r.metrics.latency_ms))
    assert all(r.plan == qat_plan(best_ptq.plan) for r in qat)
    assert all(c is None or c.approach == "qat" for c in qat[0].plan.values())
    assert [r.params[QAT_PARAM] for r in qat] == [b.label() for b in cfg.qat.budgets()]
    assert all(r.state == "fail" and r.timings["train_s"] > 0 for r in qat)
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_no_qat_when_ptq_meets_the_goal(digits_model, digits_calib, digits_data, loop):
    from autoquant.examples.digits import eval_fn

    cfg = _config(tolerable_loss=0.05, approaches=("static", "qat"))
    result = tune(digits_model, eval_fn(), calib_data=digits_calib, config=cfg, train_fn=loop)
    assert result.met
    assert not [r for r in result.trials if QAT_PARAM in r.params]


def test_failing_train_fn_fails_its_trial_not_the_study(digits_model, digits_calib):
    from autoquant.examples.digits import eval_fn

    calls = []

    def train_fn(model, budget):
        calls.append(budget)
        if len(calls) == 1:
            raise ValueError("the data loader broke")
        with torch.no_grad():
            model.fc1.op.weight.fill_(float("nan"))

    cfg = _config(approaches=("qat",), tolerable_loss=1e-9, criterion="absolute")
    with pytest.raises(aq.AutoQuantError, match="no trial produced"):
        tune(digits_model, eval_fn(), calib_data=digits_calib, config=cfg, train_fn=train_fn)
    assert len(calls) == 2  # the second budget ran after the first one failed


def test_failures_are_recorded_next_to_ptq(digits_model, digits_calib, logits_metric):
    def train_fn(model):
        raise ValueError("the data loader broke")

    cfg = _config(criterion="absolute", tolerable_loss=1e-9, approaches=("static", "qat"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GoalNotMetWarning)
        result = tune(
            digits_model, logits_metric, calib_data=digits_calib, config=cfg, train_fn=train_fn
        )
    qat = [r for r in result.trials if QAT_PARAM in r.params]
    assert [r.state for r in qat] == ["error", "error"]
    assert all("ValueError: the data loader broke" in r.error for r in qat)
    assert QAT_PARAM not in result.trials[result.best_trial].params


def test_qat_only_returns_the_converted_model(digits_model, digits_calib, loop):
    from autoquant.examples.digits import eval_fn

    cfg = _config(approaches=("qat",), tolerable_loss=0.05, qat_trials=1)
    result = tune(digits_model, eval_fn(), calib_data=digits_calib, config=cfg, train_fn=loop)
    assert result.met and len(result.trials) == 1
    info = aq.quant_info(result.best_model)
    assert any("converted from QAT" in n for n in info.notes) and not info.simulated


def test_qat_needs_a_train_fn(digits_model, digits_calib):
    with pytest.raises(ConfigError, match="train_fn"):
        tune(
            digits_model,
            lambda m: 1.0,
            calib_data=digits_calib,
            config=_config(approaches=("static", "qat")),
        )
