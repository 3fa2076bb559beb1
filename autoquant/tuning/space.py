"""The search space: for each op (or op type), the configs its backend can run, plus fp32.

Built from the backend's capability table and the model's ops, never from a list typed
by hand, so what is searched is exactly what can be built. Each *unit* of the space is
one Optuna categorical parameter: an op's FQN (``tie="op"``) or an op type
(``tie="op_type"``). Choices are ordered: the unit's default config first (the first of
``TuningConfig.approaches`` the op supports, as its preset), then the alternatives, and
``fp32`` last.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoquant.approaches import get_approach
from autoquant.backends.base import module_kinds
from autoquant.config import OpConfig, QuantSpec
from autoquant.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autoquant.backends.base import Backend, SpecSupport
    from autoquant.discovery import OpInfo
    from autoquant.plan import Plan
    from autoquant.tuning.config import TuningConfig

__all__ = ["FP32", "NO_PRUNE", "PRUNE_PREFIX", "BUDGET_PARAM", "SearchSpace"]

FP32 = "fp32"
#: The label of "not pruned" in a pruning unit, and the prefix of those units' names.
NO_PRUNE = "none"
PRUNE_PREFIX = "prune:"
#: The search parameter of the fine-tuning budget of pruned plans (TrainBudget labels;
#: only with a train_fn and more than one of TuningConfig.prune_epochs x prune_lr_scales).
BUDGET_PARAM = "prune_budget"


def _fit(spec: QuantSpec, support: SpecSupport) -> QuantSpec | None:
    """``spec`` moved onto the nearest values ``support`` allows (first allowed value)."""
    changes: dict[str, Any] = {}
    for field, allowed in (
        ("dtype", support.dtypes),
        ("scheme", support.schemes),
        ("granularity", support.granularities),
        ("observer", support.observers),
        ("reduce_range", support.reduce_range),
    ):
        if getattr(spec, field) not in allowed:
            changes[field] = allowed[0]
    gran = changes.get("granularity", spec.granularity)
    if gran == "per_group":
        changes["group_size"] = (
            spec.group_size if spec.group_size in support.group_sizes else support.group_sizes[0]
        )
    else:
        changes["group_size"] = None
    try:
        return dataclasses.replace(spec, **changes)
    except ConfigError:
        return None


def _variants(
    base: QuantSpec, support: SpecSupport, dims: dict[str, tuple[Any, ...]]
) -> list[QuantSpec]:
    """Every spec that varies ``base`` along ``dims`` within what ``support`` allows."""
    names = [d for d in dims if dims[d]]
    # The base's own value first in every dimension, so the first variant is the base.
    ordered = [sorted(dims[d], key=lambda v, d=d: v != getattr(base, d)) for d in names]
    out: list[QuantSpec] = []
    for values in itertools.product(*ordered):
        changes = dict(zip(names, values, strict=True))
        if changes.get("granularity", base.granularity) == "per_group":
            changes.setdefault("group_size", base.group_size or support.group_sizes[0])
        elif "granularity" in changes:
            changes["group_size"] = None
        try:
            spec = dataclasses.replace(base, **changes)
        except ConfigError:
            continue
        if support.mismatch("spec", spec) is None and spec not in out:
            out.append(spec)
    return out


def _candidates(
    module: nn.Module, op_type: str, backend: Backend, config: TuningConfig, calibrated: bool
) -> list[OpConfig]:
    """Configs ``backend`` can run on this module, default first."""
    out: list[OpConfig] = []
    search = set(config.search)
    approaches = [
        a
        for a in config.approaches
        # "qat" has no per-op preset: its trials are a phase of their own
        # (autoquant.tuning._qat) that starts from these post-training plans.
        if get_approach(a).preset is not None
        and (calibrated or not get_approach(a).needs_calibration)
    ]
    if not approaches and "qat" in config.approaches and calibrated:
        approaches = ["static"]  # QAT alone: its trials start from the static plan
    if "approach" not in search:
        approaches = approaches[:1]
    for approach in approaches:
        caps = [
            c
            for c in backend.capabilities()
            if op_type in c.op_types
            and c.approach == approach
            and (config.include_simulated or not c.simulated)
        ]
        preset = get_approach(approach).preset()
        for cap in caps:
            weight = _fit(preset.weight, cap.weight)
            if weight is None:
                continue
            if "dtype" not in search and weight.dtype != preset.weight.dtype:
                continue  # another dtype's kernel; only searched when dtype is
            w_dims: dict[str, tuple[Any, ...]] = {}
            if "dtype" in search:
                w_dims["dtype"] = cap.weight.dtypes
            if "granularity" in search:
                w_dims["granularity"] = cap.weight.granularities
            if "scheme" in search and cap.activation is None:
                w_dims["scheme"] = cap.weight.schemes
            weights = _variants(weight, cap.weight, w_dims)
            acts: list[QuantSpec | None] = [None]
            if cap.activation is not None and preset.activation is not None:
                act = _fit(preset.activation, cap.activation)
                if act is None:
                    continue
                a_dims: dict[str, tuple[Any, ...]] = {}
                if "scheme" in search:
                    a_dims["scheme"] = cap.activation.schemes
                if "observer" in search and get_approach(approach).needs_calibration:
                    a_dims["observer"] = tuple(
                        o for o in config.observers if o in cap.activation.observers
                    )
                if "reduce_range" in search:
                    a_dims["reduce_range"] = cap.activation.reduce_range
                if "dtype" in search:
                    a_dims["dtype"] = cap.activation.dtypes
                acts = list(_variants(act, cap.activation, a_dims))
            for w, a in itertools.product(weights, acts):
                try:
                    cfg = OpConfig(approach=approach, weight=w, activation=a)
                except ConfigError:
                    continue
                found = backend.find(op_type, cfg)
                if found is None or (found.simulated and not config.include_simulated):
                    continue
                if backend.saturation_risk(module, cfg, found) and a is not None:
                    # Never propose full range to a kernel that overflows with it: the
                    # 7-bit variant stands in for it (the table says which kernels).
                    cfg = cfg.replace(activation=a.replace(reduce_range=True))
                    found = backend.find(op_type, cfg)
                    if found is None or backend.saturation_risk(module, cfg, found):
                        continue
                if backend.module_problem(module, cfg, found) is None and cfg not in out:
                    out.append(cfg)
    return out


@dataclass(frozen=True)
class Unit:
    """One categorical parameter: the ops it sets and the labelled choices."""

    name: str
    fqns: tuple[str, ...]
    op_type: str
    labels: tuple[str, ...]
    configs: tuple[OpConfig | None, ...]

    @property
    def default(self) -> str:
        return self.labels[0]


@dataclass(frozen=True)
class PruneUnit:
    """One pruning parameter: the op it prunes and its labelled specs (``none`` first).

    Channel specs of ops tied by a residual add are one unit (on the group's first op):
    the group loses the same channels.
    """

    name: str
    fqn: str
    labels: tuple[str, ...]
    specs: tuple[Any, ...]  # PruneSpec | None

    @property
    def default(self) -> str:
        return self.labels[0]


def _prune_units(model: nn.Module, ops: list[OpInfo], config: TuningConfig) -> list[PruneUnit]:
    """Per-op pruning choices that can really be applied to this model."""
    from autoquant.pruning.masks import nm_fits
    from autoquant.pruning.spec import PruneSpec, parse_nm
    from autoquant.pruning.structural import channel_groups

    patterns = config.prune_patterns
    if not patterns:
        return []
    prunable = [op.fqn for op in ops if op.op_type in ("Linear", "Conv1d", "Conv2d")]
    groups = channel_groups(model, prunable) if "channel" in patterns else {}
    claimed: set[str] = set()
    units = []
    for fqn in prunable:
        weight = model.get_submodule(fqn).weight
        specs: list[Any] = [None]
        for pattern in patterns:
            nm = parse_nm(pattern)
            if nm is not None:
                if nm_fits(weight.shape, nm[1]):
                    specs.append(PruneSpec(pattern=pattern))
                continue
            if pattern == "channel":
                group = groups[fqn]
                if not group.safe or fqn in claimed:
                    continue  # left whole (the reason is in channel_groups), or tied
                claimed.update(group.producers)
            specs.extend(PruneSpec(pattern=pattern, ratio=r) for r in config.prune_ratios)
        if len(specs) > 1:
            labels = (NO_PRUNE, *(s.short() for s in specs[1:]))
            units.append(PruneUnit(PRUNE_PREFIX + fqn, fqn, labels, tuple(specs)))
    return units


class SearchSpace:
    """Per-unit choices of op configs (plus fp32) over a model's quantizable ops, and
    per-op pruning choices (:attr:`prune_units`, only with ``prune_patterns`` set)."""

    def __init__(
        self,
        ops: list[OpInfo],
        units: list[Unit],
        tie: str,
        prune_units: list[PruneUnit] | None = None,
        budgets: tuple[str, ...] = (),
        schedule: str = "oneshot",
    ) -> None:
        self.ops = ops
        # Fine-tuning of pruned plans: TrainBudget labels (default first; empty: pruned
        # models are not fine-tuned) and the schedule label, both written into every
        # PruneSpec of a plan (its ``fine_tune``), so they are part of the plan's hash.
        self.budgets = tuple(budgets) if prune_units else ()
        self.schedule = schedule
        self.units = {u.name: u for u in units}
        self.prune_units = {u.name: u for u in prune_units or []}
        self.tie = tie
        self._op_types = {op.fqn: op.op_type for op in ops}
        self._unit_of = {fqn: u.name for u in units for fqn in u.fqns}

    @classmethod
    def build(
        cls,
        model: nn.Module,
        ops: list[OpInfo],
        backend: Backend,
        config: TuningConfig,
        *,
        calibrated: bool,
        fine_tune: bool = False,
    ) -> SearchSpace:
        """``fine_tune``: pruned models are fine-tuned (``tune`` got a ``train_fn``), so
        their budgets (``prune_epochs`` x ``prune_lr_scales``) are part of the plans."""
        per_op: dict[str, list[OpConfig]] = {}
        for op in ops:
            per_op[op.fqn] = _candidates(
                model.get_submodule(op.fqn), op.op_type, backend, config, calibrated
            )
        groups: dict[str, list[str]] = {}
        for op in ops:
            if not per_op[op.fqn]:
                continue  # nothing runs it: the op stays float and is not searched
            key = op.fqn if config.tie == "op" else op.op_type
            if config.tie != "op" and "depthwise" in module_kinds(model.get_submodule(op.fqn)):
                # Depthwise kernels may need other activation specs (Capability.saturates)
                # than the op type's other ops: they choose together, apart from those.
                key = f"{op.op_type}/depthwise"
            groups.setdefault(key, []).append(op.fqn)
        units = []
        for name, fqns in groups.items():
            common = [c for c in per_op[fqns[0]] if all(c in per_op[f] for f in fqns[1:])]
            if not common:
                continue
            labels = [c.short() for c in common]
            if len(set(labels)) != len(labels):  # pragma: no cover - short() is injective here
                labels = [f"{i}:{lab}" for i, lab in enumerate(labels)]
            units.append(
                Unit(
                    name=name,
                    fqns=tuple(fqns),
                    op_type=next(o.op_type for o in ops if o.fqn == fqns[0]),
                    labels=(*labels, FP32),
                    configs=(*common, None),
                )
            )
        if not units:
            raise ConfigError(
                f"no op of this model can be quantized with backend {backend.name!r} under "
                f"search={config.search}, approaches={config.approaches} (static needs "
                "calibration data). Widen the search or check autoquant.capability_table()."
            )
        budgets = tuple(b.label() for b in config.space.prune_budgets()) if fine_tune else ()
        return cls(
            ops,
            units,
            config.tie,
            _prune_units(model, ops, config),
            budgets,
            config.space.schedule().label(),
        )

    # -- views -------------------------------------------------------------------------
    @property
    def unit_names(self) -> list[str]:
        return list(self.units)

    def __len__(self) -> int:
        return len(self.units)

    @property
    def log10_size(self) -> float:
        return (
            sum(math.log10(len(u.labels)) for u in self.units.values())
            + sum(math.log10(len(u.labels)) for u in self.prune_units.values())
            + math.log10(max(1, len(self.budgets)))
        )

    @property
    def budget_searched(self) -> bool:
        """Whether the fine-tuning budget is a search dimension (:data:`BUDGET_PARAM`)."""
        return len(self.budgets) > 1

    @property
    def needs_calibration(self) -> bool:
        return any(
            c is not None and get_approach(c.approach).needs_calibration
            for u in self.units.values()
            for c in u.configs
        )

    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        from optuna.distributions import CategoricalDistribution

        out = {name: CategoricalDistribution(list(u.labels)) for name, u in self.units.items()}
        out.update(
            (name, CategoricalDistribution(list(u.labels))) for name, u in self.prune_units.items()
        )
        if self.budget_searched:
            out[BUDGET_PARAM] = CategoricalDistribution(list(self.budgets))
        return out

    def default_params(self) -> dict[str, str]:
        """Every unit at its default config (nothing pruned): the first trial of most
        strategies."""
        out = {name: u.default for name, u in self.units.items()}
        out.update((name, u.default) for name, u in self.prune_units.items())
        if self.budget_searched:
            out[BUDGET_PARAM] = self.budgets[0]
        return out

    def with_fp32(self, params: Mapping[str, str], units: list[str] | set[str]) -> dict[str, str]:
        out = dict(params)
        for name in units:
            out[name] = FP32
        return out

    def fp32_units(self, params: Mapping[str, str]) -> list[str]:
        return [name for name, label in params.items() if label == FP32]

    # -- params <-> plan ---------------------------------------------------------------
    def plan(self, params: Mapping[str, str]) -> Plan:
        """The resolved plan for one choice per unit; ops outside the space stay float."""
        from autoquant.plan import Plan

        configs: dict[str, OpConfig | None] = {op.fqn: None for op in self.ops}
        for name, unit in self.units.items():
            label = params.get(name, unit.default)
            try:
                cfg = unit.configs[unit.labels.index(label)]
            except ValueError:
                raise ConfigError(
                    f"unit {name!r} has no choice {label!r}; its choices are {list(unit.labels)}."
                ) from None
            for fqn in unit.fqns:
                configs[fqn] = cfg
        fine_tune = None
        if self.budgets:
            budget = params.get(BUDGET_PARAM, self.budgets[0])
            if budget not in self.budgets:
                raise ConfigError(
                    f"{BUDGET_PARAM!r} has no choice {budget!r}; its choices are "
                    f"{list(self.budgets)}."
                )
            fine_tune = f"{budget} {self.schedule}"
        for name, punit in self.prune_units.items():
            label = params.get(name, punit.default)
            try:
                spec = punit.specs[punit.labels.index(label)]
            except ValueError:
                raise ConfigError(
                    f"unit {name!r} has no choice {label!r}; its choices are {list(punit.labels)}."
                ) from None
            if spec is not None:
                if fine_tune is not None:
                    spec = spec.replace(fine_tune=fine_tune)
                cfg = configs[punit.fqn]
                configs[punit.fqn] = (
                    OpConfig(approach="float", prune=spec)
                    if cfg is None
                    else cfg.replace(prune=spec)
                )
        return Plan(configs, self._op_types)

    def describe(self) -> str:
        lines = [
            f"search space: {len(self.units)} units (tie={self.tie}), "
            f"10^{self.log10_size:.1f} plans"
        ]
        for name, u in self.units.items():
            lines.append(
                f"  {name:<28} {u.op_type:<10} {len(u.labels)} choices, default {u.default}"
            )
        for name, pu in self.prune_units.items():
            lines.append(f"  {name:<28} {'prune':<10} {list(pu.labels)}")
        if self.budgets:
            lines.append(
                f"  {BUDGET_PARAM:<28} {'fine-tune':<10} {list(self.budgets)} ({self.schedule})"
            )
        return "\n".join(lines)
