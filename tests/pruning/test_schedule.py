"""Gradual pruning schedules, and the fine-tuning budget as a search dimension."""

from __future__ import annotations

import math

import pytest
import torch

from autoquant.errors import ConfigError
from autoquant.pruning import PruneSchedule, PruneSpec, prune, prune_and_train
from autoquant.pruning.schedule import ramp_budget, split_budget, stage_ratios
from autoquant.qat.train import TrainBudget
from autoquant.tracking._values import trial_params
from autoquant.tuning import TuningConfig, tune
from autoquant.tuning.space import BUDGET_PARAM, PRUNE_PREFIX
from tests.tuning._helpers import fast_config


def test_stage_ratios_follow_the_cubic_schedule_and_end_exactly() -> None:
    for ratio in (0.1, 0.3, 0.5, 0.75, 0.9):
        for stages in (1, 2, 3, 4, 7):
            got = stage_ratios(ratio, stages)
            want = [ratio * (1 - (1 - t / stages) ** 3) for t in range(1, stages + 1)]
            assert got[:-1] == want[:-1] and got[-1] == ratio
            assert all(a < b for a, b in zip(got, got[1:], strict=False))
    # 1 - (1 - 1/2)^3 = 7/8: most of the pruning happens in the first stage.
    assert stage_ratios(0.8, 2) == [0.8 * 7 / 8, 0.8]


def test_split_budget_shares_epochs_and_steps_exactly() -> None:
    parts = split_budget(TrainBudget(epochs=2.0, steps=10, lr_scale=0.3), 4)
    assert [p.steps for p in parts] == [3, 3, 2, 2]
    assert all(p.epochs == 0.5 and p.lr_scale == 0.3 for p in parts)
    parts = split_budget(TrainBudget(epochs=3.0), 3)
    assert all(p.epochs == 1.0 and p.steps is None for p in parts)
    first, rest = ramp_budget(TrainBudget(epochs=2.0, steps=9), 0.5)
    assert (first.epochs, rest.epochs) == (1.0, 1.0) and first.steps + rest.steps == 9
    assert ramp_budget(TrainBudget(), 1.0) == (TrainBudget(), None)


def _stage_recorder(data: dict[str, torch.Tensor], seen: list) -> object:
    """A real fine-tuning step per stage on the digits training data that records, at
    the start of each stage, the share of zeros of fc1 (unstructured) and the channels
    of conv3 that are all zero (masked channel pruning)."""

    def train_fn(model: torch.nn.Module, budget: TrainBudget) -> None:
        w = model.fc1.weight
        zero_channels = int((model.conv3.weight.flatten(1).abs().sum(1) == 0).sum())
        seen.append((float((w == 0).sum()) / w.numel(), zero_channels, budget))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for i in range(3):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(data["x_train"][i * 64 : (i + 1) * 64]),
                data["y_train"][i * 64 : (i + 1) * 64],
            )
            loss.backward()
            opt.step()
        # The masks are held during training: every forward sees the removed weights at
        # zero (the optimizer's last step moved them; the next forward masks them again).
        with torch.no_grad():
            model(data["x_train"][:4])
        assert float((model.fc1.weight == 0).sum()) / w.numel() >= seen[-1][0]

    return train_fn


def test_gradual_schedule_prunes_exact_ratios_per_stage_and_masks_hold(
    digits_model, digits_data
) -> None:
    specs = {
        "fc1": PruneSpec(pattern="unstructured", ratio=0.6),
        "conv3": PruneSpec(pattern="channel", ratio=0.5),
    }
    seen: list = []
    budget = TrainBudget(epochs=1.0, steps=8)
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    model, report = prune_and_train(
        digits_model,
        specs,
        _stage_recorder(digits_data, seen),
        schedule=PruneSchedule(kind="gradual", stages=4, ramp=1.0, channels="end"),
        budget=budget,
    )
    # The user's model is never touched.
    assert all(torch.equal(v, digits_model.state_dict()[k]) for k, v in before.items())
    fc1_total = digits_model.fc1.weight.numel()
    channels = digits_model.conv3.out_channels
    ratios = stage_ratios(0.6, 4)
    ch_ratios = stage_ratios(0.5, 4)
    assert [s[0] for s in seen] == [math.floor(r * fc1_total) / fc1_total for r in ratios]
    assert [s[1] for s in seen] == [math.floor(r * channels) for r in ch_ratios]
    assert [s[2].steps for s in seen] == [2, 2, 2, 2]
    # At the end: the exact full ratios, channels removed (shrunk: fc1 loses the inputs
    # of conv3's removed channels, as in one shot), zeros held.
    oneshot, _ = prune(digits_model, specs)
    assert model.fc1.weight.shape == oneshot.fc1.weight.shape
    assert float((model.fc1.weight == 0).sum()) / model.fc1.weight.numel() > 0.5
    assert model.conv3.out_channels == channels - math.floor(0.5 * channels)
    assert report.ops["conv3"]["channels"] == [channels, model.conv3.out_channels]
    assert report.ops["fc1"]["sparsity"] == math.floor(0.6 * fc1_total) / fc1_total
    assert not model.training


