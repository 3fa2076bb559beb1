"""A small tune with the pruning dimension on the real digits CNN."""

from __future__ import annotations

import torch

from autoquant import load, quant_info, save
from autoquant.examples.digits import DigitsCNN, accuracy
from autoquant.pruning import prune_info
from autoquant.pruning.apply import split_plan
from autoquant.tuning import TuningConfig, tune
from autoquant.tuning.space import PRUNE_PREFIX
from tests.tuning._helpers import fast_config


def test_space_has_prune_units_only_where_they_apply(digits_model) -> None:
    from autoquant.backends import get_backend
    from autoquant.discovery import discover
    from autoquant.tuning.space import SearchSpace

    config = TuningConfig(prune_patterns=("channel", "2:4"), prune_ratios=(0.25, 0.5))
    ops = discover(digits_model)
    space = SearchSpace.build(digits_model, ops, get_backend("x86"), config, calibrated=True)
    units = space.prune_units
    # conv1 and conv2 are tied by the residual add: one channel unit; fc2 is the output
    # (no channel choice); conv1's reduction (1 x 3 x 3) cannot hold 2:4 groups.
    assert units["prune:conv1"].labels == ("none", "channel:0.25", "channel:0.5")
    assert units["prune:conv2"].labels == ("none", "2:4")
    assert units["prune:conv3"].labels[1:] == ("channel:0.25", "channel:0.5", "2:4")
    assert units["prune:fc2"].labels == ("none", "2:4")
    plan = space.plan({**space.default_params(), "prune:fc1": "channel:0.5", "fc1": "fp32"})
    assert plan["fc1"].approach == "float" and plan["fc1"].prune.ratio == 0.5


def test_tune_prunes_then_calibrates_the_pruned_model(digits_model, digits_data, digits_calib):
    x, y = digits_data["x_test"], digits_data["y_test"]
    trained: list[int] = []

    def train_fn(model: torch.nn.Module) -> None:
        # One real step of fine-tuning on training data (the optional per-trial budget).
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(digits_data["x_train"][:64]), digits_data["y_train"][:64]
        )
        loss.backward()
        opt.step()
        trained.append(1)

    config = fast_config(
        strategy="basic",
        approaches=("static",),
        search=(),
        prune_patterns=("channel",),
        prune_ratios=(0.25, 0.5),
        max_trials=8,
        tolerable_loss=0.02,
    )
    result = tune(
        digits_model,
        lambda m: accuracy(m, x, y),
        calib_data=digits_calib,
        config=config,
        train_fn=train_fn,
    )
    pruned_trials = [
        r
        for r in result.trials
        if r.evaluated
        and any(k.startswith(PRUNE_PREFIX) and v != "none" for k, v in r.params.items())
    ]
    assert pruned_trials, "the prune phase proposed no pruned plan"
    # Each distinct pruning part: pruned once, fine-tuned once, calibrated once.
    distinct = {tuple(sorted(split_plan(r.plan)[0].items(), key=str)) for r in pruned_trials}
    assert len(trained) >= len(distinct) - 1 >= 0
    assert result.calibration_passes >= 1 + min(len(distinct), 1)
    assert result.met and result.best.loss <= 0.02
    assert accuracy(result.best_model, x, y) == result.best.accuracy
    specs, quant_plan = split_plan(result.best_plan)
    assert quant_info(result.best_model).plan == quant_plan
    if specs:
        report = prune_info(result.best_model)
        assert set(specs) <= set(report.ops) | set(report.left_whole)
    assert ("pruned ops" in result.summary()) == bool(specs)


def test_pruned_best_model_saves_and_loads(digits_model, digits_calib, tmp_path) -> None:
    import autoquant as aq

    plan = {
        "default": aq.static_int8(),
        "fc1": aq.static_int8().replace(prune=aq.PruneSpec(pattern="channel", ratio=0.5)),
        "conv3": aq.static_int8().replace(prune=aq.PruneSpec(pattern="channel", ratio=0.25)),
    }
    q = aq.quantize(digits_model, plan, digits_calib)
    back = load(save(q, tmp_path / "m"), model=DigitsCNN)
    x = digits_calib[0]
    with torch.inference_mode():
        torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)
    assert prune_info(back).ops["fc1"]["channels"] == [64, 32]
