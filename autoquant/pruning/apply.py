"""Apply a plan's pruning part to a copy of a float model, and report what happened.

``prune(model, plan)`` returns a new model (the given one is never modified) and a
:class:`PruneReport`. ``mode="shrink"`` (the default, what ``quantize`` uses) removes
channel-pruned channels from the layers; ``mode="mask"`` zeroes them instead (the
reference the shrunk model must equal). Unstructured and N:M patterns always zero
weights: dense kernels do not skip them, only the saved file gets smaller
(:func:`autoquant.save` stores such tensors as bitmask + values).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoquant.errors import ConfigError, PlanError
from autoquant.pruning import masks as mk
from autoquant.pruning.spec import PruneSpec
from autoquant.pruning.structural import ChannelGroup, channel_groups

if TYPE_CHECKING:
    from autoquant.plan import Plan

__all__ = [
    "PruneReport",
    "split_plan",
    "prune",
    "prune_info",
    "resize_to",
    "sparsity",
    "prune_key",
]

MODES = ("shrink", "mask")


@dataclass
class PruneReport:
    """What pruning did, attached to the pruned (and the quantized) model.

    ``ops``: fqn -> ``{"pattern", "ratio" (asked), "sparsity" (share of the weight that
    is zero or removed), "channels": [before, after] (channel pattern)}``;
    ``left_whole``: fqn -> why its channels were not removed (the op stays unpruned);
    ``shapes``: module fqn -> sizes after shrinking (what :func:`resize_to` restores);
    ``params``: [before, after] parameter counts of the whole model.
    """

    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    left_whole: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, dict[str, int]] = field(default_factory=dict)
    params: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "left_whole": self.left_whole,
            "shapes": self.shapes,
            "params": list(self.params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneReport:
        return cls(
            ops=dict(data["ops"]),
            left_whole=dict(data["left_whole"]),
            shapes={k: dict(v) for k, v in data["shapes"].items()},
            params=tuple(data["params"]),  # type: ignore[arg-type]
        )

    def summary(self) -> str:
        lines = [f"pruned {len(self.ops)} ops, params {self.params[0]} -> {self.params[1]}"]
        for fqn, op in self.ops.items():
            ch = op.get("channels")
            extra = f", channels {ch[0]} -> {ch[1]}" if ch else ""
            lines.append(f"  {fqn}: {op['pattern']} sparsity {op['sparsity']:.3f}{extra}")
        for fqn, why in self.left_whole.items():
            lines.append(f"  {fqn}: left whole ({why})")
        return "\n".join(lines)


def split_plan(plan: Plan) -> tuple[dict[str, PruneSpec], Plan]:
    """``(fqn -> PruneSpec, the plan without pruning)``: what backends build."""
    from autoquant.plan import Plan

    specs = {f: c.prune for f, c in plan.items() if c is not None and c.prune is not None}
    if not specs:
        return {}, plan
    quant = {f: None if c is None else c.without_prune() for f, c in plan.items()}
    return specs, Plan(quant, plan.op_types)


def prune_key(specs: Mapping[str, PruneSpec]) -> str:
    """A stable key of the pruning part and its fine-tuning (what the pruned model and its
    calibration statistics depend on)."""
    return ";".join(
        f"{f}={s.short()}" + (f"@{s.fine_tune}" if s.fine_tune else "")
        for f, s in sorted(specs.items())
    )


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _grads(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor] | None) -> None:
    if loss_fn is None:
        return
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = loss_fn(model)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"loss_fn must return a scalar tensor, but returned {loss!r}.")
        loss.backward()


def prune(
    model: nn.Module,
    plan: Plan | Mapping[str, PruneSpec],
    *,
    mode: str = "shrink",
    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
) -> tuple[nn.Module, PruneReport]:
    """A pruned copy of ``model`` and its :class:`PruneReport`.

    Args:
        model: the float model (deep-copied; never modified).
        plan: a :class:`~autoquant.plan.Plan` (its entries' ``prune`` specs are used) or
            a mapping fqn -> :class:`PruneSpec`.
        mode: ``shrink`` (channel pruning removes channels) or ``mask`` (zeroes them).
        loss_fn: ``loss_fn(model) -> scalar tensor``, backpropagated once for the
            ``gradient`` criterion (else the weights' existing ``.grad`` is used).
    """
    if mode not in MODES:
        raise ConfigError(f"prune mode must be one of {list(MODES)}, but got {mode!r}.")
    if isinstance(plan, Mapping) and not hasattr(plan, "op_types"):
        specs = {f: PruneSpec.from_dict(s) for f, s in plan.items()}
    else:
        specs, _ = split_plan(plan)  # type: ignore[arg-type]
    modules = dict(model.named_modules())
    for fqn in specs:
        m = modules.get(fqn)
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise PlanError(
                f"prune spec on {fqn!r}: only Linear, Conv1d and Conv2d ops are pruned, "
                f"but it is {type(m).__name__ if m is not None else 'not a module'}."
            )
    out = copy.deepcopy(model)
    report = PruneReport(params=(_n_params(model), 0))
    if any(s.criterion == "gradient" for s in specs.values()):
        _grads(out, loss_fn)
    mods = dict(out.named_modules())

    def grad_of(fqn: str) -> torch.Tensor | None:
        return mods[fqn].weight.grad

    with torch.no_grad():
        # Element patterns: zero weights in place.
        global_specs = {f: s for f, s in specs.items() if s.scope == "global"}
        by_kind: dict[tuple[str, str, float], list[str]] = {}
        for f, s in global_specs.items():
            by_kind.setdefault((s.pattern, s.criterion, s.ratio), []).append(f)  # type: ignore[arg-type]
        for (_, criterion, ratio), fqns in by_kind.items():
            scores = {f: mk.weight_scores(mods[f].weight, criterion, grad_of(f)) for f in fqns}
            for f, mask in mk.global_unstructured_masks(scores, ratio).items():
                _zero(mods[f], mask, specs[f], report, f)
        for f, s in specs.items():
            if s.scope == "global" or s.structured:
                continue
            w = mods[f].weight
            scores = mk.weight_scores(w, s.criterion, grad_of(f))
            nm = s.nm
            if nm is not None:
                if not mk.nm_fits(w.shape, nm[1]):
                    report.left_whole[f] = (
                        f"pattern {s.pattern} needs the reduction size divisible by "
                        f"{nm[1]}; weight shape {tuple(w.shape)}"
                    )
                    continue
                mask = mk.nm_mask(scores, *nm)
            else:
                mask = mk.unstructured_mask(scores, s.ratio)  # type: ignore[arg-type]
            _zero(mods[f], mask, s, report, f)
        _channels(
            out, mods, {f: s for f, s in specs.items() if s.structured}, mode, report, grad_of
        )
    if loss_fn is not None:
        out.zero_grad(set_to_none=True)
    report.params = (report.params[0], _n_params(out))
    out.autoquant_pruning = report  # type: ignore[assignment]
    return out, report


def _zero(m: nn.Module, mask: torch.Tensor, spec: PruneSpec, report: PruneReport, f: str) -> None:
    m.weight.mul_(mask.to(m.weight.dtype))
    report.ops[f] = {
        "pattern": spec.pattern,
        "ratio": spec.ratio,
        "sparsity": float((m.weight == 0).sum()) / m.weight.numel(),
    }


def _channels(
    model: nn.Module,
    mods: dict[str, nn.Module],
    specs: dict[str, PruneSpec],
    mode: str,
    report: PruneReport,
    grad_of: Callable[[str], torch.Tensor | None],
) -> None:
    if not specs:
        return
    groups = channel_groups(model, list(specs))
    chosen: list[tuple[ChannelGroup, torch.Tensor, PruneSpec, str]] = []
    done: set[int] = set()
    # Every group's channels are chosen on the unpruned weights first: slicing one group
    # changes its consumers' weights, which may be another group's producers.
    for f in specs:
        group = groups[f]
        if not group.safe:
            report.left_whole[f] = group.reason
            continue
        if id(group) in done or any(g is not group and f in g.producers for g, *_ in chosen):
            continue  # a tied op already chose this group's channels
        done.add(id(group))
        # Tied producers lose the same channels; the smallest ratio asked of them wins.
        asked = [specs[p] for p in group.producers if p in specs]
        spec = min(asked, key=lambda s: s.ratio)  # type: ignore[arg-type,return-value]
        scores = sum(
            _normalized(mk.channel_scores(mods[p].weight, spec.criterion, grad_of(p)))
            for p in group.producers
        )
        if group.heads:
            head_scores = scores.reshape(-1, group.heads).sum(dim=1)  # type: ignore[union-attr]
            keep_heads = mk.keep_channels(head_scores, spec.ratio)  # type: ignore[arg-type]
            keep = (keep_heads[:, None] * group.heads + torch.arange(group.heads)).reshape(-1)
        else:
            keep = mk.keep_channels(scores, spec.ratio)  # type: ignore[arg-type]
        chosen.append((group, keep, spec, f))
    for group, keep, spec, f in chosen:
        before = group.channels
        if mode == "shrink":
            _shrink(mods, group, keep, report)
        else:
            _mask_group(mods, group, keep)
        for p in group.producers:
            report.ops[p] = {
                "pattern": "channel",
                "ratio": spec.ratio,
                "sparsity": 1.0 - keep.numel() / before,
                "channels": [before, int(keep.numel())],
            }
            if p != f:
                report.ops[p]["tied_to"] = f


def _normalized(s: torch.Tensor) -> torch.Tensor:
    return s / (s.mean() + 1e-12)


def _mask_group(mods: dict[str, nn.Module], group: ChannelGroup, keep: torch.Tensor) -> None:
    drop = torch.ones(group.channels, dtype=torch.bool)
    drop[keep] = False
    for p in group.producers:
        m = mods[p]
        m.weight[drop] = 0
        if m.bias is not None:
            m.bias[drop] = 0
    for n in dict.fromkeys(group.norms):
        m = mods[n]
        # gamma = beta = 0: the normalized channel is exactly 0 whatever its statistics
        m.weight[drop] = 0
        m.bias[drop] = 0


def _expand(keep: torch.Tensor, block: int) -> torch.Tensor:
    if block == 1:
        return keep
    return (keep[:, None] * block + torch.arange(block)).reshape(-1)


def _shrink(
    mods: dict[str, nn.Module], group: ChannelGroup, keep: torch.Tensor, report: PruneReport
) -> None:
    for p in group.producers:
        m = mods[p]
        m.weight = nn.Parameter(m.weight[keep].clone(), requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias[keep].clone(), requires_grad=m.bias.requires_grad)
        _set_sizes(m, out=int(keep.numel()))
        report.shapes.setdefault(p, {}).update(_sizes(m))
    for n in dict.fromkeys(group.norms):
        m = mods[n]
        for attr in ("weight", "bias"):
            t = getattr(m, attr)
            if t is not None:
                setattr(m, attr, nn.Parameter(t[keep].clone(), requires_grad=t.requires_grad))
        for attr in ("running_mean", "running_var"):
            t = getattr(m, attr)
            if t is not None:
                setattr(m, attr, t[keep].clone())
        m.num_features = int(keep.numel())
        report.shapes[n] = {"num_features": m.num_features}
    for c, block in group.consumers.items():
        m = mods[c]
        idx = _expand(keep, block)
        m.weight = nn.Parameter(m.weight[:, idx].clone(), requires_grad=m.weight.requires_grad)
        _set_sizes(m, inp=int(idx.numel()))
        report.shapes.setdefault(c, {}).update(_sizes(m))
    if group.heads:
        owner = mods[group.head_owner]
        heads = int(keep.numel()) // group.heads
        owner.num_attention_heads = heads
        owner.all_head_size = heads * group.heads
        report.shapes[group.head_owner] = {"num_attention_heads": heads}


def _sizes(m: nn.Module) -> dict[str, int]:
    if isinstance(m, nn.Linear):
        return {"in_features": m.in_features, "out_features": m.out_features}
    return {"in_channels": m.in_channels, "out_channels": m.out_channels}


def _set_sizes(m: nn.Module, *, out: int | None = None, inp: int | None = None) -> None:
    if isinstance(m, nn.Linear):
        if out is not None:
            m.out_features = out
        if inp is not None:
            m.in_features = inp
    else:
        if out is not None:
            m.out_channels = out
        if inp is not None:
            m.in_channels = inp


def resize_to(model: nn.Module, shapes: Mapping[str, Mapping[str, int]]) -> nn.Module:
    """A copy of ``model`` with its layers cut to ``shapes`` (a :class:`PruneReport`'s):
    the skeleton a saved pruned model's tensors are loaded into. Values are placeholders."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    with torch.no_grad():
        for fqn, sizes in shapes.items():
            m = mods.get(fqn)
            if m is None:
                raise PlanError(f"the pruned shapes name {fqn!r}, which the model does not have.")
            for key, value in sizes.items():
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise PlanError(
                        f"pruned size {fqn}.{key} must be a positive int, got {value!r}."
                    )
            if "num_attention_heads" in sizes:
                head = m.attention_head_size
                m.num_attention_heads = sizes["num_attention_heads"]
                m.all_head_size = m.num_attention_heads * head
                continue
            if "num_features" in sizes:
                n = sizes["num_features"]
                for attr in ("weight", "bias"):
                    t = getattr(m, attr, None)
                    if t is not None:
                        setattr(m, attr, nn.Parameter(t[:n].clone()))
                for attr in ("running_mean", "running_var"):
                    t = getattr(m, attr, None)
                    if t is not None:
                        setattr(m, attr, t[:n].clone())
                m.num_features = n
                continue
            if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                raise PlanError(f"pruned shapes give sizes for {fqn!r}, a {type(m).__name__}.")
            o = sizes.get("out_features", sizes.get("out_channels"))
            i = sizes.get("in_features", sizes.get("in_channels"))
            m.weight = nn.Parameter(m.weight[:o, :i].clone())
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias[:o].clone())
            _set_sizes(m, out=o, inp=i)
    return out


def sparsity(model: nn.Module, fqns: list[str] | None = None) -> dict[str, float]:
    """Share of zero weights per op with a 2-D+ weight, of the float model or of a
    quantized one (its integer weights compared with their zero points)."""
    out: dict[str, float] = {}
    for name, m in model.named_modules():
        if fqns is not None and name not in fqns:
            continue
        w = getattr(m, "weight", None)
        zero: Any = 0
        if isinstance(getattr(m, "weight_int", None), torch.Tensor):
            w, zero = m.weight_int, getattr(m, "weight_zero_point", 0)
        elif callable(w) and not isinstance(w, torch.Tensor):  # torch quantized modules
            try:
                w = w()
            except Exception:  # noqa: BLE001 - not a weight accessor after all
                continue
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        if w.is_quantized:
            if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                zero = w.q_zero_point()
            else:
                zero = w.q_per_channel_zero_points()
            w = w.int_repr()
        if isinstance(zero, torch.Tensor) and zero.numel() == w.shape[0]:
            zero = zero.reshape(-1, *([1] * (w.dim() - 1)))
        out[name] = float((w == zero).sum()) / w.numel()
    return out


def prune_info(model: nn.Module) -> PruneReport | None:
    """The :class:`PruneReport` of a model from :func:`prune`, ``quantize`` or ``load``."""
    return getattr(model, "autoquant_pruning", None)


def pruning_summary(model: nn.Module, saved_dir: str | None = None) -> dict[str, Any] | None:
    """Per-op sparsity, ops left whole, parameter counts and sizes of a pruned model
    (``summary.json`` / MLflow); None when the model was not pruned.

    ``saved_bytes`` (with ``saved_dir``, a directory :func:`autoquant.save` wrote) is what
    the files take: sparse weights there are bitmask + values.
    """
    report = prune_info(model)
    if report is None:
        return None
    out: dict[str, Any] = {
        "sparsity": {f: op["sparsity"] for f, op in report.ops.items()},
        "channels": {f: op["channels"] for f, op in report.ops.items() if "channels" in op},
        "left_whole": dict(report.left_whole),
        "params_before": report.params[0],
        "params_after": report.params[1],
    }
    if saved_dir is not None:
        from pathlib import Path

        out["saved_bytes"] = sum(p.stat().st_size for p in Path(saved_dir).iterdir() if p.is_file())
    return out