def test_ramp_prunes_over_part_of_the_budget_then_fine_tunes_at_the_full_ratio(
    digits_model, digits_data
) -> None:
    seen: list = []
    prune_and_train(
        digits_model,
        {"fc1": PruneSpec(pattern="unstructured", ratio=0.5)},
        _stage_recorder(digits_data, seen),
        schedule=PruneSchedule(kind="gradual", stages=2, ramp=0.5, channels="end"),
        budget=TrainBudget(epochs=2.0, steps=8),
    )
    total = digits_model.fc1.weight.numel()
    want = [math.floor(r * total) / total for r in stage_ratios(0.5, 2)]
    assert [s[0] for s in seen] == [*want, want[-1]]
    assert [(s[2].epochs, s[2].steps) for s in seen] == [(0.5, 2), (0.5, 2), (1.0, 4)]


def test_gradual_with_stagewise_shrink_ends_at_the_same_sizes(digits_model, digits_data):
    specs = {"conv3": PruneSpec(pattern="channel", ratio=0.5)}
    seen: list = []
    model, report = prune_and_train(
        digits_model,
        specs,
        _stage_recorder(digits_data, seen),
        schedule=PruneSchedule(kind="gradual", stages=3, channels="stage"),
        budget=TrainBudget(steps=3),
    )
    oneshot, _ = prune(digits_model, specs)
    assert model.conv3.weight.shape == oneshot.conv3.weight.shape
    assert model.fc1.weight.shape == oneshot.fc1.weight.shape
    assert report.ops["conv3"]["channels"] == [32, 16]
    assert report.params[1] == sum(p.numel() for p in oneshot.parameters())
    with torch.no_grad():
        assert torch.isfinite(model(digits_data["x_test"][:8])).all()


def test_oneshot_keeps_zeros_through_training(digits_model, digits_data) -> None:
    seen: list = []
    model, _ = prune_and_train(
        digits_model,
        {"fc1": PruneSpec(pattern="unstructured", ratio=0.5)},
        _stage_recorder(digits_data, seen),
    )
    assert len(seen) == 1 and seen[0][2] == TrainBudget()
    assert float((model.fc1.weight == 0).sum()) == math.floor(0.5 * model.fc1.weight.numel())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"prune_schedule": "cubic"},
            "TuningConfig.prune_schedule must be one of ['oneshot', 'gradual']",
        ),
        ({"prune_stages": 1}, "for one stage use prune_schedule='oneshot'"),
        ({"prune_stages": 2.5}, "TuningConfig.prune_stages"),
        ({"prune_ramp": 1.5}, "TuningConfig.prune_ramp"),
        ({"prune_epochs": ()}, "TuningConfig.prune_epochs"),
        ({"prune_epochs": 1.0}, "a non-empty tuple of numbers > 0"),
        ({"prune_lr_scales": (1.0, -0.3)}, "TuningConfig.prune_lr_scales"),
        ({"prune_lr_scales": (1.0, 1.0)}, "distinct"),
    ],
)
def test_bad_schedule_config_is_refused_clearly(kwargs, expected) -> None:
    with pytest.raises(ConfigError, match="but got") as err:
        TuningConfig(**kwargs)
    assert expected in str(err.value)


