"""Prune and fine-tune under a :class:`~autoquant.pruning.schedule.PruneSchedule`.

:func:`prune_and_train` is what ``tune`` runs for each distinct pruning part of a plan
(and what a user calls outside ``tune``): one shot, or the gradual cubic schedule with
``train_fn`` on each stage's slice of the budget, the masks held during training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autoquant.errors import ConfigError
from autoquant.pruning.apply import PruneReport, prune
from autoquant.pruning.schedule import (
    SCHEDULES,
    PruneSchedule,
    ramp_budget,
    split_budget,
    stage_ratios,
)
from autoquant.pruning.spec import PruneSpec

__all__ = ["prune_and_train"]


class _Masks:
    """Parameters' keep-masks (True = kept), accumulated over stages."""

    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}

    def update(self, before: nn.Module | None, after: nn.Module) -> None:
        old = dict(before.named_parameters()) if before is not None else {}
        for name, p in after.named_parameters():
            gone = p.detach() == 0
            q = old.get(name)
            if q is not None and q.shape == p.shape:
                gone &= q.detach() != 0
            elif q is not None:  # the layer shrank: its zeros now are what stays pruned
                self.masks.pop(name, None)
            elif p.dim() < 2:
                continue  # no earlier model: only weights' zeros count (one-shot)
            if name in self.masks and self.masks[name].shape != p.shape:
                self.masks.pop(name)
            if bool(gone.any()) or name in self.masks:
                keep = self.masks.get(name, torch.ones_like(gone))
                self.masks[name] = keep & ~gone

    def apply(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, keep in self.masks.items():
                params[name].masked_fill_(~keep, 0.0)

    def held(self, model: nn.Module) -> Any:
        return model.register_forward_pre_hook(lambda module, args: self.apply(module))


def _train(model: nn.Module, train_fn: Callable[..., Any], budget: Any, masks: _Masks) -> None:
    from autoquant.qat.train import call_train_fn

    model.train()
    handle = masks.held(model)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            call_train_fn(train_fn, model, budget)
    finally:
        handle.remove()
    masks.apply(model)
    model.eval()


def _specs_at(specs: Mapping[str, PruneSpec], ratios: Mapping[str, list[float]], t: int) -> dict:
    last = t == len(next(iter(ratios.values()))) - 1 if ratios else True
    out = {}
    for f, s in specs.items():
        if s.nm is not None:
            if last:
                out[f] = s
        elif ratios[f][t] > 0:
            out[f] = s.replace(ratio=ratios[f][t])
    return out


def _relative(
    specs: dict[str, PruneSpec], model: nn.Module, first: Mapping[str, int]
) -> dict[str, PruneSpec]:
    """Channel specs as shares of the layers' *current* channels (stage-wise shrink),
    counted in the units :func:`prune` removes (channels, or whole attention heads), so
    each stage ends at the count a one-shot prune to its ratio keeps:
    ``floor(r * now) = now - target``; the +0.5 keeps float rounding off the floor."""
    from autoquant.pruning.structural import channel_groups

    structured = [f for f, s in specs.items() if s.structured]
    if not structured:
        return dict(specs)
    groups = channel_groups(model, structured)
    out = dict(specs)
    for f in structured:
        s = specs[f]
        unit = groups[f].heads or 1
        now, start = model.get_submodule(f).weight.shape[0] // unit, first[f] // unit
        target = start - min(math.floor(s.ratio * start), start - 1)  # type: ignore[operator]
        if now <= target:
            out.pop(f)
        else:
            out[f] = s.replace(ratio=(now - target + 0.5) / now)
    return out


def prune_and_train(
    model: nn.Module,
    specs: Mapping[str, PruneSpec | Mapping[str, Any]],
    train_fn: Callable[..., Any] | None = None,
    *,
    schedule: PruneSchedule | str = "oneshot",
    budget: Any = None,
    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
) -> tuple[nn.Module, PruneReport]:
    """A pruned, fine-tuned copy of ``model`` and its report (``model`` is not modified).

    Args:
        model: the float model.
        specs: fqn -> :class:`PruneSpec` (or a dict of its fields).
        train_fn: ``train_fn(model)`` or ``train_fn(model, budget)``; None: no training
            (a gradual schedule then needs one; it is refused without).
        schedule: a :class:`PruneSchedule`, or ``"oneshot"`` / ``"gradual"``.
        budget: the whole fine-tuning :class:`~autoquant.qat.train.TrainBudget`
            (default ``TrainBudget()``); a gradual schedule gives each stage its slice.
        loss_fn: for the ``gradient`` criterion (see :func:`prune`), called every stage.
    """
    from autoquant.qat.train import TrainBudget

    if isinstance(schedule, str):
        schedule = PruneSchedule(kind=schedule)
    if not isinstance(schedule, PruneSchedule):
        raise ConfigError(
            f"schedule must be a PruneSchedule or one of {list(SCHEDULES)}, but got {schedule!r}."
        )
    budget = TrainBudget() if budget is None else budget
    if not isinstance(budget, TrainBudget):
        raise ConfigError(f"budget must be a TrainBudget or None, but got {budget!r}.")
    checked = {f: PruneSpec.from_dict(s) for f, s in specs.items()}
    if schedule.kind == "gradual" and train_fn is None:
        raise ConfigError(
            "a gradual pruning schedule fine-tunes between stages, but train_fn is None. "
            "Pass train_fn=, or use schedule='oneshot'."
        )
    if schedule.kind == "oneshot" or not checked:
        pruned, report = prune(model, checked, loss_fn=loss_fn)
        if train_fn is not None:
            masks = _Masks()
            masks.update(None, pruned)
            _train(pruned, train_fn, budget, masks)
        pruned.eval()
        return pruned, report

    ratios = {f: stage_ratios(s.ratio, schedule.stages) for f, s in checked.items() if not s.nm}  # type: ignore[arg-type]
    ramping, recovery = ramp_budget(budget, schedule.ramp)
    slices = split_budget(ramping, schedule.stages)
    first = {f: model.get_submodule(f).weight.shape[0] for f in checked}
    shrink_each = schedule.channels == "stage"
    masks = _Masks()
    current: nn.Module = model
    shapes: dict[str, dict[str, int]] = {}
    left_whole: dict[str, str] = {}
    for t in range(schedule.stages):
        stage = _specs_at(checked, ratios or {"": [0.0] * schedule.stages}, t)
        if shrink_each:
            stage = _relative(stage, current, first)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            after, stage_report = prune(
                current, stage, mode="shrink" if shrink_each else "mask", loss_fn=loss_fn
            )
        for fqn, sizes in stage_report.shapes.items():
            shapes.setdefault(fqn, {}).update(sizes)
        left_whole.update(stage_report.left_whole)
        masks.update(current, after)
        current = after
        _train(current, train_fn, slices[t], masks)  # type: ignore[arg-type]
    if recovery is not None:
        _train(current, train_fn, recovery, masks)  # type: ignore[arg-type]
    # The final report (and, with channels="end", the shrink): pruning the masked model
    # to the full ratios again removes exactly the zeroed weights and channels, which
    # score lowest.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if shrink_each:
            return _final_stagewise(model, current, checked, first, shapes, left_whole)
        final, report = prune(current, checked, mode="shrink", loss_fn=loss_fn)
    final.eval()
    return final, report


def _final_stagewise(
    model: nn.Module,
    current: nn.Module,
    specs: Mapping[str, PruneSpec],
    first: Mapping[str, int],
    shapes: dict[str, dict[str, int]],
    left_whole: dict[str, str],
) -> tuple[nn.Module, PruneReport]:
    """The report of a stage-wise shrunk model, against the original model."""
    from autoquant.pruning.apply import _n_params

    report = PruneReport(
        params=(_n_params(model), _n_params(current)), shapes=shapes, left_whole=left_whole
    )
    mods = dict(current.named_modules())
    for f, s in specs.items():
        w = mods[f].weight
        if s.structured:
            now = w.shape[0]
            if now == first[f]:
                report.left_whole.setdefault(f, "no channel removed at any stage")
                continue
            report.ops[f] = {
                "pattern": "channel",
                "ratio": s.ratio,
                "sparsity": 1.0 - now / first[f],
                "channels": [first[f], now],
            }
        else:
            report.ops[f] = {
                "pattern": s.pattern,
                "ratio": s.ratio,
                "sparsity": float((w == 0).sum()) / w.numel(),
            }
    current.autoquant_pruning = report  # type: ignore[assignment]
    current.eval()
    return current, report