def test_bad_schedules_are_refused_clearly(digits_model) -> None:
    with pytest.raises(ConfigError, match=r"PruneSchedule.kind must be one of \['oneshot'"):
        PruneSchedule(kind="iterative")
    with pytest.raises(ConfigError, match="PruneSchedule.stages must be an int >= 2"):
        PruneSchedule(kind="gradual", stages=True)
    with pytest.raises(ConfigError, match="PruneSchedule.channels"):
        PruneSchedule(kind="gradual", channels="never")
    with pytest.raises(ConfigError, match=r"PruneSchedule.ramp must be a number in \(0, 1\]"):
        PruneSchedule(kind="gradual", ramp=0.0)
    with pytest.raises(ConfigError, match="but train_fn is None"):
        prune_and_train(digits_model, {"fc1": PruneSpec(ratio=0.5)}, None, schedule="gradual")
    with pytest.raises(ConfigError, match="PruneSpec.fine_tune"):
        PruneSpec(ratio=0.5, fine_tune="")


def test_tune_refuses_gradual_or_budgets_without_train_fn(digits_model, digits_calib) -> None:
    for extra, expected in (
        ({"prune_schedule": "gradual"}, "tune() got no train_fn"),
        ({"prune_epochs": (0.5, 1.0)}, "give 2 fine-tuning budgets"),
    ):
        config = fast_config(prune_patterns=("channel",), max_trials=2, **extra)
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            tune(digits_model, lambda m: 0.0, calib_data=digits_calib, config=config)


@pytest.mark.parametrize("schedule", ["oneshot", "gradual"])
def test_tune_searches_the_fine_tuning_budget(
    digits_model, digits_data, digits_calib, schedule
) -> None:
    from autoquant.examples.digits import accuracy

    x, y = digits_data["x_test"], digits_data["y_test"]
    calls: list[TrainBudget] = []

    def train_fn(model: torch.nn.Module, budget: TrainBudget) -> None:
        calls.append(budget)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3 * budget.lr_scale)
        for i in range(budget.steps or 1):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                model(digits_data["x_train"][i * 32 : (i + 1) * 32]),
                digits_data["y_train"][i * 32 : (i + 1) * 32],
            ).backward()
            opt.step()

    config = fast_config(
        strategy="random",
        approaches=("static",),
        search=(),
        prune_patterns=("unstructured",),
        prune_ratios=(0.5,),
        prune_schedule=schedule,
        prune_stages=2,
        prune_epochs=(1.0, 2.0),
        max_trials=8,
        tolerable_loss=0.05,
    )
    result = tune(
        digits_model,
        lambda m: accuracy(m, x, y),
        calib_data=digits_calib,
        config=config,
        train_fn=train_fn,
    )
    pruned = [
        r
        for r in result.trials
        if r.evaluated
        and any(k.startswith(PRUNE_PREFIX) and v != "none" for k, v in r.params.items())
    ]
    assert pruned, [r.params for r in result.trials]
    assert all(BUDGET_PARAM in r.params for r in result.trials)
    for r in pruned:
        # The budget (and the schedule) is in the plan, so in its hash and cache key.
        tuned = {c.prune.fine_tune for c in r.plan.values() if c is not None and c.prune}
        label = "oneshot" if schedule == "oneshot" else "gradual/2/ramp0.5"
        assert tuned == {f"{r.params[BUDGET_PARAM]} {label}"}
        assert r.timings["train_s"] > 0
        # What MLflow records of the trial (param prune_fine_tune; metric train_time_s).
        assert trial_params(r)["prune_fine_tune"] == f"{r.params[BUDGET_PARAM]} {label}"
    # One call per fine-tuning (oneshot), or 2 stages + the rest at the full ratio
    # (gradual, ramp 0.5): the calls of one fine-tuning add up to its whole budget.
    per = 1 if schedule == "oneshot" else 3
    assert calls and len(calls) % per == 0
    totals = {
        round(sum(b.epochs for b in calls[i : i + per]), 6) for i in range(0, len(calls), per)
    }
    assert totals <= {1.0, 2.0}
    # Same pruning, different budget: different plans (never served from the cache);
    # a plan that prunes nothing does not depend on the budget.
    params = dict(pruned[0].params)
    from autoquant.tuning._runner import Runner

    runner = Runner(digits_model, lambda m: 0.0, digits_calib, config, None, train_fn)
    hashes = {runner.space.plan({**params, BUDGET_PARAM: b}).hash for b in runner.space.budgets}
    assert len(hashes) == 2 == len(runner.space.budgets)
    plain = runner.space.default_params()
    assert (
        len({runner.space.plan({**plain, BUDGET_PARAM: b}).hash for b in runner.space.budgets}) == 1
    )


def test_stagewise_shrink_of_attention_heads_ends_at_the_one_shot_sizes() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 50, (2, 6))
    heads_seen: list[int] = []

    def train_fn(m: torch.nn.Module) -> None:
        heads_seen.append(m.encoder.layer[0].attention.self.num_attention_heads)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        opt.zero_grad()
        m(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()

    specs = {
        "encoder.layer.0.intermediate.dense": PruneSpec(pattern="channel", ratio=0.6),
        "encoder.layer.0.attention.self.value": PruneSpec(pattern="channel", ratio=0.6),
    }
    out, report = prune_and_train(
        model, specs, train_fn, schedule=PruneSchedule(kind="gradual", stages=3, ramp=1.0)
    )
    oneshot, _ = prune(model, specs)
    # Heads go whole, stage by stage, to the one-shot count: 4 - floor(r_t * 4) heads.
    assert heads_seen == [4 - math.floor(r * 4) for r in stage_ratios(0.6, 3)]
    for name in ("attention.self.query", "attention.output.dense", "intermediate.dense"):
        a = out.encoder.layer[0].get_submodule(name).weight.shape
        assert a == oneshot.encoder.layer[0].get_submodule(name).weight.shape, name
    with torch.no_grad():
        assert torch.isfinite(out(input_ids=ids).last_hidden_state).all()
    assert report.params[1] == sum(p.numel() for p in oneshot.parameters())


def test_basic_retries_a_failing_pruning_choice_with_the_next_budget(
    digits_model, digits_data, digits_calib
) -> None:
    from autoquant.examples.digits import accuracy

    x, y = digits_data["x_test"], digits_data["y_test"]

    def train_fn(model: torch.nn.Module, budget: TrainBudget) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=1e-2 * budget.lr_scale, momentum=0.9)
        for i in range(round(4 * budget.epochs)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                model(digits_data["x_train"][i * 64 : (i + 1) * 64]),
                digits_data["y_train"][i * 64 : (i + 1) * 64],
            ).backward()
            opt.step()

    config = fast_config(
        strategy="basic",
        approaches=("static",),
        search=(),
        prune_patterns=("channel",),
        prune_ratios=(0.9,),
        prune_epochs=(0.25, 4.0),
        max_trials=10,
        tolerable_loss=0.02,
    )
    result = tune(
        digits_model,
        lambda m: accuracy(m, x, y),
        calib_data=digits_calib,
        config=config,
        train_fn=train_fn,
    )
    trials = [r for r in result.trials if r.metrics is not None]
    cheap, dear = "epochs=0.25 lr_x1", "epochs=4 lr_x1"
    retried = [
        (a, b)
        for a, b in zip(trials, trials[1:], strict=False)
        if not a.passed
        and a.params[BUDGET_PARAM] == cheap
        and b.params == {**a.params, BUDGET_PARAM: dear}
    ]
    assert retried, [(r.params, r.state) for r in trials]
    # The retry is another plan (another hash), fine-tuned again (its own train time).
    assert all(a.plan_hash != b.plan_hash for a, b in retried)


@pytest.mark.parametrize("channels", ["stage", "end"])
def test_gradual_reports_layers_left_whole_like_one_shot(channels: str) -> None:
    class TwoLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))  # b feeds the output: its channels cannot go

    torch.manual_seed(0)
    model = TwoLinear()
    specs = {
        "a": PruneSpec(pattern="channel", ratio=0.5),
        "b": PruneSpec(pattern="channel", ratio=0.5),
    }
    _, oneshot = prune(model, specs)
    out, report = prune_and_train(
        model, specs, lambda m: None, schedule=PruneSchedule(kind="gradual", channels=channels)
    )
    assert report.left_whole == oneshot.left_whole and set(report.left_whole) == {"b"}
    assert report.ops["a"]["channels"] == oneshot.ops["a"]["channels"] == [8, 4]
    assert (out.a.out_features, out.b.in_features, out.b.out_features) == (4, 4, 8)
